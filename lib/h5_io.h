/* HDF5 access for files other than models (datasets): the helpers of lib/model_io.c,
 * which owns the process-wide HDF5 lock, the error capture and the atomic in-memory
 * writer. Files are opened with isl_h5_read_extra (lib/checkpoint_io.h) or written with
 * isl_h5_write_file; their callbacks run with the lock held, may call HDF5 directly on
 * isl_h5_id(f), and report through isl_fail (the library never prints). */
#ifndef ISL_H5_IO_H
#define ISL_H5_IO_H

#include "checkpoint_io.h"

#include <hdf5.h>

/* Builds a new file in memory with fn, then writes it atomically (temporary file beside
 * path, synced, renamed over it). Never leaves a partial file; on failure a previous file
 * at path is untouched. */
isl_status isl_h5_write_file(const char *path, isl_h5_extra_fn fn, void *user);

/* The open file, its path (for messages) and, when writing, a link creation property
 * list that creates intermediate groups. */
hid_t isl_h5_id(const isl_h5_file *f);
const char *isl_h5_path(const isl_h5_file *f);
hid_t isl_h5_lcpl(const isl_h5_file *f);
/* HDF5's innermost error description ("" if none); call right after the failing call. */
const char *isl_h5_detail(isl_h5_file *f);
/* Closes any identifier; negative ids are ignored. */
herr_t isl_h5_close(hid_t id);

/* The group at an absolute path ("missing group" / "not a group" errors). */
isl_status isl_h5_open_group(isl_h5_file *f, const char *path, hid_t *out);

/* Attributes of obj, whose path `where` names it in messages. Readers fail with
 * ISL_ERROR_FORMAT and the attribute's path. */
isl_status isl_h5_read_string(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                              char *buf, size_t cap);
/* A scalar or list of strings, as one block: free(*out) releases it. */
isl_status isl_h5_read_strings(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                               char ***out, size_t *count);
isl_status isl_h5_read_int(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                           long long *value);
/* An integer or floating-point attribute. */
isl_status isl_h5_read_double(isl_h5_file *f, hid_t obj, const char *where, const char *name,
                              double *value);
/* Writers: variable-length UTF-8 strings (as h5py writes them), int64, float64. */
isl_status isl_h5_write_string(isl_h5_file *f, hid_t obj, const char *name, const char *value);
isl_status isl_h5_write_strings(isl_h5_file *f, hid_t obj, const char *name, int count,
                                const char *const *values);
isl_status isl_h5_write_int(isl_h5_file *f, hid_t obj, const char *name, int64_t value);
isl_status isl_h5_write_double(isl_h5_file *f, hid_t obj, const char *name, double value);

#endif
