#include "kernels.h"
#include "fast_math.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* One block of blk channels (8 or 16: nChw8c or nChw16c) over `pixels` pixels: the inner
 * loop is blk SIMD lanes. Inlined with a constant blk into one function per block size,
 * each cloned per ISA, so both loops vectorize fully. */
static inline __attribute__((always_inline)) void
bnact_span(const float *x, const float *scale, const float *shift, size_t pixels, int blk,
           float *relu_out, float *tanh_out)
{
    for (size_t p = 0; p < pixels; p++) {
#pragma omp simd
        for (int c = 0; c < blk; c++) {
            float y = scale[c] * x[p * blk + c] + shift[c];
            relu_out[p * blk + c] = y > 0.0f ? y : 0.0f;
            tanh_out[p * blk + c] = isl_tanh_approx(y);
        }
    }
}

ISL_CLONES
static void bnact_block16(const float *x, const float *scale, const float *shift, size_t pixels,
                          float *relu_out, float *tanh_out)
{
    bnact_span(x, scale, shift, pixels, 16, relu_out, tanh_out);
}

ISL_CLONES
static void bnact_block8(const float *x, const float *scale, const float *shift, size_t pixels,
                         float *relu_out, float *tanh_out)
{
    bnact_span(x, scale, shift, pixels, 8, relu_out, tanh_out);
}

static void bnact_block(const float *x, const float *scale, const float *shift, size_t pixels,
                        int blk, float *relu_out, float *tanh_out)
{
    if (blk == 8)
        bnact_block8(x, scale, shift, pixels, relu_out, tanh_out);
    else
        bnact_block16(x, scale, shift, pixels, relu_out, tanh_out);
}

ISL_CLONES
static void bnact_block_bf16(const float *x, const float *scale, const float *shift, size_t pixels,
                             uint16_t *relu_out, uint16_t *tanh_out)
{
    /* Two loops: GCC vectorizes the tanh only when its results are stored as floats. */
    for (size_t p = 0; p < pixels; p++) {
        float r[16], t[16];
#pragma omp simd
        for (int c = 0; c < 16; c++) {
            float y = scale[c] * x[p * 16 + c] + shift[c];
            r[c] = y > 0.0f ? y : 0.0f;
            t[c] = isl_tanh_approx(y);
        }
#pragma omp simd
        for (int c = 0; c < 16; c++) {
            relu_out[p * 16 + c] = isl_to_bf16(r[c]);
            tanh_out[p * 16 + c] = isl_to_bf16(t[c]);
        }
    }
}

/* Runs BNAct over blocks of blk channels x pixel chunks in parallel; the outputs are float
 * (bf16 = 0) or bfloat16 (bf16 = 1, blk = 16 only), at the same element offsets. */
static void bnact(const float *x, const float *scale, const float *shift, int channels,
                  size_t pixels, int blk, void *relu_out, void *tanh_out, int bf16)
{
    const int blocks = channels / blk;
    const size_t chunk = 4096; /* pixels per task: 256 KB of input, cache-sized */
    const size_t chunks = (pixels + chunk - 1) / chunk;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < blocks; b++) {
        for (size_t k = 0; k < chunks; k++) {
            size_t p0 = k * chunk, n = pixels - p0 < chunk ? pixels - p0 : chunk;
            size_t off = ((size_t)b * pixels + p0) * blk;
            if (bf16)
                bnact_block_bf16(x + off, scale + blk * b, shift + blk * b, n,
                                 (uint16_t *)relu_out + off, (uint16_t *)tanh_out + off);
            else
                bnact_block(x + off, scale + blk * b, shift + blk * b, n, blk,
                            (float *)relu_out + off, (float *)tanh_out + off);
        }
    }
}

/* BNAct of the k x k max pooling (stride s, no padding) of one block of blk channels of x
 * (xh x xw), for output rows [y0, y1) of width ow. */
static inline __attribute__((always_inline)) void
bnact_pool_span(const float *x, int xw, int k, int s, int y0, int y1, int ow, int blk,
                const float *scale, const float *shift, float *relu_out, float *tanh_out)
{
    for (int oy = y0; oy < y1; oy++) {
        for (int ox = 0; ox < ow; ox++) {
            const float *win = x + ((size_t)oy * s * xw + (size_t)ox * s) * blk;
            float m[16];
#pragma omp simd
            for (int c = 0; c < blk; c++)
                m[c] = win[c];
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++) {
                    const float *v = win + ((size_t)i * xw + j) * blk;
#pragma omp simd
                    for (int c = 0; c < blk; c++)
                        m[c] = v[c] > m[c] ? v[c] : m[c];
                }
            size_t o = ((size_t)oy * ow + ox) * blk;
#pragma omp simd
            for (int c = 0; c < blk; c++) {
                float y = scale[c] * m[c] + shift[c];
                relu_out[o + c] = y > 0.0f ? y : 0.0f;
                tanh_out[o + c] = isl_tanh_approx(y);
            }
        }
    }
}

ISL_CLONES
static void bnact_pool_rows16(const float *x, int xw, int k, int s, int y0, int y1, int ow,
                              const float *scale, const float *shift, float *relu_out,
                              float *tanh_out)
{
    bnact_pool_span(x, xw, k, s, y0, y1, ow, 16, scale, shift, relu_out, tanh_out);
}

ISL_CLONES
static void bnact_pool_rows8(const float *x, int xw, int k, int s, int y0, int y1, int ow,
                             const float *scale, const float *shift, float *relu_out,
                             float *tanh_out)
{
    bnact_pool_span(x, xw, k, s, y0, y1, ow, 8, scale, shift, relu_out, tanh_out);
}

void isl_kernel_bnact_pool(const float *a, int a_channels, const float *x, int x_channels,
                           int xh, int xw, int k, int stride, int oh, int ow, int blk,
                           const float *scale, const float *shift, float *relu_out,
                           float *tanh_out)
{
    const size_t pixels = (size_t)oh * ow, x_plane = (size_t)xh * xw * blk;
    const int a_blocks = a_channels / blk, blocks = a_blocks + x_channels / blk;
    /* Tasks of about 4096 output pixels, as in bnact(). */
    const int rows = ow >= 4096 ? 1 : 4096 / ow;
    const int chunks = (oh + rows - 1) / rows;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < blocks; b++) {
        for (int k0 = 0; k0 < chunks; k0++) {
            int y0 = k0 * rows, y1 = y0 + rows < oh ? y0 + rows : oh;
            size_t off = ((size_t)b * pixels + (size_t)y0 * ow) * blk;
            const float *xb = x + (size_t)(b - a_blocks) * x_plane;
            float *relu_b = relu_out + (size_t)b * pixels * blk;
            float *tanh_b = tanh_out + (size_t)b * pixels * blk;
            if (b < a_blocks)
                bnact_block(a + off, scale + blk * b, shift + blk * b, (size_t)(y1 - y0) * ow,
                            blk, relu_out + off, tanh_out + off);
            else if (blk == 8)
                bnact_pool_rows8(xb, xw, k, stride, y0, y1, ow, scale + blk * b,
                                 shift + blk * b, relu_b, tanh_b);
            else
                bnact_pool_rows16(xb, xw, k, stride, y0, y1, ow, scale + blk * b,
                                  shift + blk * b, relu_b, tanh_b);
        }
    }
}

void isl_kernel_bnact_bf16(const float *x, const float *scale, const float *shift, int channels,
                           size_t pixels, uint16_t *relu_out, uint16_t *tanh_out)
{
    bnact(x, scale, shift, channels, pixels, 16, relu_out, tanh_out, 1);
}

void isl_kernel_bnact(const float *x, const float *scale, const float *shift, int channels,
                      size_t pixels, int blk, float *relu_out, float *tanh_out)
{
    bnact(x, scale, shift, channels, pixels, blk, relu_out, tanh_out, 0);
}

void isl_kernel_tanh(const float *x, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = isl_tanh_approx(x[i]);
}
