#include "kernels_nhwc.h"
#include "cpu.h"
#include "fast_math.h"

#include <immintrin.h>
#include <string.h>

static inline const float *fpx(const isl_nhwc *t, int y, int x)
{
    return (const float *)t->v + (size_t)y * t->rs + (size_t)x * t->cs;
}

static inline float *fpx_mut(isl_nhwc *t, int y, int x)
{
    return (float *)t->v + (size_t)y * t->rs + (size_t)x * t->cs;
}

/* ------------------------------------------------------------------------------------ */
/* BNAct                                                                                */
/* ------------------------------------------------------------------------------------ */

/* Two versions of BNAct's inner loops: portable C (vectorized by the compiler), and
 * AVX-512 with AVX512-BF16, which every CPU with AMX has and which the nhwc plans (AMX
 * only) therefore run. The second is ~2.5x faster (BNAct is the costliest pass left when
 * the convolutions run on AMX): FMAs, vscalefps for 2^n, a reciprocal estimate refined by
 * one Newton step instead of a division, and vcvtneps2bf16 for the rounding. Both compute
 * fast_math.h's tanh (the same polynomial); results agree to the last bfloat16 bit but
 * for rare ties. */

/* One 16-channel block: y = sc m + sh, then relu and tanh rounded to bfloat16. Two loops:
 * GCC vectorizes the tanh only when its float results are stored as floats. */
static inline void act16(const float *m, const float *sc, const float *sh, uint16_t *relu,
                         uint16_t *tanh_out)
{
    float fr[16], ft[16];
#pragma omp simd
    for (int c = 0; c < 16; c++) {
        float y = sc[c] * m[c] + sh[c];
        fr[c] = y > 0.0f ? y : 0.0f;
        ft[c] = isl_tanh_approx(y);
    }
#pragma omp simd
    for (int c = 0; c < 16; c++) {
        relu[c] = isl_to_bf16(fr[c]);
        tanh_out[c] = isl_to_bf16(ft[c]);
    }
}

/* The per-pixel loops, over n channels (a multiple of 16) of w pixels: x (pixel stride xcs)
 * -> relu and tanh (pixel stride ocs); the pooled version takes the k x k maximum (stride
 * s) of x, pixel p pooling rows [0, k) (row stride xrs) and columns [s p, s p + k). */
ISL_CLONES
static void bnact_row_c(const void *x, int x16, size_t xcs, int n, int w,
                        const float *sc, const float *sh, uint16_t *relu,
                        uint16_t *tanh_out, size_t ocs)
{
    for (int p = 0; p < w; p++) {
        for (int c0 = 0; c0 < n; c0 += 16) {
            const size_t i = (size_t)p * xcs + c0;
            float m[16];
            if (x16)
                for (int c = 0; c < 16; c++)
                    m[c] = isl_from_bf16(((const uint16_t *)x)[i + c]);
            else
                memcpy(m, (const float *)x + i, sizeof(m));
            act16(m, sc + c0, sh + c0, relu + (size_t)p * ocs + c0,
                  tanh_out + (size_t)p * ocs + c0);
        }
    }
}

ISL_CLONES
static void bnact_pool_row_c(const float *x, size_t xcs, size_t xrs, int k, int s, int n,
                             int w, const float *sc, const float *sh, uint16_t *relu,
                             uint16_t *tanh_out, size_t ocs)
{
    for (int p = 0; p < w; p++) {
        const float *x0 = x + (size_t)p * s * xcs;
        for (int c0 = 0; c0 < n; c0 += 16) {
            float m[16];
            memcpy(m, x0 + c0, sizeof(m));
            for (int ky = 0; ky < k; ky++) {
                for (int kx = 0; kx < k; kx++) {
                    const float *q = x0 + (size_t)ky * xrs + (size_t)kx * xcs + c0;
#pragma omp simd
                    for (int c = 0; c < 16; c++)
                        m[c] = q[c] > m[c] ? q[c] : m[c];
                }
            }
            act16(m, sc + c0, sh + c0, relu + (size_t)p * ocs + c0,
                  tanh_out + (size_t)p * ocs + c0);
        }
    }
}

#define BF16_TARGET __attribute__((target("avx512f,avx512vl,avx512bf16,fma")))

BF16_TARGET static inline void act16_bf16(__m512 m, const float *sc, const float *sh,
                                          uint16_t *relu, uint16_t *tanh_out)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 y = _mm512_fmadd_ps(_mm512_loadu_ps(sc), m, _mm512_loadu_ps(sh));
    __m512 r = _mm512_max_ps(y, _mm512_setzero_ps());
    /* tanh(y) = sign(y) (1 - 2 / (exp(2|y|) + 1)), exp(x) = 2^n p(x - n ln 2). */
    __m512 a = _mm512_abs_ps(y);
    __m512 x = _mm512_min_ps(_mm512_add_ps(a, a), _mm512_set1_ps(87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 t = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    t = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), t);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(t, t), t), one);
    __m512 d = _mm512_add_ps(_mm512_scalef_ps(p, n), one);
    __m512 inv = _mm512_rcp14_ps(d);
    inv = _mm512_fmadd_ps(inv, _mm512_fnmadd_ps(d, inv, one), inv);
    __m512 th = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), inv, one);
    __m512i sign = _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32((int)0x80000000u));
    th = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(th), sign));
    _mm256_storeu_si256((__m256i *)relu, (__m256i)_mm512_cvtneps_pbh(r));
    _mm256_storeu_si256((__m256i *)tanh_out, (__m256i)_mm512_cvtneps_pbh(th));
}

/* 16 floats at x[i], or 16 bfloat16 widened (x16). */
BF16_TARGET static inline __m512 load16(const void *x, int x16, size_t i)
{
    if (!x16)
        return _mm512_loadu_ps((const float *)x + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

BF16_TARGET static void bnact_row_bf16(const void *x, int x16, size_t xcs, int n, int w,
                                       const float *sc, const float *sh, uint16_t *relu,
                                       uint16_t *tanh_out, size_t ocs)
{
    for (int p = 0; p < w; p++)
        for (int c0 = 0; c0 < n; c0 += 16)
            act16_bf16(load16(x, x16, (size_t)p * xcs + c0), sc + c0, sh + c0,
                       relu + (size_t)p * ocs + c0, tanh_out + (size_t)p * ocs + c0);
}

BF16_TARGET static void bnact_pool_row_bf16(const float *x, size_t xcs, size_t xrs, int k,
                                            int s, int n, int w, const float *sc,
                                            const float *sh, uint16_t *relu, uint16_t *tanh_out,
                                            size_t ocs)
{
    for (int p = 0; p < w; p++) {
        const float *x0 = x + (size_t)p * s * xcs;
        for (int c0 = 0; c0 < n; c0 += 16) {
            __m512 m = _mm512_loadu_ps(x0 + c0);
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                    m = _mm512_max_ps(m, _mm512_loadu_ps(x0 + (size_t)ky * xrs +
                                                         (size_t)kx * xcs + c0));
            act16_bf16(m, sc + c0, sh + c0, relu + (size_t)p * ocs + c0,
                       tanh_out + (size_t)p * ocs + c0);
        }
    }
}

static void bnact_bf16(const isl_nhwc *a, const isl_nhwc *p, int k, int stride,
                       const float *scale, const float *shift, isl_nhwc *out, int avx512)
{
    const int C = a->c + (p ? p->c : 0), h = a->h, w = a->w;
#pragma omp parallel for schedule(static)
    for (int y = 0; y < h; y++) {
        uint16_t *orow = (uint16_t *)out->v + (size_t)y * out->rs;
        const float *prow = p ? fpx(p, y * stride, 0) : NULL;
        const void *arow = (const char *)a->v + (size_t)y * a->rs * (a->bf16 ? 2 : 4);
        if (avx512) {
            bnact_row_bf16(arow, a->bf16, a->cs, a->c, w, scale, shift, orow, orow + C,
                           out->cs);
            if (p)
                bnact_pool_row_bf16(prow, p->cs, p->rs, k, stride, p->c, w, scale + a->c,
                                    shift + a->c, orow + a->c, orow + C + a->c, out->cs);
        } else {
            bnact_row_c(arow, a->bf16, a->cs, a->c, w, scale, shift, orow, orow + C, out->cs);
            if (p)
                bnact_pool_row_c(prow, p->cs, p->rs, k, stride, p->c, w, scale + a->c,
                                 shift + a->c, orow + a->c, orow + C + a->c, out->cs);
        }
    }
}

void isl_nhwc_bnact_bf16(const isl_nhwc *a, const isl_nhwc *p, int k, int stride,
                         const float *scale, const float *shift, isl_nhwc *out)
{
    bnact_bf16(a, p, k, stride, scale, shift, out, isl_cpu_has_avx512_bf16());
}

void isl_nhwc_bnact_bf16_portable(const isl_nhwc *a, const isl_nhwc *p, int k, int stride,
                                  const float *scale, const float *shift, isl_nhwc *out)
{
    bnact_bf16(a, p, k, stride, scale, shift, out, 0);
}

/* ------------------------------------------------------------------------------------ */
/* Residual paths and copies                                                            */
/* ------------------------------------------------------------------------------------ */

/* n pixels: channels [0, c) of dst = those of src, [c, dc) = 0 (strides scs, dcs). */
ISL_CLONES
static void copy_pixels(const float *src, size_t scs, int c, int n, float *dst,
                        size_t dcs, int dc)
{
    if (scs == (size_t)c && dcs == (size_t)dc && c == dc) {
        memcpy(dst, src, sizeof(float) * (size_t)n * c);
        return;
    }
    for (int p = 0; p < n; p++) {
        const float *sp = src + (size_t)p * scs;
        float *dp = dst + (size_t)p * dcs;
#pragma omp simd
        for (int i = 0; i < c; i++)
            dp[i] = sp[i];
        for (int i = c; i < dc; i++)
            dp[i] = 0.0f;
    }
}

void isl_nhwc_residual_in(const isl_nhwc *x, isl_nhwc *out)
{
#pragma omp parallel for schedule(static)
    for (int y = 0; y < out->h; y++)
        copy_pixels(fpx(x, y + 1, 1), x->cs, x->c, out->w, fpx_mut(out, y, 0), out->cs, out->c);
}

ISL_CLONES
static void average4(const float *a, const float *b, const float *c, const float *d,
                     int n, float *o)
{
#pragma omp simd
    for (int i = 0; i < n; i++)
        o[i] = (a[i] + b[i] + c[i] + d[i]) * 0.25f;
}

void isl_nhwc_residual_down(const isl_nhwc *x, isl_nhwc *out)
{
    const size_t rest = sizeof(float) * (size_t)(out->c - x->c);
#pragma omp parallel for schedule(static)
    for (int y = 0; y < out->h; y++) {
        for (int i = 0; i < out->w; i++) {
            float *o = fpx_mut(out, y, i);
            int sy = 2 * y + 1, sx = 2 * i + 1;
            average4(fpx(x, sy, sx), fpx(x, sy, sx + 1), fpx(x, sy + 1, sx),
                     fpx(x, sy + 1, sx + 1), x->c, o);
            memset(o + x->c, 0, rest);
        }
    }
}

ISL_CLONES
static void masked_copy(const float *src, const int *keep, int n, float *dst)
{
#pragma omp simd
    for (int c = 0; c < n; c++)
        dst[c] = keep[c] ? src[c] : 0.0f;
}

void isl_nhwc_residual_up(const isl_nhwc *x, const int *keep, isl_nhwc *out)
{
    const int h = x->h, w = x->w;
#pragma omp parallel for schedule(static)
    for (int y = 0; y < out->h; y++) {
        int sy = y == 0 ? 0 : ((y - 1) / 2 > h - 1 ? h - 1 : (y - 1) / 2); /* replicate edges */
        for (int i = 0; i < out->w; i++) {
            int sx = i == 0 ? 0 : ((i - 1) / 2 > w - 1 ? w - 1 : (i - 1) / 2);
            masked_copy(fpx(x, sy, sx), keep, out->c, fpx_mut(out, y, i));
        }
    }
}

void isl_nhwc_copy(const isl_nhwc *src, isl_nhwc *dst)
{
#pragma omp parallel for schedule(static)
    for (int y = 0; y < src->h; y++)
        copy_pixels(fpx(src, y, 0), src->cs, src->c, src->w, fpx_mut(dst, y, 0), dst->cs,
                    dst->c);
}
