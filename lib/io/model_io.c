/* HDF5 model files, format "isl-model" version 1 (docs/model-format.md), on the HDF5
 * layer of lib/io/h5_io.c. */
#include "model_io.h"

#include "error.h"
#include "h5_checksum.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_FORMAT "isl-model"
#define MIN_BASE_DEPTH 5 /* up modules use depths(base - 4, .) */
#define MAX_BASE_DEPTH 4096
#define MAX_NUM_Z 1024
#define MAX_HEADS ISL_H5_MAX_STRINGS

/* ---------------------------------------------------------------------------------- */
/* Checks shared by reading and writing                                                */
/* ---------------------------------------------------------------------------------- */

static const char *kind_name(isl_module_kind kind)
{
    switch (kind) {
    case ISL_MODULE_IN: return "in";
    case ISL_MODULE_DOWN: return "down";
    case ISL_MODULE_UP: return "up";
    }
    return "?";
}

static int valid_normalization(const char *s)
{
    return strcmp(s, "none") == 0 || strcmp(s, "global") == 0;
}

#define HEADS_ATTR "%s: /: attribute heads: "

/* Head names become HDF5 path components: non-empty, short, unique, no '/', not ".". */
static isl_status check_head_names(const char *file, int count, const char *const *names)
{
    for (int h = 0; h < count; h++) {
        const char *name = names[h];
        size_t len = strlen(name);
        if (len == 0)
            return isl_fail(ISL_ERROR_FORMAT, HEADS_ATTR "head %d has an empty name", file, h);
        if (len >= ISL_MAX_NAME)
            return isl_fail(ISL_ERROR_FORMAT,
                            HEADS_ATTR "head name \"%.20s...\" is longer than %d bytes", file,
                            name, ISL_MAX_NAME - 1);
        if (strchr(name, '/') || strcmp(name, ".") == 0)
            return isl_fail(ISL_ERROR_FORMAT,
                            HEADS_ATTR "head name \"%s\" is not a valid group name", file, name);
        if (strcmp(name, ISL_AUTOENCODER_NAME) == 0 && h != count - 1)
            return isl_fail(ISL_ERROR_FORMAT, HEADS_ATTR "\"%s\" must be the last head", file,
                            ISL_AUTOENCODER_NAME);
        for (int g = 0; g < h; g++)
            if (strcmp(names[g], name) == 0)
                return isl_fail(ISL_ERROR_FORMAT, HEADS_ATTR "head name \"%s\" appears twice", file,
                                name);
    }
    return ISL_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Reading                                                                             */
/* ---------------------------------------------------------------------------------- */

/* An integer attribute of the root group within [lo, hi]. */
static isl_status read_bounded_int(isl_h5_file *f, const char *name, long long lo, long long hi,
                                   int *value)
{
    const char *file = isl_h5_path(f);
    long long v;
    ISL_CHECK(isl_h5_read_int(f, isl_h5_id(f), "/", name, &v));
    if (v < lo || v > hi) {
        if (lo == hi)
            return isl_fail(ISL_ERROR_FORMAT, "%s: /: attribute %s is %lld; isl models have %lld",
                            file, name, v, lo);
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: attribute %s is %lld, outside %lld..%lld", file,
                        name, v, lo, hi);
    }
    *value = (int)v;
    return ISL_OK;
}

static isl_status check_format(isl_h5_file *f)
{
    const char *file = isl_h5_path(f);
    hid_t root = isl_h5_id(f);
    char format[32];
    long long version;
    if (H5Aexists(root, "format") == 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: missing attribute format (not an isl model)",
                        file);
    ISL_CHECK(isl_h5_read_string(f, root, "/", "format", format, sizeof(format)));
    if (strcmp(format, MODEL_FORMAT) != 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: attribute format is \"%s\", not \"%s\"", file,
                        format, MODEL_FORMAT);
    ISL_CHECK(isl_h5_read_int(f, root, "/", "format_version", &version));
    if (version > ISL_MODEL_FORMAT_VERSION)
        return isl_fail(ISL_ERROR_UNSUPPORTED,
                        "%s: /: format_version %lld: written by a newer isl (this one reads "
                        "version %d)",
                        file, version, ISL_MODEL_FORMAT_VERSION);
    if (version < 1)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: invalid format_version %lld", file, version);
    return ISL_OK;
}

typedef struct model_header {
    int base_depth, num_z, num_classes, projection_depth;
    char normalization[16];
    double pixel_size_um; /* 0 when the optional attribute is absent */
    char **heads; /* packed block (free) */
    size_t num_heads;
    int has_autoencoder;
} model_header;

/* The optional pixel_size_um attribute: written only when known, so files without it
 * (older ones included) load with 0, "unknown". */
static isl_status read_pixel_size(isl_h5_file *f, double *um)
{
    hid_t root = isl_h5_id(f);
    *um = 0;
    htri_t e = H5Aexists(root, "pixel_size_um");
    if (e < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: cannot look up attribute pixel_size_um",
                        isl_h5_path(f));
    if (e == 0)
        return ISL_OK;
    ISL_CHECK(isl_h5_read_double(f, root, "/", "pixel_size_um", um));
    if (!isl_pixel_size_valid(*um) || *um == 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: /: attribute pixel_size_um is %g (expected a "
                        "size in (0, %g] micrometres)", isl_h5_path(f), *um, ISL_MAX_PIXEL_SIZE_UM);
    return ISL_OK;
}

static isl_status read_header(isl_h5_file *f, model_header *h)
{
    const char *file = isl_h5_path(f);
    hid_t root = isl_h5_id(f);
    ISL_CHECK(check_format(f));
    ISL_CHECK(read_bounded_int(f, "base_depth", MIN_BASE_DEPTH, MAX_BASE_DEPTH, &h->base_depth));
    ISL_CHECK(read_bounded_int(f, "num_z", 1, MAX_NUM_Z, &h->num_z));
    ISL_CHECK(read_bounded_int(f, "num_classes", ISL_NUM_CLASSES, ISL_NUM_CLASSES,
                               &h->num_classes));
    ISL_CHECK(read_bounded_int(f, "projection_depth", ISL_PROJECTION_DEPTH, ISL_PROJECTION_DEPTH,
                               &h->projection_depth));
    ISL_CHECK(isl_h5_read_string(f, root, "/", "input_normalization", h->normalization,
                                 sizeof(h->normalization)));
    if (!valid_normalization(h->normalization))
        return isl_fail(ISL_ERROR_FORMAT,
                        "%s: /: attribute input_normalization is \"%s\" (expected \"none\" or "
                        "\"global\")",
                        file, h->normalization);
    ISL_CHECK(read_pixel_size(f, &h->pixel_size_um));
    ISL_CHECK(isl_h5_read_strings(f, root, "/", "heads", &h->heads, &h->num_heads));
    ISL_CHECK(check_head_names(file, (int)h->num_heads, (const char *const *)h->heads));
    h->has_autoencoder = h->num_heads > 0 &&
                         strcmp(h->heads[h->num_heads - 1], ISL_AUTOENCODER_NAME) == 0;
    return ISL_OK;
}

static isl_status check_module_kinds(isl_h5_file *f, const isl_arch *a)
{
    char path[32], kind[16];
    for (int i = 0; i < a->num_modules; i++) {
        hid_t g = H5I_INVALID_HID;
        snprintf(path, sizeof(path), "/modules/%03d", i);
        ISL_CHECK(isl_h5_open_group(f, path, &g));
        isl_status st = isl_h5_read_string(f, g, path, "kind", kind, sizeof(kind));
        isl_h5_close(g);
        if (st != ISL_OK)
            return st;
        const char *want = kind_name(a->modules[i].kind);
        if (strcmp(kind, want) != 0)
            return isl_fail(ISL_ERROR_FORMAT,
                            "%s: %s: attribute kind is \"%s\" but the architecture (base_depth "
                            "%d, num_z %d) has \"%s\" here",
                            isl_h5_path(f), path, kind, a->base_depth, a->num_z, want);
    }
    return ISL_OK;
}

typedef int (*expected_name_fn)(const char *name, const isl_params *p);

static int expected_module(const char *name, const isl_params *p)
{
    char canonical[16];
    char *end;
    long i = strtol(name, &end, 10);
    if (*end || i < 0 || i >= p->arch.num_modules)
        return 0;
    snprintf(canonical, sizeof(canonical), "%03ld", i);
    return strcmp(canonical, name) == 0;
}

static int expected_head(const char *name, const isl_params *p)
{
    for (int h = 0; h < p->num_heads; h++)
        if (strcmp(p->heads[h].name, name) == 0)
            return 1;
    return 0;
}

/* Rejects children of group `path` that the model does not have (a /modules/104 in a
 * 104-module network means the file and the architecture disagree). */
static isl_status check_no_extra(isl_h5_file *f, const char *path, expected_name_fn expected,
                                 const isl_params *p, const char *complaint)
{
    const char *file = isl_h5_path(f);
    H5G_info_t info;
    char name[256];
    hid_t g = H5I_INVALID_HID;
    isl_status st = ISL_OK;
    ISL_CHECK(isl_h5_open_group(f, path, &g));
    if (H5Gget_info(g, &info) < 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot list group: %s", file, path,
                      isl_h5_detail(f));
        goto cleanup;
    }
    for (hsize_t i = 0; i < info.nlinks; i++) {
        ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name),
                                         H5P_DEFAULT);
        if (len < 0) {
            st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot list group: %s", file, path,
                          isl_h5_detail(f));
            goto cleanup;
        }
        if ((size_t)len >= sizeof(name) || !expected(name, p)) {
            st = isl_fail(ISL_ERROR_FORMAT, "%s: %s/%s: %s", file, path, name, complaint);
            goto cleanup;
        }
    }
cleanup:
    isl_h5_close(g);
    return st;
}

/* isl_params_visit callback: one dataset into its parameter array. */
static int read_dataset(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    return (int)isl_h5_read_floats(user, path, rank, dims, data);
}

/* isl_h5_read_file callback. */
static isl_status read_model(void *user, isl_h5_file *f)
{
    isl_params *p = user;
    model_header h = {0};
    isl_status st = read_header(f, &h);
    if (st != ISL_OK)
        goto cleanup;
    int num_labels = (int)h.num_heads - (h.has_autoencoder ? 1 : 0);
    /* Model datasets are stored unfiltered (isl_h5_check_storage), so a file that cannot
     * hold the float32 parameters its attributes claim is refused before allocating. */
    long long count = isl_params_count_for(h.base_depth, h.num_z, num_labels, h.has_autoencoder);
    if (count < 0 || (uint64_t)count > isl_h5_file_size(f) / sizeof(float)) {
        st = isl_fail(ISL_ERROR_FORMAT,
                      "%s: /: base_depth %d, num_z %d and %d heads need %lld parameters; a file "
                      "of %llu bytes cannot hold them (truncated or damaged)",
                      isl_h5_path(f), h.base_depth, h.num_z, (int)h.num_heads, count,
                      (unsigned long long)isl_h5_file_size(f));
        goto cleanup;
    }
    if (isl_params_alloc(p, h.base_depth, h.num_z, num_labels, (const char *const *)h.heads,
                         h.has_autoencoder) != 0) {
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory for a base-%d model",
                      isl_h5_path(f), h.base_depth);
        goto cleanup;
    }
    snprintf(p->input_normalization, sizeof(p->input_normalization), "%s", h.normalization);
    p->pixel_size_um = h.pixel_size_um;
    if (isl_h5_verified(f))
        snprintf(p->checksum, sizeof(p->checksum), "%s", ISL_SUM_ALGORITHM);
    char complaint[96];
    snprintf(complaint, sizeof(complaint), "unexpected module (the architecture has %d, 000..%03d)",
             p->arch.num_modules, p->arch.num_modules - 1);
    if ((st = check_module_kinds(f, &p->arch)) != ISL_OK ||
        (st = check_no_extra(f, "/modules", expected_module, p, complaint)) != ISL_OK)
        goto cleanup;
    if ((isl_h5_exists(f, "/heads") || p->num_heads > 0) &&
        (st = check_no_extra(f, "/heads", expected_head, p,
                             "unexpected head (not listed in the heads attribute)")) != ISL_OK)
        goto cleanup;
    st = (isl_status)isl_params_visit(p, read_dataset, f);
cleanup:
    free(h.heads);
    return st;
}

/* A file (image NULL) or a file image into *p. */
static isl_status read_params(const char *path, const void *image, size_t size, isl_params *p)
{
    if (!p)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_read_h5: params is NULL");
    memset(p, 0, sizeof(*p));
    if (!path)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_read_h5: path is NULL");
    isl_status st = image ? isl_h5_read_image(path, image, size, read_model, p)
                          : isl_h5_read_file(path, read_model, p);
    if (st != ISL_OK)
        isl_params_free(p);
    return st;
}

isl_status isl_model_read_h5(const char *path, isl_params *p)
{
    return read_params(path, NULL, 0, p);
}

isl_status isl_model_read_h5_image(const char *name, const void *image, size_t size,
                                   isl_params *p)
{
    if (!image)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_read_h5_image: image is NULL");
    return read_params(name, image, size, p);
}

/* ---------------------------------------------------------------------------------- */
/* Writing                                                                             */
/* ---------------------------------------------------------------------------------- */

static isl_status write_failed(isl_h5_file *f, const char *what)
{
    return isl_fail(ISL_ERROR_IO, "%s: cannot write %s: %s", isl_h5_path(f), what,
                    isl_h5_detail(f));
}

static isl_status write_root_attrs(isl_h5_file *f, const isl_params *p)
{
    hid_t root = isl_h5_id(f);
    const char *names[MAX_HEADS];
    for (int h = 0; h < p->num_heads; h++)
        names[h] = p->heads[h].name;
    ISL_CHECK(isl_h5_write_string(f, root, "format", MODEL_FORMAT));
    ISL_CHECK(isl_h5_write_int(f, root, "format_version", ISL_MODEL_FORMAT_VERSION));
    ISL_CHECK(isl_h5_write_int(f, root, "base_depth", p->arch.base_depth));
    ISL_CHECK(isl_h5_write_int(f, root, "num_z", p->arch.num_z));
    ISL_CHECK(isl_h5_write_int(f, root, "num_classes", ISL_NUM_CLASSES));
    ISL_CHECK(isl_h5_write_int(f, root, "projection_depth", ISL_PROJECTION_DEPTH));
    ISL_CHECK(isl_h5_write_strings(f, root, "heads", p->num_heads, names));
    if (p->pixel_size_um > 0)
        ISL_CHECK(isl_h5_write_double(f, root, "pixel_size_um", p->pixel_size_um));
    return isl_h5_write_string(f, root, "input_normalization", p->input_normalization);
}

/* Creates the module groups up front so that each carries its kind attribute. */
static isl_status write_module_groups(isl_h5_file *f, const isl_arch *a)
{
    char path[32];
    for (int i = 0; i < a->num_modules; i++) {
        snprintf(path, sizeof(path), "/modules/%03d", i);
        hid_t g = H5Gcreate2(isl_h5_id(f), path, isl_h5_lcpl(f), H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0)
            return write_failed(f, path);
        isl_status st = isl_h5_write_string(f, g, "kind", kind_name(a->modules[i].kind));
        if (H5Gclose(g) < 0 && st == ISL_OK)
            st = write_failed(f, path);
        if (st != ISL_OK)
            return st;
    }
    return ISL_OK;
}

/* isl_params_visit callback: one contiguous float32 dataset. */
static int write_dataset(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    return (int)isl_h5_write_floats(user, path, rank, dims, data);
}

/* isl_params_visit callback: refuse to save what the reader would reject. */
static int check_dataset_values(void *user, const char *path, int rank, const int64_t *dims,
                                float *data)
{
    return (int)isl_h5_check_values(user, path, rank, dims, data);
}

static isl_status check_params(const char *path, const isl_params *p)
{
    const char *names[MAX_HEADS];
    if (!p->modules || p->arch.num_modules <= 0 || (!p->heads && p->num_heads != 0) ||
        p->num_heads < 0 || p->num_heads > MAX_HEADS)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: parameters are not allocated", path);
    if (p->arch.base_depth < MIN_BASE_DEPTH || p->arch.base_depth > MAX_BASE_DEPTH ||
        p->arch.num_z < 1 || p->arch.num_z > MAX_NUM_Z)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: base_depth %d / num_z %d out of range",
                        path, p->arch.base_depth, p->arch.num_z);
    if (!valid_normalization(p->input_normalization))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: invalid input_normalization \"%s\"", path,
                        p->input_normalization);
    for (int h = 0; h < p->num_heads; h++) {
        if (!memchr(p->heads[h].name, '\0', sizeof(p->heads[h].name)))
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: head %d has an unterminated name",
                            path, h);
        names[h] = p->heads[h].name;
    }
    isl_status st = check_head_names(path, p->num_heads, names);
    if (st != ISL_OK)
        return st == ISL_ERROR_FORMAT ? ISL_ERROR_INVALID_ARGUMENT : st;
    return (isl_status)isl_params_visit((isl_params *)p, check_dataset_values, (void *)path);
}

typedef struct model_image {
    const isl_params *p;
    isl_h5_file_fn extra;
    void *user;
} model_image;

/* isl_h5_write_file callback: the model, then the caller's objects. */
static isl_status write_model(void *user, isl_h5_file *f)
{
    const model_image *m = user;
    ISL_CHECK(write_root_attrs(f, m->p));
    ISL_CHECK(write_module_groups(f, &m->p->arch));
    ISL_CHECK((isl_status)isl_params_visit((isl_params *)m->p, write_dataset, f));
    return m->extra ? m->extra(m->user, f) : ISL_OK;
}

isl_status isl_model_write_h5(const char *path, const isl_params *p)
{
    if (!path || !p)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_write_h5: %s is NULL",
                        path ? "params" : "path");
    ISL_CHECK(check_params(path, p));
    model_image m = {p, NULL, NULL};
    return isl_h5_write_file(path, write_model, &m);
}

isl_status isl_model_write_h5_extra(const char *path, const isl_params *p, isl_h5_file_fn fn,
                                    void *user)
{
    if (!path || !p || !fn)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_write_h5_extra: NULL argument");
    ISL_CHECK(check_params(path, p));
    model_image m = {p, fn, user};
    return isl_h5_write_file(path, write_model, &m);
}
