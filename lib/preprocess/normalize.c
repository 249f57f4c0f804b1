/* The paper's global intensity normalization: an affine map to a fixed mean and standard
 * deviation, then clipping to [0, 1]. */
#include "preprocess.h"

#include "error.h"

#include <math.h>

isl_status isl_normalize(float *image, int64_t count, double mean, double sd)
{
    if (!image || count < 2)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "normalize: image is NULL or has fewer than 2 pixels");
    if (!(mean >= 0.0 && mean <= 1.0) || !(sd > 0.0 && sd <= 1.0))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "normalize: mean %g must be in [0, 1] and sd %g in (0, 1]", mean, sd);
    double sum = 0.0;
    for (int64_t i = 0; i < count; i++) {
        if (!isfinite(image[i]))
            return isl_fail(ISL_ERROR_VALUE, "normalize: pixel %lld is not finite",
                            (long long)i);
        sum += image[i];
    }
    /* Two passes: the variance without the cancellation of sum-of-squares. */
    const double m = sum / (double)count;
    double ss = 0.0;
    for (int64_t i = 0; i < count; i++) {
        const double d = image[i] - m;
        ss += d * d;
    }
    const double s = sqrt(ss / (double)count);
    if (!(s > 1e-12 * (fabs(m) + 1.0)))
        return isl_fail(ISL_ERROR_VALUE, "normalize: the image is constant (%g)", m);
    const double scale = sd / s, shift = mean - m * scale;
#pragma omp parallel for simd schedule(static) if (count > 65536)
    for (int64_t i = 0; i < count; i++) {
        const double v = image[i] * scale + shift;
        image[i] = (float)(v < 0.0 ? 0.0 : v > 1.0 ? 1.0 : v);
    }
    return ISL_OK;
}

isl_status isl_normalize_light(float *image, int64_t count, isl_light light)
{
    if (light != ISL_LIGHT_TRANSMITTED && light != ISL_LIGHT_FLUORESCENCE)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "normalize: unknown light %d", (int)light);
    return isl_normalize(image, count, light == ISL_LIGHT_TRANSMITTED ? 0.5 : 0.25, 0.125);
}
