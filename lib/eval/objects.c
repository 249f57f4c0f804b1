/* Object errors (Coelho et al. 2009: split, merged, added, missing) and object sizes. */
#include "eval_check.h"

#include <stdlib.h>

static isl_status check_labels(const char *fn, const int32_t *labels, int num, size_t n,
                               const char *which)
{
    if (!labels)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: %s labels are NULL", fn, which);
    if (num < 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: %d %s objects", fn, num, which);
    for (size_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] > num)
            return isl_fail(ISL_ERROR_VALUE, "%s: %s label %d at pixel %zu not in [0, %d]", fn,
                            which, labels[i], i, num);
    return ISL_OK;
}

/* The object of the other image that overlaps each object most: overlap counts of the
 * (a, b) pairs, a sparse table built by sorting pair codes. best[a] = 0 if none. */
static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

isl_status isl_eval_object_errors(const int32_t *true_labels, int num_true,
                                  const int32_t *pred_labels, int num_pred, int height,
                                  int width, int exclude_border, isl_object_errors *out)
{
    static const char fn[] = "isl_eval_object_errors";
    if (!out || out->struct_size < sizeof *out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: out is NULL or its struct_size is unset",
                        fn);
    if (height < 1 || width < 1)
        return isl_fail(ISL_ERROR_SHAPE, "%s: bad size %d x %d", fn, width, height);
    size_t n = (size_t)height * width;
    ISL_CHECK(check_labels(fn, true_labels, num_true, n, "true"));
    ISL_CHECK(check_labels(fn, pred_labels, num_pred, n, "predicted"));
    int64_t *pairs = malloc(n * sizeof *pairs);
    int32_t *best_pred = calloc((size_t)num_true + 1, sizeof *best_pred);
    int32_t *best_true = calloc((size_t)num_pred + 1, sizeof *best_true);
    int64_t *ov_pred = calloc((size_t)num_true + 1, sizeof *ov_pred);
    int64_t *ov_true = calloc((size_t)num_pred + 1, sizeof *ov_true);
    int32_t *hits_true = calloc((size_t)num_true + 1, sizeof *hits_true);
    int32_t *hits_pred = calloc((size_t)num_pred + 1, sizeof *hits_pred);
    uint8_t *edge_true = calloc((size_t)num_true + 1, 1), *edge_pred = calloc((size_t)num_pred + 1, 1);
    if (!pairs || !best_pred || !best_true || !ov_pred || !ov_true || !hits_true || !hits_pred ||
        !edge_true || !edge_pred) {
        free(pairs), free(best_pred), free(best_true), free(ov_pred), free(ov_true);
        free(hits_true), free(hits_pred), free(edge_true), free(edge_pred);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
        if (true_labels[i] && pred_labels[i])
            pairs[np++] = (int64_t)true_labels[i] * ((int64_t)num_pred + 1) + pred_labels[i];
        int y = (int)(i / (size_t)width), x = (int)(i % (size_t)width);
        if (y == 0 || x == 0 || y == height - 1 || x == width - 1) {
            edge_true[true_labels[i]] = 1;
            edge_pred[pred_labels[i]] = 1;
        }
    }
    qsort(pairs, np, sizeof *pairs, cmp_i64);
    /* Largest overlap per object; ties go to the lower label (the first in the sort). */
    for (size_t i = 0; i < np;) {
        size_t j = i;
        while (j < np && pairs[j] == pairs[i])
            j++;
        int32_t t = (int32_t)(pairs[i] / ((int64_t)num_pred + 1));
        int32_t p = (int32_t)(pairs[i] % ((int64_t)num_pred + 1));
        int64_t ov = (int64_t)(j - i);
        if (ov > ov_pred[t]) {
            ov_pred[t] = ov;
            best_pred[t] = p;
        }
        if (ov > ov_true[p]) {
            ov_true[p] = ov;
            best_true[p] = t;
        }
        i = j;
    }
    for (int t = 1; t <= num_true; t++)
        hits_pred[best_pred[t]]++;
    for (int p = 1; p <= num_pred; p++)
        hits_true[best_true[p]]++;
    isl_object_errors r = {.struct_size = sizeof r};
    for (int t = 1; t <= num_true; t++) {
        if (exclude_border && edge_true[t])
            continue;
        r.true_objects++;
        r.missed += best_pred[t] == 0;
        r.split += hits_true[t] >= 2;
    }
    for (int p = 1; p <= num_pred; p++) {
        if (exclude_border && edge_pred[p])
            continue;
        r.predicted_objects++;
        r.added += best_true[p] == 0;
        r.merged += hits_pred[p] >= 2;
    }
    r.accuracy = r.true_objects
                     ? (double)(r.true_objects - r.split - r.merged - r.added - r.missed) /
                           r.true_objects
                     : NAN;
    *out = r;
    free(pairs), free(best_pred), free(best_true), free(ov_pred), free(ov_true);
    free(hits_true), free(hits_pred), free(edge_true), free(edge_pred);
    return ISL_OK;
}

isl_status isl_eval_object_radii(const int32_t *labels, int height, int width, int num_objects,
                                 double *radii)
{
    static const char fn[] = "isl_eval_object_radii";
    if (!radii && num_objects > 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: radii is NULL", fn);
    if (height < 1 || width < 1)
        return isl_fail(ISL_ERROR_SHAPE, "%s: bad size %d x %d", fn, width, height);
    size_t n = (size_t)height * width;
    ISL_CHECK(check_labels(fn, labels, num_objects, n, "object"));
    for (int i = 0; i < num_objects; i++)
        radii[i] = 0;
    for (size_t i = 0; i < n; i++)
        if (labels[i])
            radii[labels[i] - 1] += 1;
    for (int i = 0; i < num_objects; i++)
        radii[i] = sqrt(radii[i] / M_PI);
    return ISL_OK;
}
