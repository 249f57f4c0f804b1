/* Memory-bound kernels of the training engine (lib/train/train_net.c) on batched tensors in
 * oneDNN's nChw16c layout: batch-norm statistics, the spec's BNAct ([relu, tanh] of a
 * batch-normalized input) and its backward pass, the residual paths, crops and channel
 * copies. oneDNN has no primitive for these; each is one or two passes over memory.
 *
 * A tensor holds n images of c channels, stored as ceil(c / 16) blocks of 16 channels;
 * the padding channels of the last block are zero (oneDNN relies on it), and every
 * kernel that writes a whole tensor writes them as zeros. Results do not depend on the
 * thread count (sums are reduced in a fixed order). */
#ifndef ISL_TRAIN_KERNELS_H
#define ISL_TRAIN_KERNELS_H

#include <stddef.h>

typedef struct isl_tt {
    int n, c, h, w;
    float *v;
} isl_tt;

static inline isl_tt isl_tt_make(int n, int c, int h, int w, float *v)
{
    isl_tt t = {n, c, h, w, v};
    return t;
}

/* Floats of storage: n * 16 ceil(c / 16) * h * w. */
size_t isl_tt_floats(int n, int c, int h, int w);

/* Batch norm over a batch split between processes (data-parallel training): the
 * per-channel sums of every process are added up by sum (in place, over all of them;
 * returns 0 on success), so that the statistics are those of the global batch of
 * global_n images (each process's tensors hold their own n of them). */
typedef struct isl_tk_sync {
    int (*sum)(double *buf, size_t count, void *user);
    void *user;
    int global_n;
} isl_tk_sync;

/* Batch statistics of the channel concatenation of src[0..nsrc) (same n, h, w): per
 * channel mean and biased variance over n * h * w values, accumulated in double; with
 * sync (not NULL) over the global batch. Returns 0, -1 when out of memory, -2 when
 * sync->sum failed. */
int isl_tk_bn_stats(const isl_tt *src, int nsrc, double *mean, double *var,
                    const isl_tk_sync *sync);

/* act = [relu(y), tanh(y)] with y = scale * x + shift per channel, x the channel
 * concatenation of src[0..nsrc) (C channels in all); act has 2C channels. */
void isl_tk_bnact(const isl_tt *src, int nsrc, const float *scale, const float *shift,
                  isl_tt *act);

/* Backward of BNAct. Given dact (2C channels), the forward's act and x = src[0..nsrc)
 * with the mean and 1/sqrt(var + eps) it was normalized with, and gamma: writes
 * dgamma, dbeta [C] and dx[k] (shaped as src[k]), added to dx[k] if accumulate[k].
 * batch_stats: mean and invstd are the statistics of x itself, so dx includes their
 * dependence on x; 0: they are constants (stored population statistics) and
 * dx = gamma invstd dy. dx NULL: only dgamma and dbeta, which are the same either way.
 * sync (with batch_stats and dx): the statistics are those of the global batch, and the
 * mean(dy) and mean(dy xhat) of dx are taken over it too; dgamma and dbeta stay this
 * process's share (summed with the other gradients). Returns 0, -1 when out of memory,
 * -2 when sync->sum failed. */
int isl_tk_bnact_backward(const isl_tt *dact, const isl_tt *act, const isl_tt *src, int nsrc,
                          const float *mean, const float *invstd, const float *gamma,
                          int batch_stats, isl_tt *dx, const int *accumulate, float *dgamma,
                          float *dbeta, const isl_tk_sync *sync);

/* Residual paths of the modules (spec, module step 4), writing all of out's channels:
 * channels x has not are zero (in, down) and x's extra channels are dropped (up). */
void isl_tk_residual_in(const isl_tt *x, isl_tt *out);   /* crop 1 pixel per side */
void isl_tk_residual_down(const isl_tt *x, isl_tt *out); /* crop 1, then 2x2 average */
void isl_tk_residual_up(const isl_tt *x, isl_tt *out);   /* nearest 2x, edge pad 1 */
/* Their backward passes: dx += d(residual)/dx applied to dout. */
void isl_tk_residual_in_backward(const isl_tt *dout, isl_tt *dx);
void isl_tk_residual_down_backward(const isl_tt *dout, isl_tt *dx);
void isl_tk_residual_up_backward(const isl_tt *dout, isl_tt *dx);

/* dst = src cropped by `border` pixels on each side (same channels). */
void isl_tk_crop(const isl_tt *src, int border, isl_tt *dst);
/* Backward of the crop: dsrc's interior += ddst, or (accumulate == 0) dsrc = ddst
 * zero-padded by `border`. */
void isl_tk_crop_backward(const isl_tt *ddst, int border, isl_tt *dsrc, int accumulate);

/* dst channels [d0, d0 + count) = src channels [s0, s0 + count) (same n, h, w). */
void isl_tk_copy_channels(const isl_tt *src, int s0, isl_tt *dst, int d0, int count);

/* t = f t in place (padding included: it stays zero). */
void isl_tk_scale(isl_tt *t, float f);

/* Sets a whole tensor (padding included) to zero. */
void isl_tk_zero(isl_tt *t);

#endif
