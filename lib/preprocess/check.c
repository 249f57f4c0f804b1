/* Argument checks shared by the preprocessing functions. */
#include "preprocess.h"

#include "error.h"

#include <math.h>
#include <stdio.h>

isl_status isl_pp_check_size(const char *what, int height, int width)
{
    if (height < 1 || width < 1 || height > (1 << 20) || width > (1 << 20))
        return isl_fail(ISL_ERROR_SHAPE, "%s: size %d x %d is out of range", what, height, width);
    return ISL_OK;
}

isl_status isl_pp_check_finite(const char *what, const float *image, int height, int width)
{
    const int64_t n = (int64_t)height * width;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(image[i]))
            return isl_fail(ISL_ERROR_VALUE, "%s: pixel (%lld, %lld) is not finite", what,
                            (long long)(i / width), (long long)(i % width));
    return ISL_OK;
}

isl_status isl_pp_check_images(const char *what, const float *const *images, int count,
                               int height, int width)
{
    for (int i = 0; i < count; i++) {
        if (!images[i])
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: image %d is NULL", what, i);
        char image_what[96];
        snprintf(image_what, sizeof image_what, "%s: image %d", what, i);
        ISL_CHECK(isl_pp_check_finite(image_what, images[i], height, width));
    }
    return ISL_OK;
}

float isl_pp_select(float *v, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        const float pivot = v[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                float t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break;
    }
    return v[k];
}
