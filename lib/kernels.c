#include "kernels.h"
#include "fast_math.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* One 16-channel block over `pixels` pixels: the inner loop is 16 SIMD lanes. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void bnact_block(const float *x, const float *scale, const float *shift, size_t pixels,
                        float *relu_out, float *tanh_out)
{
    for (size_t p = 0; p < pixels; p++) {
#pragma omp simd
        for (int c = 0; c < 16; c++) {
            float y = scale[c] * x[p * 16 + c] + shift[c];
            relu_out[p * 16 + c] = y > 0.0f ? y : 0.0f;
            tanh_out[p * 16 + c] = isl_tanh_approx(y);
        }
    }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
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

/* Runs BNAct over 16-channel blocks x pixel chunks in parallel; the outputs are float
 * (bf16 = 0) or bfloat16 (bf16 = 1), at the same element offsets. */
static void bnact(const float *x, const float *scale, const float *shift, int channels,
                  size_t pixels, void *relu_out, void *tanh_out, int bf16)
{
    const int blocks = channels / 16;
    const size_t chunk = 4096; /* pixels per task: 256 KB of input, cache-sized */
    const size_t chunks = (pixels + chunk - 1) / chunk;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < blocks; b++) {
        for (size_t k = 0; k < chunks; k++) {
            size_t p0 = k * chunk, n = pixels - p0 < chunk ? pixels - p0 : chunk;
            size_t off = ((size_t)b * pixels + p0) * 16;
            if (bf16)
                bnact_block_bf16(x + off, scale + 16 * b, shift + 16 * b, n,
                                 (uint16_t *)relu_out + off, (uint16_t *)tanh_out + off);
            else
                bnact_block(x + off, scale + 16 * b, shift + 16 * b, n, (float *)relu_out + off,
                            (float *)tanh_out + off);
        }
    }
}

void isl_kernel_bnact_bf16(const float *x, const float *scale, const float *shift, int channels,
                           size_t pixels, uint16_t *relu_out, uint16_t *tanh_out)
{
    bnact(x, scale, shift, channels, pixels, relu_out, tanh_out, 1);
}

void isl_kernel_bnact(const float *x, const float *scale, const float *shift, int channels,
                      size_t pixels, float *relu_out, float *tanh_out)
{
    bnact(x, scale, shift, channels, pixels, relu_out, tanh_out, 0);
}

void isl_kernel_tanh(const float *x, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = isl_tanh_approx(x[i]);
}
