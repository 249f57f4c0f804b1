/* A deliberately naive double-precision implementation of the network spec, written
 * independently of lib/ (plain NCHW loops, no padding tricks, no oneDNN). Tests use it
 * as an oracle for the engine; its own layers are checked against hand-computed values. */
#ifndef ISL_TEST_REF_NET_H
#define ISL_TEST_REF_NET_H

#include "params.h"

#include <stddef.h>

/* A [c, h, w] tensor of doubles. */
typedef struct ref_t {
    int c, h, w;
    double *v;
} ref_t;

ref_t ref_new(int c, int h, int w);
void ref_free(ref_t *t);
static inline double *ref_at(const ref_t *t, int c, int y, int x)
{
    return &t->v[((size_t)c * t->h + y) * t->w + x];
}

/* Layers. Weights are float arrays in PyTorch layouts. */
ref_t ref_conv(const ref_t *x, const float *w, const float *bias, int out_c, int k, int stride);
ref_t ref_conv_transpose(const ref_t *x, const float *w /* [in, out, k, k] */, int out_c, int k,
                         int stride);
ref_t ref_maxpool(const ref_t *x, int k, int stride);
ref_t ref_avgpool(const ref_t *x, int k, int stride);
ref_t ref_crop(const ref_t *x, int h, int w);
ref_t ref_upsample_edge(const ref_t *x); /* nearest 2x, then 1-pixel replicate pad */
ref_t ref_bnact(const ref_t *x, const isl_bn_params *bn);
ref_t ref_concat(const ref_t *a, const ref_t *b);

/* One module of the given kind ('i', 'd', 'u'). */
ref_t ref_module(const ref_t *x, char kind, const isl_module_params *mp, int expand_ch,
                 int reduce_ch);

/* The whole network on an input of [nz, h, w] (h, w = 250 + 16m). Returns one logits tensor
 * per head in out[h] (caller frees). */
void ref_network(const isl_params *p, const ref_t *input, ref_t *out);

#endif
