/* Shared helpers of the preprocessing functions (lib/preprocess/). */
#ifndef ISL_PREPROCESS_H
#define ISL_PREPROCESS_H

#include "isl.h"

#include <stdint.h>

/* scipy.ndimage 'reflect' (d c b a | a b c d | d c b a): the edge pixel repeated, for
 * any distance outside [0, n). */
static inline int isl_pp_reflect(int i, int n)
{
    const int period = 2 * n;
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - 1 - i;
}

/* ISL_ERROR_SHAPE unless 1 <= height, width <= 2^20. `what` names the image. */
isl_status isl_pp_check_size(const char *what, int height, int width);

/* ISL_ERROR_VALUE naming the first NaN or infinite pixel (row, column) of `what`. */
isl_status isl_pp_check_finite(const char *what, const float *image, int height, int width);

/* Each of `count` images is non-NULL (ISL_ERROR_INVALID_ARGUMENT, "WHAT: image I is
 * NULL") and finite (as isl_pp_check_finite, named "WHAT: image I"). */
isl_status isl_pp_check_images(const char *what, const float *const *images, int count,
                               int height, int width);

/* The k-th smallest of v[0..n) (0-based); reorders v. */
float isl_pp_select(float *v, int n, int k);

/* Gaussian blur of standard deviation sigma > 0 in place, edges reflected, the kernel cut
 * at round(4 sigma) pixels (as scipy.ndimage.gaussian_filter). Separable, in double. */
isl_status isl_pp_gaussian_blur(float *image, int height, int width, double sigma);

#endif
