#include "plan.h"

#include "dnnl_md.h"
#include "error.h"
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Buffers of an isl_exec. Tensors live at byte offsets inside them. */
enum {
    BUF_INPUT,   /* nchw tile input */
    BUF_PROJ,    /* projection output */
    BUF_X0,      /* module inputs/outputs, ping-pong */
    BUF_X1,
    BUF_ACT,     /* BNAct outputs [relu half, tanh half] */
    BUF_E,       /* expand outputs [conv, maxpool] */
    BUF_TMP,     /* down-module residual crops, up-module outputs before their crop */
    BUF_CAT,     /* the five towers, concatenated */
    BUF_HEAD,    /* head logits, blocked */
    BUF_SCRATCH, /* oneDNN scratchpad (user mode: one per exec makes plans shareable) */
    BUF_COUNT,
    BUF_EXTERNAL = BUF_COUNT, /* the caller's head output */
    BUF_NONE = -1
};

#define MAX_ARGS 8

typedef struct plan_arg {
    int arg;                  /* DNNL_ARG_* */
    int buf;                  /* BUF_*, or BUF_NONE for a persistent memory */
    size_t offset;            /* bytes into buf */
    dnnl_memory_desc_t md;
    dnnl_memory_t persistent; /* weights, batch-norm statistics (owned by the plan) */
} plan_arg;

typedef enum { STEP_PRIMITIVE, STEP_ZERO, STEP_UPSAMPLE, STEP_BNACT } step_kind;

typedef struct plan_step {
    step_kind kind;
    dnnl_primitive_t prim;
    int nargs;
    plan_arg args[MAX_ARGS];
    /* STEP_ZERO: args[0] region of `bytes`. STEP_UPSAMPLE: args[0] src x, args[1] dst. */
    size_t bytes;
    int src_h, src_w, channels; /* upsample: x's size, channels to write */
    const int *keep;            /* upsample: [channels] 1 where the residual is kept */
    const isl_bn_padded *bn;    /* BNAct: folded batch norm (owned by the model's layout) */
    int bf16;                   /* BNAct: write bfloat16 */
    int probabilities_only;     /* skipped when the caller wants logits */
} plan_step;

typedef struct step_list {
    int count, capacity;
    plan_step *steps;
} step_list;

struct isl_plan {
    dnnl_engine_t engine;
    int in_h, in_w, out_h, out_w, num_z;
    isl_precision precision;
    dnnl_data_type_t act_dt;  /* BNAct outputs, the inputs of every convolution but the first */
    size_t buf_bytes[BUF_COUNT];
    step_list trunk;
    int num_heads;
    step_list *heads;
    int *head_out_ch;
    int **keep_masks;    /* owned upsample masks, one per up module */
    int num_keep_masks;
    double trunk_macs, trunk_ch_for_head;
};

struct isl_exec {
    const isl_plan *plan;
    dnnl_stream_t stream;
    char *bufs[BUF_COUNT];
    size_t head_capacity;       /* bytes of bufs[BUF_HEAD] */
    dnnl_memory_t *trunk_mems;  /* [steps * MAX_ARGS] */
    dnnl_memory_t **head_mems;
};

/* ------------------------------------------------------------------------------------ */
/* Helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

static isl_status dnnl_fail(dnnl_status_t s, const char *what)
{
    return isl_fail(ISL_ERROR_BACKEND, "oneDNN: %s failed (status %d)", what, (int)s);
}

#define DNNL_TRY(call)                                   \
    do {                                                 \
        dnnl_status_t dnnl_try_s_ = (call);              \
        if (dnnl_try_s_ != dnnl_success)                 \
            return dnnl_fail(dnnl_try_s_, #call);        \
    } while (0)

static dnnl_memory_desc_t md_blocked(int c, int h, int w)
{
    return isl_md4(1, c, h, w, dnnl_nChw16c);
}

static size_t tensor_bytes(int c, int h, int w) { return (size_t)c * h * w * sizeof(float); }

static size_t dt_size(dnnl_data_type_t dt) { return dt == dnnl_bf16 ? 2 : 4; }

/* A tensor in a buffer: padded channels c, size h x w, at a byte offset. */
typedef struct tref {
    int buf;
    size_t offset;
    int c, h, w;
    dnnl_data_type_t dt;
} tref;

static tref tensor(int buf, size_t offset, int c, int h, int w)
{
    tref t = {buf, offset, c, h, w, dnnl_f32};
    return t;
}

static tref tensor_dt(int buf, size_t offset, int c, int h, int w, dnnl_data_type_t dt)
{
    tref t = {buf, offset, c, h, w, dt};
    return t;
}

static size_t tref_bytes(tref t) { return (size_t)t.c * t.h * t.w * dt_size(t.dt); }

static dnnl_memory_desc_t tref_md(tref t)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {1, t.c, t.h, t.w};
    dnnl_memory_desc_init_by_tag(&md, 4, dims, t.dt, dnnl_nChw16c);
    return md;
}

/* The channel range [c0, c0 + n) of t: dense, because the batch is one. */
static tref channels(tref t, int c0, int n)
{
    return tensor_dt(t.buf, t.offset + (size_t)c0 * t.h * t.w * dt_size(t.dt), n, t.h, t.w, t.dt);
}

typedef struct builder {
    isl_plan *plan;
    step_list *list;
    int estimate_only;   /* only track buffer sizes and MACs */
    double macs;
} builder;

static void need(builder *b, tref t)
{
    if (t.buf >= 0 && t.buf < BUF_COUNT) {
        size_t end = t.offset + tref_bytes(t);
        if (end > b->plan->buf_bytes[t.buf])
            b->plan->buf_bytes[t.buf] = end;
    }
}

static isl_status push_step(builder *b, plan_step **out)
{
    step_list *l = b->list;
    if (l->count == l->capacity) {
        int cap = l->capacity ? 2 * l->capacity : 256;
        plan_step *s = realloc(l->steps, sizeof(*s) * (size_t)cap);
        if (!s)
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory building a plan");
        l->steps = s;
        l->capacity = cap;
    }
    *out = &l->steps[l->count++];
    memset(*out, 0, sizeof(**out));
    return ISL_OK;
}

static void arg_tensor(plan_step *s, int arg, tref t, const dnnl_memory_desc_t *md)
{
    plan_arg *a = &s->args[s->nargs++];
    a->arg = arg;
    a->buf = t.buf;
    a->offset = t.offset;
    a->md = md ? *md : tref_md(t);
    a->persistent = NULL;
}

static void arg_persistent(plan_step *s, int arg, dnnl_memory_t mem)
{
    plan_arg *a = &s->args[s->nargs++];
    a->arg = arg;
    a->buf = BUF_NONE;
    a->persistent = mem;
}

/* Attributes: user-mode scratchpad, then optional post-ops (sum, eltwise). */
static dnnl_primitive_attr_t user_scratchpad_attr(int with_sum, dnnl_alg_kind_t eltwise)
{
    dnnl_primitive_attr_t attr = NULL;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success)
        return NULL;
    if (dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) != dnnl_success)
        goto fail;
    if (with_sum || eltwise != dnnl_alg_kind_undef) {
        dnnl_post_ops_t po = NULL;
        if (dnnl_post_ops_create(&po) != dnnl_success)
            goto fail;
        dnnl_status_t s1 = with_sum ? dnnl_post_ops_append_sum(po, 1.0f) : dnnl_success;
        if (s1 == dnnl_success && eltwise != dnnl_alg_kind_undef)
            s1 = dnnl_post_ops_append_eltwise(po, 1.0f, eltwise, 0.0f, 0.0f);
        dnnl_status_t s2 = s1 == dnnl_success ? dnnl_primitive_attr_set_post_ops(attr, po) : s1;
        dnnl_post_ops_destroy(po);
        if (s2 != dnnl_success)
            goto fail;
    }
    return attr;
fail:
    dnnl_primitive_attr_destroy(attr);
    return NULL;
}

/* Creates the primitive of op_desc; records its scratchpad size. */
static isl_status make_primitive(builder *b, const_dnnl_op_desc_t op_desc, int with_sum,
                                 dnnl_alg_kind_t eltwise, dnnl_primitive_desc_t *pd_out,
                                 const char *what)
{
    dnnl_primitive_attr_t attr = user_scratchpad_attr(with_sum, eltwise);
    if (!attr)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create attributes for %s", what);
    dnnl_status_t s = dnnl_primitive_desc_create(pd_out, op_desc, attr, b->plan->engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: no implementation for %s (status %d)", what,
                        (int)s);
    return ISL_OK;
}

static isl_status finish_primitive(builder *b, plan_step *st, dnnl_primitive_desc_t pd)
{
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t sp_bytes = sp ? dnnl_memory_desc_get_size(sp) : 0;
    if (sp_bytes > b->plan->buf_bytes[BUF_SCRATCH])
        b->plan->buf_bytes[BUF_SCRATCH] = sp_bytes;
    if (sp_bytes) {
        plan_arg *a = &st->args[st->nargs++];
        a->arg = DNNL_ARG_SCRATCHPAD;
        a->buf = BUF_SCRATCH;
        a->offset = 0;
        a->md = *sp;
        a->persistent = NULL;
    }
    dnnl_status_t s = dnnl_primitive_create(&st->prim, pd);
    dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success)
        return dnnl_fail(s, "dnnl_primitive_create");
    st->kind = STEP_PRIMITIVE;
    return ISL_OK;
}

/* A persistent memory of md filled from host data laid out as user_md (reordered). */
static isl_status persistent_memory(builder *b, const dnnl_memory_desc_t *md,
                                    const dnnl_memory_desc_t *user_md, const void *data,
                                    dnnl_memory_t *out)
{
    dnnl_engine_t eng = b->plan->engine;
    dnnl_memory_t user = NULL, mem = NULL;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t r = NULL;
    dnnl_stream_t stream = NULL;
    isl_status st = ISL_OK;
    dnnl_status_t s = dnnl_memory_create(&mem, md, eng, DNNL_MEMORY_ALLOCATE);
    if (s == dnnl_success)
        s = dnnl_memory_create(&user, user_md, eng, (void *)data);
    if (s == dnnl_success)
        s = dnnl_reorder_primitive_desc_create(&rpd, user_md, eng, md, eng, NULL);
    if (s == dnnl_success)
        s = dnnl_primitive_create(&r, rpd);
    if (s == dnnl_success)
        s = dnnl_stream_create(&stream, eng, dnnl_stream_default_flags);
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, mem}};
        s = dnnl_primitive_execute(r, stream, 2, args);
        if (s == dnnl_success)
            s = dnnl_stream_wait(stream);
    }
    if (s != dnnl_success) {
        st = dnnl_fail(s, "weight reorder");
        dnnl_memory_destroy(mem);
        mem = NULL;
    }
    dnnl_stream_destroy(stream);
    dnnl_primitive_destroy(r);
    dnnl_primitive_desc_destroy(rpd);
    dnnl_memory_destroy(user);
    *out = mem;
    return st;
}

static isl_status vec_memory(builder *b, const float *data, int n, dnnl_memory_t *out)
{
    dnnl_memory_desc_t md = isl_md_vec(n);
    return persistent_memory(b, &md, &md, data, out);
}

/* ------------------------------------------------------------------------------------ */
/* Layers                                                                               */
/* ------------------------------------------------------------------------------------ */

static isl_status add_reorder(builder *b, tref src, const dnnl_memory_desc_t *src_md, tref dst)
{
    need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    dnnl_memory_desc_t dmd = md_blocked(dst.c, dst.h, dst.w);
    plan_step *st = NULL;
    dnnl_primitive_desc_t pd;
    ISL_CHECK(push_step(b, &st));
    dnnl_primitive_attr_t attr = user_scratchpad_attr(0, dnnl_alg_kind_undef);
    if (!attr)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create reorder attributes");
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, src_md, b->plan->engine, &dmd,
                                                         b->plan->engine, attr);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return dnnl_fail(s, "reorder");
    arg_tensor(st, DNNL_ARG_FROM, src, src_md);
    arg_tensor(st, DNNL_ARG_TO, dst, &dmd);
    return finish_primitive(b, st, pd);
}

/* dst = center crop of src by `border` pixels on each side. */
static isl_status add_crop(builder *b, tref src, int border, tref dst)
{
    dnnl_memory_desc_t parent = md_blocked(src.c, src.h, src.w), sub;
    dnnl_dims_t dims = {1, src.c, src.h - 2 * border, src.w - 2 * border};
    dnnl_dims_t offs = {0, 0, border, border};
    if (dnnl_memory_desc_init_submemory(&sub, &parent, dims, offs) != dnnl_success)
        return isl_fail(ISL_ERROR_INTERNAL, "cannot describe a crop");
    return add_reorder(b, src, &sub, dst);
}

/* dst = [relu(y), tanh(y)] with y = batchnorm(src): the spec's BNAct, in one fused pass
 * (batch normalization, relu and tanh primitives would take three). */
static isl_status add_bnact(builder *b, tref src, const isl_bn_padded *bn, tref dst)
{
    need(b, dst);
    b->macs += 2.0 * src.c * src.h * src.w;
    if (b->estimate_only)
        return ISL_OK;
    plan_step *st = NULL;
    ISL_CHECK(push_step(b, &st));
    st->kind = STEP_BNACT;
    arg_tensor(st, 0, src, NULL);
    arg_tensor(st, 1, dst, NULL);
    st->bf16 = dst.dt == dnnl_bf16;
    st->channels = src.c;
    st->bn = bn;
    return ISL_OK;
}

typedef enum { CONV, DECONV } conv_kind;

/* dst (+)= conv(src) with host weights in oihw (padded), optional bias. */
static isl_status add_conv(builder *b, conv_kind kind, tref src, tref dst, int k, int stride,
                           const float *weights, const float *bias, int accumulate)
{
    need(b, dst);
    b->macs += (double)dst.c * src.c * k * k * (kind == CONV ? (double)dst.h * dst.w
                                                             : (double)src.h * src.w);
    if (b->estimate_only)
        return ISL_OK;
    dnnl_memory_desc_t smd = tref_md(src), dmd = tref_md(dst);
    dnnl_memory_desc_t wmd, bmd = isl_md_vec(dst.c);
    dnnl_dims_t wdims = {dst.c, src.c, k, k};
    dnnl_dims_t strides = {stride, stride}, pad = {0, 0};
    /* bf16 plans: bf16 activations and weights in, f32 out (AVX512-BF16 / AMX). */
    dnnl_memory_desc_init_by_tag(&wmd, 4, wdims, src.dt, dnnl_format_tag_any);
    dnnl_primitive_desc_t pd;
    plan_step *st = NULL;
    const char *what = kind == CONV ? "convolution" : "deconvolution";
    if (kind == CONV) {
        dnnl_convolution_desc_t d;
        DNNL_TRY(dnnl_convolution_forward_desc_init(&d, dnnl_forward_inference,
                                                    dnnl_convolution_direct, &smd, &wmd,
                                                    bias ? &bmd : NULL, &dmd, strides, pad, pad));
        ISL_CHECK(make_primitive(b, &d, accumulate, dnnl_alg_kind_undef, &pd, what));
    } else {
        dnnl_deconvolution_desc_t d;
        DNNL_TRY(dnnl_deconvolution_forward_desc_init(&d, dnnl_forward_inference,
                                                      dnnl_deconvolution_direct, &smd, &wmd,
                                                      bias ? &bmd : NULL, &dmd, strides, pad,
                                                      pad));
        ISL_CHECK(make_primitive(b, &d, accumulate, dnnl_alg_kind_undef, &pd, what));
    }
    ISL_CHECK(push_step(b, &st));
    dnnl_memory_t wmem = NULL, bmem = NULL;
    dnnl_memory_desc_t user_w = isl_md4(dst.c, src.c, k, k, dnnl_oihw);
    isl_status s = persistent_memory(b, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0),
                                     &user_w, weights, &wmem);
    if (s == ISL_OK && bias)
        s = vec_memory(b, bias, dst.c, &bmem);
    if (s != ISL_OK) {
        dnnl_memory_destroy(wmem);
        dnnl_primitive_desc_destroy(pd);
        b->list->count--;
        return s;
    }
    arg_tensor(st, DNNL_ARG_SRC, src, &smd);
    arg_persistent(st, DNNL_ARG_WEIGHTS, wmem);
    if (bmem)
        arg_persistent(st, DNNL_ARG_BIAS, bmem);
    arg_tensor(st, DNNL_ARG_DST, dst, &dmd);
    return finish_primitive(b, st, pd);
}

static isl_status add_pool(builder *b, dnnl_alg_kind_t alg, tref src, tref dst, int k, int stride)
{
    need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    dnnl_memory_desc_t smd = md_blocked(src.c, src.h, src.w);
    dnnl_memory_desc_t dmd = md_blocked(dst.c, dst.h, dst.w);
    dnnl_dims_t strides = {stride, stride}, kernel = {k, k}, pad = {0, 0};
    dnnl_pooling_desc_t d;
    dnnl_primitive_desc_t pd;
    plan_step *st = NULL;
    DNNL_TRY(dnnl_pooling_forward_desc_init(&d, dnnl_forward_inference, alg, &smd, &dmd, strides,
                                            kernel, pad, pad));
    ISL_CHECK(make_primitive(b, &d, 0, dnnl_alg_kind_undef, &pd, "pooling"));
    ISL_CHECK(push_step(b, &st));
    arg_tensor(st, DNNL_ARG_SRC, src, &smd);
    arg_tensor(st, DNNL_ARG_DST, dst, &dmd);
    return finish_primitive(b, st, pd);
}

static isl_status add_zero(builder *b, tref region)
{
    need(b, region);
    if (b->estimate_only || region.c == 0)
        return ISL_OK;
    plan_step *st = NULL;
    ISL_CHECK(push_step(b, &st));
    st->kind = STEP_ZERO;
    arg_tensor(st, 0, region, NULL);
    st->bytes = tensor_bytes(region.c, region.h, region.w);
    return ISL_OK;
}

/* dst = nearest 2x upsampling of src with a 1-pixel replicated border, on the kept
 * channels; zero elsewhere. A memory-bound copy, too small to need oneDNN. */
static isl_status add_upsample(builder *b, tref src, tref dst, const int *keep)
{
    need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    plan_step *st = NULL;
    ISL_CHECK(push_step(b, &st));
    st->kind = STEP_UPSAMPLE;
    arg_tensor(st, 0, src, NULL);
    arg_tensor(st, 1, dst, NULL);
    st->src_h = src.h;
    st->src_w = src.w;
    st->channels = dst.c;
    st->keep = keep;
    return ISL_OK;
}

static isl_status keep_mask(builder *b, const isl_chmap *out, const int **mask)
{
    isl_plan *p = b->plan;
    *mask = NULL;
    if (b->estimate_only)
        return ISL_OK;
    int **masks = realloc(p->keep_masks, sizeof(*masks) * (size_t)(p->num_keep_masks + 1));
    if (!masks)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory building a plan");
    p->keep_masks = masks;
    int *m = calloc((size_t)out->padded, sizeof(int));
    if (!m)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory building a plan");
    for (int c = 0; c < out->count; c++)
        m[out->pos[c]] = 1;
    masks[p->num_keep_masks++] = m;
    *mask = m;
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
    tref act_x = tensor_dt(BUF_ACT, 0, 2 * x.c, x.h, x.w, adt);
    tref e = tensor(BUF_E, 0, ml->e.padded, oh, ow);
    tref act_e = tensor_dt(BUF_ACT, 0, 2 * e.c, oh, ow, adt);

    ISL_CHECK(add_bnact(b, x, &ml->bn1, act_x));
    if (a->kind == ISL_MODULE_UP) {
        ISL_CHECK(add_conv(b, DECONV, act_x, channels(e, 0, ml->conv_padded), k, 2,
                           ml->expand_weight, NULL, 0));
    } else {
        int stride = a->kind == ISL_MODULE_DOWN ? 2 : 1;
        ISL_CHECK(add_conv(b, CONV, act_x, channels(e, 0, ml->conv_padded), k, stride,
                           ml->expand_weight, NULL, 0));
        ISL_CHECK(add_pool(b, dnnl_pooling_max, x, channels(e, ml->conv_padded, x.c), k, stride));
    }
    ISL_CHECK(add_bnact(b, e, &ml->bn2, act_e));

    /* The residual goes into out first; the reduce conv then adds onto it. */
    switch (a->kind) {
    case ISL_MODULE_IN:
        ISL_CHECK(add_crop(b, x, 1, channels(out, 0, x.c)));
        ISL_CHECK(add_zero(b, channels(out, x.c, out.c - x.c)));
        break;
    case ISL_MODULE_DOWN: {
        tref cropped = tensor(BUF_TMP, 0, x.c, x.h - 2, x.w - 2);
        ISL_CHECK(add_crop(b, x, 1, cropped));
        ISL_CHECK(add_pool(b, dnnl_pooling_avg_exclude_padding, cropped, channels(out, 0, x.c),
                           2, 2));
        ISL_CHECK(add_zero(b, channels(out, x.c, out.c - x.c)));
        break;
    }
    case ISL_MODULE_UP: {
        const int *keep;
        ISL_CHECK(keep_mask(b, &ml->out, &keep));
        ISL_CHECK(add_upsample(b, x, out, keep));
        break;
    }
    }
    return add_conv(b, CONV, act_e, out, 1, 1, ml->reduce_weight, NULL, 1);
}

static int module_out_side(const isl_module_arch *a, int n)
{
    switch (a->kind) {
    case ISL_MODULE_IN: return n - 2;
    case ISL_MODULE_DOWN: return (n - 4) / 2 + 1;
    case ISL_MODULE_UP: return 2 * n + 2;
    }
    return -1;
}

static isl_status build_trunk(builder *b, const isl_params *p, const isl_layout *l)
{
    const isl_arch *a = &p->arch;
    isl_plan *plan = b->plan;
    const int H = plan->in_h, W = plan->in_w;
    tref input = tensor(BUF_INPUT, 0, a->num_z, H, W);
    tref proj = tensor(BUF_PROJ, 0, ISL_PROJECTION_DEPTH, H, W);
    need(b, input);

    /* Projection: 1x1 conv with bias from the plain nchw input. */
    {
        need(b, proj);
        b->macs += (double)ISL_PROJECTION_DEPTH * a->num_z * H * W;
        if (!b->estimate_only) {
            dnnl_memory_desc_t smd = isl_md4(1, a->num_z, H, W, dnnl_nchw);
            dnnl_memory_desc_t dmd = md_blocked(proj.c, H, W), wmd, bmd = isl_md_vec(proj.c);
            dnnl_memory_desc_t user_w = isl_md4(proj.c, a->num_z, 1, 1, dnnl_oihw);
            dnnl_dims_t wdims = {proj.c, a->num_z, 1, 1}, one = {1, 1}, zero = {0, 0};
            dnnl_convolution_desc_t d;
            dnnl_primitive_desc_t pd;
            plan_step *st = NULL;
            dnnl_memory_t wmem = NULL, bmem = NULL;
            dnnl_memory_desc_init_by_tag(&wmd, 4, wdims, dnnl_f32, dnnl_format_tag_any);
            DNNL_TRY(dnnl_convolution_forward_desc_init(&d, dnnl_forward_inference,
                                                        dnnl_convolution_direct, &smd, &wmd,
                                                        &bmd, &dmd, one, zero, zero));
            ISL_CHECK(make_primitive(b, &d, 0, dnnl_alg_kind_undef, &pd, "projection"));
            ISL_CHECK(push_step(b, &st));
            isl_status s = persistent_memory(
                b, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), &user_w,
                p->projection_weight, &wmem);
            if (s == ISL_OK)
                s = vec_memory(b, p->projection_bias, proj.c, &bmem);
            if (s != ISL_OK) {
                dnnl_memory_destroy(wmem);
                dnnl_primitive_desc_destroy(pd);
                b->list->count--;
                return s;
            }
            arg_tensor(st, DNNL_ARG_SRC, input, &smd);
            arg_persistent(st, DNNL_ARG_WEIGHTS, wmem);
            arg_persistent(st, DNNL_ARG_BIAS, bmem);
            arg_tensor(st, DNNL_ARG_DST, proj, &dmd);
            ISL_CHECK(finish_primitive(b, st, pd));
        }
    }

    const int cat_h = 36 + (H - ISL_PATCH_INPUT), cat_w = 36 + (W - ISL_PATCH_INPUT);
    tref cat = tensor(BUF_CAT, 0, l->concat.padded, cat_h, cat_w);
    need(b, cat);
    int xbuf = BUF_X0;
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        int border = (ISL_PATCH_INPUT - isl_tower_start_size[s]) / 2;
        tref x = tensor(BUF_X0, 0, ISL_PROJECTION_DEPTH, H - 2 * border, W - 2 * border);
        ISL_CHECK(add_crop(b, proj, border, x));
        xbuf = BUF_X0;
        int last = a->tower_first[s] + a->tower_count[s] - 1;
        for (int i = a->tower_first[s]; i <= last; i++) {
            const isl_module_arch *m = &a->modules[i];
            const isl_module_layout *ml = &l->modules[i];
            int oh = module_out_side(m, x.h), ow = module_out_side(m, x.w);
            int next = xbuf == BUF_X0 ? BUF_X1 : BUF_X0;
            if (m->kind == ISL_MODULE_UP) {
                tref out = tensor(BUF_TMP, 0, ml->out.padded, oh, ow);
                ISL_CHECK(add_module(b, m, ml, x, out));
                tref cropped = tensor(next, 0, out.c, oh - 4, ow - 4);
                ISL_CHECK(add_crop(b, out, 2, cropped));
                x = cropped;
            } else {
                tref out = i == last ? channels(cat, l->concat_offset[s], ml->out.padded)
                                     : tensor(next, 0, ml->out.padded, oh, ow);
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
        tref out = tensor(next, 0, l->modules[i].out.padded, x.h - 2, x.w - 2);
        ISL_CHECK(add_module(b, &a->modules[i], &l->modules[i], x, out));
        x = out;
        xbuf = next;
    }
    if (x.h != plan->out_h || x.w != plan->out_w)
        return isl_fail(ISL_ERROR_INTERNAL, "trunk ends at %dx%d, not %dx%d", x.h, x.w,
                        plan->out_h, plan->out_w);
    return ISL_OK;
}

/* The trunk's output buffer: where the last upper-tower module wrote. */
static tref trunk_output(const isl_plan *plan, const isl_layout *l)
{
    /* Upper tower starts from BUF_CAT and alternates X0, X1, ... */
    int n = ISL_UPPER_MODULES;
    int buf = (n % 2) ? BUF_X0 : BUF_X1;
    return tensor(buf, 0, l->trunk.padded, plan->out_h, plan->out_w);
}

static isl_status build_head(builder *b, const isl_layout *l, int h, int out_ch)
{
    isl_plan *plan = b->plan;
    tref trunk = trunk_output(plan, l);
    tref act = tensor_dt(BUF_ACT, 0, 2 * trunk.c, trunk.h, trunk.w, plan->act_dt);
    tref logits = tensor(BUF_HEAD, 0, out_ch, trunk.h, trunk.w);
    const isl_head_layout *hl = &l->heads[h];
    ISL_CHECK(add_bnact(b, trunk, &hl->bn, act));
    ISL_CHECK(add_conv(b, CONV, act, logits, 1, 1, hl->weight, hl->bias, 0));
    dnnl_memory_desc_t blocked = md_blocked(out_ch, trunk.h, trunk.w);
    need(b, logits);
    if (b->estimate_only)
        return ISL_OK;
    plan_step *st = NULL;
    dnnl_primitive_desc_t pd;
    /* Softmax over each distribution of 256 bins (the autoencoder: one per plane). */
    {
        dnnl_softmax_desc_t d;
        dnnl_memory_desc_t md = blocked;
        if (out_ch > ISL_NUM_CLASSES) {
            /* [1, nz * 256, h, w] viewed as [nz, 256, h, w]: same bytes, batch = plane. */
            dnnl_dims_t dims = {out_ch / ISL_NUM_CLASSES, ISL_NUM_CLASSES, trunk.h, trunk.w};
            dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32, dnnl_nChw16c);
        }
        DNNL_TRY(dnnl_softmax_forward_desc_init(&d, dnnl_forward_inference, &md, 1));
        ISL_CHECK(make_primitive(b, &d, 0, dnnl_alg_kind_undef, &pd, "softmax"));
        ISL_CHECK(push_step(b, &st));
        arg_tensor(st, DNNL_ARG_SRC, logits, &md);
        arg_tensor(st, DNNL_ARG_DST, logits, &md);
        ISL_CHECK(finish_primitive(b, st, pd));
        st->probabilities_only = 1;
    }
    /* Channel-major [out_ch, h, w] into the caller's memory. */
    dnnl_memory_desc_t plain = isl_md4(1, out_ch, trunk.h, trunk.w, dnnl_nchw);
    ISL_CHECK(push_step(b, &st));
    dnnl_primitive_attr_t attr = user_scratchpad_attr(0, dnnl_alg_kind_undef);
    if (!attr)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create reorder attributes");
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, &blocked, plan->engine, &plain,
                                                         plan->engine, attr);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return dnnl_fail(s, "reorder");
    arg_tensor(st, DNNL_ARG_FROM, logits, &blocked);
    tref ext = tensor(BUF_EXTERNAL, 0, out_ch, trunk.h, trunk.w);
    arg_tensor(st, DNNL_ARG_TO, ext, &plain);
    return finish_primitive(b, st, pd);
}

static void steps_free(step_list *l)
{
    for (int i = 0; i < l->count; i++) {
        plan_step *s = &l->steps[i];
        if (s->prim)
            dnnl_primitive_destroy(s->prim);
        for (int a = 0; a < s->nargs; a++)
            if (s->args[a].persistent)
                dnnl_memory_destroy(s->args[a].persistent);
    }
    free(l->steps);
    memset(l, 0, sizeof(*l));
}

void isl_plan_free(isl_plan *plan)
{
    if (!plan)
        return;
    steps_free(&plan->trunk);
    for (int h = 0; plan->heads && h < plan->num_heads; h++)
        steps_free(&plan->heads[h]);
    free(plan->heads);
    free(plan->head_out_ch);
    for (int i = 0; i < plan->num_keep_masks; i++)
        free(plan->keep_masks[i]);
    free(plan->keep_masks);
    free(plan);
}

static isl_status check_tile(int in_h, int in_w)
{
    if (isl_arch_output_side(in_h) < 0 || isl_arch_output_side(in_w) < 0)
        return isl_fail(ISL_ERROR_SHAPE,
                        "tile of %dx%d: each side must be 250 + 16m (250, 266, 282, ...)", in_h,
                        in_w);
    return ISL_OK;
}

size_t isl_plan_estimate_bytes(const isl_params *p, const isl_layout *l, int in_h, int in_w,
                               int max_head_ch)
{
    isl_plan plan;
    step_list list = {0};
    memset(&plan, 0, sizeof(plan));
    plan.act_dt = dnnl_f32; /* bf16 plans need less: the estimate stays an upper bound */
    plan.in_h = in_h;
    plan.in_w = in_w;
    plan.out_h = isl_arch_output_side(in_h);
    plan.out_w = isl_arch_output_side(in_w);
    builder b = {&plan, &list, 1, 0};
    if (plan.out_h < 0 || plan.out_w < 0 || build_trunk(&b, p, l) != ISL_OK)
        return (size_t)-1;
    if (max_head_ch > 0)
        build_head(&b, l, 0, max_head_ch);
    size_t total = 0;
    for (int i = 0; i < BUF_COUNT; i++)
        total += plan.buf_bytes[i];
    if (getenv("ISL_DEBUG_MEMORY"))
        for (int i = 0; i < BUF_COUNT; i++)
            fprintf(stderr, "buffer %d: %zu MB\n", i, plan.buf_bytes[i] >> 20);
    /* Caller-side head output + scratchpads and oneDNN's own allocations. */
    total += tensor_bytes(max_head_ch, plan.out_h, plan.out_w);
    return total + total / 16 + (16u << 20);
}

isl_status isl_plan_create(const isl_params *p, const isl_layout *l, dnnl_engine_t engine,
                           int in_h, int in_w, isl_precision precision, isl_plan **out)
{
    *out = NULL;
    ISL_CHECK(check_tile(in_h, in_w));
    if (precision == ISL_PRECISION_BF16 && dnnl_get_effective_cpu_isa() < dnnl_cpu_isa_avx512_core_bf16)
        return isl_fail(ISL_ERROR_UNSUPPORTED,
                        "bf16 precision needs a CPU with AVX512-BF16 or AMX; use fp32");
    isl_plan *plan = calloc(1, sizeof(*plan));
    if (!plan)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    plan->engine = engine;
    plan->in_h = in_h;
    plan->in_w = in_w;
    plan->out_h = isl_arch_output_side(in_h);
    plan->out_w = isl_arch_output_side(in_w);
    plan->num_z = p->arch.num_z;
    plan->precision = precision;
    plan->act_dt = precision == ISL_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
    plan->num_heads = p->num_heads;
    plan->heads = calloc((size_t)(p->num_heads ? p->num_heads : 1), sizeof(*plan->heads));
    plan->head_out_ch = calloc((size_t)(p->num_heads ? p->num_heads : 1), sizeof(int));
    isl_status s = ISL_OK;
    if (!plan->heads || !plan->head_out_ch)
        s = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    builder b = {plan, &plan->trunk, 0, 0};
    if (s == ISL_OK)
        s = build_trunk(&b, p, l);
    plan->trunk_macs = b.macs;
    plan->trunk_ch_for_head = 2.0 * l->trunk.padded;
    for (int h = 0; s == ISL_OK && h < p->num_heads; h++) {
        builder hb = {plan, &plan->heads[h], 0, 0};
        plan->head_out_ch[h] = p->heads[h].out_ch;
        s = build_head(&hb, l, h, p->heads[h].out_ch);
    }
    if (s != ISL_OK) {
        isl_plan_free(plan);
        return s;
    }
    *out = plan;
    return ISL_OK;
}

int isl_plan_input_height(const isl_plan *plan) { return plan->in_h; }
int isl_plan_input_width(const isl_plan *plan) { return plan->in_w; }
isl_precision isl_plan_precision(const isl_plan *plan) { return plan->precision; }
double isl_plan_trunk_macs(const isl_plan *plan) { return plan->trunk_macs; }

double isl_plan_head_macs(const isl_plan *plan, int out_ch)
{
    return plan->trunk_ch_for_head * out_ch * plan->out_h * plan->out_w;
}

/* ------------------------------------------------------------------------------------ */
/* Execution                                                                            */
/* ------------------------------------------------------------------------------------ */

static isl_status make_mems(isl_exec *e, const step_list *l, dnnl_memory_t **out)
{
    dnnl_memory_t *mems = calloc((size_t)(l->count ? l->count : 1) * MAX_ARGS, sizeof(*mems));
    *out = mems;
    if (!mems)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i < l->count; i++) {
        const plan_step *s = &l->steps[i];
        if (s->kind != STEP_PRIMITIVE)
            continue;
        for (int a = 0; a < s->nargs; a++) {
            const plan_arg *pa = &s->args[a];
            if (pa->buf == BUF_NONE)
                continue;
            void *ptr = pa->buf == BUF_EXTERNAL ? NULL : e->bufs[pa->buf] + pa->offset;
            if (dnnl_memory_create(&mems[i * MAX_ARGS + a], &pa->md, e->plan->engine, ptr) !=
                dnnl_success)
                return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create a memory object");
        }
    }
    return ISL_OK;
}

static void free_mems(const step_list *l, dnnl_memory_t *mems)
{
    if (!mems)
        return;
    for (int i = 0; i < l->count * MAX_ARGS; i++)
        if (mems[i])
            dnnl_memory_destroy(mems[i]);
    free(mems);
}

void isl_exec_free(isl_exec *e)
{
    if (!e)
        return;
    const isl_plan *plan = e->plan;
    free_mems(&plan->trunk, e->trunk_mems);
    for (int h = 0; e->head_mems && h < plan->num_heads; h++)
        free_mems(&plan->heads[h], e->head_mems[h]);
    free(e->head_mems);
    for (int i = 0; i < BUF_COUNT; i++)
        free(e->bufs[i]);
    if (e->stream)
        dnnl_stream_destroy(e->stream);
    free(e);
}

isl_status isl_exec_create(const isl_plan *plan, isl_exec **out)
{
    *out = NULL;
    isl_exec *e = calloc(1, sizeof(*e));
    if (!e)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    e->plan = plan;
    isl_status s = ISL_OK;
    if (getenv("ISL_DEBUG_MEMORY"))
        for (int i = 0; i < BUF_COUNT; i++)
            fprintf(stderr, "exec %dx%d buffer %d: %zu MB\n", plan->in_h, plan->in_w, i,
                    plan->buf_bytes[i] >> 20);
    for (int i = 0; i < BUF_COUNT && s == ISL_OK; i++) {
        if (i == BUF_HEAD)
            continue; /* sized for the heads actually run: see ensure_head */
        size_t bytes = (plan->buf_bytes[i] + 4095) / 4096 * 4096;
        e->bufs[i] = aligned_alloc(4096, bytes ? bytes : 4096);
        if (!e->bufs[i])
            s = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory: %zu MB of working memory",
                         bytes >> 20);
        else if (i == BUF_INPUT || i == BUF_CAT)
            memset(e->bufs[i], 0, bytes); /* padded channels must read as zeros */
    }
    if (s == ISL_OK && dnnl_stream_create(&e->stream, plan->engine, dnnl_stream_default_flags) !=
                           dnnl_success)
        s = isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create a stream");
    if (s == ISL_OK)
        s = make_mems(e, &plan->trunk, &e->trunk_mems);
    if (s == ISL_OK) {
        e->head_mems = calloc((size_t)(plan->num_heads ? plan->num_heads : 1), sizeof(*e->head_mems));
        if (!e->head_mems)
            s = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    if (s != ISL_OK) {
        isl_exec_free(e);
        return s;
    }
    *out = e;
    return ISL_OK;
}

float *isl_exec_input(isl_exec *e) { return (float *)e->bufs[BUF_INPUT]; }

static void run_upsample(const plan_step *s, char *const *bufs)
{
    const float *src = (const float *)(bufs[s->args[0].buf] + s->args[0].offset);
    float *dst = (float *)(bufs[s->args[1].buf] + s->args[1].offset);
    const int h = s->src_h, w = s->src_w, oh = 2 * h + 2, ow = 2 * w + 2;
    const int blocks = s->channels / 16;
#pragma omp parallel for collapse(2) schedule(static)
    for (int cb = 0; cb < blocks; cb++) {
        for (int y = 0; y < oh; y++) {
            int sy = (y - 1) / 2; /* (y - 1) div 2, clamped: replicates the border */
            sy = y == 0 ? 0 : (sy > h - 1 ? h - 1 : sy);
            const float *srow = src + ((size_t)cb * h + sy) * w * 16;
            float *drow = dst + ((size_t)cb * oh + y) * ow * 16;
            const int *keep = s->keep + cb * 16;
            for (int x = 0; x < ow; x++) {
                int sx = x == 0 ? 0 : ((x - 1) / 2 > w - 1 ? w - 1 : (x - 1) / 2);
                for (int c = 0; c < 16; c++)
                    drow[x * 16 + c] = keep[c] ? srow[sx * 16 + c] : 0.0f;
            }
        }
    }
}

static isl_status run_steps(isl_exec *e, const step_list *l, dnnl_memory_t *mems, float *external,
                            int probabilities)
{
    dnnl_exec_arg_t args[MAX_ARGS];
    for (int i = 0; i < l->count; i++) {
        const plan_step *s = &l->steps[i];
        if (s->probabilities_only && !probabilities)
            continue;
        switch (s->kind) {
        case STEP_ZERO:
            memset(e->bufs[s->args[0].buf] + s->args[0].offset, 0, s->bytes);
            break;
        case STEP_UPSAMPLE:
            run_upsample(s, e->bufs);
            break;
        case STEP_BNACT: {
            const plan_arg *src = &s->args[0], *dst = &s->args[1];
            size_t pixels = (size_t)src->md.dims[2] * src->md.dims[3];
            const float *x = (const float *)(e->bufs[src->buf] + src->offset);
            char *out = e->bufs[dst->buf] + dst->offset;
            size_t half = (size_t)s->channels * pixels * (s->bf16 ? 2 : 4);
            if (s->bf16)
                isl_kernel_bnact_bf16(x, s->bn->scale, s->bn->shift, s->channels, pixels,
                                      (uint16_t *)out, (uint16_t *)(out + half));
            else
                isl_kernel_bnact(x, s->bn->scale, s->bn->shift, s->channels, pixels,
                                 (float *)out, (float *)(out + half));
            break;
        }
        case STEP_PRIMITIVE:
            for (int a = 0; a < s->nargs; a++) {
                const plan_arg *pa = &s->args[a];
                args[a].arg = pa->arg;
                args[a].memory = pa->persistent ? pa->persistent : mems[i * MAX_ARGS + a];
                if (pa->buf == BUF_EXTERNAL &&
                    dnnl_memory_set_data_handle_v2(args[a].memory, external, e->stream) !=
                        dnnl_success)
                    return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot set an output buffer");
            }
            if (dnnl_primitive_execute(s->prim, e->stream, s->nargs, args) != dnnl_success)
                return isl_fail(ISL_ERROR_BACKEND, "oneDNN: primitive %d failed to execute", i);
            break;
        }
    }
    if (dnnl_stream_wait(e->stream) != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: stream wait failed");
    return ISL_OK;
}

isl_status isl_exec_run_trunk(isl_exec *e)
{
    return run_steps(e, &e->plan->trunk, e->trunk_mems, NULL, 0);
}

/* The head buffer grows to the largest head run so far (the autoencoder's is 13x a label
 * head's); memory objects of a head are made on its first run. */
static isl_status ensure_head(isl_exec *e, int head)
{
    const isl_plan *plan = e->plan;
    size_t need = tensor_bytes(plan->head_out_ch[head], plan->out_h, plan->out_w);
    if (need > e->head_capacity) {
        for (int h = 0; h < plan->num_heads; h++) {
            free_mems(&plan->heads[h], e->head_mems[h]);
            e->head_mems[h] = NULL;
        }
        free(e->bufs[BUF_HEAD]);
        size_t bytes = (need + 4095) / 4096 * 4096;
        e->bufs[BUF_HEAD] = aligned_alloc(4096, bytes);
        e->head_capacity = e->bufs[BUF_HEAD] ? bytes : 0;
        if (!e->bufs[BUF_HEAD])
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory: %zu MB for head outputs",
                            bytes >> 20);
    }
    if (!e->head_mems[head])
        return make_mems(e, &plan->heads[head], &e->head_mems[head]);
    return ISL_OK;
}

isl_status isl_exec_run_head(isl_exec *e, int head, int probabilities, float *out)
{
    if (head < 0 || head >= e->plan->num_heads || !out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "invalid head %d", head);
    ISL_CHECK(ensure_head(e, head));
    return run_steps(e, &e->plan->heads[head], e->head_mems[head], out, probabilities);
}
