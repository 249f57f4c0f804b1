/* Small helpers shared by the C tests. */
#ifndef ISL_TEST_UTIL_H
#define ISL_TEST_UTIL_H

#include "isl.h"
#include "model.h"
#include "params.h"
#include "ref_net.h"
#include "rng.h"
#include "tiff_io.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Uniform in (0, 1) from the library's splitmix64 (lib/common/rng.h): reproducible
 * everywhere. */
static inline double test_uniform(uint64_t *state)
{
    return ((double)(isl_splitmix64(state) >> 11) + 0.5) / 9007199254740992.0;
}

/* numpy.pad(mode='reflect') index, written independently of lib/common/input.c. */
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

/* A model made through the public API (random weights drawn from seed); the test fails
 * if it cannot be made. */
static inline isl_model *test_new_model(int base, int nz, int num_heads,
                                        const char *const *heads, uint64_t seed,
                                        const char *normalization)
{
    isl_model_config c;
    isl_model_config_init(&c);
    c.base_depth = base;
    c.num_z = nz;
    c.num_heads = num_heads;
    c.head_names = heads;
    c.seed = seed;
    c.input_normalization = normalization;
    isl_model *m = NULL;
    ck_assert_msg(isl_model_create(&c, &m) == ISL_OK, "%s", isl_last_error());
    return m;
}

/* ---- time and files ------------------------------------------------------------- */

static inline double test_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* $ISL_TEST_TMPDIR/name.<pid>.h5 (malloc'ed): distinct per process. */
static inline char *test_temp_path(const char *name)
{
    const char *dir = getenv("ISL_TEST_TMPDIR");
    char *path = malloc(1024);
    snprintf(path, 1024, "%s/%s.%d.h5", dir ? dir : "/tmp", name, (int)getpid());
    return path;
}

/* One scratch directory per test binary, under $ISL_TEST_TMPDIR (default /tmp). */
static inline char *test_scratch_dir(void)
{
    static char dir[4096];
    return dir;
}

static inline void test_scratch_make(const char *prefix)
{
    const char *base = getenv("ISL_TEST_TMPDIR");
    if (!base || !base[0])
        base = "/tmp";
    char *dir = test_scratch_dir();
    snprintf(dir, 4096, "%s/%s-XXXXXX", base, prefix);
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp under %s: %s", base, strerror(errno));
}

/* The scratch directory holds only plain files. */
static inline void test_scratch_remove(void)
{
    const char *dir = test_scratch_dir();
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[8192];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
    rmdir(dir);
}

static inline const char *test_scratch_path(char *buf, size_t cap, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", test_scratch_dir(), name);
    ck_assert(n > 0 && (size_t)n < cap);
    return buf;
}

/* Leftovers of atomic saves (name.tmp.XXXXXX) in dir. */
static inline int test_count_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static inline char *test_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "open %s: %s", path, strerror(errno));
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    ck_assert_int_ge(n, 0);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static inline void test_write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, size, f), size);
    ck_assert_int_eq(fclose(f), 0);
}

/* Zeroes the checksum record isl keeps in the first 512 bytes (lib/io/h5_checksum.h),
 * if there is one: the file then reads as one written by another program (unverified,
 * structurally validated), so that tests can edit it with HDF5 without it being
 * refused as damaged. */
static inline void test_strip_checksum(const char *path)
{
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    char head[8] = {0}, zeros[512] = {0};
    if (fread(head, 1, sizeof(head), f) == sizeof(head) && memcmp(head, "ISLSUM1", 8) == 0) {
        ck_assert_int_eq(fseek(f, 0, SEEK_SET), 0);
        ck_assert_uint_eq(fwrite(zeros, 1, sizeof(zeros), f), sizeof(zeros));
    }
    ck_assert_int_eq(fclose(f), 0);
}

/* Opens an HDF5 file to corrupt it (its checksum record removed first). */
static inline hid_t test_h5_open_rw(const char *path)
{
    test_strip_checksum(path);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    return f;
}

/* Replaces integer attribute `name` of obj. */
static inline void test_h5_set_int_attr(hid_t obj, const char *name, long long value)
{
    if (H5Aexists(obj, name) > 0)
        ck_assert_int_ge(H5Adelete(obj, name), 0);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_int_ge(a, 0);
    ck_assert_int_ge(H5Awrite(a, H5T_NATIVE_LLONG, &value), 0);
    H5Aclose(a);
    H5Sclose(space);
}

/* Sets element `index` of a dataset read and written as floats. */
static inline void test_h5_poke_float(hid_t f, const char *path, size_t index, float value)
{
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    ck_assert_int_ge(d, 0);
    hid_t space = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    ck_assert_int_gt(n, (hssize_t)index);
    float *buf = malloc((size_t)n * sizeof(float));
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_ge(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), 0);
    buf[index] = value;
    ck_assert_int_ge(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), 0);
    free(buf);
    H5Sclose(space);
    H5Dclose(d);
}

/* ---- models and prediction ------------------------------------------------------ */

/* A small model whose every parameter matters: random batch-norm statistics too. */
static inline isl_model *test_random_model(int base, int nz, int heads, uint64_t seed)
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

/* nz x h x w floats uniform in (0, 1). */
static inline float *test_random_input(int nz, int h, int w, uint64_t seed)
{
    float *x = malloc(sizeof(float) * (size_t)nz * h * w);
    uint64_t s = seed;
    for (size_t i = 0; i < (size_t)nz * h * w; i++)
        x[i] = (float)test_uniform(&s);
    return x;
}

/* n raw 16-bit pixels, uniform over the range. */
static inline uint16_t *test_random_u16(size_t n, uint64_t seed)
{
    uint16_t *raw = malloc(sizeof(uint16_t) * n);
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        raw[i] = (uint16_t)(test_uniform(&s) * 65535);
    return raw;
}

/* Predicts a whole stack at the given precision and tile size; returns [heads][stats]
 * images, NULL for the statistics not in stat_mask. */
static inline float **test_predict_all(const isl_model *m, const isl_stack *in, isl_precision prec,
                                       int tile, unsigned stat_mask)
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
    ck_assert_int_eq(isl_predict_options_set_precision(o, prec), ISL_OK);
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

static inline void test_free_all(const isl_model *m, float **outs)
{
    for (int i = 0; i < isl_model_num_heads(m) * ISL_STAT_COUNT; i++)
        free(outs[i]);
    free(outs);
}

/* ---- shared data: $ISL_SHARED_DIR, else ../shared beside the repository ---------- */

/* The path of `rel` inside the shared data directory (never an absolute machine path:
 * ISL_SHARED_DIR, else $ISL_SOURCE_ROOT/../shared, else ./../shared). */
static inline void test_shared_path(char *buf, size_t n, const char *rel)
{
    const char *shared = getenv("ISL_SHARED_DIR");
    const char *root = getenv("ISL_SOURCE_ROOT");
    if (shared && shared[0])
        snprintf(buf, n, "%s/%s", shared, rel);
    else
        snprintf(buf, n, "%s/../shared/%s", root && root[0] ? root : ".", rel);
}

/* ---- golden vectors (<shared>/testdata/golden-base32) ------------------------------ */

/* The three files' paths; 0 (after saying SKIPPED) where the vectors are absent. */
static inline int test_golden_paths(char *model, char *input, char *expected, size_t n)
{
    test_shared_path(model, n, "testdata/golden-base32/model.h5");
    test_shared_path(input, n, "testdata/golden-base32/input.tif");
    test_shared_path(expected, n, "testdata/golden-base32/expected.h5");
    FILE *f = fopen(expected, "rb");
    if (!f) {
        printf("SKIPPED: golden vectors not found at %s\n", expected);
        return 0;
    }
    fclose(f);
    return 1;
}

/* The golden model, its 13-plane input and the expected results (open read-only); 0
 * (after saying SKIPPED) where the vectors are absent. */
static inline int test_golden_load(isl_model **m, isl_tiff_stack *st, hid_t *expected)
{
    char mp[1024], ip[1024], ep[1024];
    if (!test_golden_paths(mp, ip, ep, sizeof(mp)))
        return 0;
    ck_assert_msg(isl_model_load(mp, m) == ISL_OK, "%s", isl_last_error());
    ck_assert_msg(isl_tiff_read_stack(ip, 13, st) == ISL_OK, "%s", isl_tiff_last_error());
    *expected = H5Fopen(ep, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert(*expected >= 0);
    return 1;
}

/* A float dataset of exactly expect values. */
static inline float *test_read_h5(hid_t file, const char *name, size_t expect)
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

/* ---- training fixtures ---------------------------------------------------------- */

/* Random inputs [batch, nz, side, side] and targets [batch, labels, out, out], and
 * the autoencoder's targets: the center of the inputs (121 pixels of context each side).
 * The masks are each test's own. */
static inline void test_fill_batch(float *inputs, float *targets, float *ae_targets, int batch,
                                   int nz, int labels, int side, int out, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < (size_t)batch * nz * side * side; i++)
        inputs[i] = (float)test_uniform(&s);
    for (size_t i = 0; i < (size_t)batch * labels * out * out; i++)
        targets[i] = (float)(test_uniform(&s) * test_uniform(&s));
    for (int n = 0; n < batch; n++)
        for (int z = 0; z < nz; z++)
            for (int y = 0; y < out; y++)
                for (int x = 0; x < out; x++)
                    ae_targets[(((size_t)n * nz + z) * out + y) * out + x] =
                        inputs[(((size_t)n * nz + z) * side + y + 121) * side + x + 121];
}

/* Head weights scaled up: confident heads, distributions far from uniform. */
static inline void test_sharpen_heads(isl_params *p, float factor)
{
    for (int h = 0; h < p->num_heads; h++)
        for (int i = 0; i < p->heads[h].out_ch * 2 * p->arch.trunk_ch; i++)
            p->heads[h].weight[i] *= factor;
}

/* Probabilities of the heads "dapi_confocal" and "autoencoder" for one tile. */
static inline void test_tile_probabilities(const isl_model *m, const isl_predict_options *o,
                                           const float *tile, int h, int w, float *label,
                                           float *ae)
{
    float *outs[3] = {NULL, NULL, NULL};
    outs[isl_model_head_index(m, "dapi_confocal")] = label;
    outs[isl_model_head_index(m, "autoencoder")] = ae;
    ck_assert_msg(isl_predict_tile(m, o, tile, h, w, outs) == ISL_OK, "%s", isl_last_error());
}

/* Median, mean and P(k > 0) of the head "dapi_confocal" over a whole image, into out[0..2]. */
static inline void test_label_stats(const isl_model *m, isl_predict_options *o,
                                    const isl_stack *in, float *out[3])
{
    const isl_stat stats[3] = {ISL_STAT_MEDIAN, ISL_STAT_MEAN, ISL_STAT_P_NONZERO};
    float *outputs[3 * ISL_STAT_COUNT] = {0};
    int head = isl_model_head_index(m, "dapi_confocal");
    for (int s = 0; s < 3; s++)
        outputs[head * ISL_STAT_COUNT + stats[s]] = out[s];
    ck_assert_int_eq(isl_predict_options_set_heads(o, 1, &head), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_stats(o, 3, stats), ISL_OK);
    ck_assert_msg(isl_predict_image(m, o, in, outputs) == ISL_OK, "%s", isl_last_error());
}

/* A random model with random batch-norm statistics and sharp heads: predictions far from
 * uniform that differ from seed to seed (for tests of averaged predictions). */
static inline isl_model *test_sharp_model(int base, int nz, int num_heads, const char **heads,
                                          uint64_t seed, const char *normalization)
{
    isl_model *m = test_new_model(base, nz, num_heads, heads, seed, normalization);
    test_randomize_bn(&m->params, seed + 100);
    test_sharpen_heads(&m->params, 10.0f);
    return m;
}

/* The reference's copies of batch inputs [batch, nz, h, w]; free with rt_free. */
static inline void test_ref_inputs(ref_t *in, const float *inputs, int batch, int nz, int h, int w)
{
    for (int n = 0; n < batch; n++) {
        in[n] = ref_new(nz, h, w);
        for (size_t i = 0; i < (size_t)nz * h * w; i++)
            in[n].v[i] = inputs[(size_t)n * nz * h * w + i];
    }
}

/* A trainer of m with options o, which it frees. */
static inline isl_trainer *test_trainer_create(const isl_model *m, isl_train_options *o)
{
    isl_trainer *t = NULL;
    ck_assert_msg(isl_trainer_create(m, o, &t) == ISL_OK, "%s", isl_last_error());
    isl_train_options_free(o);
    return t;
}

/* Losses equal bit for bit (a resumed run repeats the uninterrupted one exactly). */
static inline void test_assert_losses_equal(const float *la, const float *lb, int n)
{
    for (int i = 0; i < n; i++)
        ck_assert_msg(memcmp(&la[i], &lb[i], sizeof(float)) == 0, "loss %d: %.9g vs %.9g", i,
                      la[i], lb[i]);
}

/* Every parameter array of a model, by path (isl_params_visit order). */
typedef struct test_arr {
    char path[128];
    float *data;
    size_t count;
} test_arr;

typedef struct test_arr_list {
    test_arr a[2048];
    int count;
} test_arr_list;

static inline int test_list_arrays(void *user, const char *path, int rank, const int64_t *dims,
                                   float *data)
{
    test_arr_list *l = user;
    test_arr *a = &l->a[l->count++];
    snprintf(a->path, sizeof(a->path), "%s", path);
    a->data = data;
    a->count = 1;
    for (int i = 0; i < rank; i++)
        a->count *= (size_t)dims[i];
    return 0;
}

/* calloc'ed; the arrays point into p (visiting does not modify it). */
static inline test_arr_list *test_arrays_of(const isl_params *p)
{
    test_arr_list *l = calloc(1, sizeof(*l));
    isl_params_visit((isl_params *)p, test_list_arrays, l);
    return l;
}

/* The array of l at path, or NULL. */
static inline const test_arr *test_find_array(const test_arr_list *l, const char *path)
{
    for (int i = 0; i < l->count; i++)
        if (!strcmp(l->a[i].path, path))
            return &l->a[i];
    return NULL;
}

static inline int test_same_array(const test_arr *a, const test_arr *b)
{
    return a && b && a->count == b->count &&
           memcmp(a->data, b->data, sizeof(float) * a->count) == 0;
}

/* The same arrays (paths) in a and b, each bitwise equal, statistics included. */
static inline int test_params_equal(const isl_params *a, const isl_params *b)
{
    test_arr_list *la = test_arrays_of(a), *lb = test_arrays_of(b);
    int equal = la->count == lb->count;
    for (int i = 0; equal && i < la->count; i++)
        equal = test_same_array(&la->a[i], test_find_array(lb, la->a[i].path));
    free(la);
    free(lb);
    return equal;
}

static inline int test_models_equal(const isl_model *a, const isl_model *b)
{
    return test_params_equal(&a->params, &b->params);
}

/* One Check test case per test, so CK_RUN_CASE=name runs one; returns main's status. */
typedef struct test_case {
    const char *name;
    const TTest *test;
} test_case;

static inline int test_run_cases(const char *suite, const test_case *cases, size_t n, int timeout)
{
    /* Re-runs limited to AVX2 (tests/meson.build, avx2_*) must really run there: fail if
     * oneDNN ignored ONEDNN_MAX_CPU_ISA (a build without ISA control, or a query made
     * before the variable was read). */
    const char *max_isa = getenv("ONEDNN_MAX_CPU_ISA");
    if (max_isa && strcmp(max_isa, "AVX2") == 0 &&
        ((unsigned)dnnl_get_effective_cpu_isa() & ~(unsigned)dnnl_cpu_isa_avx2) != 0) {
        fprintf(stderr, "ONEDNN_MAX_CPU_ISA=AVX2 but oneDNN runs ISA 0x%x\n",
                (unsigned)dnnl_get_effective_cpu_isa());
        return EXIT_FAILURE;
    }
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
    /* CK_RUN_CASE naming no case (renamed, or a list, which Check does not take) would
     * pass without testing anything. */
    if (getenv("CK_RUN_CASE") && srunner_ntests_run(sr) == 0) {
        fprintf(stderr, "CK_RUN_CASE=%s matches no test case of %s\n", getenv("CK_RUN_CASE"),
                suite);
        failed = 1;
    }
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
