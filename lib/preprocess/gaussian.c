/* Separable Gaussian blur for flat fields. Direct convolution: a flat field is estimated
 * once per plate, and the kernel (sigma = height / 32 or / 16) is cut at 4 sigma. */
#include "preprocess.h"

#include "error.h"
#include "fast_math.h"

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

/* out[x] += w (left[x] + right[x]): one symmetric pair of taps over a row (left and right
 * may overlap each other, not out). Compiled for the CPU at hand: the blur is its loop. */
ISL_CLONES
static void add_tap_pair(double *restrict out, const double *left, const double *right, double w,
                         int n)
{
    for (int x = 0; x < n; x++)
        out[x] += w * (left[x] + right[x]);
}

/* out[0..n) = the kernel over ext[0..n + 2 radius) (a line extended by its reflection):
 * the centre tap, then the symmetric pairs from the farthest (smallest) in, each added to
 * the whole line at once so that the inner loop runs along the line and vectorizes. */
static void blur_line(const double *ext, const double *k, int radius, int n, double *out)
{
    for (int x = 0; x < n; x++)
        out[x] = k[radius] * ext[x + radius];
    for (int i = 0; i < radius; i++)
        add_tap_pair(out, ext + i, ext + 2 * radius - i, k[i], n);
}

/* dst (cols x rows) = the transpose of src (rows x cols), in cache-sized blocks. */
static void transpose(const double *src, int rows, int cols, double *dst)
{
    enum { B = 32 };
#pragma omp parallel for schedule(static)
    for (int r0 = 0; r0 < rows; r0 += B)
        for (int c0 = 0; c0 < cols; c0 += B)
            for (int r = r0; r < r0 + B && r < rows; r++)
                for (int c = c0; c < c0 + B && c < cols; c++)
                    dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

/* Blurs each of `lines` lines of length n of src into dst. */
static isl_status blur_lines(const double *src, int lines, int n, const double *k, int radius,
                             double *dst)
{
    int failed = 0;
#pragma omp parallel
    {
        double *ext = malloc(sizeof(double) * ((size_t)n + 2 * (size_t)radius));
        if (!ext) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int l = 0; l < lines; l++) {
            if (!ext)
                continue;
            const size_t at = (size_t)l * n;
            for (int x = -radius; x < n + radius; x++) {
                const int j = isl_pp_reflect(x, n);
                ext[x + radius] = src[at + j];
            }
            blur_line(ext, k, radius, n, dst + at);
        }
        free(ext);
    }
    return failed ? isl_fail(ISL_ERROR_OUT_OF_MEMORY, "gaussian blur: out of memory") : ISL_OK;
}

isl_status isl_pp_gaussian_blur(float *image, int height, int width, double sigma)
{
    if (!(sigma > 0.0 && sigma <= 1e5))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "gaussian blur: sigma %g is not in (0, 1e5]",
                        sigma);
    const int radius = (int)(4.0 * sigma + 0.5);
    const size_t n = (size_t)height * width;
    double *k = gaussian_kernel(sigma, radius);
    double *a = malloc(sizeof(double) * n), *b = malloc(sizeof(double) * n);
    if (!k || !a || !b) {
        free(k), free(a), free(b);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "gaussian blur: out of memory for %d x %d",
                        height, width);
    }
    /* Along rows, then along the columns as rows of the transpose: every pass reads its
     * lines contiguously (a column pass over whole rows would stream 2 radius + 1 rows
     * through the cache for each output row). */
    for (size_t i = 0; i < n; i++)
        b[i] = image[i];
    isl_status st = blur_lines(b, height, width, k, radius, a);
    if (st == ISL_OK) {
        transpose(a, height, width, b);
        st = blur_lines(b, width, height, k, radius, a);
    }
    if (st == ISL_OK) {
#pragma omp parallel for schedule(static)
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                image[(size_t)y * width + x] = (float)a[(size_t)x * height + y];
    }
    free(k), free(a), free(b);
    return st;
}
