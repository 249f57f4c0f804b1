/* Execution plans: the network for one tile shape as a list of oneDNN primitives and
 * memory-bound kernels over a few reusable buffers. FP32 plans (and bf16 ones on CPUs
 * without AMX) use oneDNN's blocked layout (plan_blocked.c): nChw16c with AVX-512, nChw8c
 * without (the layout oneDNN 2.6 has AVX2 kernels for); bf16 plans on CPUs with AMX use
 * nhwc, the layout oneDNN 2.6 has AMX kernels for (plan_nhwc.c).
 *
 * A plan is immutable once built and may be executed by several threads at once, each
 * with its own isl_exec (buffers, memory objects, stream, user-mode scratchpad). */
#ifndef ISL_PLAN_H
#define ISL_PLAN_H

#include "isl.h"
#include "layout.h"

#include <oneapi/dnnl/dnnl.h>

typedef struct isl_plan isl_plan;
typedef struct isl_exec isl_exec;

/* Bytes of working memory one isl_exec of an (in_h x in_w) plan needs, with head
 * outputs of out_ch channels at most (256, or num_z * 256 for the autoencoder).
 * Estimated without building anything; used to choose tile sizes. */
size_t isl_plan_estimate_bytes(const isl_params *p, const isl_layout *l, int in_h, int in_w,
                               int max_head_ch, isl_precision precision);

isl_status isl_plan_create(const isl_params *p, const isl_layout *l, dnnl_engine_t engine,
                           int in_h, int in_w, isl_precision precision, isl_plan **out);
void isl_plan_free(isl_plan *plan);
int isl_plan_input_height(const isl_plan *plan);
int isl_plan_input_width(const isl_plan *plan);
isl_precision isl_plan_precision(const isl_plan *plan);
/* 1 when the plan uses the nhwc (AMX) layout. */
int isl_plan_is_nhwc(const isl_plan *plan);
/* Channels per block of a blocked plan: 16 (nChw16c) on CPUs with AVX-512, else 8
 * (nChw8c, which oneDNN runs with AVX2 JIT kernels); 0 for nhwc plans. */
int isl_plan_block_channels(const isl_plan *plan);
/* Heads run on chunks of this many rows of the tile's output (all of them on small
 * tiles), about ISL_HEAD_CHUNK_DEFAULT_PIXELS pixels: their logits would otherwise
 * dominate the working memory of large tiles. */
#define ISL_HEAD_CHUNK_DEFAULT_PIXELS 65536
int isl_plan_head_rows(const isl_plan *plan);
/* The first row of the chunk that follows row0's chunk: chunks start at multiples of
 * rows, except the last, which ends at out_h (overlapping its predecessor). */
static inline int isl_head_chunk_start(int row0, int rows, int out_h)
{
    return row0 + rows > out_h ? out_h - rows : row0;
}
/* The plan's oneDNN primitives (trunk, then heads), for tests and diagnostics: kind,
 * source data type and implementation name (valid while the plan lives). Fills up to max
 * entries; returns how many primitives there are. */
typedef struct isl_plan_primitive {
    dnnl_primitive_kind_t kind;
    dnnl_data_type_t src_dt;
    const char *impl;
} isl_plan_primitive;
int isl_plan_primitives(const isl_plan *plan, isl_plan_primitive *out, int max);

isl_status isl_exec_create(const isl_plan *plan, isl_exec **out);
void isl_exec_free(isl_exec *exec);
/* The tile input: num_z x in_h x in_w floats, filled by the caller before running. */
float *isl_exec_input(isl_exec *exec);
isl_status isl_exec_run_trunk(isl_exec *exec);
/* Runs head h on rows [row0, row0 + isl_plan_head_rows) of the trunk computed last;
 * writes out_ch x rows x out_w floats (channel-major) to out: logits, or softmax
 * probabilities of each 256-bin distribution. */
isl_status isl_exec_run_head(isl_exec *exec, int head, int probabilities, int row0, float *out);

#endif
