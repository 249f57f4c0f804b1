/* Dropout of the heads' inputs while training (isl_train_options_set_dropout). Which
 * values a step drops is a pure function of the trainer's seed, the step, the head and
 * the value's place in the global batch: a resumed run drops the same ones, every CPU
 * drops the same ones, the processes of a data-parallel run drop what one process on
 * the global batch would, and a test can draw the mask itself. */
#ifndef ISL_DROPOUT_H
#define ISL_DROPOUT_H

#include "rng.h"
#include "train_kernels.h"

#include <stdint.h>

/* The key of head h's mask in step `step` (1-based, the step being taken). */
static inline uint64_t isl_dropout_key(uint64_t seed, int64_t step, int head)
{
    uint64_t s = seed;
    s = isl_splitmix64(&s) ^ (uint64_t)step;
    s = isl_splitmix64(&s) ^ (uint64_t)(int64_t)head;
    return isl_splitmix64(&s);
}

/* Whether draw i (0-based) of the splitmix64 stream seeded with key keeps its value:
 * i indexes the head's input [n, c, y, x] in that order, or [n, c] when whole channels
 * drop, n counting the crops of the global batch; kept when the draw's uniform53 is at
 * least the rate. */
static inline int isl_dropout_keeps(uint64_t key, uint64_t i, double rate)
{
    return isl_uniform53(isl_splitmix64_draw(key, i)) >= rate;
}

/* Stochastic depth (Huang et al. 2016; isl_train_net_set_stochastic_depth): whether
 * module `module` skips its branch in step `step`, with probability p. One decision per
 * module and step for the whole global batch, from a key of its own. */
static inline int isl_depth_skips(uint64_t seed, int64_t step, int module, double p)
{
    return !isl_dropout_keeps(isl_dropout_key(seed ^ 0x5eedd7a7u, step, 1000 + module), 0, p);
}

/* t = mask * t / (1 - rate) in place (inverted dropout: prediction needs no change);
 * whole_channels: one draw per image and channel (spatial dropout, Tompson et al. 2015),
 * else one per value. t's image n is crop first_crop + n of the global batch. The same
 * call on a gradient applies the same mask. */
void isl_dropout_apply(isl_tt *t, uint64_t key, double rate, int whole_channels,
                       int64_t first_crop);

#endif
