/* Otsu's threshold (Otsu 1979) on a 256-bin histogram of [0, 1]. */
#include "eval_check.h"

#define OTSU_BINS 256

isl_status isl_eval_otsu(const float *image, const uint8_t *mask, int64_t count,
                         double *threshold)
{
    if (!threshold)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_otsu: threshold is NULL");
    ISL_CHECK(isl_eval_check_pixels("isl_eval_otsu", image, NULL, mask, count));
    double hist[OTSU_BINS] = {0}, total = 0;
    for (int64_t i = 0; i < count; i++) {
        if (mask && !mask[i])
            continue;
        int b = (int)floor((double)image[i] * OTSU_BINS);
        hist[b < 0 ? 0 : b >= OTSU_BINS ? OTSU_BINS - 1 : b] += 1;
        total += 1;
    }
    if (total == 0)
        return isl_fail(ISL_ERROR_SHAPE, "isl_eval_otsu: the mask selects no pixel");
    double sum_all = 0;
    for (int k = 0; k < OTSU_BINS; k++)
        sum_all += hist[k] * (k + 0.5);
    /* Split t: background = bins < t. Between-class variance w0 w1 (mu0 - mu1)^2; the
     * first maximum wins, so a constant image gives the split just above its value. */
    double w0 = 0, sum0 = 0, best = -1;
    int best_t = 1;
    for (int t = 1; t < OTSU_BINS; t++) {
        w0 += hist[t - 1];
        sum0 += hist[t - 1] * (t - 0.5);
        double w1 = total - w0;
        if (w0 == 0 || w1 == 0)
            continue;
        double d = sum0 / w0 - (sum_all - sum0) / w1;
        double between = w0 * w1 * d * d;
        if (between > best) {
            best = between;
            best_t = t;
        }
    }
    *threshold = (double)best_t / OTSU_BINS;
    return ISL_OK;
}
