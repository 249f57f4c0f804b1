/* The paper's fluorescence dust and salt-and-pepper filter: the 5 x 5 median applied until
 * the image stops changing. After the first pass few pixels change, so a pass recomputes
 * only pixels whose 5 x 5 window holds a pixel the previous pass changed. */
#include "preprocess.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

#define R 2 /* 5 x 5: two pixels on each side */

static float median_at(const float *src, int height, int width, int y, int x)
{
    float v[25];
    int n = 0;
    for (int dy = -R; dy <= R; dy++) {
        const float *row = src + (size_t)isl_pp_reflect(y + dy, height) * width;
        for (int dx = -R; dx <= R; dx++)
            v[n++] = row[isl_pp_reflect(x + dx, width)];
    }
    return isl_pp_select(v, 25, 12);
}

/* near[y][x] = 1 if changed holds a 1 within the 5 x 5 window (reflected) of (y, x). */
static void dilate(const uint8_t *changed, uint8_t *across, uint8_t *near, int height, int width)
{
#pragma omp parallel for schedule(static)
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++) {
            uint8_t any = 0;
            for (int dx = -R; dx <= R; dx++)
                any |= changed[(size_t)y * width + isl_pp_reflect(x + dx, width)];
            across[(size_t)y * width + x] = any;
        }
#pragma omp parallel for schedule(static)
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++) {
            uint8_t any = 0;
            for (int dy = -R; dy <= R; dy++)
                any |= across[(size_t)isl_pp_reflect(y + dy, height) * width + x];
            near[(size_t)y * width + x] = any;
        }
}

isl_status isl_median5_until_stable(float *image, int height, int width, int max_passes,
                                    int *passes)
{
    if (passes)
        *passes = 0;
    if (!image)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "median filter: image is NULL");
    if (max_passes < 1 || max_passes > 1000)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "median filter: max_passes %d is not in [1, 1000]", max_passes);
    ISL_CHECK(isl_pp_check_size("median filter", height, width));
    ISL_CHECK(isl_pp_check_finite("median filter", image, height, width));

    const size_t n = (size_t)height * width;
    float *other = malloc(sizeof(float) * n);
    uint8_t *changed = malloc(n), *across = malloc(n), *near = malloc(n);
    if (!other || !changed || !across || !near) {
        free(other), free(changed), free(across), free(near);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "median filter: out of memory for %d x %d",
                        height, width);
    }
    memset(near, 1, n); /* the first pass visits every pixel */
    float *src = image, *dst = other;
    int done = 0;
    for (int pass = 0; pass < max_passes; pass++) {
        long long count = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(+ : count)
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++) {
                const size_t i = (size_t)y * width + x;
                float v = near[i] ? median_at(src, height, width, y, x) : src[i];
                dst[i] = v;
                changed[i] = v != src[i];
                count += changed[i];
            }
        float *t = src;
        src = dst;
        dst = t;
        if (count == 0)
            break;
        done++;
        dilate(changed, across, near, height, width);
    }
    if (src != image)
        memcpy(image, src, sizeof(float) * n);
    free(other), free(changed), free(across), free(near);
    if (passes)
        *passes = done;
    return ISL_OK;
}
