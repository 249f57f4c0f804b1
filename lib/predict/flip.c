/* Mirror images of planar data. */
#include "flip.h"

/* dst = (add ? dst : 0) + flip of src. */
static void flip_into(float *dst, const float *src, size_t planes, int rows, int cols, int flip,
                      int add)
{
    const size_t plane = (size_t)rows * cols;
#pragma omp parallel for collapse(2) schedule(static)
    for (size_t p = 0; p < planes; p++) {
        for (int y = 0; y < rows; y++) {
            const int sy = (flip & ISL_FLIP_Y) ? rows - 1 - y : y;
            const float *s = src + p * plane + (size_t)sy * cols;
            float *d = dst + p * plane + (size_t)y * cols;
            for (int x = 0; x < cols; x++) {
                const float v = s[(flip & ISL_FLIP_X) ? cols - 1 - x : x];
                d[x] = add ? d[x] + v : v;
            }
        }
    }
}

void isl_flip_copy(float *dst, const float *src, size_t planes, int rows, int cols, int flip)
{
    flip_into(dst, src, planes, rows, cols, flip, 0);
}

void isl_flip_accumulate(float *sum, const float *add, size_t planes, int rows, int cols,
                         int flip)
{
    flip_into(sum, add, planes, rows, cols, flip, 1);
}
