/* The paper's flat-field correction (and transmitted-light dust correction): the per-pixel
 * median over many images of one microscope, blurred (flat field) or not (dust field),
 * divides each new image. */
#include "preprocess.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>

double isl_flat_field_sigma(isl_light light, int height)
{
    return height / (light == ISL_LIGHT_FLUORESCENCE ? 16.0 : 32.0);
}

/* numpy.median: the middle value, or the mean of the two middle values. */
static float median_of(float *v, int n)
{
    const float hi = isl_pp_select(v, n, n / 2);
    if (n % 2)
        return hi;
    float lo = v[0];
    for (int i = 1; i < n / 2; i++) /* after selection, v[0 .. n/2) are the smaller half */
        lo = v[i] > lo ? v[i] : lo;
    return (float)(0.5 * ((double)lo + hi));
}

isl_status isl_flat_field_estimate(const float *const *images, int count, int height,
                                   int width, double sigma, float *field)
{
    if (!images || !field || count < 1)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "flat field: no images (count %d) or output is NULL", count);
    if (!(sigma >= 0.0 && sigma <= 1e5))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "flat field: sigma %g is not in [0, 1e5]",
                        sigma);
    ISL_CHECK(isl_pp_check_size("flat field", height, width));
    ISL_CHECK(isl_pp_check_images("flat field", images, count, height, width));
    const size_t n = (size_t)height * width;
    int failed = 0;
#pragma omp parallel
    {
        float *v = malloc(sizeof(float) * (size_t)count);
        if (!v) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (size_t p = 0; p < n; p++) {
            if (!v)
                continue;
            for (int i = 0; i < count; i++)
                v[i] = images[i][p];
            field[p] = median_of(v, count);
        }
        free(v);
    }
    if (failed)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "flat field: out of memory");
    if (sigma > 0.0)
        ISL_CHECK(isl_pp_gaussian_blur(field, height, width, sigma));
    double sum = 0.0;
    for (size_t p = 0; p < n; p++)
        sum += field[p];
    const double mean = sum / (double)n;
    if (!(mean > 0.0))
        return isl_fail(ISL_ERROR_VALUE,
                        "flat field: the median image has mean %g; images must be positive", mean);
    for (size_t p = 0; p < n; p++)
        field[p] = (float)(field[p] / mean);
    return ISL_OK;
}

isl_status isl_flat_field_apply(float *image, const float *field, int height, int width)
{
    if (!image || !field)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "flat field: image or field is NULL");
    ISL_CHECK(isl_pp_check_size("flat field", height, width));
    ISL_CHECK(isl_pp_check_finite("flat field: image", image, height, width));
    const size_t n = (size_t)height * width;
    for (size_t p = 0; p < n; p++)
        if (!(field[p] > 0.0f) || !isfinite(field[p]))
            return isl_fail(ISL_ERROR_VALUE,
                            "flat field: pixel (%zu, %zu) is %g; a field must be positive", p / width,
                            p % width, field[p]);
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t p = 0; p < n; p++)
        image[p] /= field[p];
    return ISL_OK;
}
