/* Small helpers shared by the C tests. */
#ifndef ISL_TEST_UTIL_H
#define ISL_TEST_UTIL_H

#include "params.h"

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Uniform in (0, 1) from a splitmix64 state: reproducible everywhere. */
static inline double test_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

/* numpy.pad(mode='reflect') index, written independently of lib/predict.c. */
static inline int test_reflect(int i, int n)
{
    while (i < 0 || i >= n) {
        if (i < 0)
            i = -i;
        if (i >= n)
            i = 2 * (n - 1) - i;
    }
    return i;
}

static inline void test_randomize_bn_one(isl_bn_params *bn, uint64_t *s)
{
    for (int c = 0; c < bn->channels; c++) {
        bn->gamma[c] = (float)(0.5 + test_uniform(s));
        bn->beta[c] = (float)(test_uniform(s) - 0.5);
        bn->mean[c] = (float)(test_uniform(s) - 0.5);
        bn->var[c] = (float)(0.5 + test_uniform(s));
    }
}

/* Random batch-norm statistics and head biases, so that every parameter matters. */
static inline void test_randomize_bn(isl_params *p, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = 0; i < p->arch.num_modules; i++) {
        test_randomize_bn_one(&p->modules[i].bn1, &s);
        test_randomize_bn_one(&p->modules[i].bn2, &s);
    }
    for (int h = 0; h < p->num_heads; h++) {
        test_randomize_bn_one(&p->heads[h].bn, &s);
        for (int c = 0; c < p->heads[h].out_ch; c++)
            p->heads[h].bias[c] = (float)(test_uniform(&s) - 0.5);
        /* Larger head weights: distributions far from uniform (logits ~10, as trained). */
        for (int i = 0; i < p->heads[h].out_ch * 2 * p->arch.trunk_ch; i++)
            p->heads[h].weight[i] *= 0.3f;
    }
    for (int c = 0; c < ISL_PROJECTION_DEPTH; c++)
        p->projection_bias[c] = (float)(test_uniform(&s) - 0.5);
}

/* One Check test case per test, so CK_RUN_CASE=name runs one; returns main's status. */
typedef struct test_case {
    const char *name;
    const TTest *test;
} test_case;

static inline int test_run_cases(const char *suite, const test_case *cases, size_t n, int timeout)
{
    Suite *s = suite_create(suite);
    for (size_t i = 0; i < n; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, timeout);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
