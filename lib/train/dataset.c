/* Datasets in memory: wells (a stack scaled to [0, 1]) and their labels (full-well values
 * and masks), built with isl_dataset_add_well / isl_dataset_add_target and read back
 * through the accessors. Files: lib/train/dataset_io.c. */
#include "dataset.h"

#include "error.h"
#include "params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

isl_status isl_dataset_create(int num_z, isl_dataset **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_create: out is NULL");
    *out = NULL;
    if (num_z < 1 || num_z > ISL_DATASET_MAX_NUM_Z)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_create: num_z %d is outside 1..%d",
                        num_z, ISL_DATASET_MAX_NUM_Z);
    isl_dataset *d = calloc(1, sizeof(*d));
    if (!d)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    d->num_z = num_z;
    *out = d;
    return ISL_OK;
}

static void free_well(isl_ds_well *w)
{
    free(w->name);
    free(w->condition);
    free(w->stack);
    for (int t = 0; t < w->num_targets; t++) {
        free(w->targets[t].values);
        free(w->targets[t].mask);
    }
    free(w->targets);
}

void isl_dataset_free(isl_dataset *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->num_wells; i++)
        free_well(&d->wells[i]);
    free(d->wells);
    for (int l = 0; l < d->num_labels; l++)
        free(d->labels[l]);
    free(d->labels);
    free(d);
}

/* ---------------------------------------------------------------------------------- */
/* Checks                                                                              */
/* ---------------------------------------------------------------------------------- */

isl_status isl_ds_check_well_meta(const isl_dataset *d, const char *name, const char *condition,
                                  double pixel_size_um)
{
    if (!name || !name[0])
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "a well needs a non-empty name");
    if (strlen(name) >= ISL_DATASET_MAX_TEXT)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "well name \"%.32s...\" is longer than %d bytes", name,
                        ISL_DATASET_MAX_TEXT - 1);
    if (condition && strlen(condition) >= ISL_DATASET_MAX_TEXT)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "well \"%s\": condition \"%.32s...\" is longer than %d bytes", name,
                        condition, ISL_DATASET_MAX_TEXT - 1);
    if (!isfinite(pixel_size_um) || pixel_size_um < 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "well \"%s\": pixel size %g is not a finite number >= 0 (0: unknown)", name,
                        pixel_size_um);
    if (isl_dataset_well_index(d, name) >= 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "the dataset already has a well called \"%s\"",
                        name);
    if (d->num_wells >= ISL_DATASET_MAX_WELLS)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "a dataset holds at most %d wells",
                        ISL_DATASET_MAX_WELLS);
    return ISL_OK;
}

isl_status isl_ds_check_label_name(const char *label)
{
    if (!label || !label[0])
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "a label needs a non-empty name");
    if (strlen(label) >= ISL_MAX_NAME)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "label name \"%.20s...\" is longer than %d bytes", label,
                        ISL_MAX_NAME - 1);
    if (strchr(label, '/') || !strcmp(label, "."))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "label name \"%s\" is not valid (no '/', not \".\")", label);
    if (!strcmp(label, ISL_AUTOENCODER_NAME))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "\"%s\" is the autoencoder head's name, not a label", label);
    return ISL_OK;
}

static isl_status check_stack_fields(const isl_stack *s, const char *what)
{
    if (!s || !s->data)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: the stack or its data is NULL", what);
    if (s->dtype != ISL_DTYPE_U8 && s->dtype != ISL_DTYPE_U16 && s->dtype != ISL_DTYPE_F32)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: unknown sample type %d", what,
                        (int)s->dtype);
    if (s->height < 1 || s->width < 1 || s->height > ISL_DATASET_MAX_SIDE ||
        s->width > ISL_DATASET_MAX_SIDE)
        return isl_fail(ISL_ERROR_SHAPE, "%s: size %dx%d is outside 1..%d", what, s->width,
                        s->height, ISL_DATASET_MAX_SIDE);
    return ISL_OK;
}

/* Sample i scaled as prediction scales inputs (integers / 255 or / 65535, rounded once). */
static float scaled_sample(const isl_stack *s, size_t i)
{
    switch (s->dtype) {
    case ISL_DTYPE_U8: return (float)(((const uint8_t *)s->data)[i] / 255.0);
    case ISL_DTYPE_U16: return (float)(((const uint16_t *)s->data)[i] / 65535.0);
    case ISL_DTYPE_F32: return ((const float *)s->data)[i];
    }
    return 0.0f;
}

static const char *bad_value(float v)
{
    if (isnan(v))
        return "is NaN";
    if (isinf(v))
        return "is infinite";
    if (v < 0.0f || v > 1.0f)
        return "is outside [0, 1]";
    return NULL;
}

/* ---------------------------------------------------------------------------------- */
/* Building                                                                            */
/* ---------------------------------------------------------------------------------- */

static char *copy_text(const char *s)
{
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c)
        memcpy(c, s, n);
    return c;
}

isl_status isl_ds_push_well(isl_dataset *d, const char *name, const char *condition,
                            double pixel_size_um, int height, int width, float *stack,
                            int *index_out)
{
    if (d->num_wells == d->cap_wells) {
        int cap = d->cap_wells ? 2 * d->cap_wells : 8;
        isl_ds_well *grown = realloc(d->wells, sizeof(*grown) * (size_t)cap);
        if (!grown) {
            free(stack);
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
        }
        d->wells = grown;
        d->cap_wells = cap;
    }
    isl_ds_well w = {.pixel_size_um = pixel_size_um, .height = height, .width = width,
                     .stack = stack};
    w.name = copy_text(name);
    w.condition = copy_text(condition ? condition : "");
    if (!w.name || !w.condition) {
        free_well(&w);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    d->wells[d->num_wells] = w;
    if (index_out)
        *index_out = d->num_wells;
    d->num_wells++;
    return ISL_OK;
}

/* Index of label, added to the dataset's list if new (-1: out of memory). */
static int intern_label(isl_dataset *d, const char *label)
{
    int l = isl_ds_label_index(d, label);
    if (l >= 0)
        return l;
    if (d->num_labels == d->cap_labels) {
        int cap = d->cap_labels ? 2 * d->cap_labels : 8;
        char **grown = realloc(d->labels, sizeof(*grown) * (size_t)cap);
        if (!grown)
            return -1;
        d->labels = grown;
        d->cap_labels = cap;
    }
    if (!(d->labels[d->num_labels] = copy_text(label)))
        return -1;
    return d->num_labels++;
}

isl_status isl_ds_add_label(isl_dataset *d, const char *label)
{
    if (isl_ds_label_index(d, label) < 0 && d->num_labels >= ISL_DATASET_MAX_LABELS)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "a dataset holds at most %d labels",
                        ISL_DATASET_MAX_LABELS);
    return intern_label(d, label) < 0 ? isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory") : ISL_OK;
}

isl_status isl_ds_push_target(isl_dataset *d, int well, const char *label, float *values,
                              uint8_t *mask)
{
    isl_ds_well *w = &d->wells[well];
    if (isl_ds_label_index(d, label) < 0 && d->num_labels >= ISL_DATASET_MAX_LABELS) {
        free(values);
        free(mask);
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "a dataset holds at most %d labels",
                        ISL_DATASET_MAX_LABELS);
    }
    if (w->num_targets == w->cap_targets) {
        int cap = w->cap_targets ? 2 * w->cap_targets : 4;
        isl_ds_target *grown = realloc(w->targets, sizeof(*grown) * (size_t)cap);
        if (!grown) {
            free(values);
            free(mask);
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
        }
        w->targets = grown;
        w->cap_targets = cap;
    }
    int l = intern_label(d, label);
    if (l < 0) {
        free(values);
        free(mask);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    int64_t known = 0;
    size_t n = (size_t)w->height * (size_t)w->width;
    for (size_t i = 0; i < n; i++)
        known += mask[i] != 0;
    w->targets[w->num_targets++] = (isl_ds_target){l, values, mask, known};
    return ISL_OK;
}

isl_status isl_dataset_add_well(isl_dataset *d, const char *name, const char *condition,
                                double pixel_size_um, const isl_stack *stack, int *index_out)
{
    if (!d)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_add_well: dataset is NULL");
    ISL_CHECK(isl_ds_check_well_meta(d, name, condition, pixel_size_um));
    char what[ISL_DATASET_MAX_TEXT + 16];
    snprintf(what, sizeof(what), "well \"%s\"", name);
    ISL_CHECK(check_stack_fields(stack, what));
    if (stack->num_z != d->num_z)
        return isl_fail(ISL_ERROR_SHAPE, "%s: the stack has %d z planes but the dataset has %d",
                        what, stack->num_z, d->num_z);
    const size_t plane = (size_t)stack->height * (size_t)stack->width;
    const size_t n = plane * (size_t)d->num_z;
    float *data = malloc(sizeof(float) * n);
    if (!data)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory for %zu samples", what, n);
    for (size_t i = 0; i < n; i++) {
        float v = scaled_sample(stack, i);
        const char *problem = bad_value(v);
        if (problem) {
            size_t p = i % plane;
            free(data);
            return isl_fail(ISL_ERROR_VALUE, "%s: plane %zu, pixel (x %zu, y %zu) %s (%g)", what,
                            i / plane, p % (size_t)stack->width, p / (size_t)stack->width,
                            problem, (double)v);
        }
        data[i] = v;
    }
    return isl_ds_push_well(d, name, condition, pixel_size_um, stack->height, stack->width, data,
                            index_out);
}

isl_status isl_dataset_add_target(isl_dataset *d, int well, const char *label, int x0, int y0,
                                  const isl_stack *image, const uint8_t *mask)
{
    if (!d)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_add_target: dataset is NULL");
    if (well < 0 || well >= d->num_wells)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_dataset_add_target: well %d does not exist (the dataset has %d)",
                        well, d->num_wells);
    ISL_CHECK(isl_ds_check_label_name(label));
    const isl_ds_well *w = &d->wells[well];
    if (isl_ds_find_target(w, isl_ds_label_index(d, label)))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "well \"%s\" already has label \"%s\"",
                        w->name, label);
    char what[ISL_DATASET_MAX_TEXT + 96];
    snprintf(what, sizeof(what), "well \"%s\", label \"%s\"", w->name, label);
    ISL_CHECK(check_stack_fields(image, what));
    if (image->num_z != 1)
        return isl_fail(ISL_ERROR_SHAPE, "%s: a target is one plane, not %d", what, image->num_z);
    if (x0 < 0 || y0 < 0 || x0 > w->width - image->width || y0 > w->height - image->height)
        return isl_fail(ISL_ERROR_SHAPE,
                        "%s: a %dx%d target at (x %d, y %d) does not fit inside the %dx%d well",
                        what, image->width, image->height, x0, y0, w->width, w->height);

    const size_t n = (size_t)w->height * (size_t)w->width;
    float *values = calloc(n, sizeof(float));
    uint8_t *known = calloc(n, 1);
    if (!values || !known) {
        free(values);
        free(known);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory", what);
    }
    for (int y = 0; y < image->height; y++)
        for (int x = 0; x < image->width; x++) {
            size_t i = (size_t)y * (size_t)image->width + (size_t)x;
            if (mask && !mask[i])
                continue; /* unknown: its value does not matter (NaN is fine) */
            float v = scaled_sample(image, i);
            const char *problem = bad_value(v);
            if (problem) {
                free(values);
                free(known);
                return isl_fail(ISL_ERROR_VALUE, "%s: pixel (x %d, y %d) of the target %s (%g)",
                                what, x, y, problem, (double)v);
            }
            size_t o = (size_t)(y0 + y) * (size_t)w->width + (size_t)(x0 + x);
            values[o] = v;
            known[o] = 1;
        }
    return isl_ds_push_target(d, well, label, values, known);
}

/* ---------------------------------------------------------------------------------- */
/* Accessors                                                                           */
/* ---------------------------------------------------------------------------------- */

static const isl_ds_well *well_at(const isl_dataset *d, int well)
{
    return d && well >= 0 && well < d->num_wells ? &d->wells[well] : NULL;
}

int isl_ds_label_index(const isl_dataset *d, const char *label)
{
    for (int l = 0; label && l < d->num_labels; l++)
        if (!strcmp(d->labels[l], label))
            return l;
    return -1;
}

const isl_ds_target *isl_ds_find_target(const isl_ds_well *w, int label)
{
    for (int t = 0; label >= 0 && t < w->num_targets; t++)
        if (w->targets[t].label == label)
            return &w->targets[t];
    return NULL;
}

int isl_dataset_num_z(const isl_dataset *d) { return d ? d->num_z : 0; }
int isl_dataset_num_wells(const isl_dataset *d) { return d ? d->num_wells : 0; }

const char *isl_dataset_well_name(const isl_dataset *d, int well)
{
    const isl_ds_well *w = well_at(d, well);
    return w ? w->name : NULL;
}

const char *isl_dataset_well_condition(const isl_dataset *d, int well)
{
    const isl_ds_well *w = well_at(d, well);
    return w ? w->condition : NULL;
}

double isl_dataset_well_pixel_size(const isl_dataset *d, int well)
{
    const isl_ds_well *w = well_at(d, well);
    return w ? w->pixel_size_um : -1.0;
}

isl_status isl_dataset_well_size(const isl_dataset *d, int well, int *height, int *width)
{
    const isl_ds_well *w = well_at(d, well);
    if (!w)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_well_size: well %d does not exist",
                        well);
    if (height)
        *height = w->height;
    if (width)
        *width = w->width;
    return ISL_OK;
}

int isl_dataset_well_index(const isl_dataset *d, const char *name)
{
    for (int i = 0; d && name && i < d->num_wells; i++)
        if (!strcmp(d->wells[i].name, name))
            return i;
    return -1;
}

const float *isl_dataset_well_stack(const isl_dataset *d, int well)
{
    const isl_ds_well *w = well_at(d, well);
    return w ? w->stack : NULL;
}

int isl_dataset_num_labels(const isl_dataset *d) { return d ? d->num_labels : 0; }

const char *isl_dataset_label_name(const isl_dataset *d, int label)
{
    return d && label >= 0 && label < d->num_labels ? d->labels[label] : NULL;
}

int isl_dataset_label_index(const isl_dataset *d, const char *name)
{
    return d ? isl_ds_label_index(d, name) : -1;
}

isl_status isl_dataset_well_target(const isl_dataset *d, int well, const char *label,
                                   const float **values, const uint8_t **mask)
{
    const isl_ds_well *w = well_at(d, well);
    if (!w)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_dataset_well_target: well %d does not exist", well);
    if (!label)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_dataset_well_target: label is NULL");
    const isl_ds_target *t = isl_ds_find_target(w, isl_ds_label_index(d, label));
    if (!t)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "well \"%s\" has no label \"%s\"", w->name,
                        label);
    if (values)
        *values = t->values;
    if (mask)
        *mask = t->mask;
    return ISL_OK;
}
