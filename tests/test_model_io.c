/* Tests of the HDF5 model file reader and writer (lib/io/model_io.c). */
#include "model_io.h"
#include "params.h"
#include "test_util.h"

#include <check.h>
#include <hdf5.h>

#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------- */
/* Helpers                                                                             */
/* ---------------------------------------------------------------------------------- */

/* The checked fixture of every test: a fresh scratch directory. */
static void make_scratch(void)
{
    test_scratch_make("isl-model-io");
}

static int golden_path(char *buf, size_t cap)
{
    test_shared_path(buf, cap, "testdata/golden-base32/model.h5");
    if (access(buf, R_OK) == 0)
        return 1;
    fprintf(stderr, "SKIP: golden model not found at %s (set ISL_SHARED_DIR)\n", buf);
    return 0;
}

/* Deterministic values for the arrays that isl_params_init_random leaves constant (BN
 * statistics, biases), plus awkward floats, so that a round trip exercises every bit. */
typedef struct filler {
    uint64_t state;
} filler;

static float next_value(filler *f)
{
    f->state = f->state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(f->state >> 40) / (double)(1 << 24) * 4.0 - 2.0);
}

static int fill_stats(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    filler *f = user;
    size_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= (size_t)dims[i];
    int var = strstr(path, "/var") != NULL;
    int conv = strstr(path, "weight") != NULL;
    for (size_t i = 0; i < n; i++) {
        if (conv)
            continue;
        float v = next_value(f);
        data[i] = var ? fabsf(v) : v;
    }
    if (conv && n >= 4) {
        data[0] = -0.0f;
        data[1] = FLT_MIN / 8; /* subnormal */
        data[2] = FLT_MAX;
        data[3] = -FLT_TRUE_MIN;
    }
    return 0;
}

static void make_model(isl_params *p, int base, int nz, int with_autoencoder, uint64_t seed)
{
    static const char *const names[] = {"dapi_confocal", "nfh_confocal"};
    ck_assert_int_eq(isl_params_alloc(p, base, nz, 2, names, with_autoencoder), 0);
    isl_params_init_random(p, seed);
    filler f = {seed};
    ck_assert_int_eq(isl_params_visit(p, fill_stats, &f), 0);
}

/* Collects every array of one model, then compares another model against it. */
typedef struct array_ref {
    char path[128];
    int rank;
    int64_t dims[4];
    const float *data;
} array_ref;

typedef struct array_list {
    array_ref items[2048];
    int count, compared;
} array_list;

static int collect(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    array_list *l = user;
    ck_assert_int_lt(l->count, 2048);
    array_ref *a = &l->items[l->count++];
    snprintf(a->path, sizeof(a->path), "%s", path);
    a->rank = rank;
    memcpy(a->dims, dims, (size_t)rank * sizeof(*dims));
    a->data = data;
    return 0;
}

static int compare(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    array_list *l = user;
    ck_assert_int_lt(l->compared, l->count);
    const array_ref *a = &l->items[l->compared++];
    ck_assert_str_eq(a->path, path);
    ck_assert_int_eq(a->rank, rank);
    size_t n = 1;
    for (int i = 0; i < rank; i++) {
        ck_assert_int_eq(a->dims[i], dims[i]);
        n *= (size_t)dims[i];
    }
    ck_assert_msg(memcmp(a->data, data, n * sizeof(float)) == 0, "%s differs", path);
    return 0;
}

static void assert_same_params(isl_params *a, isl_params *b)
{
    static array_list list; /* large; tests run one at a time */
    memset(&list, 0, sizeof(list));
    ck_assert_int_eq(a->arch.base_depth, b->arch.base_depth);
    ck_assert_int_eq(a->arch.num_z, b->arch.num_z);
    ck_assert_int_eq(a->num_heads, b->num_heads);
    ck_assert_str_eq(a->input_normalization, b->input_normalization);
    for (int h = 0; h < a->num_heads; h++) {
        ck_assert_str_eq(a->heads[h].name, b->heads[h].name);
        ck_assert_int_eq(a->heads[h].out_ch, b->heads[h].out_ch);
    }
    ck_assert_int_eq(isl_params_visit(a, collect, &list), 0);
    ck_assert_int_eq(isl_params_visit(b, compare, &list), 0);
    ck_assert_int_eq(list.compared, list.count);
}

static void assert_zeroed(const isl_params *p)
{
    static const isl_params zero;
    ck_assert_msg(memcmp(p, &zero, sizeof(zero)) == 0, "params not zeroed after a failure");
}

/* Reads path, expecting status and a message that mentions `needle`. */
static void expect_read_error(const char *path, isl_status want, const char *needle)
{
    isl_params p;
    memset(&p, 0x5a, sizeof(p));
    isl_status st = isl_model_read_h5(path, &p);
    ck_assert_msg(st == want, "status %d (%s), expected %d; message: %s", st,
                  isl_status_string(st), want, isl_last_error());
    ck_assert_msg(strstr(isl_last_error(), needle) != NULL, "message \"%s\" lacks \"%s\"",
                  isl_last_error(), needle);
    assert_zeroed(&p);
}

/* A base-32 model written by isl_model_write_h5 into the scratch dir, to corrupt. */
static const char *fresh_model(char *buf, size_t cap, const char *name)
{
    isl_params p;
    make_model(&p, 32, 13, 1, 7);
    test_scratch_path(buf, cap, name);
    ck_assert_msg(isl_model_write_h5(buf, &p) == ISL_OK, "%s", isl_last_error());
    isl_params_free(&p);
    return buf;
}

static void replace_dataset(hid_t f, const char *path, hid_t type, int rank, const hsize_t *dims,
                            const void *data)
{
    ck_assert_int_ge(H5Ldelete(f, path, H5P_DEFAULT), 0);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(f, path, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_int_ge(d, 0);
    ck_assert_int_ge(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
    H5Dclose(d);
    H5Sclose(space);
}

/* Replaces attribute `name` of object `obj_path` with a string (vlen UTF-8 if
 * fixed_len is 0, else fixed-length ASCII of that size), scalar or list. */
static void set_string_attr(hid_t f, const char *obj_path, const char *name, int count,
                            const char *const *values, size_t fixed_len)
{
    hid_t obj = H5Oopen(f, obj_path, H5P_DEFAULT);
    ck_assert_int_ge(obj, 0);
    if (H5Aexists(obj, name) > 0)
        ck_assert_int_ge(H5Adelete(obj, name), 0);
    hid_t type = H5Tcopy(H5T_C_S1);
    hsize_t dims[1] = {(hsize_t)count};
    hid_t space = count < 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    size_t n = count < 0 ? 1 : (size_t)count;
    hid_t a;
    if (fixed_len) {
        ck_assert_int_ge(H5Tset_size(type, fixed_len), 0);
        ck_assert_int_ge(H5Tset_strpad(type, H5T_STR_NULLPAD), 0);
        char *buf = calloc(n, fixed_len);
        for (size_t i = 0; i < n; i++) { /* NUL-padded, not necessarily terminated */
            size_t len = strlen(values[i]);
            memcpy(buf + i * fixed_len, values[i], len < fixed_len ? len : fixed_len);
        }
        a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        ck_assert_int_ge(a, 0);
        ck_assert_int_ge(H5Awrite(a, type, buf), 0);
        free(buf);
    } else {
        H5Tset_size(type, H5T_VARIABLE);
        H5Tset_cset(type, H5T_CSET_UTF8);
        a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        ck_assert_int_ge(a, 0);
        ck_assert_int_ge(H5Awrite(a, type, values), 0);
    }
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
    H5Oclose(obj);
}

/* ---------------------------------------------------------------------------------- */
/* The golden model (written by h5py)                                                  */
/* ---------------------------------------------------------------------------------- */

static float element(const float *data, size_t index) { return data[index]; }

START_TEST(test_read_golden)
{
    char path[4096];
    if (!golden_path(path, sizeof(path)))
        return;
    isl_params p;
    ck_assert_msg(isl_model_read_h5(path, &p) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(p.arch.base_depth, 32);
    ck_assert_int_eq(p.arch.num_z, 13);
    ck_assert_int_eq(p.arch.num_modules, 104);
    ck_assert_str_eq(p.input_normalization, "none");
    ck_assert_int_eq(p.num_heads, 3);
    ck_assert_str_eq(p.heads[0].name, "dapi_confocal");
    ck_assert_str_eq(p.heads[1].name, "nfh_confocal");
    ck_assert_str_eq(p.heads[2].name, "autoencoder");
    ck_assert_int_eq(p.heads[2].out_ch, 13 * 256);
    ck_assert_int_eq(p.modules[50].bn1.channels, 16);

    /* Obtained independently with h5py (/usr/bin/python3):
     *   f = h5py.File(model.h5); v = f[dataset][index]; float(v).hex()
     * flat index = numpy.ravel_multi_index(index, shape). */
    ck_assert(element(p.projection_weight, 0) == -0x1.9a51c6p-4f);         /* [0,0,0,0] */
    ck_assert(element(p.projection_weight, 207) == 0x1.5f1d14p-5f);        /* [15,12,0,0] */
    ck_assert(element(p.projection_bias, 3) == 0x1.243e60p-5f);            /* [3] */
    ck_assert(element(p.modules[12].bn2.var, 0) == 0x1.170e70p+0f);        /* [0] */
    ck_assert(element(p.modules[50].expand_weight, 6142) == -0x1.b9cd96p-5f); /* up [31,11,3,2] */
    ck_assert(element(p.modules[103].expand_weight, 450) == -0x1.acfa76p-8f); /* [1,2,0,0] */
    ck_assert(element(p.heads[1].weight, 12287) == -0x1.e4a978p-2f);      /* [255,47,0,0] */
    ck_assert(element(p.heads[2].bias, 3327) == 0x1.c45370p-3f);           /* [3327] */
    isl_params_free(&p);
}
END_TEST

/* The golden file (h5py) rewritten by isl and read back is the same model. */
START_TEST(test_golden_rewrite)
{
    char path[4096], out[4096];
    if (!golden_path(path, sizeof(path)))
        return;
    isl_params a, b;
    ck_assert_msg(isl_model_read_h5(path, &a) == ISL_OK, "%s", isl_last_error());
    test_scratch_path(out, sizeof(out), "golden-copy.h5");
    ck_assert_msg(isl_model_write_h5(out, &a) == ISL_OK, "%s", isl_last_error());
    ck_assert_msg(isl_model_read_h5(out, &b) == ISL_OK, "%s", isl_last_error());
    assert_same_params(&a, &b);
    isl_params_free(&a);
    isl_params_free(&b);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Round trips                                                                         */
/* ---------------------------------------------------------------------------------- */

START_TEST(test_round_trip_base32)
{
    char path[4096];
    isl_params a, b;
    make_model(&a, 32, 13, 1, 42);
    snprintf(a.input_normalization, sizeof(a.input_normalization), "global");
    test_scratch_path(path, sizeof(path), "model.h5");
    ck_assert_msg(isl_model_write_h5(path, &a) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(test_count_temp_files(test_scratch_dir()), 0);
    ck_assert_msg(isl_model_read_h5(path, &b) == ISL_OK, "%s", isl_last_error());
    assert_same_params(&a, &b);
    isl_params_free(&b);

    /* Overwriting an existing model replaces it. */
    isl_params c;
    make_model(&c, 32, 13, 1, 43);
    ck_assert_msg(isl_model_write_h5(path, &c) == ISL_OK, "%s", isl_last_error());
    ck_assert_msg(isl_model_read_h5(path, &b) == ISL_OK, "%s", isl_last_error());
    assert_same_params(&c, &b);
    ck_assert_int_eq(test_count_temp_files(test_scratch_dir()), 0);
    isl_params_free(&a);
    isl_params_free(&b);
    isl_params_free(&c);
}
END_TEST

START_TEST(test_round_trip_without_autoencoder)
{
    char path[4096];
    isl_params a, b;
    make_model(&a, 8, 3, 0, 5);
    test_scratch_path(path, sizeof(path), "small.h5");
    ck_assert_msg(isl_model_write_h5(path, &a) == ISL_OK, "%s", isl_last_error());
    ck_assert_msg(isl_model_read_h5(path, &b) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(b.num_heads, 2);
    assert_same_params(&a, &b);
    isl_params_free(&a);
    isl_params_free(&b);
}
END_TEST

/* Writers other than h5py may store fixed-length strings and float64 data. */
START_TEST(test_fixed_strings_and_float64)
{
    char path[4096];
    isl_params a, b;
    make_model(&a, 32, 13, 1, 9);
    test_scratch_path(path, sizeof(path), "fixed.h5");
    ck_assert_msg(isl_model_write_h5(path, &a) == ISL_OK, "%s", isl_last_error());

    static const char *const format[] = {"isl-model"}, *const norm[] = {"none"},
                             *const kind[] = {"down"};
    static const char *const heads[] = {"dapi_confocal", "nfh_confocal", "autoencoder"};
    double bias[16];
    for (int i = 0; i < 16; i++)
        bias[i] = a.projection_bias[i];
    hid_t f = test_h5_open_rw(path);
    set_string_attr(f, "/", "format", -1, format, 9);     /* exactly filled, no NUL */
    set_string_attr(f, "/", "input_normalization", 1, norm, 16); /* a 1-element list */
    set_string_attr(f, "/", "heads", 3, heads, 20);
    set_string_attr(f, "/modules/018", "kind", -1, kind, 8);
    hsize_t dims[1] = {16};
    replace_dataset(f, "/projection/bias", H5T_IEEE_F64LE, 1, dims, bias);
    H5Fclose(f);

    ck_assert_msg(isl_model_read_h5(path, &b) == ISL_OK, "%s", isl_last_error());
    assert_same_params(&a, &b);
    isl_params_free(&a);
    isl_params_free(&b);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Reader errors                                                                       */
/* ---------------------------------------------------------------------------------- */

START_TEST(test_missing_file)
{
    char path[4096];
    test_scratch_path(path, sizeof(path), "does-not-exist.h5");
    expect_read_error(path, ISL_ERROR_IO, "does-not-exist.h5");
    expect_read_error(test_scratch_dir(), ISL_ERROR_IO, test_scratch_dir()); /* a directory */
}
END_TEST

START_TEST(test_not_hdf5)
{
    char path[4096];
    static const char text[] = "this is not an HDF5 file\n";
    test_scratch_path(path, sizeof(path), "text.h5");
    test_write_file(path, text, sizeof(text) - 1);
    expect_read_error(path, ISL_ERROR_FORMAT, "not an HDF5 file");
    test_write_file(path, "", 0);
    expect_read_error(path, ISL_ERROR_FORMAT, "text.h5");
}
END_TEST

START_TEST(test_truncated)
{
    char path[4096], golden[4096];
    size_t size;
    if (!golden_path(golden, sizeof(golden)))
        return;
    char *data = test_read_file(golden, &size);
    test_scratch_path(path, sizeof(path), "truncated.h5");
    test_write_file(path, data, size / 2);
    free(data);
    expect_read_error(path, ISL_ERROR_FORMAT, "truncated.h5");
}
END_TEST

START_TEST(test_wrong_format)
{
    char path[4096];
    static const char *const other[] = {"not-isl"};
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "format.h5"));
    set_string_attr(f, "/", "format", -1, other, 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "format");
    expect_read_error(path, ISL_ERROR_FORMAT, "not-isl");

    f = test_h5_open_rw(path);
    ck_assert_int_ge(H5Adelete(f, "format"), 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "missing attribute format");
}
END_TEST

START_TEST(test_newer_version)
{
    char path[4096];
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "v2.h5"));
    test_h5_set_int_attr(f, "format_version", 2);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_UNSUPPORTED, "newer isl");
    expect_read_error(path, ISL_ERROR_UNSUPPORTED, "format_version");
}
END_TEST

START_TEST(test_bad_attributes)
{
    char path[4096];
    static const char *const dup[] = {"a", "a", "autoencoder"};
    static const char *const ae_first[] = {"autoencoder", "a"};
    static const char *const slash[] = {"a/b"};
    static const char *const bad_norm[] = {"percentile"};
    fresh_model(path, sizeof(path), "attrs.h5");

    hid_t f = test_h5_open_rw(path);
    test_h5_set_int_attr(f, "num_classes", 128);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "num_classes");

    f = test_h5_open_rw(path);
    test_h5_set_int_attr(f, "num_classes", 256);
    test_h5_set_int_attr(f, "base_depth", 1000000);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "base_depth");

    f = test_h5_open_rw(path);
    test_h5_set_int_attr(f, "base_depth", 32);
    test_h5_set_int_attr(f, "num_z", 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "num_z");

    f = test_h5_open_rw(path);
    test_h5_set_int_attr(f, "num_z", 13);
    set_string_attr(f, "/", "heads", 3, dup, 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "heads");

    f = test_h5_open_rw(path);
    set_string_attr(f, "/", "heads", 2, ae_first, 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "heads");

    f = test_h5_open_rw(path);
    set_string_attr(f, "/", "heads", 1, slash, 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "a/b");

    f = test_h5_open_rw(path);
    static const char *const ok[] = {"dapi_confocal", "nfh_confocal", "autoencoder"};
    set_string_attr(f, "/", "heads", 3, ok, 0);
    set_string_attr(f, "/", "input_normalization", -1, bad_norm, 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "input_normalization");
}
END_TEST

START_TEST(test_missing_dataset)
{
    char path[4096];
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "missing.h5"));
    ck_assert_int_ge(H5Ldelete(f, "/modules/012/bn2/var", H5P_DEFAULT), 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "/modules/012/bn2/var");
    expect_read_error(path, ISL_ERROR_FORMAT, "missing dataset");

    /* A missing intermediate group is reported the same way. */
    f = test_h5_open_rw(fresh_model(path, sizeof(path), "missing-group.h5"));
    ck_assert_int_ge(H5Ldelete(f, "/heads/nfh_confocal/bn", H5P_DEFAULT), 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "/heads/nfh_confocal/bn/gamma: missing dataset");
}
END_TEST

START_TEST(test_wrong_shape)
{
    char path[4096];
    float data[12] = {0};
    hsize_t dims[2] = {3, 4};
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "shape.h5"));
    replace_dataset(f, "/projection/weight", H5T_IEEE_F32LE, 2, dims, data);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_SHAPE, "/projection/weight");
    expect_read_error(path, ISL_ERROR_SHAPE, "has shape [3, 4] but the model needs [16, 13, 1, 1]");
}
END_TEST

START_TEST(test_nan_value)
{
    char path[4096];
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "nan.h5"));
    test_h5_poke_float(f, "/modules/007/expand/weight", 5, NAN);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_VALUE, "/modules/007/expand/weight");
    expect_read_error(path, ISL_ERROR_VALUE, "element 5 ");
    expect_read_error(path, ISL_ERROR_VALUE, "NaN");

    f = test_h5_open_rw(path);
    test_h5_poke_float(f, "/modules/007/expand/weight", 5, 0.0f);
    test_h5_poke_float(f, "/heads/autoencoder/bias", 100, INFINITY);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_VALUE, "/heads/autoencoder/bias: element 100");
}
END_TEST

START_TEST(test_negative_var)
{
    char path[4096];
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "var.h5"));
    test_h5_poke_float(f, "/heads/dapi_confocal/bn/var", 2, -0.5f);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_VALUE, "/heads/dapi_confocal/bn/var");
    expect_read_error(path, ISL_ERROR_VALUE, "element 2 ");
}
END_TEST

START_TEST(test_wrong_kind)
{
    char path[4096];
    static const char *const in[] = {"in"};
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "kind.h5"));
    set_string_attr(f, "/modules/018", "kind", -1, in, 0); /* module 18 is a down module */
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "/modules/018");
    expect_read_error(path, ISL_ERROR_FORMAT, "kind");

    f = test_h5_open_rw(path);
    hid_t g = H5Gopen2(f, "/modules/018", H5P_DEFAULT);
    ck_assert_int_ge(H5Adelete(g, "kind"), 0);
    H5Gclose(g);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "/modules/018: missing attribute kind");
}
END_TEST

START_TEST(test_integer_dtype)
{
    char path[4096];
    int data[16] = {0};
    hsize_t dims[1] = {16};
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "int.h5"));
    replace_dataset(f, "/projection/bias", H5T_STD_I32LE, 1, dims, data);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "/projection/bias");
    expect_read_error(path, ISL_ERROR_FORMAT, "integer");
}
END_TEST

START_TEST(test_extra_module_and_head)
{
    char path[4096];
    static const char *const in[] = {"in"};
    hid_t f = test_h5_open_rw(fresh_model(path, sizeof(path), "extra.h5"));
    hid_t g = H5Gcreate2(f, "/modules/104", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_int_ge(g, 0);
    H5Gclose(g);
    set_string_attr(f, "/modules/104", "kind", -1, in, 0);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "/modules/104");
    expect_read_error(path, ISL_ERROR_FORMAT, "unexpected module");

    f = test_h5_open_rw(path);
    ck_assert_int_ge(H5Ldelete(f, "/modules/104", H5P_DEFAULT), 0);
    g = H5Gcreate2(f, "/heads/extra", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_int_ge(g, 0);
    H5Gclose(g);
    H5Fclose(f);
    expect_read_error(path, ISL_ERROR_FORMAT, "/heads/extra");
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Writer errors                                                                       */
/* ---------------------------------------------------------------------------------- */

START_TEST(test_save_into_missing_directory)
{
    char path[4096];
    isl_params p;
    make_model(&p, 8, 3, 1, 1);
    test_scratch_path(path, sizeof(path), "no-such-dir/model.h5");
    isl_status st = isl_model_write_h5(path, &p);
    ck_assert_int_eq(st, ISL_ERROR_IO);
    ck_assert_msg(strstr(isl_last_error(), path) != NULL, "%s", isl_last_error());
    ck_assert_int_eq(test_count_temp_files(test_scratch_dir()), 0);
    isl_params_free(&p);
}
END_TEST

/* A save rejected before writing (NaN weights) leaves the old file alone. */
START_TEST(test_failed_save_keeps_old_file_invalid)
{
    char path[4096];
    size_t before_size, after_size;
    fresh_model(path, sizeof(path), "keep.h5");
    char *before = test_read_file(path, &before_size);

    isl_params p;
    make_model(&p, 32, 13, 1, 3);
    p.modules[3].reduce_weight[17] = NAN;
    ck_assert_int_eq(isl_model_write_h5(path, &p), ISL_ERROR_VALUE);
    ck_assert_msg(strstr(isl_last_error(), "/modules/003/reduce/weight") != NULL, "%s",
                  isl_last_error());
    p.modules[3].reduce_weight[17] = 0;
    snprintf(p.heads[0].name, sizeof(p.heads[0].name), "nfh_confocal"); /* duplicate */
    ck_assert_int_eq(isl_model_write_h5(path, &p), ISL_ERROR_INVALID_ARGUMENT);

    char *after = test_read_file(path, &after_size);
    ck_assert_uint_eq(before_size, after_size);
    ck_assert(memcmp(before, after, before_size) == 0);
    ck_assert_int_eq(test_count_temp_files(test_scratch_dir()), 0);
    free(before);
    free(after);
    isl_params_free(&p);
}
END_TEST

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* A save that fails half-way through writing (the file size limit stands in for a full
 * disk: both fail write() the same way) leaves the old file alone, no temp file, no
 * open descriptor. */
START_TEST(test_failed_save_keeps_old_file_io)
{
    char path[4096];
    size_t before_size, after_size;
    fresh_model(path, sizeof(path), "keep-io.h5");
    char *before = test_read_file(path, &before_size);
    isl_params p;
    make_model(&p, 32, 13, 1, 4);
    int fds = count_open_fds();

    struct rlimit old, small;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    small = old;
    small.rlim_cur = 256 * 1024; /* the model is ~4 MiB */
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    isl_status st = isl_model_write_h5(path, &p);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);

    ck_assert_msg(st == ISL_ERROR_IO, "status %d: %s", st, isl_last_error());
    ck_assert_msg(strstr(isl_last_error(), "keep-io.h5") != NULL, "%s", isl_last_error());
    char *after = test_read_file(path, &after_size);
    ck_assert_uint_eq(before_size, after_size);
    ck_assert(memcmp(before, after, before_size) == 0);
    ck_assert_int_eq(test_count_temp_files(test_scratch_dir()), 0);
    ck_assert_int_eq(count_open_fds(), fds);

    /* The library still works afterwards. */
    ck_assert_msg(isl_model_write_h5(path, &p) == ISL_OK, "%s", isl_last_error());
    free(before);
    free(after);
    isl_params_free(&p);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Threads                                                                             */
/* ---------------------------------------------------------------------------------- */

typedef struct job {
    const char *read_path;
    char write_path[4096];
    isl_status status;
} job;

static void *load_and_save(void *arg)
{
    job *j = arg;
    for (int i = 0; i < 2 && j->status == ISL_OK; i++) {
        isl_params p;
        j->status = isl_model_read_h5(j->read_path, &p);
        if (j->status == ISL_OK) {
            j->status = isl_model_write_h5(j->write_path, &p);
            isl_params_free(&p);
        }
    }
    return NULL;
}

START_TEST(test_concurrent_use)
{
    char source[4096];
    fresh_model(source, sizeof(source), "source.h5");
    job jobs[4];
    pthread_t threads[4];
    for (int t = 0; t < 4; t++) {
        jobs[t].read_path = source;
        jobs[t].status = ISL_OK;
        char name[32];
        snprintf(name, sizeof(name), "copy%d.h5", t);
        test_scratch_path(jobs[t].write_path, sizeof(jobs[t].write_path), name);
        ck_assert_int_eq(pthread_create(&threads[t], NULL, load_and_save, &jobs[t]), 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(threads[t], NULL);
        ck_assert_int_eq(jobs[t].status, ISL_OK);
    }
    isl_params a, b;
    ck_assert_int_eq(isl_model_read_h5(source, &a), ISL_OK);
    ck_assert_int_eq(isl_model_read_h5(jobs[3].write_path, &b), ISL_OK);
    assert_same_params(&a, &b);
    isl_params_free(&a);
    isl_params_free(&b);
}
END_TEST

/* ---------------------------------------------------------------------------------- */

static Suite *model_io_suite(void)
{
    Suite *s = suite_create("model_io");
    TCase *tc = tcase_create("model_io");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, make_scratch, test_scratch_remove);
    tcase_add_test(tc, test_read_golden);
    tcase_add_test(tc, test_golden_rewrite);
    tcase_add_test(tc, test_round_trip_base32);
    tcase_add_test(tc, test_round_trip_without_autoencoder);
    tcase_add_test(tc, test_fixed_strings_and_float64);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_not_hdf5);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_wrong_format);
    tcase_add_test(tc, test_newer_version);
    tcase_add_test(tc, test_bad_attributes);
    tcase_add_test(tc, test_missing_dataset);
    tcase_add_test(tc, test_wrong_shape);
    tcase_add_test(tc, test_nan_value);
    tcase_add_test(tc, test_negative_var);
    tcase_add_test(tc, test_wrong_kind);
    tcase_add_test(tc, test_integer_dtype);
    tcase_add_test(tc, test_extra_module_and_head);
    tcase_add_test(tc, test_save_into_missing_directory);
    tcase_add_test(tc, test_failed_save_keeps_old_file_invalid);
    tcase_add_test(tc, test_failed_save_keeps_old_file_io);
    tcase_add_test(tc, test_concurrent_use);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(model_io_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    H5close(); /* release HDF5's global state before LeakSanitizer looks */
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
