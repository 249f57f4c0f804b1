/* Nuclear segmentation: threshold (Otsu), 8-connected components and a watershed of the
 * distance transform that separates touching round nuclei. */
#include "eval_check.h"

#include <stdlib.h>
#include <string.h>

static const int dx8[8] = {-1, 0, 1, -1, 1, -1, 0, 1};
static const int dy8[8] = {-1, -1, -1, 0, 0, 1, 1, 1};

/* The k-th of the 8 neighbours of pixel p (row-major, h x w) in *q; 0 if it lies outside
 * the image. */
static inline int neighbour8(int64_t p, int k, int h, int w, int64_t *q)
{
    int y = (int)(p / w) + dy8[k], x = (int)(p % w) + dx8[k];
    if (y < 0 || y >= h || x < 0 || x >= w)
        return 0;
    *q = (int64_t)y * w + x;
    return 1;
}

/* Labels the 8-connected components of fg (nonzero) as 1..n in scan order, with an
 * explicit stack (no recursion depth limit). Returns n, or -1 when out of memory. */
static int components(const uint8_t *fg, int h, int w, int32_t *labels)
{
    size_t n = (size_t)h * w;
    int64_t *stack = malloc(n * sizeof *stack);
    if (!stack)
        return -1;
    memset(labels, 0, n * sizeof *labels);
    int next = 0;
    for (size_t s = 0; s < n; s++) {
        if (!fg[s] || labels[s])
            continue;
        labels[s] = ++next;
        size_t top = 0;
        stack[top++] = (int64_t)s;
        while (top) {
            int64_t p = stack[--top], q;
            for (int k = 0; k < 8; k++)
                if (neighbour8(p, k, h, w, &q) && fg[q] && !labels[q]) {
                    labels[q] = next;
                    stack[top++] = q;
                }
        }
    }
    free(stack);
    return next;
}

/* Chamfer 3-4 distance to the nearest background pixel (image borders count as
 * foreground continuing outward, so nuclei cut by the border keep their size). */
static void chamfer(const uint8_t *fg, int h, int w, int32_t *d)
{
    const int32_t big = INT32_MAX / 2;
    for (int64_t i = 0; i < (int64_t)h * w; i++)
        d[i] = fg[i] ? big : 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int32_t *p = &d[(int64_t)y * w + x];
            if (x > 0 && p[-1] + 3 < *p) *p = p[-1] + 3;
            if (y > 0 && p[-w] + 3 < *p) *p = p[-w] + 3;
            if (y > 0 && x > 0 && p[-w - 1] + 4 < *p) *p = p[-w - 1] + 4;
            if (y > 0 && x < w - 1 && p[-w + 1] + 4 < *p) *p = p[-w + 1] + 4;
        }
    for (int y = h - 1; y >= 0; y--)
        for (int x = w - 1; x >= 0; x--) {
            int32_t *p = &d[(int64_t)y * w + x];
            if (x < w - 1 && p[1] + 3 < *p) *p = p[1] + 3;
            if (y < h - 1 && p[w] + 3 < *p) *p = p[w] + 3;
            if (y < h - 1 && x < w - 1 && p[w + 1] + 4 < *p) *p = p[w + 1] + 4;
            if (y < h - 1 && x > 0 && p[w - 1] + 4 < *p) *p = p[w - 1] + 4;
        }
    for (int64_t i = 0; i < (int64_t)h * w; i++)
        if (d[i] == big) /* a foreground image without background */
            d[i] = 3 * (h > w ? h : w);
}

/* Seeds: within each component, the pixels farther than SEED_FRACTION of the
 * component's largest distance from the background. Two touching disks of radius r
 * whose centres are more than 1.43 r apart meet at a neck narrower than that and get one
 * seed each; one round nucleus gets one. */
#define SEED_FRACTION 0.7

/* Floods the components from the seeds in order of decreasing distance (a bucket queue
 * over the integer chamfer distances), so that boundaries fall on the necks. */
static int watershed(const uint8_t *fg, int h, int w, int32_t *labels, int *num)
{
    size_t n = (size_t)h * w;
    int32_t *dist = malloc(n * sizeof *dist), *comp_max = NULL, *seeds = malloc(n * sizeof *seeds);
    uint8_t *seed_fg = malloc(n);
    int64_t *next = malloc(n * sizeof *next), *head = NULL;
    int status = -1;
    if (!dist || !seeds || !seed_fg || !next)
        goto done;
    chamfer(fg, h, w, dist);
    comp_max = calloc((size_t)*num + 1, sizeof *comp_max);
    if (!comp_max)
        goto done;
    int32_t top = 0;
    for (size_t i = 0; i < n; i++) {
        if (labels[i] && dist[i] > comp_max[labels[i]])
            comp_max[labels[i]] = dist[i];
        if (dist[i] > top)
            top = dist[i];
    }
    for (size_t i = 0; i < n; i++)
        seed_fg[i] = labels[i] && dist[i] > SEED_FRACTION * comp_max[labels[i]];
    int num_seeds = components(seed_fg, h, w, seeds);
    if (num_seeds < 0)
        goto done;
    head = malloc(((size_t)top + 1) * sizeof *head);
    if (!head)
        goto done;
    for (int32_t v = 0; v <= top; v++)
        head[v] = -1;
    /* Seed pixels enter the queue; every other foreground pixel is taken by the first
     * labelled neighbour to reach it from the highest level down. */
    for (size_t i = 0; i < n; i++) {
        labels[i] = seeds[i];
        if (seeds[i]) {
            next[i] = head[dist[i]];
            head[dist[i]] = (int64_t)i;
        }
    }
    int32_t level = top;
    for (;;) {
        while (level >= 0 && head[level] < 0)
            level--;
        if (level < 0)
            break;
        int64_t p = head[level], q;
        head[level] = next[p];
        for (int k = 0; k < 8; k++) {
            if (!neighbour8(p, k, h, w, &q) || !fg[q] || labels[q])
                continue;
            labels[q] = labels[p];
            int32_t lv = dist[q] < level ? dist[q] : level;
            next[q] = head[lv];
            head[lv] = q;
        }
    }
    *num = num_seeds;
    status = 0;
done:
    free(dist);
    free(comp_max);
    free(seeds);
    free(seed_fg);
    free(next);
    free(head);
    return status;
}

/* Drops objects smaller than min_area and renumbers the rest 1..n in scan order. */
static int drop_small(int32_t *labels, size_t n, int num, int min_area)
{
    int64_t *area = calloc((size_t)num + 1, sizeof *area);
    int32_t *map = calloc((size_t)num + 1, sizeof *map);
    if (!area || !map) {
        free(area);
        free(map);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        area[labels[i]]++;
    int kept = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t l = labels[i];
        if (!l)
            continue;
        if (!map[l])
            map[l] = area[l] >= min_area ? ++kept : -1;
        labels[i] = map[l] > 0 ? map[l] : 0;
    }
    free(area);
    free(map);
    return kept;
}

isl_status isl_eval_segment_nuclei(const float *image, int height, int width, double threshold,
                                   int min_area, int split_touching, int32_t *labels,
                                   int *num_objects)
{
    if (!labels || !num_objects)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_segment_nuclei: %s is NULL",
                        labels ? "num_objects" : "labels");
    if (height < 1 || width < 1)
        return isl_fail(ISL_ERROR_SHAPE, "isl_eval_segment_nuclei: bad size %d x %d", width,
                        height);
    if (isnan(threshold))
        return isl_fail(ISL_ERROR_VALUE, "isl_eval_segment_nuclei: threshold is NaN");
    size_t n = (size_t)height * width;
    ISL_CHECK(isl_eval_check_pixels("isl_eval_segment_nuclei", image, NULL, NULL, (int64_t)n));
    if (threshold < 0)
        ISL_CHECK(isl_eval_otsu(image, NULL, (int64_t)n, &threshold));
    uint8_t *fg = malloc(n);
    if (!fg)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "isl_eval_segment_nuclei: out of memory");
    for (size_t i = 0; i < n; i++)
        fg[i] = image[i] >= threshold;
    int num = components(fg, height, width, labels);
    if (num > 0 && split_touching && watershed(fg, height, width, labels, &num) != 0)
        num = -1;
    free(fg);
    if (num > 0) /* also renumbers the watershed's seeds in scan order */
        num = drop_small(labels, n, num, min_area > 1 ? min_area : 1);
    if (num < 0)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "isl_eval_segment_nuclei: out of memory");
    *num_objects = num;
    return ISL_OK;
}
