#include "train_net.h"
#include "dnnl_md.h"

#include "cpu.h"
#include "dropout.h"
#include "error.h"
#include "train_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------ */
/* Structures                                                                           */
/* ------------------------------------------------------------------------------------ */

/* A primitive and its share of the net's one scratchpad (user mode). */
typedef struct prim {
    dnnl_primitive_t p;
    dnnl_memory_desc_t sp_md;
    dnnl_memory_t sp;
} prim;

/* Staging, on CPUs without AVX-512: oneDNN 2.6 runs nChw16c convolutions and poolings
 * with its reference kernels there (~20x slower) but has AVX2 kernels for nChw8c. Each
 * such primitive then works on nChw8c copies in three staging buffers shared by all
 * layers (STAGE_*), reordered from and to the nChw16c tensors that the kernels of
 * train_kernels.c work on. A staged tensor: its own memory, its copy, the reorders. */
enum { STAGE_SRC, STAGE_DST, STAGE_DSRC, STAGE_COUNT };

typedef struct staged {
    dnnl_memory_t own, copy; /* copy: NULL when not staged */
    prim in, out;            /* own -> copy (inputs), copy -> own (outputs) */
} staged;

typedef struct stage_ref {
    dnnl_memory_t copy;
    int buf;                 /* STAGE_* */
} stage_ref;

/* A convolution or transposed convolution with its three passes and weight reorders.
 * oneDNN sees every channel count rounded up to 16 (the storage is the same, the padding
 * channels are zero) so that it always picks its blocked JIT kernels; the weights are
 * zero-padded to match (w_pad), and the real part of their gradient copied out. */
typedef struct conv {
    prim fwd, bwd_d, bwd_w;
    prim pack_f, pack_b, unpack; /* plain -> fwd / bwd_data weights; diff weights -> plain */
    dnnl_memory_t w_user, w_f, w_b, dw, dw_user, bias, dbias;
    dnnl_memory_t src, dst, dsrc, ddst; /* what the primitives take (staged: the copies) */
    staged s_src, s_dst, s_dsrc, s_ddst;
    int with_sum;
    int oc, ic, ocp, icp, kk, iohw;
    const float *w;      /* the parameters, PyTorch layout */
    float *dw_out;       /* their gradient */
    float *w_pad, *dw_pad; /* zero-padded copies, or NULL when no padding is needed */
} conv;

typedef struct module {
    const isl_module_arch *a;
    int index;
    isl_tt x;          /* input: another tensor's storage */
    isl_tt conv, pool; /* expand conv output, maxpool output (in/down only) */
    isl_tt out;        /* r + residual (up: before the crop) */
    isl_tt next;       /* next module's input: out, or for up its 2-pixel crop */
    isl_tt act1, act2; /* BNAct outputs: its own (keep_module_acts), else shared scratch */
    int skipped;       /* stochastic depth: the branch r is skipped in this step */
    float keep;        /* else its survival probability (r is scaled by 1 / keep) */
    /* Gradients (shared scratch buffers, assigned once in backward order). */
    isl_tt dx, dout, dnext, dconv, dpool, dact1, dact2;
    float *mean1, *invstd1, *mean2, *invstd2; /* batch statistics of the last forward */
    conv expand, reduce;
    prim pool_f, pool_b;
    dnnl_memory_t pool_src, pool_dst, pool_ws, pool_ddst, pool_dsrc;
    staged s_pool_src, s_pool_dst, s_pool_ddst, s_pool_dsrc;
} module;

typedef struct head {
    int out_ch, active;
    isl_tt act, dact, logits; /* logits: blocked; also its gradient in the backward pass */
    float *plain;             /* [batch, out_ch, oh, ow]: logits, then their gradient */
    conv cv;
    prim to_plain, from_plain;
    dnnl_memory_t m_blk, m_plain;
} head;

struct isl_train_net {
    isl_params *p, *g;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int batch, in_h, in_w, out_h, out_w, num_z, input_grad;
    int keep_module_acts; /* modules keep their BNAct outputs from forward to backward */
    int keep_head_acts;   /* heads keep theirs (the dropped one, with dropout) */

    float *input, *dinput;    /* plain nchw */
    isl_tt in_blk, din_blk;   /* the same, blocked: oneDNN's backward-weights of a 1x1
                                 convolution from plain nchw is its slow reference code */
    prim in_reorder, din_reorder;
    dnnl_memory_t m_in, m_in_blk, m_din, m_din_blk;
    isl_tt proj, dproj;
    isl_tt x0[ISL_NUM_TOWERS];
    int cat_offset[ISL_NUM_TOWERS];
    isl_tt cat, dcat;
    module *mods;
    int num_mods;
    head *heads;
    int num_heads;
    float *trunk_mean, *trunk_invstd;
    float *stored_invstd; /* [trunk_ch]: a head's stored 1/sqrt(var + eps) in a backward */
    conv proj_cv;
    isl_net_mode mode;    /* of the last forward */
    isl_tk_sync sync;     /* batch statistics over all processes (sync.sum not NULL) */
    isl_train_net_ready_fn ready; /* gradients final during a backward pass, or NULL */
    void *ready_user;
    /* Dropout of the heads' inputs in the next forward and backward (rate 0: none). */
    double dropout;
    int dropout_whole;
    uint64_t dropout_seed;
    int64_t dropout_step;
    int64_t dropout_first_crop; /* in the global batch of a data-parallel step */
    /* Stochastic depth in the next forward and backward (rate 0: none). */
    double depth_rate;
    uint64_t depth_seed;
    int64_t depth_step;

    /* Scratch buffers shared by all layers. */
    float *s_act, *s_dact, *g_buf[2], *g_conv, *g_pool;
    size_t n_act, n_dact, n_g, n_conv, n_pool; /* floats */
    int stage8;                        /* stage primitives in nChw8c (no AVX-512) */
    size_t n_stage[STAGE_COUNT];       /* bytes */
    stage_ref *stage_refs;             /* every staged copy, pointed at its buffer at the end */
    int num_stage, cap_stage;
    void *scratchpad;
    size_t scratchpad_bytes;

    /* Per-channel work arrays (the widest batch norm). */
    double *wd_mean, *wd_var;
    float *wf_scale, *wf_shift;

    /* Everything to release. */
    void **allocs;
    int num_allocs, cap_allocs;
    prim **prims;
    int num_prims, cap_prims;
    dnnl_memory_t *mems;
    int num_mems, cap_mems;
};

/* ------------------------------------------------------------------------------------ */
/* Allocation and registration                                                          */
/* ------------------------------------------------------------------------------------ */

static int grow(void **array, int *cap, int count, size_t item)
{
    if (count < *cap)
        return 0;
    int c = *cap ? 2 * *cap : 64;
    void *a = realloc(*array, item * (size_t)c);
    if (!a)
        return -1;
    *array = a;
    *cap = c;
    return 0;
}

static isl_status oom(void)
{
    return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory building the training network");
}

/* Zeroed, 64-byte aligned floats owned by the net. */
static isl_status alloc_floats(isl_train_net *n, size_t count, float **out)
{
    size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
    if (grow((void **)&n->allocs, &n->cap_allocs, n->num_allocs, sizeof(void *)))
        return oom();
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (!p)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory: %zu MB for training activations",
                        bytes >> 20);
    memset(p, 0, bytes ? bytes : 64);
    n->allocs[n->num_allocs++] = p;
    *out = p;
    return ISL_OK;
}

static isl_status alloc_tt(isl_train_net *n, isl_tt *t)
{
    return alloc_floats(n, isl_tt_floats(t->n, t->c, t->h, t->w), &t->v);
}

static isl_status dnnl_failed(dnnl_status_t s, const char *what)
{
    return isl_fail(ISL_ERROR_BACKEND, "oneDNN: %s failed (status %d)", what, (int)s);
}

#define DNNL_TRY(call, what)                         \
    do {                                             \
        dnnl_status_t dnnl_try_s_ = (call);          \
        if (dnnl_try_s_ != dnnl_success)             \
            return dnnl_failed(dnnl_try_s_, what);   \
    } while (0)

/* A memory object over ptr (DNNL_MEMORY_ALLOCATE: oneDNN allocates), freed with the net. */
static isl_status make_mem(isl_train_net *n, const dnnl_memory_desc_t *md, void *ptr,
                           dnnl_memory_t *out)
{
    if (grow((void **)&n->mems, &n->cap_mems, n->num_mems, sizeof(dnnl_memory_t)))
        return oom();
    DNNL_TRY(dnnl_memory_create(out, md, n->engine, ptr), "memory creation");
    n->mems[n->num_mems++] = *out;
    return ISL_OK;
}

static int pad16(int c) { return (c + 15) / 16 * 16; }

static dnnl_memory_desc_t md_tt(const isl_tt *t)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {t->n, pad16(t->c), t->h, t->w};
    dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32, dnnl_nChw16c);
    return md;
}

static dnnl_primitive_attr_t make_attr(int with_sum)
{
    dnnl_primitive_attr_t attr = NULL;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success)
        return NULL;
    if (dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) != dnnl_success)
        goto fail;
    if (with_sum) {
        dnnl_post_ops_t po = NULL;
        if (dnnl_post_ops_create(&po) != dnnl_success)
            goto fail;
        dnnl_status_t s = dnnl_post_ops_append_sum(po, 1.0f);
        if (s == dnnl_success)
            s = dnnl_primitive_attr_set_post_ops(attr, po);
        dnnl_post_ops_destroy(po);
        if (s != dnnl_success)
            goto fail;
    }
    return attr;
fail:
    dnnl_primitive_attr_destroy(attr);
    return NULL;
}

/* Primitive descriptor of op_desc (hint: the forward pd of a backward pass). */
static isl_status make_pd(isl_train_net *n, const_dnnl_op_desc_t d, int with_sum,
                          const_dnnl_primitive_desc_t hint, dnnl_primitive_desc_t *pd,
                          const char *what)
{
    dnnl_primitive_attr_t attr = make_attr(with_sum);
    if (!attr)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create attributes for %s", what);
    dnnl_status_t s = dnnl_primitive_desc_create(pd, d, attr, n->engine, hint);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: no implementation for %s (status %d)", what,
                        (int)s);
    return ISL_OK;
}

/* Creates the primitive of pd and records its scratchpad need. Does not take pd. */
static isl_status make_prim(isl_train_net *n, const_dnnl_primitive_desc_t pd, prim *p)
{
    if (grow((void **)&n->prims, &n->cap_prims, n->num_prims, sizeof(prim *)))
        return oom();
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t bytes = sp ? dnnl_memory_desc_get_size(sp) : 0;
    memset(&p->sp_md, 0, sizeof(p->sp_md));
    if (bytes) {
        p->sp_md = *sp;
        if (bytes > n->scratchpad_bytes)
            n->scratchpad_bytes = bytes;
    }
    DNNL_TRY(dnnl_primitive_create(&p->p, pd), "primitive creation");
    n->prims[n->num_prims++] = p;
    return ISL_OK;
}

static isl_status make_reorder(isl_train_net *n, const dnnl_memory_desc_t *from,
                               const dnnl_memory_desc_t *to, prim *p)
{
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = make_attr(0);
    if (!attr)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create reorder attributes");
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, from, n->engine, to, n->engine, attr);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success)
        return dnnl_failed(s, "reorder");
    isl_status st = make_prim(n, pd, p);
    dnnl_primitive_desc_destroy(pd);
    return st;
}

/* Executes p with up to 6 arguments (plus its scratchpad). */
static isl_status run(isl_train_net *n, const prim *p, int nargs, const dnnl_exec_arg_t *args,
                      const char *what)
{
    dnnl_exec_arg_t a[8];
    memcpy(a, args, sizeof(*a) * (size_t)nargs);
    if (p->sp)
        a[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->sp};
    if (dnnl_primitive_execute(p->p, n->stream, nargs, a) != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: %s failed to execute", what);
    return ISL_OK;
}

static isl_status run_reorder(isl_train_net *n, const prim *p, dnnl_memory_t from, dnnl_memory_t to,
                              const char *what)
{
    dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    return run(n, p, 2, a, what);
}

/* What a primitive is described with for an nChw16c tensor of md's dims: md, or when
 * staging nChw8c. */
static dnnl_memory_desc_t md_prim(const isl_train_net *n, const dnnl_memory_desc_t *md)
{
    dnnl_memory_desc_t m8 = *md;
    if (n->stage8)
        dnnl_memory_desc_init_by_tag(&m8, md->ndims, md->dims, md->data_type, dnnl_nChw8c);
    return m8;
}

/* The memory a primitive takes for the nChw16c tensor md at ptr: ptr's, or when staging
 * a copy in staging buffer buf, filled from ptr before the primitive runs (in) and/or
 * copied back after (out). */
static isl_status stage(isl_train_net *n, const dnnl_memory_desc_t *md, void *ptr, int buf,
                        int in, int out, staged *s, dnnl_memory_t *mem)
{
    ISL_CHECK(make_mem(n, md, ptr, &s->own));
    *mem = s->own;
    if (!n->stage8)
        return ISL_OK;
    dnnl_memory_desc_t m8 = md_prim(n, md);
    size_t bytes = dnnl_memory_desc_get_size(&m8);
    if (grow((void **)&n->stage_refs, &n->cap_stage, n->num_stage, sizeof(stage_ref)))
        return oom();
    ISL_CHECK(make_mem(n, &m8, DNNL_MEMORY_NONE, &s->copy));
    n->stage_refs[n->num_stage++] = (stage_ref){s->copy, buf};
    if (bytes > n->n_stage[buf])
        n->n_stage[buf] = bytes;
    if (in)
        ISL_CHECK(make_reorder(n, md, &m8, &s->in));
    if (out)
        ISL_CHECK(make_reorder(n, &m8, md, &s->out));
    *mem = s->copy;
    return ISL_OK;
}

/* Before (in) or after (out) a primitive: the staged copy from or back to the tensor. */
static isl_status stage_in(isl_train_net *n, const staged *s)
{
    return s->copy ? run_reorder(n, &s->in, s->own, s->copy, "staging reorder") : ISL_OK;
}

static isl_status stage_out(isl_train_net *n, const staged *s)
{
    return s->copy ? run_reorder(n, &s->out, s->copy, s->own, "staging reorder") : ISL_OK;
}

/* The staging buffers, once every primitive is built. */
static isl_status stage_buffers(isl_train_net *n)
{
    float *buf[STAGE_COUNT] = {NULL};
    for (int b = 0; b < STAGE_COUNT && n->stage8; b++)
        ISL_CHECK(alloc_floats(n, (n->n_stage[b] + 3) / 4, &buf[b]));
    for (int i = 0; i < n->num_stage; i++)
        DNNL_TRY(dnnl_memory_set_data_handle(n->stage_refs[i].copy, buf[n->stage_refs[i].buf]),
                 "staging memory");
    return ISL_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Convolutions                                                                         */
/* ------------------------------------------------------------------------------------ */

typedef struct conv_spec {
    int deconv, k, stride, with_sum;
    int oc, ic;      /* real channel counts */
    dnnl_format_tag_t w_tag; /* user layout of the weights: oihw, or iohw (PyTorch transposed) */
    dnnl_memory_desc_t src_md, dst_md;
    void *src, *dst, *dsrc, *ddst; /* dsrc NULL: no backward-data pass */
    float *w, *dw, *b, *db;        /* b NULL: no bias */
    const char *what;
} conv_spec;

static isl_status conv_desc(const isl_train_net *n, const conv_spec *s, int pass, void *desc)
{
    const dnnl_memory_desc_t src_md = md_prim(n, &s->src_md), dst_md = md_prim(n, &s->dst_md);
    const int ocp = pad16(s->oc), icp = pad16(s->ic);
    dnnl_memory_desc_t w_any, b_md = isl_md_vec(ocp);
    dnnl_dims_t wd = {ocp, icp, s->k, s->k}, strides = {s->stride, s->stride}, pad = {0, 0};
    dnnl_memory_desc_init_by_tag(&w_any, 4, wd, dnnl_f32, dnnl_format_tag_any);
    const dnnl_memory_desc_t *b = s->b ? &b_md : NULL;
    dnnl_status_t st;
    if (!s->deconv) {
        dnnl_convolution_desc_t *d = desc;
        st = pass == 0 ? dnnl_convolution_forward_desc_init(
                             d, dnnl_forward_training, dnnl_convolution_direct, &src_md,
                             &w_any, b, &dst_md, strides, pad, pad)
             : pass == 1 ? dnnl_convolution_backward_data_desc_init(d, dnnl_convolution_direct,
                                                                    &src_md, &w_any, &dst_md,
                                                                    strides, pad, pad)
                         : dnnl_convolution_backward_weights_desc_init(
                               d, dnnl_convolution_direct, &src_md, &w_any, b, &dst_md,
                               strides, pad, pad);
    } else {
        dnnl_deconvolution_desc_t *d = desc;
        st = pass == 0 ? dnnl_deconvolution_forward_desc_init(d, dnnl_forward_training,
                                                               dnnl_deconvolution_direct,
                                                               &src_md, &w_any, b, &dst_md,
                                                               strides, pad, pad)
             : pass == 1 ? dnnl_deconvolution_backward_data_desc_init(
                               d, dnnl_deconvolution_direct, &src_md, &w_any, &dst_md,
                               strides, pad, pad)
                         : dnnl_deconvolution_backward_weights_desc_init(
                               d, dnnl_deconvolution_direct, &src_md, &w_any, b, &dst_md,
                               strides, pad, pad);
    }
    if (st != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot describe %s (status %d)", s->what,
                        (int)st);
    return ISL_OK;
}

static isl_status build_conv(isl_train_net *n, const conv_spec *s, conv *cv)
{
    union {
        dnnl_convolution_desc_t c;
        dnnl_deconvolution_desc_t d;
    } desc;
    dnnl_primitive_desc_t fpd = NULL, bdpd = NULL, bwpd = NULL;
    cv->oc = s->oc;
    cv->ic = s->ic;
    cv->ocp = pad16(s->oc);
    cv->icp = pad16(s->ic);
    cv->kk = s->k * s->k;
    cv->iohw = s->w_tag == dnnl_iohw;
    cv->w = s->w;
    cv->dw_out = s->dw;
    dnnl_memory_desc_t user = isl_md4(cv->ocp, cv->icp, s->k, s->k, s->w_tag);
    dnnl_memory_desc_t b_md = isl_md_vec(cv->ocp);
    if (s->b && cv->ocp != s->oc)
        return isl_fail(ISL_ERROR_INTERNAL, "%s: a bias needs 16k outputs", s->what);
    if (cv->ocp != cv->oc || cv->icp != cv->ic) {
        size_t count = (size_t)cv->ocp * cv->icp * cv->kk;
        ISL_CHECK(alloc_floats(n, count, &cv->w_pad));
        ISL_CHECK(alloc_floats(n, count, &cv->dw_pad));
    }
    isl_status st = conv_desc(n, s, 0, &desc);
    if (st == ISL_OK)
        st = make_pd(n, &desc, s->with_sum, NULL, &fpd, s->what);
    if (st == ISL_OK)
        st = conv_desc(n, s, 2, &desc);
    if (st == ISL_OK)
        st = make_pd(n, &desc, 0, fpd, &bwpd, s->what);
    if (st == ISL_OK && s->dsrc) {
        st = conv_desc(n, s, 1, &desc);
        if (st == ISL_OK)
            st = make_pd(n, &desc, 0, fpd, &bdpd, s->what);
    }
    if (st != ISL_OK)
        goto done;
    const dnnl_memory_desc_t *wf = dnnl_primitive_desc_query_md(fpd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dw =
        dnnl_primitive_desc_query_md(bwpd, dnnl_query_diff_weights_md, 0);
    if ((st = make_prim(n, fpd, &cv->fwd)) != ISL_OK ||
        (st = make_prim(n, bwpd, &cv->bwd_w)) != ISL_OK ||
        (st = make_mem(n, &user, cv->w_pad ? cv->w_pad : s->w, &cv->w_user)) != ISL_OK ||
        (st = make_mem(n, wf, DNNL_MEMORY_ALLOCATE, &cv->w_f)) != ISL_OK ||
        (st = make_reorder(n, &user, wf, &cv->pack_f)) != ISL_OK ||
        (st = make_mem(n, dw, DNNL_MEMORY_ALLOCATE, &cv->dw)) != ISL_OK ||
        (st = make_mem(n, &user, cv->dw_pad ? cv->dw_pad : s->dw, &cv->dw_user)) != ISL_OK ||
        (st = make_reorder(n, dw, &user, &cv->unpack)) != ISL_OK ||
        (st = stage(n, &s->src_md, s->src, STAGE_SRC, 1, 0, &cv->s_src, &cv->src)) != ISL_OK ||
        (st = stage(n, &s->dst_md, s->dst, STAGE_DST, s->with_sum, 1, &cv->s_dst, &cv->dst)) !=
            ISL_OK ||
        (st = stage(n, &s->dst_md, s->ddst, STAGE_DST, 1, 0, &cv->s_ddst, &cv->ddst)) != ISL_OK)
        goto done;
    cv->with_sum = s->with_sum;
    if (s->b && ((st = make_mem(n, &b_md, s->b, &cv->bias)) != ISL_OK ||
                 (st = make_mem(n, &b_md, s->db, &cv->dbias)) != ISL_OK))
        goto done;
    if (bdpd) {
        const dnnl_memory_desc_t *wb = dnnl_primitive_desc_query_md(bdpd, dnnl_query_weights_md, 0);
        if ((st = make_prim(n, bdpd, &cv->bwd_d)) != ISL_OK ||
            (st = stage(n, &s->src_md, s->dsrc, STAGE_DSRC, 0, 1, &cv->s_dsrc, &cv->dsrc)) !=
                ISL_OK)
            goto done;
        if (dnnl_memory_desc_equal(wb, wf)) {
            cv->w_b = cv->w_f;
        } else if ((st = make_mem(n, wb, DNNL_MEMORY_ALLOCATE, &cv->w_b)) != ISL_OK ||
                   (st = make_reorder(n, &user, wb, &cv->pack_b)) != ISL_OK) {
            goto done;
        }
    }
done:
    dnnl_primitive_desc_destroy(fpd);
    dnnl_primitive_desc_destroy(bdpd);
    dnnl_primitive_desc_destroy(bwpd);
    return st;
}

/* Copies the weights between the PyTorch layout (oihw, or iohw for transposed
 * convolutions) and its zero-padded version. */
static void copy_padded(const conv *cv, const float *src, float *dst, int to_padded)
{
    const size_t kk = (size_t)cv->kk;
    for (int o = 0; o < cv->oc; o++)
        for (int i = 0; i < cv->ic; i++) {
            size_t real = cv->iohw ? (size_t)i * cv->oc + o : (size_t)o * cv->ic + i;
            size_t padded = cv->iohw ? (size_t)i * cv->ocp + o : (size_t)o * cv->icp + i;
            if (to_padded)
                memcpy(dst + padded * kk, src + real * kk, sizeof(float) * kk);
            else
                memcpy(dst + real * kk, src + padded * kk, sizeof(float) * kk);
        }
}

static isl_status conv_pack(isl_train_net *n, conv *cv)
{
    if (cv->w_pad)
        copy_padded(cv, cv->w, cv->w_pad, 1);
    ISL_CHECK(run_reorder(n, &cv->pack_f, cv->w_user, cv->w_f, "weight reorder"));
    if (cv->pack_b.p)
        ISL_CHECK(run_reorder(n, &cv->pack_b, cv->w_user, cv->w_b, "weight reorder"));
    return ISL_OK;
}

static isl_status conv_forward(isl_train_net *n, conv *cv)
{
    dnnl_exec_arg_t a[4] = {{DNNL_ARG_SRC, cv->src}, {DNNL_ARG_WEIGHTS, cv->w_f},
                            {DNNL_ARG_DST, cv->dst}, {DNNL_ARG_BIAS, cv->bias}};
    ISL_CHECK(stage_in(n, &cv->s_src));
    if (cv->with_sum) /* the sum post-op adds onto dst */
        ISL_CHECK(stage_in(n, &cv->s_dst));
    ISL_CHECK(run(n, &cv->fwd, cv->bias ? 4 : 3, a, "convolution forward"));
    return stage_out(n, &cv->s_dst);
}

/* Weight (and bias) gradients into the user arrays, then the data gradient if built. */
static isl_status conv_backward(isl_train_net *n, conv *cv)
{
    dnnl_exec_arg_t w[4] = {{DNNL_ARG_SRC, cv->src}, {DNNL_ARG_DIFF_DST, cv->ddst},
                            {DNNL_ARG_DIFF_WEIGHTS, cv->dw}, {DNNL_ARG_DIFF_BIAS, cv->dbias}};
    ISL_CHECK(stage_in(n, &cv->s_src));
    ISL_CHECK(stage_in(n, &cv->s_ddst));
    ISL_CHECK(run(n, &cv->bwd_w, cv->dbias ? 4 : 3, w, "convolution backward (weights)"));
    ISL_CHECK(run_reorder(n, &cv->unpack, cv->dw, cv->dw_user, "weight gradient reorder"));
    if (cv->dw_pad)
        copy_padded(cv, cv->dw_pad, cv->dw_out, 0);
    if (!cv->bwd_d.p)
        return ISL_OK;
    dnnl_exec_arg_t d[3] = {{DNNL_ARG_DIFF_DST, cv->ddst}, {DNNL_ARG_WEIGHTS, cv->w_b},
                            {DNNL_ARG_DIFF_SRC, cv->dsrc}};
    ISL_CHECK(run(n, &cv->bwd_d, 3, d, "convolution backward (data)"));
    return stage_out(n, &cv->s_dsrc);
}

/* ------------------------------------------------------------------------------------ */
/* Shapes and buffers                                                                   */
/* ------------------------------------------------------------------------------------ */

static int side_after(isl_module_kind kind, int s)
{
    switch (kind) {
    case ISL_MODULE_IN: return s - 2;
    case ISL_MODULE_DOWN: return (s - 4) / 2 + 1;
    case ISL_MODULE_UP: return 2 * s + 2;
    }
    return -1;
}

static size_t tt_size(const isl_tt *t) { return isl_tt_floats(t->n, t->c, t->h, t->w); }

static void keep_max(size_t *m, const isl_tt *t)
{
    size_t s = tt_size(t);
    if (s > *m)
        *m = s;
}

static isl_tt like(const isl_tt *t, float *v)
{
    return isl_tt_make(t->n, t->c, t->h, t->w, v);
}

/* Module shapes and persistent tensors, for input x. */
static isl_status plan_module(isl_train_net *n, module *m, const isl_tt *x)
{
    const isl_module_arch *a = m->a;
    const int B = n->batch, oh = side_after(a->kind, x->h), ow = side_after(a->kind, x->w);
    m->x = *x;
    m->conv = isl_tt_make(B, a->expand_ch, oh, ow, NULL);
    m->out = isl_tt_make(B, a->out_ch, oh, ow, NULL);
    m->act1 = isl_tt_make(B, 2 * a->in_ch, x->h, x->w, NULL);
    m->act2 = isl_tt_make(B, 2 * a->e_ch, oh, ow, NULL);
    ISL_CHECK(alloc_tt(n, &m->conv));
    ISL_CHECK(alloc_tt(n, &m->out));
    if (a->kind != ISL_MODULE_UP) {
        m->pool = isl_tt_make(B, a->in_ch, oh, ow, NULL);
        ISL_CHECK(alloc_tt(n, &m->pool));
        keep_max(&n->n_pool, &m->pool);
    }
    if (a->kind == ISL_MODULE_UP) {
        m->next = isl_tt_make(B, a->out_ch, oh - 4, ow - 4, NULL);
        ISL_CHECK(alloc_tt(n, &m->next));
    } else {
        m->next = m->out;
    }
    keep_max(&n->n_dact, &m->act1);
    keep_max(&n->n_dact, &m->act2);
    if (n->keep_module_acts) {
        ISL_CHECK(alloc_tt(n, &m->act1));
        ISL_CHECK(alloc_tt(n, &m->act2));
    } else {
        keep_max(&n->n_act, &m->act1);
        keep_max(&n->n_act, &m->act2);
    }
    keep_max(&n->n_g, &m->x);
    keep_max(&n->n_g, &m->out);
    keep_max(&n->n_conv, &m->conv);
    size_t stats = 2 * (size_t)a->in_ch + 2 * (size_t)a->e_ch;
    float *st;
    ISL_CHECK(alloc_floats(n, stats, &st));
    m->mean1 = st;
    m->invstd1 = st + a->in_ch;
    m->mean2 = st + 2 * a->in_ch;
    m->invstd2 = m->mean2 + a->e_ch;
    return ISL_OK;
}

static isl_status plan_shapes(isl_train_net *n)
{
    const isl_arch *a = &n->p->arch;
    const int B = n->batch, H = n->in_h, W = n->in_w;
    n->proj = isl_tt_make(B, ISL_PROJECTION_DEPTH, H, W, NULL);
    ISL_CHECK(alloc_tt(n, &n->proj));
    n->dproj = n->proj;
    ISL_CHECK(alloc_tt(n, &n->dproj));
    ISL_CHECK(alloc_floats(n, (size_t)B * n->num_z * H * W, &n->input));
    n->in_blk = isl_tt_make(B, n->num_z, H, W, NULL);
    ISL_CHECK(alloc_tt(n, &n->in_blk));
    if (n->input_grad) {
        ISL_CHECK(alloc_floats(n, (size_t)B * n->num_z * H * W, &n->dinput));
        n->din_blk = n->in_blk;
        ISL_CHECK(alloc_tt(n, &n->din_blk));
    }
    int cat_ch = 0;
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        int border = (ISL_PATCH_INPUT - isl_tower_start_size[s]) / 2;
        n->x0[s] = isl_tt_make(B, ISL_PROJECTION_DEPTH, H - 2 * border, W - 2 * border, NULL);
        ISL_CHECK(alloc_tt(n, &n->x0[s]));
        const isl_tt *x = &n->x0[s];
        for (int i = a->tower_first[s]; i < a->tower_first[s] + a->tower_count[s]; i++) {
            ISL_CHECK(plan_module(n, &n->mods[i], x));
            x = &n->mods[i].next;
        }
        n->cat_offset[s] = cat_ch;
        cat_ch += a->tower_out_ch[s];
    }
    const isl_tt *last = &n->mods[a->tower_first[0] + a->tower_count[0] - 1].next;
    n->cat = isl_tt_make(B, cat_ch, last->h, last->w, NULL);
    ISL_CHECK(alloc_tt(n, &n->cat));
    n->dcat = n->cat;
    ISL_CHECK(alloc_tt(n, &n->dcat));
    const isl_tt *x = &n->cat;
    for (int i = a->tower_first[ISL_UPPER_TOWER]; i < a->num_modules; i++) {
        ISL_CHECK(plan_module(n, &n->mods[i], x));
        x = &n->mods[i].next;
    }
    if (x->h != n->out_h || x->w != n->out_w || x->c != a->trunk_ch)
        return isl_fail(ISL_ERROR_INTERNAL, "trunk ends at %dx%dx%d, not %dx%dx%d", x->c, x->h,
                        x->w, a->trunk_ch, n->out_h, n->out_w);
    ISL_CHECK(alloc_floats(n, 3 * (size_t)a->trunk_ch, &n->trunk_mean));
    n->trunk_invstd = n->trunk_mean + a->trunk_ch;
    n->stored_invstd = n->trunk_invstd + a->trunk_ch;
    for (int h = 0; h < n->num_heads; h++) {
        head *hd = &n->heads[h];
        hd->out_ch = n->p->heads[h].out_ch;
        hd->act = isl_tt_make(B, 2 * a->trunk_ch, n->out_h, n->out_w, NULL);
        hd->logits = isl_tt_make(B, hd->out_ch, n->out_h, n->out_w, NULL);
        keep_max(&n->n_dact, &hd->act);
        if (n->keep_head_acts)
            ISL_CHECK(alloc_tt(n, &hd->act));
        else
            keep_max(&n->n_act, &hd->act);
        ISL_CHECK(alloc_tt(n, &hd->logits));
        size_t plain = (size_t)B * hd->out_ch * n->out_h * n->out_w;
        ISL_CHECK(alloc_floats(n, plain, &hd->plain));
    }
    keep_max(&n->n_g, x);
    /* The widest batch norm: the e of a module, or the trunk. */
    int widest = a->trunk_ch;
    for (int i = 0; i < a->num_modules; i++)
        if (a->modules[i].e_ch > widest)
            widest = a->modules[i].e_ch;
    n->wd_mean = calloc((size_t)widest, sizeof(double));
    n->wd_var = calloc((size_t)widest, sizeof(double));
    n->wf_scale = calloc((size_t)widest, sizeof(float));
    n->wf_shift = calloc((size_t)widest, sizeof(float));
    if (!n->wd_mean || !n->wd_var || !n->wf_scale || !n->wf_shift)
        return oom();
    return ISL_OK;
}

/* Points the scratch views at the shared buffers. Gradients flow backward through two
 * ping-pong buffers; the order below mirrors the backward pass. */
static void assign_scratch(isl_train_net *n)
{
    const isl_arch *a = &n->p->arch;
    float *const *g = n->g_buf;
    for (int i = 0; i < a->num_modules; i++) {
        module *m = &n->mods[i];
        if (!n->keep_module_acts)
            m->act1.v = m->act2.v = n->s_act;
        m->dact1 = like(&m->act1, n->s_dact);
        m->dact2 = like(&m->act2, n->s_dact);
        m->dconv = like(&m->conv, n->g_conv);
        if (m->a->kind != ISL_MODULE_UP)
            m->dpool = like(&m->pool, n->g_pool);
    }
    int cur = 0;
    for (int i = a->num_modules - 1; i >= a->tower_first[ISL_UPPER_TOWER]; i--) {
        module *m = &n->mods[i];
        m->dout = like(&m->out, g[cur]);
        m->dx = i == a->tower_first[ISL_UPPER_TOWER] ? n->dcat : like(&m->x, g[1 - cur]);
        cur = 1 - cur;
    }
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        cur = 0;
        for (int i = a->tower_first[s] + a->tower_count[s] - 1; i >= a->tower_first[s]; i--) {
            module *m = &n->mods[i];
            if (m->a->kind == ISL_MODULE_UP) {
                m->dnext = like(&m->next, g[cur]);
                m->dout = like(&m->out, g[1 - cur]);
                m->dx = like(&m->x, g[cur]);
            } else {
                m->dout = like(&m->out, g[cur]);
                m->dx = like(&m->x, g[1 - cur]);
                cur = 1 - cur;
            }
        }
    }
    for (int h = 0; h < n->num_heads; h++) {
        if (!n->keep_head_acts)
            n->heads[h].act.v = n->s_act;
        n->heads[h].dact = like(&n->heads[h].act, n->s_dact);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Primitives                                                                           */
/* ------------------------------------------------------------------------------------ */

static isl_status build_module(isl_train_net *n, module *m)
{
    const isl_module_arch *a = m->a;
    isl_module_params *mp = &n->p->modules[m->index];
    isl_module_params *mg = &n->g->modules[m->index];
    char what[64];
    snprintf(what, sizeof(what), "module %03d expand", m->index);
    conv_spec e = {
        .deconv = a->kind == ISL_MODULE_UP, .k = a->kernel,
        .stride = a->kind == ISL_MODULE_IN ? 1 : 2, .oc = a->expand_ch, .ic = 2 * a->in_ch,
        .w_tag = a->kind == ISL_MODULE_UP ? dnnl_iohw : dnnl_oihw,
        .src_md = md_tt(&m->act1), .dst_md = md_tt(&m->conv),
        .src = m->act1.v, .dst = m->conv.v, .dsrc = m->dact1.v, .ddst = m->dconv.v,
        .w = mp->expand_weight, .dw = mg->expand_weight, .what = what};
    ISL_CHECK(build_conv(n, &e, &m->expand));

    char what_r[64];
    snprintf(what_r, sizeof(what_r), "module %03d reduce", m->index);
    /* Up modules keep the first out_ch outputs: the first rows of the weights. */
    conv_spec r = {
        .k = 1, .stride = 1, .with_sum = 1, .oc = a->out_ch, .ic = 2 * a->e_ch,
        .w_tag = dnnl_oihw, .src_md = md_tt(&m->act2), .dst_md = md_tt(&m->out),
        .src = m->act2.v, .dst = m->out.v, .dsrc = m->dact2.v, .ddst = m->dout.v,
        .w = mp->reduce_weight, .dw = mg->reduce_weight, .what = what_r};
    ISL_CHECK(build_conv(n, &r, &m->reduce));

    if (a->kind == ISL_MODULE_UP)
        return ISL_OK;
    const dnnl_memory_desc_t x16 = md_tt(&m->x), p16 = md_tt(&m->pool);
    dnnl_memory_desc_t xmd = md_prim(n, &x16), pmd = md_prim(n, &p16);
    dnnl_dims_t strides = {e.stride, e.stride}, kernel = {a->kernel, a->kernel}, pad = {0, 0};
    dnnl_pooling_desc_t d;
    dnnl_primitive_desc_t fpd = NULL, bpd = NULL;
    DNNL_TRY(dnnl_pooling_forward_desc_init(&d, dnnl_forward_training, dnnl_pooling_max, &xmd,
                                            &pmd, strides, kernel, pad, pad),
             "max pooling description");
    isl_status st = make_pd(n, &d, 0, NULL, &fpd, "max pooling");
    if (st == ISL_OK) {
        dnnl_status_t s = dnnl_pooling_backward_desc_init(&d, dnnl_pooling_max, &xmd, &pmd, strides,
                                                          kernel, pad, pad);
        st = s == dnnl_success ? make_pd(n, &d, 0, fpd, &bpd, "max pooling backward")
                               : dnnl_failed(s, "max pooling backward description");
    }
    if (st == ISL_OK) {
        const dnnl_memory_desc_t *ws =
            dnnl_primitive_desc_query_md(fpd, dnnl_query_workspace_md, 0);
        if (!ws)
            st = isl_fail(ISL_ERROR_BACKEND, "oneDNN: max pooling has no workspace");
        else if ((st = make_prim(n, fpd, &m->pool_f)) == ISL_OK &&
                 (st = make_prim(n, bpd, &m->pool_b)) == ISL_OK &&
                 (st = make_mem(n, ws, DNNL_MEMORY_ALLOCATE, &m->pool_ws)) == ISL_OK &&
                 (st = stage(n, &x16, m->x.v, STAGE_SRC, 1, 0, &m->s_pool_src,
                             &m->pool_src)) == ISL_OK &&
                 (st = stage(n, &p16, m->pool.v, STAGE_DST, 0, 1, &m->s_pool_dst,
                             &m->pool_dst)) == ISL_OK &&
                 (st = stage(n, &p16, m->dpool.v, STAGE_DST, 1, 0, &m->s_pool_ddst,
                             &m->pool_ddst)) == ISL_OK)
            st = stage(n, &x16, m->dx.v, STAGE_DSRC, 0, 1, &m->s_pool_dsrc, &m->pool_dsrc);
    }
    dnnl_primitive_desc_destroy(fpd);
    dnnl_primitive_desc_destroy(bpd);
    return st;
}

static isl_status build_projection(isl_train_net *n)
{
    const int B = n->batch, nz = n->num_z;
    conv_spec s = {
        .k = 1, .stride = 1, .oc = ISL_PROJECTION_DEPTH, .ic = nz, .w_tag = dnnl_oihw,
        .src_md = md_tt(&n->in_blk), .dst_md = md_tt(&n->proj),
        .src = n->in_blk.v, .dst = n->proj.v, .dsrc = n->input_grad ? n->din_blk.v : NULL,
        .ddst = n->dproj.v,
        .w = n->p->projection_weight, .dw = n->g->projection_weight,
        .b = n->p->projection_bias, .db = n->g->projection_bias, .what = "projection"};
    ISL_CHECK(build_conv(n, &s, &n->proj_cv));
    /* Plain <-> blocked with nz channels: the same bytes as md_tt's padded view. */
    dnnl_memory_desc_t plain = isl_md4(B, nz, n->in_h, n->in_w, dnnl_nchw);
    dnnl_memory_desc_t blk = isl_md4(B, nz, n->in_h, n->in_w, dnnl_nChw16c);
    ISL_CHECK(make_reorder(n, &plain, &blk, &n->in_reorder));
    ISL_CHECK(make_mem(n, &plain, n->input, &n->m_in));
    ISL_CHECK(make_mem(n, &blk, n->in_blk.v, &n->m_in_blk));
    if (!n->input_grad)
        return ISL_OK;
    ISL_CHECK(make_reorder(n, &blk, &plain, &n->din_reorder));
    ISL_CHECK(make_mem(n, &plain, n->dinput, &n->m_din));
    return make_mem(n, &blk, n->din_blk.v, &n->m_din_blk);
}

static isl_status build_head(isl_train_net *n, int h)
{
    head *hd = &n->heads[h];
    const int ch = 2 * n->p->arch.trunk_ch;
    char what[96];
    snprintf(what, sizeof(what), "head %s", n->p->heads[h].name);
    conv_spec s = {
        .k = 1, .stride = 1, .oc = hd->out_ch, .ic = ch, .w_tag = dnnl_oihw,
        .src_md = md_tt(&hd->act), .dst_md = md_tt(&hd->logits),
        .src = hd->act.v, .dst = hd->logits.v, .dsrc = hd->dact.v, .ddst = hd->logits.v,
        .w = n->p->heads[h].weight, .dw = n->g->heads[h].weight,
        .b = n->p->heads[h].bias, .db = n->g->heads[h].bias, .what = what};
    ISL_CHECK(build_conv(n, &s, &hd->cv));
    dnnl_memory_desc_t blk = md_tt(&hd->logits);
    dnnl_memory_desc_t plain = isl_md4(n->batch, hd->out_ch, n->out_h, n->out_w, dnnl_nchw);
    ISL_CHECK(make_reorder(n, &blk, &plain, &hd->to_plain));
    ISL_CHECK(make_reorder(n, &plain, &blk, &hd->from_plain));
    ISL_CHECK(make_mem(n, &blk, hd->logits.v, &hd->m_blk));
    return make_mem(n, &plain, hd->plain, &hd->m_plain);
}

/* ------------------------------------------------------------------------------------ */
/* Creation                                                                             */
/* ------------------------------------------------------------------------------------ */

void isl_train_net_free(isl_train_net *n)
{
    if (!n)
        return;
    for (int i = 0; i < n->num_prims; i++)
        dnnl_primitive_destroy(n->prims[i]->p);
    for (int i = 0; i < n->num_mems; i++)
        dnnl_memory_destroy(n->mems[i]);
    for (int i = 0; i < n->num_allocs; i++)
        free(n->allocs[i]);
    if (n->stream)
        dnnl_stream_destroy(n->stream);
    free(n->prims);
    free(n->mems);
    free(n->stage_refs);
    free(n->allocs);
    free(n->mods);
    free(n->heads);
    free(n->wd_mean);
    free(n->wd_var);
    free(n->wf_scale);
    free(n->wf_shift);
    free(n);
}

static isl_status create(isl_train_net *n)
{
    const isl_arch *a = &n->p->arch;
    n->mods = calloc((size_t)a->num_modules, sizeof(*n->mods));
    n->heads = calloc((size_t)(n->num_heads ? n->num_heads : 1), sizeof(*n->heads));
    if (!n->mods || !n->heads)
        return oom();
    n->num_mods = a->num_modules;
    for (int i = 0; i < a->num_modules; i++) {
        n->mods[i].a = &a->modules[i];
        n->mods[i].index = i;
    }
    DNNL_TRY(dnnl_stream_create(&n->stream, n->engine, dnnl_stream_default_flags),
             "stream creation");
    ISL_CHECK(plan_shapes(n));
    ISL_CHECK(alloc_floats(n, n->n_act, &n->s_act));
    ISL_CHECK(alloc_floats(n, n->n_dact, &n->s_dact));
    ISL_CHECK(alloc_floats(n, n->n_g, &n->g_buf[0]));
    ISL_CHECK(alloc_floats(n, n->n_g, &n->g_buf[1]));
    ISL_CHECK(alloc_floats(n, n->n_conv, &n->g_conv));
    ISL_CHECK(alloc_floats(n, n->n_pool ? n->n_pool : 1, &n->g_pool));
    assign_scratch(n);
    ISL_CHECK(build_projection(n));
    for (int i = 0; i < a->num_modules; i++)
        ISL_CHECK(build_module(n, &n->mods[i]));
    for (int h = 0; h < n->num_heads; h++)
        ISL_CHECK(build_head(n, h));
    ISL_CHECK(stage_buffers(n));
    /* One scratchpad for all primitives: they run one at a time. */
    if (n->scratchpad_bytes) {
        float *sp;
        ISL_CHECK(alloc_floats(n, (n->scratchpad_bytes + 3) / 4, &sp));
        n->scratchpad = sp;
    }
    for (int i = 0; i < n->num_prims; i++) {
        prim *p = n->prims[i];
        if (dnnl_memory_desc_get_size(&p->sp_md))
            ISL_CHECK(make_mem(n, &p->sp_md, n->scratchpad, &p->sp));
    }
    return isl_train_net_load_weights(n);
}

isl_status isl_train_net_create(isl_params *params, isl_params *grad, dnnl_engine_t engine,
                                int batch, int height, int width, int flags,
                                isl_train_net **out)
{
    *out = NULL;
    if (batch < 1 || isl_arch_output_side(height) < 0 || isl_arch_output_side(width) < 0)
        return isl_fail(ISL_ERROR_SHAPE,
                        "training crops of %dx%d (batch %d): each side must be 250 + 16m", height,
                        width, batch);
    isl_train_net *n = calloc(1, sizeof(*n));
    if (!n)
        return oom();
    n->p = params;
    n->g = grad;
    n->engine = engine;
    n->batch = batch;
    n->in_h = height;
    n->in_w = width;
    n->out_h = isl_arch_output_side(height);
    n->out_w = isl_arch_output_side(width);
    n->num_z = params->arch.num_z;
    n->num_heads = params->num_heads;
    n->input_grad = (flags & ISL_NET_INPUT_GRAD) != 0;
    n->keep_module_acts = (flags & ISL_NET_KEEP_MODULE_ACTIVATIONS) != 0;
    n->keep_head_acts = (flags & ISL_NET_KEEP_HEAD_ACTIVATIONS) != 0;
    n->stage8 = isl_cpu_block_channels() == 8;
    isl_status s = create(n);
    if (s != ISL_OK) {
        isl_train_net_free(n);
        return s;
    }
    *out = n;
    return ISL_OK;
}

void isl_train_net_set_sync(isl_train_net *n, const isl_tk_sync *sync)
{
    if (sync)
        n->sync = *sync;
    else
        memset(&n->sync, 0, sizeof(n->sync));
}

void isl_train_net_set_ready(isl_train_net *n, isl_train_net_ready_fn fn, void *user)
{
    n->ready = fn;
    n->ready_user = fn ? user : NULL;
}

void isl_train_net_set_dropout(isl_train_net *n, double rate, int whole_channels, uint64_t seed,
                               int64_t step, int64_t first_crop)
{
    n->dropout = rate;
    n->dropout_whole = whole_channels;
    n->dropout_seed = seed;
    n->dropout_step = step;
    n->dropout_first_crop = first_crop;
}

void isl_train_net_set_stochastic_depth(isl_train_net *n, double rate, uint64_t seed,
                                        int64_t step)
{
    n->depth_rate = rate;
    n->depth_seed = seed;
    n->depth_step = step;
}

int isl_train_net_impls(const isl_train_net *n, const char **impl, int max)
{
    for (int i = 0; i < n->num_prims && i < max; i++) {
        const_dnnl_primitive_desc_t pd = NULL;
        impl[i] = "?";
        if (dnnl_primitive_get_primitive_desc(n->prims[i]->p, &pd) == dnnl_success)
            dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl[i]);
    }
    return n->num_prims;
}

int isl_train_net_batch(const isl_train_net *n) { return n->batch; }
int isl_train_net_height(const isl_train_net *n) { return n->in_h; }
int isl_train_net_width(const isl_train_net *n) { return n->in_w; }
float *isl_train_net_input(isl_train_net *n) { return n->input; }
const float *isl_train_net_input_grad(const isl_train_net *n) { return n->dinput; }

const float *isl_train_net_logits(const isl_train_net *n, int h)
{
    return h >= 0 && h < n->num_heads && n->heads[h].active ? n->heads[h].plain : NULL;
}

float *isl_train_net_dlogits(isl_train_net *n, int h)
{
    return h >= 0 && h < n->num_heads && n->heads[h].active ? n->heads[h].plain : NULL;
}

static isl_status load_weights(isl_train_net *n, int heads_only)
{
    if (!heads_only) {
        ISL_CHECK(conv_pack(n, &n->proj_cv));
        for (int i = 0; i < n->num_mods; i++) {
            ISL_CHECK(conv_pack(n, &n->mods[i].expand));
            ISL_CHECK(conv_pack(n, &n->mods[i].reduce));
        }
    }
    for (int h = 0; h < n->num_heads; h++)
        ISL_CHECK(conv_pack(n, &n->heads[h].cv));
    if (dnnl_stream_wait(n->stream) != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: stream wait failed");
    return ISL_OK;
}

isl_status isl_train_net_load_weights(isl_train_net *n) { return load_weights(n, 0); }
isl_status isl_train_net_load_head_weights(isl_train_net *n) { return load_weights(n, 1); }

/* ------------------------------------------------------------------------------------ */
/* Batch normalization                                                                  */
/* ------------------------------------------------------------------------------------ */

/* Folds the batch statistics and gamma/beta into scale/shift (in the net's work arrays);
 * the backward pass recomputes BNAct from the same float statistics, bit for bit. */
static void fold(isl_train_net *n, const isl_bn_params *bn, const float *mean,
                 const float *invstd)
{
    for (int c = 0; c < bn->channels; c++) {
        double scale = (double)bn->gamma[c] * invstd[c];
        n->wf_scale[c] = (float)scale;
        n->wf_shift[c] = (float)(bn->beta[c] - (double)mean[c] * scale);
    }
}

/* Batch statistics of src (C channels) into mean/invstd; the double-precision values stay
 * in the work arrays for update_running. */
static const isl_tk_sync *sync_of(const isl_train_net *n)
{
    return n->sync.sum ? &n->sync : NULL;
}

static isl_status kernel_failed(int rc)
{
    return rc == -2 ? isl_fail(ISL_ERROR_BACKEND, "batch norm: the allreduce hook failed")
                    : isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory in batch normalization");
}

static isl_status batch_stats(isl_train_net *n, const isl_tt *src, int nsrc, int C, float *mean,
                              float *invstd)
{
    int rc = isl_tk_bn_stats(src, nsrc, n->wd_mean, n->wd_var, sync_of(n));
    if (rc != 0)
        return kernel_failed(rc);
    for (int c = 0; c < C; c++) {
        mean[c] = (float)n->wd_mean[c];
        invstd[c] = (float)(1.0 / sqrt(n->wd_var[c] + ISL_BN_EPSILON));
    }
    return ISL_OK;
}

/* Running averages of the last batch_stats over `count` values per channel (the variance
 * unbiased, as PyTorch keeps it). */
static void update_running(const isl_train_net *n, isl_bn_params *bn, double momentum,
                           double count)
{
    if (momentum <= 0)
        return;
    for (int c = 0; c < bn->channels; c++) {
        double unbiased = count > 1 ? n->wd_var[c] * count / (count - 1) : n->wd_var[c];
        bn->mean[c] = (float)((1 - momentum) * bn->mean[c] + momentum * n->wd_mean[c]);
        bn->var[c] = (float)((1 - momentum) * bn->var[c] + momentum * unbiased);
    }
}

/* Folds the stored population statistics exactly as prediction does (isl_bn_fold). */
static void fold_stored(isl_train_net *n, const isl_bn_params *bn)
{
    for (int c = 0; c < bn->channels; c++)
        isl_bn_fold(bn, c, &n->wf_scale[c], &n->wf_shift[c]);
}

/* Values per channel of the batch statistics: of the global batch when synchronized. */
static double values_per_channel(const isl_train_net *n, const isl_tt *t)
{
    return (double)(n->sync.sum ? n->sync.global_n : t->n) * t->h * t->w;
}

/* The stored statistics as the float mean (unless NULL) and invstd of the backward pass. */
static void stored_stats(const isl_bn_params *bn, float *mean, float *invstd)
{
    for (int c = 0; c < bn->channels; c++) {
        if (mean)
            mean[c] = bn->mean[c];
        invstd[c] = (float)(1.0 / sqrt((double)bn->var[c] + ISL_BN_EPSILON));
    }
}

/* BNAct in a forward pass: with the statistics of the batch (folded into the running
 * averages), or with the stored population statistics. Either way mean/invstd keep them
 * for the backward pass. */
static isl_status forward_bnact(isl_train_net *n, const isl_tt *src, int nsrc, isl_bn_params *bn,
                                float *mean, float *invstd, double momentum, isl_tt *act)
{
    if (n->mode != ISL_NET_BATCH_STATS) {
        stored_stats(bn, mean, invstd);
        fold_stored(n, bn);
    } else {
        ISL_CHECK(batch_stats(n, src, nsrc, bn->channels, mean, invstd));
        update_running(n, bn, momentum, values_per_channel(n, src));
        fold(n, bn, mean, invstd);
    }
    isl_tk_bnact(src, nsrc, n->wf_scale, n->wf_shift, act);
    return ISL_OK;
}

/* BNAct recomputed in the backward pass, exactly as the forward pass computed it. */
static isl_status bnact(isl_train_net *n, const isl_tt *src, int nsrc, const isl_bn_params *bn,
                        const float *mean, const float *invstd, isl_tt *act)
{
    if (n->mode == ISL_NET_BATCH_STATS)
        fold(n, bn, mean, invstd);
    else
        fold_stored(n, bn);
    isl_tk_bnact(src, nsrc, n->wf_scale, n->wf_shift, act);
    return ISL_OK;
}

/* A head's BNAct: with the trunk's batch statistics, or with the head's stored ones. */
static isl_status head_bnact(isl_train_net *n, const isl_tt *trunk, const isl_bn_params *bn,
                             isl_tt *act)
{
    if (n->mode == ISL_NET_BATCH_STATS)
        return bnact(n, trunk, 1, bn, n->trunk_mean, n->trunk_invstd, act);
    fold_stored(n, bn);
    isl_tk_bnact(trunk, 1, n->wf_scale, n->wf_shift, act);
    return ISL_OK;
}

/* A head's dropout mask on t (its input, or that input's gradient). */
static void head_dropout(const isl_train_net *n, int h, isl_tt *t)
{
    if (n->dropout > 0)
        isl_dropout_apply(t, isl_dropout_key(n->dropout_seed, n->dropout_step, h), n->dropout,
                          n->dropout_whole, n->dropout_first_crop);
}

static isl_status bnact_backward(const isl_train_net *n, isl_tt *dact, const isl_tt *act,
                                 const isl_tt *src, int nsrc, const float *mean,
                                 const float *invstd, const isl_bn_params *bn, isl_tt *dx,
                                 const int *accumulate, isl_bn_params *grad)
{
    int rc = isl_tk_bnact_backward(dact, act, src, nsrc, mean, invstd, bn->gamma,
                                   n->mode == ISL_NET_BATCH_STATS, dx, accumulate, grad->gamma,
                                   grad->beta, sync_of(n));
    return rc == 0 ? ISL_OK : kernel_failed(rc);
}

/* ------------------------------------------------------------------------------------ */
/* Stochastic depth                                                                     */
/* ------------------------------------------------------------------------------------ */

/* Module i's depth on the path from the projection to the heads: 1..18 in its tower (every
 * tower has 18 modules), 19..32 in the upper tower. */
static int module_depth(const isl_arch *a, int i)
{
    const int s = a->modules[i].tower;
    return i - a->tower_first[s] + 1 + (s == ISL_UPPER_TOWER ? a->tower_count[0] : 0);
}

/* Whether module m skips its branch in this step, and else the survival probability. */
static void decide_depth(const isl_train_net *n, module *m)
{
    const isl_arch *a = &n->p->arch;
    const double p = n->depth_rate * module_depth(a, m->index) /
                     (a->tower_count[0] + a->tower_count[ISL_UPPER_TOWER]);
    m->skipped = p > 0 && isl_depth_skips(n->depth_seed, n->depth_step, m->index, p);
    m->keep = (float)(1 - p);
}

static void residual_forward(module *m)
{
    switch (m->a->kind) {
    case ISL_MODULE_IN: isl_tk_residual_in(&m->x, &m->out); break;
    case ISL_MODULE_DOWN: isl_tk_residual_down(&m->x, &m->out); break;
    case ISL_MODULE_UP: isl_tk_residual_up(&m->x, &m->out); break;
    }
}

static void residual_backward(module *m)
{
    switch (m->a->kind) {
    case ISL_MODULE_IN: isl_tk_residual_in_backward(&m->dout, &m->dx); break;
    case ISL_MODULE_DOWN: isl_tk_residual_down_backward(&m->dout, &m->dx); break;
    case ISL_MODULE_UP: isl_tk_residual_up_backward(&m->dout, &m->dx); break;
    }
}

/* ------------------------------------------------------------------------------------ */
/* Forward                                                                              */
/* ------------------------------------------------------------------------------------ */

static isl_status module_forward(isl_train_net *n, module *m, double momentum)
{
    const isl_module_arch *a = m->a;
    isl_module_params *mp = &n->p->modules[m->index];
    const int up = a->kind == ISL_MODULE_UP;
    isl_tt e[2] = {m->conv, m->pool};

    decide_depth(n, m);
    if (m->skipped) { /* the residual alone (its batch norms' statistics not updated) */
        residual_forward(m);
        if (up)
            isl_tk_crop(&m->out, 2, &m->next);
        return ISL_OK;
    }
    ISL_CHECK(forward_bnact(n, &m->x, 1, &mp->bn1, m->mean1, m->invstd1, momentum, &m->act1));
    ISL_CHECK(conv_forward(n, &m->expand));
    if (!up) {
        dnnl_exec_arg_t p[3] = {{DNNL_ARG_SRC, m->pool_src}, {DNNL_ARG_DST, m->pool_dst},
                                {DNNL_ARG_WORKSPACE, m->pool_ws}};
        ISL_CHECK(stage_in(n, &m->s_pool_src));
        ISL_CHECK(run(n, &m->pool_f, 3, p, "max pooling"));
        ISL_CHECK(stage_out(n, &m->s_pool_dst));
    }
    ISL_CHECK(
        forward_bnact(n, e, up ? 1 : 2, &mp->bn2, m->mean2, m->invstd2, momentum, &m->act2));
    /* The residual goes into out; the reduce convolution adds onto it (sum post-op).
     * Stochastic depth: out = (keep residual + r) / keep, i.e. residual + r / keep. */
    residual_forward(m);
    if (m->keep < 1)
        isl_tk_scale(&m->out, m->keep);
    ISL_CHECK(conv_forward(n, &m->reduce));
    if (m->keep < 1)
        isl_tk_scale(&m->out, 1 / m->keep);
    if (up)
        isl_tk_crop(&m->out, 2, &m->next);
    return ISL_OK;
}

isl_status isl_train_net_forward(isl_train_net *n, const int *active, double momentum,
                                 isl_net_mode mode)
{
    const isl_arch *a = &n->p->arch;
    n->mode = mode;
    for (int h = 0; h < n->num_heads; h++)
        n->heads[h].active = active[h] != 0;
    ISL_CHECK(run_reorder(n, &n->in_reorder, n->m_in, n->m_in_blk, "input reorder"));
    ISL_CHECK(conv_forward(n, &n->proj_cv));
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        isl_tk_crop(&n->proj, (n->in_h - n->x0[s].h) / 2, &n->x0[s]);
        int last = a->tower_first[s] + a->tower_count[s] - 1;
        for (int i = a->tower_first[s]; i <= last; i++)
            ISL_CHECK(module_forward(n, &n->mods[i], momentum));
        const isl_tt *t = &n->mods[last].next;
        isl_tk_copy_channels(t, 0, &n->cat, n->cat_offset[s], t->c);
    }
    for (int i = a->tower_first[ISL_UPPER_TOWER]; i < a->num_modules; i++)
        ISL_CHECK(module_forward(n, &n->mods[i], momentum));
    const isl_tt *trunk = &n->mods[a->num_modules - 1].next;
    /* Every head normalizes the same trunk: one set of batch statistics. */
    if (n->mode == ISL_NET_BATCH_STATS) {
        ISL_CHECK(batch_stats(n, trunk, 1, a->trunk_ch, n->trunk_mean, n->trunk_invstd));
        for (int h = 0; h < n->num_heads; h++)
            update_running(n, &n->p->heads[h].bn, momentum, values_per_channel(n, trunk));
    }
    for (int h = 0; h < n->num_heads; h++) {
        head *hd = &n->heads[h];
        isl_bn_params *bn = &n->p->heads[h].bn;
        if (!hd->active)
            continue;
        ISL_CHECK(head_bnact(n, trunk, bn, &hd->act));
        head_dropout(n, h, &hd->act);
        ISL_CHECK(conv_forward(n, &hd->cv));
        ISL_CHECK(run_reorder(n, &hd->to_plain, hd->m_blk, hd->m_plain, "logits reorder"));
    }
    if (dnnl_stream_wait(n->stream) != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: stream wait failed");
    return ISL_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Backward                                                                             */
/* ------------------------------------------------------------------------------------ */

/* Tells the ready callback that a layer's gradient arrays are final. oneDNN's CPU
 * stream runs in order, but wait for it so that the arrays hold their values. */
static isl_status layer_ready(isl_train_net *n, float *const *grads, int count)
{
    if (!n->ready)
        return ISL_OK;
    if (dnnl_stream_wait(n->stream) != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: stream wait failed");
    return n->ready(n->ready_user, grads, count);
}

static isl_status module_backward(isl_train_net *n, module *m)
{
    const isl_module_arch *a = m->a;
    const isl_module_params *mp = &n->p->modules[m->index];
    isl_module_params *mg = &n->g->modules[m->index];
    const int up = a->kind == ISL_MODULE_UP, ne = up ? 1 : 2;
    isl_tt e[2] = {m->conv, m->pool}, de[2] = {m->dconv, m->dpool};
    static const int overwrite[2] = {0, 0};

    if (up)
        isl_tk_crop_backward(&m->dnext, 2, &m->dout, 0);
    float *const done[6] = {mg->reduce_weight, mg->bn2.gamma, mg->bn2.beta,
                            mg->expand_weight, mg->bn1.gamma, mg->bn1.beta};
    if (m->skipped) { /* its gradients stay 0 */
        isl_tk_zero(&m->dx);
        residual_backward(m);
        return layer_ready(n, done, 6);
    }
    if (m->keep < 1) /* r's gradient is dout / keep; restored for the residual below */
        isl_tk_scale(&m->dout, 1 / m->keep);
    /* Reduce: r = conv1x1(BNAct(e)). */
    if (!n->keep_module_acts)
        ISL_CHECK(bnact(n, e, ne, &mp->bn2, m->mean2, m->invstd2, &m->act2));
    ISL_CHECK(conv_backward(n, &m->reduce));
    ISL_CHECK(bnact_backward(n, &m->dact2, &m->act2, e, ne, m->mean2, m->invstd2, &mp->bn2, de,
                             overwrite, &mg->bn2));
    /* Expand: conv(BNAct(x)), and maxpool(x). */
    if (!n->keep_module_acts)
        ISL_CHECK(bnact(n, &m->x, 1, &mp->bn1, m->mean1, m->invstd1, &m->act1));
    ISL_CHECK(conv_backward(n, &m->expand));
    if (!up) {
        dnnl_exec_arg_t p[3] = {{DNNL_ARG_DIFF_DST, m->pool_ddst},
                                {DNNL_ARG_WORKSPACE, m->pool_ws},
                                {DNNL_ARG_DIFF_SRC, m->pool_dsrc}};
        ISL_CHECK(stage_in(n, &m->s_pool_ddst));
        ISL_CHECK(run(n, &m->pool_b, 3, p, "max pooling backward"));
        ISL_CHECK(stage_out(n, &m->s_pool_dsrc));
    }
    const int acc = !up; /* the pooling backward wrote dx first */
    ISL_CHECK(bnact_backward(n, &m->dact1, &m->act1, &m->x, 1, m->mean1, m->invstd1, &mp->bn1,
                             &m->dx, &acc, &mg->bn1));
    if (m->keep < 1)
        isl_tk_scale(&m->dout, m->keep);
    residual_backward(m);
    return layer_ready(n, done, 6);
}

static int zero_array(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    (void)user;
    (void)path;
    size_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (size_t)dims[i];
    memset(data, 0, sizeof(float) * count);
    return 0;
}

isl_status isl_train_net_backward(isl_train_net *n)
{
    const isl_arch *a = &n->p->arch;
    isl_params_visit(n->g, zero_array, NULL);
    module *top = &n->mods[a->num_modules - 1];
    const isl_tt *trunk = &top->next;
    int any = 0;
    for (int h = 0; h < n->num_heads; h++) {
        head *hd = &n->heads[h];
        if (!hd->active)
            continue;
        const isl_bn_params *bn = &n->p->heads[h].bn;
        ISL_CHECK(run_reorder(n, &hd->from_plain, hd->m_plain, hd->m_blk, "gradient reorder"));
        if (!n->keep_head_acts)
            ISL_CHECK(head_bnact(n, trunk, bn, &hd->act));
        if (n->dropout > 0) {
            /* The convolution saw the dropped input; the batch norm's backward wants the
             * gradient of the whole one and, for its ReLU and tanh, the input itself. */
            if (!n->keep_head_acts)
                head_dropout(n, h, &hd->act);
            ISL_CHECK(conv_backward(n, &hd->cv));
            head_dropout(n, h, &hd->dact);
            ISL_CHECK(head_bnact(n, trunk, bn, &hd->act));
        } else {
            ISL_CHECK(conv_backward(n, &hd->cv));
        }
        if (n->mode == ISL_NET_BATCH_STATS) {
            ISL_CHECK(bnact_backward(n, &hd->dact, &hd->act, trunk, 1, n->trunk_mean,
                                     n->trunk_invstd, bn, &top->dout, &any, &n->g->heads[h].bn));
        } else {
            /* Population statistics are constants; with a frozen trunk only gamma and beta
             * get gradients and nothing flows into the trunk. */
            stored_stats(bn, NULL, n->stored_invstd);
            const int into_trunk = n->mode == ISL_NET_STORED_STATS;
            ISL_CHECK(bnact_backward(n, &hd->dact, &hd->act, trunk, 1, bn->mean,
                                     n->stored_invstd, bn, into_trunk ? &top->dout : NULL,
                                     into_trunk ? &any : NULL, &n->g->heads[h].bn));
        }
        any = 1;
        isl_head_params *hg = &n->g->heads[h];
        float *const done[4] = {hg->weight, hg->bias, hg->bn.gamma, hg->bn.beta};
        ISL_CHECK(layer_ready(n, done, 4));
    }
    if (!any) /* no head, no gradient */
        return ISL_OK;
    if (n->mode == ISL_NET_FROZEN_TRUNK) {
        if (dnnl_stream_wait(n->stream) != dnnl_success)
            return isl_fail(ISL_ERROR_BACKEND, "oneDNN: stream wait failed");
        return ISL_OK;
    }
    for (int i = a->num_modules - 1; i >= a->tower_first[ISL_UPPER_TOWER]; i--)
        ISL_CHECK(module_backward(n, &n->mods[i]));
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        int first = a->tower_first[s], last = first + a->tower_count[s] - 1;
        module *m = &n->mods[last];
        isl_tk_zero(&m->dout);
        isl_tk_copy_channels(&n->dcat, n->cat_offset[s], &m->dout, 0, m->out.c);
        for (int i = last; i >= first; i--)
            ISL_CHECK(module_backward(n, &n->mods[i]));
        isl_tk_crop_backward(&n->mods[first].dx, (n->in_h - n->x0[s].h) / 2, &n->dproj, s > 0);
    }
    ISL_CHECK(conv_backward(n, &n->proj_cv));
    float *const done[2] = {n->g->projection_weight, n->g->projection_bias};
    ISL_CHECK(layer_ready(n, done, 2));
    if (n->input_grad)
        ISL_CHECK(run_reorder(n, &n->din_reorder, n->m_din_blk, n->m_din,
                              "input gradient reorder"));
    if (dnnl_stream_wait(n->stream) != dnnl_success)
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: stream wait failed");
    return ISL_OK;
}
