/* Execution plans: the network for one tile shape as a list of oneDNN primitives over
 * a few reusable buffers.
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
                               int max_head_ch);

isl_status isl_plan_create(const isl_params *p, const isl_layout *l, dnnl_engine_t engine,
                           int in_h, int in_w, isl_precision precision, isl_plan **out);
void isl_plan_free(isl_plan *plan);
int isl_plan_input_height(const isl_plan *plan);
int isl_plan_input_width(const isl_plan *plan);
isl_precision isl_plan_precision(const isl_plan *plan);
/* Multiply-accumulates of the trunk (projection, towers, upper tower) and of one head
 * with out_ch channels, for this plan's tile. */
double isl_plan_trunk_macs(const isl_plan *plan);
double isl_plan_head_macs(const isl_plan *plan, int out_ch);

isl_status isl_exec_create(const isl_plan *plan, isl_exec **out);
void isl_exec_free(isl_exec *exec);
/* The tile input: num_z x in_h x in_w floats, filled by the caller before running. */
float *isl_exec_input(isl_exec *exec);
isl_status isl_exec_run_trunk(isl_exec *exec);
/* Runs head h on the trunk computed last; writes out_ch x out_h x out_w floats
 * (channel-major) to out: logits, or softmax probabilities of each 256-bin distribution. */
isl_status isl_exec_run_head(isl_exec *exec, int head, int probabilities, float *out);

#endif
