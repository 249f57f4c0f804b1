/* Validation of a model being trained, per label head, over the known target pixels of
 * held-out regions: Pearson r between the median prediction and the target, and the
 * background check of docs/training.md ("Honest validation"): the fraction of the
 * target's dark pixels (below its median) that the prediction paints bright (above the
 * target's 90th percentile). */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One label's (prediction, target) pairs, kept whole: the background check needs the
 * target's quantiles. */
typedef struct pairs {
    float *pred, *target;
    size_t n, cap;
} pairs;

static int pairs_push(pairs *p, float pred, float target)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 65536;
        float *a = realloc(p->pred, cap * sizeof(float));
        if (!a)
            return -1;
        p->pred = a;
        float *b = realloc(p->target, cap * sizeof(float));
        if (!b)
            return -1;
        p->target = b;
        p->cap = cap;
    }
    p->pred[p->n] = pred;
    p->target[p->n] = target;
    p->n++;
    return 0;
}

static double pearson(const pairs *p)
{
    if (p->n < 2)
        return NAN;
    double mx = 0, my = 0;
    for (size_t i = 0; i < p->n; i++) {
        mx += p->pred[i];
        my += p->target[i];
    }
    mx /= (double)p->n;
    my /= (double)p->n;
    double cov = 0, vx = 0, vy = 0;
    for (size_t i = 0; i < p->n; i++) {
        double dx = p->pred[i] - mx, dy = p->target[i] - my;
        cov += dx * dy;
        vx += dx * dx;
        vy += dy * dy;
    }
    if (!(vx > 0) || !(vy > 0))
        return NAN;
    return cov / sqrt(vx * vy);
}

static int compare_floats(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of sorted[0..n) with linear interpolation (numpy's default). */
static double quantile(const float *sorted, size_t n, double q)
{
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)pos;
    if (lo + 1 >= n)
        return sorted[n - 1];
    return sorted[lo] + (pos - (double)lo) * ((double)sorted[lo + 1] - sorted[lo]);
}

/* Fraction of the pixels whose target lies below the target's median and whose prediction
 * lies above the target's 90th percentile, among those below the median; NaN if none. */
static double painted_background(const pairs *p)
{
    if (p->n < 2)
        return NAN;
    float *sorted = malloc(p->n * sizeof(float));
    if (!sorted)
        return NAN;
    memcpy(sorted, p->target, p->n * sizeof(float));
    qsort(sorted, p->n, sizeof(float), compare_floats);
    double median = quantile(sorted, p->n, 0.5), bright = quantile(sorted, p->n, 0.9);
    free(sorted);
    size_t dark = 0, painted = 0;
    for (size_t i = 0; i < p->n; i++)
        if (p->target[i] < median) {
            dark++;
            painted += p->pred[i] > bright;
        }
    return dark ? (double)painted / (double)dark : NAN;
}

static int accumulate(pairs *p, const float *pred, const float *target, const uint8_t *mask,
                      int width, const isl_region *r)
{
    for (int y = r->y0; y < r->y0 + r->height; y++)
        for (int x = r->x0; x < r->x0 + r->width; x++) {
            size_t i = (size_t)y * (size_t)width + (size_t)x;
            if (mask[i] && pairs_push(p, pred[i], target[i]) != 0)
                return -1;
        }
    return 0;
}

/* Predicts the medians of every label head for one well (whole well: the same padding as
 * any prediction of it) and adds the pixels of its regions to sums. */
static isl_status validate_well(const isl_dataset *ds, const isl_model *model, int well,
                                const isl_region *regions, int num_regions, int threads,
                                pairs *sums)
{
    int height, width;
    isl_status s = isl_dataset_well_size(ds, well, &height, &width);
    if (s != ISL_OK)
        return s;
    int num_heads = isl_model_num_heads(model);
    size_t plane = (size_t)height * (size_t)width;
    float **outputs = calloc((size_t)num_heads * ISL_STAT_COUNT, sizeof(float *));
    int *heads = malloc(sizeof(int) * (size_t)num_heads);
    int num_labels = 0;
    isl_predict_options *o = NULL;
    if (!outputs || !heads) {
        s = ISL_ERROR_OUT_OF_MEMORY;
        goto done;
    }
    for (int h = 0; h < num_heads; h++) {
        const char *name = isl_model_head_name(model, h);
        if (!strcmp(name, ISL_AUTOENCODER_NAME) ||
            isl_dataset_well_target(ds, well, name, NULL, NULL) != ISL_OK)
            continue;
        heads[num_labels++] = h;
        if (!(outputs[h * ISL_STAT_COUNT + ISL_STAT_MEDIAN] = malloc(plane * sizeof(float)))) {
            s = ISL_ERROR_OUT_OF_MEMORY;
            goto done;
        }
    }
    if (num_labels == 0)
        goto done; /* nothing known here */
    isl_stack stack = {isl_dataset_well_stack(ds, well), ISL_DTYPE_F32, isl_dataset_num_z(ds),
                       height, width};
    if ((s = isl_predict_options_create(&o)) != ISL_OK ||
        (s = isl_predict_options_set_threads(o, threads)) != ISL_OK ||
        (s = isl_predict_options_set_heads(o, num_labels, heads)) != ISL_OK ||
        (s = isl_predict_image(model, o, &stack, outputs)) != ISL_OK)
        goto done;
    for (int k = 0; k < num_labels; k++) {
        int h = heads[k];
        const float *target;
        const uint8_t *mask;
        if ((s = isl_dataset_well_target(ds, well, isl_model_head_name(model, h), &target,
                                         &mask)) != ISL_OK)
            goto done;
        for (int r = 0; r < num_regions; r++)
            if (regions[r].well == well &&
                accumulate(&sums[h], outputs[h * ISL_STAT_COUNT + ISL_STAT_MEDIAN], target, mask,
                           width, &regions[r]) != 0) {
                s = ISL_ERROR_OUT_OF_MEMORY;
                goto done;
            }
    }
done:
    isl_predict_options_free(o);
    if (outputs)
        for (int i = 0; i < num_heads * ISL_STAT_COUNT; i++)
            free(outputs[i]);
    free(outputs);
    free(heads);
    return s;
}

isl_status cli_validate(const isl_dataset *ds, const isl_model *model, const isl_region *regions,
                        int num_regions, int threads, cli_validation *v)
{
    int num_heads = isl_model_num_heads(model);
    pairs *sums = calloc((size_t)num_heads, sizeof(pairs));
    if (!sums)
        return ISL_ERROR_OUT_OF_MEMORY;
    isl_status s = ISL_OK;
    for (int w = 0; w < isl_dataset_num_wells(ds) && s == ISL_OK; w++) {
        int used = 0;
        for (int k = 0; k < num_regions; k++)
            used |= regions[k].well == w;
        if (used)
            s = validate_well(ds, model, w, regions, num_regions, threads, sums);
    }
    for (int h = 0; h < num_heads; h++) {
        v->r[h] = pearson(&sums[h]);
        v->painted[h] = painted_background(&sums[h]);
        v->pixels[h] = (int64_t)sums[h].n;
        free(sums[h].pred);
        free(sums[h].target);
    }
    free(sums);
    return s;
}
