/* Per-pixel statistics of predicted 256-bin distributions. */
#ifndef ISL_STATS_H
#define ISL_STATS_H

#include "isl.h"

/* From probabilities: count distributions of `classes` bins, bin k of distribution i at
 * probs[k * stride + i]. For each stat s with outs[s] != NULL writes outs[s][i]. */
void isl_stats_from_probabilities(const float *probs, int classes, int64_t count, int64_t stride,
                                  float *const outs[ISL_STAT_COUNT]);

#endif
