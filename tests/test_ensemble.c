/* Ensemble prediction (isl_predict_options_set_ensemble): the members' distributions are
 * averaged. Oracles: each member predicted alone, and the mixture's properties (its mean
 * and P(k > 0) are the members' averages; its median lies between theirs). */
#include "test_util.h"

enum { NZ = 2, BASE = 8, H = 200, W = 180, OUT = 24 };

static const char *one_head[] = {"dapi_confocal"};
static const char *two_heads[] = {"extra", "dapi_confocal"};

/* Random weights and statistics, heads sharp enough for distributions far from uniform.
 * `heads` decides the head order, so members match heads by name, not index. */
static isl_model *member(uint64_t seed, int nz, int num_heads, const char **heads,
                         const char *normalization)
{
    return test_sharp_model(BASE, nz, num_heads, heads, seed, normalization);
}

static isl_predict_options *ensemble_options(int count, isl_model *const *others)
{
    isl_predict_options *o;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    ck_assert_msg(isl_predict_options_set_ensemble(o, count, (const isl_model *const *)others) ==
                      ISL_OK,
                  "%s", isl_last_error());
    return o;
}

START_TEST(tile_probabilities_are_the_mean_of_the_members)
{
    const size_t label_n = 256 * OUT * OUT, ae_n = NZ * label_n;
    isl_model *m[3] = {member(1, NZ, 1, one_head, "none"), member(2, NZ, 2, two_heads, "none"),
                       member(3, NZ, 1, one_head, "none")};
    float *tile = test_random_input(NZ, 266, 266, 7);
    float *alone[3][2], *mixed[2] = {malloc(sizeof(float) * label_n), malloc(sizeof(float) * ae_n)};
    isl_predict_options *plain;
    ck_assert_int_eq(isl_predict_options_create(&plain), ISL_OK);
    isl_predict_options_set_probabilities(plain, 1);
    for (int k = 0; k < 3; k++) {
        alone[k][0] = malloc(sizeof(float) * label_n);
        alone[k][1] = malloc(sizeof(float) * ae_n);
        test_tile_probabilities(m[k], plain, tile, 266, 266, alone[k][0], alone[k][1]);
    }
    /* The members differ: otherwise the mean would prove nothing. */
    ck_assert(memcmp(alone[0][0], alone[1][0], sizeof(float) * label_n) != 0);

    for (int logits = 0; logits < 2; logits++) {
        isl_predict_options *o = ensemble_options(2, &m[1]);
        isl_predict_options_set_probabilities(o, !logits);
        test_tile_probabilities(m[0], o, tile, 266, 266, mixed[0], mixed[1]);
        for (int h = 0; h < 2; h++) {
            double worst = 0;
            for (size_t i = 0; i < (h ? ae_n : label_n); i++) {
                double want = (alone[0][h][i] + alone[1][h][i] + alone[2][h][i]) / 3.0;
                double got = logits ? exp(mixed[h][i]) : mixed[h][i];
                worst = fmax(worst, fabs(got - want));
            }
            ck_assert_msg(worst < 2e-6, "%s, head %d: off by %g from the members' mean",
                          logits ? "logits" : "probabilities", h, worst);
        }
        isl_predict_options_free(o);
    }
    for (int k = 0; k < 3; k++) {
        free(alone[k][0]);
        free(alone[k][1]);
        isl_model_free(m[k]);
    }
    free(mixed[0]);
    free(mixed[1]);
    free(tile);
    isl_predict_options_free(plain);
}
END_TEST

static float **alloc_stats(void)
{
    float **s = malloc(sizeof(float *) * 3);
    for (int i = 0; i < 3; i++)
        s[i] = malloc(sizeof(float) * H * W);
    return s;
}

static void free_stats(float **s)
{
    for (int i = 0; i < 3; i++)
        free(s[i]);
    free(s);
}

START_TEST(image_statistics_are_those_of_the_mixture)
{
    isl_model *m[2] = {member(4, NZ, 1, one_head, "none"), member(5, NZ, 2, two_heads, "none")};
    float *image = test_random_input(NZ, H, W, 11);
    isl_stack in = {image, ISL_DTYPE_F32, NZ, H, W};
    float **alone[2] = {alloc_stats(), alloc_stats()}, **mixed = alloc_stats(),
          **tiled = alloc_stats();
    for (int k = 0; k < 2; k++) {
        isl_predict_options *o;
        ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
        test_label_stats(m[k], o, &in, alone[k]);
        isl_predict_options_free(o);
    }
    isl_predict_options *o = ensemble_options(1, &m[1]);
    test_label_stats(m[0], o, &in, mixed);
    ck_assert_int_eq(isl_predict_options_set_tile_size(o, 298), ISL_OK);
    test_label_stats(m[0], o, &in, tiled); /* 9 tiles instead of one */
    isl_predict_options_free(o);

    double worst_mean = 0, worst_nonzero = 0;
    int medians_between = 0, medians_differ = 0;
    for (int i = 0; i < H * W; i++) {
        worst_mean = fmax(worst_mean, fabs(mixed[1][i] - 0.5 * (alone[0][1][i] + alone[1][1][i])));
        worst_nonzero =
            fmax(worst_nonzero, fabs(mixed[2][i] - 0.5 * (alone[0][2][i] + alone[1][2][i])));
        float lo = fminf(alone[0][0][i], alone[1][0][i]), hi = fmaxf(alone[0][0][i], alone[1][0][i]);
        medians_between += mixed[0][i] >= lo && mixed[0][i] <= hi;
        medians_differ += lo != hi;
    }
    ck_assert_msg(worst_mean < 1e-5, "mean off by %g from the members' average", worst_mean);
    ck_assert_msg(worst_nonzero < 1e-5, "P(k > 0) off by %g", worst_nonzero);
    ck_assert_int_eq(medians_between, H * W);
    ck_assert_msg(medians_differ > H * W / 2, "only %d medians differ", medians_differ);
    for (int s = 0; s < 3; s++) {
        double worst = 0;
        for (int i = 0; i < H * W; i++)
            worst = fmax(worst, fabs(mixed[s][i] - tiled[s][i]));
        int differ = 0;
        for (int i = 0; i < H * W; i++)
            differ += mixed[s][i] != tiled[s][i];
        /* Other tiles round differently: a median at a cumulative 0.5 may move one bin. */
        const double tolerance = s == 0 ? 1.0 / 255 + 1e-6 : 1e-5;
        ck_assert_msg(worst < tolerance && (s > 0 || differ < H * W / 1000),
                      "stat %d depends on the tile size (%d pixels, up to %g)", s, differ, worst);
    }
    free_stats(alone[0]);
    free_stats(alone[1]);
    free_stats(mixed);
    free_stats(tiled);
    free(image);
    isl_model_free(m[0]);
    isl_model_free(m[1]);
}
END_TEST

START_TEST(a_model_with_itself_predicts_as_alone)
{
    isl_model *m = member(6, NZ, 1, one_head, "none");
    float *image = test_random_input(NZ, H, W, 12);
    isl_stack in = {image, ISL_DTYPE_F32, NZ, H, W};
    float **alone = alloc_stats(), **twice = alloc_stats();
    isl_predict_options *o;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    test_label_stats(m, o, &in, alone);
    isl_predict_options_free(o);
    o = ensemble_options(1, &m); /* the same model twice: (p + p) / 2 is p exactly */
    test_label_stats(m, o, &in, twice);
    for (int s = 0; s < 3; s++)
        ck_assert_mem_eq(alone[s], twice[s], sizeof(float) * H * W);
    /* Count 0 removes the ensemble. */
    ck_assert_int_eq(isl_predict_options_set_ensemble(o, 0, NULL), ISL_OK);
    test_label_stats(m, o, &in, twice);
    ck_assert_mem_eq(alone[0], twice[0], sizeof(float) * H * W);
    isl_predict_options_free(o);
    free_stats(alone);
    free_stats(twice);
    free(image);
    isl_model_free(m);
}
END_TEST

static void expect_refused(isl_model *m, isl_model *other, isl_status want, const char *words)
{
    float *image = test_random_input(NZ, H, W, 13);
    isl_stack in = {image, ISL_DTYPE_F32, NZ, H, W};
    float *out = malloc(sizeof(float) * H * W), *outputs[3 * ISL_STAT_COUNT] = {out};
    isl_predict_options *o = ensemble_options(1, &other);
    ck_assert_int_eq(isl_predict_image(m, o, &in, outputs), want);
    ck_assert_msg(strstr(isl_last_error(), words), "message \"%s\" lacks \"%s\"",
                  isl_last_error(), words);
    float tile_out[256 * OUT * OUT], *tile_outs[2] = {tile_out, NULL};
    float *tile = test_random_input(NZ, 266, 266, 14);
    ck_assert_int_eq(isl_predict_tile(m, o, tile, 266, 266, tile_outs), want);
    isl_predict_options_free(o);
    free(tile);
    free(out);
    free(image);
}

START_TEST(mismatched_members_are_refused)
{
    isl_model *m = member(7, NZ, 1, one_head, "none");
    isl_model *planes = member(8, NZ + 1, 1, one_head, "none");
    isl_model *heads = member(9, NZ, 1, &two_heads[0], "none"); /* "extra" only */
    isl_model *normalized = member(10, NZ, 1, one_head, "global");
    expect_refused(m, planes, ISL_ERROR_SHAPE, "3 z planes");
    expect_refused(m, heads, ISL_ERROR_INVALID_ARGUMENT, "no head 'dapi_confocal'");
    expect_refused(m, normalized, ISL_ERROR_INVALID_ARGUMENT, "\"global\"");

    isl_predict_options *o;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    const isl_model *some[ISL_MAX_ENSEMBLE] = {m, NULL};
    ck_assert_int_eq(isl_predict_options_set_ensemble(o, 2, some), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "model 1 is NULL"));
    for (int i = 0; i < ISL_MAX_ENSEMBLE; i++)
        some[i] = m;
    ck_assert_int_eq(isl_predict_options_set_ensemble(o, ISL_MAX_ENSEMBLE, some),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_predict_options_set_ensemble(o, ISL_MAX_ENSEMBLE - 1, some), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_ensemble(o, 1, NULL), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_predict_options_set_ensemble(NULL, 0, NULL), ISL_ERROR_INVALID_ARGUMENT);
    isl_predict_options_free(o);
    isl_model_free(m);
    isl_model_free(planes);
    isl_model_free(heads);
    isl_model_free(normalized);
}
END_TEST

int main(void)
{
    const test_case cases[] = {
        {"tile_mean", tile_probabilities_are_the_mean_of_the_members},
        {"image_mixture", image_statistics_are_those_of_the_mixture},
        {"itself", a_model_with_itself_predicts_as_alone},
        {"mismatched", mismatched_members_are_refused},
    };
    return test_run_cases("ensemble", cases, sizeof(cases) / sizeof(cases[0]), 300);
}
