/* Known answers of the evaluation kernels (lib/eval), counted by hand; scipy oracles are
 * in tests/python/test_evaluate.py. Quick, so it also runs under the sanitizers. */
#include "test_util.h"

START_TEST(pearson_of_linear_relations)
{
    float x[100], up[100], down[100];
    for (int i = 0; i < 100; i++) {
        x[i] = (float)((i * 37) % 100) / 100.0f;
        up[i] = 0.5f * x[i] + 0.25f;
        down[i] = 1.0f - 2.0f * x[i];
    }
    double r;
    int64_t used;
    ck_assert_int_eq(isl_eval_pearson(up, x, NULL, 100, 0, 1, &r, &used), ISL_OK);
    ck_assert_int_eq(used, 100);
    ck_assert_double_eq_tol(r, 1.0, 1e-12);
    ck_assert_int_eq(isl_eval_pearson(down, x, NULL, 100, 10, 1, &r, &used), ISL_OK);
    ck_assert_int_eq(used, 10);
    ck_assert_double_eq_tol(r, -1.0, 1e-12);
    /* Two points (0, 0), (1, 1) and a third (0, 1) masked out: r = 1. */
    float p[3] = {0, 1, 0}, t[3] = {0, 1, 1};
    uint8_t mask[3] = {1, 1, 0};
    ck_assert_int_eq(isl_eval_pearson(p, t, mask, 3, 0, 0, &r, NULL), ISL_OK);
    ck_assert_double_eq_tol(r, 1.0, 1e-12);
    /* With it: p = (0, 1, 0), t = (0, 1, 1): r = 0.5 by hand. */
    ck_assert_int_eq(isl_eval_pearson(p, t, NULL, 3, 0, 0, &r, NULL), ISL_OK);
    ck_assert_double_eq_tol(r, 0.5, 1e-12);
    p[2] = NAN;
    ck_assert_int_eq(isl_eval_pearson(p, t, NULL, 3, 0, 0, &r, NULL), ISL_ERROR_VALUE);
    ck_assert_int_eq(isl_eval_pearson(p, t, mask, 3, 0, 0, &r, NULL), ISL_OK); /* masked */
}
END_TEST

START_TEST(heatmap_counts_per_thousand)
{
    /* 4 pixels: (t, p) = (0.05, 0.05), (0.05, 0.95), (0.55, 0.55), (1.2, -0.1) clipped to
     * bins (0, 0), (0, 9), (5, 5), (9, 0): 250 each. */
    float t[4] = {0.05f, 0.05f, 0.55f, 1.2f}, p[4] = {0.05f, 0.95f, 0.55f, -0.1f};
    double h[100];
    ck_assert_int_eq(isl_eval_heatmap(p, t, NULL, 4, 10, h), ISL_OK);
    double sum = 0;
    for (int i = 0; i < 100; i++)
        sum += h[i];
    ck_assert_double_eq_tol(sum, 1000, 1e-9);
    ck_assert_double_eq_tol(h[0 * 10 + 0], 250, 1e-9);
    ck_assert_double_eq_tol(h[0 * 10 + 9], 250, 1e-9);
    ck_assert_double_eq_tol(h[5 * 10 + 5], 250, 1e-9);
    ck_assert_double_eq_tol(h[9 * 10 + 0], 250, 1e-9);
}
END_TEST

START_TEST(otsu_separates_two_levels)
{
    float img[200];
    for (int i = 0; i < 200; i++)
        img[i] = i < 150 ? 0.25f : 0.75f;
    double th;
    ck_assert_int_eq(isl_eval_otsu(img, NULL, 200, &th), ISL_OK);
    ck_assert(th > 0.25 && th <= 0.75);
}
END_TEST

/* Two disks of radius 8 whose centres are 14 apart (touching) and one apart. */
START_TEST(segmentation_splits_touching_nuclei)
{
    enum { H = 40, W = 70 };
    static float img[H * W];
    static int32_t labels[H * W];
    const int cx[3] = {15, 29, 55};
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            img[y * W + x] = 0.1f;
            for (int k = 0; k < 3; k++)
                if ((x - cx[k]) * (x - cx[k]) + (y - 20) * (y - 20) <= 64)
                    img[y * W + x] = 0.9f;
        }
    int n;
    ck_assert_int_eq(isl_eval_segment_nuclei(img, H, W, 0.5, 1, 0, labels, &n), ISL_OK);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(isl_eval_segment_nuclei(img, H, W, -1, 1, 1, labels, &n), ISL_OK);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(labels[20 * W + 15], 1); /* scan order */
    ck_assert_int_ne(labels[20 * W + 29], labels[20 * W + 15]);
    ck_assert_int_eq(labels[0], 0);
    double radii[3];
    ck_assert_int_eq(isl_eval_object_radii(labels, H, W, 3, radii), ISL_OK);
    ck_assert(fabs(radii[2] - 8.0) < 0.6); /* a digital disk of radius 8 */
}
END_TEST

START_TEST(object_errors_by_hand)
{
    /* 1-D "image" 1 x 20 (no border exclusion): true objects 1 [1,3], 2 [5,6], 3 [7,8],
     * 4 [10,11], 5 [13,14]; predicted 1 [1,1], 2 [2,3] (split of 1), 3 [5,8] (merge of 2
     * and 3), 4 [10,11] (correct), 5 [17,18] (added); true 5 missed. */
    int32_t t[20] = {0, 1, 1, 1, 0, 2, 2, 3, 3, 0, 4, 4, 0, 5, 5, 0, 0, 0, 0, 0};
    int32_t p[20] = {0, 1, 2, 2, 0, 3, 3, 3, 3, 0, 4, 4, 0, 0, 0, 0, 0, 5, 5, 0};
    isl_object_errors e = {.struct_size = sizeof e};
    ck_assert_int_eq(isl_eval_object_errors(t, 5, p, 5, 1, 20, 0, &e), ISL_OK);
    ck_assert_int_eq(e.true_objects, 5);
    ck_assert_int_eq(e.predicted_objects, 5);
    ck_assert_int_eq(e.split, 1);
    ck_assert_int_eq(e.merged, 1);
    ck_assert_int_eq(e.added, 1);
    ck_assert_int_eq(e.missed, 1);
    ck_assert_double_eq_tol(e.accuracy, 0.2, 1e-12);
    /* Labels out of range are rejected. */
    p[3] = 9;
    ck_assert_int_eq(isl_eval_object_errors(t, 5, p, 5, 1, 20, 0, &e), ISL_ERROR_VALUE);
}
END_TEST

START_TEST(ks_of_separated_samples)
{
    /* Disjoint samples of 3 and 3: D = 1; two of the C(6, 3) = 20 orderings are that
     * extreme, p = 0.1. a = {1, 2, 3, 4}, b = {2.5, 10}: D = 0.5 (F_a - F_b at 2); of the
     * C(6, 2) = 15 orderings only a b a a b a keeps every |i/4 - j/2| < 0.5, so
     * p = 14/15. */
    double a[4] = {1, 2, 3, 4}, b[3] = {4, 5, 6}, d, pv;
    ck_assert_int_eq(isl_eval_ks_2samp(a, 3, b, 3, &d, &pv), ISL_OK);
    ck_assert_double_eq_tol(d, 1.0, 1e-12);
    ck_assert_double_eq_tol(pv, 0.1, 1e-12);
    double c[2] = {2.5, 10};
    ck_assert_int_eq(isl_eval_ks_2samp(a, 4, c, 2, &d, &pv), ISL_OK);
    ck_assert_double_eq_tol(d, 0.5, 1e-12);
    ck_assert_double_eq_tol(pv, 14.0 / 15.0, 1e-12);
}
END_TEST

START_TEST(error_image_colours)
{
    float t[2] = {0.5f, 0.5f}, p[2] = {0.8f, 0.2f};
    uint8_t rgb[6];
    ck_assert_int_eq(isl_eval_error_image(p, t, 2, rgb), ISL_OK);
    /* Display 0.5 and 1: common 0.5 plus magenta 0.5; display 0.5 and 0: teal 0.5 * 0.8. */
    ck_assert_int_eq(rgb[0], 255);
    ck_assert_int_eq(rgb[1], 128);
    ck_assert_int_eq(rgb[2], 255);
    ck_assert_int_eq(rgb[3], 0);
    ck_assert_int_eq(rgb[4], 102);
    ck_assert_int_eq(rgb[5], 102);
}
END_TEST

int main(void)
{
    const test_case cases[] = {
        {"pearson", pearson_of_linear_relations},
        {"heatmap", heatmap_counts_per_thousand},
        {"otsu", otsu_separates_two_levels},
        {"segmentation", segmentation_splits_touching_nuclei},
        {"object_errors", object_errors_by_hand},
        {"ks", ks_of_separated_samples},
        {"error_image", error_image_colours},
    };
    return test_run_cases("eval", cases, sizeof(cases) / sizeof(cases[0]), 60);
}
