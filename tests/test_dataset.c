/* Datasets (lib/train/dataset.c, lib/train/dataset_io.c) and the training sampler (lib/train/sampler.c):
 * round trips, every validation error, atomic saves, and crops checked against an
 * extraction written here from the documented semantics. */
#include "isl.h"
#include "input.h"
#include "test_util.h"

#include <check.h>
#include <hdf5.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define PAD 121 /* the spec's context on each side, written here independently */

/* ---------------------------------------------------------------------------------- */
/* Scratch files                                                                       */
/* ---------------------------------------------------------------------------------- */

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* ---------------------------------------------------------------------------------- */
/* Test data                                                                           */
/* ---------------------------------------------------------------------------------- */

enum { NZ = 3, AH = 40, AW = 50, BH = 30, BW = 36 };

typedef struct fixture {
    uint16_t a_stack[NZ * AH * AW];
    float b_stack[NZ * BH * BW];
    uint8_t a_dapi[AH * AW];            /* full-size uint8 target, no mask */
    float a_map2[10 * 12];              /* 12 x 10 float target at (x 5, y 7) */
    uint8_t a_map2_mask[10 * 12];
    uint16_t b_map2[BH * BW];           /* full-size uint16 target with a mask */
    uint8_t b_map2_mask[BH * BW];
} fixture;

static fixture fx;

static void fill_fixture(uint64_t seed)
{
    uint64_t s = seed;
    for (int i = 0; i < NZ * AH * AW; i++)
        fx.a_stack[i] = (uint16_t)(test_uniform(&s) * 65535.0);
    for (int i = 0; i < NZ * BH * BW; i++)
        fx.b_stack[i] = (float)test_uniform(&s);
    for (int i = 0; i < AH * AW; i++)
        fx.a_dapi[i] = (uint8_t)(test_uniform(&s) * 255.0);
    for (int i = 0; i < 10 * 12; i++) {
        fx.a_map2[i] = (float)test_uniform(&s);
        fx.a_map2_mask[i] = test_uniform(&s) < 0.6 ? (uint8_t)(1 + (i % 7)) : 0; /* any nonzero */
    }
    for (int i = 0; i < BH * BW; i++) {
        fx.b_map2[i] = (uint16_t)(test_uniform(&s) * 65535.0);
        fx.b_map2_mask[i] = (i / BW) >= BH / 2; /* bottom half known */
    }
    fx.a_map2[3] = NAN; /* an unknown pixel may hold anything */
    fx.a_map2_mask[3] = 0;
}

/* Two wells: "A" (uint16 stack; labels "zeta" = dapi uint8 full, "alpha" = partial float
 * with mask) and "B" (float stack; "alpha" uint16 with mask). Labels are added zeta
 * first, so first-added order differs from alphabetical order. */
static isl_dataset *make_dataset(void)
{
    isl_dataset *d = NULL;
    ck_assert_int_eq(isl_dataset_create(NZ, &d), ISL_OK);
    isl_stack a = {fx.a_stack, ISL_DTYPE_U16, NZ, AH, AW};
    isl_stack b = {fx.b_stack, ISL_DTYPE_F32, NZ, BH, BW};
    int index = -1;
    ck_assert_msg(isl_dataset_add_well(d, "A", "cond-1", 0.65, &a, &index) == ISL_OK, "%s",
                  isl_last_error());
    ck_assert_int_eq(index, 0);
    ck_assert_msg(isl_dataset_add_well(d, "B", NULL, 0, &b, &index) == ISL_OK, "%s",
                  isl_last_error());
    ck_assert_int_eq(index, 1);
    isl_stack dapi = {fx.a_dapi, ISL_DTYPE_U8, 1, AH, AW};
    isl_stack map2 = {fx.a_map2, ISL_DTYPE_F32, 1, 10, 12};
    isl_stack bmap2 = {fx.b_map2, ISL_DTYPE_U16, 1, BH, BW};
    ck_assert_msg(isl_dataset_add_target(d, 0, "zeta", 0, 0, &dapi, NULL) == ISL_OK, "%s",
                  isl_last_error());
    ck_assert_msg(isl_dataset_add_target(d, 0, "alpha", 5, 7, &map2, fx.a_map2_mask) == ISL_OK,
                  "%s", isl_last_error());
    ck_assert_msg(isl_dataset_add_target(d, 1, "alpha", 0, 0, &bmap2, fx.b_map2_mask) == ISL_OK,
                  "%s", isl_last_error());
    return d;
}

static const char *fresh_file(char *buf, size_t cap, const char *name)
{
    isl_dataset *d = make_dataset();
    test_scratch_path(buf, cap, name);
    ck_assert_msg(isl_dataset_save(d, buf) == ISL_OK, "%s", isl_last_error());
    isl_dataset_free(d);
    return buf;
}

/* Every field of two datasets, bit for bit. */
static void assert_same(const isl_dataset *x, const isl_dataset *y)
{
    ck_assert_int_eq(isl_dataset_num_z(x), isl_dataset_num_z(y));
    ck_assert_int_eq(isl_dataset_num_wells(x), isl_dataset_num_wells(y));
    ck_assert_int_eq(isl_dataset_num_labels(x), isl_dataset_num_labels(y));
    for (int l = 0; l < isl_dataset_num_labels(x); l++)
        ck_assert_str_eq(isl_dataset_label_name(x, l), isl_dataset_label_name(y, l));
    for (int w = 0; w < isl_dataset_num_wells(x); w++) {
        int h1, w1, h2, w2;
        ck_assert_int_eq(isl_dataset_well_size(x, w, &h1, &w1), ISL_OK);
        ck_assert_int_eq(isl_dataset_well_size(y, w, &h2, &w2), ISL_OK);
        ck_assert_int_eq(h1, h2);
        ck_assert_int_eq(w1, w2);
        ck_assert_str_eq(isl_dataset_well_name(x, w), isl_dataset_well_name(y, w));
        ck_assert_str_eq(isl_dataset_well_condition(x, w), isl_dataset_well_condition(y, w));
        ck_assert(isl_dataset_well_pixel_size(x, w) == isl_dataset_well_pixel_size(y, w));
        size_t n = (size_t)h1 * (size_t)w1;
        ck_assert(memcmp(isl_dataset_well_stack(x, w), isl_dataset_well_stack(y, w),
                         n * NZ * sizeof(float)) == 0);
        for (int l = 0; l < isl_dataset_num_labels(x); l++) {
            const char *label = isl_dataset_label_name(x, l);
            const float *v1, *v2;
            const uint8_t *m1, *m2;
            isl_status s1 = isl_dataset_well_target(x, w, label, &v1, &m1);
            isl_status s2 = isl_dataset_well_target(y, w, label, &v2, &m2);
            ck_assert_int_eq(s1, s2);
            if (s1 != ISL_OK)
                continue;
            ck_assert_msg(memcmp(v1, v2, n * sizeof(float)) == 0, "well %d %s values", w, label);
            ck_assert_msg(memcmp(m1, m2, n) == 0, "well %d %s mask", w, label);
        }
    }
}

/* ---------------------------------------------------------------------------------- */
/* Building, accessors, round trips                                                    */
/* ---------------------------------------------------------------------------------- */

START_TEST(accessors_return_what_was_added)
{
    fill_fixture(1);
    isl_dataset *d = make_dataset();
    ck_assert_int_eq(isl_dataset_num_z(d), NZ);
    ck_assert_int_eq(isl_dataset_num_wells(d), 2);
    ck_assert_str_eq(isl_dataset_well_name(d, 0), "A");
    ck_assert_str_eq(isl_dataset_well_condition(d, 0), "cond-1");
    ck_assert_str_eq(isl_dataset_well_condition(d, 1), "");
    ck_assert(isl_dataset_well_pixel_size(d, 0) == 0.65);
    ck_assert(isl_dataset_well_pixel_size(d, 1) == 0.0);
    ck_assert_int_eq(isl_dataset_well_index(d, "B"), 1);
    ck_assert_int_eq(isl_dataset_well_index(d, "C"), -1);
    int h, w;
    ck_assert_int_eq(isl_dataset_well_size(d, 1, &h, &w), ISL_OK);
    ck_assert_int_eq(h, BH);
    ck_assert_int_eq(w, BW);
    ck_assert_int_eq(isl_dataset_num_labels(d), 2);
    ck_assert_str_eq(isl_dataset_label_name(d, 0), "zeta"); /* first-added order */
    ck_assert_str_eq(isl_dataset_label_name(d, 1), "alpha");
    ck_assert_int_eq(isl_dataset_label_index(d, "alpha"), 1);
    ck_assert_int_eq(isl_dataset_label_index(d, "zeta"), 0);
    ck_assert_int_eq(isl_dataset_label_index(d, "beta"), -1);
    ck_assert_int_eq(isl_dataset_label_index(NULL, "zeta"), -1);

    /* Stacks scaled as prediction scales them: raw / 65535 (one rounding). */
    const float *stack = isl_dataset_well_stack(d, 0);
    for (int i = 0; i < NZ * AH * AW; i++)
        ck_assert(stack[i] == (float)(fx.a_stack[i] / 65535.0));
    ck_assert(memcmp(isl_dataset_well_stack(d, 1), fx.b_stack, sizeof(fx.b_stack)) == 0);

    /* A partial target: full-well arrays, known only inside it where its mask is set. */
    const float *v;
    const uint8_t *m;
    ck_assert_int_eq(isl_dataset_well_target(d, 0, "alpha", &v, &m), ISL_OK);
    int bad = 0, known_count = 0;
    for (int y = 0; y < AH; y++)
        for (int x = 0; x < AW; x++) {
            int inside = x >= 5 && x < 17 && y >= 7 && y < 17;
            int i = (y - 7) * 12 + (x - 5);
            int known = inside && fx.a_map2_mask[i];
            known_count += known;
            bad += (m[y * AW + x] != 0) != known || v[y * AW + x] != (known ? fx.a_map2[i] : 0.0f);
        }
    ck_assert_int_eq(bad, 0);
    ck_assert_int_gt(known_count, 30);
    ck_assert_int_eq(isl_dataset_well_target(d, 0, "zeta", &v, NULL), ISL_OK);
    for (int i = 0; i < AH * AW; i++)
        ck_assert(v[i] == (float)(fx.a_dapi[i] / 255.0));
    ck_assert_int_eq(isl_dataset_well_target(d, 0, "zeta", NULL, &m), ISL_OK);
    for (int i = 0; i < AH * AW; i++)
        ck_assert_int_eq(m[i], 1);
    ck_assert_int_eq(isl_dataset_well_target(d, 0, "zeta", NULL, NULL), ISL_OK);

    /* Invalid indices and names. */
    ck_assert_ptr_null(isl_dataset_well_name(d, 2));
    ck_assert_ptr_null(isl_dataset_well_name(d, -1));
    ck_assert_ptr_null(isl_dataset_well_condition(d, 2));
    ck_assert(isl_dataset_well_pixel_size(d, 2) == -1.0);
    ck_assert_ptr_null(isl_dataset_well_stack(d, 2));
    ck_assert_ptr_null(isl_dataset_label_name(d, 2));
    ck_assert_int_eq(isl_dataset_well_size(d, 2, &h, &w), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_dataset_well_target(d, 1, "zeta", &v, &m), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(isl_last_error(), "zeta") != NULL, "%s", isl_last_error());
    ck_assert_int_eq(isl_dataset_well_target(d, 5, "zeta", &v, &m), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_dataset_well_target(d, 0, NULL, &v, &m), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_dataset_num_wells(NULL), 0);
    ck_assert_int_eq(isl_dataset_num_labels(NULL), 0);
    ck_assert_int_eq(isl_dataset_well_index(NULL, "A"), -1);
    isl_dataset_free(d);
    isl_dataset_free(NULL);
}
END_TEST

static hid_t dataset_type_class(hid_t f, const char *path, size_t *size)
{
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    ck_assert_msg(d >= 0, "%s", path);
    hid_t t = H5Dget_type(d);
    H5T_class_t c = H5Tget_class(t);
    *size = H5Tget_size(t);
    H5Tclose(t);
    H5Dclose(d);
    return c;
}

START_TEST(save_and_load_round_trip)
{
    fill_fixture(2);
    test_scratch_make("isl-dataset");
    char path[4096];
    isl_dataset *d = make_dataset(), *back = NULL;
    test_scratch_path(path, sizeof(path), "round.h5");
    ck_assert_msg(isl_dataset_save(d, path) == ISL_OK, "%s", isl_last_error());
    ck_assert_msg(isl_dataset_load(path, &back) == ISL_OK, "%s", isl_last_error());
    assert_same(d, back);

    /* Compact storage: integer inputs as uint16, floats as float32, masks as bytes. */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    size_t size;
    ck_assert_int_eq(dataset_type_class(f, "/wells/000/stack", &size), H5T_INTEGER);
    ck_assert_uint_eq(size, 2);
    ck_assert_int_eq(dataset_type_class(f, "/wells/001/stack", &size), H5T_FLOAT);
    ck_assert_int_eq(dataset_type_class(f, "/wells/000/labels/zeta/values", &size), H5T_INTEGER);
    ck_assert_int_eq(dataset_type_class(f, "/wells/000/labels/alpha/values", &size), H5T_FLOAT);
    ck_assert_int_eq(dataset_type_class(f, "/wells/000/labels/alpha/mask", &size), H5T_INTEGER);
    ck_assert_uint_eq(size, 1);
    H5Fclose(f);

    /* Saving the loaded copy again gives the same contents; an empty dataset too. */
    ck_assert_int_eq(isl_dataset_save(back, path), ISL_OK);
    isl_dataset_free(back);
    ck_assert_int_eq(isl_dataset_load(path, &back), ISL_OK);
    assert_same(d, back);
    isl_dataset_free(back);
    isl_dataset *empty;
    ck_assert_int_eq(isl_dataset_create(7, &empty), ISL_OK);
    ck_assert_int_eq(isl_dataset_save(empty, path), ISL_OK);
    ck_assert_msg(isl_dataset_load(path, &back) == ISL_OK, "%s", isl_last_error());
    assert_same(empty, back);
    isl_dataset_free(back);
    isl_dataset_free(empty);
    isl_dataset_free(d);
    test_scratch_remove();
}
END_TEST

static void expect_status(isl_status got, isl_status want, const char *needle)
{
    ck_assert_msg(got == want, "status %d (%s), expected %d; message: %s", got,
                  isl_status_string(got), want, isl_last_error());
    ck_assert_msg(!needle || strstr(isl_last_error(), needle), "message \"%s\" lacks \"%s\"",
                  isl_last_error(), needle);
}

START_TEST(bad_wells_and_targets_are_refused)
{
    fill_fixture(3);
    isl_dataset *d = make_dataset();
    isl_stack a = {fx.a_stack, ISL_DTYPE_U16, NZ, AH, AW};
    expect_status(isl_dataset_add_well(d, "A", NULL, 0, &a, NULL), ISL_ERROR_INVALID_ARGUMENT,
                  "already has a well called \"A\"");
    expect_status(isl_dataset_add_well(d, "", NULL, 0, &a, NULL), ISL_ERROR_INVALID_ARGUMENT,
                  "name");
    expect_status(isl_dataset_add_well(d, NULL, NULL, 0, &a, NULL), ISL_ERROR_INVALID_ARGUMENT,
                  "name");
    expect_status(isl_dataset_add_well(d, "C", NULL, -1, &a, NULL), ISL_ERROR_INVALID_ARGUMENT,
                  "pixel size");
    expect_status(isl_dataset_add_well(d, "C", NULL, NAN, &a, NULL), ISL_ERROR_INVALID_ARGUMENT,
                  "pixel size");
    expect_status(isl_dataset_add_well(d, "C", NULL, 0, NULL, NULL), ISL_ERROR_INVALID_ARGUMENT,
                  NULL);
    isl_stack two = {fx.a_stack, ISL_DTYPE_U16, 2, AH, AW};
    expect_status(isl_dataset_add_well(d, "C", NULL, 0, &two, NULL), ISL_ERROR_SHAPE,
                  "2 z planes but the dataset has 3");
    isl_stack zero = {fx.a_stack, ISL_DTYPE_U16, NZ, 0, AW};
    expect_status(isl_dataset_add_well(d, "C", NULL, 0, &zero, NULL), ISL_ERROR_SHAPE, "C");
    isl_stack bad_type = {fx.a_stack, (isl_dtype)9, NZ, AH, AW};
    expect_status(isl_dataset_add_well(d, "C", NULL, 0, &bad_type, NULL),
                  ISL_ERROR_INVALID_ARGUMENT, "sample type");

    float *f = malloc(sizeof(float) * NZ * BH * BW);
    memcpy(f, fx.b_stack, sizeof(float) * NZ * BH * BW);
    isl_stack fs = {f, ISL_DTYPE_F32, NZ, BH, BW};
    f[BH * BW + 2 * BW + 4] = NAN;
    expect_status(isl_dataset_add_well(d, "C", NULL, 0, &fs, NULL), ISL_ERROR_VALUE,
                  "plane 1, pixel (x 4, y 2) is NaN");
    f[BH * BW + 2 * BW + 4] = 1.5f;
    expect_status(isl_dataset_add_well(d, "C", NULL, 0, &fs, NULL), ISL_ERROR_VALUE,
                  "outside [0, 1]");
    f[BH * BW + 2 * BW + 4] = -INFINITY;
    expect_status(isl_dataset_add_well(d, "C", NULL, 0, &fs, NULL), ISL_ERROR_VALUE, "infinite");
    ck_assert_int_eq(isl_dataset_num_wells(d), 2);

    /* Targets. */
    isl_stack t = {fx.a_map2, ISL_DTYPE_F32, 1, 10, 12};
    expect_status(isl_dataset_add_target(d, 0, "alpha", 0, 0, &t, fx.a_map2_mask),
                  ISL_ERROR_INVALID_ARGUMENT, "already has label \"alpha\"");
    expect_status(isl_dataset_add_target(d, 1, "new", 25, 0, &t, fx.a_map2_mask),
                  ISL_ERROR_SHAPE, "does not fit inside the 36x30 well");
    expect_status(isl_dataset_add_target(d, 1, "new", 0, 21, &t, fx.a_map2_mask),
                  ISL_ERROR_SHAPE, "does not fit");
    expect_status(isl_dataset_add_target(d, 1, "new", -1, 0, &t, fx.a_map2_mask),
                  ISL_ERROR_SHAPE, "does not fit");
    expect_status(isl_dataset_add_target(d, 2, "new", 0, 0, &t, NULL), ISL_ERROR_INVALID_ARGUMENT,
                  "well 2");
    expect_status(isl_dataset_add_target(d, 1, "autoencoder", 0, 0, &t, fx.a_map2_mask),
                  ISL_ERROR_INVALID_ARGUMENT, "autoencoder");
    expect_status(isl_dataset_add_target(d, 1, "a/b", 0, 0, &t, fx.a_map2_mask),
                  ISL_ERROR_INVALID_ARGUMENT, "a/b");
    expect_status(isl_dataset_add_target(d, 1, "", 0, 0, &t, fx.a_map2_mask),
                  ISL_ERROR_INVALID_ARGUMENT, "name");
    isl_stack planes = {fx.b_stack, ISL_DTYPE_F32, 2, 10, 12};
    expect_status(isl_dataset_add_target(d, 1, "new", 0, 0, &planes, NULL), ISL_ERROR_SHAPE,
                  "one plane");
    /* The NaN at pixel 3 is masked; without the mask it is refused. */
    expect_status(isl_dataset_add_target(d, 1, "new", 0, 0, &t, NULL), ISL_ERROR_VALUE,
                  "pixel (x 3, y 0) of the target is NaN");
    ck_assert_int_eq(isl_dataset_num_labels(d), 2); /* nothing half-added */
    ck_assert_int_eq(isl_dataset_add_target(d, 1, "new", 24, 20, &t, fx.a_map2_mask), ISL_OK);
    ck_assert_int_eq(isl_dataset_num_labels(d), 3);

    isl_dataset *e = NULL;
    expect_status(isl_dataset_create(0, &e), ISL_ERROR_INVALID_ARGUMENT, "num_z");
    ck_assert_ptr_null(e);
    expect_status(isl_dataset_create(3, NULL), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_dataset_save(NULL, "x.h5"), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_dataset_save(d, NULL), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_dataset_load(NULL, &e), ISL_ERROR_INVALID_ARGUMENT, NULL);
    free(f);
    isl_dataset_free(d);
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Validation of files                                                                 */
/* ---------------------------------------------------------------------------------- */

static void expect_load_error(const char *path, isl_status want, const char *needle)
{
    isl_dataset *d = (isl_dataset *)0x1;
    isl_status st = isl_dataset_load(path, &d);
    ck_assert_ptr_null(d);
    expect_status(st, want, needle);
    ck_assert_msg(strstr(isl_last_error(), path) != NULL, "message \"%s\" lacks the file name",
                  isl_last_error());
}

/* A variable-length string attribute: scalar (count < 0) or a list. */
static void set_strings_attr(hid_t f, const char *obj_path, const char *name, int count,
                             const char *const *values)
{
    hid_t obj = H5Oopen(f, obj_path, H5P_DEFAULT);
    ck_assert_int_ge(obj, 0);
    if (H5Aexists(obj, name) > 0)
        ck_assert_int_ge(H5Adelete(obj, name), 0);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    hsize_t dims[1] = {(hsize_t)(count < 0 ? 1 : count)};
    hid_t space = count < 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_int_ge(a, 0);
    ck_assert_int_ge(H5Awrite(a, type, values), 0);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
    H5Oclose(obj);
}

static void replace_dataset(hid_t f, const char *path, hid_t type, int rank, const hsize_t *dims,
                            hid_t mem_type, const void *data)
{
    if (H5Lexists(f, path, H5P_DEFAULT) > 0)
        ck_assert_int_ge(H5Ldelete(f, path, H5P_DEFAULT), 0);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(f, path, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_int_ge(d, 0);
    ck_assert_int_ge(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
    H5Dclose(d);
    H5Sclose(space);
}

/* Rewrites a dataset as float32 (same values), so that pokes can store any float. */
static void refloat(hid_t f, const char *path)
{
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    ck_assert_int_ge(d, 0);
    hid_t space = H5Dget_space(d);
    hsize_t dims[3];
    int rank = H5Sget_simple_extent_dims(space, dims, NULL);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    float *buf = malloc(sizeof(float) * (size_t)n);
    ck_assert_int_ge(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), 0);
    for (hssize_t i = 0; i < n; i++)
        buf[i] /= 65535.0f; /* the label values were stored as uint16 */
    H5Sclose(space);
    H5Dclose(d);
    replace_dataset(f, path, H5T_IEEE_F32LE, rank, dims, H5T_NATIVE_FLOAT, buf);
    free(buf);
}

/* A fresh file, changed by `edit`, expected to fail to load with want and needle. */
typedef void (*edit_fn)(hid_t f);

static void check_edit(const char *name, edit_fn edit, isl_status want, const char *needle)
{
    char path[4096];
    fresh_file(path, sizeof(path), name);
    hid_t f = test_h5_open_rw(path);
    edit(f);
    ck_assert_int_ge(H5Fclose(f), 0);
    expect_load_error(path, want, needle);
}

static void edit_format(hid_t f)
{
    const char *v = "isl-model";
    set_strings_attr(f, "/", "format", -1, &v);
}
static void edit_no_format(hid_t f) { ck_assert_int_ge(H5Adelete(f, "format"), 0); }
static void edit_newer(hid_t f) { test_h5_set_int_attr(f, "version", 2); }
static void edit_version_zero(hid_t f) { test_h5_set_int_attr(f, "version", 0); }
static void edit_num_z(hid_t f) { test_h5_set_int_attr(f, "num_z", 4); }
static void edit_num_z_range(hid_t f) { test_h5_set_int_attr(f, "num_z", 0); }
static void edit_stack_nan(hid_t f)
{
    test_h5_poke_float(f, "/wells/001/stack", (size_t)BH * BW + 5, NAN);
}
static void edit_stack_big(hid_t f) { test_h5_poke_float(f, "/wells/001/stack", 7, 1.25f); }
static void edit_values_big(hid_t f)
{
    /* Pixel (y 20, x 3) of B's alpha is known (bottom half). */
    refloat(f, "/wells/001/labels/alpha/values");
    test_h5_poke_float(f, "/wells/001/labels/alpha/values", 20 * BW + 3, 2.0f);
}
static void edit_values_nan_known(hid_t f)
{
    refloat(f, "/wells/001/labels/alpha/values");
    test_h5_poke_float(f, "/wells/001/labels/alpha/values", 20 * BW, NAN);
}
static void edit_values_shape(hid_t f)
{
    static float v[BH * (BW - 1)];
    hsize_t dims[2] = {BH, BW - 1};
    replace_dataset(f, "/wells/001/labels/alpha/values", H5T_IEEE_F32LE, 2, dims,
                    H5T_NATIVE_FLOAT, v);
}
static void edit_mask_shape(hid_t f)
{
    static uint8_t m[(BH + 1) * BW];
    hsize_t dims[2] = {BH + 1, BW};
    replace_dataset(f, "/wells/001/labels/alpha/mask", H5T_STD_U8LE, 2, dims, H5T_NATIVE_UINT8, m);
}
static void edit_stack_rank(hid_t f)
{
    static float v[BH * BW];
    hsize_t dims[2] = {BH, BW};
    replace_dataset(f, "/wells/001/stack", H5T_IEEE_F32LE, 2, dims, H5T_NATIVE_FLOAT, v);
}
static void edit_stack_int32(hid_t f)
{
    static int32_t v[NZ * BH * BW];
    hsize_t dims[3] = {NZ, BH, BW};
    replace_dataset(f, "/wells/001/stack", H5T_STD_I32LE, 3, dims, H5T_NATIVE_INT32, v);
}
static void edit_duplicate_well(hid_t f)
{
    const char *v = "A";
    set_strings_attr(f, "/wells/001", "name", -1, &v);
}
static void edit_duplicate_label(hid_t f)
{
    const char *v[3] = {"zeta", "alpha", "zeta"};
    set_strings_attr(f, "/", "labels", 3, v);
}
static void edit_unlisted_label(hid_t f)
{
    const char *v[1] = {"zeta"};
    set_strings_attr(f, "/", "labels", 1, v);
}
static void edit_unused_label(hid_t f)
{
    const char *v[3] = {"zeta", "alpha", "nfh"};
    set_strings_attr(f, "/", "labels", 3, v);
}
static void edit_bad_label_name(hid_t f)
{
    const char *v[3] = {"zeta", "alpha", "autoencoder"};
    set_strings_attr(f, "/", "labels", 3, v);
}
static void edit_extra_well(hid_t f)
{
    hid_t g = H5Gcreate2(f, "/wells/extra", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_int_ge(g, 0);
    H5Gclose(g);
}
static void edit_missing_mask(hid_t f)
{
    ck_assert_int_ge(H5Ldelete(f, "/wells/000/labels/alpha/mask", H5P_DEFAULT), 0);
}
static void edit_missing_name(hid_t f)
{
    hid_t g = H5Gopen2(f, "/wells/000", H5P_DEFAULT);
    ck_assert_int_ge(H5Adelete(g, "name"), 0);
    H5Gclose(g);
}
static void edit_negative_pixel(hid_t f)
{
    hid_t g = H5Gopen2(f, "/wells/000", H5P_DEFAULT);
    ck_assert_int_ge(H5Adelete(g, "pixel_size_um"), 0);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(g, "pixel_size_um", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    double v = -2;
    ck_assert_int_ge(H5Awrite(a, H5T_NATIVE_DOUBLE, &v), 0);
    H5Aclose(a);
    H5Sclose(space);
    H5Gclose(g);
}

START_TEST(invalid_files_are_refused_with_their_path)
{
    fill_fixture(4);
    test_scratch_make("isl-dataset");
    check_edit("format.h5", edit_format, ISL_ERROR_FORMAT, "/: attribute format is \"isl-model\"");
    check_edit("noformat.h5", edit_no_format, ISL_ERROR_FORMAT, "not an isl dataset");
    check_edit("newer.h5", edit_newer, ISL_ERROR_UNSUPPORTED, "newer");
    check_edit("v0.h5", edit_version_zero, ISL_ERROR_FORMAT, "version 0");
    check_edit("numz.h5", edit_num_z, ISL_ERROR_SHAPE, "/wells/000/stack: has shape [3, 40, 50]");
    check_edit("numz0.h5", edit_num_z_range, ISL_ERROR_FORMAT, "num_z is 0");
    check_edit("nan.h5", edit_stack_nan, ISL_ERROR_VALUE,
               "/wells/001/stack: element [1, 0, 5] is NaN");
    check_edit("big.h5", edit_stack_big, ISL_ERROR_VALUE,
               "/wells/001/stack: element [0, 0, 7] is outside [0, 1]");
    check_edit("values.h5", edit_values_big, ISL_ERROR_VALUE,
               "/wells/001/labels/alpha/values: element [20, 3] is outside [0, 1]");
    check_edit("valnan.h5", edit_values_nan_known, ISL_ERROR_VALUE, "element [20, 0] is NaN");
    check_edit("vshape.h5", edit_values_shape, ISL_ERROR_SHAPE,
               "/wells/001/labels/alpha/values: has shape [30, 35] but the well is [30, 36]");
    check_edit("mshape.h5", edit_mask_shape, ISL_ERROR_SHAPE, "/wells/001/labels/alpha/mask");
    check_edit("rank.h5", edit_stack_rank, ISL_ERROR_SHAPE, "/wells/001/stack: has 2 dimensions");
    check_edit("int32.h5", edit_stack_int32, ISL_ERROR_FORMAT,
               "/wells/001/stack: unsupported datatype");
    check_edit("dupwell.h5", edit_duplicate_well, ISL_ERROR_FORMAT,
               "/wells/001: well name \"A\" is also the name of /wells/000");
    check_edit("duplabel.h5", edit_duplicate_label, ISL_ERROR_FORMAT, "\"zeta\" appears twice");
    check_edit("unlisted.h5", edit_unlisted_label, ISL_ERROR_FORMAT,
               "/wells/000/labels/alpha: label not listed");
    check_edit("unused.h5", edit_unused_label, ISL_ERROR_FORMAT, "\"nfh\", which no well has");
    check_edit("badlabel.h5", edit_bad_label_name, ISL_ERROR_FORMAT, "autoencoder");
    check_edit("extra.h5", edit_extra_well, ISL_ERROR_FORMAT, "/wells/extra: unexpected member");
    check_edit("nomask.h5", edit_missing_mask, ISL_ERROR_FORMAT,
               "/wells/000/labels/alpha/mask: missing dataset");
    check_edit("noname.h5", edit_missing_name, ISL_ERROR_FORMAT,
               "/wells/000: missing attribute name");
    check_edit("pixel.h5", edit_negative_pixel, ISL_ERROR_FORMAT, "/wells/000: ");

    /* An unknown pixel may hold NaN in a file (it becomes 0). */
    char path[4096];
    fresh_file(path, sizeof(path), "unknown-nan.h5");
    hid_t f = test_h5_open_rw(path);
    refloat(f, "/wells/001/labels/alpha/values");
    test_h5_poke_float(f, "/wells/001/labels/alpha/values", 2, NAN); /* top half: unknown */
    H5Fclose(f);
    isl_dataset *d = NULL;
    ck_assert_msg(isl_dataset_load(path, &d) == ISL_OK, "%s", isl_last_error());
    const float *v;
    ck_assert_int_eq(isl_dataset_well_target(d, 1, "alpha", &v, NULL), ISL_OK);
    ck_assert(v[2] == 0.0f);
    isl_dataset_free(d);
    test_scratch_remove();
}
END_TEST

START_TEST(missing_truncated_and_corrupt_files)
{
    fill_fixture(5);
    test_scratch_make("isl-dataset");
    char path[4096], other[4096];
    test_scratch_path(path, sizeof(path), "missing.h5");
    expect_load_error(path, ISL_ERROR_IO, "cannot open");

    test_scratch_path(other, sizeof(other), "text.h5");
    test_write_file(other, "not hdf5 at all\n", 16);
    expect_load_error(other, ISL_ERROR_FORMAT, "not an HDF5 file");

    fresh_file(path, sizeof(path), "good.h5");
    size_t size;
    char *bytes = test_read_file(path, &size);
    test_scratch_path(other, sizeof(other), "truncated.h5");
    test_write_file(other, bytes, size / 2);
    expect_load_error(other, ISL_ERROR_DAMAGED, "truncated");
    test_strip_checksum(other); /* the same without a checksum: HDF5 notices */
    expect_load_error(other, ISL_ERROR_FORMAT, "truncated");

    /* Garbage in the compressed data of well B's stack. */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/wells/001/stack", H5P_DEFAULT);
    haddr_t addr;
    hsize_t chunk_size, offset[3];
    unsigned filters;
    hid_t space = H5Dget_space(d);
    ck_assert_int_ge(H5Dget_chunk_info(d, space, 1, offset, &filters, &addr, &chunk_size), 0);
    H5Sclose(space);
    H5Dclose(d);
    H5Fclose(f);
    ck_assert_uint_lt(addr + chunk_size, size);
    for (hsize_t i = 0; i < chunk_size; i++)
        bytes[addr + i] = (char)(0x5a ^ (i * 31));
    test_scratch_path(other, sizeof(other), "corrupt.h5");
    test_write_file(other, bytes, size);
    expect_load_error(other, ISL_ERROR_DAMAGED, "checksum mismatch");
    test_strip_checksum(other);
    expect_load_error(other, ISL_ERROR_FORMAT, "/wells/001/stack: cannot read");
    free(bytes);

    /* Chunks of 262145 x 6 x 5 in a 2 x 6 x 5 stack (one flipped bit, found by
     * tests/fuzz): refused before HDF5 reads past its buffer. */
    const char *root = getenv("ISL_SOURCE_ROOT");
    snprintf(path, sizeof(path), "%s/tests/fuzz/crashes/dataset_load/hdf5-chunk-dims-overread.h5",
             root ? root : ".");
    expect_load_error(path, ISL_ERROR_FORMAT, "/wells/000/stack: damaged chunk layout");
    test_scratch_remove();
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Atomic saves                                                                        */
/* ---------------------------------------------------------------------------------- */

START_TEST(failed_saves_leave_nothing_behind)
{
    fill_fixture(6);
    test_scratch_make("isl-dataset");
    char path[4096];
    isl_dataset *d = make_dataset();
    test_scratch_path(path, sizeof(path), "no-such-dir/data.h5");
    expect_status(isl_dataset_save(d, path), ISL_ERROR_IO, "no-such-dir/data.h5");
    ck_assert_int_eq(count_entries(test_scratch_dir()), 0);

    /* A full disk, simulated by the file size limit (write() fails the same way). */
    test_scratch_path(path, sizeof(path), "full.h5");
    struct rlimit old, small;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    small = old;
    small.rlim_cur = 4096;
    void (*handler)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    isl_status st = isl_dataset_save(d, path);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, handler);
    expect_status(st, ISL_ERROR_IO, "full.h5");
    ck_assert_int_eq(count_entries(test_scratch_dir()), 0); /* no file, no temporary */

    /* Over an existing file: the old contents stay until a save succeeds. */
    isl_dataset *one;
    ck_assert_int_eq(isl_dataset_create(NZ, &one), ISL_OK);
    ck_assert_int_eq(isl_dataset_save(one, path), ISL_OK);
    size_t before_size, after_size;
    char *before = test_read_file(path, &before_size);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    handler = signal(SIGXFSZ, SIG_IGN);
    st = isl_dataset_save(d, path);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, handler);
    ck_assert_int_eq(st, ISL_ERROR_IO);
    char *after = test_read_file(path, &after_size);
    ck_assert_uint_eq(before_size, after_size);
    ck_assert(memcmp(before, after, before_size) == 0);
    ck_assert_int_eq(count_entries(test_scratch_dir()), 1);
    ck_assert_int_eq(isl_dataset_save(d, path), ISL_OK); /* and it still works */
    free(before);
    free(after);
    isl_dataset_free(one);
    isl_dataset_free(d);
    test_scratch_remove();
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Sampler: helpers written from the documented semantics                              */
/* ---------------------------------------------------------------------------------- */

static isl_model *label_model(int nz, int count, const char *const *heads, const char *norm)
{
    return test_new_model(5, nz, count, heads, 0, norm);
}

typedef struct batch {
    int size, crop, out, labels, nz;
    float *inputs, *targets;
    uint8_t *masks;
} batch;

static batch alloc_batch(int size, int crop, int nz, int labels)
{
    batch b = {size, crop, crop - 242, labels, nz, NULL, NULL, NULL};
    size_t in = (size_t)size * nz * crop * crop, out = (size_t)size * labels * b.out * b.out;
    b.inputs = malloc(sizeof(float) * in);
    b.targets = malloc(sizeof(float) * (out ? out : 1));
    b.masks = malloc(out ? out : 1);
    ck_assert(b.inputs && b.targets && b.masks);
    return b;
}

static void free_batch(batch *b)
{
    free(b->inputs);
    free(b->targets);
    free(b->masks);
}

static void draw(const isl_sampler *s, uint64_t seed, batch *b)
{
    isl_status st = isl_sampler_draw(s, seed, b->size, b->inputs, b->targets, b->masks);
    ck_assert_msg(st == ISL_OK, "%s", isl_last_error());
}

static const float *crop_input(const batch *b, int i, int z)
{
    return b->inputs + ((size_t)i * b->nz + z) * b->crop * b->crop;
}

static size_t out_offset(const batch *b, int i, int l)
{
    return ((size_t)i * b->labels + l) * b->out * b->out;
}

/* The well's stack reflect-padded by PAD on every side, [nz][h + 2 PAD][w + 2 PAD]: what
 * crops of models with input normalization "none" are cut from. */
typedef struct padded_well {
    int ph, pw;
    float *data;
} padded_well;

static padded_well pad_well(const isl_dataset *d, int well)
{
    int h, w, nz = isl_dataset_num_z(d);
    isl_dataset_well_size(d, well, &h, &w);
    padded_well p = {h + 2 * PAD, w + 2 * PAD, NULL};
    p.data = malloc(sizeof(float) * (size_t)nz * p.ph * p.pw);
    ck_assert_ptr_nonnull(p.data);
    const float *stack = isl_dataset_well_stack(d, well);
    for (int z = 0; z < nz; z++)
        for (int y = 0; y < p.ph; y++)
            for (int x = 0; x < p.pw; x++)
                p.data[((size_t)z * p.ph + y) * p.pw + x] =
                    stack[((size_t)z * h + test_reflect(y - PAD, h)) * w +
                          test_reflect(x - PAD, w)];
    return p;
}

/* Finds the well and window of crop i (augmentation off) by matching its input against
 * every candidate. Fails if none or the match is not exact. */
static void locate(const isl_dataset *d, const batch *b, int i, int *well, int *oy, int *ox)
{
    const int c = b->crop, probe[3][2] = {{0, 0}, {c - 1, c - 1}, {c / 2, 3}};
    const float *in = crop_input(b, i, 0);
    for (int wl = 0; wl < isl_dataset_num_wells(d); wl++) {
        int h, w;
        isl_dataset_well_size(d, wl, &h, &w);
        padded_well p = pad_well(d, wl);
        for (int y0 = 0; y0 + b->out <= h; y0++)
            for (int x0 = 0; x0 + b->out <= w; x0++) {
                const float *at = p.data + (size_t)y0 * p.pw + x0;
                int ok = 1;
                for (int k = 0; k < 3 && ok; k++)
                    ok = in[probe[k][0] * c + probe[k][1]] == at[probe[k][0] * p.pw + probe[k][1]];
                if (!ok)
                    continue;
                for (int z = 0; z < b->nz; z++)
                    for (int y = 0; y < c; y++)
                        ck_assert_msg(memcmp(crop_input(b, i, z) + (size_t)y * c,
                                             at + ((size_t)z * p.ph + y) * p.pw,
                                             sizeof(float) * (size_t)c) == 0,
                                      "crop %d, plane %d, row %d", i, z, y);
                free(p.data);
                *well = wl;
                *oy = y0;
                *ox = x0;
                return;
            }
        free(p.data);
    }
    ck_abort_msg("crop %d matches no window of the dataset", i);
}

/* Checks crop i's targets and masks against the window (oy, ox) of the well: label head
 * l shows dataset label head_label[l] (NULL: absent), masked where held[] is set. */
static int check_outputs(const isl_dataset *d, const batch *b, int i, int well, int oy, int ox,
                         const char *const *head_label, const uint8_t *held)
{
    int h, w, known_any = 0;
    isl_dataset_well_size(d, well, &h, &w);
    for (int l = 0; l < b->labels; l++) {
        const float *v = NULL;
        const uint8_t *m = NULL;
        if (head_label[l])
            isl_dataset_well_target(d, well, head_label[l], &v, &m);
        const float *tv = b->targets + out_offset(b, i, l);
        const uint8_t *tm = b->masks + out_offset(b, i, l);
        int bad = 0;
        for (int y = 0; y < b->out; y++)
            for (int x = 0; x < b->out; x++) {
                size_t p = (size_t)(oy + y) * w + (ox + x);
                int known = m && m[p] && !(held && held[p]);
                bad += tm[y * b->out + x] != known || tv[y * b->out + x] != (known ? v[p] : 0.0f);
                known_any |= known;
            }
        ck_assert_msg(bad == 0, "crop %d, label head %d: %d pixels differ", i, l, bad);
    }
    return known_any;
}

/* ---------------------------------------------------------------------------------- */
/* Sampler tests                                                                       */
/* ---------------------------------------------------------------------------------- */

static const char *const heads_zeta_alpha[2] = {"zeta", "alpha"};

START_TEST(sampler_shapes_seeds_and_errors)
{
    fill_fixture(7);
    isl_dataset *d = make_dataset();
    isl_model *m = label_model(NZ, 2, heads_zeta_alpha, "none");
    isl_sampler *s = NULL;
    expect_status(isl_sampler_create(d, m, 260, &s), ISL_ERROR_SHAPE, "250 + 16m");
    ck_assert_ptr_null(s);
    expect_status(isl_sampler_create(d, m, 250 + 16 * 2, &s), ISL_ERROR_SHAPE,
                  "well \"B\" is 36x30, smaller than the 40x40 output window");
    isl_model *m4 = label_model(NZ + 1, 2, heads_zeta_alpha, "none");
    expect_status(isl_sampler_create(d, m4, 266, &s), ISL_ERROR_SHAPE, "z planes");
    isl_model_free(m4);
    expect_status(isl_sampler_create(NULL, m, 266, &s), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_sampler_create(d, m, 266, NULL), ISL_ERROR_INVALID_ARGUMENT, NULL);

    ck_assert_msg(isl_sampler_create(d, m, 266, &s) == ISL_OK, "%s", isl_last_error());
    batch b = alloc_batch(5, 266, NZ, 2), c = alloc_batch(5, 266, NZ, 2);
    draw(s, 42, &b);
    size_t bad = 0; /* counted, not asserted per element: Check's asserts are slow */
    for (size_t i = 0; i < (size_t)b.size * NZ * 266 * 266; i++)
        bad += !(b.inputs[i] >= 0.0f && b.inputs[i] <= 1.0f);
    for (size_t i = 0; i < (size_t)b.size * 2 * 24 * 24; i++)
        bad += !(b.masks[i] == 0 || b.masks[i] == 1) ||
               !(b.targets[i] >= 0.0f && b.targets[i] <= 1.0f);
    ck_assert_uint_eq(bad, 0);
    draw(s, 42, &c);
    ck_assert(memcmp(b.inputs, c.inputs, sizeof(float) * 5 * NZ * 266 * 266) == 0);
    ck_assert(memcmp(b.targets, c.targets, sizeof(float) * 5 * 2 * 24 * 24) == 0);
    ck_assert(memcmp(b.masks, c.masks, 5 * 2 * 24 * 24) == 0);
    draw(s, 43, &c);
    ck_assert(memcmp(b.inputs, c.inputs, sizeof(float) * 5 * NZ * 266 * 266) != 0);
    /* A smaller batch is the first crops of a larger one with the same seed. */
    c.size = 2;
    draw(s, 42, &c);
    ck_assert(memcmp(b.inputs, c.inputs, sizeof(float) * 2 * NZ * 266 * 266) == 0);
    /* A part of a batch (a data-parallel rank's share) is those crops of the whole. */
    ck_assert_msg(isl_sampler_draw_part(s, 42, 2, 3, c.inputs, c.targets, c.masks) == ISL_OK,
                  "%s", isl_last_error());
    ck_assert(memcmp(b.inputs + (size_t)2 * NZ * 266 * 266, c.inputs,
                     sizeof(float) * 3 * NZ * 266 * 266) == 0);
    ck_assert(memcmp(b.targets + (size_t)2 * 2 * 24 * 24, c.targets,
                     sizeof(float) * 3 * 2 * 24 * 24) == 0);
    ck_assert(memcmp(b.masks + (size_t)2 * 2 * 24 * 24, c.masks, 3 * 2 * 24 * 24) == 0);
    expect_status(isl_sampler_draw_part(s, 42, -1, 3, c.inputs, c.targets, c.masks),
                  ISL_ERROR_INVALID_ARGUMENT, "first crop -1");
    /* Wells and labels added to the dataset later (moving its records) change nothing. */
    isl_stack more = {fx.b_stack, ISL_DTYPE_F32, NZ, BH, BW};
    isl_stack label = {fx.b_map2, ISL_DTYPE_U16, 1, BH, BW};
    for (int k = 0; k < 12; k++) {
        char name[16];
        snprintf(name, sizeof(name), "more%d", k);
        ck_assert_int_eq(isl_dataset_add_well(d, name, NULL, 0, &more, NULL), ISL_OK);
        ck_assert_int_eq(isl_dataset_add_target(d, 0, name, 0, 0, &label, NULL), ISL_OK);
    }
    c.size = 5;
    draw(s, 42, &c);
    ck_assert(memcmp(b.inputs, c.inputs, sizeof(float) * 5 * NZ * 266 * 266) == 0);
    ck_assert(memcmp(b.masks, c.masks, 5 * 2 * 24 * 24) == 0);

    expect_status(isl_sampler_draw(s, 1, 0, b.inputs, b.targets, b.masks),
                  ISL_ERROR_INVALID_ARGUMENT, "batch size");
    expect_status(isl_sampler_draw(s, 1, 1, NULL, b.targets, b.masks), ISL_ERROR_INVALID_ARGUMENT,
                  "inputs");
    expect_status(isl_sampler_draw(s, 1, 1, b.inputs, NULL, b.masks), ISL_ERROR_INVALID_ARGUMENT,
                  "targets");
    expect_status(isl_sampler_draw(NULL, 1, 1, b.inputs, b.targets, b.masks),
                  ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_sampler_set_augment(NULL, 0), ISL_ERROR_INVALID_ARGUMENT, NULL);
    isl_region r = {0, 0, 0, 10, 10};
    expect_status(isl_sampler_hold_out(NULL, &r), ISL_ERROR_INVALID_ARGUMENT, NULL);
    r.well = 2;
    expect_status(isl_sampler_hold_out(s, &r), ISL_ERROR_INVALID_ARGUMENT, "well 2");
    r = (isl_region){1, 30, 0, 10, 10};
    expect_status(isl_sampler_hold_out(s, &r), ISL_ERROR_SHAPE, "does not fit inside well \"B\"");
    r = (isl_region){1, 0, 0, 0, 10};
    expect_status(isl_sampler_hold_out(s, &r), ISL_ERROR_SHAPE, "does not fit");
    free_batch(&b);
    free_batch(&c);
    isl_sampler_free(s);
    isl_sampler_free(NULL);
    isl_model_free(m);
    isl_dataset_free(d);
}
END_TEST

/* The fixture's dataset, a model with heads zeta and alpha, and a sampler of 266 crops. */
typedef struct sampler_fixture {
    isl_dataset *d;
    isl_model *m;
    isl_sampler *s;
} sampler_fixture;

static sampler_fixture sampler_fixture_open(uint64_t seed)
{
    fill_fixture(seed);
    sampler_fixture f = {make_dataset(), label_model(NZ, 2, heads_zeta_alpha, "none"), NULL};
    ck_assert_msg(isl_sampler_create(f.d, f.m, 266, &f.s) == ISL_OK, "%s", isl_last_error());
    return f;
}

static void sampler_fixture_close(sampler_fixture *f)
{
    isl_sampler_free(f->s);
    isl_model_free(f->m);
    isl_dataset_free(f->d);
}

/* Without augmentation every crop is the reflect-padded well at a window whose output
 * holds a known pixel, its targets and masks that window of the dataset's labels. */
START_TEST(sampler_crops_match_an_independent_extraction)
{
    sampler_fixture f = sampler_fixture_open(8);
    isl_dataset *d = f.d;
    isl_sampler *s = f.s;
    ck_assert_int_eq(isl_sampler_set_augment(s, 0), ISL_OK);
    batch b = alloc_batch(16, 266, NZ, 2);
    int wells_seen[2] = {0, 0};
    for (uint64_t seed = 0; seed < 4; seed++) {
        draw(s, seed, &b);
        for (int i = 0; i < b.size; i++) {
            int well, oy, ox;
            locate(d, &b, i, &well, &oy, &ox);
            ck_assert(check_outputs(d, &b, i, well, oy, ox, heads_zeta_alpha, NULL));
            wells_seen[well]++;
        }
    }
    ck_assert(wells_seen[0] > 0 && wells_seen[1] > 0);
    free_batch(&b);
    sampler_fixture_close(&f);
}
END_TEST

/* dst = the k-th of the 8 dihedral transforms of an n x n plane: k % 4 quarter turns
 * counter-clockwise (numpy.rot90), then a left-right mirror if k >= 4. */
static void dihedral(int k, const float *src, float *dst, int n)
{
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            int sx = k >= 4 ? n - 1 - x : x, sy = y; /* undo the mirror */
            /* Undo the quarter turns: rot90 gives out[y][x] = in[x][n - 1 - y]. */
            for (int r = 0; r < k % 4; r++) {
                int ty = sx, tx = n - 1 - sy;
                sy = ty;
                sx = tx;
            }
            dst[y * n + x] = src[sy * n + sx];
        }
}

static int same_after(int k, const float *plain, const float *aug, int n, float *tmp)
{
    dihedral(k, plain, tmp, n);
    return memcmp(tmp, aug, sizeof(float) * (size_t)n * n) == 0;
}

START_TEST(sampler_augmentation_is_one_dihedral_transform)
{
    sampler_fixture f = sampler_fixture_open(9);
    isl_sampler *s = f.s;
    batch plain = alloc_batch(16, 266, NZ, 2), aug = alloc_batch(16, 266, NZ, 2);
    float *tmp = malloc(sizeof(float) * 266 * 266), *fm = malloc(sizeof(float) * 24 * 24 * 2);
    int used[8] = {0};
    for (uint64_t seed = 100; seed < 104; seed++) {
        ck_assert_int_eq(isl_sampler_set_augment(s, 0), ISL_OK);
        draw(s, seed, &plain);
        ck_assert_int_eq(isl_sampler_set_augment(s, 1), ISL_OK);
        draw(s, seed, &aug);
        for (int i = 0; i < plain.size; i++) {
            int k = 0;
            while (k < 8 && !same_after(k, crop_input(&plain, i, 0), crop_input(&aug, i, 0), 266,
                                        tmp))
                k++;
            ck_assert_msg(k < 8, "crop %d is no dihedral transform of the plain crop", i);
            used[k]++;
            for (int z = 1; z < NZ; z++)
                ck_assert(
                    same_after(k, crop_input(&plain, i, z), crop_input(&aug, i, z), 266, tmp));
            for (int l = 0; l < 2; l++) {
                size_t o = out_offset(&plain, i, l);
                ck_assert(same_after(k, plain.targets + o, aug.targets + o, 24, tmp));
                for (int p = 0; p < 24 * 24; p++) {
                    fm[p] = plain.masks[o + p];
                    fm[24 * 24 + p] = aug.masks[o + p];
                }
                ck_assert(same_after(k, fm, fm + 24 * 24, 24, tmp));
            }
        }
    }
    int distinct = 0;
    for (int k = 0; k < 8; k++)
        distinct += used[k] > 0;
    ck_assert_msg(distinct >= 6, "only %d of the 8 transforms in 64 crops", distinct);
    free(tmp);
    free(fm);
    free_batch(&plain);
    free_batch(&aug);
    sampler_fixture_close(&f);
}
END_TEST

/* Contrast jitter: with the same seed, every plane of crop i is the plain crop's plane
 * scaled about its own mean by one factor per crop, clipped to [0, 1]; targets, masks,
 * positions and transforms do not change. The factor is recovered here by least squares
 * on plane 0's unclipped pixels. */
START_TEST(sampler_contrast_jitter_scales_about_the_mean)
{
    sampler_fixture f = sampler_fixture_open(11);
    isl_sampler *s = f.s;
    const int n = 266 * 266;
    const double amount = 0.5;
    batch plain = alloc_batch(16, 266, NZ, 2), jittered = alloc_batch(16, 266, NZ, 2);
    draw(s, 200, &plain);
    ck_assert_int_eq(isl_sampler_set_contrast_jitter(s, amount), ISL_OK);
    draw(s, 200, &jittered);
    size_t outs = (size_t)plain.size * 2 * plain.out * plain.out;
    ck_assert_mem_eq(plain.targets, jittered.targets, sizeof(float) * outs);
    ck_assert_mem_eq(plain.masks, jittered.masks, outs);
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < plain.size; i++) {
        double mean[NZ], sxy = 0, sxx = 0;
        for (int z = 0; z < NZ; z++) {
            double sum = 0;
            for (int p = 0; p < n; p++)
                sum += crop_input(&plain, i, z)[p];
            mean[z] = sum / n;
        }
        for (int p = 0; p < n; p++) {
            double x = crop_input(&plain, i, 0)[p] - mean[0];
            double y = crop_input(&jittered, i, 0)[p] - mean[0];
            if (crop_input(&jittered, i, 0)[p] > 0 && crop_input(&jittered, i, 0)[p] < 1) {
                sxy += x * y;
                sxx += x * x;
            }
        }
        const double factor = sxy / sxx;
        lo = fmin(lo, factor);
        hi = fmax(hi, factor);
        ck_assert_msg(factor >= exp(-amount) - 1e-4 && factor <= exp(amount) + 1e-4,
                      "crop %d: contrast factor %g outside [e^-%g, e^%g]", i, factor, amount,
                      amount);
        for (int z = 0; z < NZ; z++)
            for (int p = 0; p < n; p++) {
                double want = mean[z] + (crop_input(&plain, i, z)[p] - mean[z]) * factor;
                want = want < 0 ? 0 : want > 1 ? 1 : want;
                ck_assert_msg(fabs(crop_input(&jittered, i, z)[p] - want) < 1e-4,
                              "crop %d plane %d pixel %d: %g, not %g", i, z, p,
                              crop_input(&jittered, i, z)[p], want);
            }
    }
    ck_assert_msg(hi - lo > 0.2, "factors of 16 crops span only %g .. %g", lo, hi);
    /* 0 turns it off; amounts outside [0, 1] are refused. */
    ck_assert_int_eq(isl_sampler_set_contrast_jitter(s, 0), ISL_OK);
    draw(s, 200, &jittered);
    ck_assert_mem_eq(plain.inputs, jittered.inputs, sizeof(float) * plain.size * NZ * n);
    expect_status(isl_sampler_set_contrast_jitter(s, -0.1), ISL_ERROR_INVALID_ARGUMENT,
                  "outside [0, 1]");
    expect_status(isl_sampler_set_contrast_jitter(s, NAN), ISL_ERROR_INVALID_ARGUMENT,
                  "outside [0, 1]");
    expect_status(isl_sampler_set_contrast_jitter(NULL, 0.1), ISL_ERROR_INVALID_ARGUMENT, NULL);
    free_batch(&plain);
    free_batch(&jittered);
    sampler_fixture_close(&f);
}
END_TEST

/* Gamma, blur and noise (their effect on a crop: tests/test_augment.c) change the inputs
 * only: the same seed draws the same targets and masks, 0 turns each off again, and
 * amounts out of range are refused. */
START_TEST(sampler_photometric_options_change_inputs_only)
{
    sampler_fixture f = sampler_fixture_open(12);
    isl_sampler *s = f.s;
    const size_t inputs = (size_t)8 * NZ * 266 * 266, outs = (size_t)8 * 2 * 24 * 24;
    batch plain = alloc_batch(8, 266, NZ, 2), changed = alloc_batch(8, 266, NZ, 2);
    draw(s, 300, &plain);
    ck_assert_int_eq(isl_sampler_set_gamma_jitter(s, 0.3), ISL_OK);
    ck_assert_int_eq(isl_sampler_set_blur(s, 1.5), ISL_OK);
    ck_assert_int_eq(isl_sampler_set_noise(s, 0.03), ISL_OK);
    draw(s, 300, &changed);
    ck_assert_mem_eq(plain.targets, changed.targets, sizeof(float) * outs);
    ck_assert_mem_eq(plain.masks, changed.masks, outs);
    size_t differ = 0;
    for (size_t k = 0; k < inputs; k++) {
        ck_assert(changed.inputs[k] >= 0.0f && changed.inputs[k] <= 1.0f);
        differ += changed.inputs[k] != plain.inputs[k];
    }
    ck_assert_msg(differ > inputs * 9 / 10, "only %zu of %zu inputs changed", differ, inputs);
    ck_assert_int_eq(isl_sampler_set_gamma_jitter(s, 0), ISL_OK);
    ck_assert_int_eq(isl_sampler_set_blur(s, 0), ISL_OK);
    ck_assert_int_eq(isl_sampler_set_noise(s, 0), ISL_OK);
    draw(s, 300, &changed);
    ck_assert_mem_eq(plain.inputs, changed.inputs, sizeof(float) * inputs);
    expect_status(isl_sampler_set_gamma_jitter(s, 1.5), ISL_ERROR_INVALID_ARGUMENT,
                  "outside [0, 1]");
    expect_status(isl_sampler_set_gamma_jitter(s, NAN), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_sampler_set_blur(s, 8.5), ISL_ERROR_INVALID_ARGUMENT, "outside [0, 8]");
    expect_status(isl_sampler_set_blur(s, -1), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_sampler_set_noise(s, 0.6), ISL_ERROR_INVALID_ARGUMENT, "outside [0, 0.5]");
    expect_status(isl_sampler_set_noise(s, INFINITY), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_sampler_set_noise(NULL, 0.1), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_sampler_set_blur(NULL, 0.1), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_sampler_set_gamma_jitter(NULL, 0.1), ISL_ERROR_INVALID_ARGUMENT, NULL);
    free_batch(&plain);
    free_batch(&changed);
    sampler_fixture_close(&f);
}
END_TEST

START_TEST(sampler_held_out_pixels_are_masked)
{
    sampler_fixture f = sampler_fixture_open(10);
    isl_dataset *d = f.d;
    isl_sampler *s = f.s;
    ck_assert_int_eq(isl_sampler_set_augment(s, 0), ISL_OK);
    /* Two regions in well A; all of B's known half. */
    const isl_region regions[3] = {{0, 10, 5, 20, 15}, {0, 30, 25, 20, 15}, {1, 0, 15, 36, 15}};
    static uint8_t held_a[AH * AW], held_b[BH * BW];
    for (int r = 0; r < 3; r++) {
        ck_assert_msg(isl_sampler_hold_out(s, &regions[r]) == ISL_OK, "%s", isl_last_error());
        uint8_t *held = regions[r].well == 0 ? held_a : held_b;
        int width = regions[r].well == 0 ? AW : BW;
        for (int y = regions[r].y0; y < regions[r].y0 + regions[r].height; y++)
            for (int x = regions[r].x0; x < regions[r].x0 + regions[r].width; x++)
                held[y * width + x] = 1;
    }
    batch b = alloc_batch(16, 266, NZ, 2);
    for (uint64_t seed = 0; seed < 3; seed++) {
        draw(s, seed, &b);
        for (int i = 0; i < b.size; i++) {
            int well, oy, ox;
            locate(d, &b, i, &well, &oy, &ox);
            /* B has nothing left to learn from: it is never drawn. */
            ck_assert_int_eq(well, 0);
            ck_assert(check_outputs(d, &b, i, well, oy, ox, heads_zeta_alpha, held_a));
        }
    }

    /* Holding out everything left: crops are still drawn (for the autoencoder), every
     * mask is 0. */
    isl_region all_a = {0, 0, 0, AW, AH};
    ck_assert_int_eq(isl_sampler_hold_out(s, &all_a), ISL_OK);
    draw(s, 5, &b);
    for (size_t i = 0; i < (size_t)b.size * 2 * 24 * 24; i++)
        ck_assert_int_eq(b.masks[i], 0);
    int wells_seen[2] = {0, 0};
    for (int i = 0; i < b.size; i++) {
        int well, oy, ox;
        locate(d, &b, i, &well, &oy, &ox);
        wells_seen[well]++;
    }
    ck_assert_msg(wells_seen[0] == 0, "well A is all held out");

    isl_region all_b = {1, 0, 0, BW, BH};
    ck_assert_int_eq(isl_sampler_hold_out(s, &all_b), ISL_OK);
    expect_status(isl_sampler_draw(s, 1, 1, b.inputs, b.targets, b.masks), ISL_ERROR_VALUE,
                  "held out");
    free_batch(&b);
    sampler_fixture_close(&f);
}
END_TEST

START_TEST(sampler_maps_heads_to_labels_by_name)
{
    fill_fixture(11);
    isl_dataset *d = make_dataset();
    const char *const heads[3] = {"alpha", "nfh", "zeta"};
    isl_model *m = label_model(NZ, 3, heads, "none");
    isl_sampler *s = NULL;
    ck_assert_msg(isl_sampler_create(d, m, 266, &s) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_sampler_set_augment(s, 0), ISL_OK);
    batch b = alloc_batch(12, 266, NZ, 3);
    draw(s, 9, &b);
    const char *const expect[3] = {"alpha", NULL, "zeta"};
    for (int i = 0; i < b.size; i++) {
        int well, oy, ox;
        locate(d, &b, i, &well, &oy, &ox);
        check_outputs(d, &b, i, well, oy, ox, expect, NULL);
        for (int p = 0; p < 24 * 24; p++) /* the absent head: never known */
            ck_assert(b.masks[out_offset(&b, i, 1) + p] == 0);
    }
    free_batch(&b);
    isl_sampler_free(s);
    isl_model_free(m);

    /* No label head at all (only the autoencoder): crops anywhere, no targets needed. */
    m = label_model(NZ, 0, NULL, "none");
    ck_assert_msg(isl_sampler_create(d, m, 266, &s) == ISL_OK, "%s", isl_last_error());
    b = alloc_batch(4, 266, NZ, 0);
    ck_assert_int_eq(isl_sampler_draw(s, 3, 4, b.inputs, NULL, NULL), ISL_OK);
    free_batch(&b);
    isl_sampler_free(s);
    isl_model_free(m);
    isl_dataset_free(d);
}
END_TEST

enum { TWO_WELLS_H = 20, TWO_WELLS_W = 24 };

/* Wells A and B of one plane, TWO_WELLS_H x TWO_WELLS_W, constant 0.25 and 0.75 so that a
 * crop tells its well by value ("none" normalization keeps it), and label "x" known
 * (200) on all of A's 480 pixels. */
static isl_dataset *two_constant_wells(void)
{
    enum { H = TWO_WELLS_H, W = TWO_WELLS_W };
    static float stack[H * W];
    static uint8_t full[H * W];
    isl_dataset *d;
    ck_assert_int_eq(isl_dataset_create(1, &d), ISL_OK);
    for (int w = 0; w < 2; w++) {
        for (int i = 0; i < H * W; i++)
            stack[i] = w ? 0.75f : 0.25f;
        isl_stack st = {stack, ISL_DTYPE_F32, 1, H, W};
        ck_assert_int_eq(isl_dataset_add_well(d, w ? "B" : "A", NULL, 0, &st, NULL), ISL_OK);
    }
    memset(full, 200, sizeof(full));
    isl_stack t = {full, ISL_DTYPE_U8, 1, H, W};
    ck_assert_int_eq(isl_dataset_add_target(d, 0, "x", 0, 0, &t, NULL), ISL_OK);
    return d;
}

/* Wells in proportion to their known pixels; windows uniform among those that hold one. */
START_TEST(sampler_draw_distribution)
{
    enum { H = TWO_WELLS_H, W = TWO_WELLS_W };
    isl_dataset *d = two_constant_wells(); /* 480 known */
    static uint8_t known = 200;
    isl_stack one = {&known, ISL_DTYPE_U8, 1, 1, 1};
    ck_assert_int_eq(isl_dataset_add_target(d, 1, "x", 13, 9, &one, NULL), ISL_OK); /* 1 known */
    ck_assert_int_eq(isl_dataset_add_target(d, 0, "y", 13, 9, &one, NULL), ISL_OK); /* +1 */
    const char *const heads[2] = {"y", "x"};
    isl_model *m = label_model(1, 2, heads, "none");
    isl_sampler *s;
    ck_assert_msg(isl_sampler_create(d, m, 250, &s) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_sampler_set_augment(s, 0), ISL_OK);

    /* Well B holds 1 of 482 known pixels; when drawn, its window is one of the 8 x 8 that
     * hold (x 13, y 9), uniformly. */
    enum { DRAWS = 12000 };
    batch b = alloc_batch(200, 250, 1, 2);
    int wells[2] = {0, 0}, windows[8][8] = {{0}};
    for (int k = 0; k < DRAWS / b.size; k++) {
        draw(s, (uint64_t)k, &b);
        for (int i = 0; i < b.size; i++) {
            int well = crop_input(&b, i, 0)[0] == 0.75f;
            wells[well]++;
            /* Head 1 ("x") in B: the known pixel's place in the window gives the window. */
            const uint8_t *mask = b.masks + out_offset(&b, i, 1);
            if (!well)
                continue;
            int found = 0;
            for (int p = 0; p < 64; p++)
                if (mask[p]) {
                    windows[p / 8][p % 8]++;
                    found++;
                }
            ck_assert_int_eq(found, 1);
        }
    }
    /* Expected 12000 / 482 = 24.9 crops of B: about 4 standard deviations either way. */
    ck_assert_msg(wells[1] > 6 && wells[1] < 45, "well B drawn %d times of %d", wells[1], DRAWS);
    free_batch(&b);

    /* Only B's window matters now: hold out A entirely. 64 windows, ~100 each. */
    isl_region all_a = {0, 0, 0, W, H};
    ck_assert_int_eq(isl_sampler_hold_out(s, &all_a), ISL_OK);
    memset(windows, 0, sizeof(windows));
    b = alloc_batch(640, 250, 1, 2);
    for (int k = 0; k < 10; k++) {
        draw(s, 1000 + (uint64_t)k, &b);
        for (int i = 0; i < b.size; i++) {
            ck_assert(crop_input(&b, i, 0)[0] == 0.75f);
            const uint8_t *mask = b.masks + out_offset(&b, i, 1);
            for (int p = 0; p < 64; p++)
                windows[p / 8][p % 8] += mask[p];
        }
    }
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++)
            ck_assert_msg(windows[y][x] > 50 && windows[y][x] < 150, "window (%d, %d): %d", y, x,
                          windows[y][x]);
    free_batch(&b);
    isl_sampler_free(s);
    isl_model_free(m);
    isl_dataset_free(d);
}
END_TEST

/* The unlabelled share: crops drawn anywhere (well B has no label), in proportion to the
 * pixels not held out; share 0 draws what a sampler without the option draws. */
START_TEST(sampler_unlabelled_share_draws_anywhere)
{
    enum { H = TWO_WELLS_H, W = TWO_WELLS_W, DRAWS = 4000 };
    isl_dataset *d = two_constant_wells();
    const char *const heads[1] = {"x"};
    isl_model *m = label_model(1, 1, heads, "none");
    isl_sampler *s, *plain;
    ck_assert_msg(isl_sampler_create(d, m, 250, &s) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_sampler_create(d, m, 250, &plain), ISL_OK);
    batch b = alloc_batch(200, 250, 1, 1), c = alloc_batch(200, 250, 1, 1);

    /* Half the crops anywhere: A and B have 480 free pixels each, so B (never labelled)
     * gets a quarter of all crops, about 1000 +- 27 of 4000; its masks are all 0. */
    ck_assert_int_eq(isl_sampler_set_unlabelled_share(s, 0.5), ISL_OK);
    int in_b = 0;
    for (int k = 0; k < DRAWS / b.size; k++) {
        draw(s, (uint64_t)k, &b);
        for (int i = 0; i < b.size; i++) {
            int well = crop_input(&b, i, 0)[0] == 0.75f;
            in_b += well;
            const uint8_t *mask = b.masks + out_offset(&b, i, 0);
            for (int p = 0; p < 64; p++)
                ck_assert_int_eq(mask[p], well ? 0 : 1);
        }
    }
    ck_assert_msg(in_b > 880 && in_b < 1120, "well B drawn %d times of %d", in_b, DRAWS);

    /* Held-out pixels are left out of the share too: with B held out, only A. */
    isl_region all_b = {1, 0, 0, W, H};
    ck_assert_int_eq(isl_sampler_hold_out(s, &all_b), ISL_OK);
    draw(s, 77, &b);
    for (int i = 0; i < b.size; i++)
        ck_assert(crop_input(&b, i, 0)[0] == 0.25f);

    /* Share 0 again: the same crops as a sampler that never had the option. */
    ck_assert_int_eq(isl_sampler_hold_out(plain, &all_b), ISL_OK);
    ck_assert_int_eq(isl_sampler_set_unlabelled_share(s, 0), ISL_OK);
    draw(s, 5, &b);
    draw(plain, 5, &c);
    ck_assert(!memcmp(b.inputs, c.inputs, sizeof(float) * (size_t)b.size * 250 * 250));
    ck_assert(!memcmp(b.masks, c.masks, (size_t)b.size * 8 * 8));

    expect_status(isl_sampler_set_unlabelled_share(s, 1.5), ISL_ERROR_INVALID_ARGUMENT,
                  "outside [0, 1]");
    expect_status(isl_sampler_set_unlabelled_share(s, NAN), ISL_ERROR_INVALID_ARGUMENT, NULL);
    expect_status(isl_sampler_set_unlabelled_share(NULL, 0.1), ISL_ERROR_INVALID_ARGUMENT, NULL);
    free_batch(&b);
    free_batch(&c);
    isl_sampler_free(s);
    isl_sampler_free(plain);
    isl_model_free(m);
    isl_dataset_free(d);
}
END_TEST

/* "global": per plane mean 0.5, sd 0.125, clipped, as predictions normalize. */
START_TEST(sampler_global_normalization_matches_prediction)
{
    enum { H = 30, W = 34 };
    static uint16_t raw[NZ * H * W];
    uint64_t st = 77;
    for (int i = 0; i < NZ * H * W; i++)
        raw[i] = (uint16_t)(1000 + test_uniform(&st) * 20000 * (1 + i / (H * W)));
    isl_dataset *d;
    ck_assert_int_eq(isl_dataset_create(NZ, &d), ISL_OK);
    isl_stack stack = {raw, ISL_DTYPE_U16, NZ, H, W};
    ck_assert_int_eq(isl_dataset_add_well(d, "w", NULL, 0, &stack, NULL), ISL_OK);
    static uint8_t one = 255;
    isl_stack t = {&one, ISL_DTYPE_U8, 1, 1, 1};
    ck_assert_int_eq(isl_dataset_add_target(d, 0, "x", 20, 3, &t, NULL), ISL_OK);
    const char *const heads[1] = {"x"};
    isl_model *m = label_model(NZ, 1, heads, "global");
    isl_sampler *s;
    ck_assert_msg(isl_sampler_create(d, m, 250, &s) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_sampler_set_augment(s, 0), ISL_OK);
    batch b = alloc_batch(8, 250, NZ, 1);
    draw(s, 11, &b);

    /* The prediction path's own preparation of the raw uint16 stack. */
    isl_input_transform tr = {0};
    ck_assert_int_eq(isl_input_transform_init("global", &stack, &tr), ISL_OK);
    float *pred = malloc(sizeof(float) * NZ * 250 * 250);
    int *cols = malloc(sizeof(int) * 250);
    double mean[NZ], sd[NZ];
    for (int z = 0; z < NZ; z++) {
        double s1 = 0, s2 = 0;
        for (int i = 0; i < H * W; i++) {
            double v = raw[z * H * W + i] / 65535.0;
            s1 += v;
            s2 += v * v;
        }
        mean[z] = s1 / (H * W);
        sd[z] = sqrt(s2 / (H * W) - mean[z] * mean[z]);
    }
    for (int i = 0; i < b.size; i++) {
        /* The one known pixel (x 20, y 3) fixes the window. */
        const uint8_t *mask = b.masks + out_offset(&b, i, 0);
        int p = 0;
        while (p < 64 && !mask[p])
            p++;
        ck_assert_int_lt(p, 64);
        int oy = 3 - p / 8, ox = 20 - p % 8;
        isl_input_fill(pred, &stack, &tr, oy, ox, 250, 250, cols);
        double worst = 0, worst_pred = 0;
        for (int z = 0; z < NZ; z++)
            for (int y = 0; y < 250; y++)
                for (int x = 0; x < 250; x++) {
                    int sy = test_reflect(oy + y - PAD, H), sx = test_reflect(ox + x - PAD, W);
                    double v = raw[(z * H + sy) * W + sx] / 65535.0;
                    v = (v - mean[z]) * 0.125 / sd[z] + 0.5;
                    v = v < 0 ? 0 : v > 1 ? 1 : v;
                    float got = crop_input(&b, i, z)[y * 250 + x];
                    worst = fmax(worst, fabs(got - v));
                    worst_pred = fmax(worst_pred, fabs(got - pred[(z * 250 + y) * 250 + x]));
                }
        ck_assert_msg(worst < 1e-5, "crop %d differs from the formula by %g", i, worst);
        ck_assert_msg(worst_pred < 2e-6, "crop %d differs from the prediction path by %g", i,
                      worst_pred);
    }
    isl_input_transform_free(&tr);
    free(pred);
    free(cols);
    free_batch(&b);
    isl_sampler_free(s);
    isl_model_free(m);

    /* A constant plane cannot be normalized: a clear error naming the well. */
    for (int i = 0; i < H * W; i++)
        raw[H * W + i] = 500;
    isl_dataset *flat;
    ck_assert_int_eq(isl_dataset_create(NZ, &flat), ISL_OK);
    ck_assert_int_eq(isl_dataset_add_well(flat, "flat", NULL, 0, &stack, NULL), ISL_OK);
    m = label_model(NZ, 1, heads, "global");
    expect_status(isl_sampler_create(flat, m, 250, &s), ISL_ERROR_VALUE,
                  "well \"flat\": input plane 1 is constant");
    isl_model_free(m);
    isl_dataset_free(flat);
    isl_dataset_free(d);
}
END_TEST

typedef struct draw_job {
    const isl_sampler *s;
    uint64_t seed;
    batch b;
    isl_status status;
} draw_job;

static void *draw_thread(void *arg)
{
    draw_job *j = arg;
    for (int k = 0; k < 5 && j->status == ISL_OK; k++)
        j->status = isl_sampler_draw(j->s, j->seed, j->b.size, j->b.inputs, j->b.targets,
                                     j->b.masks);
    return NULL;
}

START_TEST(sampler_draws_concurrently)
{
    fill_fixture(12);
    isl_dataset *d = make_dataset();
    isl_model *m = label_model(NZ, 2, heads_zeta_alpha, "none");
    isl_sampler *s;
    ck_assert_int_eq(isl_sampler_create(d, m, 266, &s), ISL_OK);
    draw_job jobs[3];
    pthread_t threads[3];
    for (int t = 0; t < 3; t++) {
        jobs[t] = (draw_job){s, 500 + (uint64_t)(t % 2), alloc_batch(4, 266, NZ, 2), ISL_OK};
        ck_assert_int_eq(pthread_create(&threads[t], NULL, draw_thread, &jobs[t]), 0);
    }
    for (int t = 0; t < 3; t++)
        ck_assert_int_eq(pthread_join(threads[t], NULL), 0);
    batch ref = alloc_batch(4, 266, NZ, 2);
    for (int t = 0; t < 3; t++) {
        ck_assert_int_eq(jobs[t].status, ISL_OK);
        draw(s, jobs[t].seed, &ref);
        ck_assert(memcmp(ref.inputs, jobs[t].b.inputs, sizeof(float) * 4 * NZ * 266 * 266) == 0);
        ck_assert(memcmp(ref.masks, jobs[t].b.masks, 4 * 2 * 24 * 24) == 0);
        free_batch(&jobs[t].b);
    }
    free_batch(&ref);
    isl_sampler_free(s);
    isl_model_free(m);
    isl_dataset_free(d);
}
END_TEST

int main(void)
{
    omp_set_num_threads(1); /* shared, busy machines: see tests/test_train.c */
    const test_case cases[] = {
        {"accessors", accessors_return_what_was_added},
        {"round_trip", save_and_load_round_trip},
        {"bad_inputs", bad_wells_and_targets_are_refused},
        {"invalid_files", invalid_files_are_refused_with_their_path},
        {"damaged_files", missing_truncated_and_corrupt_files},
        {"atomic_save", failed_saves_leave_nothing_behind},
        {"sampler_basics", sampler_shapes_seeds_and_errors},
        {"sampler_crops", sampler_crops_match_an_independent_extraction},
        {"sampler_augment", sampler_augmentation_is_one_dihedral_transform},
        {"sampler_contrast", sampler_contrast_jitter_scales_about_the_mean},
        {"sampler_photometric", sampler_photometric_options_change_inputs_only},
        {"sampler_unlabelled", sampler_unlabelled_share_draws_anywhere},
        {"sampler_hold_out", sampler_held_out_pixels_are_masked},
        {"sampler_labels", sampler_maps_heads_to_labels_by_name},
        {"sampler_distribution", sampler_draw_distribution},
        {"sampler_global", sampler_global_normalization_matches_prediction},
        {"sampler_threads", sampler_draws_concurrently},
    };
    int rc = test_run_cases("dataset", cases, sizeof(cases) / sizeof(cases[0]), 300);
    H5close(); /* release HDF5's global state before LeakSanitizer looks */
    return rc;
}
