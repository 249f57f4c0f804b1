/* Preparing network inputs from a stack (lib/common/input.h): shared by prediction and
 * the training sampler. */
#include "input.h"

#include "error.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PAD_BEFORE ISL_INPUT_PAD

static double sample_at(const isl_stack *in, size_t i)
{
    switch (in->dtype) {
    case ISL_DTYPE_U8: return ((const uint8_t *)in->data)[i];
    case ISL_DTYPE_U16: return ((const uint16_t *)in->data)[i];
    case ISL_DTYPE_F32: return ((const float *)in->data)[i];
    }
    return 0.0;
}

isl_status isl_input_transform_init(const char *normalization, const isl_stack *in,
                                    isl_input_transform *t)
{
    const int nz = in->num_z;
    const size_t plane = (size_t)in->height * in->width;
    const int global = !strcmp(normalization, "global");
    const double unit = in->dtype == ISL_DTYPE_U8 ? 1.0 / 255 : in->dtype == ISL_DTYPE_U16 ? 1.0 / 65535 : 1.0;
    t->scale = malloc(sizeof(float) * (size_t)nz);
    t->shift = malloc(sizeof(float) * (size_t)nz);
    t->clamp = global;
    if (!t->scale || !t->shift)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int z = 0; z < nz; z++) {
        double sum = 0, sum2 = 0, lo = INFINITY, hi = -INFINITY;
        for (size_t i = 0; i < plane; i++) {
            double v = sample_at(in, (size_t)z * plane + i);
            if (!isfinite(v))
                return isl_fail(ISL_ERROR_VALUE, "input plane %d, pixel (%zu, %zu) is not finite",
                                z, i / in->width, i % in->width);
            sum += v;
            sum2 += v * v;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        if (!global) {
            if (lo * unit < 0.0 || hi * unit > 1.0)
                return isl_fail(ISL_ERROR_VALUE,
                                "input plane %d has values in [%g, %g], outside [0, 1]; scale the "
                                "stack or use a model with global input normalization",
                                z, lo, hi);
            t->scale[z] = (float)unit;
            t->shift[z] = 0.0f;
            continue;
        }
        double mean = sum / plane, var = sum2 / plane - mean * mean;
        double sd = var > 0 ? sqrt(var) : 0;
        if (!(sd > 1e-12 * (fabs(mean) + 1)))
            return isl_fail(ISL_ERROR_VALUE, "input plane %d is constant: it cannot be normalized",
                            z);
        /* The paper: mean 0.5, standard deviation 0.125, clipped to [0, 1]. */
        t->scale[z] = (float)(0.125 / sd);
        t->shift[z] = (float)(0.5 - mean * 0.125 / sd);
    }
    return ISL_OK;
}

void isl_input_transform_free(isl_input_transform *t)
{
    free(t->scale);
    free(t->shift);
}

void isl_input_fill(float *dst, const isl_stack *in, const isl_input_transform *t, int py,
                    int px, int th, int tw, int *col_index)
{
    const size_t plane = (size_t)in->height * in->width;
    for (int x = 0; x < tw; x++)
        col_index[x] = isl_reflect_index(px + x - PAD_BEFORE, in->width);
#pragma omp parallel for collapse(2) schedule(static)
    for (int z = 0; z < in->num_z; z++) {
        for (int y = 0; y < th; y++) {
            const size_t row =
                (size_t)z * plane +
                (size_t)isl_reflect_index(py + y - PAD_BEFORE, in->height) * in->width;
            float *d = dst + ((size_t)z * th + y) * tw;
            const float a = t->scale[z], b = t->shift[z];
            for (int x = 0; x < tw; x++) {
                float v = (float)sample_at(in, row + col_index[x]) * a + b;
                if (t->clamp)
                    v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
                d[x] = v;
            }
        }
    }
}
