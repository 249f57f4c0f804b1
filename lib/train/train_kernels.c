#include "train_kernels.h"
#include "fast_math.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 2048      /* pixels per task of the elementwise kernels */
#define MAX_SLICES 64   /* tasks per channel block of the reductions */

static inline size_t blocks_of(int c) { return (size_t)(c + 15) / 16; }

/* Parallel regions only for enough work: a region costs a barrier, and the network has
 * thousands of small tensors. */
#define PAR_MIN ((size_t)1 << 15)
static size_t floats_of(const isl_tt *t) { return isl_tt_floats(t->n, t->c, t->h, t->w); }
static size_t floats_all(const isl_tt *t, int n)
{
    size_t f = 0;
    for (int k = 0; k < n; k++)
        f += floats_of(&t[k]);
    return f;
}
static inline size_t plane(const isl_tt *t) { return (size_t)t->h * t->w; }

size_t isl_tt_floats(int n, int c, int h, int w)
{
    return (size_t)n * blocks_of(c) * 16 * (size_t)h * (size_t)w;
}

/* The 16 channels of block b at pixel p of image i. */
static inline float *at(const isl_tt *t, int i, size_t b, size_t p)
{
    return t->v + (((size_t)i * blocks_of(t->c) + b) * plane(t) + p) * 16;
}

/* 16 consecutive channels [g, g + 16) of a pixel span at most two blocks: these copy
 * the first cnt of them out of / into a 16-float vector. */
static inline void load16(const isl_tt *t, int i, size_t p, int g, int cnt, float *v)
{
    int o = g % 16, k1 = cnt < 16 - o ? cnt : 16 - o;
    memcpy(v, at(t, i, (size_t)g / 16, p) + o, sizeof(float) * (size_t)k1);
    if (cnt > k1)
        memcpy(v + k1, at(t, i, (size_t)g / 16 + 1, p), sizeof(float) * (size_t)(cnt - k1));
    for (int l = cnt; l < 16; l++)
        v[l] = 0.0f;
}

static inline void store16(isl_tt *t, int i, size_t p, int g, int cnt, const float *v)
{
    int o = g % 16, k1 = cnt < 16 - o ? cnt : 16 - o;
    memcpy(at(t, i, (size_t)g / 16, p) + o, v, sizeof(float) * (size_t)k1);
    if (cnt > k1)
        memcpy(at(t, i, (size_t)g / 16 + 1, p), v + k1, sizeof(float) * (size_t)(cnt - k1));
}

/* ------------------------------------------------------------------------------------ */
/* Work decomposition                                                                   */
/* ------------------------------------------------------------------------------------ */

/* Elementwise tasks: (segment, image, block, pixel chunk). */
typedef struct ew_task {
    int seg, img;
    size_t block, p0, p1;
} ew_task;

static size_t ew_count(const isl_tt *t)
{
    return (size_t)t->n * blocks_of(t->c) * ((plane(t) + CHUNK - 1) / CHUNK);
}

static ew_task ew_decode(const isl_tt *src, int nsrc, size_t index)
{
    ew_task k = {0, 0, 0, 0, 0};
    while (k.seg < nsrc - 1 && index >= ew_count(&src[k.seg]))
        index -= ew_count(&src[k.seg++]);
    const isl_tt *t = &src[k.seg];
    size_t chunks = (plane(t) + CHUNK - 1) / CHUNK, nb = blocks_of(t->c);
    size_t chunk = index % chunks;
    k.block = (index / chunks) % nb;
    k.img = (int)(index / chunks / nb);
    k.p0 = chunk * CHUNK;
    k.p1 = k.p0 + CHUNK < plane(t) ? k.p0 + CHUNK : plane(t);
    return k;
}

/* Reduction tasks: (segment, block, slice of the image-major pixel range). The slices
 * depend only on the shapes, and partial sums are added in slice order, so the sums do
 * not depend on the thread count. */
static size_t slices_of(const isl_tt *t)
{
    size_t total = (size_t)t->n * plane(t), s = (total + 1023) / 1024;
    return s < 1 ? 1 : (s > MAX_SLICES ? MAX_SLICES : s);
}

static size_t red_count(const isl_tt *t) { return blocks_of(t->c) * slices_of(t); }

typedef struct red_task {
    int seg;
    size_t block, q0, q1; /* range of img * plane + p */
} red_task;

static red_task red_decode(const isl_tt *src, int nsrc, size_t index)
{
    red_task k = {0, 0, 0, 0};
    while (k.seg < nsrc - 1 && index >= red_count(&src[k.seg]))
        index -= red_count(&src[k.seg++]);
    const isl_tt *t = &src[k.seg];
    size_t s = slices_of(t), total = (size_t)t->n * plane(t);
    k.block = index / s;
    k.q0 = total * (index % s) / s;
    k.q1 = total * (index % s + 1) / s;
    return k;
}

static int total_channels(const isl_tt *src, int nsrc, int *offset)
{
    int c = 0;
    for (int k = 0; k < nsrc; k++) {
        offset[k] = c;
        c += src[k].c;
    }
    return c;
}

/* ------------------------------------------------------------------------------------ */
/* Batch normalization + [relu, tanh]                                                   */
/* ------------------------------------------------------------------------------------ */

#define SUB 128 /* pixels per gathered run */

ISL_CLONES
static void stats_run(const float *x, size_t np, double *s1, double *s2)
{
    for (size_t j = 0; j < np; j++) {
#pragma omp simd
        for (int l = 0; l < 16; l++) {
            double v = x[j * 16 + l];
            s1[l] += v;
            s2[l] += v * v;
        }
    }
}

/* Adds up the per-task partial sums of isl_tk_bn_stats and isl_tk_bnact_backward (32
 * doubles per task: 16 lanes of each of two sums, tasks in red_decode order) into per
 * channel totals, channel g = off[k] + c of segment k. */
static void sum_parts(const isl_tt *src, int nsrc, const int *off, const double *part,
                      double *sum1, double *sum2)
{
    size_t it = 0;
    for (int k = 0; k < nsrc; k++) {
        const isl_tt *t = &src[k];
        for (size_t b = 0; b < blocks_of(t->c); b++) {
            double s1[16] = {0}, s2[16] = {0};
            for (size_t s = 0; s < slices_of(t); s++, it++)
                for (int l = 0; l < 16; l++) {
                    s1[l] += part[32 * it + l];
                    s2[l] += part[32 * it + 16 + l];
                }
            for (int l = 0; l < 16 && (int)(16 * b) + l < t->c; l++) {
                sum1[off[k] + (int)(16 * b) + l] = s1[l];
                sum2[off[k] + (int)(16 * b) + l] = s2[l];
            }
        }
    }
}

/* sum1 and sum2 [C] added up over the processes of sync (one call of sync->sum). */
static int sync_sums(const isl_tk_sync *sync, double *sum1, double *sum2, int C)
{
    double *buf = malloc(sizeof(double) * 2 * (size_t)C);
    if (!buf)
        return -1;
    memcpy(buf, sum1, sizeof(double) * (size_t)C);
    memcpy(buf + C, sum2, sizeof(double) * (size_t)C);
    int rc = sync->sum(buf, 2 * (size_t)C, sync->user) != 0 ? -2 : 0;
    memcpy(sum1, buf, sizeof(double) * (size_t)C);
    memcpy(sum2, buf + C, sizeof(double) * (size_t)C);
    free(buf);
    return rc;
}

int isl_tk_bn_stats(const isl_tt *src, int nsrc, double *mean, double *var,
                    const isl_tk_sync *sync)
{
    int off[8] = {0};
    const int C = total_channels(src, nsrc, off);
    size_t items = 0;
    for (int k = 0; k < nsrc; k++)
        items += red_count(&src[k]);
    double *part = malloc(sizeof(double) * 32 * items);
    if (!part)
        return -1;
#pragma omp parallel for schedule(dynamic) if (floats_all(src, nsrc) >= PAR_MIN)
    for (size_t it = 0; it < items; it++) {
        red_task k = red_decode(src, nsrc, it);
        const isl_tt *t = &src[k.seg];
        const size_t hw = plane(t);
        double s1[16] = {0}, s2[16] = {0};
        for (size_t q = k.q0; q < k.q1;) {
            size_t p = q % hw, run = hw - p < k.q1 - q ? hw - p : k.q1 - q;
            stats_run(at(t, (int)(q / hw), k.block, p), run, s1, s2);
            q += run;
        }
        memcpy(part + 32 * it, s1, sizeof(s1));
        memcpy(part + 32 * it + 16, s2, sizeof(s2));
    }
    sum_parts(src, nsrc, off, part, mean, var); /* sums, made moments below */
    free(part);
    if (sync) {
        int rc = sync_sums(sync, mean, var, C);
        if (rc != 0)
            return rc;
    }
    for (int k = 0; k < nsrc; k++) {
        const double count = (double)(sync ? sync->global_n : src[k].n) * plane(&src[k]);
        for (int g = off[k]; g < off[k] + src[k].c; g++) {
            double m = mean[g] / count, v = var[g] / count - m * m;
            mean[g] = m;
            var[g] = v > 0 ? v : 0;
        }
    }
    return 0;
}

/* Per-block copies of per-channel arrays, zero beyond the segment's channels. */
static void lanes(const float *a, int g0, int cnt, float *out)
{
    for (int l = 0; l < 16; l++)
        out[l] = l < cnt ? a[g0 + l] : 0.0f;
}

#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#include <immintrin.h>
#define SPLIT_TARGET __attribute__((target("avx512f")))
/* Lane indices l + d, for permutations that move lanes by -d. */
SPLIT_TARGET static inline __m512i lanes_plus(int d)
{
    return _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(d));
}

/* The split copies of gather and scatter with masked loads and stores, one pixel per
 * iteration (the per-pixel memcpy calls they replace were ~14% of a training step at
 * base 60, whose channel groups are rarely aligned to 16). Never touches a float outside
 * the copied channels. */
SPLIT_TARGET static void gather_split_avx512(const float *a, const float *b, int o, int k1,
                                             int cnt, size_t np, float *out)
{
    const __mmask16 first = (__mmask16)((1u << k1) - 1);
    const __mmask16 rest = (__mmask16)((1u << (cnt - k1)) - 1);
    const __mmask16 upper = (__mmask16)(((1u << cnt) - 1) & ~(unsigned)first);
    const __m512i up = lanes_plus(-k1); /* lane l + k1 takes lane l of the second part */
    for (size_t j = 0; j < np; j++) {
        __m512 v = _mm512_maskz_loadu_ps(first, a + 16 * j + o);
        __m512 w = _mm512_maskz_loadu_ps(rest, b + 16 * j);
        _mm512_storeu_ps(out + 16 * j, _mm512_mask_permutexvar_ps(v, upper, up, w));
    }
}

SPLIT_TARGET static void scatter_split_avx512(float *a, float *b, int o, int k1, int cnt,
                                              size_t np, const float *in)
{
    const __mmask16 first = (__mmask16)((1u << k1) - 1);
    const __mmask16 rest = (__mmask16)((1u << (cnt - k1)) - 1);
    const __m512i down = lanes_plus(k1); /* lane l of the second part is lane l + k1 */
    for (size_t j = 0; j < np; j++) {
        const __m512 v = _mm512_loadu_ps(in + 16 * j);
        _mm512_mask_storeu_ps(a + 16 * j + o, first, v);
        if (rest)
            _mm512_mask_storeu_ps(b + 16 * j, rest, _mm512_permutexvar_ps(down, v));
    }
}

static int have_avx512(void)
{
    return __builtin_cpu_supports("avx512f");
}
#endif

/* Channels [g, g + cnt) of pixels [p0, p0 + np) as np rows of 16 floats: a pointer into t
 * when they are one whole block, else gathered into tmp (zero beyond cnt). */
static const float *gather(const isl_tt *t, int i, size_t p0, size_t np, int g, int cnt,
                           float *tmp)
{
    if (g % 16 == 0 && cnt == 16)
        return at(t, i, (size_t)g / 16, p0);
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    if (have_avx512()) {
        const int o = g % 16, k1 = cnt < 16 - o ? cnt : 16 - o;
        /* The second block exists only when channels spill into it (else no lane of it is
         * read). */
        const float *a = at(t, i, (size_t)g / 16, p0);
        const float *b = cnt > k1 ? at(t, i, (size_t)g / 16 + 1, p0) : a;
        gather_split_avx512(a, b, o, k1, cnt, np, tmp);
        return tmp;
    }
#endif
    for (size_t j = 0; j < np; j++)
        load16(t, i, p0 + j, g, cnt, tmp + 16 * j);
    return tmp;
}

/* The first cnt channels of np rows of 16 floats into channels [g, g + cnt) of pixels
 * [p0, p0 + np) of t. */
static void scatter(isl_tt *t, int i, size_t p0, size_t np, int g, int cnt, const float *in)
{
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
    if (have_avx512()) {
        const int o = g % 16, k1 = cnt < 16 - o ? cnt : 16 - o;
        float *a = at(t, i, (size_t)g / 16, p0);
        float *b = cnt > k1 ? at(t, i, (size_t)g / 16 + 1, p0) : a;
        scatter_split_avx512(a, b, o, k1, cnt, np, in);
        return;
    }
#endif
    for (size_t j = 0; j < np; j++)
        store16(t, i, p0 + j, g, cnt, in + 16 * j);
}

ISL_CLONES
static void bnact_run(const float *x, size_t np, const float *sc, const float *sh,
                      float *r, float *th)
{
    for (size_t j = 0; j < np; j++) {
#pragma omp simd
        for (int l = 0; l < 16; l++) {
            float y = sc[l] * x[16 * j + l] + sh[l];
            r[16 * j + l] = y > 0.0f ? y : 0.0f;
            th[16 * j + l] = isl_tanh_approx(y);
        }
    }
}

void isl_tk_bnact(const isl_tt *src, int nsrc, const float *scale, const float *shift,
                  isl_tt *act)
{
    int off[8] = {0};
    const int C = total_channels(src, nsrc, off);
    size_t items = 0;
    for (int k = 0; k < nsrc; k++)
        items += ew_count(&src[k]);
#pragma omp parallel for schedule(static) if (floats_all(src, nsrc) >= PAR_MIN)
    for (size_t it = 0; it < items; it++) {
        ew_task k = ew_decode(src, nsrc, it);
        const isl_tt *t = &src[k.seg];
        const int c0 = 16 * (int)k.block, g = off[k.seg] + c0;
        const int cnt = t->c - c0 < 16 ? t->c - c0 : 16;
        /* Whole aligned blocks are written in place, others through a buffer. */
        const int direct = cnt == 16 && g % 16 == 0 && C % 16 == 0;
        float sc[16], sh[16], r[16 * SUB], th[16 * SUB];
        lanes(scale, g, cnt, sc);
        lanes(shift, g, cnt, sh);
        for (size_t p0 = k.p0; p0 < k.p1; p0 += SUB) {
            const size_t np = k.p1 - p0 < SUB ? k.p1 - p0 : SUB;
            const float *x = at(t, k.img, k.block, p0);
            if (direct) {
                bnact_run(x, np, sc, sh, at(act, k.img, (size_t)g / 16, p0),
                          at(act, k.img, (size_t)(C + g) / 16, p0));
                continue;
            }
            bnact_run(x, np, sc, sh, r, th);
            scatter(act, k.img, p0, np, g, cnt, r);
            scatter(act, k.img, p0, np, C + g, cnt, th);
        }
    }
    /* The padding channels of the last block of act. */
    const int used = (2 * C) % 16;
    if (used) {
        const size_t last = blocks_of(2 * C) - 1, hw = plane(act);
#pragma omp parallel for schedule(static) if (floats_of(act) >= PAR_MIN)
        for (int i = 0; i < act->n; i++)
            for (size_t p = 0; p < hw; p++)
                memset(at(act, i, last, p) + used, 0, sizeof(float) * (size_t)(16 - used));
    }
}

/* dy of BNAct: relu' and tanh' = 1 - tanh^2 from the forward's outputs. */
ISL_CLONES
static void dy_run(size_t np, const float *dr, const float *dt, const float *r,
                   const float *t, float *dy)
{
    for (size_t j = 0; j < 16 * np; j++)
        dy[j] = (r[j] > 0.0f ? dr[j] : 0.0f) + dt[j] * (1.0f - t[j] * t[j]);
}

ISL_CLONES
static void dsums_run(size_t np, const float *x, const float *dy, const float *mu,
                      const float *is, double *s1, double *s2)
{
    for (size_t j = 0; j < np; j++) {
#pragma omp simd
        for (int l = 0; l < 16; l++) {
            float xhat = (x[16 * j + l] - mu[l]) * is[l];
            s1[l] += dy[16 * j + l];
            s2[l] += (double)dy[16 * j + l] * xhat;
        }
    }
}

ISL_CLONES
static void dx_run(size_t np, const float *x, const float *dy, const float *mu,
                   const float *is, const float *a, const float *mdy, const float *mdyx,
                   float *d, int acc)
{
    for (size_t j = 0; j < np; j++) {
#pragma omp simd
        for (int l = 0; l < 16; l++) {
            float xhat = (x[16 * j + l] - mu[l]) * is[l];
            float v = a[l] * (dy[16 * j + l] - mdy[l] - xhat * mdyx[l]);
            d[16 * j + l] = acc ? d[16 * j + l] + v : v;
        }
    }
}

/* dy at pixels [p0, p0 + np) of the channels [g, g + cnt) into dy (16 np floats). */
static void bnact_dy(const isl_tt *dact, const isl_tt *act, int i, size_t p0, size_t np, int g,
                     int C, int cnt, float *tmp, float *dy)
{
    const float *dr = gather(dact, i, p0, np, g, cnt, tmp);
    const float *dt = gather(dact, i, p0, np, C + g, cnt, tmp + 16 * SUB);
    const float *r = gather(act, i, p0, np, g, cnt, tmp + 32 * SUB);
    const float *t = gather(act, i, p0, np, C + g, cnt, tmp + 48 * SUB);
    dy_run(np, dr, dt, r, t, dy);
}

int isl_tk_bnact_backward(const isl_tt *dact, const isl_tt *act, const isl_tt *src, int nsrc,
                          const float *mean, const float *invstd, const float *gamma,
                          int batch_stats, isl_tt *dx, const int *accumulate, float *dgamma,
                          float *dbeta, const isl_tk_sync *sync)
{
    int off[8] = {0};
    const int C = total_channels(src, nsrc, off);
    size_t items = 0;
    for (int k = 0; k < nsrc; k++)
        items += red_count(&src[k]);
    double *part = malloc(sizeof(double) * 32 * items);
    double *sum_dy = malloc(sizeof(double) * (size_t)C);
    double *sum_dyx = malloc(sizeof(double) * (size_t)C);
    if (!part || !sum_dy || !sum_dyx) {
        free(part);
        free(sum_dy);
        free(sum_dyx);
        return -1;
    }
    /* Pass 1: sum(dy) and sum(dy * xhat) per channel. With constant statistics dx needs
     * no sums, so it is written here too and pass 2 (which would gather dy again) skipped. */
    const int dx_now = dx && !batch_stats;
#pragma omp parallel for schedule(dynamic) if (floats_all(src, nsrc) >= PAR_MIN)
    for (size_t it = 0; it < items; it++) {
        red_task k = red_decode(src, nsrc, it);
        const isl_tt *t = &src[k.seg];
        const size_t hw = plane(t);
        const int c0 = 16 * (int)k.block, g = off[k.seg] + c0;
        const int cnt = t->c - c0 < 16 ? t->c - c0 : 16;
        float mu[16], is[16], a[16], zero[16] = {0}, tmp[64 * SUB], dy[16 * SUB];
        lanes(mean, g, cnt, mu);
        lanes(invstd, g, cnt, is);
        for (int l = 0; l < 16; l++)
            a[l] = l < cnt ? gamma[g + l] * is[l] : 0.0f;
        double s1[16] = {0}, s2[16] = {0};
        for (size_t q = k.q0; q < k.q1;) {
            const int i = (int)(q / hw);
            const size_t p = q % hw, left = hw - p < k.q1 - q ? hw - p : k.q1 - q;
            const size_t np = left < SUB ? left : SUB;
            bnact_dy(dact, act, i, p, np, g, C, cnt, tmp, dy);
            dsums_run(np, at(t, i, k.block, p), dy, mu, is, s1, s2);
            if (dx_now)
                dx_run(np, at(t, i, k.block, p), dy, mu, is, a, zero, zero,
                       at(&dx[k.seg], i, k.block, p), accumulate[k.seg]);
            q += np;
        }
        memcpy(part + 32 * it, s1, sizeof(s1));
        memcpy(part + 32 * it + 16, s2, sizeof(s2));
    }
    sum_parts(src, nsrc, off, part, sum_dy, sum_dyx);
    for (int g = 0; g < C; g++) {
        dbeta[g] = (float)sum_dy[g];
        dgamma[g] = (float)sum_dyx[g];
    }
    int rc = 0;
    if (dx && batch_stats && sync) /* the means of pass 2 are over the global batch */
        rc = sync_sums(sync, sum_dy, sum_dyx, C);
    if (!dx || dx_now || rc != 0) { /* gamma and beta only, or dx done in pass 1 */
        free(part);
        free(sum_dy);
        free(sum_dyx);
        return rc;
    }
    /* Pass 2: dx = gamma invstd (dy - mean(dy) - xhat mean(dy xhat)), or with constant
     * statistics gamma invstd dy. */
    items = 0;
    for (int k = 0; k < nsrc; k++)
        items += ew_count(&src[k]);
#pragma omp parallel for schedule(static) if (floats_all(src, nsrc) >= PAR_MIN)
    for (size_t it2 = 0; it2 < items; it2++) {
        ew_task k = ew_decode(src, nsrc, it2);
        const isl_tt *t = &src[k.seg];
        const double count = (double)(sync ? sync->global_n : t->n) * plane(t);
        const int c0 = 16 * (int)k.block, g = off[k.seg] + c0;
        const int cnt = t->c - c0 < 16 ? t->c - c0 : 16;
        float mu[16], is[16], a[16], mdy[16], mdyx[16], tmp[64 * SUB], dy[16 * SUB];
        lanes(mean, g, cnt, mu);
        lanes(invstd, g, cnt, is);
        for (int l = 0; l < 16; l++) {
            a[l] = l < cnt ? gamma[g + l] * is[l] : 0.0f;
            mdy[l] = l < cnt && batch_stats ? (float)(sum_dy[g + l] / count) : 0.0f;
            mdyx[l] = l < cnt && batch_stats ? (float)(sum_dyx[g + l] / count) : 0.0f;
        }
        for (size_t p0 = k.p0; p0 < k.p1; p0 += SUB) {
            const size_t np = k.p1 - p0 < SUB ? k.p1 - p0 : SUB;
            bnact_dy(dact, act, k.img, p0, np, g, C, cnt, tmp, dy);
            dx_run(np, at(t, k.img, k.block, p0), dy, mu, is, a, mdy, mdyx,
                   at(&dx[k.seg], k.img, k.block, p0), accumulate[k.seg]);
        }
    }
    free(part);
    free(sum_dy);
    free(sum_dyx);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Residual paths                                                                       */
/* ------------------------------------------------------------------------------------ */

/* Lane mask of block b for a tensor of c channels: 1 for real channels. */
static inline void lane_mask(int c, size_t b, float *m)
{
    for (int l = 0; l < 16; l++)
        m[l] = (int)(16 * b) + l < c ? 1.0f : 0.0f;
}

void isl_tk_residual_in(const isl_tt *x, isl_tt *out)
{
    const size_t nb = blocks_of(out->c), xb = blocks_of(x->c);
#pragma omp parallel for collapse(3) schedule(static) if (floats_of(out) >= PAR_MIN)
    for (int i = 0; i < out->n; i++)
        for (size_t b = 0; b < nb; b++)
            for (int y = 0; y < out->h; y++) {
                float *o = at(out, i, b, (size_t)y * out->w);
                if (b >= xb)
                    memset(o, 0, sizeof(float) * 16 * (size_t)out->w);
                else
                    memcpy(o, at(x, i, b, (size_t)(y + 1) * x->w + 1),
                           sizeof(float) * 16 * (size_t)out->w);
            }
}

void isl_tk_residual_in_backward(const isl_tt *dout, isl_tt *dx)
{
    const size_t xb = blocks_of(dx->c);
#pragma omp parallel for collapse(3) schedule(static) if (floats_of(dout) >= PAR_MIN)
    for (int i = 0; i < dout->n; i++)
        for (size_t b = 0; b < xb; b++)
            for (int y = 0; y < dout->h; y++) {
                float m[16];
                lane_mask(dx->c, b, m);
                const float *o = at(dout, i, b, (size_t)y * dout->w);
                float *d = at(dx, i, b, (size_t)(y + 1) * dx->w + 1);
                for (int x = 0; x < dout->w; x++)
#pragma omp simd
                    for (int l = 0; l < 16; l++)
                        d[16 * x + l] += m[l] * o[16 * x + l];
            }
}

void isl_tk_residual_down(const isl_tt *x, isl_tt *out)
{
    const size_t nb = blocks_of(out->c), xb = blocks_of(x->c);
    const int W = x->w;
#pragma omp parallel for collapse(3) schedule(static) if (floats_of(x) >= PAR_MIN)
    for (int i = 0; i < out->n; i++)
        for (size_t b = 0; b < nb; b++)
            for (int y = 0; y < out->h; y++) {
                float *o = at(out, i, b, (size_t)y * out->w);
                if (b >= xb) {
                    memset(o, 0, sizeof(float) * 16 * (size_t)out->w);
                    continue;
                }
                const float *r0 = at(x, i, b, (size_t)(2 * y + 1) * W + 1);
                const float *r1 = r0 + 16 * (size_t)W;
                for (int j = 0; j < out->w; j++)
#pragma omp simd
                    for (int l = 0; l < 16; l++)
                        o[16 * j + l] = 0.25f * (((r0[32 * j + l] + r0[32 * j + 16 + l]) +
                                                  r1[32 * j + l]) + r1[32 * j + 16 + l]);
            }
}

void isl_tk_residual_down_backward(const isl_tt *dout, isl_tt *dx)
{
    const size_t xb = blocks_of(dx->c);
    const int W = dx->w;
#pragma omp parallel for collapse(3) schedule(static) if (floats_of(dx) >= PAR_MIN)
    for (int i = 0; i < dout->n; i++)
        for (size_t b = 0; b < xb; b++)
            for (int y = 0; y < dout->h; y++) {
                float m[16];
                lane_mask(dx->c, b, m);
                const float *o = at(dout, i, b, (size_t)y * dout->w);
                float *r0 = at(dx, i, b, (size_t)(2 * y + 1) * W + 1);
                float *r1 = r0 + 16 * (size_t)W;
                for (int j = 0; j < dout->w; j++)
#pragma omp simd
                    for (int l = 0; l < 16; l++) {
                        float v = 0.25f * m[l] * o[16 * j + l];
                        r0[32 * j + l] += v;
                        r0[32 * j + 16 + l] += v;
                        r1[32 * j + l] += v;
                        r1[32 * j + 16 + l] += v;
                    }
            }
}

/* Source row (column) of output row y of the up residual: (y - 1) div 2, clamped. */
static inline int up_src(int y, int n)
{
    int s = y == 0 ? 0 : (y - 1) / 2;
    return s > n - 1 ? n - 1 : s;
}

void isl_tk_residual_up(const isl_tt *x, isl_tt *out)
{
    const size_t nb = blocks_of(out->c);
#pragma omp parallel for collapse(3) schedule(static) if (floats_of(out) >= PAR_MIN)
    for (int i = 0; i < out->n; i++)
        for (size_t b = 0; b < nb; b++)
            for (int y = 0; y < out->h; y++) {
                float m[16];
                lane_mask(out->c, b, m); /* x's channels beyond out's are dropped */
                const float *s = at(x, i, b, (size_t)up_src(y, x->h) * x->w);
                float *o = at(out, i, b, (size_t)y * out->w);
                for (int j = 0; j < out->w; j++) {
                    const float *sp = s + 16 * (size_t)up_src(j, x->w);
#pragma omp simd
                    for (int l = 0; l < 16; l++)
                        o[16 * j + l] = m[l] * sp[l];
                }
            }
}

void isl_tk_residual_up_backward(const isl_tt *dout, isl_tt *dx)
{
    const size_t nb = blocks_of(dout->c);
    /* Scatter-add: one task per image plane of a block, so no two tasks meet. */
#pragma omp parallel for collapse(2) schedule(static) if (floats_of(dout) >= PAR_MIN)
    for (int i = 0; i < dout->n; i++)
        for (size_t b = 0; b < nb; b++)
            for (int y = 0; y < dout->h; y++) {
                const float *o = at(dout, i, b, (size_t)y * dout->w);
                float *d = at(dx, i, b, (size_t)up_src(y, dx->h) * dx->w);
                for (int j = 0; j < dout->w; j++) {
                    float *dp = d + 16 * (size_t)up_src(j, dx->w);
#pragma omp simd
                    for (int l = 0; l < 16; l++)
                        dp[l] += o[16 * j + l]; /* dout's padding lanes are zero */
                }
            }
}

/* ------------------------------------------------------------------------------------ */
/* Crops and copies                                                                     */
/* ------------------------------------------------------------------------------------ */

void isl_tk_crop(const isl_tt *src, int border, isl_tt *dst)
{
    const size_t nb = blocks_of(dst->c);
#pragma omp parallel for collapse(3) schedule(static) if (floats_of(dst) >= PAR_MIN)
    for (int i = 0; i < dst->n; i++)
        for (size_t b = 0; b < nb; b++)
            for (int y = 0; y < dst->h; y++)
                memcpy(at(dst, i, b, (size_t)y * dst->w),
                       at(src, i, b, (size_t)(y + border) * src->w + border),
                       sizeof(float) * 16 * (size_t)dst->w);
}

void isl_tk_crop_backward(const isl_tt *ddst, int border, isl_tt *dsrc, int accumulate)
{
    const size_t nb = blocks_of(dsrc->c);
#pragma omp parallel for collapse(3) schedule(static) if (floats_of(dsrc) >= PAR_MIN)
    for (int i = 0; i < dsrc->n; i++)
        for (size_t b = 0; b < nb; b++)
            for (int y = 0; y < dsrc->h; y++) {
                float *d = at(dsrc, i, b, (size_t)y * dsrc->w);
                int iy = y - border;
                if (iy < 0 || iy >= ddst->h) {
                    if (!accumulate)
                        memset(d, 0, sizeof(float) * 16 * (size_t)dsrc->w);
                    continue;
                }
                const float *s = at(ddst, i, b, (size_t)iy * ddst->w);
                if (!accumulate) {
                    memset(d, 0, sizeof(float) * 16 * (size_t)border);
                    memcpy(d + 16 * (size_t)border, s, sizeof(float) * 16 * (size_t)ddst->w);
                    memset(d + 16 * (size_t)(border + ddst->w), 0,
                           sizeof(float) * 16 * (size_t)(dsrc->w - border - ddst->w));
                } else {
                    float *di = d + 16 * (size_t)border;
                    for (size_t k = 0; k < 16 * (size_t)ddst->w; k++)
                        di[k] += s[k];
                }
            }
}

void isl_tk_copy_channels(const isl_tt *src, int s0, isl_tt *dst, int d0, int count)
{
    const size_t hw = plane(src);
#pragma omp parallel for collapse(2) schedule(static) if (floats_of(src) >= PAR_MIN)
    for (int i = 0; i < src->n; i++)
        for (size_t p = 0; p < hw; p++)
            for (int c = 0; c < count; c++)
                at(dst, i, (size_t)(d0 + c) / 16, p)[(d0 + c) % 16] =
                    at(src, i, (size_t)(s0 + c) / 16, p)[(s0 + c) % 16];
}

void isl_tk_scale(isl_tt *t, float f)
{
    const size_t count = floats_of(t);
    float *v = t->v;
#pragma omp parallel for simd schedule(static) if (count >= PAR_MIN)
    for (size_t i = 0; i < count; i++)
        v[i] *= f;
}

void isl_tk_zero(isl_tt *t)
{
    memset(t->v, 0, sizeof(float) * isl_tt_floats(t->n, t->c, t->h, t->w));
}
