/* Separable Gaussian blur for flat fields. Direct convolution: a flat field is estimated
 * once per plate, and the kernel (sigma = height / 32 or / 16) is cut at 4 sigma. */
#include "preprocess.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>

static double *gaussian_kernel(double sigma, int radius)
{
    double *k = malloc(sizeof(double) * (size_t)(2 * radius + 1)), sum = 0.0;
    if (!k)
        return NULL;
    for (int i = -radius; i <= radius; i++)
        sum += k[i + radius] = exp(-0.5 * (double)i * i / (sigma * sigma));
    for (int i = 0; i <= 2 * radius; i++)
        k[i] /= sum;
    return k;
}

isl_status isl_pp_gaussian_blur(float *image, int height, int width, double sigma)
{
    if (!(sigma > 0.0 && sigma <= 1e5))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "gaussian blur: sigma %g is not in (0, 1e5]",
                        sigma);
    const int radius = (int)(4.0 * sigma + 0.5);
    const size_t n = (size_t)height * width;
    double *k = gaussian_kernel(sigma, radius);
    double *rows = malloc(sizeof(double) * n);
    if (!k || !rows) {
        free(k), free(rows);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "gaussian blur: out of memory for %d x %d",
                        height, width);
    }
    isl_status st = ISL_OK;
    /* Along rows: each row extended by its reflection, then the kernel's taps added to the
     * whole row one pair at a time (the kernel is symmetric), so the inner loop runs along
     * x and vectorizes instead of waiting on one sum per pixel. */
#pragma omp parallel
    {
        double *ext = malloc(sizeof(double) * ((size_t)width + 2 * (size_t)radius));
        if (!ext) {
#pragma omp atomic write
            st = ISL_ERROR_OUT_OF_MEMORY;
        }
#pragma omp for schedule(static)
        for (int y = 0; y < height; y++) {
            if (!ext)
                continue;
            const float *in = image + (size_t)y * width;
            double *out = rows + (size_t)y * width;
            for (int x = -radius; x < width + radius; x++)
                ext[x + radius] = in[isl_pp_reflect(x, width)];
            const double centre = k[radius];
            for (int x = 0; x < width; x++)
                out[x] = centre * ext[x + radius];
            for (int i = 0; i < radius; i++) {
                const double w = k[i];
                const double *left = ext + i, *right = ext + 2 * radius - i;
                for (int x = 0; x < width; x++)
                    out[x] += w * (left[x] + right[x]);
            }
        }
        free(ext);
    }
    /* Along columns: whole rows weighted and summed in symmetric pairs, so the inner loop
     * runs along x. */
    if (st == ISL_OK) {
#pragma omp parallel
        {
            double *acc = malloc(sizeof(double) * (size_t)width);
            if (!acc) {
#pragma omp atomic write
                st = ISL_ERROR_OUT_OF_MEMORY;
            }
#pragma omp for schedule(static)
            for (int y = 0; y < height; y++) {
                if (!acc)
                    continue;
                const double centre = k[radius], *mid = rows + (size_t)y * width;
                for (int x = 0; x < width; x++)
                    acc[x] = centre * mid[x];
                for (int i = 1; i <= radius; i++) {
                    const double w = k[radius + i];
                    const double *up = rows + (size_t)isl_pp_reflect(y - i, height) * width;
                    const double *down = rows + (size_t)isl_pp_reflect(y + i, height) * width;
                    for (int x = 0; x < width; x++)
                        acc[x] += w * (up[x] + down[x]);
                }
                for (int x = 0; x < width; x++)
                    image[(size_t)y * width + x] = (float)acc[x];
            }
            free(acc);
        }
    }
    free(k), free(rows);
    if (st != ISL_OK)
        return isl_fail(st, "gaussian blur: out of memory");
    return ISL_OK;
}
