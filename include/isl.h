/*
 * isl: In Silico Labeling (Christiansen et al., Cell 2018) as a C library.
 *
 * A deep network predicts fluorescence labels (nuclei, dendrites, axons, ...) from an
 * unlabeled transmitted-light z-stack, as a per-pixel probability distribution over 256
 * intensity bins. This header is the whole public API.
 *
 * Conventions
 * - Every fallible function returns an isl_status; ISL_OK is 0. On failure, a readable
 *   message for the calling thread is available from isl_last_error() until the next
 *   failing call on that thread. (The message is thread-local rather than per handle
 *   because one model is meant to be shared by many predicting threads.)
 * - Handles are opaque, created through out-parameters and released by the matching
 *   *_free function, which accepts NULL. The caller owns what it creates.
 * - Threads: a loaded isl_model is immutable; any number of threads may call the
 *   isl_predict_* functions on it concurrently (each call uses its own buffers).
 *   isl_model_save may run concurrently with predictions. Options objects and trainers
 *   belong to one thread at a time.
 * - Images are row-major; stacks are plane-major (z, y, x). Sizes are in pixels.
 * - The library never prints, exits or aborts.
 */
#ifndef ISL_H
#define ISL_H

#include <stddef.h>
#include <stdint.h>

#include "isl_version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(ISL_BUILDING_LIBRARY) && defined(__GNUC__)
#define ISL_API __attribute__((visibility("default")))
#else
#define ISL_API
#endif

/* ---------------------------------------------------------------------------------- */
/* Versions and errors                                                                 */
/* ---------------------------------------------------------------------------------- */

/** Run-time library version, ISL_VERSION_NUMBER of the build (major*10000+minor*100+patch). */
ISL_API int isl_version_number(void);
/** Run-time library version as "major.minor.patch". */
ISL_API const char *isl_version_string(void);

/** Status codes. Values are stable across releases. */
typedef enum isl_status {
    ISL_OK = 0,
    ISL_ERROR_INVALID_ARGUMENT = 1, /**< NULL handle, bad size, unknown name, ... */
    ISL_ERROR_OUT_OF_MEMORY = 2,
    ISL_ERROR_IO = 3,               /**< a file cannot be opened, read or written */
    ISL_ERROR_FORMAT = 4,           /**< a file is corrupt, truncated or not in the expected layout */
    ISL_ERROR_SHAPE = 5,            /**< dimensions do not fit each other or the model */
    ISL_ERROR_VALUE = 6,            /**< NaN, infinity or an out-of-range value */
    ISL_ERROR_UNSUPPORTED = 7,      /**< valid but not supported (sample format, CPU feature) */
    ISL_ERROR_CANCELLED = 8,        /**< a progress callback asked to stop */
    ISL_ERROR_BACKEND = 9,          /**< oneDNN, HDF5 or libtiff failed unexpectedly */
    ISL_ERROR_INTERNAL = 10,        /**< a bug in isl; please report it */
    ISL_ERROR_DAMAGED = 11          /**< a file's content does not match its checksum (docs/security.md) */
} isl_status;

/** Static description of a status code ("invalid argument", ...). Never NULL. */
ISL_API const char *isl_status_string(isl_status status);

/** Detailed message of the calling thread's last failure ("" if none). Never NULL. */
ISL_API const char *isl_last_error(void);

/* ---------------------------------------------------------------------------------- */
/* Network constants                                                                   */
/* ---------------------------------------------------------------------------------- */

/* The geometry of the network (docs/network-spec.md): an input tile of side
 * ISL_TILE_MIN + ISL_TILE_STEP * m (m >= 0) predicts a centred output of side
 * tile - ISL_TILE_CONTEXT; each output pixel sees ISL_TILE_CONTEXT / 2 input pixels of
 * context on every side. */
#define ISL_TILE_MIN 250     /**< smallest input tile side (its output is 8 x 8) */
#define ISL_TILE_STEP 16     /**< tile sides grow in steps of 16 */
#define ISL_TILE_CONTEXT 242 /**< input side minus output side of a tile */
/** Bins of every predicted per-pixel distribution (intensities 0..255). */
#define ISL_NUM_CLASSES 256
/** Name of the autoencoder head (it predicts the input stack itself); always last. */
#define ISL_AUTOENCODER_NAME "autoencoder"

/* ---------------------------------------------------------------------------------- */
/* Models                                                                              */
/* ---------------------------------------------------------------------------------- */

/** A network with its weights: architecture hyperparameters, label heads and the
 *  autoencoder head. Immutable once created or loaded. */
typedef struct isl_model isl_model;

/** Hyperparameters of a new model. Initialise with isl_model_config_init(), then set
 *  fields; struct_size lets the struct grow without breaking the ABI. */
typedef struct isl_model_config {
    size_t struct_size;               /**< sizeof(isl_model_config), set by init */
    int base_depth;                   /**< 400 in the paper; smaller (e.g. 100) trains faster */
    int num_z;                        /**< transmitted-light planes per input (13 in the paper) */
    int num_heads;                    /**< number of label heads */
    const char *const *head_names;    /**< [num_heads] label names, e.g. "dapi_confocal" */
    uint64_t seed;                    /**< seed of the random initial weights */
    const char *input_normalization;  /**< "none" (default) or "global" */
} isl_model_config;

/** Fills *config with defaults: base 400, 13 planes, no heads, seed 0, "none". */
ISL_API void isl_model_config_init(isl_model_config *config);

/** Creates a model with random weights (He initialisation; batch norm identity) and an
 *  autoencoder head. */
ISL_API isl_status isl_model_create(const isl_model_config *config, isl_model **out);

/** Loads and validates a model file (format "isl-model", version 1, see docs/model-format.md).
 *  The first problem found is reported with its dataset path. */
ISL_API isl_status isl_model_load(const char *path, isl_model **out);

/** Writes the model atomically: to a temporary file beside path, then renamed over it. */
ISL_API isl_status isl_model_save(const isl_model *model, const char *path);

/** Releases a model. NULL is a no-op. The model must not be in use by other threads. */
ISL_API void isl_model_free(isl_model *model);

ISL_API int isl_model_base_depth(const isl_model *model);
ISL_API int isl_model_num_z(const isl_model *model);
/** Number of heads: the label heads, then the autoencoder head (if the model has one). */
ISL_API int isl_model_num_heads(const isl_model *model);
/** Name of head i (0 <= i < isl_model_num_heads), or NULL. The autoencoder is "autoencoder". */
ISL_API const char *isl_model_head_name(const isl_model *model, int head);
/** Index of the head called name, or -1. */
ISL_API int isl_model_head_index(const isl_model *model, const char *name);
/** Output channels of a head: 256 for a label, num_z * 256 for the autoencoder; 0 if invalid. */
ISL_API int isl_model_head_channels(const isl_model *model, int head);
/** Number of stored parameters (weights, biases and batch-norm statistics). */
ISL_API int64_t isl_model_parameter_count(const isl_model *model);
/** "none" or "global". */
ISL_API const char *isl_model_input_normalization(const isl_model *model);
/** "xxh3-128" if the model was loaded from a file whose content matched the checksum isl
 *  stored in it (files written by isl >= 0.7); "" if the file had none (other programs,
 *  older isl) or the model was not loaded from a file (docs/security.md). NULL model: NULL. */
ISL_API const char *isl_model_checksum(const isl_model *model);
/** Multiply-accumulates of one forward pass of a height x width input tile (each side
 *  250 + 16m) through the trunk and the `count` heads listed by index: the network's
 *  arithmetic (for throughput figures), without isl's internal channel padding. -1 for
 *  an invalid size or head. */
ISL_API double isl_model_macs(const isl_model *model, int height, int width, int count,
                              const int *heads);
/** Model file format version this library writes (and the newest it reads). */
ISL_API int isl_model_format_version(void);

/** Transfer learning (the paper's condition E, Figure S5): a copy of `model` with `count`
 *  new label heads appended after its label heads (before the autoencoder), with random
 *  initial weights drawn from `seed` as isl_model_create draws head weights. The trunk and the
 *  existing heads are copied unchanged (they predict exactly as before). A new head's
 *  batch norm starts at gamma 1, beta 0 with the population statistics of the model's
 *  first head (every head normalizes the same trunk output). Names follow
 *  isl_model_create's rules and must be new and distinct ("autoencoder" is reserved);
 *  count >= 1. See docs/training.md, "Transfer learning". */
ISL_API isl_status isl_model_add_heads(const isl_model *model, int count,
                                       const char *const *names, uint64_t seed,
                                       isl_model **out);

/* ---------------------------------------------------------------------------------- */
/* Export                                                                              */
/* ---------------------------------------------------------------------------------- */

/** Writes the network as an ONNX model (opset 13; docs/interop.md), atomically. The graph
 *  is isl_predict_tile's: input "input" [N, num_z, H, W] (each side 250 + 16m, scaled and
 *  normalized as for isl_predict_tile), and per label head an output named after the head
 *  with its 256 logits [N, 256, H - 242, W - 242]. Batch norm is folded for inference;
 *  the autoencoder head is left out. Metadata props "isl.num_z" and
 *  "isl.input_normalization" carry what a caller needs to prepare the input. */
ISL_API isl_status isl_model_export_onnx(const isl_model *model, const char *path);

/* ---------------------------------------------------------------------------------- */
/* Prediction options                                                                  */
/* ---------------------------------------------------------------------------------- */

/** Per-pixel statistics of a predicted distribution. */
typedef enum isl_stat {
    ISL_STAT_MEDIAN = 0,    /**< smallest k with cumulative probability >= 0.5, over 255 (the paper's images) */
    ISL_STAT_MEAN = 1,      /**< sum_k p_k k / 255 */
    ISL_STAT_MODE = 2,      /**< argmax_k p_k, over 255 */
    ISL_STAT_STD = 3,       /**< standard deviation of k / 255 */
    ISL_STAT_ENTROPY = 4,   /**< -sum p_k ln p_k / ln 256: 0 = certain, 1 = uniform */
    ISL_STAT_P_NONZERO = 5, /**< P(k > 0) = 1 - p_0 */
    ISL_STAT_COUNT = 6
} isl_stat;

/** Name of a statistic ("median", ...), or NULL. */
ISL_API const char *isl_stat_name(isl_stat stat);
/** Statistic by name, or -1. */
ISL_API int isl_stat_from_name(const char *name);

/** The predicted standard deviation (ISL_STAT_STD, intensity in [0, 1]) above which
 *  isl_uncertain_mask marks a pixel as not to be trusted. Measured on out-of-fold
 *  predictions (docs/training.md, "Where a prediction cannot be trusted"): almost every
 *  pixel with an error above 0.1 lies above it, and the pixels below it have small errors. */
#define ISL_UNCERTAIN_STD 0.15f

/** Marks the pixels of a prediction that cannot be trusted: mask[i] = 1 where std[i] (the
 *  ISL_STAT_STD image of a head, count pixels) exceeds threshold or is NaN, else 0; mask may
 *  be NULL. Stores the number of such pixels in *uncertain. threshold must be positive;
 *  ISL_UNCERTAIN_STD is the measured default. */
ISL_API isl_status isl_uncertain_mask(const float *std, size_t count, float threshold,
                                      unsigned char *mask, size_t *uncertain);

/** Writes the one-line summary of how much of a field cannot be trusted into buf (size
 *  bytes, NUL-terminated), as `isl predict --preview` prints it and the bindings return it:
 *  "uncertain (predicted std > 0.15): dapi_confocal 12.3%, map2_confocal 4.0% of the field".
 *  For each of count >= 1 heads: names[h] and 100 uncertain[h] / pixels with one decimal,
 *  uncertain[h] being the count isl_uncertain_mask gave for that head over `pixels`
 *  pixels with `threshold` (positive; printed with two decimals). ISL_ERROR_INVALID_ARGUMENT
 *  when buf is too small (the message says how many bytes the line needs; the length of
 *  the names plus 32 bytes per head and 128 more always suffice). */
ISL_API isl_status isl_uncertainty_summary(int count, const char *const *names,
                                           const size_t *uncertain, size_t pixels,
                                           float threshold, char *buf, size_t size);

typedef enum isl_precision {
    ISL_PRECISION_FP32 = 0, /**< default */
    ISL_PRECISION_BF16 = 1  /**< bfloat16 convolution inputs, FP32 accumulation and elsewhere
                                 (CPUs with AVX512-BF16 or AMX; faster with AMX). Results
                                 differ from FP32 by bfloat16 rounding; speed and error are
                                 measured in docs/performance.md */
} isl_precision;

/** Progress of long work: called after each unit of work with done <= total.
 *  Return non-zero to cancel; the running call then returns ISL_ERROR_CANCELLED. */
typedef int (*isl_progress_fn)(void *user_data, int64_t done, int64_t total);

/** Receives finished output rows as prediction streams through an image: rows
 *  [y0, y0 + rows) of statistic `stat` of head `head`, `rows * width` floats (for the
 *  autoencoder head, `num_z * rows * width`, plane-major). Rows arrive in order, each
 *  exactly once. Return non-zero to cancel. */
typedef int (*isl_rows_fn)(void *user_data, int head, isl_stat stat, int y0, int rows,
                           int width, const float *data);

/** Options of a prediction. Defaults are sensible; set only what you need. */
typedef struct isl_predict_options isl_predict_options;

ISL_API isl_status isl_predict_options_create(isl_predict_options **out);
ISL_API void isl_predict_options_free(isl_predict_options *options);
/** Input side of the tiles of whole-image predictions: 266 + 16m (250 + 16m with m >= 1,
 *  since a 250 tile yields only 8 of every 16 output pixels). 0 (default): the shape that
 *  needs the least arithmetic within the memory limit. */
ISL_API isl_status isl_predict_options_set_tile_size(isl_predict_options *o, int input_side);
/** Bound on the working memory of one prediction, in bytes (default 1.75 GiB). */
ISL_API isl_status isl_predict_options_set_memory_limit(isl_predict_options *o, size_t bytes);
/** Threads used by the calling thread's prediction (0 = all cores, the default). */
ISL_API isl_status isl_predict_options_set_threads(isl_predict_options *o, int threads);
ISL_API isl_status isl_predict_options_set_precision(isl_predict_options *o, isl_precision p);
/** Selects the heads to compute (by index); by default all label heads, no autoencoder. */
ISL_API isl_status isl_predict_options_set_heads(isl_predict_options *o, int count, const int *heads);
/** Selects the statistics to compute; by default only ISL_STAT_MEDIAN. */
ISL_API isl_status isl_predict_options_set_stats(isl_predict_options *o, int count, const isl_stat *stats);
ISL_API isl_status isl_predict_options_set_progress(isl_predict_options *o, isl_progress_fn fn, void *user_data);
/** isl_predict_tile: write probabilities (softmax) instead of logits. */
ISL_API isl_status isl_predict_options_set_probabilities(isl_predict_options *o, int enable);
/** A flag another thread may set (to non-zero) to cancel a running prediction; it is read
 *  between tiles and the call then returns ISL_ERROR_CANCELLED. NULL removes it. */
ISL_API isl_status isl_predict_options_set_cancel_flag(isl_predict_options *o,
                                                       const volatile int *flag);
/** The memory limit in bytes and the thread count the options hold; with o NULL, the
 *  library's defaults (read by the CLI's help instead of repeating them). */
ISL_API size_t isl_predict_options_get_memory_limit(const isl_predict_options *o);
ISL_API int isl_predict_options_get_threads(const isl_predict_options *o);

/** Most models one prediction averages: the predicting model and 15 others. */
#define ISL_MAX_ENSEMBLE 16
/** Ensemble prediction: every prediction made with these options averages the probability
 *  distributions of the predicting model and these `count` other models (0 removes them),
 *  then computes the statistics of the mean distribution. Independently trained models
 *  err differently, so their mean predicts better than each (README, "The bundled
 *  model"). The others must read the same number of planes with the same input
 *  normalization and have every selected head (matched by name, not index). The options
 *  keep the pointers, not the models: keep them loaded while the options are in use.
 *  Each tile runs every model, so time grows with the count; working memory grows too
 *  (whole images keep every model's tile; the automatic tile size accounts for it). With
 *  an ensemble, isl_predict_tile's logits are the log of the mean probabilities. */
ISL_API isl_status isl_predict_options_set_ensemble(isl_predict_options *o, int count,
                                                    const isl_model *const *models);
/** Flip averaging (test-time augmentation): every prediction made with these options also
 *  runs each model on the input's three mirror images (left-right, up-down and both),
 *  mirrors their outputs back and averages the four probability distributions (with an
 *  ensemble: 4 per model), then computes the statistics of the mean. The network is not
 *  exactly mirror-symmetric, and training with flips makes its mirror-image predictions
 *  err differently: on the bundled model's held-out rows the median's Pearson r went from
 *  0.677 / 0.752 / 0.467 to 0.717 / 0.789 / 0.481 (README). Costs 4x the time, and whole
 *  images keep four tiles' trunks (the automatic tile size accounts for it). Default 0. */
ISL_API isl_status isl_predict_options_set_flip_average(isl_predict_options *o, int enable);

/* ---------------------------------------------------------------------------------- */
/* Prediction                                                                          */
/* ---------------------------------------------------------------------------------- */

/** Sample types of input stacks. Integers are scaled to [0, 1] (uint8 / 255, uint16 / 65535);
 *  float32 is taken as is. */
typedef enum isl_dtype { ISL_DTYPE_U8 = 0, ISL_DTYPE_U16 = 1, ISL_DTYPE_F32 = 2 } isl_dtype;

/** A transmitted-light z-stack in memory: num_z planes of height x width, plane-major. */
typedef struct isl_stack {
    const void *data;
    isl_dtype dtype;
    int num_z, height, width;
} isl_stack;

/** Runs the network once on one tile without padding. input: num_z x height x width floats
 *  (already scaled and normalized), height and width each 250 + 16m. For every head h with
 *  outputs[h] != NULL, writes isl_model_head_channels(h) x (height - 242) x (width - 242)
 *  floats (channel-major, as PyTorch): logits, or probabilities if the option is set.
 *  outputs has isl_model_num_heads entries. options may be NULL. */
ISL_API isl_status isl_predict_tile(const isl_model *model, const isl_predict_options *options,
                                    const float *input, int height, int width,
                                    float *const *outputs);

/** Predicts a whole image of any size: mirror-pads it as the spec says, runs it in tiles
 *  that bound memory (the result does not depend on the tile size) and writes, for each
 *  selected head and statistic, a height x width image (the autoencoder head:
 *  num_z x height x width) into outputs[head * ISL_STAT_COUNT + stat]. The outputs array
 *  has isl_model_num_heads * ISL_STAT_COUNT entries; entries not selected may be NULL. */
ISL_API isl_status isl_predict_image(const isl_model *model, const isl_predict_options *options,
                                     const isl_stack *input, float *const *outputs);

/** As isl_predict_image, but streams finished rows to fn instead of holding whole output
 *  images: memory stays bounded for images of any size (e.g. 10,000 x 10,000). */
ISL_API isl_status isl_predict_image_rows(const isl_model *model, const isl_predict_options *options,
                                          const isl_stack *input, isl_rows_fn fn, void *user_data);

/** Statistics of distributions given as logits: `count` distributions of `classes`
 *  logits each, laid out with `stride` floats between consecutive classes of one
 *  distribution and 1 between distributions (i.e. a channel-major [classes, count] block
 *  when stride == count). Writes out[i] for i < count. */
ISL_API isl_status isl_stats(const float *logits, int classes, int64_t count, int64_t stride,
                             isl_stat stat, float *out);

/* ---------------------------------------------------------------------------------- */
/* Training                                                                            */
/* ---------------------------------------------------------------------------------- */

/* Training follows the paper (docs/training.md): Adam on the per-pixel 256-bin
 * cross-entropy of every label head, masked where a label is unknown, plus the
 * autoencoder head predicting the input; batch normalization uses the statistics of the
 * batch. A trainer owns a copy of the weights and the optimizer state. It belongs to one
 * thread at a time (no call on a trainer may run concurrently with another on the same
 * trainer); separate trainers are independent. Its oneDNN work uses the calling thread's
 * OpenMP threads (see isl_train_options_set_threads). */

/** Training hyperparameters. Defaults are the paper's; set only what you need. */
typedef struct isl_train_options isl_train_options;

ISL_API isl_status isl_train_options_create(isl_train_options **out);
ISL_API void isl_train_options_free(isl_train_options *options);
/** Adam learning rate (default 1e-4). */
ISL_API isl_status isl_train_options_set_learning_rate(isl_train_options *o, double rate);
/** From step `step` on (1-based; 0 = never, the default) use `rate` instead (paper: 1e-5). */
ISL_API isl_status isl_train_options_set_rate_drop(isl_train_options *o, int64_t step, double rate);
/** Adam betas and epsilon (default 0.9, 0.999, 1e-8). */
ISL_API isl_status isl_train_options_set_adam(isl_train_options *o, double beta1, double beta2,
                                              double epsilon);
/** Decoupled weight decay (AdamW, Loshchilov and Hutter 2019; default 0: none): each step
 *  first shrinks every convolution's weights by the factor 1 - rate * decay (rate: the
 *  step's learning rate), then takes the Adam step; biases and batch-norm gamma and beta
 *  do not decay. Equals torch.optim.AdamW(weight_decay=decay) on the weights. Not kept
 *  in checkpoints: give it again when resuming. */
ISL_API isl_status isl_train_options_set_weight_decay(isl_train_options *o, double decay);
/** Dropout of every head's input while training (Srivastava et al. 2014; default 0:
 *  none): each value of a head's input (the batch-normalized trunk features, after ReLU
 *  and tanh) is zeroed with probability `rate` and the rest scaled by 1 / (1 - rate), so
 *  prediction, which never drops, needs no change. whole_channels != 0 drops whole
 *  channels of an image instead of single values (spatial dropout, Tompson et al. 2015).
 *  Each head draws its own mask, a function of the seed (isl_train_options_set_seed),
 *  the step and the head only: a resumed run drops what an uninterrupted one would.
 *  rate in [0, 0.9]. Not kept in checkpoints: give it again when resuming. */
ISL_API isl_status isl_train_options_set_dropout(isl_train_options *o, double rate,
                                                 int whole_channels);
/** Stochastic depth while training (Huang et al. 2016; default 0: none): in each step,
 *  each of the trunk's modules skips its expand-reduce branch (keeping only its residual
 *  path) with probability p = rate * d / 32, d being its depth on the path from the
 *  projection to the heads (1..18 in its tower, 19..32 in the upper tower); a branch that
 *  runs is scaled by 1 / (1 - p), so prediction, which never skips, needs no change. One
 *  decision per module and step for the whole batch, a function of the seed
 *  (isl_train_options_set_seed), the step and the module only: a resumed run, and the
 *  processes of a data-parallel run, skip alike. Batch-norm statistics estimated by
 *  isl_trainer_estimate_bn use every module. rate in [0, 0.9]. Not kept in checkpoints:
 *  give it again when resuming. */
ISL_API isl_status isl_train_options_set_stochastic_depth(isl_train_options *o, double rate);
/** Keeps every batch norm's output (after its activation) from the forward pass for the
 *  backward pass instead of recomputing it there (default 0: recompute). The results are
 *  the same bit for bit; a step takes about 5% less time and about 55% more working
 *  memory (base 60, crops of 378, one thread: 1.8 GB instead of 1.2; docs/performance.md,
 *  "Kept activations"); with a frozen trunk only the heads keep theirs. Not kept in
 *  checkpoints: a run resumed with or without it continues the same. */
ISL_API isl_status isl_train_options_set_keep_activations(isl_train_options *o, int keep);
/** Weight w of the label loss in the total w * label + (1 - w) * autoencoder (default 0.5).
 *  1 trains without the autoencoder head (models without one need 1). */
ISL_API isl_status isl_train_options_set_label_weight(isl_train_options *o, double weight);
/** Decay of the batch-norm moving averages kept during training (default 0.99, which
 *  every run in docs/training.md used; the paper's 0.999 needs tens of thousands of
 *  steps to forget the initial statistics). See also isl_trainer_estimate_bn. */
ISL_API isl_status isl_train_options_set_bn_decay(isl_train_options *o, double decay);
/** Threads of the calling thread's training work (0 = all cores, the default). */
ISL_API isl_status isl_train_options_set_threads(isl_train_options *o, int threads);
/** Seed of the trainer's random generator (isl_trainer_random; default 0). */
ISL_API isl_status isl_train_options_set_seed(isl_train_options *o, uint64_t seed);
/** Freezes the trunk (every layer before the heads, batch-norm statistics included) so
 *  that only the heads learn: for adding a label head to a trained model with little
 *  data (isl_model_add_heads). Default 0: everything trains. When frozen, every batch
 *  norm (trunk and heads) uses its stored population statistics, as prediction does,
 *  and no statistic is updated; the heads' weights, biases and batch-norm gamma/beta
 *  train as usual; the trunk's Adam moments are left as they are; and
 *  isl_trainer_estimate_bn changes nothing. Steps cost about a third of full ones. */
ISL_API isl_status isl_train_options_set_freeze_trunk(isl_train_options *o, int freeze);
/** Freezes the batch-norm population statistics: every batch norm normalizes with its
 *  stored statistics, as prediction does, and none is updated; every weight (gamma and
 *  beta included) still trains, the gradients treating the statistics as constants.
 *  Default 0: batch statistics, as the paper trains. The network then learns to work
 *  with the statistics it predicts with, which batch statistics of small batches of
 *  large crops do not guarantee (docs/training.md). Use it from an initial model after
 *  isl_trainer_estimate_bn on training crops (the bundled model's recipe), or for a last
 *  phase from a model whose statistics are already good. isl_trainer_estimate_bn still
 *  re-estimates the statistics when called. freeze_trunk takes precedence. */
ISL_API isl_status isl_train_options_set_freeze_bn(isl_train_options *o, int freeze);
/** From step `step` on (1-based; 0 = never, the default) the trainer also keeps the
 *  running mean of every trained array (weights, biases, gamma, beta) over the models
 *  after each step: weight averaging, as in stochastic weight averaging.
 *  isl_trainer_average_model returns it; checkpoints keep it (and a trainer loaded
 *  without averaging ignores a checkpoint's average). The batch-norm statistics
 *  of the average are the current ones, which fit it with frozen statistics
 *  (isl_train_options_set_freeze_bn); with batch statistics, re-estimate them for the
 *  averaged weights. On one field, held-out accuracy of single steps swings widely and
 *  the average holds it (docs/training.md). */
ISL_API isl_status isl_train_options_set_average_from(isl_train_options *o, int64_t step);
/** The values the options hold; with o NULL, the library's defaults (the only place they
 *  are set: the CLI's help and the bindings read them here instead of repeating them). */
ISL_API double isl_train_options_get_learning_rate(const isl_train_options *o);
ISL_API double isl_train_options_get_label_weight(const isl_train_options *o);
ISL_API double isl_train_options_get_bn_decay(const isl_train_options *o);
ISL_API int isl_train_options_get_threads(const isl_train_options *o);
ISL_API uint64_t isl_train_options_get_seed(const isl_train_options *o);

/** One batch of training crops, plain arrays (row-major, batch outermost). Crops are
 *  height x width, each side 250 + 16m; outputs are (height - 242) x (width - 242),
 *  the center of the crop. L is the number of label heads (isl_model_num_heads minus
 *  the autoencoder), in the model's head order. */
typedef struct isl_train_batch {
    int batch_size;          /**< B >= 1 */
    int height, width;       /**< crop size */
    const float *inputs;     /**< [B, num_z, height, width], values in [0, 1] */
    const float *targets;    /**< [B, L, out_h, out_w] in [0, 1] (quantized to round(255 v));
                                  NULL: no label known (trains the autoencoder alone) */
    const uint8_t *masks;    /**< [B, L, out_h, out_w], nonzero where the label is known;
                                  NULL: every target pixel is known */
} isl_train_batch;

/** A model being trained: weights, batch-norm moving averages, Adam state, step count
 *  and a random generator. */
typedef struct isl_trainer isl_trainer;

/** Starts training from the weights of `init` (copied; init is not modified and may be
 *  freed). options may be NULL (defaults). */
ISL_API isl_status isl_trainer_create(const isl_model *init, const isl_train_options *options,
                                      isl_trainer **out);
ISL_API void isl_trainer_free(isl_trainer *trainer);

/** Entries of the losses of a step: isl_model_num_heads(model) + 2, i.e. L + 3. */
ISL_API int isl_trainer_num_losses(const isl_trainer *trainer);

/** One optimization step on a batch: forward with batch statistics, loss, backward,
 *  Adam update. If losses_out is not NULL it receives isl_trainer_num_losses floats,
 *  all computed before the update:
 *    [l] for l < L   the loss of label head l: mean over its known pixels of the
 *                    cross-entropy / ln 256 (NaN if no pixel of the batch is known);
 *    [L]             the label loss: mean over the heads with known pixels (NaN if none);
 *    [L + 1]         the autoencoder loss: mean over planes and pixels (NaN if not trained);
 *    [L + 2]         the total w * label + (1 - w) * autoencoder, absent parts counting 0.
 *  Heads without a known pixel in the batch are neither computed nor updated. A batch
 *  with nothing to learn (no known pixel and label weight 1) changes nothing and is not
 *  counted as a step. The first step with a new crop size builds the network for it
 *  (seconds). */
ISL_API isl_status isl_train_step(isl_trainer *trainer, const isl_train_batch *batch,
                                  float *losses_out);

/** Steps taken so far (restored by isl_trainer_load). */
ISL_API int64_t isl_trainer_step_count(const isl_trainer *trainer);

/** Re-estimates the batch-norm population statistics from training crops instead of the
 *  moving averages: a forward pass per batch, no update of the weights. Call it with
 *  index 0, 1, ..., K - 1 on K batches; afterwards every statistic is the mean of the K
 *  batches' statistics (variances unbiased). With a frozen trunk
 *  (isl_train_options_set_freeze_trunk) it only checks the batch: the statistics are
 *  frozen too. */
ISL_API isl_status isl_trainer_estimate_bn(isl_trainer *trainer, const isl_train_batch *batch,
                                           int index);

/** A snapshot of the current weights and batch-norm statistics as a new model (for
 *  prediction or isl_model_save). The trainer is unchanged. */
ISL_API isl_status isl_trainer_model(const isl_trainer *trainer, isl_model **out);

/** The weight average (isl_train_options_set_average_from) as a new model, with the
 *  current batch-norm statistics; ISL_ERROR_INVALID_ARGUMENT before its first step. */
ISL_API isl_status isl_trainer_average_model(const isl_trainer *trainer, isl_model **out);

/** Steps in the weight average so far (0: none). */
ISL_API int64_t isl_trainer_average_count(const isl_trainer *trainer);

/** Writes a checkpoint atomically: a model file (loadable by isl_model_load) plus the
 *  group /optimizer with the Adam moments, the step count and the random generator. */
ISL_API isl_status isl_trainer_save(const isl_trainer *trainer, const char *path);

/** A 128-bit fingerprint (XXH3-128, canonical byte order) of everything a checkpoint
 *  holds: weights, batch-norm statistics, Adam moments and update counts, the weight
 *  average, the step count and the random generator, as this machine stores them. Equal
 *  states give equal digests (a checkpoint loaded with the same options included); the
 *  processes of a data-parallel run, whose states must stay identical, compare theirs
 *  to find one that diverged (`isl train` does at every checkpoint). */
ISL_API isl_status isl_trainer_digest(const isl_trainer *trainer, unsigned char digest[16]);

/** Resumes from a checkpoint: the next step gives the same results, bit for bit, as if
 *  training had not stopped (same options, batches and thread count). options may be
 *  NULL (defaults); they are not stored in the checkpoint. */
ISL_API isl_status isl_trainer_load(const char *path, const isl_train_options *options,
                                    isl_trainer **out);

/** The next 64-bit value of the trainer's random generator (splitmix64, seeded by the
 *  options, saved in checkpoints): for the caller's own random choices, so that a
 *  resumed run continues the same sequence. The library draws nothing from it, and
 *  `isl train` does not use it: its crops depend only on --seed and the step number
 *  (docs/training.md), which also survives a resume. */
ISL_API uint64_t isl_trainer_random(isl_trainer *trainer);

/* ---------------------------------------------------------------------------------- */
/* Datasets                                                                            */
/* ---------------------------------------------------------------------------------- */

/* A dataset holds training data: one or more wells, each a transmitted-light z-stack
 * and any subset of labels (fluorescence images, each with a per-pixel mask of where it
 * is known; a label may cover only part of the field). Files are HDF5, layout in
 * docs/training.md. A dataset is immutable once loaded; any number of threads may read
 * it and draw from samplers on it concurrently. */
typedef struct isl_dataset isl_dataset;

/** An empty dataset of stacks with num_z planes, to be filled with isl_dataset_add_well
 *  and isl_dataset_add_target and written with isl_dataset_save. */
ISL_API isl_status isl_dataset_create(int num_z, isl_dataset **out);
/** Reads and validates a dataset file; the first problem is reported with its path. */
ISL_API isl_status isl_dataset_load(const char *path, isl_dataset **out);
/** Writes the dataset atomically (temporary file, then rename). */
ISL_API isl_status isl_dataset_save(const isl_dataset *dataset, const char *path);
ISL_API void isl_dataset_free(isl_dataset *dataset);

/** Adds a well: its stack (num_z planes; integers scaled to [0, 1] as for prediction,
 *  values must lie in [0, 1]), a unique name, a condition (may be NULL) and the pixel
 *  size in micrometres (0 if unknown). *index_out (may be NULL) receives its index. */
ISL_API isl_status isl_dataset_add_well(isl_dataset *dataset, const char *name,
                                        const char *condition, double pixel_size_um,
                                        const isl_stack *stack, int *index_out);
/** Adds label `label` (e.g. "dapi_confocal") to well `well`: a single-plane image
 *  (values in [0, 1] after scaling) whose top-left pixel lies at (x0, y0) of the well; it
 *  must fit inside the well. Pixels outside it, and pixels where mask (same size; may be
 *  NULL) is zero, are unknown. A well has each label at most once. */
ISL_API isl_status isl_dataset_add_target(isl_dataset *dataset, int well, const char *label,
                                          int x0, int y0, const isl_stack *image,
                                          const uint8_t *mask);

ISL_API int isl_dataset_num_z(const isl_dataset *dataset);
ISL_API int isl_dataset_num_wells(const isl_dataset *dataset);
/** Name, condition ("" if none), pixel size of a well; NULL / -1 if the index is invalid. */
ISL_API const char *isl_dataset_well_name(const isl_dataset *dataset, int well);
ISL_API const char *isl_dataset_well_condition(const isl_dataset *dataset, int well);
ISL_API double isl_dataset_well_pixel_size(const isl_dataset *dataset, int well);
/** Height and width of a well, or ISL_ERROR_INVALID_ARGUMENT. */
ISL_API isl_status isl_dataset_well_size(const isl_dataset *dataset, int well, int *height,
                                         int *width);
/** Index of the well called name, or -1. */
ISL_API int isl_dataset_well_index(const isl_dataset *dataset, const char *name);
/** The well's stack, scaled to [0, 1] (num_z x height x width floats, plane-major), or NULL. */
ISL_API const float *isl_dataset_well_stack(const isl_dataset *dataset, int well);
/** Label names present in any well, in first-added order. */
ISL_API int isl_dataset_num_labels(const isl_dataset *dataset);
ISL_API const char *isl_dataset_label_name(const isl_dataset *dataset, int label);
/** Index of the label called name (0 .. isl_dataset_num_labels - 1), or -1. */
ISL_API int isl_dataset_label_index(const isl_dataset *dataset, const char *name);
/** Label `label` (by name) of a well as full-well-size arrays: values (height x width
 *  floats, 0 where unknown) and mask (nonzero where known). ISL_ERROR_INVALID_ARGUMENT if
 *  the well has no such label. Either output may be NULL. */
ISL_API isl_status isl_dataset_well_target(const isl_dataset *dataset, int well,
                                           const char *label, const float **values,
                                           const uint8_t **mask);

/** A rectangle of one well, in pixels. */
typedef struct isl_region {
    int well;
    int x0, y0, width, height;
} isl_region;

/** Draws random training crops from a dataset for a model (STAR Methods, "Training"). */
typedef struct isl_sampler isl_sampler;

/** Prepares crops of side `crop` (250 + 16m) for training `model`: maps the model's label
 *  heads to the dataset's labels by name (a head the dataset lacks is never known),
 *  normalizes every well as the model's predictions do, and mirror-pads it by 121 pixels
 *  as prediction does, so that crops near the border see the same context. Keeps a
 *  reference to dataset, which must outlive the sampler; the model is not kept. */
ISL_API isl_status isl_sampler_create(const isl_dataset *dataset, const isl_model *model,
                                      int crop, isl_sampler **out);
ISL_API void isl_sampler_free(isl_sampler *sampler);
/** Target pixels inside `region` are never used (masked), e.g. a validation split.
 *  May be called several times to hold out several regions. */
ISL_API isl_status isl_sampler_hold_out(isl_sampler *sampler, const isl_region *region);
/** Random flips and 90-degree rotations of the crops (default on). */
ISL_API isl_status isl_sampler_set_augment(isl_sampler *sampler, int enable);
/** Random contrast of the crops' inputs (default 0: off): every plane of a crop is scaled
 *  about its own mean by one factor e^u per crop, u uniform in [-amount, amount], then
 *  clipped to [0, 1]; targets are unchanged. amount in [0, 1] (0.2: factors 0.82 to
 *  1.22). Drawn from the same random value as the crop's transform, so a seed draws the
 *  same wells, positions and transforms with any amount. */
ISL_API isl_status isl_sampler_set_contrast_jitter(isl_sampler *sampler, double amount);
/** Random gamma of the crops' inputs (default 0: off): every value v of a crop (in [0, 1])
 *  becomes v^e, one exponent e = e^u per crop, u uniform in [-amount, amount]; amount in
 *  [0, 1] (0.3: exponents 0.74 to 1.35). Applied after the contrast jitter. */
ISL_API isl_status isl_sampler_set_gamma_jitter(isl_sampler *sampler, double amount);
/** Random blur of the crops' inputs (default 0: off): every plane of a crop is blurred by
 *  one Gaussian of standard deviation uniform in [0, sigma] pixels per crop (edges
 *  reflected, cut at 4 standard deviations); sigma in [0, 8]. Applied first, before the
 *  contrast jitter, like a focus or optics change. */
ISL_API isl_status isl_sampler_set_blur(isl_sampler *sampler, double sigma);
/** Random noise of the crops' inputs (default 0: off): each value gets independent,
 *  nearly Gaussian noise (the sum of four uniform values, bounded at 3.46 standard
 *  deviations) of one standard deviation per crop, uniform in [0, sd], then is clipped to
 *  [0, 1]; sd in [0, 0.5] (inputs normalized "global" have standard deviation 0.125).
 *  Applied last. Contrast, gamma, blur and noise draw their amounts from the crop's own
 *  random value, so a seed draws the same wells, positions, transforms and amounts with
 *  any combination of them. */
ISL_API isl_status isl_sampler_set_noise(isl_sampler *sampler, double sd);
/** Random zoom of the crops (default 0: off; "small scale changes"): each crop is
 *  resampled about its centre by a factor e^u, u uniform in [-amount, amount] (one per
 *  crop), amount in [0, 0.5]; inputs and targets alike, bilinear, so a crop of side N
 *  shows N x factor pixels of the well. A target pixel stays known only where its four
 *  neighbours in the well are known and none is held out; when zoomed out (factor > 1)
 *  also none within floor(121 (factor - 1)) + 1 pixels, so that with the validation
 *  margin of 121 no trained output's receptive field reaches a held-out pixel. The
 *  factor comes from the crop's own random value, so a seed draws the same wells,
 *  positions and transforms with and without it. Keeps an integral image of each well's
 *  held-out map (4 bytes a pixel) while on. */
ISL_API isl_status isl_sampler_set_scale_jitter(isl_sampler *sampler, double amount);
/** Semi-supervised training (STAR Methods: the autoencoder learns from unlabelled images
 *  too): a share of the crops, in [0, 1] (default 0), is drawn anywhere in the wells, a
 *  well in proportion to its pixels that are not held out and a position uniformly among
 *  the windows holding such a pixel, whether or not a label is known there (the labels
 *  known in such a crop still come with it). Train with a label weight below 1, so that
 *  the autoencoder half of the loss learns from them. With share 0 a seed draws exactly
 *  the crops it drew before this option existed. */
ISL_API isl_status isl_sampler_set_unlabelled_share(isl_sampler *sampler, double share);
/** Fills one batch (see isl_train_batch for the shapes: inputs [B, num_z, crop, crop],
 *  targets and masks [B, L, crop - 242, crop - 242], L = the model's label heads): a well
 *  in proportion to its known target pixels, a crop position uniformly among those whose
 *  output window holds a known pixel, then the augmentation. The same seed gives the same
 *  batch. Thread-safe: samplers are not modified by drawing. */
ISL_API isl_status isl_sampler_draw(const isl_sampler *sampler, uint64_t seed, int batch_size,
                                    float *inputs, float *targets, uint8_t *masks);

/* ---------------------------------------------------------------------------------- */
/* Data-parallel training                                                              */
/* ---------------------------------------------------------------------------------- */

/* Synchronous data-parallel training over several processes (docs/scaling.md): each
 * process steps its own trainer on its part of a global batch; the library exchanges
 * numbers only through a caller's allreduce hook, so any transport fits (`isl train`
 * plugs in MPI; the library never links it). */

/** Element types an allreduce hook sums. */
typedef enum isl_reduce_type {
    ISL_REDUCE_FLOAT32 = 0, /**< float */
    ISL_REDUCE_FLOAT64 = 1  /**< double */
} isl_reduce_type;

/** Replaces buf[0..count) (of type) by its element-wise sum over all processes of the
 *  run, on every process (e.g. MPI_Allreduce with MPI_SUM in place). Every process must
 *  get the same sums, bit for bit (their weights stay identical). Return 0, or nonzero
 *  on failure (the trainer's call then fails with ISL_ERROR_BACKEND). */
typedef int (*isl_allreduce_fn)(void *buf, size_t count, isl_reduce_type type, void *user);

/** Makes the trainer one of the processes of a data-parallel run (fn NULL: alone again,
 *  the default). From then on every process must call isl_train_step (and
 *  isl_trainer_estimate_bn) the same number of times with batches of one crop size; the
 *  global batch is the union of their batches: its known-pixel counts normalize the
 *  loss, its batch-norm statistics normalize every layer (forward and backward), the
 *  losses reported are the global batch's, and the gradients are summed over the
 *  processes, so each process takes the step one process would take on the global batch
 *  (up to float summation order). Each step calls fn a few times with float64 (counts,
 *  batch-norm sums, losses) and once with float32 (all the updated gradients; or once
 *  per bucket, see isl_trainer_set_gradient_buckets). Start
 *  every process from the same weights (one checkpoint or initial model). */
ISL_API isl_status isl_trainer_set_allreduce(isl_trainer *trainer, isl_allreduce_fn fn,
                                             void *user);

/** The place in the global batch of this process's first crop (default 0), e.g. rank x
 *  its batch size, the `first` of isl_sampler_draw_part. Dropout masks
 *  (isl_train_options_set_dropout) are drawn per crop of the global batch, so with it
 *  the processes of a run with dropout drop what one process on the global batch would;
 *  left at 0 on every process, each drops the same values of its own crops. Nothing
 *  else depends on it. first >= 0. */
ISL_API isl_status isl_trainer_set_first_crop(isl_trainer *trainer, int64_t first);

/** Completes every sum an asynchronous allreduce hook has started (see
 *  isl_trainer_set_gradient_buckets): on return their buffers hold the sums. Return 0,
 *  or nonzero on failure. */
typedef int (*isl_allreduce_wait_fn)(void *user);

/** Gradient buckets for a data-parallel trainer (isl_trainer_set_allreduce; user is its
 *  user pointer). bucket_bytes 0 (the default): the gradients go in one float32 call
 *  after the backward pass. Otherwise they go in buckets of whole arrays, each closed
 *  once it holds at least bucket_bytes, layer by layer in backward order (heads first,
 *  the input projection last), each handed over as soon as the backward pass has
 *  produced it, so that sending overlaps the rest of the pass; what is left goes after
 *  the pass. start and wait NULL: the allreduce hook sums each bucket before returning.
 *  start and wait set: start(buf, count, ISL_REDUCE_FLOAT32, user) only starts the sum
 *  (e.g. MPI_Iallreduce) and returns; buf is the transport's until wait(user), which the
 *  trainer calls once per step after the backward pass, before the update. float64
 *  calls of the allreduce hook (batch-norm sums) still come during the pass and must
 *  complete before returning, in the same order on every process. Every element is
 *  summed over the same processes either way, so the result equals the flat one
 *  whenever the transport's sum of one element does not depend on the buffer's size.
 *  All processes must use the same settings. */
ISL_API isl_status isl_trainer_set_gradient_buckets(isl_trainer *trainer, size_t bucket_bytes,
                                                    isl_allreduce_fn start,
                                                    isl_allreduce_wait_fn wait);

/** Crops first .. first + count - 1 of the batch that isl_sampler_draw draws from seed
 *  (any batch size above them): the part of a global batch of one process of a
 *  data-parallel run, e.g. first = rank * count. Buffers hold count crops. */
ISL_API isl_status isl_sampler_draw_part(const isl_sampler *sampler, uint64_t seed, int first,
                                         int count, float *inputs, float *targets,
                                         uint8_t *masks);

/* ---------------------------------------------------------------------------------- */
/* Evaluation                                                                          */
/* ---------------------------------------------------------------------------------- */

/* Metrics of predicted against true fluorescence images (STAR Methods, "Statistical
 * calculations" and "Manual identification of network errors"; docs/evaluation.md). Images
 * are plain row-major float arrays with values in [0, 1]; a mask (may be NULL: every
 * pixel) selects the pixels that count (nonzero). Every function is reentrant. A pixel
 * that counts and is NaN or infinite in either image is an ISL_ERROR_VALUE. */

/** Pearson r of predicted against true values over `max_pixels` pixels drawn without
 *  replacement from those the mask selects (seeded by `seed`; all of them when there are
 *  fewer, or when max_pixels <= 0). The paper draws 1,000,000. *pixels_used (may be NULL)
 *  receives the number drawn. r is NaN when either sample is constant; fewer than 2
 *  pixels is ISL_ERROR_SHAPE. */
ISL_API isl_status isl_eval_pearson(const float *predicted, const float *truth,
                                    const uint8_t *mask, int64_t count, int64_t max_pixels,
                                    uint64_t seed, double *r, int64_t *pixels_used);

/** The paper's heat map: the selected pixels counted in bins x bins cells of width 1/bins
 *  over [0, 1] (values outside are clipped into the end bins), true value along rows and
 *  predicted along columns: per_thousand[t * bins + p] = 1000 * count / total. bins in
 *  [2, 256] (the paper: 10). */
ISL_API isl_status isl_eval_heatmap(const float *predicted, const float *truth,
                                    const uint8_t *mask, int64_t count, int bins,
                                    double *per_thousand);

/** Otsu's threshold of the selected pixels: the value between two of 256 bins over [0, 1]
 *  that maximizes the between-class variance. Pixels >= threshold are foreground. */
ISL_API isl_status isl_eval_otsu(const float *image, const uint8_t *mask, int64_t count,
                                 double *threshold);

/** Segments nuclei: foreground = pixels >= threshold (threshold < 0: Otsu's), objects =
 *  8-connected components of at least min_area pixels; with `split_touching`, a watershed
 *  of the distance to the background separates touching round nuclei (seeds: the parts of
 *  each component farther than 0.7 of its largest distance from the background, so two
 *  disks of radius r with centres more than 1.43 r apart are split). labels receives
 *  height x width ints: 0 background, 1..*num_objects the objects (scan order). */
ISL_API isl_status isl_eval_segment_nuclei(const float *image, int height, int width,
                                           double threshold, int min_area, int split_touching,
                                           int32_t *labels, int *num_objects);

/** Object errors of a predicted segmentation against a true one (Coelho et al. 2009). */
typedef struct isl_object_errors {
    size_t struct_size;    /**< sizeof(isl_object_errors): set it before the call */
    int true_objects;      /**< true objects scored (not touching the border if excluded) */
    int predicted_objects; /**< predicted objects scored */
    int split;             /**< true objects that two or more predicted objects overlap most */
    int merged;            /**< predicted objects that two or more true objects overlap most */
    int added;             /**< predicted objects overlapping no true object */
    int missed;            /**< true objects overlapping no predicted object */
    double accuracy;       /**< (true - split - merged - added - missed) / true; NaN if none */
} isl_object_errors;

/** Classifies the errors of pred_labels against true_labels (0 background, objects
 *  1..num_true and 1..num_pred). With `exclude_border`, objects touching the image border
 *  are not scored (the paper's "cells at the edges of the field of view"). */
ISL_API isl_status isl_eval_object_errors(const int32_t *true_labels, int num_true,
                                          const int32_t *pred_labels, int num_pred,
                                          int height, int width, int exclude_border,
                                          isl_object_errors *out);

/** Equivalent radius sqrt(area / pi), in pixels, of objects 1..num_objects:
 *  radii[i - 1] for object i. */
ISL_API isl_status isl_eval_object_radii(const int32_t *labels, int height, int width,
                                         int num_objects, double *radii);

/** Two-sample Kolmogorov-Smirnov test, two-sided, as scipy.stats.ks_2samp: the statistic
 *  D = sup |F_a - F_b| and its p-value, exact (lattice paths) when na * nb <= 10^8 and
 *  asymptotic (Kolmogorov's distribution at sqrt(na nb / (na + nb)) D) otherwise. */
ISL_API isl_status isl_eval_ks_2samp(const double *a, int64_t na, const double *b, int64_t nb,
                                     double *statistic, double *p_value);

/** The paper's display of a fluorescence image: f(x) = clip((x - 0.2) / 0.6, 0, 1). */
ISL_API double isl_eval_display(double x);

/** Error composite (8-bit RGB, count * 3 bytes): t = f(truth), p = f(predicted) with
 *  isl_eval_display; gray min(t, p) where they agree, plus magenta for p - t > 0 (too
 *  bright: false positive) and teal for t - p > 0 (too dim: false negative). */
ISL_API isl_status isl_eval_error_image(const float *predicted, const float *truth,
                                        int64_t count, uint8_t *rgb);

/** A map (entropy, standard deviation, ...) as 8-bit RGB with a perceptual colour scale
 *  (dark blue = lo, yellow = hi; clipped). hi > lo. */
ISL_API isl_status isl_eval_map_image(const float *values, int64_t count, double lo, double hi,
                                      uint8_t *rgb);

/* ---------------------------------------------------------------------------------- */
/* Preprocessing                                                                       */
/* ---------------------------------------------------------------------------------- */

/* The paper's image preprocessing (STAR Methods, "Preprocessing pipeline"; choices where it
 * is ambiguous: docs/preprocessing.md). Images are float32, height x width, row-major; a
 * stack is num_z such planes. Every function refuses NaN and infinite values. */

/** Light of an image: the paper blurs flat fields and normalizes per light. */
typedef enum isl_light { ISL_LIGHT_TRANSMITTED = 0, ISL_LIGHT_FLUORESCENCE = 1 } isl_light;

/** Salt-and-pepper noise and specks: applies the 5 x 5 median (image edges reflected, edge
 *  pixel repeated, as scipy.ndimage 'reflect') again and again until a pass changes no
 *  pixel or max_passes passes ran (the paper: converges within 32). In place. *passes
 *  (may be NULL) receives the passes that changed something. */
ISL_API isl_status isl_median5_until_stable(float *image, int height, int width, int max_passes,
                                            int *passes);

/** The paper's bilinear 2x downscaling: out[y][x] is the mean of the 2 x 2 block at
 *  (2y, 2x), what bilinear sampling at the block centre gives. out is (height / 2) x
 *  (width / 2); an odd last row or column is dropped. */
ISL_API isl_status isl_downscale2(const float *image, int height, int width, float *out);

/** Standard deviation of the flat field's Gaussian blur: height / 16 for fluorescence,
 *  height / 32 for transmitted light (the paper). */
ISL_API double isl_flat_field_sigma(isl_light light, int height);

/** A flat field from `count` images of one microscope (all of height x width): the
 *  per-pixel median over the images, blurred by a Gaussian of standard deviation sigma
 *  (edges reflected; kernel cut at 4 sigma), scaled to mean 1. sigma 0: no blur, the
 *  paper's transmitted-light dust field. Working memory: count floats per thread and,
 *  for the blur, one image of doubles. */
ISL_API isl_status isl_flat_field_estimate(const float *const *images, int count, int height,
                                           int width, double sigma, float *field);

/** Flat-field (or dust) correction: image /= field, pixel by pixel, in place. The field
 *  must be positive; the division does not clip (normalization clips afterwards). */
ISL_API isl_status isl_flat_field_apply(float *image, const float *field, int height,
                                        int width);

/** Fluorescence dust (the paper's additive "gray disks" from scattered excitation light,
 *  at the same place in every image): estimates the artifact from `count` images of
 *  height x width that share it. The mean image less sensor_offset (the camera's reading
 *  in the dark, e.g. 100 counts; it must be removed for the relative threshold) is
 *  smoothed by the 5 x 5 median to convergence; dust is where the smoothed image exceeds
 *  the background by more than threshold x background (e.g. 0.1), grown by 2 pixels. The
 *  background: the mean image with its dust pixels replaced by the local mean of the others
 *  (Gaussian-weighted), blurred by a Gaussian of standard deviation sigma (0: height / 16);
 *  mask and background are refined together from no dust until the mask stops changing (at
 *  most 8 rounds; the mask's rounds fill the dust with the global mean of the others).
 *  artifact = mean - offset - background on the dust pixels (never negative), 0 elsewhere;
 *  *dust_pixels (may be NULL) receives their number. The median erases small dust (a disk
 *  of radius 6 pixels or less vanishes; 6.5 keeps 121 of its 137). Errors: NaN or infinite
 *  pixels, an offset at or above the background. Choices where the paper is silent:
 *  docs/preprocessing.md. */
ISL_API isl_status isl_dust_fluorescence_estimate(const float *const *images, int count,
                                                  int height, int width, double sensor_offset,
                                                  double threshold, double sigma,
                                                  float *artifact, int64_t *dust_pixels);
/** Removes an estimated fluorescence dust artifact: image -= artifact, in place. */
ISL_API isl_status isl_dust_fluorescence_remove(float *image, const float *artifact, int height,
                                                int width);

/** The paper's intensity normalization: an affine map giving the image mean `mean` and
 *  standard deviation `sd` (population, in double precision), then clipping to [0, 1].
 *  The paper: transmitted light 0.5 and 0.125, fluorescence 0.25 and 0.125 (see
 *  isl_normalize_light). A constant image cannot be normalized (ISL_ERROR_VALUE). */
ISL_API isl_status isl_normalize(float *image, int64_t count, double mean, double sd);
/** isl_normalize with the paper's mean and sd for the light. */
ISL_API isl_status isl_normalize_light(float *image, int64_t count, isl_light light);

/* Stitching a plate's overlapping tiles (STAR Methods, "Image stitching"): offsets between
 * neighbours by normalized cross-correlation, positions by least squares, a feathered
 * composite. Compute positions on one plane and compose every z plane with them. */

/** Where tile b lies in tile a's coordinates (b's pixel (0, 0) at a's (offset_y,
 *  offset_x)): the maximum of the normalized cross-correlation over their overlap among
 *  integer offsets within +-search of the nominal one (coarse to fine on 2x downscaled
 *  tiles for wide searches; offsets keeping under a quarter of the nominal overlap are not
 *  considered), refined to a fraction of a pixel by a parabola through the neighbours.
 *  *ncc (may be NULL) receives the maximum, in [-1, 1]: low values mean an untextured
 *  overlap whose offset is unreliable. Both tiles height x width. */
ISL_API isl_status isl_stitch_pair_offset(const float *a, const float *b, int height, int width,
                                          double nominal_y, double nominal_x, int search,
                                          double *offset_y, double *offset_x, double *ncc);

/** Tile positions minimizing sum over pairs of |p_j - p_i - o_ij|^2 (the paper's spring
 *  system), tile 0 at (0, 0). pair_tiles: 2 x pairs tile indices (i, j); offsets: 2 x
 *  pairs (y, x) of p_j - p_i; positions: 2 x tiles (y, x). ISL_ERROR_VALUE if the pairs do
 *  not connect every tile. */
ISL_API isl_status isl_stitch_solve(int tiles, int pairs, const int *pair_tiles,
                                    const double *offsets, double *positions);

/** Size of the canvas holding every tile at its position rounded to whole pixels. */
ISL_API isl_status isl_stitch_canvas_size(int tiles, const double *positions, int height,
                                          int width, int *canvas_height, int *canvas_width);

/** Rows [y0, y0 + rows) of the composite (rows x canvas_width floats into out): each tile
 *  at its rounded position, shifted so that the smallest is 0; where tiles overlap, the
 *  mean weighted by each pixel's distance to its tile's nearest edge (feathering); 0 where
 *  no tile lies. Row bands keep memory bounded for large canvases. */
ISL_API isl_status isl_stitch_blend(const float *const *tiles, int count,
                                    const double *positions, int height, int width, int y0,
                                    int rows, int canvas_width, float *out);

/* ---------------------------------------------------------------------------------- */
/* Training pixel size                                                                 */
/* ---------------------------------------------------------------------------------- */

/** Pixel size, in micrometres, of the stacks the model was trained on (the model file's
 *  optional pixel_size_um attribute, docs/model-format.md); 0 if unknown, as in files
 *  written before it existed. A network sees structures in pixels, so inputs at another
 *  pixel size predict worse; `isl predict` warns when an OME-TIFF's differs. */
ISL_API double isl_model_pixel_size(const isl_model *model);
/** Records the training pixel size (micrometres, in (0, 10000]; 0 clears it); saved by
 *  isl_model_save. Changes the model: not while another thread uses it. */
ISL_API isl_status isl_model_set_pixel_size(isl_model *model, double micrometres);

#ifdef __cplusplus
}
#endif

#endif /* ISL_H */
