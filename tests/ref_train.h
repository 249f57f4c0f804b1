/* A naive double-precision reference of the network in TRAINING mode (batch norm with the
 * statistics of the batch) and of the training loss, written from the spec independently
 * of lib/train_*.c. Built on the inference reference's layers (ref_net.c); only the batch
 * norm differs (rt_trunk and rt_heads can also use the stored statistics, as a frozen
 * trunk trains). Header-only because the test build compiles each test with ref_net.c
 * alone. The convolution here is a faster loop order of ref_conv (finite differences need
 * dozens of forward passes). */
#ifndef ISL_TEST_REF_TRAIN_H
#define ISL_TEST_REF_TRAIN_H

#include "dropout.h"
#include "ref_net.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RT_EPS 1e-3
#define RT_LN256 5.545177444479562

/* y[j] += w x[j s] over a row (vectorized for the CPU at hand). */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void rt_axpy(
    double *y, const double *x, double w, int n, int s)
{
    if (s == 1)
        for (int j = 0; j < n; j++)
            y[j] += w * x[j];
    else
        for (int j = 0; j < n; j++)
            y[j] += w * x[(size_t)j * s];
}

/* Valid convolution, PyTorch weights [oc, x->c, k, k]; rows of the output in parallel. */
static ref_t rt_conv(const ref_t *x, const float *w, const float *bias, int oc, int k, int s)
{
    const int oh = (x->h - k) / s + 1, ow = (x->w - k) / s + 1;
    ref_t y = ref_new(oc, oh, ow);
#pragma omp parallel for schedule(dynamic) if ((size_t)oc * oh * ow * x->c * k * k >= (1u << 20))
    for (int o = 0; o < oc; o++) {
        double *yo = y.v + (size_t)o * oh * ow;
        for (int i = 0; i < oh * ow; i++)
            yo[i] = bias ? bias[o] : 0.0;
        for (int c = 0; c < x->c; c++)
            for (int a = 0; a < k; a++)
                for (int b = 0; b < k; b++) {
                    const double wv = w[(((size_t)o * x->c + c) * k + a) * k + b];
                    for (int i = 0; i < oh; i++)
                        rt_axpy(yo + (size_t)i * ow,
                                x->v + ((size_t)c * x->h + i * s + a) * x->w + b, wv, ow, s);
                }
    }
    return y;
}

/* [relu(y), tanh(y)], y = gamma (x - mean) / sqrt(var + eps) + beta with the mean and
 * biased variance of channel c over all B images and pixels, or (stored) with the stored
 * population statistics as at inference. */
static void rt_bnact(const ref_t *x, int B, const isl_bn_params *bn, int stored, ref_t *out)
{
    const int C = x[0].c;
    const size_t hw = (size_t)x[0].h * x[0].w;
    for (int b = 0; b < B; b++)
        out[b] = ref_new(2 * C, x[b].h, x[b].w);
    for (int c = 0; c < C; c++) {
        double s = 0, ss = 0;
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < hw; i++)
                s += x[b].v[c * hw + i];
        double mean = s / (B * (double)hw);
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < hw; i++) {
                double d = x[b].v[c * hw + i] - mean;
                ss += d * d;
            }
        double inv = 1.0 / sqrt(ss / (B * (double)hw) + RT_EPS);
        if (stored) {
            mean = bn->mean[c];
            inv = 1.0 / sqrt((double)bn->var[c] + RT_EPS);
        }
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < hw; i++) {
                double y = bn->gamma[c] * (x[b].v[c * hw + i] - mean) * inv + bn->beta[c];
                out[b].v[c * hw + i] = y > 0 ? y : 0;
                out[b].v[(C + c) * hw + i] = tanh(y);
            }
    }
}

static void rt_free(ref_t *t, int B)
{
    for (int b = 0; b < B; b++)
        ref_free(&t[b]);
}

static void rt_module(const ref_t *x, int B, const isl_module_arch *a, const isl_module_params *mp,
                      int stored, ref_t *out)
{
    ref_t *act = calloc((size_t)B, sizeof(ref_t)), *e = calloc((size_t)B, sizeof(ref_t));
    rt_bnact(x, B, &mp->bn1, stored, act);
    for (int b = 0; b < B; b++) {
        if (a->kind == ISL_MODULE_UP) {
            e[b] = ref_conv_transpose(&act[b], mp->expand_weight, a->expand_ch, 4, 2);
        } else {
            int k = a->kernel, s = a->kind == ISL_MODULE_IN ? 1 : 2;
            ref_t conv = rt_conv(&act[b], mp->expand_weight, NULL, a->expand_ch, k, s);
            ref_t pool = ref_maxpool(&x[b], k, s);
            e[b] = ref_concat(&conv, &pool);
            ref_free(&conv);
            ref_free(&pool);
        }
    }
    rt_free(act, B);
    rt_bnact(e, B, &mp->bn2, stored, act);
    for (int b = 0; b < B; b++) {
        ref_t r = rt_conv(&act[b], mp->reduce_weight, NULL, a->reduce_ch, 1, 1), p;
        if (a->kind == ISL_MODULE_IN) {
            p = ref_crop(&x[b], x[b].h - 2, x[b].w - 2);
        } else if (a->kind == ISL_MODULE_DOWN) {
            ref_t c = ref_crop(&x[b], x[b].h - 2, x[b].w - 2);
            p = ref_avgpool(&c, 2, 2);
            ref_free(&c);
        } else {
            p = ref_upsample_edge(&x[b]);
        }
        out[b] = ref_new(a->out_ch, r.h, r.w);
        for (int c = 0; c < a->out_ch; c++)
            for (int i = 0; i < r.h * r.w; i++)
                out[b].v[(size_t)c * r.h * r.w + i] =
                    (c < r.c ? r.v[(size_t)c * r.h * r.w + i] : 0) +
                    (c < p.c ? p.v[(size_t)c * r.h * r.w + i] : 0);
        ref_free(&r);
        ref_free(&p);
    }
    rt_free(act, B);
    rt_free(e, B);
    free(act);
    free(e);
}

/* The trunk (the heads' input) of B images [nz, H, W] into trunk[b]; stored: batch norms
 * with the stored statistics (inference, or training with a frozen trunk). */
static void rt_trunk(const isl_params *p, const ref_t *in, int B, int stored, ref_t *trunk)
{
    static const int start[5] = {72, 102, 146, 202, 250};
    const isl_arch *a = &p->arch;
    ref_t *proj = calloc((size_t)B, sizeof(ref_t)), *x = calloc((size_t)B, sizeof(ref_t));
    ref_t *y = calloc((size_t)B, sizeof(ref_t)), *cat = calloc((size_t)B, sizeof(ref_t));
    for (int b = 0; b < B; b++)
        proj[b] = rt_conv(&in[b], p->projection_weight, p->projection_bias, 16, 1, 1);
    for (int s = 0; s < 5; s++) {
        for (int b = 0; b < B; b++)
            x[b] = ref_crop(&proj[b], start[s] + in[b].h - 250, start[s] + in[b].w - 250);
        for (int i = a->tower_first[s]; i < a->tower_first[s] + a->tower_count[s]; i++) {
            rt_module(x, B, &a->modules[i], &p->modules[i], stored, y);
            rt_free(x, B);
            for (int b = 0; b < B; b++) {
                x[b] = y[b];
                if (a->modules[i].kind == ISL_MODULE_UP) {
                    x[b] = ref_crop(&y[b], y[b].h - 4, y[b].w - 4);
                    ref_free(&y[b]);
                }
            }
        }
        for (int b = 0; b < B; b++) {
            if (s == 0) {
                cat[b] = x[b];
            } else {
                ref_t c2 = ref_concat(&cat[b], &x[b]);
                ref_free(&cat[b]);
                ref_free(&x[b]);
                cat[b] = c2;
            }
        }
    }
    for (int b = 0; b < B; b++)
        x[b] = cat[b];
    for (int i = a->tower_first[5]; i < a->num_modules; i++) {
        rt_module(x, B, &a->modules[i], &p->modules[i], stored, y);
        rt_free(x, B);
        memcpy(x, y, sizeof(ref_t) * (size_t)B);
    }
    memcpy(trunk, x, sizeof(ref_t) * (size_t)B);
    rt_free(proj, B);
    free(proj);
    free(x);
    free(y);
    free(cat);
}

/* Dropout of the heads' inputs as the trainer draws it: the mask is dropout.h's (the one
 * thing shared with the engine), applied here to the plain [c, h, w] images. */
typedef struct rt_dropout {
    double rate; /* 0: none */
    int whole_channels;
    uint64_t seed;
    int64_t step;
} rt_dropout;

static void rt_drop(ref_t *y, int B, int h, const rt_dropout *d)
{
    const uint64_t key = isl_dropout_key(d->seed, d->step, h);
    for (int b = 0; b < B; b++) {
        const size_t hw = (size_t)y[b].h * y[b].w;
        for (int c = 0; c < y[b].c; c++)
            for (size_t i = 0; i < hw; i++) {
                const uint64_t channel = (uint64_t)b * y[b].c + c;
                const int keep = isl_dropout_keeps(
                    key, d->whole_channels ? channel : channel * hw + i, d->rate);
                y[b].v[c * hw + i] = keep ? y[b].v[c * hw + i] / (1.0 - d->rate) : 0.0;
            }
    }
}

/* logits[b * num_heads + h] for every image b and head h from the trunk's output, with
 * dropout d (NULL: none). */
static void rt_heads_dropout(const isl_params *p, const ref_t *trunk, int B, int stored,
                             const rt_dropout *d, ref_t *logits)
{
    ref_t *y = calloc((size_t)B, sizeof(ref_t));
    for (int h = 0; h < p->num_heads; h++) {
        rt_bnact(trunk, B, &p->heads[h].bn, stored, y);
        if (d && d->rate > 0)
            rt_drop(y, B, h, d);
        for (int b = 0; b < B; b++)
            logits[b * p->num_heads + h] =
                rt_conv(&y[b], p->heads[h].weight, p->heads[h].bias, p->heads[h].out_ch, 1, 1);
        rt_free(y, B);
    }
    free(y);
}

static inline void rt_heads(const isl_params *p, const ref_t *trunk, int B, int stored,
                            ref_t *logits)
{
    rt_heads_dropout(p, trunk, B, stored, NULL, logits);
}

/* logits[b * num_heads + h] for every image b and head h; in: B images [nz, H, W];
 * stored: every batch norm with the stored statistics, else the batch's; d: dropout of
 * the heads' inputs (NULL: none). */
static inline void rt_network_dropout(const isl_params *p, const ref_t *in, int B, int stored,
                                      const rt_dropout *d, ref_t *logits)
{
    ref_t *trunk = calloc((size_t)B, sizeof(ref_t));
    rt_trunk(p, in, B, stored, trunk);
    rt_heads_dropout(p, trunk, B, stored, d, logits);
    rt_free(trunk, B);
    free(trunk);
}

static inline void rt_network(const isl_params *p, const ref_t *in, int B, int stored,
                              ref_t *logits)
{
    rt_network_dropout(p, in, B, stored, NULL, logits);
}

static int rt_bin(double v)
{
    double k = nearbyint(255.0 * v);
    return k < 0 ? 0 : (k > 255 ? 255 : (int)k);
}

/* -log softmax(l)[bin] / ln 256 of the distribution at pixel i of group g of logits. */
static double rt_ce(const ref_t *l, int g, size_t i, int bin)
{
    const size_t hw = (size_t)l->h * l->w;
    double mx = -INFINITY, s = 0;
    for (int k = 0; k < 256; k++)
        mx = fmax(mx, l->v[(size_t)(g * 256 + k) * hw + i]);
    for (int k = 0; k < 256; k++)
        s += exp(l->v[(size_t)(g * 256 + k) * hw + i] - mx);
    return (mx + log(s) - l->v[(size_t)(g * 256 + bin) * hw + i]) / RT_LN256;
}

/* The total loss of the spec: label heads 0..L-1 with targets [B, L, oh, ow] and masks,
 * the autoencoder head L against ae_targets [B, nz, oh, ow] (the center of the input). */
static double rt_loss(const ref_t *logits, int B, int L, int nz, const float *targets,
                      const uint8_t *masks, const float *ae_targets, double w)
{
    const int H = L + 1;
    const size_t hw = (size_t)logits[0].h * logits[0].w;
    double label = 0;
    int present = 0;
    for (int l = 0; l < L; l++) {
        double sum = 0;
        long count = 0;
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < hw; i++) {
                size_t t = ((size_t)b * L + l) * hw + i;
                if (masks && !masks[t])
                    continue;
                sum += rt_ce(&logits[b * H + l], 0, i, rt_bin(targets[t]));
                count++;
            }
        if (count) {
            label += sum / count;
            present++;
        }
    }
    double ae = 0;
    for (int b = 0; b < B; b++)
        for (int z = 0; z < nz; z++)
            for (size_t i = 0; i < hw; i++)
                ae += rt_ce(&logits[b * H + L], z, i,
                            rt_bin(ae_targets[((size_t)b * nz + z) * hw + i]));
    ae /= (double)B * nz * hw;
    return (present ? w * label / present : 0) + (1 - w) * ae;
}

#endif
