/* Building blocks of execution plans, shared by the nChw16c and nhwc builders: tensors,
 * steps, oneDNN primitives with user-mode scratchpads, weights, and the layers both
 * layouts describe alike (convolutions, the projection). */
#include "plan_internal.h"

#include "dnnl_md.h"

#include <stdlib.h>
#include <string.h>

isl_status isl_dnnl_fail(dnnl_status_t s, const char *what)
{
    return isl_fail(ISL_ERROR_BACKEND, "oneDNN: %s failed (status %d)", what, (int)s);
}

/* ------------------------------------------------------------------------------------ */
/* Tensors                                                                              */
/* ------------------------------------------------------------------------------------ */

size_t isl_dt_size(dnnl_data_type_t dt) { return dt == dnnl_bf16 ? 2 : 4; }

tref isl_tensor(int buf, size_t offset, int c, int h, int w, dnnl_data_type_t dt, int blk)
{
    tref t = {buf, offset, c, h, w, dt, 0, 0, 0, blk};
    return t;
}

tref isl_tensor_nhwc(int buf, size_t offset, int c, int h, int w, dnnl_data_type_t dt)
{
    tref t = {buf, offset, c, h, w, dt, 1, (size_t)c, (size_t)c * w, 0};
    return t;
}

dnnl_memory_desc_t isl_tref_md(tref t)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {1, t.c, t.h, t.w};
    if (!t.nhwc) {
        dnnl_format_tag_t tag = t.blk == 8 ? dnnl_nChw8c : dnnl_nChw16c;
        dnnl_memory_desc_init_by_tag(&md, 4, dims, t.dt, tag);
    } else if (t.cs == (size_t)t.c && t.rs == (size_t)t.c * t.w) {
        dnnl_memory_desc_init_by_tag(&md, 4, dims, t.dt, dnnl_nhwc);
    } else {
        dnnl_dims_t strides = {(dnnl_dim_t)(t.rs * t.h), 1, (dnnl_dim_t)t.rs, (dnnl_dim_t)t.cs};
        dnnl_memory_desc_init_by_strides(&md, 4, dims, t.dt, strides);
    }
    return md;
}

size_t isl_tref_end(tref t)
{
    size_t elems = t.nhwc ? (size_t)(t.h - 1) * t.rs + (size_t)(t.w - 1) * t.cs + (size_t)t.c
                          : (size_t)t.c * t.h * t.w;
    return t.offset + elems * isl_dt_size(t.dt);
}

/* ------------------------------------------------------------------------------------ */
/* Steps                                                                                */
/* ------------------------------------------------------------------------------------ */

void isl_need(builder *b, tref t)
{
    if (t.buf >= 0 && t.buf < BUF_COUNT) {
        size_t end = isl_tref_end(t);
        if (end > b->plan->buf_bytes[t.buf])
            b->plan->buf_bytes[t.buf] = end;
    }
}

isl_status isl_push_step(builder *b, plan_step **out)
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

isl_status isl_push_kernel(builder *b, step_fn run, plan_step **out)
{
    ISL_CHECK(isl_push_step(b, out));
    (*out)->kind = STEP_KERNEL;
    (*out)->run = run;
    return ISL_OK;
}

void isl_arg_tensor(plan_step *s, int arg, tref t, const dnnl_memory_desc_t *md)
{
    plan_arg *a = &s->args[s->nargs++];
    a->arg = arg;
    a->buf = t.buf;
    a->offset = t.offset;
    a->md = md ? *md : isl_tref_md(t);
    a->persistent = NULL;
}

void isl_arg_persistent(plan_step *s, int arg, dnnl_memory_t mem)
{
    plan_arg *a = &s->args[s->nargs++];
    a->arg = arg;
    a->buf = BUF_NONE;
    a->persistent = mem;
}

dnnl_primitive_attr_t isl_scratchpad_attr(int with_sum, dnnl_alg_kind_t eltwise)
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

isl_status isl_make_primitive(builder *b, const_dnnl_op_desc_t op_desc, int with_sum,
                              dnnl_alg_kind_t eltwise, dnnl_primitive_desc_t *pd_out,
                              const char *what)
{
    dnnl_primitive_attr_t attr = isl_scratchpad_attr(with_sum, eltwise);
    if (!attr)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create attributes for %s", what);
    dnnl_status_t s = dnnl_primitive_desc_create(pd_out, op_desc, attr, b->plan->engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: no implementation for %s (status %d)", what,
                        (int)s);
    return ISL_OK;
}

isl_status isl_finish_primitive(builder *b, plan_step *st, dnnl_primitive_desc_t pd)
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
        return isl_dnnl_fail(s, "dnnl_primitive_create");
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
        st = isl_dnnl_fail(s, "weight reorder");
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

isl_status isl_add_reorder(builder *b, tref src, const dnnl_memory_desc_t *src_md, tref dst,
                           const dnnl_memory_desc_t *dst_md)
{
    isl_need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    plan_step *st = NULL;
    dnnl_primitive_desc_t pd;
    ISL_CHECK(isl_push_step(b, &st));
    dnnl_primitive_attr_t attr = isl_scratchpad_attr(0, dnnl_alg_kind_undef);
    if (!attr)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create reorder attributes");
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, src_md, b->plan->engine, dst_md,
                                                         b->plan->engine, attr);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return isl_dnnl_fail(s, "reorder");
    isl_arg_tensor(st, DNNL_ARG_FROM, src, src_md);
    isl_arg_tensor(st, DNNL_ARG_TO, dst, dst_md);
    return isl_finish_primitive(b, st, pd);
}

/* ------------------------------------------------------------------------------------ */
/* Layers                                                                               */
/* ------------------------------------------------------------------------------------ */

/* Adds the step of a convolution-like primitive pd with its weights (host data in
 * user_w's layout) and optional bias. Consumes pd. */
static isl_status conv_step(builder *b, dnnl_primitive_desc_t pd, tref src,
                            const dnnl_memory_desc_t *smd, const dnnl_memory_desc_t *user_w,
                            const float *weights, const float *bias, int bias_n, tref dst,
                            const dnnl_memory_desc_t *dmd)
{
    plan_step *st = NULL;
    isl_status s = isl_push_step(b, &st);
    if (s != ISL_OK) {
        dnnl_primitive_desc_destroy(pd);
        return s;
    }
    dnnl_memory_t wmem = NULL, bmem = NULL;
    s = persistent_memory(b, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), user_w,
                          weights, &wmem);
    if (s == ISL_OK && bias)
        s = vec_memory(b, bias, bias_n, &bmem);
    if (s != ISL_OK) {
        dnnl_memory_destroy(wmem);
        dnnl_primitive_desc_destroy(pd);
        b->list->count--;
        return s;
    }
    isl_arg_tensor(st, DNNL_ARG_SRC, src, smd);
    isl_arg_persistent(st, DNNL_ARG_WEIGHTS, wmem);
    if (bmem)
        isl_arg_persistent(st, DNNL_ARG_BIAS, bmem);
    isl_arg_tensor(st, DNNL_ARG_DST, dst, dmd);
    return isl_finish_primitive(b, st, pd);
}

isl_status isl_add_conv(builder *b, conv_kind kind, tref src, tref dst, int k, int stride,
                        const float *weights, const float *bias, int accumulate)
{
    isl_need(b, dst);
    if (b->estimate_only)
        return ISL_OK;
    dnnl_memory_desc_t smd = isl_tref_md(src), dmd = isl_tref_md(dst);
    dnnl_memory_desc_t wmd, bmd = isl_md_vec(dst.c);
    dnnl_dims_t wdims = {dst.c, src.c, k, k};
    dnnl_dims_t strides = {stride, stride}, pad = {0, 0};
    /* bf16 plans: bf16 activations and weights in, f32 out (AVX512-BF16 / AMX). */
    dnnl_memory_desc_init_by_tag(&wmd, 4, wdims, src.dt, dnnl_format_tag_any);
    dnnl_primitive_desc_t pd;
    const char *what = kind == CONV ? "convolution" : "deconvolution";
    if (kind == CONV) {
        dnnl_convolution_desc_t d;
        DNNL_TRY(dnnl_convolution_forward_desc_init(&d, dnnl_forward_inference,
                                                    dnnl_convolution_direct, &smd, &wmd,
                                                    bias ? &bmd : NULL, &dmd, strides, pad, pad));
        ISL_CHECK(isl_make_primitive(b, &d, accumulate, dnnl_alg_kind_undef, &pd, what));
    } else {
        dnnl_deconvolution_desc_t d;
        DNNL_TRY(dnnl_deconvolution_forward_desc_init(&d, dnnl_forward_inference,
                                                      dnnl_deconvolution_direct, &smd, &wmd,
                                                      bias ? &bmd : NULL, &dmd, strides, pad,
                                                      pad));
        ISL_CHECK(isl_make_primitive(b, &d, accumulate, dnnl_alg_kind_undef, &pd, what));
    }
    dnnl_memory_desc_t user_w = isl_md4(dst.c, src.c, k, k, dnnl_oihw);
    return conv_step(b, pd, src, &smd, &user_w, weights, bias, dst.c, dst, &dmd);
}

isl_status isl_add_projection(builder *b, const isl_params *p, tref input, tref proj)
{
    const int nz = p->arch.num_z, H = input.h, W = input.w;
    dnnl_memory_desc_t smd = isl_md4(1, nz, H, W, dnnl_nchw);
    isl_need(b, input);
    isl_need(b, proj);
    if (nz >= proj.blk) {
        /* oneDNN's first-layer kernels read a plain source of fewer planes than a block
         * (< 8 with AVX2, < 16 with AVX-512); more go through its reference kernel, so the
         * input is reordered to the blocked layout first, into the BNAct buffer, unused
         * until the first module. oneDNN zero-fills the padded planes. */
        tref blocked = isl_tensor(BUF_ACT, 0, (nz + 15) / 16 * 16, H, W, dnnl_f32, proj.blk);
        dnnl_memory_desc_t blocked_md =
            isl_md4(1, nz, H, W, proj.blk == 8 ? dnnl_nChw8c : dnnl_nChw16c);
        isl_need(b, blocked);
        if (!b->estimate_only)
            ISL_CHECK(isl_add_reorder(b, input, &smd, blocked, &blocked_md));
        input = blocked;
        smd = blocked_md;
    }
    if (b->estimate_only)
        return ISL_OK;
    dnnl_memory_desc_t dmd = isl_tref_md(proj), wmd, bmd = isl_md_vec(proj.c);
    dnnl_memory_desc_t user_w = isl_md4(proj.c, nz, 1, 1, dnnl_oihw);
    dnnl_dims_t wdims = {proj.c, nz, 1, 1}, one = {1, 1}, zero = {0, 0};
    dnnl_convolution_desc_t d;
    dnnl_primitive_desc_t pd;
    dnnl_memory_desc_init_by_tag(&wmd, 4, wdims, dnnl_f32, dnnl_format_tag_any);
    DNNL_TRY(dnnl_convolution_forward_desc_init(&d, dnnl_forward_inference,
                                                dnnl_convolution_direct, &smd, &wmd, &bmd, &dmd,
                                                one, zero, zero));
    ISL_CHECK(isl_make_primitive(b, &d, 0, dnnl_alg_kind_undef, &pd, "projection"));
    return conv_step(b, pd, input, &smd, &user_w, p->projection_weight, p->projection_bias,
                     proj.c, proj, &dmd);
}

isl_status isl_keep_mask(builder *b, const isl_chmap *out, const int **mask)
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

int isl_module_out_side(const isl_module_arch *a, int n)
{
    switch (a->kind) {
    case ISL_MODULE_IN: return n - 2;
    case ISL_MODULE_DOWN: return (n - 4) / 2 + 1;
    case ISL_MODULE_UP: return 2 * n + 2;
    }
    return -1;
}

isl_status isl_add_softmax(builder *b, tref t, const dnnl_memory_desc_t *md)
{
    dnnl_softmax_desc_t d;
    dnnl_primitive_desc_t pd;
    plan_step *st = NULL;
    DNNL_TRY(dnnl_softmax_forward_desc_init(&d, dnnl_forward_inference, md, 1));
    ISL_CHECK(isl_make_primitive(b, &d, 0, dnnl_alg_kind_undef, &pd, "softmax"));
    ISL_CHECK(isl_push_step(b, &st));
    isl_arg_tensor(st, DNNL_ARG_SRC, t, md);
    isl_arg_tensor(st, DNNL_ARG_DST, t, md);
    ISL_CHECK(isl_finish_primitive(b, st, pd));
    st->probabilities_only = 1;
    return ISL_OK;
}
