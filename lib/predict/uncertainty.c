/* Where a prediction cannot be trusted: pixels whose predicted distribution is wide.
 *
 * On out-of-fold predictions (docs/training.md, "Where a prediction cannot be trusted")
 * the per-pixel error grows with the predicted standard deviation, and almost every large
 * error lies where that deviation is large, hallucinated cells included. So one
 * threshold on the statistic every prediction can already compute marks them. */
#include "error.h"

#include <math.h>
#include <stdio.h>

isl_status isl_uncertain_mask(const float *std, size_t count, float threshold,
                              unsigned char *mask, size_t *uncertain)
{
    if (!std || !uncertain)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_uncertain_mask: std or uncertain is NULL");
    if (!(threshold > 0.0f) || !isfinite(threshold))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_uncertain_mask: threshold %g is not a positive number",
                        (double)threshold);
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        /* Written as !(a <= t) so that NaN, a broken prediction, counts as uncertain. */
        const int wide = !(std[i] <= threshold);
        n += (size_t)wide;
        if (mask)
            mask[i] = (unsigned char)wide;
    }
    *uncertain = n;
    return ISL_OK;
}

/* The one wording of the summary: the CLI prints it and the bindings return it. */
isl_status isl_uncertainty_summary(int count, const char *const *names, const size_t *uncertain,
                                   size_t pixels, float threshold, char *buf, size_t size)
{
    if (count < 1 || !names || !uncertain || !buf)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_uncertainty_summary: no heads, or names, uncertain or buf is NULL");
    if (pixels == 0 || !(threshold > 0.0f) || !isfinite(threshold))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_uncertainty_summary: no pixels, or threshold %g is not a positive "
                        "number",
                        (double)threshold);
    for (int h = 0; h < count; h++)
        if (!names[h] || uncertain[h] > pixels)
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                            "isl_uncertainty_summary: head %d has no name or more uncertain "
                            "pixels than pixels",
                            h);
    size_t used = 0;
    int n = snprintf(buf, size, "uncertain (predicted std > %.2f): ", (double)threshold);
    for (int h = 0; n >= 0 && h < count; h++) {
        used += (size_t)n;
        n = snprintf(used < size ? buf + used : NULL, used < size ? size - used : 0,
                     "%s%s %.1f%%", h ? ", " : "", names[h],
                     100.0 * (double)uncertain[h] / (double)pixels);
    }
    if (n >= 0) {
        used += (size_t)n;
        n = snprintf(used < size ? buf + used : NULL, used < size ? size - used : 0,
                     " of the field");
    }
    if (n < 0 || used + (size_t)n >= size) {
        if (size)
            buf[0] = '\0';
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_uncertainty_summary: the line needs %zu bytes, buf has %zu",
                        n < 0 ? 0 : used + (size_t)n + 1, size);
    }
    return ISL_OK;
}
