/* The isl_dataset handle, shared by lib/train/dataset.c (building, accessors), lib/train/dataset_io.c
 * (HDF5 files) and lib/train/sampler.c (training crops). */
#ifndef ISL_DATASET_H
#define ISL_DATASET_H

#include "isl.h"

#include <stdint.h>

#define ISL_DATASET_MAX_NUM_Z 1024
#define ISL_DATASET_MAX_SIDE (1 << 20)
#define ISL_DATASET_MAX_LABELS 1024
#define ISL_DATASET_MAX_WELLS 100000
#define ISL_DATASET_MAX_TEXT 256 /* bytes of a well name or condition, with the NUL */

/* One label of one well, at full well size. */
typedef struct isl_ds_target {
    int label;       /* index into the dataset's labels */
    float *values;   /* [height * width] in [0, 1]; 0 where unknown */
    uint8_t *mask;   /* [height * width] 1 where known, 0 elsewhere */
    int64_t known;   /* pixels with mask 1 */
} isl_ds_target;

typedef struct isl_ds_well {
    char *name, *condition; /* condition "" if none */
    double pixel_size_um;   /* 0 if unknown */
    int height, width;
    float *stack;           /* [num_z, height, width] in [0, 1] */
    int num_targets, cap_targets;
    isl_ds_target *targets;
} isl_ds_well;

struct isl_dataset {
    int num_z;
    int num_wells, cap_wells;
    isl_ds_well *wells;
    int num_labels, cap_labels;
    char **labels; /* first-added order */
};

/* Checks what add_well requires of a name, condition and pixel size. */
isl_status isl_ds_check_well_meta(const isl_dataset *d, const char *name, const char *condition,
                                  double pixel_size_um);
/* Label names become HDF5 path components and model head names: non-empty, shorter than
 * 64 bytes, no '/', not "." and not "autoencoder". */
isl_status isl_ds_check_label_name(const char *label);

/* Appends a well that takes ownership of stack (malloc'd, already scaled and checked);
 * the metadata must have passed isl_ds_check_well_meta. On failure stack is freed. */
isl_status isl_ds_push_well(isl_dataset *d, const char *name, const char *condition,
                            double pixel_size_um, int height, int width, float *stack,
                            int *index_out);
/* Gives well `well` the label `label` (name checked, not yet in the well), taking ownership
 * of values and mask (full well size, checked; values 0 where mask is 0). On failure both
 * are freed. */
isl_status isl_ds_push_target(isl_dataset *d, int well, const char *label, float *values,
                              uint8_t *mask);

/* Adds a label name (checked) to the dataset's list unless it is there already. */
isl_status isl_ds_add_label(isl_dataset *d, const char *label);
/* Index of a label name among the dataset's labels, or -1. */
int isl_ds_label_index(const isl_dataset *d, const char *label);
/* The target of label index `label` in a well, or NULL. */
const isl_ds_target *isl_ds_find_target(const isl_ds_well *w, int label);

/* isl_dataset_load from a whole dataset file's bytes in memory (name is for messages). */
isl_status isl_dataset_load_image(const char *name, const void *image, size_t size,
                                  isl_dataset **out);

#endif
