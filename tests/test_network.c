/* The oneDNN engine against independent references: the naive double-precision network
 * (ref_net.c), the golden vectors of an independent implementation of the spec, and the
 * spec's own invariants (tiling, alignment). */
#include "isl.h"
#include "model.h"
#include "ref_net.h"
#include "test_util.h"
#include "tiff_io.h"

#include <check.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A small model whose every parameter matters: random batch-norm statistics too. */
static isl_model *random_model(int base, int nz, int heads, uint64_t seed)
{
    static const char *names[3] = {"dapi_confocal", "map2_confocal", "nfh_confocal"};
    isl_params p;
    ck_assert_int_eq(isl_params_alloc(&p, base, nz, heads, names, 1), 0);
    isl_params_init_random(&p, seed);
    test_randomize_bn(&p, seed + 1);
    isl_model *m = NULL;
    ck_assert_int_eq(isl_model_from_params(&p, &m), ISL_OK);
    return m;
}

static float *random_input(int nz, int h, int w, uint64_t seed)
{
    float *x = malloc(sizeof(float) * (size_t)nz * h * w);
    uint64_t s = seed;
    for (size_t i = 0; i < (size_t)nz * h * w; i++)
        x[i] = (float)test_uniform(&s);
    return x;
}

START_TEST(engine_matches_reference_network)
{
    /* 3 planes, non-square tile, two heads + autoencoder. */
    const int nz = 3, h = 250, w = 266;
    isl_model *m = random_model(8, nz, 2, 42);
    float *x = random_input(nz, h, w, 7);
    const int oh = h - 242, ow = w - 242;
    float *out[3];
    for (int k = 0; k < 3; k++)
        out[k] = malloc(sizeof(float) * (size_t)isl_model_head_channels(m, k) * oh * ow);
    ck_assert_int_eq(isl_predict_tile(m, NULL, x, h, w, out), ISL_OK);

    ref_t in = ref_new(nz, h, w), ref[3];
    for (size_t i = 0; i < (size_t)nz * h * w; i++)
        in.v[i] = x[i];
    ref_network(&m->params, &in, ref);
    for (int k = 0; k < 3; k++) {
        double max_err = 0, max_ref = 0;
        size_t n = (size_t)ref[k].c * ref[k].h * ref[k].w;
        ck_assert_int_eq(ref[k].c, isl_model_head_channels(m, k));
        ck_assert_int_eq(ref[k].h, oh);
        ck_assert_int_eq(ref[k].w, ow);
        for (size_t i = 0; i < n; i++) {
            max_err = fmax(max_err, fabs(ref[k].v[i] - out[k][i]));
            max_ref = fmax(max_ref, fabs(ref[k].v[i]));
        }
        printf("head %d: max |logit| %.3f, max error %.2e\n", k, max_ref, max_err);
        ck_assert(max_ref > 0.1); /* the comparison is not vacuous */
        ck_assert(max_err <= 1e-4 * fmax(1.0, max_ref));
        ref_free(&ref[k]);
        free(out[k]);
    }
    ref_free(&in);
    free(x);
    isl_model_free(m);
}
END_TEST

/* Predicts a whole stack with the given tile size; returns [heads][stats] images. */
static float **predict_all(const isl_model *m, const isl_stack *in, int tile, unsigned stat_mask)
{
    isl_predict_options *o;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    isl_stat stats[ISL_STAT_COUNT];
    int ns = 0;
    for (int s = 0; s < ISL_STAT_COUNT; s++)
        if (stat_mask & (1u << s))
            stats[ns++] = (isl_stat)s;
    ck_assert_int_eq(isl_predict_options_set_stats(o, ns, stats), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_tile_size(o, tile), ISL_OK);
    int nh = isl_model_num_heads(m), all[8];
    for (int h = 0; h < nh; h++)
        all[h] = h;
    ck_assert_int_eq(isl_predict_options_set_heads(o, nh, all), ISL_OK);
    float **outs = calloc((size_t)nh * ISL_STAT_COUNT, sizeof(float *));
    for (int h = 0; h < nh; h++)
        for (int s = 0; s < ISL_STAT_COUNT; s++)
            if (stat_mask & (1u << s))
                outs[h * ISL_STAT_COUNT + s] =
                    malloc(sizeof(float) * (size_t)in->num_z * in->height * in->width);
    ck_assert_msg(isl_predict_image(m, o, in, outs) == ISL_OK, "%s", isl_last_error());
    isl_predict_options_free(o);
    return outs;
}

static void free_all(const isl_model *m, float **outs)
{
    for (int i = 0; i < isl_model_num_heads(m) * ISL_STAT_COUNT; i++)
        free(outs[i]);
    free(outs);
}

START_TEST(tiled_prediction_equals_single_pass)
{
    const int nz = 2, h = 200, w = 233;
    isl_model *m = random_model(16, nz, 1, 3);
    uint16_t *raw = malloc(sizeof(uint16_t) * nz * h * w);
    uint64_t s = 5;
    for (int i = 0; i < nz * h * w; i++)
        raw[i] = (uint16_t)(test_uniform(&s) * 65535);
    isl_stack in = {raw, ISL_DTYPE_U16, nz, h, w};
    unsigned mask = (1u << ISL_STAT_COUNT) - 1;
    float **single = predict_all(m, &in, 0, mask);  /* one tile covers it */
    float **tiled = predict_all(m, &in, 330, mask); /* 3 x 3 tiles, overlapping */
    for (int hd = 0; hd < 2; hd++) {
        size_t n = (size_t)h * w * (hd == 1 ? nz : 1);
        for (int st = 0; st < ISL_STAT_COUNT; st++) {
            const float *a = single[hd * ISL_STAT_COUNT + st], *b = tiled[hd * ISL_STAT_COUNT + st];
            size_t differ = 0;
            double max_diff = 0;
            for (size_t i = 0; i < n; i++) {
                double d = fabs(a[i] - b[i]);
                differ += d > 0;
                max_diff = fmax(max_diff, d);
            }
            printf("head %d %-9s: %zu of %zu pixels differ, max %.2e\n", hd,
                   isl_stat_name((isl_stat)st), differ, n, max_diff);
            /* Identical up to float rounding: oneDNN may block a 1x1 convolution's sum
             * differently for another tile shape (seen: 5e-6 on the mean at 0.5% of
             * pixels); a median or mode can then flip by one bin where it sits on a tie. */
            if (st == ISL_STAT_MEDIAN || st == ISL_STAT_MODE) {
                ck_assert(max_diff <= 1.0 / 255 + 1e-6);
                ck_assert(differ <= n / 1000);
            } else {
                ck_assert(max_diff <= 2e-5);
            }
        }
    }
    free_all(m, single);
    free_all(m, tiled);
    free(raw);
    isl_model_free(m);
}
END_TEST

START_TEST(aligned_patches_equal_the_large_pass)
{
    const int nz = 2, big = 250 + 16 * 3, obig = big - 242;
    isl_model *m = random_model(16, nz, 1, 11);
    float *x = random_input(nz, big, big, 13);
    float *large = malloc(sizeof(float) * 256 * obig * obig);
    float *outs[2] = {large, NULL};
    ck_assert_int_eq(isl_predict_tile(m, NULL, x, big, big, outs), ISL_OK);
    float *patch_in = malloc(sizeof(float) * nz * 250 * 250), patch[256 * 64];
    double max_logit = 0;
    for (size_t i = 0; i < (size_t)256 * obig * obig; i++)
        max_logit = fmax(max_logit, fabs(large[i]));
    printf("large pass: max |logit| %.2f\n", max_logit);
    outs[0] = patch;
    for (int oy = 0; oy <= 48; oy += 8) {
        for (int ox = 0; ox <= 48; ox += 24) {
            for (int z = 0; z < nz; z++)
                for (int y = 0; y < 250; y++)
                    memcpy(patch_in + ((size_t)z * 250 + y) * 250,
                           x + ((size_t)z * big + oy + y) * big + ox, sizeof(float) * 250);
            ck_assert_int_eq(isl_predict_tile(m, NULL, patch_in, 250, 250, outs), ISL_OK);
            double max_diff = 0;
            for (int c = 0; c < 256; c++)
                for (int i = 0; i < 8; i++)
                    for (int j = 0; j < 8; j++)
                        max_diff = fmax(max_diff, fabs(patch[(c * 8 + i) * 8 + j] -
                                                       large[((size_t)c * obig + oy + i) * obig + ox + j]));
            int aligned = oy % 16 == 0 && ox % 16 == 0;
            printf("patch at (%d, %d): max difference %.2e (%s)\n", oy, ox, max_diff,
                   aligned ? "aligned" : "off the 16-pixel grid");
            if (aligned)
                ck_assert(max_diff < 1e-4 * max_logit);
            else
                ck_assert(max_diff > 1e-2 * max_logit); /* another sampling phase: must differ */
        }
    }
    free(patch_in);
    free(large);
    free(x);
    isl_model_free(m);
}
END_TEST

/* ---- golden vectors -------------------------------------------------------------- */

static int golden_paths(char *model, char *input, char *expected, size_t n)
{
    const char *root = getenv("ISL_SOURCE_ROOT");
    snprintf(model, n, "%s/../shared/testdata/golden-base32/model.h5", root ? root : ".");
    snprintf(input, n, "%s/../shared/testdata/golden-base32/input.tif", root ? root : ".");
    snprintf(expected, n, "%s/../shared/testdata/golden-base32/expected.h5", root ? root : ".");
    FILE *f = fopen(expected, "rb");
    if (!f) {
        printf("SKIPPED: golden vectors not found at %s\n", expected);
        return 0;
    }
    fclose(f);
    return 1;
}

static float *read_h5(hid_t file, const char *name, size_t expect)
{
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    ck_assert_msg(d >= 0, "missing %s", name);
    hid_t sp = H5Dget_space(d);
    ck_assert_int_eq((size_t)H5Sget_simple_extent_npoints(sp), expect);
    float *v = malloc(sizeof(float) * expect);
    ck_assert(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    H5Sclose(sp);
    H5Dclose(d);
    return v;
}

START_TEST(golden_vectors)
{
    char mp[1024], ip[1024], ep[1024];
    if (!golden_paths(mp, ip, ep, sizeof(mp)))
        return;
    isl_model *m;
    ck_assert_msg(isl_model_load(mp, &m) == ISL_OK, "%s", isl_last_error());
    isl_tiff_stack st;
    ck_assert_msg(isl_tiff_read_stack(ip, 13, &st) == ISL_OK, "%s", isl_last_error());
    const int H = st.height, W = st.width;
    ck_assert_int_eq(H, 266);
    ck_assert_int_eq(W, 300);
    hid_t f = H5Fopen(ep, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert(f >= 0);

    /* Statistics through the whole-image path (padding, tiling, softmax, stats). */
    isl_stack in = {st.data, st.dtype, 13, H, W};
    float **outs = predict_all(m, &in, 0, (1u << ISL_STAT_MEDIAN) | (1u << ISL_STAT_MEAN));
    const char *heads[2] = {"dapi_confocal", "nfh_confocal"};
    for (int k = 0; k < 2; k++) {
        char name[128];
        int hd = isl_model_head_index(m, heads[k]);
        snprintf(name, sizeof(name), "%s/mean", heads[k]);
        float *mean = read_h5(f, name, (size_t)H * W);
        snprintf(name, sizeof(name), "%s/median", heads[k]);
        float *median = read_h5(f, name, (size_t)H * W);
        double max_mean = 0;
        size_t median_differs = 0;
        for (size_t i = 0; i < (size_t)H * W; i++) {
            max_mean = fmax(max_mean, fabs(mean[i] - outs[hd * ISL_STAT_COUNT + ISL_STAT_MEAN][i]));
            /* k / 255 rounded to float: identical up to the last bit. */
            median_differs += fabs(median[i] - outs[hd * ISL_STAT_COUNT + ISL_STAT_MEDIAN][i]) > 1e-6;
        }
        printf("golden %s: mean max error %.2e, median differs at %zu pixels\n", heads[k],
               max_mean, median_differs);
        ck_assert(max_mean < 1e-4);
        ck_assert(median_differs <= (size_t)H * W / 1000);
        free(mean);
        free(median);
    }
    float *plane6 = read_h5(f, "autoencoder/plane6_mean", (size_t)H * W);
    const float *ae = outs[2 * ISL_STAT_COUNT + ISL_STAT_MEAN] + (size_t)6 * H * W;
    double max_ae = 0;
    for (size_t i = 0; i < (size_t)H * W; i++)
        max_ae = fmax(max_ae, fabs(plane6[i] - ae[i]));
    printf("golden autoencoder plane 6 mean: max error %.2e\n", max_ae);
    ck_assert(max_ae < 1e-4);
    free(plane6);
    free_all(m, outs);

    /* Logits at sample pixels from one pass over the padded image, built here with the
     * spec's padding: reflect 121 before, 121 + e after. */
    const int ph = 250 + 16 * ((H + 242 - 250 + 15) / 16), pw = 250 + 16 * ((W + 242 - 250 + 15) / 16);
    float *padded = malloc(sizeof(float) * 13 * ph * pw);
    for (int z = 0; z < 13; z++)
        for (int y = 0; y < ph; y++)
            for (int x = 0; x < pw; x++)
                padded[((size_t)z * ph + y) * pw + x] =
                    ((const uint16_t *)st.data)[((size_t)z * H + test_reflect(y - 121, H)) * W +
                                                test_reflect(x - 121, W)] / 65535.0f;
    const int oh = ph - 242, ow = pw - 242;
    float *logits[3];
    for (int k = 0; k < 3; k++)
        logits[k] = malloc(sizeof(float) * (size_t)isl_model_head_channels(m, k) * oh * ow);
    ck_assert_int_eq(isl_predict_tile(m, NULL, padded, ph, pw, logits), ISL_OK);
    float *sy = read_h5(f, "sample_y", 64), *sx = read_h5(f, "sample_x", 64);
    const char *all[3] = {"dapi_confocal", "nfh_confocal", "autoencoder"};
    for (int k = 0; k < 3; k++) {
        char name[128];
        int hd = isl_model_head_index(m, all[k]), ch = isl_model_head_channels(m, hd);
        snprintf(name, sizeof(name), "%s/logits_at_samples", all[k]);
        float *exp = read_h5(f, name, (size_t)64 * ch);
        double max_err = 0;
        for (int i = 0; i < 64; i++)
            for (int c = 0; c < ch; c++)
                max_err = fmax(max_err, fabs(exp[(size_t)i * ch + c] -
                                             logits[hd][((size_t)c * oh + (int)sy[i]) * ow + (int)sx[i]]));
        printf("golden %s logits at samples: max error %.2e\n", all[k], max_err);
        ck_assert(max_err < 1e-3);
        free(exp);
    }
    /* The 250 -> 8 patch network on the first window. */
    float *patch_in = malloc(sizeof(float) * 13 * 250 * 250), patch[256 * 64];
    for (int z = 0; z < 13; z++)
        for (int y = 0; y < 250; y++)
            memcpy(patch_in + ((size_t)z * 250 + y) * 250, padded + ((size_t)z * ph + y) * pw,
                   sizeof(float) * 250);
    float *pouts[3] = {patch, NULL, NULL};
    ck_assert_int_eq(isl_predict_tile(m, NULL, patch_in, 250, 250, pouts), ISL_OK);
    float *exp = read_h5(f, "patch_0_0_logits_head0", 256 * 64);
    double max_patch = 0;
    for (int i = 0; i < 256 * 64; i++)
        max_patch = fmax(max_patch, fabs(exp[i] - patch[i]));
    printf("golden patch 0,0: max error %.2e\n", max_patch);
    ck_assert(max_patch < 1e-3);
    free(exp);
    free(patch_in);
    free(sy);
    free(sx);
    for (int k = 0; k < 3; k++)
        free(logits[k]);
    free(padded);
    H5Fclose(f);
    isl_tiff_stack_free(&st);
    isl_model_free(m);
}
END_TEST

int main(void)
{
    const test_case cases[] = {{"reference", engine_matches_reference_network},
                 {"tiling", tiled_prediction_equals_single_pass},
                 {"alignment", aligned_patches_equal_the_large_pass},
                 {"golden", golden_vectors}};
    return test_run_cases("network", cases, sizeof(cases) / sizeof(cases[0]), 600);
}
