/* Photometric augmentation of training crops (augment.h). */
#include "augment.h"

#include "error.h"
#include "preprocess.h"
#include "rng.h"

#include <math.h>
#include <stddef.h>

static float clip01(float v)
{
    return v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
}

/* Scales a plane's contrast about its mean by `factor`. */
static void scale_contrast(float *plane, size_t n, double factor)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += plane[i];
    const float mean = (float)(sum / (double)n), f = (float)factor;
    for (size_t i = 0; i < n; i++)
        plane[i] = clip01(mean + (plane[i] - mean) * f);
}

static void raise_to(float *plane, size_t n, float exponent)
{
    for (size_t i = 0; i < n; i++)
        plane[i] = powf(plane[i], exponent); /* inputs are in [0, 1]: so are the results */
}

/* Adds noise of standard deviation sd: each value the sum of four 16-bit uniform values,
 * centred and scaled to unit variance (Irwin-Hall; bounded at +-2 sqrt 3 sd, close enough
 * to Gaussian for augmentation and one generator call per pixel). */
static void add_noise(float *plane, size_t n, double sd, uint64_t *state)
{
    const double scale = sd * sqrt(3.0) / 65536.0;
    for (size_t i = 0; i < n; i++) {
        const uint64_t b = isl_splitmix64(state);
        const double sum = (double)(b & 0xffff) + (double)((b >> 16) & 0xffff) +
                           (double)((b >> 32) & 0xffff) + (double)(b >> 48);
        plane[i] = clip01(plane[i] + (float)((sum - 2.0 * 65535.0) * scale));
    }
}

isl_status isl_photometric_apply(const isl_photometric *p, uint64_t r, float *planes, int num_z,
                                 int n)
{
    const size_t plane = (size_t)n * n;
    /* A stream of its own, so that each amount draws the same values whether or not the
     * others are on. */
    uint64_t state = r ^ 0x2545f4914f6cdd1dULL;
    const double blur = p->blur * isl_uniform53(isl_splitmix64(&state));
    const double gamma = exp(p->gamma * (2.0 * isl_uniform53(isl_splitmix64(&state)) - 1.0));
    const double noise = p->noise * isl_uniform53(isl_splitmix64(&state));
    const double contrast = exp(p->contrast * (2.0 * isl_uniform53(r) - 1.0));
    for (int z = 0; z < num_z; z++) {
        float *x = planes + (size_t)z * plane;
        /* Below a twentieth of a pixel the kernel is 1 at its centre to float precision. */
        if (blur >= 0.05)
            ISL_CHECK(isl_pp_gaussian_blur(x, n, n, blur));
        if (p->contrast > 0)
            scale_contrast(x, plane, contrast);
        if (p->gamma > 0)
            raise_to(x, plane, (float)gamma);
        if (noise > 0)
            add_noise(x, plane, noise, &state);
    }
    return ISL_OK;
}
