/* The paper's fluorescence dust and salt-and-pepper filter: the 5 x 5 median applied until
 * the image stops changing. After the first pass few pixels change, so a pass recomputes
 * only pixels whose 5 x 5 window holds a pixel the previous pass changed. */
#include "preprocess.h"

#include "error.h"
#include "fast_math.h"

#include <stdlib.h>
#include <string.h>

#define R 2 /* 5 x 5: two pixels on each side */
#define CHUNK 256 /* pixels of a row sorted at once: 25 x 1 KiB of floats, in L1 */

/* The median of 25 values by a comparator network (scripts/gen-median-network.py: Batcher's
 * merge sort pruned to its middle output; 113 comparators, checked on all 2^25 zero-one
 * inputs). Each comparator {i, j, keep} puts min on i and max on j; keep 1: only the min
 * matters, 2: only the max. Run on whole chunks of a row, it has no branches and
 * vectorizes, where a selection per pixel branches unpredictably. */
static const unsigned char median25[][3] = {
    {0, 1, 0}, {2, 3, 0}, {0, 2, 0}, {1, 3, 0}, {1, 2, 0}, {4, 5, 0}, {6, 7, 0}, {4, 6, 0},
    {5, 7, 0}, {5, 6, 0}, {0, 4, 0}, {2, 6, 0}, {2, 4, 0}, {1, 5, 0}, {3, 7, 0}, {3, 5, 0},
    {1, 2, 0}, {3, 4, 0}, {5, 6, 0}, {8, 9, 0}, {10, 11, 0}, {8, 10, 0}, {9, 11, 0}, {9, 10, 0},
    {12, 13, 0}, {14, 15, 0}, {12, 14, 0}, {13, 15, 0}, {13, 14, 0}, {8, 12, 0}, {10, 14, 0},
    {10, 12, 0}, {9, 13, 0}, {11, 15, 0}, {11, 13, 0}, {9, 10, 0}, {11, 12, 0}, {13, 14, 0},
    {0, 8, 0}, {4, 12, 0}, {4, 8, 0}, {2, 10, 0}, {6, 14, 0}, {6, 10, 0}, {2, 4, 0}, {6, 8, 0},
    {10, 12, 0}, {1, 9, 0}, {5, 13, 0}, {5, 9, 0}, {3, 11, 0}, {7, 15, 1}, {7, 11, 0},
    {3, 5, 0}, {7, 9, 0}, {11, 13, 0}, {1, 2, 0}, {3, 4, 0}, {5, 6, 0}, {7, 8, 0}, {9, 10, 0},
    {11, 12, 0}, {13, 14, 1}, {16, 17, 0}, {18, 19, 0}, {16, 18, 0}, {17, 19, 0}, {17, 18, 0},
    {20, 21, 0}, {22, 23, 0}, {20, 22, 0}, {21, 23, 0}, {21, 22, 0}, {16, 20, 0}, {18, 22, 0},
    {18, 20, 0}, {17, 21, 0}, {19, 23, 0}, {19, 21, 0}, {17, 18, 0}, {19, 20, 0}, {21, 22, 0},
    {16, 24, 0}, {20, 24, 0}, {18, 20, 0}, {22, 24, 0}, {19, 21, 0}, {17, 18, 0}, {19, 20, 0},
    {21, 22, 0}, {23, 24, 0}, {0, 16, 2}, {8, 24, 1}, {8, 16, 2}, {4, 20, 2}, {12, 20, 1},
    {12, 16, 1}, {2, 18, 2}, {10, 18, 1}, {6, 22, 1}, {6, 10, 2}, {10, 12, 2}, {1, 17, 2},
    {9, 17, 2}, {5, 21, 2}, {13, 21, 1}, {13, 17, 1}, {3, 19, 2}, {11, 19, 1}, {7, 23, 1},
    {7, 11, 2}, {11, 13, 1}, {11, 12, 2},
};

/* lane[k][0..len) = median25 inputs of the pixels (y, x0 .. x0 + len - 1); out = medians. */
ISL_CLONES
static void median_chunk(float (*lane)[CHUNK], int len, float *out)
{
    for (size_t c = 0; c < sizeof median25 / sizeof median25[0]; c++) {
        float *restrict a = lane[median25[c][0]], *restrict b = lane[median25[c][1]];
        switch (median25[c][2]) {
        case 0:
            for (int t = 0; t < len; t++) {
                const float u = a[t], v = b[t];
                a[t] = u < v ? u : v; /* two compares: one select each, which vectorizes */
                b[t] = v < u ? u : v;
            }
            break;
        case 1:
            for (int t = 0; t < len; t++)
                a[t] = a[t] < b[t] ? a[t] : b[t];
            break;
        default:
            for (int t = 0; t < len; t++)
                b[t] = a[t] < b[t] ? b[t] : a[t];
            break;
        }
    }
    memcpy(out, lane[12], sizeof(float) * (size_t)len);
}

/* The median of the 5 x 5 window of (y, x) by selection: for the few pixels of a chunk
 * that later passes revisit. */
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

/* One pass over row y: dst = the 5 x 5 median (edges reflected) where near is set, src
 * elsewhere; changed marks the pixels that differ. ext: 5 rows of width + 4 floats. */
static long long median_row(const float *src, float *dst, const uint8_t *near, uint8_t *changed,
                            int height, int width, int y, float *ext, float (*lane)[CHUNK])
{
    const size_t row = (size_t)y * width;
    long long count = 0;
    int ext_ready = 0;
    float med[CHUNK];
    for (int x0 = 0; x0 < width; x0 += CHUNK) {
        const int len = width - x0 < CHUNK ? width - x0 : CHUNK;
        int visits = 0;
        for (int t = 0; t < len; t++)
            visits += near[row + x0 + t];
        if (visits * 8 < len) { /* sparse (later passes): select pixel by pixel */
            for (int t = 0; t < len; t++)
                if (near[row + x0 + t])
                    med[t] = median_at(src, height, width, y, x0 + t);
        } else {
            if (!ext_ready) { /* the 5 rows of the window, extended by reflection */
                for (int dy = 0; dy < 2 * R + 1; dy++) {
                    const float *in = src + (size_t)isl_pp_reflect(y + dy - R, height) * width;
                    float *e = ext + (size_t)dy * (width + 2 * R);
                    for (int x = -R; x < width + R; x++)
                        e[x + R] = in[isl_pp_reflect(x, width)];
                }
                ext_ready = 1;
            }
            for (int dy = 0; dy < 2 * R + 1; dy++) {
                const float *e = ext + (size_t)dy * (width + 2 * R) + x0;
                for (int dx = 0; dx < 2 * R + 1; dx++)
                    memcpy(lane[dy * (2 * R + 1) + dx], e + dx, sizeof(float) * (size_t)len);
            }
            median_chunk(lane, len, med);
        }
        for (int t = 0; t < len; t++) {
            const size_t i = row + x0 + t;
            const float v = near[i] ? med[t] : src[i];
            dst[i] = v;
            changed[i] = v != src[i];
            count += changed[i];
        }
    }
    return count;
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
        int failed = 0;
#pragma omp parallel reduction(+ : count)
        {
            float *ext = malloc(sizeof(float) * (2 * R + 1) * ((size_t)width + 2 * R));
            float (*lane)[CHUNK] = malloc(sizeof(float[CHUNK]) * (2 * R + 1) * (2 * R + 1));
            if (!ext || !lane) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(dynamic, 16)
            for (int y = 0; y < height; y++)
                if (ext && lane)
                    count += median_row(src, dst, near, changed, height, width, y, ext, lane);
            free(ext), free(lane);
        }
        if (failed) {
            free(other), free(changed), free(across), free(near);
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "median filter: out of memory");
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
