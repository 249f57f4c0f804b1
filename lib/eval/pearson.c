/* Pearson r on a seeded random sample of pixels (STAR Methods: one million pixels). */
#include "eval_check.h"

#include "rng.h"

#include <stdlib.h>

/* Uniform in [0, n) without modulo bias. */
static uint64_t below(uint64_t *state, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v;
    do
        v = isl_splitmix64(state);
    while (v >= limit);
    return v % n;
}

isl_status isl_eval_pearson(const float *predicted, const float *truth, const uint8_t *mask,
                            int64_t count, int64_t max_pixels, uint64_t seed, double *r,
                            int64_t *pixels_used)
{
    if (!r || !truth)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_pearson: %s is NULL",
                        r ? "truth" : "r");
    ISL_CHECK(isl_eval_check_pixels("isl_eval_pearson", predicted, truth, mask, count));
    int64_t n = 0;
    for (int64_t i = 0; i < count; i++)
        n += !mask || mask[i];
    if (n < 2)
        return isl_fail(ISL_ERROR_SHAPE, "isl_eval_pearson: %lld pixel(s) selected, need 2",
                        (long long)n);
    int64_t *idx = malloc((size_t)n * sizeof *idx);
    if (!idx)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "isl_eval_pearson: out of memory");
    for (int64_t i = 0, k = 0; i < count; i++)
        if (!mask || mask[i])
            idx[k++] = i;
    int64_t m = max_pixels > 0 && max_pixels < n ? max_pixels : n;
    /* Partial Fisher-Yates: idx[0..m) is a uniform sample without replacement. */
    uint64_t state = seed;
    for (int64_t k = 0; k < m && m < n; k++) {
        int64_t j = k + (int64_t)below(&state, (uint64_t)(n - k));
        int64_t t = idx[k];
        idx[k] = idx[j];
        idx[j] = t;
    }
    /* Two passes (means, then centred sums) keep r accurate for values near a constant. */
    double mp = 0, mt = 0;
    for (int64_t k = 0; k < m; k++) {
        mp += predicted[idx[k]];
        mt += truth[idx[k]];
    }
    mp /= (double)m;
    mt /= (double)m;
    double spp = 0, stt = 0, spt = 0;
    for (int64_t k = 0; k < m; k++) {
        double dp = predicted[idx[k]] - mp, dt = truth[idx[k]] - mt;
        spp += dp * dp;
        stt += dt * dt;
        spt += dp * dt;
    }
    free(idx);
    *r = spp > 0 && stt > 0 ? spt / sqrt(spp * stt) : NAN;
    if (*r > 1)
        *r = 1;
    if (*r < -1)
        *r = -1;
    if (pixels_used)
        *pixels_used = m;
    return ISL_OK;
}

static int bin_of(float v, int bins)
{
    int b = (int)floor((double)v * bins);
    return b < 0 ? 0 : b >= bins ? bins - 1 : b;
}

isl_status isl_eval_heatmap(const float *predicted, const float *truth, const uint8_t *mask,
                            int64_t count, int bins, double *per_thousand)
{
    if (!truth || !per_thousand)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_heatmap: %s is NULL",
                        truth ? "per_thousand" : "truth");
    if (bins < 2 || bins > 256)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_heatmap: bins %d not in [2, 256]",
                        bins);
    ISL_CHECK(isl_eval_check_pixels("isl_eval_heatmap", predicted, truth, mask, count));
    int64_t *counts = calloc((size_t)bins * bins, sizeof *counts), total = 0;
    if (!counts)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "isl_eval_heatmap: out of memory");
    for (int64_t i = 0; i < count; i++) {
        if (mask && !mask[i])
            continue;
        counts[bin_of(truth[i], bins) * bins + bin_of(predicted[i], bins)]++;
        total++;
    }
    for (int i = 0; i < bins * bins; i++)
        per_thousand[i] = total ? 1000.0 * (double)counts[i] / (double)total : 0.0;
    free(counts);
    if (!total)
        return isl_fail(ISL_ERROR_SHAPE, "isl_eval_heatmap: the mask selects no pixel");
    return ISL_OK;
}
