/* Mirror images of planar data. */
#include "flip.h"

#include <string.h>

void isl_flip_copy(float *dst, const float *src, size_t planes, int rows, int cols, int flip)
{
    const size_t plane = (size_t)rows * cols;
#pragma omp parallel for collapse(2) schedule(static)
    for (size_t p = 0; p < planes; p++) {
        for (int y = 0; y < rows; y++) {
            const int sy = (flip & ISL_FLIP_Y) ? rows - 1 - y : y;
            const float *s = src + p * plane + (size_t)sy * cols;
            float *d = dst + p * plane + (size_t)y * cols;
            if (flip & ISL_FLIP_X)
                for (int x = 0; x < cols; x++)
                    d[x] = s[cols - 1 - x];
            else
                memcpy(d, s, sizeof(float) * (size_t)cols);
        }
    }
}

void isl_flip_accumulate(float *sum, const float *add, size_t planes, int rows, int cols,
                         int flip)
{
    const size_t plane = (size_t)rows * cols;
#pragma omp parallel for collapse(2) schedule(static)
    for (size_t p = 0; p < planes; p++) {
        for (int y = 0; y < rows; y++) {
            const int sy = (flip & ISL_FLIP_Y) ? rows - 1 - y : y;
            const float *s = add + p * plane + (size_t)sy * cols;
            float *d = sum + p * plane + (size_t)y * cols;
            if (flip & ISL_FLIP_X)
                for (int x = 0; x < cols; x++)
                    d[x] += s[cols - 1 - x];
            else
                for (int x = 0; x < cols; x++)
                    d[x] += s[x];
        }
    }
}
