/* Dropout of the heads' inputs (dropout.h). */
#include "dropout.h"

#include <stddef.h>

void isl_dropout_apply(isl_tt *t, uint64_t key, double rate, int whole_channels,
                       int64_t first_crop)
{
    const int blocks = (t->c + 15) / 16;
    const size_t hw = (size_t)t->h * (size_t)t->w;
    const float scale = (float)(1.0 / (1.0 - rate));
    /* nChw16c: value (n, c, p) at ((n * blocks + c / 16) * hw + p) * 16 + c % 16. */
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < t->n; n++)
        for (int b = 0; b < blocks; b++) {
            float *block = t->v + ((size_t)n * blocks + b) * hw * 16;
            const int width = t->c - 16 * b < 16 ? t->c - 16 * b : 16;
            const uint64_t crop = (uint64_t)first_crop + (uint64_t)n; /* in the global batch */
            for (int k = 0; k < width; k++) {
                const uint64_t channel = crop * (uint64_t)t->c + (uint64_t)(16 * b + k);
                if (whole_channels) {
                    const float f = isl_dropout_keeps(key, channel, rate) ? scale : 0.0f;
                    for (size_t p = 0; p < hw; p++)
                        block[p * 16 + k] = f != 0.0f ? block[p * 16 + k] * f : 0.0f;
                    continue;
                }
                for (size_t p = 0; p < hw; p++)
                    block[p * 16 + k] = isl_dropout_keeps(key, channel * hw + p, rate)
                                            ? block[p * 16 + k] * scale
                                            : 0.0f;
            }
        }
}
