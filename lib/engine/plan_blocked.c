/* The network in oneDNN's blocked layout (FP32, and bf16 on CPUs without AMX): the
 * builder behind isl_blocked_build_trunk / isl_blocked_build_head (plan_internal.h).
 * Blocks of plan->blk channels: nChw16c with AVX-512, nChw8c without (plan.c). */
#include "plan_internal.h"

#include "dnnl_md.h"
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t tensor_bytes(int c, int h, int w) { return (size_t)c * h * w * sizeof(float); }

/* A tensor in the plan's blocked layout (FP32 unless dt says otherwise). */
static tref tensor_dt(const builder *b, int buf, int c, int h, int w, dnnl_data_type_t dt)
{
    return isl_tensor(buf, 0, c, h, w, dt, b->plan->blk);
}

static tref tensor(const builder *b, int buf, int c, int h, int w)
{
    return tensor_dt(b, buf, c, h, w, dnnl_f32);
}

/* The channel range [c0, c0 + n) of t: dense, because the batch is one. */
static tref channels(tref t, int c0, int n)
{
    return isl_tensor(t.buf, t.offset + (size_t)c0 * t.h * t.w * isl_dt_size(t.dt), n, t.h, t.w,
                      t.dt, t.blk);
}

/* ------------------------------------------------------------------------------------ */
/* Kernel steps                                                                         */
/* ------------------------------------------------------------------------------------ */

static void *arg_ptr(const plan_step *s, int i, char *const *bufs)
{
    return bufs[s->args[i].buf] + s->args[i].offset;
}

/* args[0]: a region of s->bytes. */
static void run_zero(const plan_step *s, char *const *bufs)
{
    memset(arg_ptr(s, 0, bufs), 0, s->bytes);
}

/* args[0]: x (src_h x src_w), args[1]: the up-sampled residual, s->channels of them. */
static void run_upsample(const plan_step *s, char *const *bufs)
{
    const float *src = arg_ptr(s, 0, bufs);
    float *dst = arg_ptr(s, 1, bufs);
    const int h = s->src_h, w = s->src_w, oh = 2 * h + 2, ow = 2 * w + 2;
    const int blk = s->blk, blocks = s->channels / blk;
#pragma omp parallel for collapse(2) schedule(static)
    for (int cb = 0; cb < blocks; cb++) {
        for (int y = 0; y < oh; y++) {
            int sy = (y - 1) / 2; /* (y - 1) div 2, clamped: replicates the border */
            sy = y == 0 ? 0 : (sy > h - 1 ? h - 1 : sy);
            const float *srow = src + ((size_t)cb * h + sy) * w * blk;
            float *drow = dst + ((size_t)cb * oh + y) * ow * blk;
            const int *keep = s->keep + cb * blk;
            for (int x = 0; x < ow; x++) {
                int sx = x == 0 ? 0 : ((x - 1) / 2 > w - 1 ? w - 1 : (x - 1) / 2);
                for (int c = 0; c < blk; c++)
                    drow[x * blk + c] = keep[c] ? srow[sx * blk + c] : 0.0f;
            }
        }
    }
}

/* args[0]: x (s->channels), args[1]: [relu, tanh] halves, float or (s->bf16) bfloat16. */
static void run_bnact(const plan_step *s, char *const *bufs)
{
    const plan_arg *src = &s->args[0];
    size_t pixels = (size_t)src->md.dims[2] * src->md.dims[3];
    const float *x = arg_ptr(s, 0, bufs);
    char *out = arg_ptr(s, 1, bufs);
    size_t half = (size_t)s->channels * pixels * (s->bf16 ? 2 : 4);
    if (s->bf16)
        isl_kernel_bnact_bf16(x, s->bn->scale, s->bn->shift, s->channels, pixels,
                              (uint16_t *)out, (uint16_t *)(out + half));
    else
        isl_kernel_bnact(x, s->bn->scale, s->bn->shift, s->channels, pixels, s->blk,
                         (float *)out, (float *)(out + half));
}

/* args[0]: a (s->channels, oh x ow), args[1]: x (pooled k x k, stride s->stride),
 * args[2]: [relu, tanh] halves of BNAct([a, maxpool(x)]). FP32 only. */
static void run_bnact_pool(const plan_step *s, char *const *bufs)
{
    const dnnl_dims_t *a = &s->args[0].md.dims, *x = &s->args[1].md.dims;
    const int c = s->channels + (int)(*x)[1];
    const size_t half = (size_t)c * (size_t)((*a)[2] * (*a)[3]);
    float *out = arg_ptr(s, 2, bufs);
    isl_kernel_bnact_pool(arg_ptr(s, 0, bufs), s->channels, arg_ptr(s, 1, bufs), (int)(*x)[1],
                          (int)(*x)[2], (int)(*x)[3], s->k, s->stride, (int)(*a)[2],
                          (int)(*a)[3], s->blk, s->bn->scale, s->bn->shift, out, out + half);
}

/* ------------------------------------------------------------------------------------ */
/* Layers                                                                               */
/* ------------------------------------------------------------------------------------ */

/* dst = center crop of src by `border` pixels on each side. */
static isl_status add_crop(builder *b, tref src, int border, tref dst)
{
    dnnl_memory_desc_t parent = isl_tref_md(src), sub;
    dnnl_dims_t dims = {1, src.c, src.h - 2 * border, src.w - 2 * border};
    dnnl_dims_t offs = {0, 0, border, border};
    if (dnnl_memory_desc_init_submemory(&sub, &parent, dims, offs) != dnnl_success)
        return isl_fail(ISL_ERROR_INTERNAL, "cannot describe a crop");
    dnnl_memory_desc_t dmd = isl_tref_md(dst);
    return isl_add_reorder(b, src, &sub, dst, &dmd);
}

/* dst = [relu(y), tanh(y)] with y = batchnorm(src): the spec's BNAct, in one fused pass
 * (batch normalization, relu and tanh primitives would take three). */
static isl_status add_bnact(builder *b, tref src, const isl_bn_padded *bn, tref dst)
{
    isl_need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    plan_step *st = NULL;
    ISL_CHECK(isl_push_kernel(b, run_bnact, &st));
    isl_arg_tensor(st, 0, src, NULL);
    isl_arg_tensor(st, 1, dst, NULL);
    st->bf16 = dst.dt == dnnl_bf16;
    st->blk = src.blk;
    st->channels = src.c;
    st->bn = bn;
    return ISL_OK;
}

/* dst = BNAct([a, maxpool_k,stride(x)]): the max pooling is computed inside BNAct, which
 * saves writing the pooled channels and reading them back (FP32 plans). */
static isl_status add_bnact_pool(builder *b, tref a, tref x, int k, int stride,
                                 const isl_bn_padded *bn, tref dst)
{
    isl_need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    plan_step *st = NULL;
    ISL_CHECK(isl_push_kernel(b, run_bnact_pool, &st));
    isl_arg_tensor(st, 0, a, NULL);
    isl_arg_tensor(st, 1, x, NULL);
    isl_arg_tensor(st, 2, dst, NULL);
    st->channels = a.c;
    st->blk = a.blk;
    st->k = k;
    st->stride = stride;
    st->bn = bn;
    return ISL_OK;
}

static isl_status add_pool(builder *b, dnnl_alg_kind_t alg, tref src, tref dst, int k, int stride)
{
    isl_need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    dnnl_memory_desc_t smd = isl_tref_md(src), dmd = isl_tref_md(dst);
    dnnl_dims_t strides = {stride, stride}, kernel = {k, k}, pad = {0, 0};
    dnnl_pooling_desc_t d;
    dnnl_primitive_desc_t pd;
    plan_step *st = NULL;
    DNNL_TRY(dnnl_pooling_forward_desc_init(&d, dnnl_forward_inference, alg, &smd, &dmd, strides,
                                            kernel, pad, pad));
    ISL_CHECK(isl_make_primitive(b, &d, 0, dnnl_alg_kind_undef, &pd, "pooling"));
    ISL_CHECK(isl_push_step(b, &st));
    isl_arg_tensor(st, DNNL_ARG_SRC, src, &smd);
    isl_arg_tensor(st, DNNL_ARG_DST, dst, &dmd);
    return isl_finish_primitive(b, st, pd);
}

static isl_status add_zero(builder *b, tref region)
{
    isl_need(b, region);
    if (b->estimate_only || region.c == 0)
        return ISL_OK;
    plan_step *st = NULL;
    ISL_CHECK(isl_push_kernel(b, run_zero, &st));
    isl_arg_tensor(st, 0, region, NULL);
    st->bytes = tensor_bytes(region.c, region.h, region.w);
    return ISL_OK;
}

/* dst = nearest 2x upsampling of src with a 1-pixel replicated border, on the kept
 * channels; zero elsewhere. A memory-bound copy, too small to need oneDNN. */
static isl_status add_upsample(builder *b, tref src, tref dst, const int *keep)
{
    isl_need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    plan_step *st = NULL;
    ISL_CHECK(isl_push_kernel(b, run_upsample, &st));
    isl_arg_tensor(st, 0, src, NULL);
    isl_arg_tensor(st, 1, dst, NULL);
    st->src_h = src.h;
    st->src_w = src.w;
    st->channels = dst.c;
    st->blk = dst.blk;
    st->keep = keep;
    return ISL_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Modules and the network                                                              */
/* ------------------------------------------------------------------------------------ */

/* One module: x -> out. For up modules out is the (2n+2) result before the crop. */
static isl_status add_module(builder *b, const isl_module_arch *a, const isl_module_layout *ml,
                             tref x, tref out)
{
    const int k = a->kernel;
    const int oh = out.h, ow = out.w;
    const dnnl_data_type_t adt = b->plan->act_dt;
    /* FP32 BNAct pools on the fly: e then holds only the expand conv's output. */
    const int fuse_pool = a->kind != ISL_MODULE_UP && adt == dnnl_f32;
    tref act_x = tensor_dt(b, BUF_ACT, 2 * x.c, x.h, x.w, adt);
    tref e = tensor(b, BUF_E, fuse_pool ? ml->conv_padded : ml->e.padded, oh, ow);
    tref act_e = tensor_dt(b, BUF_ACT, 2 * ml->e.padded, oh, ow, adt);

    ISL_CHECK(add_bnact(b, x, &ml->bn1, act_x));
    if (a->kind == ISL_MODULE_UP) {
        ISL_CHECK(isl_add_conv(b, DECONV, act_x, channels(e, 0, ml->conv_padded), k, 2,
                               ml->expand_weight, NULL, 0));
    } else {
        int stride = a->kind == ISL_MODULE_DOWN ? 2 : 1;
        ISL_CHECK(isl_add_conv(b, CONV, act_x, channels(e, 0, ml->conv_padded), k, stride,
                               ml->expand_weight, NULL, 0));
        if (!fuse_pool)
            ISL_CHECK(add_pool(b, dnnl_pooling_max, x, channels(e, ml->conv_padded, x.c), k,
                               stride));
    }
    if (fuse_pool)
        ISL_CHECK(add_bnact_pool(b, e, x, k, a->kind == ISL_MODULE_DOWN ? 2 : 1, &ml->bn2, act_e));
    else
        ISL_CHECK(add_bnact(b, e, &ml->bn2, act_e));

    /* The residual goes into out first; the reduce conv then adds onto it. */
    switch (a->kind) {
    case ISL_MODULE_IN:
        ISL_CHECK(add_crop(b, x, 1, channels(out, 0, x.c)));
        ISL_CHECK(add_zero(b, channels(out, x.c, out.c - x.c)));
        break;
    case ISL_MODULE_DOWN: {
        tref cropped = tensor(b, BUF_TMP, x.c, x.h - 2, x.w - 2);
        ISL_CHECK(add_crop(b, x, 1, cropped));
        ISL_CHECK(add_pool(b, dnnl_pooling_avg_exclude_padding, cropped, channels(out, 0, x.c),
                           2, 2));
        ISL_CHECK(add_zero(b, channels(out, x.c, out.c - x.c)));
        break;
    }
    case ISL_MODULE_UP: {
        const int *keep;
        ISL_CHECK(isl_keep_mask(b, &ml->out, &keep));
        ISL_CHECK(add_upsample(b, x, out, keep));
        break;
    }
    }
    return isl_add_conv(b, CONV, act_e, out, 1, 1, ml->reduce_weight, NULL, 1);
}

isl_status isl_blocked_build_trunk(builder *b, const isl_params *p, const isl_layout *l)
{
    const isl_arch *a = &p->arch;
    isl_plan *plan = b->plan;
    const int H = plan->in_h, W = plan->in_w;
    tref input = tensor(b, BUF_INPUT, a->num_z, H, W);
    tref proj = tensor(b, BUF_PROJ, ISL_PROJECTION_DEPTH, H, W);
    ISL_CHECK(isl_add_projection(b, p, input, proj));

    const int cat_h = 36 + (H - ISL_PATCH_INPUT), cat_w = 36 + (W - ISL_PATCH_INPUT);
    tref cat = tensor(b, BUF_CAT, l->concat.padded, cat_h, cat_w);
    isl_need(b, cat);
    int xbuf = BUF_X0;
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        int border = (ISL_PATCH_INPUT - isl_tower_start_size[s]) / 2;
        tref x = tensor(b, BUF_X0, ISL_PROJECTION_DEPTH, H - 2 * border, W - 2 * border);
        ISL_CHECK(add_crop(b, proj, border, x));
        xbuf = BUF_X0;
        int last = a->tower_first[s] + a->tower_count[s] - 1;
        for (int i = a->tower_first[s]; i <= last; i++) {
            const isl_module_arch *m = &a->modules[i];
            const isl_module_layout *ml = &l->modules[i];
            int oh = isl_module_out_side(m, x.h), ow = isl_module_out_side(m, x.w);
            int next = xbuf == BUF_X0 ? BUF_X1 : BUF_X0;
            if (m->kind == ISL_MODULE_UP) {
                tref out = tensor(b, BUF_TMP, ml->out.padded, oh, ow);
                ISL_CHECK(add_module(b, m, ml, x, out));
                tref cropped = tensor(b, next, out.c, oh - 4, ow - 4);
                ISL_CHECK(add_crop(b, out, 2, cropped));
                x = cropped;
            } else {
                tref out = i == last ? channels(cat, l->concat_offset[s], ml->out.padded)
                                     : tensor(b, next, ml->out.padded, oh, ow);
                ISL_CHECK(add_module(b, m, ml, x, out));
                x = out;
            }
            xbuf = next;
        }
        if (x.h != cat_h || x.w != cat_w)
            return isl_fail(ISL_ERROR_INTERNAL, "tower %d ends at %dx%d, not %dx%d", s, x.h, x.w,
                            cat_h, cat_w);
    }
    tref x = cat;
    xbuf = BUF_X1;
    for (int i = a->tower_first[ISL_UPPER_TOWER]; i < a->num_modules; i++) {
        int next = xbuf == BUF_X0 ? BUF_X1 : BUF_X0;
        tref out = tensor(b, next, l->modules[i].out.padded, x.h - 2, x.w - 2);
        ISL_CHECK(add_module(b, &a->modules[i], &l->modules[i], x, out));
        x = out;
        xbuf = next;
    }
    if (x.h != plan->out_h || x.w != plan->out_w)
        return isl_fail(ISL_ERROR_INTERNAL, "trunk ends at %dx%d, not %dx%d", x.h, x.w,
                        plan->out_h, plan->out_w);
    plan->trunk_out = x;
    return ISL_OK;
}

isl_status isl_blocked_build_head(builder *b, const isl_layout *l, int h, int out_ch)
{
    isl_plan *plan = b->plan;
    tref trunk = plan->head_in;
    tref act = tensor_dt(b, BUF_ACT, 2 * trunk.c, trunk.h, trunk.w, plan->act_dt);
    tref logits = tensor(b, BUF_HEAD, out_ch, trunk.h, trunk.w);
    const isl_head_layout *hl = &l->heads[h];
    ISL_CHECK(add_bnact(b, trunk, &hl->bn, act));
    ISL_CHECK(isl_add_conv(b, CONV, act, logits, 1, 1, hl->weight, hl->bias, 0));
    dnnl_memory_desc_t blocked = isl_tref_md(logits);
    isl_need(b, logits);
    if (b->estimate_only)
        return ISL_OK;
    /* Softmax over each distribution of 256 bins (the autoencoder: one per plane). */
    dnnl_memory_desc_t md = blocked;
    if (out_ch > ISL_NUM_CLASSES) {
        /* [1, nz * 256, h, w] viewed as [nz, 256, h, w]: same bytes, batch = plane. */
        dnnl_dims_t dims = {out_ch / ISL_NUM_CLASSES, ISL_NUM_CLASSES, trunk.h, trunk.w};
        dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32,
                                     logits.blk == 8 ? dnnl_nChw8c : dnnl_nChw16c);
    }
    ISL_CHECK(isl_add_softmax(b, logits, &md));
    /* Channel-major [out_ch, h, w] into the caller's memory. */
    dnnl_memory_desc_t plain = isl_md4(1, out_ch, trunk.h, trunk.w, dnnl_nchw);
    tref ext = tensor(b, BUF_EXTERNAL, out_ch, trunk.h, trunk.w);
    return isl_add_reorder(b, logits, &blocked, ext, &plain);
}
