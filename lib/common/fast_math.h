/* Vectorizable exp and tanh shared by the inference and training kernels: both must
 * compute the same tanh, so that a trained model predicts what it was trained to.
 * Written branch-free so the compiler keeps them in SIMD lanes. */
#ifndef ISL_FAST_MATH_H
#define ISL_FAST_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The vector inner loops, compiled for the CPU at hand (the library's baseline is SSE2)
 * and picked by an ifunc resolver at load time. Not under ThreadSanitizer: the resolvers
 * run before its runtime is up and crash in its instrumentation. */
#ifdef __SANITIZE_THREAD__
#define ISL_CLONES
#else
#define ISL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif

/* expf for x in [-87, 87] (Cephes-style: 2^n * p(r), r = x - n ln 2; ~2 ulp). */
static inline float isl_exp_approx(float x)
{
    x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

/* tanh(y) = sign(y) (1 - 2 / (exp(2|y|) + 1)): no overflow, absolute error ~1e-7. */
static inline float isl_tanh_approx(float y)
{
    float a = fabsf(y);
    float t = 1.0f - 2.0f / (isl_exp_approx(2.0f * a) + 1.0f);
    return copysignf(t, y);
}

/* f to bfloat16, rounded to nearest even (f finite): the inputs of bf16 convolutions. */
static inline uint16_t isl_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* bfloat16 b as a float (exact). */
static inline float isl_from_bf16(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

#endif
