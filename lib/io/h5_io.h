/* The one HDF5 layer of isl (lib/io/h5_io.c): the process-wide HDF5 lock, HDF5 error
 * capture, checked reads of attributes and datasets, writers, and the atomic in-memory
 * file writer. The model format (lib/io/model_io.c), training checkpoints
 * (lib/train/trainer.c) and datasets (lib/train/dataset_io.c) are built on it.
 *
 * Files are opened with isl_h5_read_file or written with isl_h5_write_file; their
 * callbacks run with the lock held, may call HDF5 directly on isl_h5_id(f), and report
 * through isl_fail (the library never prints). Messages name the file and the object. */
#ifndef ISL_H5_IO_H
#define ISL_H5_IO_H

#include "isl.h"

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

typedef struct isl_h5_file isl_h5_file;
typedef isl_status (*isl_h5_file_fn)(void *user, isl_h5_file *f);

/* Opens path for reading (missing/unreadable: ISL_ERROR_IO; content not matching the
 * checksum record isl wrote into it: ISL_ERROR_DAMAGED, before HDF5 parses anything;
 * not HDF5, truncated or corrupt: ISL_ERROR_FORMAT) and calls fn. */
isl_status isl_h5_read_file(const char *path, isl_h5_file_fn fn, void *user);
/* The same for a whole file's bytes held in memory (image, size bytes; HDF5 copies them):
 * nothing on disk is touched. name stands for the file in messages. The fuzz harnesses
 * (tests/fuzz/) read through it. */
isl_status isl_h5_read_image(const char *name, const void *image, size_t size,
                             isl_h5_file_fn fn, void *user);

/* Builds a new file in memory with fn, seals it with a checksum record in its user block
 * (lib/io/h5_checksum.h), then writes it atomically (temporary file beside
 * path, synced, renamed over it, directory synced). Never leaves a partial file; on
 * failure a previous file at path is untouched. */
isl_status isl_h5_write_file(const char *path, isl_h5_file_fn fn, void *user);

/* Writes size bytes to path the same way (temporary file beside it, synced, renamed,
 * directory synced): for any file that must never be seen half-written (the CLI's
 * pictures and reports). */
isl_status isl_write_file_atomic(const char *path, const void *data, size_t size);

/* The open file, its path (for messages) and, when writing, a link creation property
 * list that creates intermediate groups. */
hid_t isl_h5_id(const isl_h5_file *f);
const char *isl_h5_path(const isl_h5_file *f);
hid_t isl_h5_lcpl(const isl_h5_file *f);
/* 1 if the file being read matched its checksum record, 0 if it has none. */
int isl_h5_verified(const isl_h5_file *f);
/* Size in bytes of the file being read. */
uint64_t isl_h5_file_size(const isl_h5_file *f);
/* HDF5's innermost error description ("" if none); call right after the failing call. */
const char *isl_h5_detail(isl_h5_file *f);
/* Closes any identifier; negative ids are ignored. */
herr_t isl_h5_close(hid_t id);

/* 1 if an object exists at the absolute path, 0 if not. */
int isl_h5_exists(isl_h5_file *f, const char *path);
/* The group or dataset at an absolute path ("missing group" / "not a group" errors).
 * Every component must be a hard link: soft and external links are refused. */
isl_status isl_h5_open_group(isl_h5_file *f, const char *path, hid_t *out);
isl_status isl_h5_open_dataset(isl_h5_file *f, const char *path, hid_t *out);
/* Checks a dataset before it is read: no external or virtual storage, filters only
 * deflate/shuffle/fletcher32 and only if allow_filters, and stored bytes that can hold
 * its size (all of it unfiltered, 1/1100 filtered) within the file's size. */
isl_status isl_h5_check_storage(isl_h5_file *f, hid_t did, const char *path, int allow_filters);

/* Attributes of obj, whose path `where` names it in messages. Readers fail with
 * ISL_ERROR_FORMAT and the attribute's path. */
isl_status isl_h5_read_string(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                              char *buf, size_t cap);
/* A scalar or list of strings (at most ISL_H5_MAX_STRINGS), as one block: free(*out)
 * releases it. */
#define ISL_H5_MAX_STRINGS 1024
isl_status isl_h5_read_strings(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                               char ***out, size_t *count);
isl_status isl_h5_read_int(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                           long long *value);
/* An integer or floating-point attribute. */
isl_status isl_h5_read_double(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                              double *value);
/* A scalar uint64 attribute of the group at `group`. */
isl_status isl_h5_read_u64_attr(isl_h5_file *f, const char *group, const char *name,
                                uint64_t *value);
/* Writers: fixed-size UTF-8 strings (count < 0: a scalar; the readers also take the
 * variable-length strings of h5py and isl < 0.7),
 * int64, float64, and a uint64 of the group at `group` (created if missing). */
isl_status isl_h5_write_string(isl_h5_file *f, hid_t obj, const char *name, const char *value);
isl_status isl_h5_write_strings(isl_h5_file *f, hid_t obj, const char *name, int count,
                                const char *const *values);
isl_status isl_h5_write_int(isl_h5_file *f, hid_t obj, const char *name, int64_t value);
isl_status isl_h5_write_double(isl_h5_file *f, hid_t obj, const char *name, double value);
isl_status isl_h5_write_u64_attr(isl_h5_file *f, const char *group, const char *name,
                                 uint64_t value);

/* Every value finite, and values of datasets whose path ends in "/var" (batch-norm
 * variances) >= 0; fails with ISL_ERROR_VALUE naming the element. file is for messages. */
isl_status isl_h5_check_values(const char *file, const char *path, int rank, const int64_t *dims,
                               const float *data);
/* A chunked dataset's chunks must fit in its maximum extent (as HDF5 itself requires on
 * creation): HDF5 1.10 trusts the chunk dimensions of a damaged file and reads past its
 * buffers (found by tests/fuzz/fuzz_dataset_load). Contiguous and compact layouts pass. */
isl_status isl_h5_check_chunks(isl_h5_file *f, hid_t did, const char *path);
/* Reads the dataset at an absolute path, which must exist with exactly this shape, a
 * float type and values that pass isl_h5_check_values. */
isl_status isl_h5_read_floats(isl_h5_file *f, const char *path, int rank, const int64_t *dims,
                              float *data);
/* A float32 dataset at an absolute path (intermediate groups created). */
isl_status isl_h5_write_floats(isl_h5_file *f, const char *path, int rank, const int64_t *dims,
                               const float *data);

#endif
