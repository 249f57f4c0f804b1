/* HDF5 dataset files, format "isl-dataset" version 1 (docs/training.md, "Dataset files").
 * The HDF5 lock, error capture and atomic writing are the HDF5 layer's (lib/io/h5_io.h). */
#include "dataset.h"

#include "error.h"
#include "bounds.h"
#include "h5_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DATASET_FORMAT "isl-dataset"
#define DATASET_VERSION 1
#define CHUNK_SIDE 256
#define DEFLATE_LEVEL 4
#define WELL_PATH 32 /* "/wells/<index>" */
#define LABELS_PATH (WELL_PATH + 8) /* "<well>/labels" */
#define PATH_CAP (LABELS_PATH + 256 + 8) /* "<labels>/<name of a group member>/values" */

/* ---------------------------------------------------------------------------------- */
/* Writing                                                                             */
/* ---------------------------------------------------------------------------------- */

/* 1 if every value survives storage as round(v * 65535) exactly (e.g. it came from a
 * uint8 or uint16 image): then the file stores uint16, else float32. */
static int fits_u16(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((float)(nearbyint(v[i] * 65535.0) / 65535.0) != v[i])
            return 0;
    return 1;
}

/* Chunks of one plane, at most CHUNK_SIDE square; shuffle + deflate when this HDF5 has
 * them (Debian's does). */
static hid_t chunked_dcpl(int rank, const hsize_t *dims)
{
    hsize_t chunk[3];
    for (int i = 0; i < rank; i++)
        chunk[i] = i == rank - 3 ? 1 : (dims[i] < CHUNK_SIDE ? dims[i] : CHUNK_SIDE);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl < 0 || H5Pset_chunk(dcpl, rank, chunk) < 0)
        goto fail;
    if (H5Zfilter_avail(H5Z_FILTER_SHUFFLE) > 0 && H5Pset_shuffle(dcpl) < 0)
        goto fail;
    if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0 && H5Pset_deflate(dcpl, DEFLATE_LEVEL) < 0)
        goto fail;
    return dcpl;
fail:
    isl_h5_close(dcpl);
    return H5I_INVALID_HID;
}

/* A [planes,] height x width array at path, plane by plane (the uint16 copy of one plane
 * is the only extra memory). Exactly one of values / mask is given. */
static isl_status write_array(isl_h5_file *f, const char *path, int planes, int height, int width,
                              const float *values, const uint8_t *mask)
{
    const int rank = planes > 0 ? 3 : 2;
    const size_t plane = (size_t)height * (size_t)width;
    const size_t count = plane * (size_t)(planes > 0 ? planes : 1);
    const int as_u16 = values && fits_u16(values, count);
    hsize_t dims[3] = {(hsize_t)planes, (hsize_t)height, (hsize_t)width};
    hsize_t *d = rank == 3 ? dims : dims + 1;
    hid_t ftype = mask ? H5T_STD_U8LE : as_u16 ? H5T_STD_U16LE : H5T_IEEE_F32LE;
    hid_t space = H5Screate_simple(rank, d, NULL);
    hid_t mspace = H5Screate_simple(2, dims + 1, NULL);
    hid_t dcpl = chunked_dcpl(rank, d);
    hid_t did = space < 0 || mspace < 0 || dcpl < 0
                    ? H5I_INVALID_HID
                    : H5Dcreate2(isl_h5_id(f), path, ftype, space, isl_h5_lcpl(f), dcpl,
                                 H5P_DEFAULT);
    uint16_t *u16 = as_u16 ? malloc(sizeof(uint16_t) * plane) : NULL;
    isl_status st = ISL_OK;
    if (did < 0)
        st = isl_fail(ISL_ERROR_IO, "%s: cannot create %s: %s", isl_h5_path(f), path,
                      isl_h5_detail(f));
    else if (as_u16 && !u16)
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory writing %s", isl_h5_path(f),
                      path);
    for (int p = 0; st == ISL_OK && p < (planes > 0 ? planes : 1); p++) {
        hsize_t start[3] = {(hsize_t)p, 0, 0}, one[3] = {1, (hsize_t)height, (hsize_t)width};
        const void *src = mask ? (const void *)mask : (const void *)(values + (size_t)p * plane);
        hid_t mtype = mask ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT;
        if (as_u16) {
            const float *v = values + (size_t)p * plane;
            for (size_t i = 0; i < plane; i++)
                u16[i] = (uint16_t)nearbyint(v[i] * 65535.0);
            src = u16;
            mtype = H5T_NATIVE_UINT16;
        }
        if ((rank == 3 && H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, one, NULL) < 0) ||
            H5Dwrite(did, mtype, mspace, space, H5P_DEFAULT, src) < 0)
            st = isl_fail(ISL_ERROR_IO, "%s: cannot write %s: %s", isl_h5_path(f), path,
                          isl_h5_detail(f));
    }
    if (isl_h5_close(did) < 0 && st == ISL_OK)
        st = isl_fail(ISL_ERROR_IO, "%s: cannot write %s", isl_h5_path(f), path);
    free(u16);
    isl_h5_close(dcpl);
    isl_h5_close(mspace);
    isl_h5_close(space);
    return st;
}

static isl_status write_well(isl_h5_file *f, const isl_dataset *d, int index)
{
    const isl_ds_well *w = &d->wells[index];
    char path[PATH_CAP];
    snprintf(path, sizeof(path), "/wells/%03d", index);
    hid_t g = H5Gcreate2(isl_h5_id(f), path, isl_h5_lcpl(f), H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0)
        return isl_fail(ISL_ERROR_IO, "%s: cannot create %s: %s", isl_h5_path(f), path,
                        isl_h5_detail(f));
    isl_status st = isl_h5_write_string(f, g, "name", w->name);
    if (st == ISL_OK)
        st = isl_h5_write_string(f, g, "condition", w->condition);
    if (st == ISL_OK)
        st = isl_h5_write_double(f, g, "pixel_size_um", w->pixel_size_um);
    if (isl_h5_close(g) < 0 && st == ISL_OK)
        st = isl_fail(ISL_ERROR_IO, "%s: cannot write %s", isl_h5_path(f), path);
    if (st != ISL_OK)
        return st;
    snprintf(path, sizeof(path), "/wells/%03d/stack", index);
    ISL_CHECK(write_array(f, path, d->num_z, w->height, w->width, w->stack, NULL));
    for (int t = 0; t < w->num_targets; t++) {
        const isl_ds_target *target = &w->targets[t];
        const char *label = d->labels[target->label];
        snprintf(path, sizeof(path), "/wells/%03d/labels/%s/values", index, label);
        ISL_CHECK(write_array(f, path, 0, w->height, w->width, target->values, NULL));
        snprintf(path, sizeof(path), "/wells/%03d/labels/%s/mask", index, label);
        ISL_CHECK(write_array(f, path, 0, w->height, w->width, NULL, target->mask));
    }
    return ISL_OK;
}

/* isl_h5_file_fn: the whole file. */
static isl_status write_contents(void *user, isl_h5_file *f)
{
    const isl_dataset *d = user;
    hid_t root = isl_h5_id(f);
    ISL_CHECK(isl_h5_write_string(f, root, "format", DATASET_FORMAT));
    ISL_CHECK(isl_h5_write_int(f, root, "version", DATASET_VERSION));
    ISL_CHECK(isl_h5_write_int(f, root, "num_z", d->num_z));
    const char *none[1] = {""}; /* HDF5 wants a buffer even for no strings */
    ISL_CHECK(isl_h5_write_strings(f, root, "labels", d->num_labels,
                                   d->num_labels ? (const char *const *)d->labels : none));
    hid_t g = H5Gcreate2(root, "/wells", isl_h5_lcpl(f), H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0 || isl_h5_close(g) < 0)
        return isl_fail(ISL_ERROR_IO, "%s: cannot create /wells: %s", isl_h5_path(f),
                        isl_h5_detail(f));
    for (int i = 0; i < d->num_wells; i++)
        ISL_CHECK(write_well(f, d, i));
    return ISL_OK;
}

isl_status isl_dataset_save(const isl_dataset *d, const char *path)
{
    if (!d || !path)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_save: %s is NULL",
                        d ? "path" : "dataset");
    return isl_h5_write_file(path, write_contents, (void *)d);
}

/* ---------------------------------------------------------------------------------- */
/* Reading                                                                             */
/* ---------------------------------------------------------------------------------- */

typedef struct ds_reader {
    isl_h5_file *f;
    isl_dataset *d;
    int num_wells;
    char **listed;        /* root attribute labels (one block) */
    size_t num_listed;
    uint8_t *label_used;  /* [num_listed] */
} ds_reader;

static const char *file_of(ds_reader *r) { return isl_h5_path(r->f); }

/* Names the children of the group at path through fn(user, name); fails on the first
 * non-zero status. */
typedef isl_status (*child_fn)(ds_reader *r, const char *group, const char *name, void *user);

static isl_status each_child(ds_reader *r, const char *path, child_fn fn, void *user)
{
    hid_t g = H5I_INVALID_HID;
    H5G_info_t info;
    char name[256];
    ISL_CHECK(isl_h5_open_group(r->f, path, &g));
    isl_status st = ISL_OK;
    if (H5Gget_info(g, &info) < 0)
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot list group: %s", file_of(r), path,
                      isl_h5_detail(r->f));
    for (hsize_t i = 0; st == ISL_OK && i < info.nlinks; i++) {
        ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name),
                                         H5P_DEFAULT);
        if (len < 0)
            st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot list group: %s", file_of(r), path,
                          isl_h5_detail(r->f));
        else if ((size_t)len >= sizeof(name))
            st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: a member's name is too long", file_of(r),
                          path);
        else
            st = fn(r, path, name, user);
    }
    isl_h5_close(g);
    return st;
}

static isl_status check_format(ds_reader *r)
{
    hid_t root = isl_h5_id(r->f);
    char format[32];
    long long version, num_z;
    if (H5Aexists(root, "format") <= 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: missing attribute format (not an isl dataset)",
                        file_of(r));
    ISL_CHECK(isl_h5_read_string(r->f, root, "/", "format", format, sizeof(format)));
    if (strcmp(format, DATASET_FORMAT) != 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: attribute format is \"%s\", not \"%s\"",
                        file_of(r), format, DATASET_FORMAT);
    ISL_CHECK(isl_h5_read_int(r->f, root, "/", "version", &version));
    if (version > DATASET_VERSION)
        return isl_fail(ISL_ERROR_UNSUPPORTED,
                        "%s: /: version %lld: written by a newer isl (this one reads version %d)",
                        file_of(r), version, DATASET_VERSION);
    if (version < 1)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: invalid version %lld", file_of(r), version);
    ISL_CHECK(isl_h5_read_int(r->f, root, "/", "num_z", &num_z));
    if (num_z < 1 || num_z > ISL_DATASET_MAX_NUM_Z)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: attribute num_z is %lld, outside 1..%d",
                        file_of(r), num_z, ISL_DATASET_MAX_NUM_Z);
    return isl_dataset_create((int)num_z, &r->d);
}

/* The root attribute labels: valid, distinct names, in the dataset's order. */
static isl_status read_label_list(ds_reader *r)
{
    ISL_CHECK(isl_h5_read_strings(r->f, isl_h5_id(r->f), "/", "labels", &r->listed,
                                  &r->num_listed));
    r->label_used = calloc(r->num_listed ? r->num_listed : 1, 1);
    if (!r->label_used)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (size_t l = 0; l < r->num_listed; l++) {
        if (isl_ds_check_label_name(r->listed[l]) != ISL_OK) {
            isl_error_prefix("%s: /: attribute labels: ", file_of(r));
            return ISL_ERROR_FORMAT;
        }
        if (isl_ds_label_index(r->d, r->listed[l]) >= 0)
            return isl_fail(ISL_ERROR_FORMAT, "%s: /: attribute labels: \"%s\" appears twice",
                            file_of(r), r->listed[l]);
        ISL_CHECK(isl_ds_add_label(r->d, r->listed[l]));
    }
    return ISL_OK;
}

/* child_fn: a well group's name must be its index, three or more digits. */
static isl_status check_well_name(ds_reader *r, const char *group, const char *name, void *user)
{
    (void)user;
    char *end, canonical[32];
    long i = strtol(name, &end, 10);
    if (*end == '\0' && i >= 0 && i < r->num_wells) {
        snprintf(canonical, sizeof(canonical), "%03ld", i);
        if (!strcmp(canonical, name))
            return ISL_OK;
    }
    return isl_fail(ISL_ERROR_FORMAT,
                    "%s: %s/%s: unexpected member (wells are named 000..%03d by index)",
                    file_of(r), group, name, r->num_wells - 1);
}

static void format_shape(char *buf, size_t cap, int rank, const hsize_t *dims)
{
    int used = snprintf(buf, cap, "[");
    for (int i = 0; i < rank && used > 0 && (size_t)used < cap; i++)
        used += snprintf(buf + used, cap - (size_t)used, "%s%llu", i ? ", " : "",
                         (unsigned long long)dims[i]);
    if (used > 0 && (size_t)used < cap)
        snprintf(buf + used, cap - (size_t)used, "]");
}

typedef enum sample_kind { SAMPLES, MASK } sample_kind;

/* Opens a dataset and checks its type (samples: uint8, uint16 or float; mask: unsigned
 * integers) and rank; *scale receives the factor to [0, 1] and dims its extent. */
static isl_status open_array(ds_reader *r, const char *path, sample_kind kind, int rank,
                             hid_t *did, hsize_t *dims, double *scale)
{
    ISL_CHECK(isl_h5_open_dataset(r->f, path, did));
    hid_t type = H5Dget_type(*did), space = H5Dget_space(*did);
    H5T_class_t cls = type < 0 ? H5T_NO_CLASS : H5Tget_class(type);
    size_t size = type < 0 ? 0 : H5Tget_size(type);
    int is_unsigned = cls == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE;
    int file_rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    isl_status st = ISL_OK;
    *scale = 1.0;
    if (kind == MASK ? !is_unsigned
                     : !((is_unsigned && (size == 1 || size == 2)) ||
                         (cls == H5T_FLOAT && (size == 4 || size == 8))))
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: unsupported datatype; expected %s", file_of(r),
                      path, kind == MASK ? "uint8" : "uint8, uint16 or float32");
    else if (file_rank != rank || H5Sget_simple_extent_dims(space, dims, NULL) < 0)
        st = isl_fail(ISL_ERROR_SHAPE, "%s: %s: has %d dimensions, expected %d", file_of(r), path,
                      file_rank, rank);
    else if ((st = isl_h5_check_storage(r->f, *did, path, 1)) == ISL_OK && kind == SAMPLES &&
             cls == H5T_INTEGER)
        *scale = size == 1 ? 255.0 : 65535.0;
    if (st == ISL_OK)
        st = isl_h5_check_chunks(r->f, *did, path);
    isl_h5_close(type);
    isl_h5_close(space);
    return st;
}

static isl_status read_into(ds_reader *r, hid_t did, const char *path, hid_t mtype, void *buf)
{
    if (H5Dread(did, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read: %s", file_of(r), path,
                        isl_h5_detail(r->f));
    return ISL_OK;
}

/* Scales samples read as floats to [0, 1] and checks them (only where mask is nonzero, if
 * given; elsewhere they become 0). Reports [z, y, x] or [y, x] of the first bad one. */
static isl_status check_samples(ds_reader *r, const char *path, float *v, const uint8_t *mask,
                                double scale, int planes, int height, int width)
{
    const size_t plane = (size_t)height * (size_t)width;
    const size_t n = plane * (size_t)(planes > 0 ? planes : 1);
    for (size_t i = 0; i < n; i++) {
        if (mask && !mask[i]) {
            v[i] = 0.0f;
            continue;
        }
        if (scale != 1.0)
            v[i] = (float)(v[i] / scale);
        const char *problem = isnan(v[i])                   ? "is NaN"
                              : isinf(v[i])                 ? "is infinite"
                              : v[i] < 0.0f || v[i] > 1.0f ? "is outside [0, 1]"
                                                            : NULL;
        if (!problem)
            continue;
        size_t p = i % plane, y = p / (size_t)width, x = p % (size_t)width;
        char where[64];
        if (planes > 0)
            snprintf(where, sizeof(where), "[%zu, %zu, %zu]", i / plane, y, x);
        else
            snprintf(where, sizeof(where), "[%zu, %zu]", y, x);
        return isl_fail(ISL_ERROR_VALUE, "%s: %s: element %s %s (%g)", file_of(r), path, where,
                        problem, (double)v[i]);
    }
    return ISL_OK;
}

static isl_status read_stack(ds_reader *r, const char *well_path, int *height, int *width,
                             float **out)
{
    char path[WELL_PATH + 8], have[96];
    hsize_t dims[3];
    double scale;
    hid_t did;
    snprintf(path, sizeof(path), "%s/stack", well_path);
    isl_status st = open_array(r, path, SAMPLES, 3, &did, dims, &scale);
    if (st == ISL_OK && (dims[0] != (hsize_t)r->d->num_z || dims[1] < 1 || dims[2] < 1 ||
                         dims[1] > ISL_DATASET_MAX_SIDE || dims[2] > ISL_DATASET_MAX_SIDE)) {
        format_shape(have, sizeof(have), 3, dims);
        st = isl_fail(ISL_ERROR_SHAPE,
                      "%s: %s: has shape %s; expected [num_z = %d, height, width] with sides in "
                      "1..%d",
                      file_of(r), path, have, r->d->num_z, ISL_DATASET_MAX_SIDE);
    }
    uint64_t bytes, factors[4] = {dims[0], dims[1], dims[2], sizeof(float)};
    if (st == ISL_OK && isl_mul_u64_capped(&bytes, factors, 4, ISL_MAX_ARRAY_BYTES) != 0) {
        format_shape(have, sizeof(have), 3, dims);
        st = isl_fail(ISL_ERROR_UNSUPPORTED, "%s: %s: shape %s needs more than %llu GiB", file_of(r),
                      path, have, (unsigned long long)(ISL_MAX_ARRAY_BYTES >> 30));
    }
    if (st == ISL_OK) {
        *height = (int)dims[1];
        *width = (int)dims[2];
        size_t n = (size_t)r->d->num_z * (size_t)*height * (size_t)*width;
        if (!(*out = malloc(sizeof(float) * n)))
            st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: %s: out of memory for %zu samples",
                          file_of(r), path, n);
    }
    if (st == ISL_OK && (st = read_into(r, did, path, H5T_NATIVE_FLOAT, *out)) == ISL_OK)
        st = check_samples(r, path, *out, NULL, scale, r->d->num_z, *height, *width);
    isl_h5_close(did);
    return st;
}

/* One [height, width] array of a label: values (floats) or mask (bytes). */
static isl_status read_plane(ds_reader *r, const char *path, sample_kind kind, int height,
                             int width, void *buf, double *scale)
{
    hsize_t dims[2];
    hid_t did;
    char have[64];
    isl_status st = open_array(r, path, kind, 2, &did, dims, scale);
    if (st == ISL_OK && (dims[0] != (hsize_t)height || dims[1] != (hsize_t)width)) {
        format_shape(have, sizeof(have), 2, dims);
        st = isl_fail(ISL_ERROR_SHAPE, "%s: %s: has shape %s but the well is [%d, %d]", file_of(r),
                      path, have, height, width);
    }
    if (st == ISL_OK)
        st = read_into(r, did, path, kind == MASK ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT, buf);
    isl_h5_close(did);
    return st;
}

/* child_fn: one label group of a well (user: the well index). */
static isl_status read_label(ds_reader *r, const char *group, const char *name, void *user)
{
    int well = *(int *)user;
    const isl_ds_well *w = &r->d->wells[well];
    int l = isl_ds_label_index(r->d, name);
    if (l < 0)
        return isl_fail(ISL_ERROR_FORMAT,
                        "%s: %s/%s: label not listed in the root attribute labels", file_of(r),
                        group, name);
    r->label_used[l] = 1;
    char values_path[PATH_CAP], mask_path[PATH_CAP];
    snprintf(values_path, sizeof(values_path), "%s/%s/values", group, name);
    snprintf(mask_path, sizeof(mask_path), "%s/%s/mask", group, name);
    size_t n = (size_t)w->height * (size_t)w->width;
    float *values = malloc(sizeof(float) * n);
    uint8_t *mask = malloc(n);
    double scale, unused;
    isl_status st = ISL_OK;
    if (!values || !mask)
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: %s/%s: out of memory", file_of(r), group, name);
    if (st == ISL_OK)
        st = read_plane(r, values_path, SAMPLES, w->height, w->width, values, &scale);
    if (st == ISL_OK)
        st = read_plane(r, mask_path, MASK, w->height, w->width, mask, &unused);
    if (st == ISL_OK) {
        for (size_t i = 0; i < n; i++)
            mask[i] = mask[i] != 0;
        st = check_samples(r, values_path, values, mask, scale, 0, w->height, w->width);
    }
    if (st != ISL_OK) {
        free(values);
        free(mask);
        return st;
    }
    return isl_ds_push_target(r->d, well, name, values, mask);
}

static isl_status read_well(ds_reader *r, int index)
{
    char path[WELL_PATH], name[ISL_DATASET_MAX_TEXT], condition[ISL_DATASET_MAX_TEXT];
    double pixel_size;
    hid_t g = H5I_INVALID_HID;
    snprintf(path, sizeof(path), "/wells/%03d", index);
    isl_status st = isl_h5_open_group(r->f, path, &g);
    if (st == ISL_OK)
        st = isl_h5_read_string(r->f, g, path, "name", name, sizeof(name));
    if (st == ISL_OK)
        st = isl_h5_read_string(r->f, g, path, "condition", condition, sizeof(condition));
    if (st == ISL_OK)
        st = isl_h5_read_double(r->f, g, path, "pixel_size_um", &pixel_size);
    isl_h5_close(g);
    if (st != ISL_OK)
        return st;
    int other = isl_dataset_well_index(r->d, name);
    if (other >= 0)
        return isl_fail(ISL_ERROR_FORMAT,
                        "%s: %s: well name \"%s\" is also the name of /wells/%03d", file_of(r),
                        path, name, other);
    if (isl_ds_check_well_meta(r->d, name, condition, pixel_size) != ISL_OK) {
        isl_error_prefix("%s: %s: ", file_of(r), path);
        return ISL_ERROR_FORMAT;
    }
    int height = 0, width = 0;
    float *stack = NULL;
    if ((st = read_stack(r, path, &height, &width, &stack)) != ISL_OK) {
        free(stack);
        return st;
    }
    ISL_CHECK(isl_ds_push_well(r->d, name, condition, pixel_size, height, width, stack, NULL));
    char labels[LABELS_PATH];
    snprintf(labels, sizeof(labels), "%s/labels", path);
    if (!isl_h5_exists(r->f, labels))
        return ISL_OK; /* a well without labels (autoencoder data) */
    return each_child(r, labels, read_label, &index);
}

/* isl_h5_file_fn: the whole file into r->d. */
static isl_status read_contents(void *user, isl_h5_file *f)
{
    ds_reader *r = user;
    r->f = f;
    ISL_CHECK(check_format(r));
    ISL_CHECK(read_label_list(r));
    H5G_info_t info;
    hid_t g = H5I_INVALID_HID;
    ISL_CHECK(isl_h5_open_group(f, "/wells", &g));
    herr_t e = H5Gget_info(g, &info);
    isl_h5_close(g);
    if (e < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /wells: cannot list group: %s", file_of(r),
                        isl_h5_detail(f));
    if (info.nlinks > ISL_DATASET_MAX_WELLS)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /wells: %llu wells (at most %d)", file_of(r),
                        (unsigned long long)info.nlinks, ISL_DATASET_MAX_WELLS);
    r->num_wells = (int)info.nlinks;
    ISL_CHECK(each_child(r, "/wells", check_well_name, NULL));
    for (int i = 0; i < r->num_wells; i++)
        ISL_CHECK(read_well(r, i));
    for (size_t l = 0; l < r->num_listed; l++)
        if (!r->label_used[l])
            return isl_fail(ISL_ERROR_FORMAT,
                            "%s: /: attribute labels lists \"%s\", which no well has",
                            file_of(r), r->listed[l]);
    return ISL_OK;
}

/* A file (image NULL) or a file image into *out. */
static isl_status load(const char *path, const void *image, size_t size, isl_dataset **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_load: out is NULL");
    *out = NULL;
    if (!path)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_load: path is NULL");
    ds_reader r = {0};
    isl_status st = image ? isl_h5_read_image(path, image, size, read_contents, &r)
                          : isl_h5_read_file(path, read_contents, &r);
    free(r.listed);
    free(r.label_used);
    if (st != ISL_OK) {
        isl_dataset_free(r.d);
        return st;
    }
    *out = r.d;
    return ISL_OK;
}

isl_status isl_dataset_load(const char *path, isl_dataset **out)
{
    return load(path, NULL, 0, out);
}

isl_status isl_dataset_load_image(const char *name, const void *image, size_t size,
                                  isl_dataset **out)
{
    if (!image)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_load_image: image is NULL");
    return load(name, image, size, out);
}
