/* Execution plans: which network builder a plan uses (plan_blocked.c or plan_nhwc.c,
 * both on the helpers of plan_build.c), the head chunking, memory estimates, freeing and
 * queries. The executor is plan_exec.c. */
#include "plan_internal.h"

#include "cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* bf16 plans use the nhwc layout where oneDNN has AMX kernels for it: oneDNN 2.6 runs
 * blocked bf16 convolutions with AVX512-BF16 only (slower than FP32 here).
 * ISL_BF16_LAYOUT=blocked keeps the blocked layout (for comparisons and tests). */
static int use_nhwc(isl_precision precision)
{
    if (precision != ISL_PRECISION_BF16)
        return 0;
    const char *force = getenv("ISL_BF16_LAYOUT");
    if (force && !strcmp(force, "blocked"))
        return 0;
    return isl_cpu_has(dnnl_cpu_isa_avx512_core_amx);
}

static isl_status build_all_trunk(builder *b, const isl_params *p, const isl_layout *l)
{
    return b->plan->nhwc ? isl_nhwc_build_trunk(b, p, l) : isl_blocked_build_trunk(b, p, l);
}

/* Heads run on chunks of rows of the trunk's output, of about ISL_HEAD_CHUNK_DEFAULT_PIXELS
 * pixels: a head's logits and probabilities (256 or num_z x 256 per pixel) would otherwise
 * outgrow the trunk's own buffers on large tiles (1.1 GB for three label heads on a
 * 762 x 762 tile). The environment variable ISL_HEAD_CHUNK_PIXELS overrides it (tests use
 * small chunks on small tiles). */

static void plan_head_chunks(builder *b)
{
    isl_plan *plan = b->plan;
    const tref t = plan->trunk_out;
    const char *env = getenv("ISL_HEAD_CHUNK_PIXELS");
    const long limit = env && atol(env) > 0 ? atol(env) : ISL_HEAD_CHUNK_DEFAULT_PIXELS;
    const int chunks = (int)(((size_t)t.h * t.w + (size_t)limit - 1) / (size_t)limit);
    const int rows = (t.h + chunks - 1) / chunks;
    plan->head_rows = rows < t.h ? rows : t.h;
    plan->head_in = t;
    if (plan->head_rows == t.h)
        return;
    plan->head_in = plan->nhwc ? isl_tensor_nhwc(BUF_HEAD_IN, 0, t.c, rows, t.w, t.dt)
                               : isl_tensor(BUF_HEAD_IN, 0, t.c, rows, t.w, t.dt, t.blk);
    isl_need(b, plan->head_in);
}

static isl_status build_any_head(builder *b, const isl_layout *l, int h, int out_ch)
{
    return b->plan->nhwc ? isl_nhwc_build_head(b, l, h, out_ch)
                         : isl_blocked_build_head(b, l, h, out_ch);
}

size_t isl_plan_estimate_bytes(const isl_params *p, const isl_layout *l, int in_h, int in_w,
                               int max_head_ch, isl_precision precision)
{
    isl_plan plan;
    step_list list = {0};
    memset(&plan, 0, sizeof(plan));
    /* Blocked bf16 plans need less than FP32 ones: their estimate stays an upper bound. */
    plan.nhwc = use_nhwc(precision);
    plan.act_dt = plan.nhwc ? dnnl_bf16 : dnnl_f32;
    plan.blk = isl_cpu_block_channels();
    plan.in_h = in_h;
    plan.in_w = in_w;
    plan.out_h = isl_arch_output_side(in_h);
    plan.out_w = isl_arch_output_side(in_w);
    builder b = {&plan, &list, 1};
    if (plan.out_h < 0 || plan.out_w < 0 || build_all_trunk(&b, p, l) != ISL_OK)
        return (size_t)-1;
    plan_head_chunks(&b);
    if (max_head_ch > 0)
        build_any_head(&b, l, 0, max_head_ch);
    size_t total = 0;
    for (int i = 0; i < BUF_COUNT; i++)
        total += plan.buf_bytes[i];
    if (getenv("ISL_DEBUG_MEMORY"))
        for (int i = 0; i < BUF_COUNT; i++)
            fprintf(stderr, "buffer %d: %zu MB\n", i, plan.buf_bytes[i] >> 20);
    /* Caller-side head output + scratchpads and oneDNN's own allocations. */
    total += (size_t)max_head_ch * plan.head_rows * plan.out_w * sizeof(float);
    return total + total / 16 + (16u << 20);
}

isl_status isl_plan_create(const isl_params *p, const isl_layout *l, dnnl_engine_t engine,
                           int in_h, int in_w, isl_precision precision, isl_plan **out)
{
    *out = NULL;
    ISL_CHECK(check_tile(in_h, in_w));
    if (precision == ISL_PRECISION_BF16 && !isl_cpu_has(dnnl_cpu_isa_avx512_core_bf16))
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
    plan->nhwc = use_nhwc(precision);
    plan->act_dt = precision == ISL_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
    /* nChw8c without AVX-512: oneDNN 2.6 runs nChw16c there with its reference kernels.
     * Channels stay padded to 16, so 16-aligned channel ranges stay dense tensors at byte
     * offsets (concatenations in place) in both layouts (docs/testing-cpus.md). */
    plan->blk = isl_cpu_block_channels();
    plan->num_heads = p->num_heads;
    plan->heads = calloc((size_t)(p->num_heads ? p->num_heads : 1), sizeof(*plan->heads));
    plan->head_out_ch = calloc((size_t)(p->num_heads ? p->num_heads : 1), sizeof(int));
    isl_status s = ISL_OK;
    if (!plan->heads || !plan->head_out_ch)
        s = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    builder b = {plan, &plan->trunk, 0};
    if (s == ISL_OK)
        s = build_all_trunk(&b, p, l);
    if (s == ISL_OK)
        plan_head_chunks(&b);
    for (int h = 0; s == ISL_OK && h < p->num_heads; h++) {
        builder hb = {plan, &plan->heads[h], 0};
        plan->head_out_ch[h] = p->heads[h].out_ch;
        s = build_any_head(&hb, l, h, p->heads[h].out_ch);
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
int isl_plan_is_nhwc(const isl_plan *plan) { return plan->nhwc; }
int isl_plan_block_channels(const isl_plan *plan) { return plan->nhwc ? 0 : plan->blk; }
int isl_plan_head_rows(const isl_plan *plan) { return plan->head_rows; }

static int list_primitives(const step_list *l, isl_plan_primitive *out, int max, int n)
{
    for (int i = 0; i < l->count; i++) {
        const plan_step *s = &l->steps[i];
        if (s->kind != STEP_PRIMITIVE)
            continue;
        if (n < max) {
            const_dnnl_primitive_desc_t pd = NULL;
            isl_plan_primitive *o = &out[n];
            memset(o, 0, sizeof(*o));
            o->impl = "?";
            if (dnnl_primitive_get_primitive_desc(s->prim, &pd) == dnnl_success) {
                dnnl_primitive_desc_query(pd, dnnl_query_primitive_kind, 0, &o->kind);
                dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &o->impl);
                const dnnl_memory_desc_t *src = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
                o->src_dt = src ? src->data_type : dnnl_data_type_undef;
            }
        }
        n++;
    }
    return n;
}

int isl_plan_primitives(const isl_plan *plan, isl_plan_primitive *out, int max)
{
    int n = list_primitives(&plan->trunk, out, max, 0);
    for (int h = 0; h < plan->num_heads; h++)
        n = list_primitives(&plan->heads[h], out, max, n);
    return n;
}
