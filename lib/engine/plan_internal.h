/* Inside execution plans: the step list, the tensors of an isl_exec's buffers, the
 * builder helpers (plan_build.c) shared by the two network builders (plan_blocked.c:
 * nChw16c, FP32 and the AVX512-BF16 path; plan_nhwc.c: nhwc, the AMX path), which the
 * plan lifecycle (plan.c) chooses between, and the executor (plan_exec.c). */
#ifndef ISL_PLAN_INTERNAL_H
#define ISL_PLAN_INTERNAL_H

#include "error.h"
#include "layout.h"
#include "plan.h"

#include <oneapi/dnnl/dnnl.h>
#include <stddef.h>

/* Buffers of an isl_exec. Tensors live at byte offsets inside them. */
enum {
    BUF_INPUT,   /* nchw tile input */
    BUF_PROJ,    /* projection output */
    BUF_X0,      /* module inputs/outputs, ping-pong */
    BUF_X1,
    BUF_ACT,     /* BNAct outputs [relu half, tanh half] */
    BUF_E,       /* expand outputs [conv, maxpool] (nhwc: the conv only) */
    BUF_TMP,     /* down-module residual crops, up-module outputs before their crop */
    BUF_CAT,     /* the five towers, concatenated */
    BUF_HEAD,    /* head logits */
    BUF_HEAD_IN, /* the rows of the trunk's output a head chunk reads (chunked heads only) */
    BUF_SCRATCH, /* oneDNN scratchpad (user mode: one per exec makes plans shareable) */
    BUF_COUNT,
    BUF_EXTERNAL = BUF_COUNT, /* the caller's head output */
    BUF_NONE = -1
};

#define MAX_ARGS 8

typedef struct plan_arg {
    int arg;                  /* DNNL_ARG_*, or the tensor's index for kernel steps */
    int buf;                  /* BUF_*, or BUF_NONE for a persistent memory */
    size_t offset;            /* bytes into buf */
    dnnl_memory_desc_t md;    /* also read by the kernels: dims and (nhwc) strides */
    dnnl_memory_t persistent; /* weights, batch-norm statistics (owned by the plan) */
} plan_arg;

typedef enum { STEP_PRIMITIVE, STEP_KERNEL } step_kind;

struct plan_step;
/* A kernel step: runs on the exec's buffers (bufs[BUF_*]). */
typedef void (*step_fn)(const struct plan_step *s, char *const *bufs);

typedef struct plan_step {
    step_kind kind;
    dnnl_primitive_t prim;      /* STEP_PRIMITIVE */
    step_fn run;                /* STEP_KERNEL */
    int nargs;
    plan_arg args[MAX_ARGS];
    /* Parameters of kernel steps (each kernel documents which it reads). */
    size_t bytes;
    int src_h, src_w, channels;
    int k, stride;              /* nhwc BNAct: the max pooling of its second input */
    const int *keep;            /* up-sampling: [channels] 1 where the residual is kept */
    const isl_bn_padded *bn;    /* BNAct: folded batch norm (owned by the model's layout) */
    int bf16;                   /* BNAct: write bfloat16 */
    int blk;                    /* blocked kernels: channels per block (8 or 16) */
    int probabilities_only;     /* skipped when the caller wants logits */
} plan_step;

typedef struct step_list {
    int count, capacity;
    plan_step *steps;
} step_list;

/* A tensor in a buffer: channels c, size h x w, at a byte offset. Blocked tensors are
 * dense nChw16c or nChw8c (blk channels per block; c padded to 16); nhwc tensors may be views (crops, channel ranges) of a
 * larger one: cs and rs count the elements between pixels and between rows. */
typedef struct tref {
    int buf;
    size_t offset;
    int c, h, w;
    dnnl_data_type_t dt;
    int nhwc;
    size_t cs, rs;
    int blk;      /* blocked tensors: 16 (nChw16c) or 8 (nChw8c) */
} tref;

struct isl_plan {
    dnnl_engine_t engine;
    int in_h, in_w, out_h, out_w, num_z;
    isl_precision precision;
    int nhwc;                 /* the AMX layout (plan_nhwc.c) */
    int blk;                  /* blocked layout: 16 (nChw16c) with AVX-512, else 8 (nChw8c) */
    dnnl_data_type_t act_dt;  /* BNAct outputs, the inputs of every convolution but the first */
    size_t buf_bytes[BUF_COUNT];
    step_list trunk;
    tref trunk_out;           /* where the last module wrote */
    tref head_in;             /* the heads' input: trunk_out, or a chunk of its rows */
    int head_rows;            /* heads run on this many rows of trunk_out at a time */
    int num_heads;
    step_list *heads;
    int *head_out_ch;
    int **keep_masks;         /* owned upsample masks, one per up module */
    int num_keep_masks;
};

typedef struct builder {
    isl_plan *plan;
    step_list *list;
    int estimate_only;   /* only track buffer sizes */
} builder;

isl_status isl_dnnl_fail(dnnl_status_t s, const char *what);

#define DNNL_TRY(call)                                   \
    do {                                                 \
        dnnl_status_t dnnl_try_s_ = (call);              \
        if (dnnl_try_s_ != dnnl_success)                 \
            return isl_dnnl_fail(dnnl_try_s_, #call);    \
    } while (0)

/* Tensors. */
size_t isl_dt_size(dnnl_data_type_t dt);
tref isl_tensor(int buf, size_t offset, int c, int h, int w, dnnl_data_type_t dt, int blk);
tref isl_tensor_nhwc(int buf, size_t offset, int c, int h, int w, dnnl_data_type_t dt);
dnnl_memory_desc_t isl_tref_md(tref t);
size_t isl_tref_end(tref t); /* bytes from the buffer's start past the last element */

/* Builder steps. */
void isl_need(builder *b, tref t);
isl_status isl_push_step(builder *b, plan_step **out);
isl_status isl_push_kernel(builder *b, step_fn run, plan_step **out);
void isl_arg_tensor(plan_step *s, int arg, tref t, const dnnl_memory_desc_t *md);
void isl_arg_persistent(plan_step *s, int arg, dnnl_memory_t mem);
/* Attributes: user-mode scratchpad, then optional post-ops (sum, eltwise). NULL on failure. */
dnnl_primitive_attr_t isl_scratchpad_attr(int with_sum, dnnl_alg_kind_t eltwise);
isl_status isl_make_primitive(builder *b, const_dnnl_op_desc_t op_desc, int with_sum,
                              dnnl_alg_kind_t eltwise, dnnl_primitive_desc_t *pd_out,
                              const char *what);
/* Creates the step's primitive from pd (consumed) and adds its scratchpad argument. */
isl_status isl_finish_primitive(builder *b, plan_step *st, dnnl_primitive_desc_t pd);
/* The reorder src -> dst (descriptions of src's and dst's memory). */
isl_status isl_add_reorder(builder *b, tref src, const dnnl_memory_desc_t *src_md, tref dst,
                           const dnnl_memory_desc_t *dst_md);

/* In-place softmax over axis 1 of t viewed as md (the 256 bins of each distribution);
 * skipped when the caller asks for logits. */
isl_status isl_add_softmax(builder *b, tref t, const dnnl_memory_desc_t *md);

/* Layers shared by both layouts. */
typedef enum { CONV, DECONV } conv_kind;
/* dst (+)= conv(src) with host weights in oihw (padded), optional bias; the formats are
 * src's and dst's (bf16 sources: bf16 weights, f32 accumulation). */
isl_status isl_add_conv(builder *b, conv_kind kind, tref src, tref dst, int k, int stride,
                        const float *weights, const float *bias, int accumulate);
/* The projection: 1x1 conv with bias from the nchw input to 16 channels (proj's blocked
 * layout; inputs of a block of planes or more are reordered to it first). */
isl_status isl_add_projection(builder *b, const isl_params *p, tref input, tref proj);
/* Mask of the up module's kept residual channels (owned by the plan). */
isl_status isl_keep_mask(builder *b, const isl_chmap *out, const int **mask);

/* The two networks, trunk and one head: nChw16c (plan_blocked.c), nhwc (AMX, plan_nhwc.c). */
isl_status isl_blocked_build_trunk(builder *b, const isl_params *p, const isl_layout *l);
isl_status isl_blocked_build_head(builder *b, const isl_layout *l, int h, int out_ch);
isl_status isl_nhwc_build_trunk(builder *b, const isl_params *p, const isl_layout *l);
isl_status isl_nhwc_build_head(builder *b, const isl_layout *l, int h, int out_ch);

/* Spatial size of a module's output (before an up module's crop). */
int isl_module_out_side(const isl_module_arch *a, int n);

#endif
