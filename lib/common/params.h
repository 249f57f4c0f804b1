/* Host-side model parameters in the spec's PyTorch layouts, exactly as stored in the
 * HDF5 model file. The oneDNN engine re-lays them out per execution plan. */
#ifndef ISL_PARAMS_H
#define ISL_PARAMS_H

#include "arch.h"

#include <stdint.h>

#define ISL_MAX_NAME 64

typedef struct isl_bn_params {
    int channels;
    float *gamma, *beta, *mean, *var; /* [channels] each */
} isl_bn_params;

#define ISL_BN_EPSILON 1e-3

/* Channel c of a batch norm with its stored statistics, as y = scale * x + shift:
 * scale = gamma / sqrt(var + ISL_BN_EPSILON), shift = beta - mean * scale (in double,
 * then rounded). Prediction and training fold it with this one formula. */
void isl_bn_fold(const isl_bn_params *bn, int c, float *scale, float *shift);

typedef struct isl_module_params {
    isl_bn_params bn1;     /* [C] */
    float *expand_weight;  /* in/down: [E, 2C, k, k]; up: [2C, E, 4, 4] */
    isl_bn_params bn2;     /* [e_ch] */
    float *reduce_weight;  /* [R, 2 e_ch, 1, 1] */
} isl_module_params;

typedef struct isl_head_params {
    char name[ISL_MAX_NAME];
    int out_ch;            /* 256, or num_z * 256 for the autoencoder */
    isl_bn_params bn;      /* [trunk_ch] */
    float *weight;         /* [out_ch, 2 trunk_ch, 1, 1] */
    float *bias;           /* [out_ch] */
} isl_head_params;

typedef struct isl_params {
    isl_arch arch;
    char input_normalization[16]; /* "none" or "global" */
    double pixel_size_um;         /* of the training stacks, in micrometres; 0: unknown */
    char checksum[16];            /* "xxh3-128": read from a file that matched its record */
    float *projection_weight;     /* [16, nz, 1, 1] */
    float *projection_bias;       /* [16] */
    isl_module_params *modules;   /* [arch.num_modules] */
    int num_heads;                /* label heads, then the autoencoder (if any) last */
    isl_head_params *heads;
} isl_params;

/* A training pixel size: 0 (unknown) or in (0, ISL_MAX_PIXEL_SIZE_UM] micrometres. */
#define ISL_MAX_PIXEL_SIZE_UM 1e4
static inline int isl_pixel_size_valid(double um)
{
    return um == 0 || (um > 0 && um <= ISL_MAX_PIXEL_SIZE_UM); /* false for NaN */
}

/* Allocates zeroed parameters for the architecture (heads named, BN var = 1).
 * head_names lists label heads only; the autoencoder head is appended when
 * with_autoencoder. Returns 0 or -1 (out of memory / bad arguments). */
int isl_params_alloc(isl_params *p, int base_depth, int num_z, int num_label_heads,
                     const char *const *head_names, int with_autoencoder);
void isl_params_free(isl_params *p);

/* He-normal convolution weights, zero biases, BN gamma 1 beta 0 mean 0 var 1,
 * deterministic for a seed (splitmix64 + Box-Muller; platform independent). */
void isl_params_init_random(isl_params *p, uint64_t seed);

/* Initial weights of one head as isl_params_init_random draws them, from *state
 * (advanced). Bias and batch norm are left as they are. */
void isl_params_init_head(isl_head_params *hp, int trunk_ch, uint64_t *state);

/* Copies the projection and the modules of src into dst (same architecture). */
void isl_params_copy_trunk(isl_params *dst, const isl_params *src);
/* Copies head src's batch norm, weight and bias into dst (same channels; the name stays). */
void isl_params_copy_head(isl_head_params *dst, const isl_head_params *src, int trunk_ch);

/* Total number of stored floats (the model's parameter count). */
long long isl_params_count(const isl_params *p);
/* The same for an architecture before allocating it (-1 if it cannot be built): lets a
 * reader check a file's claims against its size first. */
long long isl_params_count_for(int base_depth, int num_z, int num_label_heads,
                               int with_autoencoder);

/* Calls fn for every parameter array with its HDF5 dataset path, shape and pointer,
 * in file order. Stops and returns fn's first non-zero result. */
typedef int (*isl_params_visit_fn)(void *user, const char *path, int rank, const int64_t *dims,
                                   float *data);
int isl_params_visit(isl_params *p, isl_params_visit_fn fn, void *user);

#endif
