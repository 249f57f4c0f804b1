/* The public API: statistics, model creation and round trips, concurrency, and every
 * bad input getting its status and message (never a crash). */
#include "isl.h"
#include "kernels.h"
#include "test_util.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *three_heads[3] = {"dapi_confocal", "map2_confocal", "nfh_confocal"};

static isl_model *small_model(int base, int nz, uint64_t seed)
{
    return test_new_model(base, nz, 1, three_heads, seed, "none");
}

static void tmp_path(char *buf, size_t n, const char *name)
{
    const char *dir = getenv("ISL_TEST_TMPDIR");
    snprintf(buf, n, "%s/api-%d-%s", dir ? dir : "/tmp", (int)getpid(), name);
}

/* ---- statistics ------------------------------------------------------------------- */

START_TEST(stats_of_a_hand_made_distribution)
{
    /* p = [1/4, 1/4, 1/2, ~0] over 4 classes (k / 3 in [0, 1]). */
    const float logits[4] = {0.0f, 0.0f, logf(2.0f), -100.0f};
    float v;
    ck_assert_int_eq(isl_stats(logits, 4, 1, 1, ISL_STAT_MEDIAN, &v), ISL_OK);
    ck_assert_float_eq_tol(v, 1.0f / 3, 1e-6f); /* cumulative 1/4, 1/2: reaches 0.5 at k = 1 */
    ck_assert_int_eq(isl_stats(logits, 4, 1, 1, ISL_STAT_MEAN, &v), ISL_OK);
    ck_assert_float_eq_tol(v, 1.25f / 3, 1e-6f); /* (0 + 1/4 + 2/2) / 3 */
    ck_assert_int_eq(isl_stats(logits, 4, 1, 1, ISL_STAT_MODE, &v), ISL_OK);
    ck_assert_float_eq_tol(v, 2.0f / 3, 1e-6f);
    ck_assert_int_eq(isl_stats(logits, 4, 1, 1, ISL_STAT_STD, &v), ISL_OK);
    ck_assert_float_eq_tol(v, sqrtf(0.6875f) / 3, 1e-6f); /* E[k^2] - E[k]^2 = 2.25 - 1.5625 */
    ck_assert_int_eq(isl_stats(logits, 4, 1, 1, ISL_STAT_ENTROPY, &v), ISL_OK);
    ck_assert_float_eq_tol(v, 0.75f, 1e-5f); /* (2 (1/4) ln 4 + (1/2) ln 2) / ln 4 */
    ck_assert_int_eq(isl_stats(logits, 4, 1, 1, ISL_STAT_P_NONZERO, &v), ISL_OK);
    ck_assert_float_eq_tol(v, 0.75f, 1e-6f);
}
END_TEST

START_TEST(stats_with_stride_and_many_pixels)
{
    /* 100 distributions, channel-major: pixel i is certain of bin i % 256. */
    enum { N = 100, K = 256 };
    float *l = malloc(sizeof(float) * N * K), out[N];
    for (int k = 0; k < K; k++)
        for (int i = 0; i < N; i++)
            l[k * N + i] = k == (i * 7) % K ? 30.0f : 0.0f;
    ck_assert_int_eq(isl_stats(l, K, N, N, ISL_STAT_MEDIAN, out), ISL_OK);
    for (int i = 0; i < N; i++)
        ck_assert_float_eq_tol(out[i], ((i * 7) % K) / 255.0f, 1e-6f);
    ck_assert_int_eq(isl_stats(l, K, N, N, ISL_STAT_ENTROPY, out), ISL_OK);
    for (int i = 0; i < N; i++)
        ck_assert(out[i] < 1e-8f);
    for (int i = 0; i < N * K; i++)
        l[i] = 0.5f;
    ck_assert_int_eq(isl_stats(l, K, N, N, ISL_STAT_ENTROPY, out), ISL_OK);
    ck_assert_float_eq_tol(out[0], 1.0f, 1e-5f); /* uniform */
    l[3] = NAN;
    ck_assert_int_eq(isl_stats(l, K, N, N, ISL_STAT_MEAN, out), ISL_ERROR_VALUE);
    ck_assert_int_eq(isl_stats(l, 1, N, N, ISL_STAT_MEAN, out), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_stats(l, K, N, N, (isl_stat)99, out), ISL_ERROR_INVALID_ARGUMENT);
    free(l);
}
END_TEST

START_TEST(fast_tanh_tracks_libm)
{
    /* The fused BNAct kernels use their own vectorizable tanh: it must agree with libm's
     * over the whole range (saturation included) to float rounding. */
    enum { N = 40001 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++)
        x[i] = -100.0f + 200.0f * i / (N - 1) * (i % 2 ? 1.0f : 0.05f);
    isl_kernel_tanh(x, N, y);
    double max_err = 0;
    for (int i = 0; i < N; i++)
        max_err = fmax(max_err, fabs(y[i] - tanh((double)x[i])));
    ck_assert_msg(max_err < 3e-7, "max error %g", max_err);
    float tiny = 1e-6f, out;
    isl_kernel_tanh(&tiny, 1, &out);
    ck_assert_float_eq_tol(out, 1e-6f, 1e-7f);
    free(x);
    free(y);
}
END_TEST

START_TEST(fused_pool_bnact_matches_pooling_then_bnact)
{
    /* FP32 plans compute the expand BNAct's max pooling on the fly: compare with pooling
     * done first (plain loops over the nChw16c and nChw8c layouts), for in (3x3, stride 1)
     * and down (4x4, stride 2) modules. Pooled values are exact, so relu must be too. */
    const int ks[2] = {3, 4}, strides[2] = {1, 2};
    for (int t = 0; t < 4; t++) {
        const int k = ks[t % 2], st = strides[t % 2], blk = t < 2 ? 16 : 8;
        const int ac = 32, xc = 48, xh = 37, xw = 29;
        const int oh = (xh - k) / st + 1, ow = (xw - k) / st + 1, c = ac + xc;
        const size_t opx = (size_t)oh * ow;
        float *a = malloc(sizeof(float) * ac * opx), *x = malloc(sizeof(float) * xc * xh * xw);
        float *relu = malloc(sizeof(float) * c * opx), *th = malloc(sizeof(float) * c * opx);
        float scale[80], shift[80];
        for (size_t i = 0; i < (size_t)ac * opx; i++)
            a[i] = (float)((i * 2654435761u) % 2001) / 500.0f - 2.0f;
        for (size_t i = 0; i < (size_t)xc * xh * xw; i++)
            x[i] = (float)((i * 40503u + 7u) % 1999) / 400.0f - 2.5f;
        for (int i = 0; i < c; i++) {
            scale[i] = 0.5f + 0.01f * i * (i % 2 ? 1.0f : -1.0f);
            shift[i] = 0.02f * (i - 40);
        }
        isl_kernel_bnact_pool(a, ac, x, xc, xh, xw, k, st, oh, ow, blk, scale, shift, relu, th);
        for (int ch = 0; ch < c; ch++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    const int b = ch / blk, l = ch % blk;
                    float v;
                    if (ch < ac) {
                        v = a[(((size_t)b * oh + oy) * ow + ox) * blk + l];
                    } else {
                        const int xb = (ch - ac) / blk;
                        v = -INFINITY;
                        for (int i = 0; i < k; i++)
                            for (int j = 0; j < k; j++)
                                v = fmaxf(v, x[(((size_t)xb * xh + oy * st + i) * xw + ox * st +
                                                j) * blk + l]);
                    }
                    const float y = scale[ch] * v + shift[ch];
                    const size_t o = (((size_t)b * oh + oy) * ow + ox) * blk + l;
                    ck_assert_msg(relu[o] == (y > 0 ? y : 0.0f),
                                  "relu, blk %d k %d, channel %d (%d, %d)", blk, k, ch, oy, ox);
                    ck_assert_msg(fabs(th[o] - tanh((double)y)) < 3e-7,
                                  "tanh, blk %d k %d, channel %d (%d, %d): %g, not %g", blk, k, ch,
                                  oy, ox, th[o], tanh((double)y));
                }
        free(a);
        free(x);
        free(relu);
        free(th);
    }
}
END_TEST

START_TEST(stat_names_round_trip)
{
    for (int s = 0; s < ISL_STAT_COUNT; s++)
        ck_assert_int_eq(isl_stat_from_name(isl_stat_name((isl_stat)s)), s);
    ck_assert_int_eq(isl_stat_from_name("average"), -1);
    ck_assert_ptr_null(isl_stat_name(ISL_STAT_COUNT));
    ck_assert_str_eq(isl_status_string(ISL_ERROR_SHAPE), "shape mismatch");
    ck_assert_int_eq(isl_version_number(), ISL_VERSION_NUMBER);
    ck_assert_str_eq(isl_version_string(), ISL_VERSION_STRING);
}
END_TEST

START_TEST(uncertain_mask_thresholds_std)
{
    /* Above the threshold (strictly) or NaN is uncertain; at or below it is not. */
    const float std[] = {0.0f, 0.1f, 0.15f, 0.1501f, 0.5f, NAN, 1.0f, 0.149f};
    const unsigned char want[] = {0, 0, 0, 1, 1, 1, 1, 0};
    unsigned char mask[8];
    size_t n = 99;
    ck_assert_int_eq(isl_uncertain_mask(std, 8, 0.15f, mask, &n), ISL_OK);
    ck_assert_uint_eq(n, 4);
    ck_assert_mem_eq(mask, want, sizeof(want));
    ck_assert_int_eq(isl_uncertain_mask(std, 8, 0.6f, NULL, &n), ISL_OK);
    ck_assert_uint_eq(n, 2); /* 1.0 and NaN */
    ck_assert_int_eq(isl_uncertain_mask(std, 0, 0.15f, NULL, &n), ISL_OK);
    ck_assert_uint_eq(n, 0);
    const float bad[] = {0.0f, -1.0f, NAN, INFINITY};
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(isl_uncertain_mask(std, 8, bad[i], mask, &n), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_uncertain_mask(NULL, 8, 0.15f, mask, &n), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_uncertain_mask(std, 8, 0.15f, mask, NULL), ISL_ERROR_INVALID_ARGUMENT);
}
END_TEST

/* The summary line, pinned word for word: 123 of 1000 pixels is 12.3%, 1 of 3 is 33.3%. */
START_TEST(uncertainty_summary_text)
{
    const char *const names[] = {"dapi_confocal", "nfh"};
    const size_t uncertain[] = {123, 1000};
    char line[128];
    ck_assert_int_eq(isl_uncertainty_summary(2, names, uncertain, 1000, 0.15f, line, sizeof(line)),
                     ISL_OK);
    ck_assert_str_eq(line, "uncertain (predicted std > 0.15): dapi_confocal 12.3%, nfh 100.0% of "
                           "the field");
    const size_t third[] = {1};
    ck_assert_int_eq(isl_uncertainty_summary(1, names + 1, third, 3, 0.5f, line, sizeof(line)),
                     ISL_OK);
    ck_assert_str_eq(line, "uncertain (predicted std > 0.50): nfh 33.3% of the field");
    /* 56 characters and the NUL: 57 bytes fit, 56 do not (and leave an empty string). */
    ck_assert_int_eq(isl_uncertainty_summary(1, names + 1, third, 3, 0.5f, line, 57), ISL_OK);
    ck_assert_int_eq(isl_uncertainty_summary(1, names + 1, third, 3, 0.5f, line, 56),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_str_eq(line, "");
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "needs 57 bytes"));
    ck_assert_int_eq(isl_uncertainty_summary(0, names, uncertain, 1000, 0.15f, line, 128),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_uncertainty_summary(1, names, uncertain, 0, 0.15f, line, 128),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_uncertainty_summary(1, names, uncertain, 100, 0.15f, line, 128),
                     ISL_ERROR_INVALID_ARGUMENT); /* 123 of 100 */
    ck_assert_int_eq(isl_uncertainty_summary(1, names, uncertain, 1000, NAN, line, 128),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_uncertainty_summary(1, names, uncertain, 1000, 0.15f, NULL, 128),
                     ISL_ERROR_INVALID_ARGUMENT);
}
END_TEST

/* ---- models --------------------------------------------------------------------- */

START_TEST(parameter_count_of_the_paper_network)
{
    /* Base 400, 13 planes, 3 label heads + autoencoder. 8,673,464 stored floats, counted
     * independently by summing the tensor sizes of the PyTorch oracle
     * (tests/oracle/isl_torch.py build_random(400, 13, 3 heads)); the spec says "about
     * 8.2 million" for the trunk, which is 8,144,056 of them. */
    isl_model_config c;
    isl_model_config_init(&c);
    c.num_heads = 3;
    c.head_names = three_heads;
    isl_model *m;
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_OK);
    ck_assert_int_eq(isl_model_parameter_count(m), 8673464);
    ck_assert_int_eq(isl_model_base_depth(m), 400);
    ck_assert_int_eq(isl_model_num_z(m), 13);
    ck_assert_int_eq(isl_model_num_heads(m), 4);
    ck_assert_str_eq(isl_model_head_name(m, 3), "autoencoder");
    ck_assert_int_eq(isl_model_head_channels(m, 3), 13 * 256);
    ck_assert_int_eq(isl_model_head_index(m, "map2_confocal"), 1);
    ck_assert_int_eq(isl_model_head_index(m, "tubulin"), -1);
    ck_assert_ptr_null(isl_model_head_name(m, 4));
    ck_assert_str_eq(isl_model_input_normalization(m), "none");
    isl_model_free(m);
}
END_TEST

START_TEST(save_load_round_trip_predicts_identically)
{
    char path[512];
    tmp_path(path, sizeof(path), "roundtrip.h5");
    isl_model *a = small_model(16, 2, 9), *b = NULL;
    ck_assert_int_eq(isl_model_save(a, path), ISL_OK);
    ck_assert_msg(isl_model_load(path, &b) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_model_parameter_count(a), isl_model_parameter_count(b));
    float *x = malloc(sizeof(float) * 2 * 250 * 250), ya[256 * 64], yb[256 * 64];
    uint64_t s = 1;
    for (int i = 0; i < 2 * 250 * 250; i++)
        x[i] = (float)test_uniform(&s);
    float *oa[2] = {ya, NULL}, *ob[2] = {yb, NULL};
    ck_assert_int_eq(isl_predict_tile(a, NULL, x, 250, 250, oa), ISL_OK);
    ck_assert_int_eq(isl_predict_tile(b, NULL, x, 250, 250, ob), ISL_OK);
    ck_assert_mem_eq(ya, yb, sizeof(ya));
    free(x);
    isl_model_free(a);
    isl_model_free(b);
    unlink(path);
}
END_TEST

START_TEST(seeds_decide_the_weights)
{
    isl_model *a = small_model(8, 1, 1), *b = small_model(8, 1, 1), *c = small_model(8, 1, 2);
    float *x = calloc(250 * 250, sizeof(float)), ya[256 * 64], yb[256 * 64], yc[256 * 64];
    for (int i = 0; i < 250 * 250; i++)
        x[i] = (i % 13) / 13.0f;
    float *oa[2] = {ya, NULL}, *ob[2] = {yb, NULL}, *oc[2] = {yc, NULL};
    ck_assert_int_eq(isl_predict_tile(a, NULL, x, 250, 250, oa), ISL_OK);
    ck_assert_int_eq(isl_predict_tile(b, NULL, x, 250, 250, ob), ISL_OK);
    ck_assert_int_eq(isl_predict_tile(c, NULL, x, 250, 250, oc), ISL_OK);
    ck_assert_mem_eq(ya, yb, sizeof(ya));
    ck_assert(memcmp(ya, yc, sizeof(ya)) != 0);
    free(x);
    isl_model_free(a);
    isl_model_free(b);
    isl_model_free(c);
}
END_TEST

START_TEST(bad_model_configs_are_refused)
{
    isl_model_config c;
    isl_model *m = (isl_model *)0x1;
    isl_model_config_init(&c);
    c.base_depth = 2;
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_ptr_null(m);
    ck_assert(strstr(isl_last_error(), "base depth") != NULL);
    isl_model_config_init(&c);
    c.num_z = 0;
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_ERROR_INVALID_ARGUMENT);
    const char *dup[2] = {"dapi", "dapi"}, *reserved[1] = {"autoencoder"}, *slash[1] = {"a/b"};
    isl_model_config_init(&c);
    c.num_heads = 2;
    c.head_names = dup;
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert(strstr(isl_last_error(), "twice") != NULL);
    c.num_heads = 1;
    c.head_names = reserved;
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_ERROR_INVALID_ARGUMENT);
    c.head_names = slash;
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_ERROR_INVALID_ARGUMENT);
    isl_model_config_init(&c);
    c.input_normalization = "local";
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert(strstr(isl_last_error(), "local") != NULL);
    c.struct_size = 4;
    ck_assert_int_eq(isl_model_create(&c, &m), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_model_create(NULL, &m), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_model_load("/nonexistent/model.h5", &m), ISL_ERROR_IO);
    ck_assert(strstr(isl_last_error(), "/nonexistent/model.h5") != NULL);
    ck_assert_int_eq(isl_model_load(NULL, &m), ISL_ERROR_INVALID_ARGUMENT);
    isl_model_free(NULL); /* a no-op */
    ck_assert_int_eq(isl_model_base_depth(NULL), 0);
}
END_TEST

/* ---- prediction errors ---------------------------------------------------------- */

START_TEST(bad_prediction_inputs_are_refused)
{
    isl_model *m = small_model(8, 2, 3);
    float *x = calloc(2 * 266 * 266, sizeof(float)), *y = malloc(sizeof(float) * 256 * 24 * 24);
    float *outs[2] = {y, NULL};
    ck_assert_int_eq(isl_predict_tile(m, NULL, x, 260, 266, outs), ISL_ERROR_SHAPE);
    ck_assert(strstr(isl_last_error(), "250 + 16m") != NULL);
    ck_assert_int_eq(isl_predict_tile(m, NULL, x, 234, 234, outs), ISL_ERROR_SHAPE);
    x[7] = NAN;
    ck_assert_int_eq(isl_predict_tile(m, NULL, x, 266, 266, outs), ISL_ERROR_VALUE);
    x[7] = INFINITY;
    ck_assert_int_eq(isl_predict_tile(m, NULL, x, 266, 266, outs), ISL_ERROR_VALUE);
    x[7] = 0;
    ck_assert_int_eq(isl_predict_tile(NULL, NULL, x, 266, 266, outs), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_predict_tile(m, NULL, NULL, 266, 266, outs), ISL_ERROR_INVALID_ARGUMENT);

    /* Whole images: wrong plane count, NaN, values outside [0, 1], bad sizes. */
    float img[2 * 20 * 30] = {0}, med[20 * 30];
    float *images[2 * ISL_STAT_COUNT] = {med};
    isl_stack in = {img, ISL_DTYPE_F32, 3, 20, 30};
    ck_assert_int_eq(isl_predict_image(m, NULL, &in, images), ISL_ERROR_SHAPE);
    ck_assert(strstr(isl_last_error(), "3 z planes") != NULL);
    in.num_z = 2;
    img[100] = NAN;
    ck_assert_int_eq(isl_predict_image(m, NULL, &in, images), ISL_ERROR_VALUE);
    img[100] = 7.5f;
    ck_assert_int_eq(isl_predict_image(m, NULL, &in, images), ISL_ERROR_VALUE);
    ck_assert(strstr(isl_last_error(), "outside [0, 1]") != NULL);
    img[100] = 0.5f;
    in.height = 0;
    ck_assert_int_eq(isl_predict_image(m, NULL, &in, images), ISL_ERROR_SHAPE);
    in.height = 20;
    in.dtype = (isl_dtype)9;
    ck_assert_int_eq(isl_predict_image(m, NULL, &in, images), ISL_ERROR_INVALID_ARGUMENT);
    in.dtype = ISL_DTYPE_F32;
    in.data = NULL;
    ck_assert_int_eq(isl_predict_image(m, NULL, &in, images), ISL_ERROR_INVALID_ARGUMENT);
    in.data = img;
    images[0] = NULL; /* the median of head 0 is selected by default */
    ck_assert_int_eq(isl_predict_image(m, NULL, &in, images), ISL_ERROR_INVALID_ARGUMENT);
    images[0] = med;
    ck_assert_int_eq(isl_predict_image(m, NULL, &in, images), ISL_OK);

    /* Options. */
    isl_predict_options *o;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_tile_size(o, 300), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_predict_options_set_tile_size(o, 250), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_predict_options_set_threads(o, -1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_predict_options_set_stats(o, 0, NULL), ISL_ERROR_INVALID_ARGUMENT);
    isl_stat bad_stat = (isl_stat)17;
    ck_assert_int_eq(isl_predict_options_set_stats(o, 1, &bad_stat), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_predict_options_set_precision(o, (isl_precision)5), ISL_ERROR_INVALID_ARGUMENT);
    int head = 7;
    ck_assert_int_eq(isl_predict_options_set_heads(o, 1, &head), ISL_OK);
    ck_assert_int_eq(isl_predict_image(m, o, &in, images), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert(strstr(isl_last_error(), "head 7") != NULL);
    ck_assert_int_eq(isl_predict_options_set_tile_size(NULL, 266), ISL_ERROR_INVALID_ARGUMENT);
    isl_predict_options_free(o);
    isl_predict_options_free(NULL);
    free(x);
    free(y);
    isl_model_free(m);
}
END_TEST

static int cancel_after_first(void *user, int64_t done, int64_t total)
{
    int *calls = user;
    ck_assert(done <= total);
    return ++*calls >= 1;
}

START_TEST(progress_reports_and_cancels)
{
    isl_model *m = small_model(8, 1, 4);
    /* 40 x 40 in tiles of 266 (24 outputs, stepping by 16): 3 x 3 tiles. */
    float *img = calloc(40 * 40, sizeof(float)), *med = malloc(sizeof(float) * 40 * 40);
    float *images[2 * ISL_STAT_COUNT] = {med};
    isl_stack in = {img, ISL_DTYPE_F32, 1, 40, 40};
    isl_predict_options *o;
    int calls = 0;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_tile_size(o, 266), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_progress(o, cancel_after_first, &calls), ISL_OK);
    ck_assert_int_eq(isl_predict_image(m, o, &in, images), ISL_ERROR_CANCELLED);
    ck_assert_int_eq(calls, 1);
    /* A flag set beforehand (as another thread would) cancels at the first tile. */
    volatile int stop = 1;
    ck_assert_int_eq(isl_predict_options_set_progress(o, NULL, NULL), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_cancel_flag(o, &stop), ISL_OK);
    ck_assert_int_eq(isl_predict_image(m, o, &in, images), ISL_ERROR_CANCELLED);
    stop = 0;
    ck_assert_int_eq(isl_predict_image(m, o, &in, images), ISL_OK);
    isl_predict_options_free(o);
    free(img);
    free(med);
    isl_model_free(m);
}
END_TEST

/* ---- concurrency -------------------------------------------------------------- */

typedef struct job {
    const isl_model *m;
    const float *x;
    float *y;
    isl_status status;
} job;

static void *predict_job(void *arg)
{
    job *j = arg;
    float *outs[2] = {j->y, NULL};
    isl_predict_options *o;
    isl_predict_options_create(&o);
    isl_predict_options_set_threads(o, 1);
    for (int r = 0; r < 3 && j->status == ISL_OK; r++)
        j->status = isl_predict_tile(j->m, o, j->x, 266, 266, outs);
    isl_predict_options_free(o);
    return NULL;
}

/* Heads run on row chunks of large tiles (lib/engine/plan.c): a model whose plans use small
 * chunks (ISL_HEAD_CHUNK_PIXELS, read when a plan is built) must predict exactly what one
 * whose heads run on the whole tile does, the last, overlapping chunk included. */
static void predict_both_ways(isl_model *m, const float *tile, float **tile_out,
                              const isl_stack *image, float **image_out)
{
    isl_predict_options *o;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_probabilities(o, 1), ISL_OK);
    ck_assert_msg(isl_predict_tile(m, o, tile, 282, 266, tile_out) == ISL_OK, "%s",
                  isl_last_error());
    const int heads[2] = {0, 1};
    const isl_stat stats[2] = {ISL_STAT_MEDIAN, ISL_STAT_MEAN};
    ck_assert_int_eq(isl_predict_options_set_heads(o, 2, heads), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_stats(o, 2, stats), ISL_OK);
    ck_assert_msg(isl_predict_image(m, o, image, image_out) == ISL_OK, "%s", isl_last_error());
    isl_predict_options_free(o);
}

START_TEST(heads_in_row_chunks_match_whole_tiles)
{
    enum { NZ = 2, H = 300, W = 280 };
    const size_t tile_n = (size_t)NZ * 282 * 266, out_px = 40 * 24;
    float *tile = malloc(sizeof(float) * tile_n);
    float *image = malloc(sizeof(float) * NZ * H * W);
    for (size_t i = 0; i < tile_n; i++)
        tile[i] = (float)((i * 2654435761u) % 1000) / 1000.0f;
    for (size_t i = 0; i < (size_t)NZ * H * W; i++)
        image[i] = (float)((i * 40503u) % 997) / 997.0f;
    isl_stack in = {image, ISL_DTYPE_F32, NZ, H, W};
    float *tile_out[2][2], *image_out[2][2 * ISL_STAT_COUNT] = {{0}};
    for (int run = 0; run < 2; run++) {
        /* Run 0: whole tiles. Run 1: the 40 output rows of the tile in 6 chunks of 7 rows,
         * the last starting at row 33. */
        setenv("ISL_HEAD_CHUNK_PIXELS", run ? "170" : "1000000000", 1);
        isl_model *m = small_model(8, NZ, 5);
        ck_assert_int_eq(isl_model_num_heads(m), 2); /* one label head + the autoencoder */
        for (int h = 0; h < 2; h++) {
            tile_out[run][h] = malloc(sizeof(float) * isl_model_head_channels(m, h) * out_px);
            for (int s = 0; s < 2; s++)
                image_out[run][h * ISL_STAT_COUNT + s] =
                    malloc(sizeof(float) * (h ? NZ : 1) * H * W);
        }
        predict_both_ways(m, tile, tile_out[run], &in, image_out[run]);
        unsetenv("ISL_HEAD_CHUNK_PIXELS");
        isl_model_free(m);
    }
    for (int h = 0; h < 2; h++) {
        const size_t n = (size_t)(h ? NZ * 256 : 256) * out_px;
        ck_assert_msg(!memcmp(tile_out[0][h], tile_out[1][h], sizeof(float) * n),
                      "head %d: chunked tile output differs", h);
        for (int s = 0; s < 2; s++)
            ck_assert_msg(!memcmp(image_out[0][h * ISL_STAT_COUNT + s],
                                  image_out[1][h * ISL_STAT_COUNT + s],
                                  sizeof(float) * (h ? NZ : 1) * H * W),
                          "head %d, stat %d: chunked image differs", h, s);
    }
    for (int run = 0; run < 2; run++)
        for (int h = 0; h < 2; h++) {
            free(tile_out[run][h]);
            for (int s = 0; s < 2; s++)
                free(image_out[run][h * ISL_STAT_COUNT + s]);
        }
    free(tile);
    free(image);
}
END_TEST

START_TEST(concurrent_predictions_on_one_model)
{
    enum { THREADS = 4, OUT = 256 * 24 * 24 };
    isl_model *m = small_model(8, 2, 5);
    float *x = malloc(sizeof(float) * 2 * 266 * 266), *expect = malloc(sizeof(float) * OUT);
    uint64_t s = 3;
    for (int i = 0; i < 2 * 266 * 266; i++)
        x[i] = (float)test_uniform(&s);
    float *outs[2] = {expect, NULL};
    ck_assert_int_eq(isl_predict_tile(m, NULL, x, 266, 266, outs), ISL_OK);
    pthread_t t[THREADS];
    job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (job){m, x, malloc(sizeof(float) * OUT), ISL_OK};
        ck_assert_int_eq(pthread_create(&t[i], NULL, predict_job, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(jobs[i].status, ISL_OK);
        double max_diff = 0;
        for (int k = 0; k < OUT; k++)
            max_diff = fmax(max_diff, fabs(jobs[i].y[k] - expect[k]));
        ck_assert(max_diff < 1e-5);
        free(jobs[i].y);
    }
    free(x);
    free(expect);
    isl_model_free(m);
}
END_TEST

int main(void)
{
    const test_case cases[] = {
        {"stats", stats_of_a_hand_made_distribution},
        {"stats_stride", stats_with_stride_and_many_pixels},
        {"names", stat_names_round_trip},
        {"uncertain_mask", uncertain_mask_thresholds_std},
        {"uncertainty_summary", uncertainty_summary_text},
        {"fast_tanh", fast_tanh_tracks_libm},
        {"fused_pool", fused_pool_bnact_matches_pooling_then_bnact},
        {"parameter_count", parameter_count_of_the_paper_network},
        {"round_trip", save_load_round_trip_predicts_identically},
        {"seeds", seeds_decide_the_weights},
        {"bad_configs", bad_model_configs_are_refused},
        {"bad_inputs", bad_prediction_inputs_are_refused},
        {"progress", progress_reports_and_cancels},
        {"concurrency", concurrent_predictions_on_one_model},
        {"head_chunks", heads_in_row_chunks_match_whole_tiles},
    };
    return test_run_cases("api", cases, sizeof(cases) / sizeof(cases[0]), 300);
}
