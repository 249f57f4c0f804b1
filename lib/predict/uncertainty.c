/* Where a prediction cannot be trusted: pixels whose predicted distribution is wide.
 *
 * On out-of-fold predictions (docs/training.md, "Where a prediction cannot be trusted")
 * the per-pixel error grows with the predicted standard deviation, and almost every large
 * error lies where that deviation is large, hallucinated cells included. So one
 * threshold on the statistic every prediction can already compute marks them. */
#include "error.h"

#include <math.h>

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
