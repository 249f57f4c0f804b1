/* Scale augmentation of training crops (rescale.h). */
#include "rescale.h"

#include <math.h>
#include <stdlib.h>

void isl_rescale_axis(int n, double centre, double factor, int size, int *lo, float *frac)
{
    const double half = 0.5 * (n - 1);
    for (int i = 0; i < n; i++) {
        double p = centre + (i - half) * factor;
        p = p < 0.0 ? 0.0 : p > size - 1 ? size - 1 : p;
        int k = (int)floor(p);
        if (k > size - 2) /* the last pixel: weight 0 on a neighbour that does not exist */
            k = size - 2 < 0 ? 0 : size - 2;
        lo[i] = k;
        frac[i] = (float)(p - k);
    }
}

void isl_rescale_plane(float *dst, int n, const float *src, ptrdiff_t stride, int height,
                       int width, const int *lo_y, const float *fy, const int *lo_x,
                       const float *fx)
{
    const ptrdiff_t down = height > 1 ? stride : 0, right = width > 1 ? 1 : 0;
    for (int y = 0; y < n; y++) {
        const float *r0 = src + lo_y[y] * stride, *r1 = r0 + down;
        const float wy = fy[y];
        float *d = dst + (size_t)y * n;
        for (int x = 0; x < n; x++) {
            const float *a = r0 + lo_x[x], *b = r1 + lo_x[x];
            d[x] = isl_bilinear(a[0], a[right], b[0], b[right], wy, fx[x]);
        }
    }
}

uint32_t *isl_integral_bytes(const uint8_t *map, int height, int width)
{
    const size_t w1 = (size_t)width + 1;
    uint32_t *sum = calloc((size_t)(height + 1) * w1, sizeof(*sum));
    if (!sum)
        return NULL;
    for (int y = 0; y < height; y++) {
        uint32_t row = 0;
        for (int x = 0; x < width; x++) {
            row += map[(size_t)y * (size_t)width + (size_t)x] != 0;
            sum[(size_t)(y + 1) * w1 + (size_t)x + 1] = sum[(size_t)y * w1 + (size_t)x + 1] + row;
        }
    }
    return sum;
}

uint32_t isl_box_count(const uint32_t *sum, int height, int width, int y0, int x0, int y1,
                       int x1)
{
    y0 = y0 < 0 ? 0 : y0;
    x0 = x0 < 0 ? 0 : x0;
    y1 = y1 > height - 1 ? height - 1 : y1;
    x1 = x1 > width - 1 ? width - 1 : x1;
    if (y0 > y1 || x0 > x1)
        return 0;
    const size_t w1 = (size_t)width + 1;
    return sum[(size_t)(y1 + 1) * w1 + (size_t)x1 + 1] - sum[(size_t)y0 * w1 + (size_t)x1 + 1] -
           sum[(size_t)(y1 + 1) * w1 + (size_t)x0] + sum[(size_t)y0 * w1 + (size_t)x0];
}
