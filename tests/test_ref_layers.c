/* The reference implementation's layers against values worked out by hand, so that the
 * reference can in turn judge the engine (test_network.c). */
#include "ref_net.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

static ref_t ramp(int h, int w)
{
    ref_t t = ref_new(1, h, w);
    for (int i = 0; i < h * w; i++)
        t.v[i] = i;
    return t;
}

START_TEST(conv_3x3_of_ones_sums_windows)
{
    ref_t x = ramp(4, 4);
    float w[9], bias[1] = {1.0f};
    for (int i = 0; i < 9; i++)
        w[i] = 1.0f;
    ref_t y = ref_conv(&x, w, bias, 1, 3, 1);
    ck_assert_int_eq(y.h, 2);
    ck_assert_int_eq(y.w, 2);
    /* 0+1+2+4+5+6+8+9+10 = 45, shifted windows add 9 per column and 36 per row; +1 bias. */
    ck_assert_double_eq(y.v[0], 46);
    ck_assert_double_eq(y.v[1], 55);
    ck_assert_double_eq(y.v[2], 82);
    ck_assert_double_eq(y.v[3], 91);
    ref_free(&x);
    ref_free(&y);
}
END_TEST

START_TEST(conv_4x4_stride_2_picks_strided_windows)
{
    ref_t x = ramp(6, 6);
    float w[16] = {0};
    w[0] = 1.0f; /* top-left tap only */
    ref_t y = ref_conv(&x, w, NULL, 1, 4, 2);
    ck_assert_int_eq(y.h, 2); /* (6 - 4) / 2 + 1 */
    ck_assert_double_eq(y.v[0], 0);
    ck_assert_double_eq(y.v[1], 2);
    ck_assert_double_eq(y.v[2], 12);
    ck_assert_double_eq(y.v[3], 14);
    ref_free(&x);
    ref_free(&y);
}
END_TEST

START_TEST(conv_transpose_scatters_overlapping_kernels)
{
    ref_t x = ref_new(1, 2, 2);
    x.v[0] = 1, x.v[1] = 2, x.v[2] = 3, x.v[3] = 4;
    float w[16];
    for (int i = 0; i < 16; i++)
        w[i] = 1.0f;
    ref_t y = ref_conv_transpose(&x, w, 1, 4, 2);
    ck_assert_int_eq(y.h, 6); /* 2n + 2 */
    ck_assert_double_eq(*ref_at(&y, 0, 0, 0), 1);  /* only x00 reaches the corner */
    ck_assert_double_eq(*ref_at(&y, 0, 0, 2), 3);  /* x00 + x01 overlap there */
    ck_assert_double_eq(*ref_at(&y, 0, 2, 2), 10); /* all four overlap */
    ck_assert_double_eq(*ref_at(&y, 0, 5, 5), 4);
    ref_free(&x);
    ref_free(&y);
}
END_TEST

START_TEST(conv_transpose_uses_in_out_layout)
{
    /* Two inputs, one output: w[in=1][out=0] scales the second input channel. */
    ref_t x = ref_new(2, 1, 1);
    x.v[0] = 1, x.v[1] = 10;
    float w[2 * 1 * 4 * 4] = {0};
    w[16 + 5] = 0.5f; /* in 1, out 0, tap (1, 1) */
    ref_t y = ref_conv_transpose(&x, w, 1, 4, 2);
    ck_assert_double_eq(*ref_at(&y, 0, 1, 1), 5);
    ck_assert_double_eq(*ref_at(&y, 0, 0, 0), 0);
    ref_free(&x);
    ref_free(&y);
}
END_TEST

START_TEST(pools)
{
    ref_t x = ramp(4, 4);
    ref_t mx = ref_maxpool(&x, 3, 1), av = ref_avgpool(&x, 2, 2);
    ck_assert_double_eq(mx.v[0], 10);
    ck_assert_double_eq(mx.v[3], 15);
    ck_assert_double_eq(av.v[0], 2.5);  /* (0 + 1 + 4 + 5) / 4 */
    ck_assert_double_eq(av.v[1], 4.5);
    ck_assert_double_eq(av.v[2], 10.5);
    ck_assert_double_eq(av.v[3], 12.5);
    ref_free(&x);
    ref_free(&mx);
    ref_free(&av);
}
END_TEST

START_TEST(upsample_replicates_edges)
{
    ref_t x = ref_new(1, 2, 2);
    x.v[0] = 1, x.v[1] = 2, x.v[2] = 3, x.v[3] = 4;
    ref_t y = ref_upsample_edge(&x);
    const double row0[6] = {1, 1, 1, 2, 2, 2}, row5[6] = {3, 3, 3, 4, 4, 4};
    ck_assert_int_eq(y.h, 6);
    for (int j = 0; j < 6; j++) {
        ck_assert_double_eq(*ref_at(&y, 0, 0, j), row0[j]);
        ck_assert_double_eq(*ref_at(&y, 0, 1, j), row0[j]);
        ck_assert_double_eq(*ref_at(&y, 0, 5, j), row5[j]);
    }
    ref_free(&x);
    ref_free(&y);
}
END_TEST

START_TEST(bnact_relu_half_then_tanh_half)
{
    float gamma[2] = {2, 1}, beta[2] = {0.5f, 0}, mean[2] = {1, 0}, var[2] = {3, 0.999f};
    isl_bn_params bn = {2, gamma, beta, mean, var};
    ref_t x = ref_new(2, 1, 1);
    x.v[0] = 2;
    x.v[1] = -1;
    ref_t y = ref_bnact(&x, &bn);
    double y0 = 2.0 * 1.0 / sqrt(3.001) + 0.5; /* 1.654508... */
    double y1 = -1.0;                          /* var + eps = 1 */
    ck_assert_int_eq(y.c, 4);
    ck_assert_double_eq_tol(y.v[0], y0, 1e-7);
    ck_assert_double_eq_tol(y.v[1], 0.0, 1e-12);
    ck_assert_double_eq_tol(y.v[2], tanh(y0), 1e-7);
    ck_assert_double_eq_tol(y.v[3], tanh(y1), 1e-7);
    ck_assert_double_eq_tol(y.v[2], 0.929474, 1e-6); /* Python math.tanh(1.654508) */
    ref_free(&x);
    ref_free(&y);
}
END_TEST

START_TEST(module_sizes_follow_the_spec)
{
    /* Shapes only: in n -> n-2, down n -> (n-4)/2+1, up n -> 2n+2; channel rules. */
    isl_params p;
    const char *heads[1] = {"h"};
    ck_assert_int_eq(isl_params_alloc(&p, 32, 13, 1, heads, 0), 0);
    isl_params_init_random(&p, 1);
    const int sizes[3][2] = {{72, 70}, {102, 50}, {8, 18}};
    const int module_of_kind[3] = {0, 18, 34}; /* first in, down and up modules (tower 1) */
    for (int k = 0; k < 3; k++) {
        const isl_module_arch *a = &p.arch.modules[module_of_kind[k]];
        char kind = "idu"[k];
        ck_assert_int_eq(a->kind, k == 0 ? ISL_MODULE_IN : k == 1 ? ISL_MODULE_DOWN : ISL_MODULE_UP);
        ref_t x = ref_new(a->in_ch, sizes[k][0], sizes[k][0]);
        for (size_t i = 0; i < (size_t)x.c * x.h * x.w; i++)
            x.v[i] = (double)(i % 7) / 7.0;
        ref_t y = ref_module(&x, kind, &p.modules[module_of_kind[k]], a->expand_ch, a->reduce_ch);
        ck_assert_int_eq(y.h, sizes[k][1]);
        ck_assert_int_eq(y.c, a->out_ch);
        ref_free(&x);
        ref_free(&y);
    }
    isl_params_free(&p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reference layers");
    TCase *tc = tcase_create("hand-computed");
    tcase_add_test(tc, conv_3x3_of_ones_sums_windows);
    tcase_add_test(tc, conv_4x4_stride_2_picks_strided_windows);
    tcase_add_test(tc, conv_transpose_scatters_overlapping_kernels);
    tcase_add_test(tc, conv_transpose_uses_in_out_layout);
    tcase_add_test(tc, pools);
    tcase_add_test(tc, upsample_replicates_edges);
    tcase_add_test(tc, bnact_relu_half_then_tanh_half);
    tcase_add_test(tc, module_sizes_follow_the_spec);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
