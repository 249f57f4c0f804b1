/* Network architecture: the module list and channel depths that the spec derives from
 * (base depth, num_z). Pure arithmetic, no weights, no oneDNN. */
#ifndef ISL_ARCH_H
#define ISL_ARCH_H

#include "isl.h" /* ISL_NUM_CLASSES and the tile geometry */

#define ISL_PROJECTION_DEPTH 16
#define ISL_PATCH_INPUT ISL_TILE_MIN                      /* canonical input side */
#define ISL_PATCH_OUTPUT (ISL_TILE_MIN - ISL_TILE_CONTEXT) /* its output side, 8 */
#define ISL_STRIDE ISL_TILE_STEP                          /* 250 + 16m -> 8 + 16m */
#define ISL_NUM_TOWERS 5
#define ISL_UPPER_TOWER 5    /* tower index of the upper tower */
#define ISL_UPPER_MODULES 14

typedef enum isl_module_kind { ISL_MODULE_IN, ISL_MODULE_DOWN, ISL_MODULE_UP } isl_module_kind;

typedef struct isl_module_arch {
    isl_module_kind kind;
    int tower;        /* 0..4, or ISL_UPPER_TOWER */
    int in_ch;        /* C: channels of x */
    int expand_ch;    /* E after the module rules (channels of the expand conv) */
    int reduce_ch;    /* R after the module rules */
    int out_ch;       /* max(R, C) for in/down, min(R, C) for up */
    int e_ch;         /* channels of e: E + C for in/down (maxpool concat), E for up */
    int kernel;       /* 3 for in, 4 for down/up */
    int crop_after;   /* 1 when the spec crops 4 pixels (2 per side) after this module */
    int size_in;      /* canonical side in the 250 -> 8 patch network */
    int size_out;     /* canonical side after the module (before crop_after) */
} isl_module_arch;

typedef struct isl_arch {
    int base_depth;
    int num_z;
    int num_modules;
    isl_module_arch *modules;             /* forward order, as in the model file */
    int tower_first[ISL_NUM_TOWERS + 1];  /* first module index of each tower */
    int tower_count[ISL_NUM_TOWERS + 1];
    int tower_out_ch[ISL_NUM_TOWERS];     /* channels each tower contributes to the concat */
    int trunk_ch;                         /* channels entering the heads */
} isl_arch;

extern const int isl_tower_start_size[ISL_NUM_TOWERS]; /* {72, 102, 146, 202, 250} */

/* Fills *a for the given hyperparameters. Returns 0, or -1 (out of memory / bad args). */
int isl_arch_build(isl_arch *a, int base_depth, int num_z);
void isl_arch_free(isl_arch *a);

/* depths(base, size) of the spec. */
void isl_arch_depths(int base, int size, int *expand, int *reduce);

/* Parameter counts, as stored in the model file (BN statistics included). */
long long isl_arch_module_parameters(const isl_module_arch *m);
long long isl_arch_head_parameters(const isl_arch *a, int out_ch);

/* Multiply-accumulates of one pass over an (in_h x in_w) input (each 250 + 16m) with heads
 * of the given output channels: the network's real work, without isl's channel padding. */
double isl_arch_macs(const isl_arch *a, int in_h, int in_w, int num_heads, const int *head_ch);

/* Output side for an input side along one dimension: 250 + 16m -> 8 + 16m, else -1. */
int isl_arch_output_side(int input_side);

#endif
