/* The HDF5 layer (lib/io/h5_io.h): sessions under the process-wide lock, error capture,
 * checked reads, writers, and files built in memory then written atomically. */
#include "h5_io.h"

#include "atomic_file.h"
#include "error.h"
#include "file_bytes.h"
#include "h5_checksum.h"
#include "bounds.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DETAIL_CAP 256
#define CORE_INCREMENT (4 << 20) /* growth step of in-memory files being written */

/* Largest stored-to-decoded expansion accepted for a filtered dataset: deflate's own
 * limit is about 1032:1, so more can only come from a forged chunk index. */
#define MAX_FILTER_RATIO 1100
/* Longest fixed-size string attribute element read (isl writes names < 256 bytes). */
#define MAX_STRING_BYTES 4096

/* An open file: read (lcpl invalid) or being built in memory. */
struct isl_h5_file {
    const char *file; /* the path, for messages */
    hid_t fid;
    hid_t lcpl;     /* writing: creates intermediate groups */
    int fd;         /* reading: the descriptor verified and handed to HDF5, or -1 */
    const unsigned char *image; /* reading a file image: its bytes, or NULL */
    int verified;   /* reading: the content matched the checksum record */
    uint64_t size;  /* reading: file size in bytes */
    uint64_t stored; /* reading: bytes of dataset storage met so far */
    char detail[DETAIL_CAP];
};

/* ---------------------------------------------------------------------------------- */
/* HDF5 sessions                                                                       */
/* ---------------------------------------------------------------------------------- */

/* The HDF5 that distributions ship (Debian's libhdf5-103) is built without
 * --enable-threadsafe: its identifier tables, free lists, metadata cache and error stack
 * are unprotected globals, so two threads inside HDF5 at once (even on different files)
 * corrupt memory. isl_model_save may run while other threads load models, so every HDF5
 * call sequence in isl runs under this one lock. (Other HDF5 users in the same process
 * cannot be protected by it.) */
static pthread_mutex_t h5_lock = PTHREAD_MUTEX_INITIALIZER;

/* The host's automatic error handler of the default stack, saved for the session. HDF5
 * has one per process (per thread in thread-safe builds) and no per-call setting, so it
 * is swapped out under the lock and put back exactly as found, whether the host set it
 * with H5Eset_auto2 or the deprecated H5Eset_auto1 (as HDF5's own H5E_BEGIN_TRY does). */
typedef struct h5_session {
    unsigned is_v2;
    int saved;
    H5E_auto2_t func2;
#ifndef H5_NO_DEPRECATED_SYMBOLS
    H5E_auto1_t func1;
#endif
    void *data;
} h5_session;

/* Takes the lock and silences HDF5's automatic error printing (the library never prints;
 * failures are reported through isl_last_error instead). */
static void h5_enter(h5_session *s)
{
    pthread_mutex_lock(&h5_lock);
    s->saved = 0;
    s->is_v2 = 1;
    if (H5Eauto_is_v2(H5E_DEFAULT, &s->is_v2) < 0)
        return; /* cannot tell: leave the host's handler alone */
    if (s->is_v2)
        s->saved = H5Eget_auto2(H5E_DEFAULT, &s->func2, &s->data) >= 0 &&
                   H5Eset_auto2(H5E_DEFAULT, NULL, NULL) >= 0;
#ifndef H5_NO_DEPRECATED_SYMBOLS
    else
        s->saved = H5Eget_auto1(&s->func1, &s->data) >= 0 && H5Eset_auto1(NULL, NULL) >= 0;
#endif
}

/* Restores the host's handler and leaves no isl failure on the host's error stack. */
static void h5_leave(h5_session *s)
{
    H5Eclear2(H5E_DEFAULT);
    if (s->saved && s->is_v2)
        H5Eset_auto2(H5E_DEFAULT, s->func2, s->data);
#ifndef H5_NO_DEPRECATED_SYMBOLS
    else if (s->saved)
        H5Eset_auto1(s->func1, s->data);
#endif
    pthread_mutex_unlock(&h5_lock);
}

static herr_t innermost_error(unsigned n, const H5E_error2_t *err, void *user)
{
    char *buf = user;
    if (n == 0 && err->desc)
        snprintf(buf, DETAIL_CAP, "%s", err->desc);
    return 0;
}

/* The innermost description on HDF5's error stack ("truncated file: eof = ...", ...),
 * or "" (walking upward, entry 0 is where the error was detected). Must be called right
 * after the failing call: the next HDF5 API call clears the stack. */
static const char *h5_detail(char buf[DETAIL_CAP])
{
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, buf);
    return buf;
}

/* Closes any HDF5 identifier (ignoring H5I_INVALID_HID), for goto-cleanup paths. */
static herr_t h5_close(hid_t id)
{
    if (id < 0)
        return 0;
    switch (H5Iget_type(id)) {
    case H5I_FILE: return H5Fclose(id);
    case H5I_GROUP: return H5Gclose(id);
    case H5I_DATASET: return H5Dclose(id);
    case H5I_DATASPACE: return H5Sclose(id);
    case H5I_DATATYPE: return H5Tclose(id);
    case H5I_ATTR: return H5Aclose(id);
    case H5I_GENPROP_LST: return H5Pclose(id);
    default: return -1;
    }
}

/* A file access property list whose file close also closes objects left open. */
static hid_t strong_fapl(void)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0 && H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        H5Pclose(fapl);
        return H5I_INVALID_HID;
    }
    return fapl;
}

/* ---------------------------------------------------------------------------------- */
/* Values                                                                              */


static void format_dims(char *buf, size_t cap, int rank, const long long *dims)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < rank && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", dims[i]);
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
}

static int is_bn_var(const char *path)
{
    size_t len = strlen(path);
    return len >= 4 && strcmp(path + len - 4, "/var") == 0;
}

/* Names the element by flat and multi-dimensional index. */
isl_status isl_h5_check_values(const char *file, const char *path, int rank, const int64_t *dims,
                               const float *data)
{
    size_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (size_t)dims[i];
    int var = is_bn_var(path);
    for (size_t i = 0; i < count; i++) {
        float v = data[i];
        const char *problem = !isfinite(v) ? (isnan(v) ? "is NaN" : "is infinite")
                              : (var && v < 0) ? "is a negative batch-norm variance"
                                               : NULL;
        if (!problem)
            continue;
        long long index[8] = {0};
        char where[128];
        size_t rest = i;
        for (int d = rank - 1; d >= 0 && d < 8; d--) {
            index[d] = (long long)(rest % (size_t)dims[d]);
            rest /= (size_t)dims[d];
        }
        format_dims(where, sizeof(where), rank < 8 ? rank : 8, index);
        return isl_fail(ISL_ERROR_VALUE, "%s: %s: element %zu %s (%g) %s", file, path, i, where,
                        (double)v, problem);
    }
    return ISL_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Reading                                                                             */
/* ---------------------------------------------------------------------------------- */

/* 1 if every component of the absolute path exists as a hard link, 0 if one does not,
 * -1 on error, -2 if one is a soft, external or user-defined link: isl never writes
 * those, and following one would reach outside the file (H5Lexists fails rather than
 * answering 0 when an intermediate group is missing, so walk the path.) */
static int path_exists(hid_t fid, const char *path)
{
    char prefix[512];
    size_t len = strlen(path);
    if (len >= sizeof(prefix))
        return -1;
    for (size_t i = 1; i <= len; i++) {
        if (i < len && path[i] != '/')
            continue;
        memcpy(prefix, path, i);
        prefix[i] = '\0';
        htri_t e = H5Lexists(fid, prefix, H5P_DEFAULT);
        if (e <= 0)
            return e < 0 ? -1 : 0;
        H5L_info_t info;
        if (H5Lget_info(fid, prefix, &info, H5P_DEFAULT) < 0)
            return -1;
        if (info.type != H5L_TYPE_HARD)
            return -2;
    }
    return 1;
}

/* The failure of path_exists(fid, path) = e (not 1), worded for "dataset" or "group". */
static isl_status missing(isl_h5_file *r, const char *path, const char *what, int e)
{
    if (e == -2)
        return isl_fail(ISL_ERROR_FORMAT,
                        "%s: %s: is a soft or external link; isl reads only objects stored in "
                        "the file",
                        r->file, path);
    if (e < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot look up %s: %s", r->file, path, what,
                        h5_detail(r->detail));
    return isl_fail(ISL_ERROR_FORMAT, "%s: %s: missing %s", r->file, path, what);
}

/* Opens the attribute `name` of `obj` (at `where`, for messages), or fails with FORMAT. */
static isl_status open_attr(isl_h5_file *r, hid_t obj, const char *where, const char *name, hid_t *out)
{
    htri_t e = H5Aexists(obj, name);
    if (e < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot look up attribute %s: %s", r->file,
                        where, name, h5_detail(r->detail));
    if (e == 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: missing attribute %s", r->file, where, name);
    *out = H5Aopen(obj, name, H5P_DEFAULT);
    if (*out < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot open attribute %s: %s", r->file, where,
                        name, h5_detail(r->detail));
    return ISL_OK;
}

/* Number of elements of an attribute that must be scalar or one-dimensional. */
static isl_status attr_count(isl_h5_file *r, hid_t attr, const char *where, const char *name,
                             hid_t *space, size_t *count)
{
    hsize_t dims[1];
    *space = H5Aget_space(attr);
    if (*space < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read attribute %s: %s", r->file, where,
                        name, h5_detail(r->detail));
    int rank = H5Sget_simple_extent_ndims(*space);
    if (rank < 0 || rank > 1 || H5Sget_simple_extent_dims(*space, dims, NULL) < 0 ||
        H5Sget_simple_extent_type(*space) == H5S_NULL)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s must be a scalar or a list",
                        r->file, where, name);
    *count = rank == 0 ? 1 : (size_t)dims[0];
    return ISL_OK;
}

/* Packs count strings into one malloc'd block: count pointers then the characters, so
 * that one free() releases everything. NULL entries (empty vlen strings) become "". */
static char **pack_strings(size_t count, const char *const *items)
{
    size_t total = count * sizeof(char *);
    for (size_t i = 0; i < count; i++)
        total += (items[i] ? strlen(items[i]) : 0) + 1;
    char **block = malloc(total ? total : 1);
    if (!block)
        return NULL;
    char *chars = (char *)(block + count);
    for (size_t i = 0; i < count; i++) {
        size_t len = items[i] ? strlen(items[i]) : 0;
        block[i] = chars;
        memcpy(chars, items[i] ? items[i] : "", len);
        chars[len] = '\0';
        chars += len + 1;
    }
    return block;
}

/* Variable-length strings (h5py's default, isl < 0.7) live in HDF5's global heap. HDF5
 * 1.10 follows a heap reference taken from the file without checking it, so a damaged
 * one crashes or hangs H5Aread (issue #17). isl therefore never lets HDF5 read the heap:
 * H5Aread converts the attribute to an opaque type that only isl's conversion function
 * (registered for the call) accepts, which leaves each element's raw descriptor
 * {length, collection address, object index} as stored, and isl reads the heap
 * collection itself with every offset checked against the file. */
#define VLEN_TAG "isl raw variable-length string descriptor"
#define VLEN_CONV_NAME "isl raw vlen string"

/* The conversion: the element bytes are already the raw descriptors and the sizes are
 * equal, so there is nothing to do but refuse every other pair of types. */
static herr_t keep_vlen_descriptor(hid_t src, hid_t dst, H5T_cdata_t *cdata, size_t nelmts,
                                   size_t buf_stride, size_t bkg_stride, void *buf, void *bkg,
                                   hid_t dxpl)
{
    (void)nelmts, (void)buf_stride, (void)bkg_stride, (void)buf, (void)bkg, (void)dxpl;
    if (cdata->command != H5T_CONV_INIT)
        return 0;
    cdata->need_bkg = H5T_BKG_NO;
    if (H5Tis_variable_str(src) <= 0 || H5Tget_class(dst) != H5T_OPAQUE ||
        H5Tget_size(src) != H5Tget_size(dst))
        return -1;
    char *tag = H5Tget_tag(dst);
    int ours = tag && strcmp(tag, VLEN_TAG) == 0;
    H5free_memory(tag);
    return ours ? 0 : -1;
}

/* How the file encodes addresses: their size, the size of lengths, and the base address
 * (the superblock's offset: after a user block) that heap addresses are relative to. */
typedef struct heap_layout {
    size_t addr_size, len_size;
    uint64_t base;
} heap_layout;

/* One global heap collection read from the file, kept for the next string. */
typedef struct heap_collection {
    uint64_t addr;
    unsigned char *bytes;
    size_t size;
} heap_collection;

/* n bytes at offset off of the file being read, or -1 if they are not all in it. */
static int read_file_bytes(isl_h5_file *r, uint64_t off, void *buf, size_t n)
{
    if (off > r->size || n > r->size - off)
        return -1;
    if (r->image) {
        memcpy(buf, r->image + off, n);
        return 0;
    }
    return isl_read_exact_at(r->fd, buf, n, (off_t)off);
}

/* Loads the collection at heap address addr into c: signature "GCOL", version 1, and a
 * size that holds its header and lies within the file. Returns NULL or the problem. */
static const char *load_collection(isl_h5_file *r, const heap_layout *l, uint64_t addr,
                                   heap_collection *c)
{
    unsigned char head[8 + 8];
    size_t head_size = 8 + l->len_size;
    if (c->bytes && c->addr == addr)
        return NULL;
    free(c->bytes);
    c->bytes = NULL;
    if (addr > UINT64_MAX - l->base || read_file_bytes(r, l->base + addr, head, head_size) != 0)
        return "collection address outside the file";
    if (memcmp(head, "GCOL", 4) != 0 || head[4] != 1)
        return "no heap collection at its address";
    uint64_t size = isl_load_le(head + 8, l->len_size);
    if (size < head_size || size > r->size)
        return "collection size out of range";
    c->bytes = malloc((size_t)size);
    if (!c->bytes)
        return "out of memory";
    if (read_file_bytes(r, l->base + addr, c->bytes, (size_t)size) != 0) {
        free(c->bytes);
        c->bytes = NULL;
        return "collection extends past the end of the file";
    }
    c->addr = addr;
    c->size = (size_t)size;
    return NULL;
}

/* The string a raw descriptor refers to, malloc'd in *out, or NULL and the problem. */
static const char *heap_string(isl_h5_file *r, const heap_layout *l, const unsigned char *desc,
                               heap_collection *c, char **out)
{
    uint64_t len = isl_load_le(desc, 4);
    uint64_t addr = isl_load_le(desc + 4, l->addr_size);
    uint64_t index = isl_load_le(desc + 4 + l->addr_size, 4);
    if (len > MAX_STRING_BYTES)
        return "string longer than 4096 bytes";
    *out = calloc((size_t)len + 1, 1);
    if (!*out)
        return "out of memory";
    if (len == 0) /* "" or a null string: nothing to read */
        return NULL;
    const char *problem = load_collection(r, l, addr, c);
    if (problem)
        return problem;
    /* Objects: index (2 bytes), reference count (2), reserved (4), size, data padded to 8
     * bytes; index 0 is the free space that ends the list. */
    size_t head = 8 + l->len_size;
    for (size_t at = 8 + l->len_size; head <= c->size - at;) {
        uint64_t id = isl_load_le(c->bytes + at, 2), size = isl_load_le(c->bytes + at + 8, l->len_size);
        size_t data = at + head;
        if (id == 0)
            break;
        if (size > c->size - data)
            return "heap object extends past its collection";
        if (id == index) {
            if (len > size)
                return "string longer than its heap object";
            memcpy(*out, c->bytes + data, (size_t)len);
            return NULL;
        }
        size_t padded = ((size_t)size + 7) & ~(size_t)7;
        if (padded > c->size - data)
            break;
        at = data + padded;
    }
    return "heap object not found";
}

static isl_status read_vlen_strings(isl_h5_file *r, hid_t attr, size_t count, const char *where,
                                    const char *name, char ***out)
{
    isl_status st = ISL_OK;
    heap_layout l = {0};
    heap_collection c = {0};
    hsize_t userblock = 0;
    hid_t fcpl = H5Fget_create_plist(r->fid), vstr = H5Tcopy(H5T_C_S1), raw = H5I_INVALID_HID;
    int registered = 0;
    unsigned char *desc = NULL;
    char **items = calloc(count ? count : 1, sizeof(char *));
    if (fcpl < 0 || H5Pget_sizes(fcpl, &l.addr_size, &l.len_size) < 0 ||
        H5Pget_userblock(fcpl, &userblock) < 0 || l.addr_size > 8 || l.len_size > 8 ||
        l.addr_size == 0 || l.len_size == 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: cannot read the file's address sizes: %s", r->file,
                      h5_detail(r->detail));
        goto cleanup;
    }
    l.base = userblock;
    size_t desc_size = 4 + l.addr_size + 4;
    desc = calloc(count ? count : 1, desc_size);
    if (!items || !desc) {
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: %s: out of memory reading attribute %s",
                      r->file, where, name);
        goto cleanup;
    }
    raw = H5Tcreate(H5T_OPAQUE, desc_size);
    registered = vstr >= 0 && raw >= 0 && H5Tset_size(vstr, H5T_VARIABLE) >= 0 &&
                 H5Tset_tag(raw, VLEN_TAG) >= 0 &&
                 H5Tregister(H5T_PERS_SOFT, VLEN_CONV_NAME, vstr, raw, keep_vlen_descriptor) >= 0;
    if (!registered || H5Aread(attr, raw, desc) < 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read attribute %s: %s", r->file, where,
                      name, h5_detail(r->detail));
        goto cleanup;
    }
    for (size_t i = 0; i < count && st == ISL_OK; i++) {
        const char *problem = heap_string(r, &l, desc + i * desc_size, &c, &items[i]);
        if (problem)
            st = isl_fail(strcmp(problem, "out of memory") ? ISL_ERROR_FORMAT
                                                           : ISL_ERROR_OUT_OF_MEMORY,
                          "%s: %s: attribute %s: damaged variable-length string (%s)", r->file,
                          where, name, problem);
    }
    if (st == ISL_OK && !(*out = pack_strings(count, (const char *const *)items)))
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: %s: out of memory reading attribute %s",
                      r->file, where, name);
cleanup:
    if (registered) /* by name and function: also removes the paths HDF5 cached for it */
        H5Tunregister(H5T_PERS_SOFT, VLEN_CONV_NAME, H5I_INVALID_HID, H5I_INVALID_HID,
                      keep_vlen_descriptor);
    for (size_t i = 0; items && i < count; i++)
        free(items[i]);
    free(items);
    free(desc);
    free(c.bytes);
    h5_close(raw);
    h5_close(vstr);
    h5_close(fcpl);
    return st;
}

static isl_status read_fixed_strings(isl_h5_file *r, hid_t attr, hid_t ftype, size_t count,
                                     const char *where, const char *name, char ***out)
{
    isl_status st = ISL_OK;
    size_t size = H5Tget_size(ftype) + 1; /* room for a terminator even when space-padded */
    hid_t mtype = H5Tcopy(ftype);
    char *chars = calloc(count ? count : 1, size);
    const char **items = calloc(count ? count : 1, sizeof(char *));
    if (!chars || !items) {
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: %s: out of memory reading attribute %s",
                      r->file, where, name);
        goto cleanup;
    }
    if (mtype < 0 || H5Tset_size(mtype, size) < 0 || H5Tset_strpad(mtype, H5T_STR_NULLTERM) < 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s has an unusable string type: %s",
                      r->file, where, name, h5_detail(r->detail));
        goto cleanup;
    }
    if (H5Aread(attr, mtype, chars) < 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read attribute %s: %s", r->file, where,
                      name, h5_detail(r->detail));
        goto cleanup;
    }
    for (size_t i = 0; i < count; i++) {
        chars[i * size + size - 1] = '\0';
        items[i] = chars + i * size;
    }
    *out = pack_strings(count, items);
    if (!*out)
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: %s: out of memory reading attribute %s",
                      r->file, where, name);
cleanup:
    free(items);
    free(chars);
    h5_close(mtype);
    return st;
}

/* Reads a string attribute (scalar or list; variable-length as h5py writes it, or
 * fixed-length) as a packed block of *count strings (free(*out)). */
static isl_status read_string_attr(isl_h5_file *r, hid_t obj, const char *where, const char *name,
                                   char ***out, size_t *count)
{
    hid_t attr = H5I_INVALID_HID, ftype = H5I_INVALID_HID, space = H5I_INVALID_HID;
    *out = NULL;
    isl_status st = open_attr(r, obj, where, name, &attr);
    if (st != ISL_OK)
        goto cleanup;
    ftype = H5Aget_type(attr);
    if (ftype < 0 || H5Tget_class(ftype) != H5T_STRING) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s is not a string", r->file, where,
                      name);
        goto cleanup;
    }
    if ((st = attr_count(r, attr, where, name, &space, count)) != ISL_OK)
        goto cleanup;
    if (*count > ISL_H5_MAX_STRINGS) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s has %zu strings (at most %d)",
                      r->file, where, name, *count, ISL_H5_MAX_STRINGS);
        goto cleanup;
    }
    htri_t vlen = H5Tis_variable_str(ftype);
    size_t size = H5Tget_size(ftype);
    if (vlen < 0 || size == 0)
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s has an invalid string type: %s",
                      r->file, where, name, h5_detail(r->detail));
    else if (!vlen && size > MAX_STRING_BYTES)
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s has %zu-byte strings (at most %d)",
                      r->file, where, name, size, MAX_STRING_BYTES);
    else if (vlen) /* isl < 0.7 and h5py write these; see docs/security.md */
        st = read_vlen_strings(r, attr, *count, where, name, out);
    else
        st = read_fixed_strings(r, attr, ftype, *count, where, name, out);
cleanup:
    h5_close(space);
    h5_close(ftype);
    h5_close(attr);
    return st;
}

/* A string attribute that must hold exactly one string, copied into buf. */
static isl_status read_one_string(isl_h5_file *r, hid_t obj, const char *where, const char *name,
                                  char *buf, size_t cap)
{
    char **items;
    size_t count;
    ISL_CHECK(read_string_attr(r, obj, where, name, &items, &count));
    isl_status st = ISL_OK;
    if (count != 1)
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s must be one string, not %zu",
                      r->file, where, name, count);
    else if (strlen(items[0]) >= cap)
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s is too long (\"%.32s...\")", r->file,
                      where, name, items[0]);
    else
        snprintf(buf, cap, "%s", items[0]);
    free(items);
    return st;
}

/* One number from attribute `name` of obj (at `where`): an integer, or also a float if
 * allow_float, read as mem_type into value. */
static isl_status read_number_attr(isl_h5_file *r, hid_t obj, const char *where, const char *name,
                                   int allow_float, hid_t mem_type, void *value)
{
    hid_t attr = H5I_INVALID_HID, ftype = H5I_INVALID_HID, space = H5I_INVALID_HID;
    const char *kind = allow_float ? "number" : "integer";
    size_t count;
    isl_status st = open_attr(r, obj, where, name, &attr);
    if (st != ISL_OK)
        goto cleanup;
    ftype = H5Aget_type(attr);
    H5T_class_t cls = ftype < 0 ? H5T_NO_CLASS : H5Tget_class(ftype);
    if (cls != H5T_INTEGER && !(allow_float && cls == H5T_FLOAT)) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s is not an %s", r->file, where, name,
                      kind);
        goto cleanup;
    }
    if ((st = attr_count(r, attr, where, name, &space, &count)) != ISL_OK)
        goto cleanup;
    if (count != 1) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s must be one %s, not %zu", r->file,
                      where, name, kind, count);
        goto cleanup;
    }
    if (H5Aread(attr, mem_type, value) < 0)
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read attribute %s: %s", r->file, where,
                      name, h5_detail(r->detail));
cleanup:
    h5_close(space);
    h5_close(ftype);
    h5_close(attr);
    return st;
}


/* The group or dataset (what) at path, opened with open (H5Gopen2 or H5Dopen2) once
 * every component of the path is known to be a hard link. */
static isl_status open_object(isl_h5_file *r, const char *path, const char *what,
                              hid_t (*open)(hid_t, const char *, hid_t), hid_t *out)
{
    *out = H5I_INVALID_HID;
    int e = path_exists(r->fid, path);
    if (e != 1)
        return missing(r, path, what, e);
    *out = open(r->fid, path, H5P_DEFAULT);
    if (*out < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: not a %s: %s", r->file, path, what,
                        h5_detail(r->detail));
    return ISL_OK;
}

static isl_status check_dataset_shape(isl_h5_file *r, hid_t did, const char *path, int rank,
                                      const int64_t *dims)
{
    hid_t space = H5Dget_space(did);
    hsize_t file_dims[H5S_MAX_RANK];
    long long have[H5S_MAX_RANK], want[8];
    char have_s[160], want_s[160];
    isl_status st = ISL_OK;
    int file_rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    if (file_rank < 0 || H5Sget_simple_extent_dims(space, file_dims, NULL) < 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read the dataspace: %s", r->file, path,
                      h5_detail(r->detail));
        goto cleanup;
    }
    int same = file_rank == rank;
    for (int i = 0; i < file_rank; i++) {
        have[i] = (long long)file_dims[i];
        same = same && have[i] == dims[i];
    }
    if (!same) {
        for (int i = 0; i < rank && i < 8; i++)
            want[i] = dims[i];
        format_dims(have_s, sizeof(have_s), file_rank, have);
        format_dims(want_s, sizeof(want_s), rank < 8 ? rank : 8, want);
        st = isl_fail(ISL_ERROR_SHAPE, "%s: %s: has shape %s but the model needs %s", r->file, path,
                      have_s, want_s);
    }
cleanup:
    h5_close(space);
    return st;
}

static const char *filter_name(H5Z_filter_t id)
{
    switch (id) {
    case H5Z_FILTER_DEFLATE: return "deflate";
    case H5Z_FILTER_SHUFFLE: return "shuffle";
    case H5Z_FILTER_FLETCHER32: return "fletcher32";
    case H5Z_FILTER_SZIP: return "szip";
    case H5Z_FILTER_NBIT: return "nbit";
    case H5Z_FILTER_SCALEOFFSET: return "scaleoffset";
    default: return "a plugin filter";
    }
}

/* The filters of dcpl are ones isl writes (deflate, shuffle; fletcher32 accepted) and
 * only if allowed: anything else would make HDF5 look for a plugin library to load. */
static isl_status check_filters(isl_h5_file *r, hid_t dcpl, const char *path, int allow_filters,
                                int *filtered)
{
    int n = H5Pget_nfilters(dcpl);
    if (n < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read its filters: %s", r->file, path,
                        h5_detail(r->detail));
    *filtered = n > 0;
    for (int i = 0; i < n; i++) {
        unsigned flags, config;
        size_t nvalues = 0;
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &nvalues, NULL, 0, NULL,
                                         &config);
        int known = id == H5Z_FILTER_DEFLATE || id == H5Z_FILTER_SHUFFLE ||
                    id == H5Z_FILTER_FLETCHER32;
        if (id < 0 || !known || !allow_filters)
            return isl_fail(ISL_ERROR_FORMAT,
                            "%s: %s: is stored with filter %d (%s); isl reads %s", r->file, path,
                            (int)id, filter_name(id),
                            allow_filters ? "only deflate, shuffle and fletcher32"
                                          : "this dataset only unfiltered");
    }
    return ISL_OK;
}

/* Before a dataset is read: no external or virtual storage (data in other files), only
 * the filters isl writes, and as many stored bytes as its size needs (unfiltered) or at
 * most MAX_FILTER_RATIO times fewer (filtered), all within the file. Bounds what a small
 * file can make isl allocate and decode. */
isl_status isl_h5_check_storage(isl_h5_file *r, hid_t did, const char *path, int allow_filters)
{
    hid_t dcpl = H5Dget_create_plist(did), type = H5Dget_type(did), space = H5Dget_space(did);
    isl_status st = ISL_OK;
    int filtered = 0;
    if (dcpl < 0 || type < 0 || space < 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read its layout: %s", r->file, path,
                      h5_detail(r->detail));
        goto cleanup;
    }
    H5D_layout_t layout = H5Pget_layout(dcpl);
    if (layout != H5D_CONTIGUOUS && layout != H5D_CHUNKED && layout != H5D_COMPACT) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: has a virtual or unknown layout (%d)", r->file,
                      path, (int)layout);
        goto cleanup;
    }
    if (H5Pget_external_count(dcpl) != 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: keeps its data in external files", r->file,
                      path);
        goto cleanup;
    }
    if ((st = check_filters(r, dcpl, path, allow_filters, &filtered)) != ISL_OK)
        goto cleanup;
    hssize_t points = H5Sget_simple_extent_npoints(space);
    size_t elem = H5Tget_size(type);
    uint64_t logical, stored = H5Dget_storage_size(did);
    if (points < 0 || elem == 0 || isl_mul_u64(&logical, (uint64_t)points, elem) != 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: has an invalid size", r->file, path);
        goto cleanup;
    }
    if (!filtered && stored < logical)
        st = isl_fail(ISL_ERROR_FORMAT,
                      "%s: %s: stores %" PRIu64 " bytes of its %" PRIu64 " (unwritten or "
                      "damaged)",
                      r->file, path, stored, logical);
    else if (filtered && logical / MAX_FILTER_RATIO > stored)
        st = isl_fail(ISL_ERROR_FORMAT,
                      "%s: %s: %" PRIu64 " stored bytes cannot decode to %" PRIu64
                      " (more than %d:1)",
                      r->file, path, stored, logical, MAX_FILTER_RATIO);
    else if (stored > r->size || r->stored + stored > r->size)
        st = isl_fail(ISL_ERROR_FORMAT,
                      "%s: %s: claims more stored bytes than the file has (%" PRIu64 ")", r->file,
                      path, r->size);
    else
        r->stored += stored;
cleanup:
    h5_close(space);
    h5_close(type);
    h5_close(dcpl);
    return st;
}

static isl_status check_dataset_type(isl_h5_file *r, hid_t did, const char *path)
{
    static const char *class_names[] = {"integer", "float", "time", "string", "bitfield", "opaque",
                                        "compound", "reference", "enum", "variable-length",
                                        "array"};
    hid_t type = H5Dget_type(did);
    H5T_class_t cls = type < 0 ? H5T_NO_CLASS : H5Tget_class(type);
    h5_close(type);
    if (cls == H5T_FLOAT)
        return ISL_OK;
    const char *name = cls >= 0 && (size_t)cls < sizeof(class_names) / sizeof(class_names[0])
                           ? class_names[cls]
                           : "unknown";
    return isl_fail(ISL_ERROR_FORMAT, "%s: %s: has datatype %s; expected float32 (or float64)",
                    r->file, path, name);
}

isl_status isl_h5_check_chunks(isl_h5_file *r, hid_t did, const char *path)
{
    hid_t dcpl = H5Dget_create_plist(did), space = H5Dget_space(did);
    hsize_t chunk[H5S_MAX_RANK], dims[H5S_MAX_RANK], maxdims[H5S_MAX_RANK];
    isl_status st = ISL_OK;
    H5D_layout_t layout = dcpl < 0 ? H5D_LAYOUT_ERROR : H5Pget_layout(dcpl);
    int rank = space < 0 ? -1 : H5Sget_simple_extent_dims(space, dims, maxdims);
    if (layout < 0 || rank < 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read the storage layout: %s", r->file,
                      path, h5_detail(r->detail));
    } else if (layout == H5D_CHUNKED) {
        int chunk_rank = H5Pget_chunk(dcpl, H5S_MAX_RANK, chunk);
        int ok = chunk_rank == rank;
        for (int i = 0; ok && i < rank; i++)
            ok = chunk[i] > 0 && (maxdims[i] == H5S_UNLIMITED || chunk[i] <= maxdims[i]);
        if (!ok)
            st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: damaged chunk layout (chunks larger than "
                          "the dataset)", r->file, path);
    }
    h5_close(space);
    h5_close(dcpl);
    return st;
}

isl_status isl_h5_read_floats(isl_h5_file *r, const char *path, int rank, const int64_t *dims,
                              float *data)
{
    isl_status st = ISL_OK;
    hid_t did = H5I_INVALID_HID;
    if ((st = isl_h5_open_dataset(r, path, &did)) != ISL_OK)
        return st;
    if ((st = check_dataset_type(r, did, path)) != ISL_OK ||
        (st = check_dataset_shape(r, did, path, rank, dims)) != ISL_OK ||
        (st = isl_h5_check_storage(r, did, path, 0)) != ISL_OK ||
        (st = isl_h5_check_chunks(r, did, path)) != ISL_OK)
        goto cleanup;
    if (H5Dread(did, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read: %s", r->file, path,
                      h5_detail(r->detail));
        goto cleanup;
    }
    st = isl_h5_check_values(r->file, path, rank, dims, data);
cleanup:
    h5_close(did);
    return st;
}

/* Opens path (r->fd) and checks its content against its checksum record, if it has one,
 * before HDF5 sees a byte: missing/unreadable (IO), damaged (DAMAGED). */
static isl_status verify_file(isl_h5_file *r)
{
    struct stat sb;
    r->fd = open(r->file, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0)
        return isl_fail(ISL_ERROR_IO, "%s: cannot open: %s", r->file, strerror(errno));
    if (fstat(r->fd, &sb) != 0)
        return isl_fail(ISL_ERROR_IO, "%s: cannot stat: %s", r->file, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return isl_fail(ISL_ERROR_IO, "%s: not a regular file", r->file);
    r->size = (uint64_t)sb.st_size;
    return isl_sum_verify_fd(r->fd, r->file, &r->verified);
}

/* Opens the verified file with the errors a user can act on: not HDF5, truncated or
 * corrupt (FORMAT). HDF5 opens it through /proc/self/fd, so that it reads the very file
 * whose bytes were verified even if path has been replaced since. */
static isl_status open_for_reading(isl_h5_file *r)
{
    char fd_path[64];
    const char *name = r->file;
    snprintf(fd_path, sizeof(fd_path), "/proc/self/fd/%d", r->fd);
    if (access(fd_path, R_OK) == 0)
        name = fd_path;
    htri_t is_hdf5 = H5Fis_hdf5(name);
    if (is_hdf5 < 0)
        return isl_fail(ISL_ERROR_IO, "%s: cannot read: %s", r->file, h5_detail(r->detail));
    if (is_hdf5 == 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: not an HDF5 file", r->file);
    hid_t fapl = strong_fapl();
    if (fapl < 0)
        return isl_fail(ISL_ERROR_BACKEND, "%s: HDF5 property list: %s", r->file,
                        h5_detail(r->detail));
    r->fid = H5Fopen(name, H5F_ACC_RDONLY, fapl);
    if (r->fid < 0) {
        isl_fail(ISL_ERROR_FORMAT, "%s: corrupt or truncated HDF5 file: %s", r->file,
                 h5_detail(r->detail));
        h5_close(fapl);
        return ISL_ERROR_FORMAT;
    }
    h5_close(fapl);
    return ISL_OK;
}

static isl_status write_failed(isl_h5_file *w, const char *what)
{
    return isl_fail(ISL_ERROR_IO, "%s: cannot write %s: %s", w->file, what, h5_detail(w->detail));
}

/* Fixed-size NUL-terminated UTF-8 strings of size bytes. */
static hid_t utf8_string_type(size_t size)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0 && (H5Tset_size(t, size) < 0 || H5Tset_strpad(t, H5T_STR_NULLTERM) < 0 ||
                   H5Tset_cset(t, H5T_CSET_UTF8) < 0)) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

/* A scalar (count < 0) or 1-D attribute of fixed-size UTF-8 strings, as long as the
 * longest value: unlike variable-length strings, they live in the attribute itself, not
 * in HDF5's global heap, so reading them never follows a pointer stored in the file. */
static isl_status write_strings_attr(isl_h5_file *w, hid_t obj, const char *name, int count,
                                     const char *const *values)
{
    size_t n = count < 0 ? 1 : (size_t)count, size = 1;
    for (size_t i = 0; i < n; i++)
        if (strlen(values[i]) + 1 > size)
            size = strlen(values[i]) + 1;
    char *chars = calloc(n ? n : 1, size);
    if (!chars)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory writing %s", w->file, name);
    for (size_t i = 0; i < n; i++)
        memcpy(chars + i * size, values[i], strlen(values[i]));
    hsize_t dims[1] = {(hsize_t)n};
    hid_t type = utf8_string_type(size);
    hid_t space = count < 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    hid_t attr = space < 0 || type < 0
                     ? H5I_INVALID_HID
                     : H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    isl_status st = ISL_OK;
    if (attr < 0 || H5Awrite(attr, type, chars) < 0)
        st = write_failed(w, name);
    if (h5_close(attr) < 0 && st == ISL_OK)
        st = write_failed(w, name);
    h5_close(space);
    h5_close(type);
    free(chars);
    return st;
}

/* A scalar attribute of obj, stored as file_type from *value of mem_type. */
static isl_status write_scalar_attr(isl_h5_file *w, hid_t obj, const char *name, hid_t file_type,
                                    hid_t mem_type, const void *value)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? H5I_INVALID_HID
                           : H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    isl_status st = ISL_OK;
    if (attr < 0 || H5Awrite(attr, mem_type, value) < 0)
        st = write_failed(w, name);
    if (h5_close(attr) < 0 && st == ISL_OK)
        st = write_failed(w, name);
    h5_close(space);
    return st;
}

/* A float32 dataset (the writer of every isl array). */
isl_status isl_h5_write_floats(isl_h5_file *w, const char *path, int rank, const int64_t *dims,
                               const float *data)
{
    hsize_t hdims[8];
    for (int i = 0; i < rank; i++)
        hdims[i] = (hsize_t)dims[i];
    hid_t space = H5Screate_simple(rank, hdims, NULL);
    hid_t did = space < 0 ? H5I_INVALID_HID
                          : H5Dcreate2(w->fid, path, H5T_IEEE_F32LE, space, w->lcpl, H5P_DEFAULT,
                                       H5P_DEFAULT);
    isl_status st = ISL_OK;
    if (did < 0 || H5Dwrite(did, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        st = write_failed(w, path);
    if (h5_close(did) < 0 && st == ISL_OK)
        st = write_failed(w, path);
    h5_close(space);
    return st;
}

/* Puts image into a new file beside path (same filesystem, so rename is atomic), synced
 * to disk and renamed over path; the directory is synced last. */
isl_status isl_write_file_atomic(const char *path, const void *image, size_t size)
{
    isl_atomic_file f;
    const char *step = "write";
    if (isl_atomic_open(&f, path) != 0)
        return isl_fail(ISL_ERROR_IO, "%s: cannot create a temporary file beside it: %s", path,
                        strerror(errno));
    if (isl_atomic_write_all(&f, image, size) != 0 || isl_atomic_commit(&f, path, &step) != 0) {
        isl_status st = strcmp(step, "rename") == 0
                            ? isl_fail(ISL_ERROR_IO, "%s: cannot replace it with %s: %s", path,
                                       f.tmp, strerror(errno))
                            : isl_fail(ISL_ERROR_IO, "%s: cannot %s %s: %s", path, step, f.tmp,
                                       strerror(errno));
        isl_atomic_discard(&f);
        return st;
    }
    /* The new file is in place; only its durability across a crash is in doubt. */
    if (isl_atomic_sync_dir(path) != 0)
        return isl_fail(ISL_ERROR_IO, "%s: written, but syncing its directory failed: %s", path,
                        strerror(errno));
    return ISL_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Files                                                                               */
/* ---------------------------------------------------------------------------------- */

/* Builds the whole file in memory (HDF5's core driver, no backing store) and returns its
 * bytes in *image (malloc'd). Writing the bytes ourselves keeps every disk error
 * (ENOSPC, EFBIG, EIO) in our hands: when HDF5 itself fails to flush a file, H5Fclose
 * fails and leaves a half-closed file identifier behind that crashes H5close later.
 * Costs a transient copy of the file in memory (33 MB for a model at base depth 400).
 * The image starts with ISL_SUM_BLOCK bytes left for the checksum record: HDF5 looks
 * for its superblock at offsets 0, 512, 1024, ... and takes the bytes before it as a
 * user block (H5Fget_file_image leaves out a user block set with H5Pset_userblock, so
 * the block is added here instead). */
static isl_status build_image(isl_h5_file *w, isl_h5_file_fn fn, void *user, void **image,
                              size_t *size)
{
    isl_status st = ISL_OK;
    hid_t fapl = strong_fapl();
    *image = NULL;
    w->lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (fapl < 0 || w->lcpl < 0 || H5Pset_fapl_core(fapl, CORE_INCREMENT, 0) < 0 ||
        H5Pset_create_intermediate_group(w->lcpl, 1) < 0) {
        st = isl_fail(ISL_ERROR_BACKEND, "%s: HDF5 setup failed: %s", w->file,
                      h5_detail(w->detail));
        goto cleanup;
    }
    w->fid = H5Fcreate(w->file, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (w->fid < 0) {
        st = write_failed(w, "the file");
        goto cleanup;
    }
    if ((st = fn(user, w)) != ISL_OK)
        goto cleanup;
    if (H5Fflush(w->fid, H5F_SCOPE_GLOBAL) < 0) {
        st = write_failed(w, "the file");
        goto cleanup;
    }
    ssize_t n = H5Fget_file_image(w->fid, NULL, 0);
    if (n <= 0) {
        st = write_failed(w, "the file image");
        goto cleanup;
    }
    *image = calloc((size_t)n + ISL_SUM_BLOCK, 1);
    if (!*image) {
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory for a %zd-byte file", w->file, n);
        goto cleanup;
    }
    if (H5Fget_file_image(w->fid, (char *)*image + ISL_SUM_BLOCK, (size_t)n) != n) {
        st = write_failed(w, "the file image");
        goto cleanup;
    }
    *size = (size_t)n + ISL_SUM_BLOCK;
cleanup:
    if (w->fid >= 0 && H5Fclose(w->fid) < 0 && st == ISL_OK)
        st = write_failed(w, "the file");
    w->fid = H5I_INVALID_HID;
    h5_close(w->lcpl);
    h5_close(fapl);
    if (st != ISL_OK) {
        free(*image);
        *image = NULL;
    }
    return st;
}

/* build_image, then the bytes written atomically. */
isl_status isl_h5_write_file(const char *path, isl_h5_file_fn fn, void *user)
{
    if (!path || !fn)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_h5_write_file: NULL argument");
    size_t size = 0;
    void *image = NULL;
    isl_h5_file w = {.file = path, .fid = H5I_INVALID_HID, .lcpl = H5I_INVALID_HID, .fd = -1};
    h5_session s;
    h5_enter(&s);
    isl_status st = build_image(&w, fn, user, &image, &size);
    h5_leave(&s);
    if (st == ISL_OK) {
        isl_sum_seal(image, size);
        st = isl_write_file_atomic(path, image, size);
    }
    free(image);
    return st;
}

/* Opens a file image held in memory (HDF5's core driver, no backing store): HDF5 copies
 * the bytes, so nothing on disk is read or written. HDF5 refuses an image whose name is
 * an existing file, and takes two open files of one name for the same file: each image
 * gets a fresh name under a path that cannot exist. */
static isl_status open_image(isl_h5_file *r, const void *image, size_t size)
{
    static unsigned long long images; /* under h5_lock */
    char name[64];
    snprintf(name, sizeof(name), "/proc/self/fd/-1/isl-image-%llu", ++images);
    hid_t fapl = strong_fapl();
    if (fapl < 0 || H5Pset_fapl_core(fapl, CORE_INCREMENT, 0) < 0 ||
        H5Pset_file_image(fapl, (void *)image, size) < 0) {
        isl_status st = isl_fail(ISL_ERROR_BACKEND, "%s: HDF5 property list: %s", r->file,
                                 h5_detail(r->detail));
        h5_close(fapl);
        return st;
    }
    r->fid = H5Fopen(name, H5F_ACC_RDONLY, fapl);
    h5_close(fapl);
    if (r->fid < 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: not HDF5, or a corrupt or truncated HDF5 file: %s",
                        r->file, h5_detail(r->detail));
    return ISL_OK;
}

/* Opens path (image NULL) or the file image, calls fn, closes. */
static isl_status read_with(const char *path, const void *image, size_t size,
                            isl_h5_file_fn fn, void *user)
{
    isl_h5_file r = {.file = path, .fid = H5I_INVALID_HID, .lcpl = H5I_INVALID_HID, .fd = -1};
    isl_status st = ISL_OK;
    if (image) {
        r.size = (uint64_t)size; /* an image has no checksum record: structure checks only */
        r.image = image;
    } else if ((st = verify_file(&r)) != ISL_OK) { /* outside the lock: hashing needs no HDF5 */
        if (r.fd >= 0)
            close(r.fd);
        return st;
    }
    h5_session s;
    h5_enter(&s);
    st = image ? open_image(&r, image, size) : open_for_reading(&r);
    if (st == ISL_OK)
        st = fn(user, &r);
    if (r.fid >= 0 && H5Fclose(r.fid) < 0 && st == ISL_OK)
        st = isl_fail(ISL_ERROR_FORMAT, "%s: cannot close: %s", path, h5_detail(r.detail));
    h5_leave(&s);
    if (r.fd >= 0)
        close(r.fd);
    return st;
}

isl_status isl_h5_read_file(const char *path, isl_h5_file_fn fn, void *user)
{
    if (!path || !fn)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_h5_read_file: NULL argument");
    return read_with(path, NULL, 0, fn, user);
}

isl_status isl_h5_read_image(const char *name, const void *image, size_t size,
                             isl_h5_file_fn fn, void *user)
{
    if (!name || !image || !fn)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_h5_read_image: NULL argument");
    if (size == 0)
        return isl_fail(ISL_ERROR_FORMAT, "%s: empty file", name);
    return read_with(name, image, size, fn, user);
}

/* ---------------------------------------------------------------------------------- */
/* Objects                                                                             */
/* ---------------------------------------------------------------------------------- */

hid_t isl_h5_id(const isl_h5_file *f) { return f->fid; }
int isl_h5_verified(const isl_h5_file *f) { return f->verified; }
uint64_t isl_h5_file_size(const isl_h5_file *f) { return f->size; }
const char *isl_h5_path(const isl_h5_file *f) { return f->file; }
hid_t isl_h5_lcpl(const isl_h5_file *f) { return f->lcpl; }
const char *isl_h5_detail(isl_h5_file *f) { return h5_detail(f->detail); }
herr_t isl_h5_close(hid_t id) { return h5_close(id); }
int isl_h5_exists(isl_h5_file *f, const char *path) { return path_exists(f->fid, path) != 0; }

isl_status isl_h5_open_group(isl_h5_file *f, const char *path, hid_t *out)
{
    return open_object(f, path, "group", H5Gopen2, out);
}

isl_status isl_h5_open_dataset(isl_h5_file *f, const char *path, hid_t *out)
{
    return open_object(f, path, "dataset", H5Dopen2, out);
}

isl_status isl_h5_read_string(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                              char *buf, size_t cap)
{
    return read_one_string(f, obj, where, name, buf, cap);
}

isl_status isl_h5_read_strings(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                               char ***out, size_t *count)
{
    return read_string_attr(f, obj, where, name, out, count);
}

isl_status isl_h5_read_int(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                           long long *value)
{
    return read_number_attr(f, obj, where, name, 0, H5T_NATIVE_LLONG, value);
}

isl_status isl_h5_read_double(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                              double *value)
{
    return read_number_attr(f, obj, where, name, 1, H5T_NATIVE_DOUBLE, value);
}

isl_status isl_h5_read_u64_attr(isl_h5_file *f, const char *group, const char *name,
                                uint64_t *value)
{
    int e = path_exists(f->fid, group);
    if (e != 1)
        return missing(f, group, "group", e);
    hid_t g = H5Oopen(f->fid, group, H5P_DEFAULT), attr = H5I_INVALID_HID, type = H5I_INVALID_HID;
    hid_t space = H5I_INVALID_HID;
    isl_status st = g < 0 ? isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot open: %s", f->file, group,
                                     h5_detail(f->detail))
                          : open_attr(f, g, group, name, &attr);
    if (st == ISL_OK) {
        type = H5Aget_type(attr);
        space = H5Aget_space(attr);
        if (type < 0 || H5Tget_class(type) != H5T_INTEGER || space < 0 ||
            H5Sget_simple_extent_npoints(space) != 1)
            st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: attribute %s is not one integer", f->file,
                          group, name);
        else if (H5Aread(attr, H5T_NATIVE_UINT64, value) < 0)
            st = isl_fail(ISL_ERROR_FORMAT, "%s: %s: cannot read attribute %s: %s", f->file,
                          group, name, h5_detail(f->detail));
    }
    h5_close(space);
    h5_close(type);
    h5_close(attr);
    h5_close(g);
    return st;
}

isl_status isl_h5_write_strings(isl_h5_file *f, hid_t obj, const char *name, int count,
                                const char *const *values)
{
    return write_strings_attr(f, obj, name, count, values);
}

isl_status isl_h5_write_string(isl_h5_file *f, hid_t obj, const char *name, const char *value)
{
    return write_strings_attr(f, obj, name, -1, &value);
}

isl_status isl_h5_write_int(isl_h5_file *f, hid_t obj, const char *name, int64_t value)
{
    return write_scalar_attr(f, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

isl_status isl_h5_write_double(isl_h5_file *f, hid_t obj, const char *name, double value)
{
    return write_scalar_attr(f, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

isl_status isl_h5_write_u64_attr(isl_h5_file *f, const char *group, const char *name,
                                 uint64_t value)
{
    int e = path_exists(f->fid, group);
    hid_t g = e > 0 ? H5Gopen2(f->fid, group, H5P_DEFAULT)
                    : H5Gcreate2(f->fid, group, f->lcpl, H5P_DEFAULT, H5P_DEFAULT);
    hid_t space = g < 0 ? H5I_INVALID_HID : H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? H5I_INVALID_HID
                           : H5Acreate2(g, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    isl_status st = ISL_OK;
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_UINT64, &value) < 0)
        st = isl_fail(ISL_ERROR_IO, "%s: cannot write %s/%s: %s", f->file, group, name,
                      h5_detail(f->detail));
    if (h5_close(attr) < 0 && st == ISL_OK)
        st = isl_fail(ISL_ERROR_IO, "%s: cannot write %s/%s", f->file, group, name);
    h5_close(space);
    h5_close(g);
    return st;
}
