/* Preparing network inputs from a stack: scaling, the model's input normalization and the
 * spec's mirror padding (lib/common/input.c). Prediction and the training sampler
 * (lib/train/sampler.c) use the same code so that training sees what prediction sees. */
#ifndef ISL_INPUT_H
#define ISL_INPUT_H

#include "isl.h"
#include "reflect.h"

/* The context each output pixel needs on each side, (250 - 8) / 2. */
#define ISL_INPUT_PAD (ISL_TILE_CONTEXT / 2)

/* Per-plane affine input transform: value = clamp(raw * scale + shift) (clamped only for
 * the paper's global normalization). */
typedef struct isl_input_transform {
    float *scale, *shift;
    int clamp;
} isl_input_transform;

/* The transform of `in` for a model's input normalization ("none": integers scaled to
 * [0, 1], values outside it refused; "global": per plane mean 0.5, sd 0.125, clipped to
 * [0, 1]; constant planes refused). Free with isl_input_transform_free, also on failure. */
isl_status isl_input_transform_init(const char *normalization, const isl_stack *in,
                                    isl_input_transform *t);
void isl_input_transform_free(isl_input_transform *t);

/* Writes rows [py, py + th), columns [px, px + tw) of the transformed image padded by
 * ISL_INPUT_PAD on every side (padded coordinates; reflect padding of any width) into
 * dst, num_z x th x tw floats. col_index is scratch of tw ints. */
void isl_input_fill(float *dst, const isl_stack *in, const isl_input_transform *t, int py,
                    int px, int th, int tw, int *col_index);

#endif
