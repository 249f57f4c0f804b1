/* Channel layout of the network in oneDNN's blocked nChw16c format.
 *
 * Every tensor is stored with its channels padded to a multiple of 16 so that, with a
 * batch of one, any 16-aligned channel range of a tensor is itself a dense nChw16c
 * tensor at a byte offset: concatenations ([relu, tanh] halves, [conv, maxpool], the five
 * towers) are written in place by their producers. A tensor's real channel c lives at
 * padded position map[c]; positions no real channel maps to always hold zeros (their
 * weights and batch-norm scales are zero), which keeps residual additions exact.
 *
 * The residual of each module is added position by position, so a module's output
 * keeps its input's positions for the channels they share; extra channels fill the
 * free positions. The padded parameters are computed once per model. */
#ifndef ISL_LAYOUT_H
#define ISL_LAYOUT_H

#include "params.h"

typedef struct isl_chmap {
    int padded;   /* P: stored channels, a multiple of 16 */
    int count;    /* real channels */
    int *pos;     /* [count] padded position of each real channel */
} isl_chmap;

/* Batch norm at inference, folded and padded to P positions:
 * y = scale * x + shift, scale = gamma / sqrt(var + 1e-3), shift = beta - mean * scale
 * (free positions: 0 and 0, so they stay 0). */
typedef struct isl_bn_padded {
    int padded;
    float *scale, *shift;
} isl_bn_padded;

#define ISL_BN_EPSILON 1e-3

/* Channel c of a batch norm folded for inference: y = scale * x + shift. */
void isl_bn_fold(const isl_bn_params *s, int c, float *scale, float *shift);

typedef struct isl_module_layout {
    isl_chmap x, e, out;      /* input, expand output (+ maxpool), module output */
    int conv_padded;          /* padded channels of the expand conv (first part of e) */
    isl_bn_padded bn1, bn2;   /* over x and e */
    float *expand_weight;     /* [conv_padded, 2 x.padded, k, k] (oihw, also for up) */
    float *reduce_weight;     /* [out.padded, 2 e.padded] */
} isl_module_layout;

typedef struct isl_head_layout {
    isl_bn_padded bn;         /* over the trunk */
    float *weight;            /* [out_ch, 2 trunk.padded] */
    const float *bias;        /* [out_ch], borrowed from the params */
} isl_head_layout;

typedef struct isl_layout {
    int num_modules;
    isl_module_layout *modules;
    int concat_offset[ISL_NUM_TOWERS]; /* padded channel offset of each tower in the concat */
    isl_chmap concat;                  /* tower concatenation = upper tower input */
    isl_chmap trunk;                   /* output of the last module */
    int num_heads;
    isl_head_layout *heads;
} isl_layout;

/* Builds the padded layout and parameters. Returns 0, or -1 when out of memory. */
int isl_layout_build(isl_layout *l, const isl_params *p);
void isl_layout_free(isl_layout *l);

#endif
