#include "stats.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const stat_names[ISL_STAT_COUNT] = {"median", "mean",    "mode",
                                                       "std",    "entropy", "p_nonzero"};

const char *isl_stat_name(isl_stat stat)
{
    return (unsigned)stat < ISL_STAT_COUNT ? stat_names[stat] : NULL;
}

int isl_stat_from_name(const char *name)
{
    for (int s = 0; name && s < ISL_STAT_COUNT; s++)
        if (!strcmp(name, stat_names[s]))
            return s;
    return -1;
}

/* Pixels per block: the inner loops run over contiguous pixels and vectorize. */
#define BLOCK 64

static void stats_block(const float *probs, int classes, int64_t stride, int n,
                        float *const outs[ISL_STAT_COUNT], int64_t at)
{
    const float scale = 1.0f / (float)(classes - 1), top = (float)(classes - 1);
    float mean[BLOCK] = {0}, cum[BLOCK] = {0}, best[BLOCK], var[BLOCK] = {0}, ent[BLOCK] = {0};
    int median[BLOCK], mode[BLOCK] = {0};
    for (int i = 0; i < n; i++) {
        median[i] = classes - 1;
        best[i] = -1.0f;
    }
    for (int k = 0; k < classes; k++) {
        const float *p = probs + (int64_t)k * stride;
        const float v = k * scale;
        for (int i = 0; i < n; i++) {
            float before = cum[i];
            cum[i] += p[i];
            /* Smallest k whose cumulative probability reaches 0.5. */
            if (before < 0.5f && cum[i] >= 0.5f)
                median[i] = k;
            mean[i] += p[i] * v;
            if (p[i] > best[i]) {
                best[i] = p[i];
                mode[i] = k;
            }
        }
    }
    if (outs[ISL_STAT_STD] || outs[ISL_STAT_ENTROPY]) {
        for (int k = 0; k < classes; k++) {
            const float *p = probs + (int64_t)k * stride;
            const float v = k * scale;
            for (int i = 0; i < n; i++) {
                float d = v - mean[i];
                var[i] += p[i] * d * d;
                if (outs[ISL_STAT_ENTROPY] && p[i] > 0.0f)
                    ent[i] -= p[i] * logf(p[i]);
            }
        }
    }
    const float inv_log_classes = 1.0f / logf((float)classes);
    for (int i = 0; i < n; i++) {
        /* k / 255 exactly as written (the images' bins compare bit for bit). */
        if (outs[ISL_STAT_MEDIAN])
            outs[ISL_STAT_MEDIAN][at + i] = median[i] / top;
        if (outs[ISL_STAT_MEAN])
            outs[ISL_STAT_MEAN][at + i] = mean[i];
        if (outs[ISL_STAT_MODE])
            outs[ISL_STAT_MODE][at + i] = mode[i] / top;
        if (outs[ISL_STAT_STD])
            outs[ISL_STAT_STD][at + i] = sqrtf(var[i]);
        if (outs[ISL_STAT_ENTROPY])
            outs[ISL_STAT_ENTROPY][at + i] = ent[i] * inv_log_classes;
        if (outs[ISL_STAT_P_NONZERO])
            outs[ISL_STAT_P_NONZERO][at + i] = 1.0f - probs[i];
    }
}

void isl_stats_from_probabilities(const float *probs, int classes, int64_t count, int64_t stride,
                                  float *const outs[ISL_STAT_COUNT])
{
    const int64_t blocks = (count + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t at = b * BLOCK;
        int n = (int)(count - at < BLOCK ? count - at : BLOCK);
        stats_block(probs + at, classes, stride, n, outs, at);
    }
}

isl_status isl_stats(const float *logits, int classes, int64_t count, int64_t stride,
                     isl_stat stat, float *out)
{
    if (!logits || !out || classes < 2 || count < 0 || (count > 1 && stride < 1) ||
        (unsigned)stat >= ISL_STAT_COUNT)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_stats: invalid arguments");
    float *probs = malloc(sizeof(float) * (size_t)classes * BLOCK);
    if (!probs)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int64_t at = 0; at < count; at += BLOCK) {
        int n = (int)(count - at < BLOCK ? count - at : BLOCK);
        for (int i = 0; i < n; i++) {
            const float *l = logits + at + i;
            float mx = -INFINITY, sum = 0.0f;
            int finite = 1;
            for (int k = 0; k < classes; k++) {
                finite &= isfinite(l[k * stride]) != 0;
                mx = fmaxf(mx, l[k * stride]);
            }
            if (!finite) {
                free(probs);
                return isl_fail(ISL_ERROR_VALUE, "isl_stats: distribution %lld has non-finite logits",
                                (long long)(at + i));
            }
            for (int k = 0; k < classes; k++)
                sum += probs[k * BLOCK + i] = expf(l[k * stride] - mx);
            for (int k = 0; k < classes; k++)
                probs[k * BLOCK + i] /= sum;
        }
        float *shifted[ISL_STAT_COUNT] = {0};
        shifted[stat] = out + at;
        stats_block(probs, classes, BLOCK, n, shifted, 0);
    }
    free(probs);
    return ISL_OK;
}
