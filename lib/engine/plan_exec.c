/* Running plans: an isl_exec owns the buffers, memory objects and stream of one thread's
 * runs of a (shared, immutable) plan. */
#include "plan_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct isl_exec {
    const isl_plan *plan;
    dnnl_stream_t stream;
    char *bufs[BUF_COUNT];
    size_t head_capacity;       /* bytes of bufs[BUF_HEAD] */
    dnnl_memory_t *trunk_mems;  /* [steps * MAX_ARGS] */
    dnnl_memory_t **head_mems;
};

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

static isl_status run_steps(isl_exec *e, const step_list *l, dnnl_memory_t *mems, float *external,
                            int probabilities)
{
    dnnl_exec_arg_t args[MAX_ARGS];
    for (int i = 0; i < l->count; i++) {
        const plan_step *s = &l->steps[i];
        if (s->probabilities_only && !probabilities)
            continue;
        if (s->kind == STEP_KERNEL) {
            s->run(s, e->bufs);
            continue;
        }
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
    size_t need = (size_t)plan->head_out_ch[head] * plan->head_rows * plan->out_w * sizeof(float);
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

/* Rows [row0, row0 + head_rows) of the trunk's output into the heads' input buffer. */
static void copy_head_rows(isl_exec *e, int row0)
{
    const isl_plan *p = e->plan;
    const tref *t = &p->trunk_out;
    const size_t es = isl_dt_size(t->dt), rows = (size_t)p->head_rows;
    const char *src = e->bufs[t->buf] + t->offset;
    char *dst = e->bufs[BUF_HEAD_IN] + p->head_in.offset;
    if (p->nhwc) {
        /* Dense nhwc: the chunk is one contiguous range. */
        const size_t row = (size_t)t->w * t->c * es;
        memcpy(dst, src + (size_t)row0 * row, rows * row);
        return;
    }
    /* nChw16c / nChw8c: one range per block of channels. */
    const size_t row = (size_t)t->w * t->blk * es;
    for (int b = 0; b < t->c / t->blk; b++)
        memcpy(dst + (size_t)b * rows * row, src + ((size_t)b * t->h + row0) * row, rows * row);
}

isl_status isl_exec_run_head(isl_exec *e, int head, int probabilities, int row0, float *out)
{
    const isl_plan *p = e->plan;
    if (head < 0 || head >= p->num_heads || !out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "invalid head %d", head);
    if (row0 < 0 || row0 > p->out_h - p->head_rows)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "head rows from %d: outside the tile", row0);
    ISL_CHECK(ensure_head(e, head));
    if (p->head_rows < p->out_h)
        copy_head_rows(e, row0);
    return run_steps(e, &e->plan->heads[head], e->head_mems[head], out, probabilities);
}
