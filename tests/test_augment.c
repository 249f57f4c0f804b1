/* Photometric augmentation of training crops (lib/train/augment.c): each change alone is
 * recovered from a crop by an independent fit (a contrast factor by least squares, a
 * gamma by logarithms, a blur by a Gaussian written here, noise by its moments), and
 * its amounts spread over [0, max] as documented. Through the sampler: the options are
 * validated, leave targets and masks alone, and 0 turns them off. */
#include "isl.h"
#include "augment.h"
#include "test_util.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NZ = 3, N = 64, CROPS = 24 };
static const size_t PLANE = (size_t)N * N;

/* Random planes in [0, 1]: smooth structure plus pixel noise, like a phase image. */
static void fill_planes(float *x, uint64_t seed)
{
    uint64_t s = seed;
    for (int z = 0; z < NZ; z++)
        for (int y = 0; y < N; y++)
            for (int c = 0; c < N; c++)
                x[z * PLANE + (size_t)y * N + c] =
                    (float)(0.5 + 0.25 * sin(0.3 * y + z) * cos(0.21 * c) +
                            0.15 * (test_uniform(&s) - 0.5));
}

/* Applies `p` to a copy of `plain` with the crop value r. */
static void apply(const isl_photometric *p, uint64_t r, const float *plain, float *out)
{
    memcpy(out, plain, sizeof(float) * NZ * PLANE);
    ck_assert_msg(isl_photometric_apply(p, r, out, NZ, N) == ISL_OK, "%s", isl_last_error());
}

static uint64_t crop_value(int i)
{
    uint64_t s = 1000 + (uint64_t)i;
    return isl_splitmix64(&s);
}

START_TEST(off_changes_nothing)
{
    float *plain = malloc(sizeof(float) * NZ * PLANE), *out = malloc(sizeof(float) * NZ * PLANE);
    fill_planes(plain, 1);
    const isl_photometric off = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++) {
        apply(&off, crop_value(i), plain, out);
        ck_assert_mem_eq(plain, out, sizeof(float) * NZ * PLANE);
    }
    free(plain);
    free(out);
}
END_TEST

/* v -> v^e with one e per crop: e = log(out) / log(in) at every pixel inside (0, 1). */
START_TEST(gamma_is_one_power_per_crop)
{
    const double amount = 0.4;
    const isl_photometric p = {0, amount, 0, 0};
    float *plain = malloc(sizeof(float) * NZ * PLANE), *out = malloc(sizeof(float) * NZ * PLANE);
    fill_planes(plain, 2);
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < CROPS; i++) {
        apply(&p, crop_value(i), plain, out);
        const double e = log(out[N * 5 + 7]) / log(plain[N * 5 + 7]);
        ck_assert_msg(e >= exp(-amount) - 1e-4 && e <= exp(amount) + 1e-4,
                      "crop %d: exponent %g outside [e^-%g, e^%g]", i, e, amount, amount);
        for (size_t k = 0; k < NZ * PLANE; k++)
            ck_assert_msg(fabs(out[k] - pow(plain[k], e)) < 2e-6, "crop %d value %zu: %g, not %g",
                          i, k, out[k], pow(plain[k], e));
        lo = fmin(lo, e);
        hi = fmax(hi, e);
    }
    /* 24 uniform draws of u cover most of [-0.4, 0.4]. */
    ck_assert_msg(log(lo) < -0.25 && log(hi) > 0.25, "exponents span only %g .. %g", lo, hi);
    free(plain);
    free(out);
}
END_TEST

/* scipy's 'reflect' (d c b a | a b c d | d c b a), for distances under n. */
static int mirror(int i)
{
    return i < 0 ? -1 - i : i >= N ? 2 * N - 1 - i : i;
}

/* A reference blur written independently: direct 1D passes in double, the kernel
 * exp(-x^2 / 2 sigma^2) over |x| <= round(4 sigma), normalized, edges mirrored. */
static void reference_blur(const float *in, double *out, double sigma)
{
    const int radius = (int)(4.0 * sigma + 0.5);
    double *k = malloc(sizeof(double) * (2 * radius + 1)), sum = 0;
    double *rows = malloc(sizeof(double) * PLANE);
    for (int d = -radius; d <= radius; d++)
        sum += k[d + radius] = exp(-0.5 * d * d / (sigma * sigma));
    for (int d = 0; d <= 2 * radius; d++)
        k[d] /= sum;
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++) {
            double v = 0;
            for (int d = -radius; d <= radius; d++)
                v += k[d + radius] * in[y * N + mirror(x + d)];
            rows[y * N + x] = v;
        }
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++) {
            double v = 0;
            for (int d = -radius; d <= radius; d++)
                v += k[d + radius] * rows[mirror(y + d) * N + x];
            out[y * N + x] = v;
        }
    free(k);
    free(rows);
}

static double blur_error(const float *plain, const float *blurred, double sigma, double *scratch)
{
    if (sigma < 0.05) { /* no blur */
        double worst = 0;
        for (size_t k = 0; k < PLANE; k++)
            worst = fmax(worst, fabs(plain[k] - blurred[k]));
        return worst;
    }
    reference_blur(plain, scratch, sigma);
    double worst = 0;
    for (size_t k = 0; k < PLANE; k++)
        worst = fmax(worst, fabs(scratch[k] - blurred[k]));
    return worst;
}

/* Every plane of a crop is the reference blur of one sigma in [0, max]: found by a
 * golden-section search on plane 0, then checked on every plane. */
START_TEST(blur_is_one_gaussian_per_crop)
{
    const double max = 2.0;
    const isl_photometric p = {0, 0, max, 0};
    float *plain = malloc(sizeof(float) * NZ * PLANE), *out = malloc(sizeof(float) * NZ * PLANE);
    double *scratch = malloc(sizeof(double) * PLANE);
    fill_planes(plain, 3);
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < CROPS; i++) {
        apply(&p, crop_value(i), plain, out);
        const double g = (sqrt(5.0) - 1) / 2;
        double a = 0.0, b = max;
        for (int it = 0; it < 40; it++) {
            double c = b - g * (b - a), d = a + g * (b - a);
            if (blur_error(plain, out, c, scratch) < blur_error(plain, out, d, scratch))
                b = d;
            else
                a = c;
        }
        const double sigma = (a + b) / 2;
        for (int z = 0; z < NZ; z++) {
            const double err = blur_error(plain + z * PLANE, out + z * PLANE, sigma, scratch);
            ck_assert_msg(err < 1e-5, "crop %d plane %d: sigma %g leaves an error of %g", i, z,
                          sigma, err);
        }
        lo = fmin(lo, sigma);
        hi = fmax(hi, sigma);
    }
    ck_assert_msg(lo < 0.3 && hi > 0.9 * max, "sigmas span only %g .. %g", lo, hi);
    free(plain);
    free(out);
    free(scratch);
}
END_TEST

/* out - in: mean 0, one standard deviation per crop within [0, max], independent pixels,
 * bounded at 2 sqrt(3) sd, and the kurtosis of a sum of four uniforms (2.7; Gaussian 3,
 * uniform 1.8). Pixels are kept away from the clipping bounds. */
START_TEST(noise_has_one_deviation_per_crop)
{
    const double max = 0.04;
    const isl_photometric p = {0, 0, 0, max};
    float *plain = malloc(sizeof(float) * NZ * PLANE), *out = malloc(sizeof(float) * NZ * PLANE);
    fill_planes(plain, 4);
    double lo = INFINITY, hi = -INFINITY, pooled_kurtosis = 0;
    int pooled = 0;
    for (int i = 0; i < CROPS; i++) {
        apply(&p, crop_value(i), plain, out);
        double s1 = 0, s2 = 0, s4 = 0, lag = 0, worst = 0;
        size_t n = 0;
        for (size_t k = 0; k < NZ * PLANE; k++) {
            const double d = (double)out[k] - plain[k];
            s1 += d;
            s2 += d * d;
            s4 += d * d * d * d;
            worst = fmax(worst, fabs(d));
            if (k + 1 < NZ * PLANE)
                lag += d * ((double)out[k + 1] - plain[k + 1]);
            n++;
        }
        const double mean = s1 / n, var = s2 / n, sd = sqrt(var);
        ck_assert_msg(sd <= max * 1.02, "crop %d: noise sd %g above %g", i, sd, max);
        lo = fmin(lo, sd);
        hi = fmax(hi, sd);
        if (sd < 1e-3)
            continue;
        ck_assert_msg(fabs(mean) < 5 * sd / sqrt((double)n), "crop %d: noise mean %g (sd %g)", i,
                      mean, sd);
        ck_assert_msg(fabs(lag / n) < 0.03 * var, "crop %d: neighbours correlate (%g)", i,
                      lag / n / var);
        ck_assert_msg(worst <= 2 * sqrt(3.0) * sd * 1.02, "crop %d: |noise| %g > 3.46 sd", i,
                      worst);
        pooled_kurtosis += s4 / n / (var * var);
        pooled++;
    }
    /* Uniform in [0, max]: the largest of 24 draws is near max (0.94 max here), so a wrong
     * scale of the noise (say sqrt 2 for sqrt 3: 0.82) shows. */
    ck_assert_msg(lo < 0.1 * max && hi > 0.9 * max, "sds span only %g .. %g", lo, hi);
    ck_assert_int_ge(pooled, CROPS / 2);
    pooled_kurtosis /= pooled;
    ck_assert_msg(pooled_kurtosis > 2.6 && pooled_kurtosis < 2.8, "kurtosis %g, not 2.7",
                  pooled_kurtosis);
    free(plain);
    free(out);
}
END_TEST

/* Contrast keeps the value it had before the other augmentations existed: the factor
 * from r's top 53 bits, applied about each plane's mean (least-squares fit here). */
START_TEST(contrast_factor_comes_from_the_crop_value)
{
    const double amount = 0.5;
    const isl_photometric p = {amount, 0, 0, 0};
    float *plain = malloc(sizeof(float) * NZ * PLANE), *out = malloc(sizeof(float) * NZ * PLANE);
    fill_planes(plain, 5);
    for (int i = 0; i < CROPS; i++) {
        const uint64_t r = crop_value(i);
        apply(&p, r, plain, out);
        const double want = exp(amount * ((double)(r >> 11) * 0x1.0p-53 * 2.0 - 1.0));
        for (int z = 0; z < NZ; z++) {
            double mean = 0, sxy = 0, sxx = 0;
            for (size_t k = 0; k < PLANE; k++)
                mean += plain[z * PLANE + k];
            mean /= PLANE;
            for (size_t k = 0; k < PLANE; k++) {
                const double o = out[z * PLANE + k];
                if (o > 0 && o < 1) {
                    sxy += (plain[z * PLANE + k] - mean) * (o - mean);
                    sxx += (plain[z * PLANE + k] - mean) * (plain[z * PLANE + k] - mean);
                }
            }
            ck_assert_msg(fabs(sxy / sxx - want) < 1e-4, "crop %d plane %d: factor %g, not %g", i,
                          z, sxy / sxx, want);
        }
    }
    free(plain);
    free(out);
}
END_TEST

/* All four at once: each amount is drawn from its own value, so turning one on does not
 * change the others' (the blur alone and the blur with gamma give the same sigma: gamma
 * of the blur-only result equals the combined result). */
START_TEST(amounts_do_not_depend_on_each_other)
{
    const isl_photometric blur = {0, 0, 1.5, 0}, both = {0, 0.3, 1.5, 0};
    float *plain = malloc(sizeof(float) * NZ * PLANE), *a = malloc(sizeof(float) * NZ * PLANE);
    float *b = malloc(sizeof(float) * NZ * PLANE);
    fill_planes(plain, 6);
    for (int i = 0; i < 6; i++) {
        apply(&blur, crop_value(i), plain, a);
        apply(&both, crop_value(i), plain, b);
        const double e = log(b[N * 9 + 3]) / log(a[N * 9 + 3]);
        for (size_t k = 0; k < NZ * PLANE; k++)
            ck_assert_msg(fabs(b[k] - pow(a[k], e)) < 2e-6, "crop %d value %zu", i, k);
    }
    free(plain);
    free(a);
    free(b);
}
END_TEST

int main(void)
{
    const test_case cases[] = {
        {"off", off_changes_nothing},
        {"gamma", gamma_is_one_power_per_crop},
        {"blur", blur_is_one_gaussian_per_crop},
        {"noise", noise_has_one_deviation_per_crop},
        {"contrast", contrast_factor_comes_from_the_crop_value},
        {"independent", amounts_do_not_depend_on_each_other},
    };
    return test_run_cases("augment", cases, sizeof(cases) / sizeof(cases[0]), 60);
}
