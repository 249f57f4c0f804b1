/* The network in training mode on oneDNN: forward with batch statistics, keeping what the
 * backward pass needs, and backward to the gradient of every parameter.
 *
 * Design (docs/training.md): the whole batch runs at once as N-image tensors in oneDNN's
 * nChw16c layout with each tensor's real channel count (oneDNN pads channels to 16
 * itself). Concatenations are never materialized where a custom kernel can read the
 * parts: BNAct reads [expand conv, maxpool] as two tensors and writes [relu, tanh] as one.
 * Convolutions, transposed convolutions and max pooling are oneDNN primitives
 * (forward_training, backward_data, backward_weights; pooling with a workspace); batch
 * norm + relu/tanh, residuals, crops and the tower concatenation are custom kernels
 * (lib/train/train_kernels.c). The forward keeps every module's input, expand output and
 * maxpool output; BNAct outputs are recomputed in the backward pass (cheap elementwise
 * work instead of 3x the memory).
 *
 * Weights stay in the PyTorch layouts of isl_params; they are reordered into the formats
 * the primitives prefer by isl_train_net_load_weights, and weight gradients are reordered
 * back into an isl_params of the same shape. */
#ifndef ISL_TRAIN_NET_H
#define ISL_TRAIN_NET_H

#include "isl.h"
#include "params.h"
#include "train_kernels.h"

#include <oneapi/dnnl/dnnl.h>

typedef struct isl_train_net isl_train_net;

/* isl_train_net_create's flags. */
enum {
    ISL_NET_INPUT_GRAD = 1,       /* also the gradient with respect to the input (tests) */
    /* Keep BNAct outputs from the forward pass for the backward pass instead of
     * recomputing them there: the same results, bit for bit, less work, more memory. */
    ISL_NET_KEEP_MODULE_ACTIVATIONS = 2, /* the trunk's (useless if it is never trained) */
    ISL_NET_KEEP_HEAD_ACTIVATIONS = 4,
    ISL_NET_KEEP_ACTIVATIONS = ISL_NET_KEEP_MODULE_ACTIVATIONS | ISL_NET_KEEP_HEAD_ACTIVATIONS,
};

/* Builds the network for batches of `batch` crops of height x width (each 250 + 16m).
 * params and grad (same architecture and heads) must outlive the net and keep their
 * arrays: the net reads weights from params, writes running statistics into params and
 * gradients into grad. flags: ISL_NET_*. */
isl_status isl_train_net_create(isl_params *params, isl_params *grad, dnnl_engine_t engine,
                                 int batch, int height, int width, int flags,
                                 isl_train_net **out);
void isl_train_net_free(isl_train_net *net);
/* The implementation names of the net's oneDNN primitives (for tests): fills up to max,
 * returns how many there are. Without AVX-512 its convolutions and poolings work on
 * nChw8c copies of the nChw16c tensors (oneDNN 2.6 has AVX2 kernels for those only). */
int isl_train_net_impls(const isl_train_net *net, const char **impl, int max);

int isl_train_net_batch(const isl_train_net *net);
int isl_train_net_height(const isl_train_net *net);
int isl_train_net_width(const isl_train_net *net);

/* Batch statistics over a batch split between processes (see isl_tk_sync): sync->sum
 * adds up per-channel sums over all of them, global_n is the global batch. NULL (the
 * default): this process's batch is the batch. Copied; applies to later passes. */
void isl_train_net_set_sync(isl_train_net *net, const isl_tk_sync *sync);

/* Told during a backward pass which gradient arrays (pointers into grad's arrays) are
 * final, layer by layer in backward order, so that their reduction can start while the
 * pass goes on. Returns ISL_OK or an error, which ends the pass. */
typedef isl_status (*isl_train_net_ready_fn)(void *user, float *const *grads, int count);

/* Sets (fn NULL: clears) the callback of later backward passes. Arrays it is not told
 * about (inactive heads; the trunk after a frozen-trunk forward) are final at the end. */
void isl_train_net_set_ready(isl_train_net *net, isl_train_net_ready_fn fn, void *user);

/* Reorders params' weights into the primitives' formats; call after changing them. */
isl_status isl_train_net_load_weights(isl_train_net *net);
/* The same for the heads' weights only (the trunk's have not changed). */
isl_status isl_train_net_load_head_weights(isl_train_net *net);

/* The input batch, [batch, num_z, height, width] floats, filled by the caller. */
float *isl_train_net_input(isl_train_net *net);

/* How a forward pass normalizes, and what the following backward pass computes. */
typedef enum isl_net_mode {
    /* Training mode: every batch norm uses the statistics of this batch. */
    ISL_NET_BATCH_STATS,
    /* Every batch norm uses its stored population statistics, as prediction does, and
     * none is updated; the backward pass treats them as constants and computes every
     * gradient (isl_train_options_set_freeze_bn). */
    ISL_NET_STORED_STATS,
    /* As ISL_NET_STORED_STATS, but the backward pass computes only the active heads'
     * gradients (a frozen trunk). */
    ISL_NET_FROZEN_TRUNK
} isl_net_mode;

/* Dropout of every head's input (its BNAct output) in the following forward and backward
 * passes: rate 0 (the default) for none; the mask of head h is the one dropout.h draws
 * from isl_dropout_key(seed, step, h), the batch's crops being crops first_crop.. of the
 * global batch. */
void isl_train_net_set_dropout(isl_train_net *net, double rate, int whole_channels,
                               uint64_t seed, int64_t step, int64_t first_crop);

/* Stochastic depth in the following forward and backward passes (rate 0, the default:
 * none): module i, at depth d of the 32 on its path to the heads, skips its branch r
 * with probability p = rate d / 32 when isl_depth_skips(seed, step, i, p) (dropout.h),
 * else adds r / (1 - p) to its residual. */
void isl_train_net_set_stochastic_depth(isl_train_net *net, double rate, uint64_t seed,
                                        int64_t step);

/* Forward pass. Heads with active[h] == 0 are not computed (with batch statistics their
 * batch norm running statistics are still updated: they are statistics of the trunk).
 * bn_momentum is the weight of this batch in the running statistics: running =
 * (1 - m) running + m batch (variance unbiased); 0 leaves them untouched. It is ignored
 * unless mode is ISL_NET_BATCH_STATS. With stored statistics the logits are the model's
 * predictions. */
isl_status isl_train_net_forward(isl_train_net *net, const int *active, double bn_momentum,
                                 isl_net_mode mode);

/* Logits of an active head after the forward pass: [batch, channels, out_h, out_w]. */
const float *isl_train_net_logits(const isl_train_net *net, int head);
/* Where the caller puts d(loss)/d(logits) of an active head, shaped as its logits: the
 * same memory (the head outputs dominate memory for large crops; the loss can overwrite
 * each pixel's logits with their gradient in place). */
float *isl_train_net_dlogits(isl_train_net *net, int head);

/* Backward pass of the last forward (same active heads): overwrites every array of grad
 * with d(loss)/d(parameter) (zero for inactive heads and for running statistics; after an
 * ISL_NET_FROZEN_TRUNK forward also for the trunk, and the input gradient is not computed). */
isl_status isl_train_net_backward(isl_train_net *net);

/* d(loss)/d(input) after a backward pass, shaped as the input (input_grad nets only). */
const float *isl_train_net_input_grad(const isl_train_net *net);

#endif
