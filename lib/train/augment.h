/* Photometric augmentation of training crops (lib/train/augment.c): random contrast,
 * gamma, blur and noise of a crop's input planes, one draw per crop. The sampler
 * (sampler.c) calls it after the crop's flip or rotation; targets are never changed. */
#ifndef ISL_AUGMENT_H
#define ISL_AUGMENT_H

#include "isl.h"

#include <stdint.h>

/* The amounts (0: off), as the isl_sampler_set_* functions document them. */
typedef struct isl_photometric {
    double contrast; /* factors e^u about each plane's mean, u uniform in [-contrast, contrast] */
    double gamma;    /* exponents e^u, u uniform in [-gamma, gamma] */
    double blur;     /* Gaussian blur of sigma uniform in [0, blur] pixels */
    double noise;    /* additive noise of standard deviation uniform in [0, noise] */
} isl_photometric;

/* Applies p to the num_z planes of side n of one crop, in this order: blur, contrast,
 * gamma, noise, each result clipped to [0, 1]. `r` is the crop's random value: its high
 * 53 bits give the contrast factor (as before the other augmentations existed, so a seed
 * jitters contrast as it did), a generator seeded from it the rest. */
isl_status isl_photometric_apply(const isl_photometric *p, uint64_t r, float *planes, int num_z,
                                 int n);

#endif
