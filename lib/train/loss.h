/* The training loss of the spec ("Training"): for every output pixel of a head, the
 * cross-entropy of its 256-bin distribution against the quantized target intensity,
 * divided by ln 256 so that a uniform prediction scores 1. */
#ifndef ISL_LOSS_H
#define ISL_LOSS_H

#include <stddef.h>
#include <stdint.h>

#define ISL_LN_256 5.545177444479562

/* The bin of an intensity in [0, 1]: round(255 v), ties to even (as numpy and PyTorch). */
int isl_loss_bin(float v);

/* Per-pixel values of a batch, value (b, g, y, x) at
 * data[b * batch_stride + g * group_stride + y * row_stride + x] (elements, not bytes). */
typedef struct isl_loss_view {
    const void *data; /* float targets, or uint8 masks (NULL: every pixel selected) */
    size_t batch_stride, group_stride, row_stride;
} isl_loss_view;

/* Pixels with a nonzero mask among batch x groups x h x w (all of them if mask.data is NULL). */
int64_t isl_loss_count(isl_loss_view mask, int batch, int groups, int h, int w);

/* Cross-entropy / ln 256 of the distributions of logits [batch, groups * 256, h, w]
 * (channel z * 256 + k is bin k of group z) against the bins of target, summed over the
 * pixels selected by mask, into *sum. If dlogits (same shape) is not NULL, writes
 * scale * d(sum)/d(logits) there, zero at unselected pixels; dlogits may be logits (in
 * place). The sum is accumulated in double in a fixed order. Returns 0, or -1 when out of
 * memory. */
int isl_loss_cross_entropy(const float *logits, int batch, int groups, int h, int w,
                           isl_loss_view target, isl_loss_view mask, double scale,
                           float *dlogits, double *sum);

/* One training batch, in the layouts of isl_train_batch (include/isl.h). */
typedef struct isl_loss_batch {
    int batch, num_labels, num_z;
    int in_h, in_w, out_h, out_w;
    const float *inputs;    /* [batch, num_z, in_h, in_w] */
    const float *targets;   /* [batch, num_labels, out_h, out_w], or NULL (no labels) */
    const uint8_t *masks;   /* same shape, nonzero where the label is known; NULL: everywhere */
    int count_batch;        /* images the autoencoder loss is a mean over: the global batch
                               of a data-parallel step (0: batch) */
} isl_loss_batch;

/* Known pixels of each label head in the batch (counts[num_labels]). */
void isl_loss_label_counts(const isl_loss_batch *b, int64_t *counts);

/* The loss of a batch and its gradient with respect to every computed head's logits.
 * logits[h], dlogits[h] for h < num_labels are the label heads, [num_labels] the
 * autoencoder; NULL logits mark heads not computed (a label head must be computed
 * exactly when it has known pixels, counts from isl_loss_label_counts). In a data-parallel
 * step counts are those of the global batch (summed over the processes): each process's
 * losses and gradients are then its share, which add up to those of the global batch.
 * losses[num_labels + 3]: each label head's loss (NaN when not computed), the label loss
 * (mean over the computed label heads, NaN when none), the autoencoder loss (mean over
 * the num_z planes; NaN when not computed) and the total
 * w label + (1 - w) autoencoder, an absent part counting as 0.
 * Returns 0, or -1 when out of memory. */
int isl_loss_compute(const isl_loss_batch *b, const float *const *logits, float *const *dlogits,
                     const int64_t *counts, double label_weight, double *losses);

#endif
