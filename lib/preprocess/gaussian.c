/* Separable Gaussian blur for flat fields. Direct convolution: a flat field is estimated
 * once per plate, and the kernel (sigma = height / 32 or / 16) is cut at 4 sigma. */
#include "preprocess.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    /* Along rows: each row extended by its reflection, then a dot product per pixel. */
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
            for (int x = -radius; x < width + radius; x++)
                ext[x + radius] = in[isl_pp_reflect(x, width)];
            for (int x = 0; x < width; x++) {
                double acc = 0.0;
                for (int i = 0; i <= 2 * radius; i++)
                    acc += k[i] * ext[x + i];
                rows[(size_t)y * width + x] = acc;
            }
        }
        free(ext);
    }
    /* Along columns: whole rows weighted and summed, so the inner loop runs along x. */
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
                memset(acc, 0, sizeof(double) * (size_t)width);
                for (int i = -radius; i <= radius; i++) {
                    const double w = k[i + radius];
                    const double *src = rows + (size_t)isl_pp_reflect(y + i, height) * width;
                    for (int x = 0; x < width; x++)
                        acc[x] += w * src[x];
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
