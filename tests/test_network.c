/* The oneDNN engine against independent references: the naive double-precision network
 * (ref_net.c), the golden vectors of an independent implementation of the spec, and the
 * spec's own invariants (tiling, alignment). */
#include "cpu.h"
#include "isl.h"
#include "model.h"
#include "plan.h"
#include "ref_net.h"
#include "test_util.h"
#include "tiff_io.h"

#include <check.h>
#include <hdf5.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One tile through the engine and through the naive network; every head's logits agree. */
static void check_against_reference(int base, int nz, int labels, uint64_t seed, int h, int w)
{
    isl_model *m = test_random_model(base, nz, labels, seed);
    float *x = test_random_input(nz, h, w, 7);
    const int oh = h - 242, ow = w - 242, heads = isl_model_num_heads(m);
    ck_assert_int_le(heads, 3);
    float *out[3];
    for (int k = 0; k < heads; k++)
        out[k] = malloc(sizeof(float) * (size_t)isl_model_head_channels(m, k) * oh * ow);
    ck_assert_int_eq(isl_predict_tile(m, NULL, x, h, w, out), ISL_OK);

    ref_t in = ref_new(nz, h, w), ref[3];
    for (size_t i = 0; i < (size_t)nz * h * w; i++)
        in.v[i] = x[i];
    ref_network(&m->params, &in, ref);
    for (int k = 0; k < heads; k++) {
        double max_err = 0, max_ref = 0;
        size_t n = (size_t)ref[k].c * ref[k].h * ref[k].w;
        ck_assert_int_eq(ref[k].c, isl_model_head_channels(m, k));
        ck_assert_int_eq(ref[k].h, oh);
        ck_assert_int_eq(ref[k].w, ow);
        for (size_t i = 0; i < n; i++) {
            max_err = fmax(max_err, fabs(ref[k].v[i] - out[k][i]));
            max_ref = fmax(max_ref, fabs(ref[k].v[i]));
        }
        printf("base %d head %d: max |logit| %.3f, max error %.2e\n", base, k, max_ref, max_err);
        ck_assert(max_ref > 0.1); /* the comparison is not vacuous */
        ck_assert(max_err <= 1e-4 * fmax(1.0, max_ref));
        ref_free(&ref[k]);
        free(out[k]);
    }
    ref_free(&in);
    free(x);
    isl_model_free(m);
}

START_TEST(engine_matches_reference_network)
{
    /* 3 planes, non-square tile, two heads + autoencoder. */
    check_against_reference(8, 3, 2, 42, 250, 266);
}
END_TEST

START_TEST(smallest_network_matches_reference)
{
    /* The smallest network (base 5, 1 plane, 1 head + autoencoder) on the smallest tile:
     * every layer kind at a fraction of the cost, for re-runs on other instruction sets
     * (tests/meson.build, avx2_*). */
    check_against_reference(5, 1, 1, 43, 250, 250);
}
END_TEST

START_TEST(plans_use_no_reference_kernels)
{
    /* Every oneDNN primitive of an FP32 plan (trunk, two label heads and the autoencoder,
     * chunked heads) runs a JIT kernel, never oneDNN's reference one (~20x slower). Run
     * again under ONEDNN_MAX_CPU_ISA=AVX2 (avx2_jit): without AVX-512 the plans must use
     * nChw8c, which oneDNN 2.6 has AVX2 kernels for, not nChw16c (docs/testing-cpus.md). */
    const int expect_blk = isl_cpu_has(dnnl_cpu_isa_avx512_core) ? 16 : 8;
    setenv("ISL_HEAD_CHUNK_PIXELS", "100", 1);
    isl_model *m = test_random_model(5, 13, 2, 44); /* 13 planes: more than a block of 8 */
    isl_plan *plan;
    isl_exec *exec;
    ck_assert_msg(isl_model_acquire(m, 266, 250, ISL_PRECISION_FP32, &plan, &exec) == ISL_OK,
                  "%s", isl_last_error());
    unsetenv("ISL_HEAD_CHUNK_PIXELS");
    ck_assert_int_lt(isl_plan_head_rows(plan), 24); /* the heads are chunked */
    ck_assert_int_eq(isl_plan_block_channels(plan), expect_blk);
    const int n = isl_plan_primitives(plan, NULL, 0);
    isl_plan_primitive *list = malloc(sizeof(*list) * (size_t)n);
    ck_assert_int_eq(isl_plan_primitives(plan, list, n), n);
    int convs = 0;
    for (int i = 0; i < n; i++) {
        ck_assert_msg(strncmp(list[i].impl, "ref", 3) != 0,
                      "primitive %d (%s) runs oneDNN's reference kernel %s", i,
                      dnnl_prim_kind2str(list[i].kind), list[i].impl);
        convs += list[i].kind == dnnl_convolution || list[i].kind == dnnl_deconvolution;
    }
    /* Projection, expand and reduce of each module, one per head. */
    ck_assert_int_eq(convs, 1 + 2 * m->params.arch.num_modules + m->params.num_heads);
    printf("nChw%dc: %d primitives, none a reference kernel (ISA 0x%x)\n", expect_blk, n,
           (unsigned)dnnl_get_effective_cpu_isa());
    free(list);
    isl_model_release(m, plan, exec);
    isl_model_free(m);
}
END_TEST

START_TEST(tiled_prediction_equals_single_pass)
{
    const int nz = 2, h = 200, w = 233;
    isl_model *m = test_random_model(16, nz, 1, 3);
    uint16_t *raw = test_random_u16((size_t)nz * h * w, 5);
    isl_stack in = {raw, ISL_DTYPE_U16, nz, h, w};
    unsigned mask = (1u << ISL_STAT_COUNT) - 1;
    /* One tile covers it; then 3 x 3 tiles, overlapping. */
    float **single = test_predict_all(m, &in, ISL_PRECISION_FP32, 0, mask);
    float **tiled = test_predict_all(m, &in, ISL_PRECISION_FP32, 330, mask);
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
    test_free_all(m, single);
    test_free_all(m, tiled);
    free(raw);
    isl_model_free(m);
}
END_TEST

START_TEST(aligned_patches_equal_the_large_pass)
{
    const int nz = 2, big = 250 + 16 * 3, obig = big - 242;
    isl_model *m = test_random_model(16, nz, 1, 11);
    float *x = test_random_input(nz, big, big, 13);
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

START_TEST(golden_vectors)
{
    isl_model *m;
    isl_tiff_stack st;
    hid_t f;
    if (!test_golden_load(&m, &st, &f))
        return;
    const int H = st.height, W = st.width;
    ck_assert_int_eq(H, 266);
    ck_assert_int_eq(W, 300);

    /* Statistics through the whole-image path (padding, tiling, softmax, stats). */
    isl_stack in = {st.data, st.dtype, 13, H, W};
    float **outs = test_predict_all(m, &in, ISL_PRECISION_FP32, 0,
                                    (1u << ISL_STAT_MEDIAN) | (1u << ISL_STAT_MEAN));
    const char *heads[2] = {"dapi_confocal", "nfh_confocal"};
    for (int k = 0; k < 2; k++) {
        char name[128];
        int hd = isl_model_head_index(m, heads[k]);
        snprintf(name, sizeof(name), "%s/mean", heads[k]);
        float *mean = test_read_h5(f, name, (size_t)H * W);
        snprintf(name, sizeof(name), "%s/median", heads[k]);
        float *median = test_read_h5(f, name, (size_t)H * W);
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
    float *plane6 = test_read_h5(f, "autoencoder/plane6_mean", (size_t)H * W);
    const float *ae = outs[2 * ISL_STAT_COUNT + ISL_STAT_MEAN] + (size_t)6 * H * W;
    double max_ae = 0;
    for (size_t i = 0; i < (size_t)H * W; i++)
        max_ae = fmax(max_ae, fabs(plane6[i] - ae[i]));
    printf("golden autoencoder plane 6 mean: max error %.2e\n", max_ae);
    ck_assert(max_ae < 1e-4);
    free(plane6);
    test_free_all(m, outs);

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
    float *sy = test_read_h5(f, "sample_y", 64), *sx = test_read_h5(f, "sample_x", 64);
    const char *all[3] = {"dapi_confocal", "nfh_confocal", "autoencoder"};
    for (int k = 0; k < 3; k++) {
        char name[128];
        int hd = isl_model_head_index(m, all[k]), ch = isl_model_head_channels(m, hd);
        snprintf(name, sizeof(name), "%s/logits_at_samples", all[k]);
        float *exp = test_read_h5(f, name, (size_t)64 * ch);
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
    float *exp = test_read_h5(f, "patch_0_0_logits_head0", 256 * 64);
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
                 {"reference_small", smallest_network_matches_reference},
                 {"jit_kernels", plans_use_no_reference_kernels},
                 {"tiling", tiled_prediction_equals_single_pass},
                 {"alignment", aligned_patches_equal_the_large_pass},
                 {"golden", golden_vectors}};
    return test_run_cases("network", cases, sizeof(cases) / sizeof(cases[0]), 600);
}
