/* The paper's preprocessing steps against answers known by construction: a half-plane and a
 * bar keep their edges while specks vanish, a known vignetting is recovered and removed,
 * a blurred impulse is the Gaussian, normalized images have the asked mean and sd, a known
 * fluorescence dust artifact is estimated exactly and removed. */
#include "isl.h"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* A cell-like scene: dark left half-plane, bright right half, and a bright round cell of
 * radius 10 (d^2 <= r^2 + r: without the one-pixel tips a digital disk has). */
static float scene(int y, int x)
{
    if ((y - 24) * (y - 24) + (x - 14) * (x - 14) <= 110)
        return 700.0f;
    return x < 32 ? 100.0f : 400.0f;
}

START_TEST(median_removes_specks_and_keeps_edges)
{
    enum { H = 48, W = 64 };
    float *img = malloc(sizeof(float) * H * W);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            img[y * W + x] = scene(y, x);
    /* Specks of 1, 2 and 4 pixels, bright and dark, on both sides and near the edges. */
    const int specks[][2] = {{5, 5}, {10, 40}, {40, 12}, {44, 60}, {3, 33}, {24, 27}};
    for (size_t i = 0; i < sizeof specks / sizeof *specks; i++)
        img[specks[i][0] * W + specks[i][1]] = i % 2 ? 0.0f : 4000.0f;
    img[12 * W + 50] = img[12 * W + 51] = 3000.0f;
    for (int d = 0; d < 4; d++)
        img[(38 + d / 2) * W + 45 + d % 2] = 2500.0f;
    int passes = -1;
    ck_assert_int_eq(isl_median5_until_stable(img, H, W, 32, &passes), ISL_OK);
    ck_assert_int_ge(passes, 1);
    ck_assert_int_le(passes, 32);
    /* Every pixel equals the clean scene: specks gone, the edges and the cell unmoved. */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            ck_assert_msg(img[y * W + x] == scene(y, x), "(%d, %d): %g, expected %g", y, x,
                              img[y * W + x], scene(y, x));
    /* A second run finds nothing to change. */
    ck_assert_int_eq(isl_median5_until_stable(img, H, W, 32, &passes), ISL_OK);
    ck_assert_int_eq(passes, 0);
    free(img);
}
END_TEST

START_TEST(median_reaches_a_fixed_point)
{
    /* A staircase ramp with 8% salt and pepper needs several passes; the result must be a
     * root: one more 5 x 5 median (computed here by sorting) changes nothing. (Pure noise
     * may oscillate for ever, as scipy's median_filter does on it too.) */
    enum { H = 40, W = 33 };
    float *img = malloc(sizeof(float) * H * W);
    uint64_t s = 7;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            double u = test_uniform(&s);
            img[y * W + x] = u < 0.04 ? 0.0f : u < 0.08 ? 50.0f : (float)floor((x + 2 * y) / 8.0);
        }
    int passes;
    ck_assert_int_eq(isl_median5_until_stable(img, H, W, 32, &passes), ISL_OK);
    ck_assert_int_gt(passes, 1);
    ck_assert_int_lt(passes, 32);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            float v[25];
            int n = 0;
            for (int dy = -2; dy <= 2; dy++)
                for (int dx = -2; dx <= 2; dx++) {
                    int yy = y + dy < 0 ? -(y + dy) - 1 : y + dy >= H ? 2 * H - 1 - (y + dy) : y + dy;
                    int xx = x + dx < 0 ? -(x + dx) - 1 : x + dx >= W ? 2 * W - 1 - (x + dx) : x + dx;
                    v[n++] = img[yy * W + xx];
                }
            for (int i = 1; i < 25; i++)
                for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
                    float t = v[j];
                    v[j] = v[j - 1];
                    v[j - 1] = t;
                }
            ck_assert_float_eq(img[y * W + x], v[12]);
        }
    free(img);
}
END_TEST

START_TEST(downscale_averages_blocks)
{
    const float in[3 * 5] = {1, 2, 3, 4, 99, 5, 6, 7, 8, 99, 99, 99, 99, 99, 99};
    float out[2] = {0};
    ck_assert_int_eq(isl_downscale2(in, 3, 5, out), ISL_OK);
    ck_assert_float_eq(out[0], 3.5f); /* (1 + 2 + 5 + 6) / 4 */
    ck_assert_float_eq(out[1], 5.5f); /* (3 + 4 + 7 + 8) / 4 */
    ck_assert_int_eq(isl_downscale2(in, 1, 5, out), ISL_ERROR_SHAPE);
}
END_TEST

/* The vignetting of the tests: 1 in the centre, 0.65 at the edges, flat at the edges (so
 * that the reflection at the edges continues it smoothly: docs/preprocessing.md). */
static double vignette(int y, int x, int h, int w)
{
    double sy = sin(M_PI * (y + 0.5) / h), sx = sin(M_PI * (x + 0.5) / w);
    return 0.65 + 0.35 * sy * sy * sx * sx;
}

/* Tile t: a uniform scene of 1000 seen through the vignetting, with a bright "cell" disk
 * of radius 10 somewhere of its own, so that no pixel has a cell in two tiles. */
static float *vignetted_tiles(int count, int h, int w)
{
    float *t = malloc(sizeof(float) * (size_t)count * h * w);
    for (int i = 0; i < count; i++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int cy = 12 + 22 * (i % 3), cx = 12 + 22 * (i / 3);
                int cell = (y - cy) * (y - cy) + (x - cx) * (x - cx) <= 100;
                t[((size_t)i * h + y) * w + x] =
                    (float)((cell ? 3000.0 : 1000.0) * vignette(y, x, h, w));
            }
    return t;
}

/* Flat field of vignetted_tiles(count, h, w) with blur sigma; frees the tiles. */
static float *vignetted_field(int count, int h, int w, double sigma)
{
    float *tiles = vignetted_tiles(count, h, w), *field = malloc(sizeof(float) * h * w);
    const float **pages = malloc(sizeof(float *) * count);
    for (int i = 0; i < count; i++)
        pages[i] = tiles + (size_t)i * h * w;
    ck_assert_int_eq(isl_flat_field_estimate(pages, count, h, w, sigma, field), ISL_OK);
    free(pages), free(tiles);
    return field;
}

START_TEST(dust_field_is_the_exact_median)
{
    enum { H = 70, W = 90 };
    float *field = vignetted_field(7, H, W, 0.0);
    double mean = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            mean += vignette(y, x, H, W) / (H * W);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            ck_assert_double_eq_tol(field[y * W + x], vignette(y, x, H, W) / mean, 1e-5);
    /* An even count: numpy's median, the mean of the two middle values. */
    const float a[4] = {1, 9, 3, 4}, b[4] = {2, 2, 2, 2}, *two[2] = {a, b};
    float f[4];
    ck_assert_int_eq(isl_flat_field_estimate(two, 2, 2, 2, 0.0, f), ISL_OK);
    const double m = (1.5 + 5.5 + 2.5 + 3.0) / 4;
    ck_assert_double_eq_tol(f[0], 1.5 / m, 1e-6);
    ck_assert_double_eq_tol(f[1], 5.5 / m, 1e-6);
    free(field);
}
END_TEST

START_TEST(flat_field_removes_a_known_vignetting)
{
    enum { H = 128, W = 128 };
    const double sigma = isl_flat_field_sigma(ISL_LIGHT_TRANSMITTED, H);
    ck_assert_double_eq(sigma, 4.0);
    ck_assert_double_eq(isl_flat_field_sigma(ISL_LIGHT_FLUORESCENCE, H), 8.0);
    float *field = vignetted_field(9, H, W, sigma);
    /* A new uniform scene through the same optics: 35% darker edges before, flat within 1.5%
     * after (the blur flattens the vignetting's cosines by exp(-(2 pi sigma / H)^2 / 2),
     * 0.981 for H / 32: 0.35 * 0.019 / 0.65 = 1% left). */
    float *img = malloc(sizeof(float) * H * W);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            img[y * W + x] = (float)(500.0 * vignette(y, x, H, W));
    ck_assert_int_eq(isl_flat_field_apply(img, field, H, W), ISL_OK);
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < H * W; i++)
        lo = fmin(lo, img[i]), hi = fmax(hi, img[i]);
    ck_assert_msg((hi - lo) / hi < 0.015, "corrected scene varies by %.4f", (hi - lo) / hi);
    free(field), free(img);
}
END_TEST

START_TEST(flat_field_refuses_bad_input)
{
    float a[4] = {1, 2, NAN, 4}, b[4] = {1, 2, 3, 4}, f[4];
    const float *pages[2] = {b, a};
    ck_assert_int_eq(isl_flat_field_estimate(pages, 2, 2, 2, 1.0, f), ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "image 1: pixel (1, 0) is not finite"));
    float zero[4] = {1, 0, 1, 1};
    ck_assert_int_eq(isl_flat_field_apply(b, zero, 2, 2), ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "must be positive"));
    ck_assert_int_eq(isl_flat_field_estimate(pages, 2, 2, 2, -1.0, f), ISL_ERROR_INVALID_ARGUMENT);
    const float *holed[2] = {b, NULL};
    ck_assert_int_eq(isl_flat_field_estimate(holed, 2, 2, 2, 1.0, f), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_str_eq(isl_last_error(), "flat field: image 1 is NULL");
}
END_TEST

START_TEST(blurred_impulse_is_the_gaussian)
{
    /* An impulse far from the edges: the blur is the normalized 2-D Gaussian, cut at
     * round(4 sigma), so its mean 1 / (H W) field is G / mean(G). */
    enum { H = 61, W = 61 };
    float *imgs = calloc(3 * H * W, sizeof(float)), field[H * W];
    const float *pages[3] = {imgs, imgs + H * W, imgs + 2 * H * W};
    for (int i = 0; i < 3; i++)
        imgs[i * H * W + 30 * W + 30] = 1.0f; /* median: the impulse */
    const double sigma = 2.5;
    ck_assert_int_eq(isl_flat_field_estimate(pages, 3, H, W, sigma, field), ISL_OK);
    double z = 0;
    for (int i = -10; i <= 10; i++)
        z += exp(-0.5 * i * i / (sigma * sigma));
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int dy = y - 30, dx = x - 30;
            double g = abs(dy) <= 10 && abs(dx) <= 10
                           ? exp(-0.5 * (dy * dy + dx * dx) / (sigma * sigma)) / (z * z)
                           : 0.0;
            ck_assert_double_eq_tol(field[y * W + x], g * H * W, 1e-5);
        }
    free(imgs);
}
END_TEST

START_TEST(normalization_statistics_are_exact)
{
    enum { N = 10000 };
    float *img = malloc(sizeof(float) * N);
    uint64_t s = 3;
    for (int i = 0; i < N; i++) /* uniform: mean +- 1.73 sd, so nothing is clipped */
        img[i] = (float)(300.0 + 4000.0 * test_uniform(&s));
    ck_assert_int_eq(isl_normalize_light(img, N, ISL_LIGHT_TRANSMITTED), ISL_OK);
    double m = 0, v = 0;
    for (int i = 0; i < N; i++)
        m += img[i] / (double)N;
    for (int i = 0; i < N; i++)
        v += (img[i] - m) * (img[i] - m) / N;
    ck_assert_double_eq_tol(m, 0.5, 1e-6);
    ck_assert_double_eq_tol(sqrt(v), 0.125, 1e-6);

    /* Fluorescence, with clipping: 0, 0, 0, 0, 12 has mean 2.4 and sd 4.8, so 0 maps to
     * 0.25 - 2.4 / 4.8 * 0.125 = 0.1875 and 12 to 0.25 + 9.6 / 4.8 * 0.125 = 0.5. */
    float f[5] = {0, 0, 0, 0, 12};
    ck_assert_int_eq(isl_normalize_light(f, 5, ISL_LIGHT_FLUORESCENCE), ISL_OK);
    ck_assert_double_eq_tol(f[0], 0.1875, 1e-7);
    ck_assert_double_eq_tol(f[4], 0.5, 1e-7);
    /* Mean 0.25, sd 1: 0 -> 0.25 - 0.5 is clipped to 0, 12 -> 0.25 + 2 to 1. */
    float g[5] = {0, 0, 0, 0, 12};
    ck_assert_int_eq(isl_normalize(g, 5, 0.25, 1.0), ISL_OK);
    ck_assert_float_eq(g[0], 0.0f);
    ck_assert_float_eq(g[4], 1.0f);

    float c[3] = {7, 7, 7};
    ck_assert_int_eq(isl_normalize(c, 3, 0.5, 0.125), ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "constant"));
    c[1] = NAN;
    ck_assert_int_eq(isl_normalize(c, 3, 0.5, 0.125), ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "pixel 1 is not finite"));
    free(img);
}
END_TEST

/* A smooth analytic scene (Gaussian blobs) sampled anywhere, for sub-pixel shifts. */
typedef struct blob {
    double y, x, s, a;
} blob;
enum { BLOBS = 90 };

static void make_blobs(blob *b, uint64_t seed)
{
    for (int k = 0; k < BLOBS; k++) {
        b[k].y = test_uniform(&seed) * 200.0;
        b[k].x = test_uniform(&seed) * 240.0;
        b[k].s = 2.5 + 5.0 * test_uniform(&seed);
        b[k].a = 100.0 + 400.0 * test_uniform(&seed);
    }
}

static double scene_at(const blob *b, double y, double x)
{
    double v = 50.0;
    for (int k = 0; k < BLOBS; k++)
        v += b[k].a * exp(-((y - b[k].y) * (y - b[k].y) + (x - b[k].x) * (x - b[k].x)) /
                          (2.0 * b[k].s * b[k].s));
    return v;
}

/* A 3 x 3 grid of 72 x 88 tiles with nominal steps of 56 and 68 pixels (overlaps 16 and
 * 20) and the true positions jittered by up to +-5 pixels: offsets found by NCC (with a
 * search of +-8) within 0.5 pixel, the least-squares positions too, and the composite of
 * whole-pixel positions equal to the scene. */
static void stitch_grid(int subpixel)
{
    enum { R = 3, C = 3, H = 72, W = 88, N = R * C };
    blob b[BLOBS];
    make_blobs(b, 21);
    double truth[2 * N];
    uint64_t seed = 5;
    float *tiles = malloc(sizeof(float) * N * H * W);
    const float *t[N];
    for (int i = 0; i < N; i++) {
        double jy = 10.0 * test_uniform(&seed) - 5.0, jx = 10.0 * test_uniform(&seed) - 5.0;
        if (!subpixel)
            jy = round(jy), jx = round(jx);
        truth[2 * i] = 8.0 + (i / C) * 56.0 + jy;
        truth[2 * i + 1] = 8.0 + (i % C) * 68.0 + jx;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                tiles[((size_t)i * H + y) * W + x] =
                    (float)scene_at(b, truth[2 * i] + y, truth[2 * i + 1] + x);
        t[i] = tiles + (size_t)i * H * W;
    }
    int pair_tiles[2 * 12], pairs = 0;
    double offsets[2 * 12], pos[2 * N], worst = 0;
    for (int i = 0; i < N; i++)
        for (int dir = 0; dir < 2; dir++) {
            int j = dir ? i + C : i + 1;
            if ((dir && j >= N) || (!dir && i % C == C - 1))
                continue;
            double oy, ox, ncc;
            ck_assert_int_eq(isl_stitch_pair_offset(t[i], t[j], H, W, dir ? 56 : 0, dir ? 0 : 68,
                                                    8, &oy, &ox, &ncc),
                             ISL_OK);
            double ty = truth[2 * j] - truth[2 * i], tx = truth[2 * j + 1] - truth[2 * i + 1];
            ck_assert_msg(fabs(oy - ty) < 0.5 && fabs(ox - tx) < 0.5,
                          "pair %d-%d: (%g, %g), true (%g, %g)", i, j, oy, ox, ty, tx);
            worst = fmax(worst, fmax(fabs(oy - ty), fabs(ox - tx)));
            ck_assert_double_gt(ncc, 0.99);
            pair_tiles[2 * pairs] = i, pair_tiles[2 * pairs + 1] = j;
            offsets[2 * pairs] = oy, offsets[2 * pairs + 1] = ox;
            pairs++;
        }
    ck_assert_int_eq(pairs, 12);
    if (getenv("ISL_TEST_VERBOSE"))
        fprintf(stderr, "stitch %s: worst pair offset error %.3f px\n",
                subpixel ? "sub-pixel" : "whole-pixel", worst);
    ck_assert_int_eq(isl_stitch_solve(N, pairs, pair_tiles, offsets, pos), ISL_OK);
    for (int i = 0; i < N; i++) {
        ck_assert(fabs(pos[2 * i] - (truth[2 * i] - truth[0])) < 0.5);
        ck_assert(fabs(pos[2 * i + 1] - (truth[2 * i + 1] - truth[1])) < 0.5);
    }
    if (!subpixel) {
        int ch, cw;
        ck_assert_int_eq(isl_stitch_canvas_size(N, pos, H, W, &ch, &cw), ISL_OK);
        float *canvas = malloc(sizeof(float) * (size_t)ch * cw);
        /* In two bands, as a streaming writer would. */
        ck_assert_int_eq(isl_stitch_blend(t, N, pos, H, W, 0, ch / 2, cw, canvas), ISL_OK);
        ck_assert_int_eq(isl_stitch_blend(t, N, pos, H, W, ch / 2, ch - ch / 2, cw,
                                          canvas + (size_t)(ch / 2) * cw),
                         ISL_OK);
        double oy = INFINITY, ox = INFINITY;
        for (int i = 0; i < N; i++)
            oy = fmin(oy, truth[2 * i]), ox = fmin(ox, truth[2 * i + 1]);
        int covered = 0;
        for (int y = 0; y < ch; y++)
            for (int x = 0; x < cw; x++) {
                int in = 0;
                for (int i = 0; i < N; i++)
                    in |= y + oy >= truth[2 * i] && y + oy < truth[2 * i] + H &&
                          x + ox >= truth[2 * i + 1] && x + ox < truth[2 * i + 1] + W;
                if (!in) {
                    ck_assert_float_eq(canvas[(size_t)y * cw + x], 0.0f);
                    continue;
                }
                covered++;
                double want = scene_at(b, y + oy, x + ox);
                ck_assert_double_eq_tol(canvas[(size_t)y * cw + x], want, 1e-4 * want);
            }
        ck_assert_int_gt(covered, ch * cw * 9 / 10);
        free(canvas);
    }
    free(tiles);
}

START_TEST(stitch_recovers_whole_pixel_shifts)
{
    stitch_grid(0);
}
END_TEST

START_TEST(stitch_recovers_subpixel_shifts)
{
    stitch_grid(1);
}
END_TEST

START_TEST(stitch_refuses_bad_input)
{
    float flat[16 * 16];
    for (int i = 0; i < 16 * 16; i++)
        flat[i] = 3.0f;
    double oy, ox;
    ck_assert_int_eq(isl_stitch_pair_offset(flat, flat, 16, 16, 0, 10, 2, &oy, &ox, NULL),
                     ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "textured"));
    ck_assert_int_eq(isl_stitch_pair_offset(flat, flat, 16, 16, 0, 20, 2, &oy, &ox, NULL),
                     ISL_ERROR_INVALID_ARGUMENT);
    const int pt[4] = {0, 1, 2, 3};
    const double off[4] = {0, 10, 0, 10};
    double pos[8];
    ck_assert_int_eq(isl_stitch_solve(4, 2, pt, off, pos), ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "do not connect all 4 tiles"));
}
END_TEST

/* Fluorescence dust: N images of H x W through a camera of offset 100, a flat background
 * of 800, a grid of 12 x 12 cells (+600, period 16) shifted by (2 (i / 8), 2 (i % 8)) in
 * image i, so that every pixel is a cell in exactly 36 of the 64 images (their mean is a
 * flat 800 + 337.5), and dust disks of +300 and radius 10 (d^2 <= 110, kept exactly by the
 * 5 x 5 median), one of them cut by the image's edge. */
enum { DUST_N = 64, DUST_H = 96, DUST_W = 112 };
static const int dust_disks[][2] = {{30, 30}, {60, 70}, {88, 40}};

static double dust_at(int y, int x)
{
    for (size_t d = 0; d < sizeof dust_disks / sizeof *dust_disks; d++) {
        const int dy = y - dust_disks[d][0], dx = x - dust_disks[d][1];
        if (dy * dy + dx * dx <= 110)
            return 300.0;
    }
    return 0.0;
}

static double clean_at(int i, int y, int x)
{
    const int sy = 2 * (i / 8), sx = 2 * (i % 8);
    const int cell = ((y - sy) % 16 + 16) % 16 < 12 && ((x - sx) % 16 + 16) % 16 < 12;
    return 100.0 + 800.0 + (cell ? 600.0 : 0.0);
}

/* The images, with the dust or without. */
static float *dust_images(int with_dust)
{
    float *t = malloc(sizeof(float) * DUST_N * DUST_H * DUST_W);
    for (int i = 0; i < DUST_N; i++)
        for (int y = 0; y < DUST_H; y++)
            for (int x = 0; x < DUST_W; x++)
                t[((size_t)i * DUST_H + y) * DUST_W + x] =
                    (float)(clean_at(i, y, x) + (with_dust ? dust_at(y, x) : 0.0));
    return t;
}

static isl_status estimate_dust(const float *images, double offset, float *artifact,
                                int64_t *marked)
{
    const float *pages[DUST_N];
    for (int i = 0; i < DUST_N; i++)
        pages[i] = images + (size_t)i * DUST_H * DUST_W;
    return isl_dust_fluorescence_estimate(pages, DUST_N, DUST_H, DUST_W, offset, 0.1, 0.0,
                                          artifact, marked);
}

START_TEST(fluorescence_dust_known_artifact_removed)
{
    /* The mean image less the offset is 1137.5 + dust, so the local fill of the mask is
     * 1137.5, its blur too, and the artifact is the dust exactly (to float rounding). The
     * mask is the disks grown by a 5 x 5 square: counted here pixel by pixel. */
    float *images = dust_images(1), *artifact = malloc(sizeof(float) * DUST_H * DUST_W);
    int64_t marked = -1, want = 0;
    ck_assert_int_eq(estimate_dust(images, 100.0, artifact, &marked), ISL_OK);
    for (int y = 0; y < DUST_H; y++)
        for (int x = 0; x < DUST_W; x++) {
            int near = 0;
            for (int dy = -2; dy <= 2; dy++)
                for (int dx = -2; dx <= 2; dx++)
                    near |= dust_at(y + dy, x + dx) > 0.0 && y + dy >= 0 && y + dy < DUST_H &&
                            x + dx >= 0 && x + dx < DUST_W;
            want += near;
            ck_assert_msg(fabs(artifact[y * DUST_W + x] - dust_at(y, x)) < 1e-3,
                          "(%d, %d): artifact %.6f, dust %g", y, x, artifact[y * DUST_W + x],
                          dust_at(y, x));
        }
    ck_assert_int_eq(marked, want);
    /* Removing it from an image gives the clean image: cells crossing the disks' rims keep
     * their edges. */
    float *img = images + (size_t)5 * DUST_H * DUST_W;
    ck_assert_int_eq(isl_dust_fluorescence_remove(img, artifact, DUST_H, DUST_W), ISL_OK);
    for (int y = 0; y < DUST_H; y++)
        for (int x = 0; x < DUST_W; x++)
            ck_assert_double_eq_tol(img[y * DUST_W + x], clean_at(5, y, x), 1e-3);
    free(images), free(artifact);
}
END_TEST

START_TEST(fluorescence_dust_leaves_clean_images)
{
    float *images = dust_images(0), *artifact = malloc(sizeof(float) * DUST_H * DUST_W);
    int64_t marked = -1;
    ck_assert_int_eq(estimate_dust(images, 100.0, artifact, &marked), ISL_OK);
    ck_assert_int_eq(marked, 0);
    for (int p = 0; p < DUST_H * DUST_W; p++)
        ck_assert_float_eq(artifact[p], 0.0f);
    free(images), free(artifact);
}
END_TEST

START_TEST(fluorescence_dust_refuses_bad_input)
{
    float *images = dust_images(1), art[DUST_H * DUST_W];
    /* The offset at or above the images' level (the smallest mean is 1237.5). */
    ck_assert_int_eq(estimate_dust(images, 5000.0, art, NULL), ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "offset must be below the background"));
    ck_assert_int_eq(estimate_dust(images, NAN, art, NULL), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "sensor offset"));
    images[(size_t)7 * DUST_H * DUST_W + 3 * DUST_W + 4] = NAN;
    ck_assert_int_eq(estimate_dust(images, 100.0, art, NULL), ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "image 7: pixel (3, 4) is not finite"));
    const float *pages[1] = {images}, *holed[2] = {images, NULL};
    ck_assert_int_eq(isl_dust_fluorescence_estimate(holed, 2, 4, 4, 100, 0.1, 0, art, NULL),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_str_eq(isl_last_error(), "fluorescence dust: image 1 is NULL");
    ck_assert_int_eq(isl_dust_fluorescence_estimate(pages, 1, 0, 5, 100, 0.1, 0, art, NULL),
                     ISL_ERROR_SHAPE);
    ck_assert_int_eq(isl_dust_fluorescence_estimate(pages, 0, 4, 4, 100, 0.1, 0, art, NULL),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_dust_fluorescence_estimate(pages, 1, 4, 4, 100, 0.0, 0, art, NULL),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "threshold"));
    ck_assert_int_eq(isl_dust_fluorescence_estimate(pages, 1, 4, 4, 100, 0.1, -1, art, NULL),
                     ISL_ERROR_INVALID_ARGUMENT);
    float img[4] = {1, 2, 3, 4}, bad[4] = {0, INFINITY, 0, 0};
    ck_assert_int_eq(isl_dust_fluorescence_remove(img, bad, 2, 2), ISL_ERROR_VALUE);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "artifact: pixel (0, 1) is not finite"));
    ck_assert_int_eq(isl_dust_fluorescence_remove(img, NULL, 2, 2), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_dust_fluorescence_remove(img, bad, 2, -2), ISL_ERROR_SHAPE);
    free(images);
}
END_TEST

static Suite *preprocess_suite(void)
{
    Suite *s = suite_create("preprocess");
    TCase *tc = tcase_create("steps");
    tcase_add_test(tc, median_removes_specks_and_keeps_edges);
    tcase_add_test(tc, median_reaches_a_fixed_point);
    tcase_add_test(tc, downscale_averages_blocks);
    tcase_add_test(tc, dust_field_is_the_exact_median);
    tcase_add_test(tc, flat_field_removes_a_known_vignetting);
    tcase_add_test(tc, flat_field_refuses_bad_input);
    tcase_add_test(tc, fluorescence_dust_known_artifact_removed);
    tcase_add_test(tc, fluorescence_dust_leaves_clean_images);
    tcase_add_test(tc, fluorescence_dust_refuses_bad_input);
    tcase_add_test(tc, blurred_impulse_is_the_gaussian);
    tcase_add_test(tc, normalization_statistics_are_exact);
    tcase_add_test(tc, stitch_recovers_whole_pixel_shifts);
    tcase_add_test(tc, stitch_recovers_subpixel_shifts);
    tcase_add_test(tc, stitch_refuses_bad_input);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(preprocess_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
