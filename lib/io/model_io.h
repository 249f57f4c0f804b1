/* HDF5 model files (format "isl-model", version 1; docs/model-format.md), on the HDF5
 * layer (lib/io/h5_io.h). Training checkpoints are model files with extra objects. */
#ifndef ISL_MODEL_IO_H
#define ISL_MODEL_IO_H

#include "h5_io.h"
#include "isl.h"
#include "params.h"

#define ISL_MODEL_FORMAT_VERSION 1

/* Reads and validates path into *p (allocated here; free with isl_params_free).
 * Validates format, version, attributes, every dataset's presence, dtype-convertibility,
 * shape (against the architecture derived from base_depth/num_z) and finiteness
 * (BN var must be >= 0), and reports the first problem with its dataset path. */
isl_status isl_model_read_h5(const char *path, isl_params *p);
/* The same from a whole model file's bytes in memory (name is for messages). */
isl_status isl_model_read_h5_image(const char *name, const void *image, size_t size,
                                   isl_params *p);

/* Writes *p atomically (temp file in the same directory + rename). Never leaves a
 * partial file at path; on failure the previous file at path is untouched. */
isl_status isl_model_write_h5(const char *path, const isl_params *p);

/* Writes p as isl_model_write_h5 does, after which fn adds its objects (a training
 * checkpoint's /optimizer group). Read them back with isl_h5_read_file. */
isl_status isl_model_write_h5_extra(const char *path, const isl_params *p, isl_h5_file_fn fn,
                                    void *user);

#endif
