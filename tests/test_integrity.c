/* Integrity-checked files and host-friendliness (docs/security.md): every changed byte of
 * a model, dataset or checkpoint written by isl is reported as ISL_ERROR_DAMAGED before
 * HDF5 parses the file; files without a checksum record still load; and isl leaves the
 * host's HDF5 and libtiff error handlers and HDF5 itself as it found them. */
#include "test_util.h"

#include <tiffio.h>

#define BLOCK 512 /* the user block holding the checksum record */

static char model_path[4096], dataset_path[4096], checkpoint_path[4096];

/* Files written once per process by isl: a model, a dataset and a checkpoint. */
static void write_fixtures(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    test_scratch_make("isl-integrity");
    static const char *heads[] = {"dapi_confocal"};
    isl_model *m = test_new_model(8, 3, 1, heads, 5, "none");
    test_scratch_path(model_path, sizeof(model_path), "model.h5");
    ck_assert_msg(isl_model_save(m, model_path) == ISL_OK, "%s", isl_last_error());

    isl_train_options *o = NULL;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    isl_trainer *t = test_trainer_create(m, o);
    test_scratch_path(checkpoint_path, sizeof(checkpoint_path), "checkpoint.h5");
    ck_assert_msg(isl_trainer_save(t, checkpoint_path) == ISL_OK, "%s", isl_last_error());
    isl_trainer_free(t);
    isl_model_free(m);

    isl_dataset *d = NULL;
    ck_assert_int_eq(isl_dataset_create(3, &d), ISL_OK);
    uint16_t *pixels = test_random_u16(3 * 20 * 30, 7);
    isl_stack s = {pixels, ISL_DTYPE_U16, 3, 20, 30};
    ck_assert_int_eq(isl_dataset_add_well(d, "w", "B", 0.5, &s, NULL), ISL_OK);
    isl_stack label = {pixels, ISL_DTYPE_U16, 1, 20, 30};
    ck_assert_int_eq(isl_dataset_add_target(d, 0, "dapi_confocal", 0, 0, &label, NULL), ISL_OK);
    test_scratch_path(dataset_path, sizeof(dataset_path), "dataset.h5");
    ck_assert_msg(isl_dataset_save(d, dataset_path) == ISL_OK, "%s", isl_last_error());
    isl_dataset_free(d);
    free(pixels);
}

typedef isl_status (*load_fn)(const char *path);

static isl_status load_model(const char *path)
{
    isl_model *m = NULL;
    isl_status st = isl_model_load(path, &m);
    if (st == ISL_OK)
        ck_assert_str_eq(isl_model_checksum(m), "xxh3-128");
    isl_model_free(m);
    return st;
}

static isl_status load_dataset(const char *path)
{
    isl_dataset *d = NULL;
    isl_status st = isl_dataset_load(path, &d);
    isl_dataset_free(d);
    return st;
}

static isl_status load_checkpoint(const char *path)
{
    isl_trainer *t = NULL;
    isl_status st = isl_trainer_load(path, NULL, &t);
    isl_trainer_free(t);
    return st;
}

static void expect(isl_status got, isl_status want, const char *needle)
{
    ck_assert_msg(got == want, "status %d (%s), expected %d; message: %s", got,
                  isl_status_string(got), want, isl_last_error());
    ck_assert_msg(strstr(isl_last_error(), needle), "message \"%s\" lacks \"%s\"",
                  isl_last_error(), needle);
}

/* A copy of src with bit `bit` of byte `offset` flipped; returns the copy's path. */
static const char *flipped(const char *src, size_t offset, int bit, char *out, size_t cap)
{
    size_t size;
    char *bytes = test_read_file(src, &size);
    ck_assert_uint_lt(offset, size);
    bytes[offset] ^= (char)(1 << bit);
    test_scratch_path(out, cap, "flipped.h5");
    test_write_file(out, bytes, size);
    free(bytes);
    return out;
}

/* One flipped bit in every region of the file: each copy of the record, the padding of
 * the block, the HDF5 superblock, metadata and data near the start, the middle and the
 * last byte. Each is DAMAGED, named in the message; the untouched file loads. */
static void check_every_region(const char *path, load_fn load)
{
    char copy[4096];
    size_t size;
    free(test_read_file(path, &size));
    ck_assert_msg(load(path) == ISL_OK, "%s", isl_last_error());
    const size_t block_offsets[] = {0, 3, 20, 40, 60, 100, 256, 300, 511};
    for (size_t i = 0; i < sizeof(block_offsets) / sizeof(block_offsets[0]); i++)
        expect(load(flipped(path, block_offsets[i], (int)i % 8, copy, sizeof(copy))),
               ISL_ERROR_DAMAGED, "checksum record");
    const size_t content_offsets[] = {BLOCK, BLOCK + 8, BLOCK + 100, BLOCK + 1500, size / 3,
                                      size / 2, size - 1};
    for (size_t i = 0; i < sizeof(content_offsets) / sizeof(content_offsets[0]); i++) {
        expect(load(flipped(path, content_offsets[i], (int)(i * 3) % 8, copy, sizeof(copy))),
               ISL_ERROR_DAMAGED, "checksum mismatch (expected ");
        ck_assert(strstr(isl_last_error(), "flipped.h5"));
    }
}

/* Cut at several points (inside the block, the superblock, the middle, one byte short),
 * or grown by one byte: DAMAGED with both lengths. */
static void check_truncated(const char *path, load_fn load)
{
    char copy[4096], want[64];
    size_t size;
    char *bytes = test_read_file(path, &size);
    snprintf(want, sizeof(want), "expected %zu bytes", size - BLOCK);
    test_scratch_path(copy, sizeof(copy), "cut.h5");
    const size_t cuts[] = {BLOCK + 1, BLOCK + 96, size / 2, size - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        test_write_file(copy, bytes, cuts[i]);
        expect(load(copy), ISL_ERROR_DAMAGED, want);
        ck_assert(strstr(isl_last_error(), "truncated"));
    }
    char *longer = malloc(size + 1);
    memcpy(longer, bytes, size);
    longer[size] = 0;
    test_write_file(copy, longer, size + 1);
    expect(load(copy), ISL_ERROR_DAMAGED, "extended");
    free(longer);
    free(bytes);
}

START_TEST(damaged_models_are_refused)
{
    write_fixtures();
    check_every_region(model_path, load_model);
    check_truncated(model_path, load_model);
}
END_TEST

START_TEST(damaged_datasets_are_refused)
{
    write_fixtures();
    check_every_region(dataset_path, load_dataset);
    check_truncated(dataset_path, load_dataset);
}
END_TEST

START_TEST(damaged_checkpoints_are_refused)
{
    write_fixtures();
    check_every_region(checkpoint_path, load_checkpoint);
    check_truncated(checkpoint_path, load_checkpoint);
    /* A checkpoint is a model file too, verified the same way. */
    ck_assert_msg(load_model(checkpoint_path) == ISL_OK, "%s", isl_last_error());
}
END_TEST

/* Without a record (zeroed block, or HDF5 at offset 0 as other programs write it) a file
 * loads after structural validation and reports no checksum; damage then reaches HDF5,
 * which reports it as a format error. */
START_TEST(files_without_a_record_still_load)
{
    write_fixtures();
    char copy[4096];
    size_t size;
    char *bytes = test_read_file(model_path, &size);
    test_scratch_path(copy, sizeof(copy), "plain.h5");
    test_write_file(copy, bytes + BLOCK, size - BLOCK); /* the bare HDF5 file */
    isl_model *m = NULL;
    ck_assert_msg(isl_model_load(copy, &m) == ISL_OK, "%s", isl_last_error());
    ck_assert_str_eq(isl_model_checksum(m), "");
    isl_model_free(m);

    test_write_file(copy, bytes, size);
    test_strip_checksum(copy); /* a zero user block */
    ck_assert_msg(isl_model_load(copy, &m) == ISL_OK, "%s", isl_last_error());
    ck_assert_str_eq(isl_model_checksum(m), "");
    isl_model_free(m);

    test_write_file(copy, bytes, size / 2);
    test_strip_checksum(copy);
    expect(isl_model_load(copy, &m), ISL_ERROR_FORMAT, "plain.h5");
    ck_assert_ptr_null(m);
    free(bytes);

    /* A model built in memory has no checksum either. */
    static const char *heads[] = {"dapi_confocal"};
    m = test_new_model(8, 3, 1, heads, 5, "none");
    ck_assert_str_eq(isl_model_checksum(m), "");
    isl_model_free(m);
    ck_assert_ptr_null(isl_model_checksum(NULL));
    ck_assert_str_eq(isl_status_string(ISL_ERROR_DAMAGED), "damaged file");
}
END_TEST

/* ---------------------------------------------------------------------------------- */
/* Host-friendliness                                                                   */
/* ---------------------------------------------------------------------------------- */

static int host_h5_calls, host_tiff_calls;

static herr_t host_h5_handler(hid_t stack, void *data)
{
    (void)stack;
    (*(int *)data)++;
    return 0;
}

#ifndef H5_NO_DEPRECATED_SYMBOLS
static herr_t host_h5_handler_v1(void *data)
{
    (*(int *)data)++;
    return 0;
}
#endif

static void host_tiff_handler(const char *module, const char *fmt, va_list ap)
{
    (void)module, (void)fmt, (void)ap;
    host_tiff_calls++;
}

/* Good and damaged models, datasets and TIFF stacks through isl. */
static void use_isl_on_good_and_bad_files(void)
{
    char copy[4096];
    size_t size;
    expect(load_model(flipped(model_path, BLOCK + 64, 0, copy, sizeof(copy))), ISL_ERROR_DAMAGED,
           "damaged");
    ck_assert_int_eq(load_model(model_path), ISL_OK);
    ck_assert_int_eq(load_dataset(dataset_path), ISL_OK);
    char *bytes = test_read_file(model_path, &size); /* damage that HDF5 itself meets */
    test_scratch_path(copy, sizeof(copy), "bad-hdf5.h5");
    test_write_file(copy, bytes, size / 2);
    test_strip_checksum(copy);
    ck_assert_int_eq(load_model(copy), ISL_ERROR_FORMAT);
    free(bytes);

    /* A TIFF stack, then the same file cut short: libtiff reports errors. */
    uint16_t *pixels = test_random_u16(2 * 16 * 16, 3);
    test_scratch_path(copy, sizeof(copy), "stack.tif");
    TIFF *t = TIFFOpen(copy, "w");
    ck_assert_ptr_nonnull(t);
    for (int z = 0; z < 2; z++) {
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 16);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, 16);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 16);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
        TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 16);
        ck_assert_int_eq(TIFFWriteEncodedStrip(t, 0, pixels + z * 256, 512), 512);
        ck_assert_int_eq(TIFFWriteDirectory(t), 1);
    }
    TIFFClose(t);
    free(pixels);
    isl_tiff_stack st;
    ck_assert_int_eq(isl_tiff_read_stack(copy, 2, &st), ISL_OK);
    isl_tiff_stack_free(&st);
    bytes = test_read_file(copy, &size);
    test_write_file(copy, bytes, size - 700);
    free(bytes);
    ck_assert_int_ne(isl_tiff_read_stack(copy, 2, &st), ISL_OK);
    test_write_file(copy, "II*\0garbage", 11);
    ck_assert_int_ne(isl_tiff_read_stack(copy, 0, &st), ISL_OK);
}

/* HDF5 still works for the host after isl (no H5close): it can create, write and read a
 * file, and leaves no identifiers of isl open. */
static void host_uses_hdf5(void)
{
    ck_assert_int_eq(H5Fget_obj_count((hid_t)H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
    char path[4096];
    test_scratch_path(path, sizeof(path), "host.h5");
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    hsize_t dims[1] = {3};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t d = H5Dcreate2(f, "x", H5T_NATIVE_INT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int in[3] = {1, 2, 3}, out[3] = {0};
    ck_assert_int_ge(H5Dwrite(d, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, in), 0);
    ck_assert_int_ge(H5Dread(d, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), 0);
    ck_assert_int_eq(out[2], 3);
    H5Dclose(d);
    H5Sclose(space);
    H5Fclose(f);
}

START_TEST(host_error_handlers_survive)
{
    write_fixtures();
    H5E_auto2_t func;
    void *data;
    /* The host's own handlers, installed process-wide. */
    ck_assert_int_ge(H5Eset_auto2(H5E_DEFAULT, host_h5_handler, &host_h5_calls), 0);
    TIFFErrorHandler previous_tiff = TIFFSetErrorHandler(host_tiff_handler);
    TIFFErrorHandler previous_warning = TIFFSetWarningHandler(host_tiff_handler);

    use_isl_on_good_and_bad_files();

    /* Still installed, and isl's failures did not go through them. */
    ck_assert_int_ge(H5Eget_auto2(H5E_DEFAULT, &func, &data), 0);
    ck_assert(func == host_h5_handler && data == &host_h5_calls);
    ck_assert_int_eq(host_h5_calls, 0);
    ck_assert(TIFFSetErrorHandler(host_tiff_handler) == host_tiff_handler);
    ck_assert(TIFFSetWarningHandler(host_tiff_handler) == host_tiff_handler);
    ck_assert_int_eq(host_tiff_calls, 0);

    /* And the host's own HDF5 failure reaches its handler: HDF5 is alive and untouched. */
    host_uses_hdf5();
    hid_t bad = H5Fopen("/nonexistent/isl-host-test.h5", H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_lt(bad, 0);
    ck_assert_int_eq(host_h5_calls, 1);

#ifndef H5_NO_DEPRECATED_SYMBOLS
    /* A handler set with the deprecated H5Eset_auto1 is restored as such. */
    int v1_calls = 0;
    H5E_auto1_t func1;
    ck_assert_int_ge(H5Eset_auto1(host_h5_handler_v1, &v1_calls), 0);
    use_isl_on_good_and_bad_files();
    ck_assert_int_ge(H5Eget_auto1(&func1, &data), 0);
    ck_assert(func1 == host_h5_handler_v1 && data == &v1_calls);
    ck_assert_int_eq(v1_calls, 0);
#endif

    H5Eset_auto2(H5E_DEFAULT, (H5E_auto2_t)H5Eprint2, stderr);
    TIFFSetErrorHandler(previous_tiff);
    TIFFSetWarningHandler(previous_warning);
}
END_TEST

int main(void)
{
    const test_case cases[] = {
        {"damaged_models", damaged_models_are_refused},
        {"damaged_datasets", damaged_datasets_are_refused},
        {"damaged_checkpoints", damaged_checkpoints_are_refused},
        {"no_record", files_without_a_record_still_load},
        {"host_handlers", host_error_handlers_survive},
    };
    int rc = test_run_cases("integrity", cases, sizeof(cases) / sizeof(cases[0]), 300);
    test_scratch_remove();
    return rc;
}
