/* bf16 plans in the nhwc layout, for oneDNN's AMX convolutions (brgconv, AMX
 * deconvolution), which oneDNN 2.6 only offers for nhwc tensors and only for dense ones:
 * so no convolution reads or writes a view (a crop, or a channel range of a
 * concatenation), and the concatenations the blocked plans write in place are read as
 * parts (BNAct reads [expand output, maxpool(x)] as two tensors) or copied (the towers).
 *
 * A module x -> out (x: f32, maybe a view; out: dense f32):
 *   act_x = BNAct(x)                          bf16, dense    (kernel)
 *   e = conv(act_x) or deconv (up)            bf16, dense    (AMX)
 *   act_e = BNAct([e, maxpool(x)])            bf16, dense    (kernel, pooling on the fly)
 *   out = residual(x)                                        (kernel)
 *   out += conv1x1(act_e)                                    (AMX, sum post-op)
 * e in bf16 rather than f32 makes the plan ~9% faster (the kernels are memory-bound) for
 * one more rounding: the logits' error against FP32 grows by 5-12% (docs/performance.md).
 * Module outputs stay f32: residual sums accumulate there.
 * The channel layout (padding to 16, positions) is the blocked plans' (layout.h), so the
 * padded weights are shared and padded positions stay zero. */
#include "plan_internal.h"

#include "dnnl_md.h"
#include "kernels_nhwc.h"

#include <string.h>

static tref nhwc(int buf, int c, int h, int w, dnnl_data_type_t dt)
{
    return isl_tensor_nhwc(buf, 0, c, h, w, dt);
}

/* The view of t without `border` pixels on each side. */
static tref crop(tref t, int border)
{
    t.offset += ((size_t)border * t.rs + (size_t)border * t.cs) * isl_dt_size(t.dt);
    t.h -= 2 * border;
    t.w -= 2 * border;
    return t;
}

/* The view of t's channels [c0, c0 + n). */
static tref channel_range(tref t, int c0, int n)
{
    t.offset += (size_t)c0 * isl_dt_size(t.dt);
    t.c = n;
    return t;
}

/* ------------------------------------------------------------------------------------ */
/* Kernel steps                                                                         */
/* ------------------------------------------------------------------------------------ */

/* The kernel view of argument i (its md holds the dims and nhwc strides). */
static isl_nhwc view(const plan_step *s, int i, char *const *bufs)
{
    const plan_arg *a = &s->args[i];
    const dnnl_dims_t *st = &a->md.format_desc.blocking.strides;
    isl_nhwc v = {bufs[a->buf] + a->offset, (int)a->md.dims[1], (int)a->md.dims[2],
                  (int)a->md.dims[3], (size_t)(*st)[3], (size_t)(*st)[2],
                  a->md.data_type == dnnl_bf16};
    return v;
}

/* args: [a, out] or [a, p, out]; pooling of p: s->k, s->stride. */
static void run_bnact(const plan_step *s, char *const *bufs)
{
    isl_nhwc a = view(s, 0, bufs), out = view(s, s->nargs - 1, bufs);
    if (s->nargs == 3) {
        isl_nhwc p = view(s, 1, bufs);
        isl_nhwc_bnact_bf16(&a, &p, s->k, s->stride, s->bn->scale, s->bn->shift, &out);
    } else {
        isl_nhwc_bnact_bf16(&a, NULL, 0, 0, s->bn->scale, s->bn->shift, &out);
    }
}

/* args: [x, out]. */
static void run_residual_in(const plan_step *s, char *const *bufs)
{
    isl_nhwc x = view(s, 0, bufs), out = view(s, 1, bufs);
    isl_nhwc_residual_in(&x, &out);
}

static void run_residual_down(const plan_step *s, char *const *bufs)
{
    isl_nhwc x = view(s, 0, bufs), out = view(s, 1, bufs);
    isl_nhwc_residual_down(&x, &out);
}

static void run_residual_up(const plan_step *s, char *const *bufs)
{
    isl_nhwc x = view(s, 0, bufs), out = view(s, 1, bufs);
    isl_nhwc_residual_up(&x, s->keep, &out);
}

static void run_copy(const plan_step *s, char *const *bufs)
{
    isl_nhwc src = view(s, 0, bufs), dst = view(s, 1, bufs);
    isl_nhwc_copy(&src, &dst);
}

/* ------------------------------------------------------------------------------------ */
/* Layers                                                                               */
/* ------------------------------------------------------------------------------------ */

/* out = BNAct([a, maxpool_k,stride(p)]) (p.c == 0: BNAct(a)). */
static isl_status add_bnact(builder *b, tref a, tref p, int k, int stride,
                            const isl_bn_padded *bn, tref out)
{
    isl_need(b, out);
    if (b->estimate_only)
        return ISL_OK;
    if (bn->padded != a.c + p.c || out.c != 2 * bn->padded || out.dt != dnnl_bf16)
        return isl_fail(ISL_ERROR_INTERNAL, "BNAct of %d + %d channels with %d", a.c, p.c,
                        bn->padded);
    plan_step *st = NULL;
    ISL_CHECK(isl_push_kernel(b, run_bnact, &st));
    isl_arg_tensor(st, 0, a, NULL);
    if (p.c)
        isl_arg_tensor(st, 1, p, NULL);
    isl_arg_tensor(st, st->nargs, out, NULL);
    st->k = k;
    st->stride = stride;
    st->bn = bn;
    return ISL_OK;
}

/* A kernel step src -> dst (keep: the up-sampling mask). */
static isl_status add_kernel2(builder *b, step_fn run, tref src, tref dst, const int *keep)
{
    isl_need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    plan_step *st = NULL;
    ISL_CHECK(isl_push_kernel(b, run, &st));
    isl_arg_tensor(st, 0, src, NULL);
    isl_arg_tensor(st, 1, dst, NULL);
    st->keep = keep;
    return ISL_OK;
}

/* One module: x -> out (dense). For up modules out is the (2n+2) result before the crop. */
static isl_status add_module(builder *b, const isl_module_arch *a, const isl_module_layout *ml,
                             tref x, tref out)
{
    const int k = a->kernel, oh = out.h, ow = out.w;
    const int stride = a->kind == ISL_MODULE_IN ? 1 : 2;
    tref act_x = nhwc(BUF_ACT, 2 * x.c, x.h, x.w, dnnl_bf16);
    tref e = nhwc(BUF_E, ml->conv_padded, oh, ow, dnnl_bf16);
    tref act_e = nhwc(BUF_ACT, 2 * ml->e.padded, oh, ow, dnnl_bf16);
    tref none = nhwc(BUF_NONE, 0, 0, 0, dnnl_f32);

    ISL_CHECK(add_bnact(b, x, none, 0, 0, &ml->bn1, act_x));
    ISL_CHECK(isl_add_conv(b, a->kind == ISL_MODULE_UP ? DECONV : CONV, act_x, e, k, stride,
                           ml->expand_weight, NULL, 0));
    if (a->kind == ISL_MODULE_UP)
        ISL_CHECK(add_bnact(b, e, none, 0, 0, &ml->bn2, act_e));
    else
        ISL_CHECK(add_bnact(b, e, x, k, stride, &ml->bn2, act_e));

    /* The residual goes into out first; the reduce conv then adds onto it. */
    switch (a->kind) {
    case ISL_MODULE_IN:
        ISL_CHECK(add_kernel2(b, run_residual_in, x, out, NULL));
        break;
    case ISL_MODULE_DOWN:
        ISL_CHECK(add_kernel2(b, run_residual_down, x, out, NULL));
        break;
    case ISL_MODULE_UP: {
        const int *keep;
        ISL_CHECK(isl_keep_mask(b, &ml->out, &keep));
        ISL_CHECK(add_kernel2(b, run_residual_up, x, out, keep));
        break;
    }
    }
    return isl_add_conv(b, CONV, act_e, out, 1, 1, ml->reduce_weight, NULL, 1);
}

/* A module output buffer other than the one x is in. */
static int other_buffer(int buf) { return buf == BUF_X0 ? BUF_X1 : BUF_X0; }

isl_status isl_nhwc_build_trunk(builder *b, const isl_params *p, const isl_layout *l)
{
    const isl_arch *a = &p->arch;
    isl_plan *plan = b->plan;
    const int H = plan->in_h, W = plan->in_w;
    /* 16 channels: nChw16c (the projection's output) and nhwc are the same bytes. */
    ISL_CHECK(isl_add_projection(b, p, isl_tensor(BUF_INPUT, 0, a->num_z, H, W, dnnl_f32, 16),
                                 isl_tensor(BUF_PROJ, 0, ISL_PROJECTION_DEPTH, H, W, dnnl_f32,
                                            16)));
    tref proj = nhwc(BUF_PROJ, ISL_PROJECTION_DEPTH, H, W, dnnl_f32);

    const int cat_h = 36 + (H - ISL_PATCH_INPUT), cat_w = 36 + (W - ISL_PATCH_INPUT);
    tref cat = nhwc(BUF_CAT, l->concat.padded, cat_h, cat_w, dnnl_f32);
    isl_need(b, cat);
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        tref x = crop(proj, (ISL_PATCH_INPUT - isl_tower_start_size[s]) / 2);
        for (int i = a->tower_first[s]; i < a->tower_first[s] + a->tower_count[s]; i++) {
            const isl_module_arch *m = &a->modules[i];
            const isl_module_layout *ml = &l->modules[i];
            int oh = isl_module_out_side(m, x.h), ow = isl_module_out_side(m, x.w);
            int buf = m->kind == ISL_MODULE_UP ? BUF_TMP : other_buffer(x.buf);
            tref out = nhwc(buf, ml->out.padded, oh, ow, dnnl_f32);
            ISL_CHECK(add_module(b, m, ml, x, out));
            x = m->kind == ISL_MODULE_UP ? crop(out, 2) : out;
        }
        if (x.h != cat_h || x.w != cat_w)
            return isl_fail(ISL_ERROR_INTERNAL, "tower %d ends at %dx%d, not %dx%d", s, x.h, x.w,
                            cat_h, cat_w);
        ISL_CHECK(add_kernel2(b, run_copy, x, channel_range(cat, l->concat_offset[s], x.c), NULL));
    }
    tref x = cat;
    for (int i = a->tower_first[ISL_UPPER_TOWER]; i < a->num_modules; i++) {
        tref out = nhwc(other_buffer(x.buf), l->modules[i].out.padded, x.h - 2, x.w - 2, dnnl_f32);
        ISL_CHECK(add_module(b, &a->modules[i], &l->modules[i], x, out));
        x = out;
    }
    if (x.h != plan->out_h || x.w != plan->out_w)
        return isl_fail(ISL_ERROR_INTERNAL, "trunk ends at %dx%d, not %dx%d", x.h, x.w,
                        plan->out_h, plan->out_w);
    plan->trunk_out = x;
    return ISL_OK;
}

/* BNAct and the 1x1 conv (AMX) into nhwc logits, the softmax over each pixel's 256
 * contiguous bins, and a reorder to the caller's channel-major [out_ch, h, w]. */
isl_status isl_nhwc_build_head(builder *b, const isl_layout *l, int h, int out_ch)
{
    isl_plan *plan = b->plan;
    const tref trunk = plan->head_in;
    const isl_head_layout *hl = &l->heads[h];
    tref act = nhwc(BUF_ACT, 2 * trunk.c, trunk.h, trunk.w, dnnl_bf16);
    tref logits = nhwc(BUF_HEAD, out_ch, trunk.h, trunk.w, dnnl_f32);
    tref none = nhwc(BUF_NONE, 0, 0, 0, dnnl_f32);
    ISL_CHECK(add_bnact(b, trunk, none, 0, 0, &hl->bn, act));
    ISL_CHECK(isl_add_conv(b, CONV, act, logits, 1, 1, hl->weight, hl->bias, 0));
    if (b->estimate_only)
        return ISL_OK;
    /* [h, w, planes, 256] as rows of 256 bins. */
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {(dnnl_dim_t)trunk.h * trunk.w * (out_ch / ISL_NUM_CLASSES),
                        ISL_NUM_CLASSES};
    dnnl_memory_desc_init_by_tag(&md, 2, dims, dnnl_f32, dnnl_ab);
    ISL_CHECK(isl_add_softmax(b, logits, &md));
    dnnl_memory_desc_t from = isl_tref_md(logits);
    dnnl_memory_desc_t plain = isl_md4(1, out_ch, trunk.h, trunk.w, dnnl_nchw);
    tref ext = isl_tensor(BUF_EXTERNAL, 0, out_ch, trunk.h, trunk.w, dnnl_f32, 16);
    return isl_add_reorder(b, logits, &from, ext, &plain);
}
