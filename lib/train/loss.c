#include "loss.h"

#include "arch.h"
#include "fast_math.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PIXELS 64 /* pixels per inner block: the 256 logits of each are strided by h * w */

int isl_loss_bin(float v)
{
    double k = nearbyint(255.0 * (double)v);
    return k < 0 ? 0 : (k > 255 ? 255 : (int)k);
}

static inline float view_f(isl_loss_view v, int b, int g, int y, int x)
{
    return ((const float *)v.data)[b * v.batch_stride + g * v.group_stride + y * v.row_stride + x];
}

static inline int selected(isl_loss_view m, int b, int g, int y, int x)
{
    const uint8_t *d = m.data;
    return !d || d[b * m.batch_stride + g * m.group_stride + y * m.row_stride + x];
}

int64_t isl_loss_count(isl_loss_view mask, int batch, int groups, int h, int w)
{
    if (!mask.data)
        return (int64_t)batch * groups * h * w;
    int64_t n = 0;
    for (int b = 0; b < batch; b++)
        for (int g = 0; g < groups; g++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    n += selected(mask, b, g, y, x) != 0;
    return n;
}

/* se[j] += e^(row[j] - mx[j]): the softmax denominators of a block of pixels, with the
 * vectorized float exp (~2 ulp) summed in double (libm's double exp, twice per logit,
 * was ~8% of a training step at base 60). */
ISL_CLONES
static void add_exps(const float *row, const float *mx, size_t np, double *se)
{
    for (size_t j = 0; j < np; j++)
        se[j] += (double)isl_exp_approx(row[j] - mx[j]);
}

/* The gradient of one class k over a block of pixels: gscale (softmax - one-hot), 0 where
 * not selected. */
ISL_CLONES
static void class_gradient(const float *row, const float *lse, const int *bin, const int *sel,
                           int k, float gscale, size_t np, float *drow)
{
    for (size_t j = 0; j < np; j++) {
        float p = isl_exp_approx(row[j] - lse[j]);
        drow[j] = sel[j] ? gscale * (p - (k == bin[j] ? 1.0f : 0.0f)) : 0.0f;
    }
}

/* One (image, group) plane: its sum of losses; gradients if asked. */
static double plane_loss(const float *lg, int b, int g, int h, int w, isl_loss_view target,
                         isl_loss_view mask, double scale, float *dl)
{
    const size_t hw = (size_t)h * w;
    const float gscale = (float)(scale / ISL_LN_256);
    double sum = 0;
    for (size_t p0 = 0; p0 < hw; p0 += PIXELS) {
        const size_t np = hw - p0 < PIXELS ? hw - p0 : PIXELS;
        float mx[PIXELS];
        double se[PIXELS];
        int bin[PIXELS], sel[PIXELS];
        for (size_t j = 0; j < np; j++) {
            int y = (int)((p0 + j) / (size_t)w), x = (int)((p0 + j) % (size_t)w);
            sel[j] = selected(mask, b, g, y, x);
            bin[j] = sel[j] ? isl_loss_bin(view_f(target, b, g, y, x)) : 0;
            mx[j] = -INFINITY;
            se[j] = 0;
        }
        for (int k = 0; k < ISL_NUM_CLASSES; k++) {
            const float *row = lg + (size_t)k * hw + p0;
            for (size_t j = 0; j < np; j++)
                mx[j] = row[j] > mx[j] ? row[j] : mx[j];
        }
        for (int k = 0; k < ISL_NUM_CLASSES; k++)
            add_exps(lg + (size_t)k * hw + p0, mx, np, se);
        float lse[PIXELS]; /* for the gradient's exps, which are in float */
        for (size_t j = 0; j < np; j++) {
            const double l = mx[j] + log(se[j]);
            lse[j] = (float)l;
            if (sel[j])
                sum += (l - lg[(size_t)bin[j] * hw + p0 + j]) / ISL_LN_256;
        }
        if (!dl)
            continue;
        for (int k = 0; k < ISL_NUM_CLASSES; k++)
            class_gradient(lg + (size_t)k * hw + p0, lse, bin, sel, k, gscale, np,
                           dl + (size_t)k * hw + p0);
    }
    return sum;
}

int isl_loss_cross_entropy(const float *logits, int batch, int groups, int h, int w,
                           isl_loss_view target, isl_loss_view mask, double scale,
                           float *dlogits, double *sum)
{
    const int planes = batch * groups;
    const size_t plane_floats = (size_t)ISL_NUM_CLASSES * h * w;
    double *part = malloc(sizeof(double) * (size_t)(planes ? planes : 1));
    if (!part)
        return -1;
#pragma omp parallel for schedule(dynamic) if ((size_t)planes * plane_floats >= ((size_t)1 << 16))
    for (int i = 0; i < planes; i++) {
        size_t off = (size_t)i * plane_floats; /* image b, group g: i = b * groups + g */
        part[i] = plane_loss(logits + off, i / groups, i % groups, h, w, target, mask, scale,
                             dlogits ? dlogits + off : NULL);
    }
    double s = 0;
    for (int i = 0; i < planes; i++)
        s += part[i];
    free(part);
    *sum = s;
    return 0;
}

static isl_loss_view label_view(const isl_loss_batch *b, const void *data, size_t elem, int l)
{
    size_t plane = (size_t)b->out_h * b->out_w;
    isl_loss_view v = {NULL, (size_t)b->num_labels * plane, 0, (size_t)b->out_w};
    if (data)
        v.data = (const char *)data + elem * (size_t)l * plane;
    return v;
}

void isl_loss_label_counts(const isl_loss_batch *b, int64_t *counts)
{
    for (int l = 0; l < b->num_labels; l++) {
        if (!b->targets) {
            counts[l] = 0;
            continue;
        }
        isl_loss_view m = label_view(b, b->masks, 1, l);
        counts[l] = isl_loss_count(m, b->batch, 1, b->out_h, b->out_w);
    }
}

int isl_loss_compute(const isl_loss_batch *b, const float *const *logits, float *const *dlogits,
                     const int64_t *counts, double label_weight, double *losses)
{
    const int L = b->num_labels;
    int present = 0;
    for (int l = 0; l < L; l++)
        present += logits[l] != NULL;
    double label = 0, sum;
    for (int l = 0; l < L; l++) {
        losses[l] = NAN;
        if (!logits[l])
            continue;
        double scale = label_weight / ((double)present * (double)counts[l]);
        if (isl_loss_cross_entropy(logits[l], b->batch, 1, b->out_h, b->out_w,
                                   label_view(b, b->targets, sizeof(float), l),
                                   label_view(b, b->masks, 1, l), scale, dlogits[l], &sum))
            return -1;
        losses[l] = sum / (double)counts[l];
        label += losses[l] / present;
    }
    losses[L] = present ? label : NAN;
    losses[L + 1] = NAN;
    double total = present ? label_weight * label : 0;
    if (logits[L]) {
        const int nz = b->num_z, cy = (b->in_h - b->out_h) / 2, cx = (b->in_w - b->out_w) / 2;
        const int images = b->count_batch > 0 ? b->count_batch : b->batch;
        const double count = (double)nz * images * b->out_h * b->out_w;
        /* The center crop of the input planes, at the output pixels. */
        isl_loss_view t = {b->inputs + (size_t)cy * b->in_w + cx,
                           (size_t)nz * b->in_h * b->in_w, (size_t)b->in_h * b->in_w,
                           (size_t)b->in_w};
        isl_loss_view all = {NULL, 0, 0, 0};
        if (isl_loss_cross_entropy(logits[L], b->batch, nz, b->out_h, b->out_w, t, all,
                                   (1 - label_weight) / count, dlogits[L], &sum))
            return -1;
        losses[L + 1] = sum / count;
        total += (1 - label_weight) * losses[L + 1];
    }
    losses[L + 2] = total;
    return 0;
}
