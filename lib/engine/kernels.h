/* Small memory-bound kernels on blocked tensors (batch one) that oneDNN has no single
 * primitive for: nChw16c, or nChw8c (blk = 8, the layout of CPUs without AVX-512). Each
 * makes one pass over memory. */
#ifndef ISL_KERNELS_H
#define ISL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* BNAct: y = scale * x + shift per channel; relu_out = max(y, 0), tanh_out = tanh(y).
 * x, relu_out and tanh_out hold `channels` (a multiple of 16) x `pixels` floats in blocks
 * of blk (8 or 16) channels. */
void isl_kernel_bnact(const float *x, const float *scale, const float *shift, int channels,
                      size_t pixels, int blk, float *relu_out, float *tanh_out);

/* BNAct of the concatenation [a, maxpool(x)]: a holds a_channels x oh x ow; the pooled
 * channels are the k x k max pooling with the given stride (no padding) of x, x_channels x
 * xh x xw, computed on the fly (the pooled tensor is never stored). Outputs hold
 * (a_channels + x_channels) x oh x ow each. Channel counts are multiples of 16. */
void isl_kernel_bnact_pool(const float *a, int a_channels, const float *x, int x_channels,
                           int xh, int xw, int k, int stride, int oh, int ow, int blk,
                           const float *scale, const float *shift, float *relu_out,
                           float *tanh_out);

/* isl_kernel_bnact in nChw16c, writing bfloat16 (round to nearest even): the input of
 * bf16 convolutions. */
void isl_kernel_bnact_bf16(const float *x, const float *scale, const float *shift, int channels,
                           size_t pixels, uint16_t *relu_out, uint16_t *tanh_out);

/* tanh of n floats (exposed for tests: it must track libm's tanhf). */
void isl_kernel_tanh(const float *x, size_t n, float *out);

#endif
