/* Mirror images of planar data, for test-time flip averaging (lib/predict/predict.c). */
#ifndef ISL_FLIP_H
#define ISL_FLIP_H

#include <stddef.h>

/* Flip codes: bit 0 mirrors left-right (columns), bit 1 up-down (rows); 0..3 are the
 * four mirror images, each its own inverse. */
enum { ISL_FLIP_X = 1, ISL_FLIP_Y = 2, ISL_FLIP_COUNT = 4 };

/* dst = flip of src: `planes` planes of rows x cols floats each. */
void isl_flip_copy(float *dst, const float *src, size_t planes, int rows, int cols, int flip);

/* sum += flip of add, same shapes (flip undoes a prediction made on a flipped input). */
void isl_flip_accumulate(float *sum, const float *add, size_t planes, int rows, int cols,
                         int flip);

#endif
