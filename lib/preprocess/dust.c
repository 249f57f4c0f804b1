/* The paper's fluorescence dust removal (STAR Methods, "Dust artifact removal from
 * fluorescence images"): an additive artifact at the same place in every image, estimated
 * from the mean of many images and subtracted from each. Choices where the paper is
 * silent: docs/preprocessing.md, "Fluorescence dust". */
#include "preprocess.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Arguments of isl_dust_fluorescence_estimate, checked. */
static isl_status check_estimate(const float *const *images, int count, int height, int width,
                                 double offset, double threshold, double sigma, const float *out)
{
    if (!images || !out || count < 1)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "fluorescence dust: no images (count %d) or output is NULL", count);
    if (!isfinite(offset))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "fluorescence dust: sensor offset %g", offset);
    if (!(threshold > 0.0 && threshold <= 100.0))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "fluorescence dust: threshold %g is not in (0, 100]", threshold);
    if (!(sigma >= 0.0 && sigma <= 1e5))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "fluorescence dust: sigma %g is not in [0, 1e5]", sigma);
    ISL_CHECK(isl_pp_check_size("fluorescence dust", height, width));
    ISL_CHECK(isl_pp_check_images("fluorescence dust", images, count, height, width));
    return ISL_OK;
}

/* Refinements of the mask and its background, at most (each starts from the last one's
 * background; they stop when the mask no longer changes, usually after one to three). */
#define MASK_ROUNDS 8

/* Grows the mask by 2 pixels (a 5 x 5 maximum; tmp: n bytes): the 5 x 5 median shrinks
 * round specks by up to that at their rims. Returns the pixels marked. */
static int64_t dilate2(unsigned char *mask, unsigned char *tmp, int height, int width)
{
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++) {
            unsigned char m = 0;
            for (int dx = -2; dx <= 2 && !m; dx++)
                if (x + dx >= 0 && x + dx < width)
                    m = mask[(size_t)y * width + x + dx];
            tmp[(size_t)y * width + x] = m;
        }
    int64_t marked = 0;
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++) {
            unsigned char m = 0;
            for (int dy = -2; dy <= 2 && !m; dy++)
                if (y + dy >= 0 && y + dy < height)
                    m = tmp[(size_t)(y + dy) * width + x];
            mask[(size_t)y * width + x] = m;
            marked += m;
        }
    return marked;
}

/* Scratch images of the background estimate. */
typedef struct dust_scratch {
    float *near, *weight;
} dust_scratch;

/* The paper's background: the image with its dust pixels replaced by the mean of the
 * others, blurred by sigma. With `local`, the mean is the local one (Gaussian-weighted, the
 * same sigma: the blur of the clean pixels over the blur of their indicator), so that a
 * vignetted raw image is not filled with its global level; where no clean pixel lies
 * within the kernel, the global one. For a flat background both are the paper's. */
static isl_status background_of(const float *image, const unsigned char *mask, size_t n,
                                int height, int width, double sigma, int local,
                                dust_scratch *t, float *out)
{
    double sum = 0.0;
    size_t clean = 0;
    for (size_t p = 0; p < n; p++)
        if (!mask[p])
            sum += image[p], clean++;
    if (!clean)
        return isl_fail(ISL_ERROR_VALUE, "fluorescence dust: every pixel is above the threshold");
    const float global = (float)(sum / (double)clean);
    if (!(global > 0.0f))
        return isl_fail(ISL_ERROR_VALUE,
                        "fluorescence dust: the mean image less the sensor offset averages %g "
                        "outside the dust; the offset must be below the background", global);
    if (local && clean < n) {
        for (size_t p = 0; p < n; p++) {
            t->near[p] = mask[p] ? 0.0f : image[p];
            t->weight[p] = mask[p] ? 0.0f : 1.0f;
        }
        ISL_CHECK(isl_pp_gaussian_blur(t->near, height, width, sigma));
        ISL_CHECK(isl_pp_gaussian_blur(t->weight, height, width, sigma));
    }
    for (size_t p = 0; p < n; p++)
        out[p] = !mask[p]                 ? image[p]
                 : local && t->weight[p] > 1e-12f ? t->near[p] / t->weight[p]
                                          : global;
    return isl_pp_gaussian_blur(out, height, width, sigma);
}

isl_status isl_dust_fluorescence_estimate(const float *const *images, int count, int height,
                                          int width, double sensor_offset, double threshold,
                                          double sigma, float *artifact, int64_t *dust_pixels)
{
    ISL_CHECK(check_estimate(images, count, height, width, sensor_offset, threshold, sigma,
                             artifact));
    if (sigma == 0.0)
        sigma = isl_flat_field_sigma(ISL_LIGHT_FLUORESCENCE, height);
    const size_t n = (size_t)height * width;
    float *mean = malloc(sizeof(float) * n), *smooth = malloc(sizeof(float) * n);
    float *background = malloc(sizeof(float) * n);
    dust_scratch t = {malloc(sizeof(float) * n), malloc(sizeof(float) * n)};
    unsigned char *mask = calloc(n, 1), *next = malloc(n), *tmp = malloc(n);
    isl_status s = mean && smooth && background && t.near && t.weight && mask && next && tmp
                       ? ISL_OK
                       : isl_fail(ISL_ERROR_OUT_OF_MEMORY, "fluorescence dust: out of memory "
                                  "for %d x %d", height, width);
    /* The mean image, less the sensor offset (in double: many images). */
    for (size_t p = 0; s == ISL_OK && p < n; p++) {
        double sum = 0.0;
        for (int i = 0; i < count; i++)
            sum += images[i][p];
        mean[p] = (float)(sum / count - sensor_offset);
    }
    /* Edge-preserving smoothing, then the threshold: dust where the smoothed image exceeds
     * the background by more than threshold x background. The background needs the mask,
     * and the mask a background (vignetting makes a global level wrong): start from no
     * dust (the plain blur) and refine with the paper's global fill, which dust the mask
     * still misses cannot pull up (a local fill can, and then keeps missing it). A relative
     * threshold is why the offset goes first. */
    if (s == ISL_OK) {
        memcpy(smooth, mean, sizeof(float) * n);
        s = isl_median5_until_stable(smooth, height, width, 32, NULL);
    }
    if (s == ISL_OK)
        s = background_of(mean, mask, n, height, width, sigma, 0, &t, background);
    int64_t marked = 0;
    for (int round = 0; s == ISL_OK && round < MASK_ROUNDS; round++) {
        for (size_t p = 0; p < n; p++)
            next[p] = smooth[p] > background[p] * (1.0 + threshold);
        const int64_t grown = dilate2(next, tmp, height, width);
        if (!memcmp(next, mask, n))
            break; /* the background is already this mask's */
        memcpy(mask, next, n);
        marked = grown;
        s = background_of(mean, mask, n, height, width, sigma, 0, &t, background);
    }
    /* The background under the final mask, filled locally. */
    if (s == ISL_OK && marked)
        s = background_of(mean, mask, n, height, width, sigma, 1, &t, background);
    /* The artifact: mean image less background, on the dust mask only and never negative
     * (dust adds light); elsewhere 0, so that nothing else of the mean image is imprinted. */
    for (size_t p = 0; s == ISL_OK && p < n; p++) {
        const float d = mean[p] - background[p];
        artifact[p] = mask[p] && d > 0.0f ? d : 0.0f;
    }
    if (s == ISL_OK && dust_pixels)
        *dust_pixels = marked;
    free(mean), free(smooth), free(background), free(t.near), free(t.weight);
    free(mask), free(next), free(tmp);
    return s;
}

isl_status isl_dust_fluorescence_remove(float *image, const float *artifact, int height,
                                        int width)
{
    if (!image || !artifact)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "fluorescence dust: image or artifact is NULL");
    ISL_CHECK(isl_pp_check_size("fluorescence dust", height, width));
    ISL_CHECK(isl_pp_check_finite("fluorescence dust: image", image, height, width));
    ISL_CHECK(isl_pp_check_finite("fluorescence dust: artifact", artifact, height, width));
    const size_t n = (size_t)height * width;
    for (size_t p = 0; p < n; p++)
        image[p] -= artifact[p];
    return ISL_OK;
}
