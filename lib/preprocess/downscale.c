/* The paper's bilinear 2x downscaling. Bilinear sampling of the input at the centre of
 * each 2 x 2 block (half-pixel centres) weighs the block's four pixels by 1/4 each. */
#include "preprocess.h"

#include "error.h"

isl_status isl_downscale2(const float *image, int height, int width, float *out)
{
    if (!image || !out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "downscale: image or output is NULL");
    ISL_CHECK(isl_pp_check_size("downscale", height, width));
    if (height < 2 || width < 2)
        return isl_fail(ISL_ERROR_SHAPE, "downscale: a %d x %d image has no 2 x 2 block",
                        height, width);
    ISL_CHECK(isl_pp_check_finite("downscale", image, height, width));
    const int oh = height / 2, ow = width / 2;
#pragma omp parallel for schedule(static)
    for (int y = 0; y < oh; y++) {
        const float *a = image + (size_t)(2 * y) * width, *b = a + width;
        for (int x = 0; x < ow; x++)
            out[(size_t)y * ow + x] = 0.25f * ((a[2 * x] + a[2 * x + 1]) + (b[2 * x] + b[2 * x + 1]));
    }
    return ISL_OK;
}
