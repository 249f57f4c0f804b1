/* Memory-bound kernels of the nhwc (AMX) plans: BNAct, the modules' residual paths and
 * copies. Tensors are batch-one nhwc views: a pixel's channels are contiguous, and a view
 * may be a crop or a channel range of a larger tensor (oneDNN's AMX convolutions only take
 * dense tensors, these kernels take any view). Each kernel makes one pass over memory. */
#ifndef ISL_KERNELS_NHWC_H
#define ISL_KERNELS_NHWC_H

#include <stddef.h>
#include <stdint.h>

typedef struct isl_nhwc {
    void *v;          /* channel 0 of pixel (0, 0) */
    int c, h, w;
    size_t cs, rs;    /* elements between pixels, between rows */
    int bf16;         /* elements are bfloat16 (only BNAct's first input), else float */
} isl_nhwc;

/* BNAct into bfloat16 (round to nearest even), the input of the AMX convolutions:
 * y = scale * [a, pool] + shift per channel, out = [relu(y), tanh(y)] (dense, 2C channels
 * for C = a.c + pool.c, a's size). pool (NULL: none) is the k x k max pooling with the given
 * stride of the view p, computed on the fly; a.c and p.c are multiples of 16. a may be
 * float or bfloat16, p is float. */
void isl_nhwc_bnact_bf16(const isl_nhwc *a, const isl_nhwc *p, int k, int stride,
                         const float *scale, const float *shift, isl_nhwc *out);
/* The same in portable C (what runs without AVX512-BF16; tests compare the two). */
void isl_nhwc_bnact_bf16_portable(const isl_nhwc *a, const isl_nhwc *p, int k, int stride,
                                  const float *scale, const float *shift, isl_nhwc *out);

/* Residual paths of the modules (float), writing all of out's channels: channels x has
 * not are zero (in, down); up keeps channel c where keep[c] and writes zero elsewhere. */
void isl_nhwc_residual_in(const isl_nhwc *x, isl_nhwc *out);   /* crop 1 pixel per side */
void isl_nhwc_residual_down(const isl_nhwc *x, isl_nhwc *out); /* crop 1, then 2x2 average */
void isl_nhwc_residual_up(const isl_nhwc *x, const int *keep, isl_nhwc *out); /* nearest 2x,
                                                                              edge pad 1 */

/* dst = src (float, same c, h, w). */
void isl_nhwc_copy(const isl_nhwc *src, isl_nhwc *dst);

#endif
