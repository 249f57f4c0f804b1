/* Flip averaging (isl_predict_options_set_flip_average): the distributions predicted from
 * the input and its three mirror images, mirrored back, are averaged. Oracle: the same
 * model predicting mirror images made here, without the option, and the mixture's
 * properties (mean and P(k > 0) are averages; the median lies between the four). */
#include "test_util.h"

enum { NZ = 2, BASE = 8, TH = 266, TW = 282, OH = TH - 242, OW = TW - 242 };
/* Whole images of 8 + 16m rows and columns: the network's stride-16 phase of a pixel
 * mirrors onto the same phase only then, so that mirroring the whole image (the oracle)
 * equals mirroring each tile (the library). */
enum { H = 280, W = 264 }; /* 280 x 264 outputs run the heads in two chunks of rows */

static const char *one_head[] = {"dapi_confocal"};
static const char *two_heads[] = {"extra", "dapi_confocal"};

static isl_model *sharp_model(uint64_t seed)
{
    return test_sharp_model(BASE, NZ, 1, one_head, seed, "none");
}

/* The test's own mirror image (bit 0: left-right, bit 1: up-down) of planes x rows x cols. */
static void mirror(float *dst, const float *src, size_t planes, int rows, int cols, int flip)
{
    for (size_t p = 0; p < planes; p++)
        for (int y = 0; y < rows; y++)
            for (int x = 0; x < cols; x++) {
                int sy = flip & 2 ? rows - 1 - y : y, sx = flip & 1 ? cols - 1 - x : x;
                dst[(p * rows + y) * cols + x] = src[(p * rows + sy) * cols + sx];
            }
}

static isl_predict_options *options(int flip_average)
{
    isl_predict_options *o;
    ck_assert_int_eq(isl_predict_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_flip_average(o, flip_average), ISL_OK);
    return o;
}

START_TEST(tile_probabilities_are_the_mean_of_the_mirror_images)
{
    const size_t label_n = 256 * OH * OW, ae_n = NZ * label_n, in_n = (size_t)NZ * TH * TW;
    const size_t n[2] = {label_n, ae_n};
    /* The second model has its heads in another order: views are matched by head name. */
    isl_model *m[2] = {sharp_model(1), test_sharp_model(BASE, NZ, 2, two_heads, 2, "none")};
    float *tile = test_random_input(NZ, TH, TW, 7), *mirrored = malloc(sizeof(float) * in_n);
    double *want[2][2]; /* [model][head]: the mean over the mirror images, mirrored back */
    float *one[2] = {malloc(sizeof(float) * label_n), malloc(sizeof(float) * ae_n)};
    float *got[2] = {malloc(sizeof(float) * label_n), malloc(sizeof(float) * ae_n)};
    float *back = malloc(sizeof(float) * ae_n), *first = malloc(sizeof(float) * label_n);
    isl_predict_options *plain = options(0);
    isl_predict_options_set_probabilities(plain, 1);
    for (int k = 0; k < 2; k++) {
        for (int h = 0; h < 2; h++)
            want[k][h] = calloc(n[h], sizeof(double));
        for (int flip = 0; flip < 4; flip++) {
            mirror(mirrored, tile, NZ, TH, TW, flip);
            test_tile_probabilities(m[k], plain, mirrored, TH, TW, one[0], one[1]);
            for (int h = 0; h < 2; h++) {
                mirror(back, one[h], n[h] / ((size_t)OH * OW), OH, OW, flip);
                for (size_t i = 0; i < n[h]; i++)
                    want[k][h][i] += back[i] / 4.0;
                if (h == 0 && flip == 0)
                    memcpy(first, back, sizeof(float) * label_n);
            }
            /* The network is not mirror-symmetric: else the average would prove nothing. */
            double differs = 0;
            for (size_t i = 0; flip > 0 && i < label_n; i++)
                differs = fmax(differs, fabs(back[i] - first[i]));
            ck_assert_msg(flip == 0 || differs > 0.05, "mirror image %d predicts the same", flip);
        }
    }
    for (int pair = 0; pair < 2; pair++) {
        for (int logits = 0; logits < 2; logits++) {
            isl_predict_options *o = options(1);
            isl_predict_options_set_probabilities(o, !logits);
            if (pair)
                isl_predict_options_set_ensemble(o, 1, (const isl_model *const *)&m[1]);
            test_tile_probabilities(m[0], o, tile, TH, TW, got[0], got[1]);
            for (int h = 0; h < 2; h++) {
                double worst = 0;
                for (size_t i = 0; i < n[h]; i++) {
                    double w = pair ? 0.5 * (want[0][h][i] + want[1][h][i]) : want[0][h][i];
                    worst = fmax(worst, fabs((logits ? exp(got[h][i]) : got[h][i]) - w));
                }
                ck_assert_msg(worst < 2e-6, "%s of head %d%s off by %g from the views' mean",
                              logits ? "logits" : "probabilities", h,
                              pair ? " (ensemble)" : "", worst);
            }
            isl_predict_options_free(o);
        }
    }
    for (int h = 0; h < 2; h++) {
        free(want[0][h]);
        free(want[1][h]);
        free(got[h]);
        free(one[h]);
    }
    free(back);
    free(first);
    free(tile);
    free(mirrored);
    isl_predict_options_free(plain);
    isl_model_free(m[0]);
    isl_model_free(m[1]);
}
END_TEST

/* median, mean and P(k > 0) of the label head over a whole H x W image. */
static void image_stats(const isl_model *m, isl_predict_options *o, const float *image,
                        float *out[3])
{
    isl_stack in = {image, ISL_DTYPE_F32, NZ, H, W};
    test_label_stats(m, o, &in, out);
}

static float *stats_block(void) { return malloc(sizeof(float) * 3 * H * W); }

static void split(float *block, float *out[3])
{
    for (int s = 0; s < 3; s++)
        out[s] = block + (size_t)s * H * W;
}

/* The statistics of `views` plain predictions (models x mirror images, mirrored back)
 * bound those of the averaged prediction `mixed`: mean and P(k > 0) are their averages,
 * every median lies between theirs. */
static void check_mixture(float *const *views, int count, float *const mixed[3])
{
    double worst[3] = {0, 0, 0};
    int between = 0, differ = 0;
    for (int i = 0; i < H * W; i++) {
        double sum[3] = {0, 0, 0};
        float lo = INFINITY, hi = -INFINITY;
        for (int v = 0; v < count; v++) {
            for (int s = 1; s < 3; s++)
                sum[s] += views[v][(size_t)s * H * W + i];
            lo = fminf(lo, views[v][i]);
            hi = fmaxf(hi, views[v][i]);
        }
        for (int s = 1; s < 3; s++)
            worst[s] = fmax(worst[s], fabs(mixed[s][i] - sum[s] / count));
        between += mixed[0][i] >= lo && mixed[0][i] <= hi;
        differ += lo != hi;
    }
    ck_assert_msg(worst[1] < 1e-5, "mean off by %g from the average of %d views", worst[1], count);
    ck_assert_msg(worst[2] < 1e-5, "P(k > 0) off by %g", worst[2]);
    ck_assert_int_eq(between, H * W);
    ck_assert_msg(differ > H * W / 2, "only %d medians differ between the views", differ);
}

/* Plain statistics of model m on mirror image `flip` of the image, mirrored back. */
static float *mirrored_view(const isl_model *m, const float *image, int flip)
{
    float *flipped = malloc(sizeof(float) * NZ * H * W), *raw = stats_block(),
          *back = stats_block(), *out[3];
    mirror(flipped, image, NZ, H, W, flip);
    isl_predict_options *o = options(0);
    split(raw, out);
    image_stats(m, o, flipped, out);
    mirror(back, raw, 3, H, W, flip);
    isl_predict_options_free(o);
    free(flipped);
    free(raw);
    return back;
}

START_TEST(image_statistics_are_those_of_the_mirror_images_mixture)
{
    isl_model *m = sharp_model(4);
    float *image = test_random_input(NZ, H, W, 11);
    float *views[4];
    for (int v = 0; v < 4; v++)
        views[v] = mirrored_view(m, image, v);

    /* One tile of 280 x 264 outputs: its heads run in two chunks of rows, which the
     * up-down mirror image computes in the other order. (Several tiles: the Python tests'
     * predict_rows with tile=266; without the option: every view above.) */
    float *block = stats_block(), *mixed[3];
    split(block, mixed);
    isl_predict_options *o = options(1);
    image_stats(m, o, image, mixed);
    check_mixture(views, 4, mixed);
    ck_assert_int_eq(isl_predict_options_set_flip_average(NULL, 1), ISL_ERROR_INVALID_ARGUMENT);

    isl_predict_options_free(o);
    for (int v = 0; v < 4; v++)
        free(views[v]);
    free(block);
    free(image);
    isl_model_free(m);
}
END_TEST

int main(void)
{
    const test_case cases[] = {
        {"tile_mean", tile_probabilities_are_the_mean_of_the_mirror_images},
        {"image_mixture", image_statistics_are_those_of_the_mirror_images_mixture},
    };
    return test_run_cases("flip", cases, sizeof(cases) / sizeof(cases[0]), 300);
}
