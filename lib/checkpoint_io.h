/* HDF5 access for training checkpoints: a model file (lib/model_io.h) plus extra objects
 * (the /optimizer group). Implemented at the end of lib/model_io.c, which owns the
 * process-wide HDF5 lock and the atomic in-memory writer; the callbacks below run with
 * the lock held and must only use the isl_h5_* functions. */
#ifndef ISL_CHECKPOINT_IO_H
#define ISL_CHECKPOINT_IO_H

#include "isl.h"
#include "params.h"

#include <stdint.h>

typedef struct isl_h5_file isl_h5_file;
typedef isl_status (*isl_h5_extra_fn)(void *user, isl_h5_file *f);

/* Writes p as isl_model_write_h5 does (validated, in memory, temp file + rename), after
 * fn has added its objects. */
isl_status isl_model_write_h5_extra(const char *path, const isl_params *p, isl_h5_extra_fn fn,
                                    void *user);

/* Opens path for reading and calls fn. */
isl_status isl_h5_read_extra(const char *path, isl_h5_extra_fn fn, void *user);

/* A float32 dataset at an absolute path (intermediate groups created). */
isl_status isl_h5_write_floats(isl_h5_file *f, const char *path, int rank, const int64_t *dims,
                               const float *data);
/* Reads a dataset of exactly this shape (float type, finite values). */
isl_status isl_h5_read_floats(isl_h5_file *f, const char *path, int rank, const int64_t *dims,
                              float *data);
/* A scalar uint64 attribute of the group at `group` (created if missing). */
isl_status isl_h5_write_u64_attr(isl_h5_file *f, const char *group, const char *name,
                                 uint64_t value);
isl_status isl_h5_read_u64_attr(isl_h5_file *f, const char *group, const char *name,
                                uint64_t *value);
/* 1 if an object exists at the absolute path, 0 if not. */
int isl_h5_exists(isl_h5_file *f, const char *path);

#endif
