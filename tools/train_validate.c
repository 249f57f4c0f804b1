/* Validation of a model being trained: Pearson r between the median prediction and the
 * known target pixels of held-out regions, per label head. */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Running sums of one label's (prediction, target) pairs. */
typedef struct pair_sums {
    double n, x, y, xx, yy, xy;
} pair_sums;

static double pearson(const pair_sums *s)
{
    if (s->n < 2)
        return NAN;
    double cov = s->xy - s->x * s->y / s->n;
    double vx = s->xx - s->x * s->x / s->n;
    double vy = s->yy - s->y * s->y / s->n;
    if (!(vx > 0) || !(vy > 0))
        return NAN;
    return cov / sqrt(vx * vy);
}

static void accumulate(pair_sums *s, const float *pred, const float *target, const uint8_t *mask,
                       int width, const isl_region *r)
{
    for (int y = r->y0; y < r->y0 + r->height; y++)
        for (int x = r->x0; x < r->x0 + r->width; x++) {
            size_t i = (size_t)y * (size_t)width + (size_t)x;
            if (!mask[i])
                continue;
            double p = pred[i], t = target[i];
            s->n += 1;
            s->x += p;
            s->y += t;
            s->xx += p * p;
            s->yy += t * t;
            s->xy += p * t;
        }
}

/* Predicts the medians of every label head for one well (whole well: the same padding as
 * any prediction of it) and adds the pixels of its regions to sums. */
static isl_status validate_well(const isl_dataset *ds, const isl_model *model, int well,
                                const isl_region *regions, int num_regions, int threads,
                                pair_sums *sums)
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
            if (regions[r].well == well)
                accumulate(&sums[h], outputs[h * ISL_STAT_COUNT + ISL_STAT_MEDIAN], target, mask,
                           width, &regions[r]);
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
                        int num_regions, int threads, double *r, int64_t *pixels)
{
    int num_heads = isl_model_num_heads(model);
    pair_sums *sums = calloc((size_t)num_heads, sizeof(pair_sums));
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
        r[h] = pearson(&sums[h]);
        pixels[h] = (int64_t)sums[h].n;
    }
    free(sums);
    return s;
}
