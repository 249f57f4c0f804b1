/* Scale augmentation of training crops (lib/train/rescale.c): a crop resampled about its
 * centre by a zoom factor, its inputs and targets alike, and the integral image with which
 * the sampler keeps a zoomed-out crop's receptive fields off held-out pixels. */
#ifndef ISL_RESCALE_H
#define ISL_RESCALE_H

#include <stddef.h>
#include <stdint.h>

/* The bilinear blend of a pixel's four neighbours (a00 top left, a01 top right, a10 bottom
 * left, a11 bottom right) at fractions wy down and wx across: top row, bottom row, then
 * between them. Inputs and targets share it, so both are resampled alike. */
static inline float isl_bilinear(float a00, float a01, float a10, float a11, float wy, float wx)
{
    const float top = a00 + wx * (a01 - a00);
    const float bottom = a10 + wx * (a11 - a10);
    return top + wy * (bottom - top);
}

/* Bilinear sample positions of n outputs along one axis: output i reads the source at
 * centre + (i - (n - 1) / 2) * factor, clamped to [0, size - 1]; lo[i] and lo[i] + 1
 * (or lo[i] where it is size - 1) with weight frac[i] on the second. */
void isl_rescale_axis(int n, double centre, double factor, int size, int *lo, float *frac);

/* dst (n x n) from src (rows of `stride` floats, rows lo_y, cols lo_x) by the per-axis
 * samples of isl_rescale_axis; src rows and columns up to size - 1 are read. */
void isl_rescale_plane(float *dst, int n, const float *src, ptrdiff_t stride, int height,
                       int width, const int *lo_y, const float *fy, const int *lo_x,
                       const float *fx);

/* The integral image of a height x width byte map (nonzero counts as 1): (height + 1) x
 * (width + 1) counts, sum[y * (width + 1) + x] over [0, y) x [0, x). Counts wrap modulo
 * 2^32, which box counts below 2^32 do not notice. NULL when out of memory. */
uint32_t *isl_integral_bytes(const uint8_t *map, int height, int width);

/* Nonzero pixels of the map in rows y0..y1 and columns x0..x1 (inclusive), the box
 * clipped to the map first. */
uint32_t isl_box_count(const uint32_t *sum, int height, int width, int y0, int x0, int y1,
                       int x1);

#endif
