/* Random training crops from a dataset (isl_sampler_*; docs/training.md, "Sampler").
 *
 * Creating a sampler does the slow work once: each well is normalized and mirror-padded
 * exactly as prediction prepares its input (lib/common/input.h), and an index of the
 * crop positions worth drawing is built. A draw then only copies (milliseconds for a
 * batch of 4 crops of 378). Draws never modify the sampler, so threads may share it. */
#include "dataset.h"

#include "arch.h"
#include "augment.h"
#include "error.h"
#include "params.h"
#include "input.h"
#include "rescale.h"
#include "rng.h"

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 32 /* transposed copies go block by block to keep strided reads in cache */

/* Where crops may be drawn in one well. */
typedef struct well_index {
    int64_t label_pixels; /* known, not held-out pixels, summed over the mapped labels */
    int64_t free_pixels;  /* pixels not held out */
    int64_t windows;      /* output windows to draw from */
    uint64_t *valid;      /* bitmap [positions_y][words]: window at (oy, ox) may be drawn */
    int64_t *row_start;   /* [positions_y + 1]: windows in the rows before */
} well_index;

/* A label head's target in one well: the dataset's arrays (which never move), or NULL
 * values when the well lacks the label. */
typedef struct head_target {
    const float *values;
    const uint8_t *mask;
    int64_t known;
} head_target;

/* What a sampler keeps of a well. Nothing points into the dataset's well or target
 * records, so adding to the dataset later cannot leave the sampler dangling. */
typedef struct sampler_well {
    int well, height, width;
    float *padded;                 /* [num_z, height + 242, width + 242], normalized */
    head_target *targets;          /* [num_labels] */
    uint8_t *held;                 /* [height * width] 1 where held out; NULL: nothing held */
    uint32_t *held_sum;            /* integral image of held while scale jitter is on */
    int positions_y, positions_x;  /* output window positions: side - out + 1 */
    int words;                     /* bitmap words per row of positions */
    well_index index;
    well_index anywhere;           /* windows holding a pixel not held out (unlabelled share) */
} sampler_well;

struct isl_sampler {
    const isl_dataset *ds;
    int crop, out, num_z;
    int num_labels;         /* L: the model's label heads */
    int augment;
    isl_photometric photometric; /* contrast, gamma, blur and noise of the inputs; 0: off */
    double unlabelled;      /* share of crops drawn anywhere, labelled or not; 0: off */
    double scale;           /* zoom factors e^-scale .. e^scale; 0: off */
    int from_labels;        /* 1: windows holding a known label pixel; 0: no label is known
                               anywhere, windows holding a pixel that is not held out */
    int num_wells;
    sampler_well *wells;
    int64_t *well_start;    /* [num_wells + 1]: cumulative draw weights */
    int64_t *anywhere_start; /* [num_wells + 1]: the same for the unlabelled share (pixels
                                not held out); NULL while the share is 0 */
};

/* ---------------------------------------------------------------------------------- */
/* Index of drawable windows                                                           */
/* ---------------------------------------------------------------------------------- */

static void free_index(well_index *x)
{
    free(x->valid);
    free(x->row_start);
    x->valid = NULL;
    x->row_start = NULL;
}

static int64_t count_label_pixels(const isl_sampler *s, const sampler_well *w, const uint8_t *held)
{
    const size_t n = (size_t)w->height * (size_t)w->width;
    int64_t total = 0;
    for (int l = 0; l < s->num_labels; l++) {
        const head_target *t = &w->targets[l];
        if (!t->values)
            continue;
        if (!held) {
            total += t->known;
            continue;
        }
        for (size_t i = 0; i < n; i++)
            total += t->mask[i] && !held[i];
    }
    return total;
}

/* 1 where a pixel may make a window drawable: a mapped label is known there and it is not
 * held out (from_labels), or merely not held out. */
static void usable_row(const isl_sampler *s, const sampler_well *w, const uint8_t *held,
                       int from_labels, int y, uint8_t *row)
{
    const int width = w->width;
    const size_t base = (size_t)y * (size_t)width;
    memset(row, !from_labels, (size_t)(unsigned)width); /* width > 0: a well is never empty */
    for (int l = 0; from_labels && l < s->num_labels; l++)
        if (w->targets[l].values)
            for (int x = 0; x < width; x++)
                row[x] |= w->targets[l].mask[base + (size_t)x];
    if (held)
        for (int x = 0; x < width; x++)
            row[x] &= !held[base + (size_t)x];
}

/* The windows of one well whose out x out output holds a usable pixel: column counts over
 * a sliding band of `out` rows, then a sliding count along each row. O(height * width). */
static isl_status build_index(const isl_sampler *s, const sampler_well *w, const uint8_t *held,
                              int from_labels, well_index *x)
{
    const int height = w->height, width = w->width, out = s->out;
    memset(x, 0, sizeof(*x));
    x->label_pixels = count_label_pixels(s, w, held);
    x->free_pixels = (int64_t)height * width;
    for (size_t i = 0; held && i < (size_t)height * (size_t)width; i++)
        x->free_pixels -= held[i];
    x->valid = calloc((size_t)w->positions_y * (size_t)w->words, sizeof(uint64_t));
    x->row_start = malloc(sizeof(int64_t) * ((size_t)w->positions_y + 1));
    int *column = calloc((size_t)width, sizeof(int));
    uint8_t *row = malloc((size_t)width);
    if (!x->valid || !x->row_start || !column || !row) {
        free(column);
        free(row);
        free_index(x);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "well \"%s\": out of memory",
                        s->ds->wells[w->well].name);
    }
    x->row_start[0] = 0;
    for (int y = 0; y < height; y++) {
        usable_row(s, w, held, from_labels, y, row);
        for (int c = 0; c < width; c++)
            column[c] += row[c];
        if (y >= out) {
            usable_row(s, w, held, from_labels, y - out, row);
            for (int c = 0; c < width; c++)
                column[c] -= row[c];
        }
        if (y < out - 1)
            continue;
        const int oy = y - out + 1; /* column[c]: usable pixels in rows [oy, oy + out) */
        uint64_t *bits = x->valid + (size_t)oy * (size_t)w->words;
        int64_t in_window = 0, count = 0;
        for (int c = 0; c < width; c++) {
            in_window += column[c] > 0;
            if (c >= out)
                in_window -= column[c - out] > 0;
            if (c >= out - 1 && in_window > 0) {
                int ox = c - out + 1;
                bits[ox / 64] |= (uint64_t)1 << (ox % 64);
                count++;
            }
        }
        x->row_start[oy + 1] = x->row_start[oy] + count;
    }
    x->windows = x->row_start[w->positions_y];
    free(column);
    free(row);
    return ISL_OK;
}

/* Draw weights: a well in proportion to its usable label pixels, or to its pixels that
 * are not held out when no label is known anywhere. */
static void update_weights(isl_sampler *s)
{
    s->well_start[0] = 0;
    for (int i = 0; i < s->num_wells; i++) {
        const well_index *x = &s->wells[i].index;
        s->well_start[i + 1] = s->well_start[i] + (s->from_labels ? x->label_pixels
                                                                   : x->free_pixels);
    }
}

/* ---------------------------------------------------------------------------------- */
/* Creating                                                                            */
/* ---------------------------------------------------------------------------------- */

void isl_sampler_free(isl_sampler *s)
{
    if (!s)
        return;
    for (int i = 0; s->wells && i < s->num_wells; i++) {
        free(s->wells[i].padded);
        free(s->wells[i].targets);
        free(s->wells[i].held);
        free(s->wells[i].held_sum);
        free_index(&s->wells[i].index);
        free_index(&s->wells[i].anywhere);
    }
    free(s->wells);
    free(s->well_start);
    free(s->anywhere_start);
    free(s);
}

/* The well normalized for the model and padded by ISL_INPUT_PAD, as prediction does it. */
static isl_status pad_well(isl_sampler *s, sampler_well *w, const char *normalization)
{
    const isl_ds_well *src = &s->ds->wells[w->well];
    const int ph = src->height + 2 * ISL_INPUT_PAD, pw = src->width + 2 * ISL_INPUT_PAD;
    isl_stack stack = {src->stack, ISL_DTYPE_F32, s->num_z, src->height, src->width};
    isl_input_transform t = {0};
    w->padded = malloc(sizeof(float) * (size_t)s->num_z * (size_t)ph * (size_t)pw);
    int *col_index = malloc(sizeof(int) * (size_t)pw);
    isl_status st = ISL_OK;
    if (!w->padded || !col_index)
        st = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "well \"%s\": out of memory for the padded stack",
                      src->name);
    else if ((st = isl_input_transform_init(normalization, &stack, &t)) != ISL_OK)
        isl_error_prefix("well \"%s\": ", src->name);
    else
        isl_input_fill(w->padded, &stack, &t, 0, 0, ph, pw, col_index);
    isl_input_transform_free(&t);
    free(col_index);
    return st;
}

static isl_status setup_well(isl_sampler *s, int i, const int *label_of_head,
                             const char *normalization)
{
    sampler_well *w = &s->wells[i];
    const isl_ds_well *src = &s->ds->wells[i];
    *w = (sampler_well){.well = i, .height = src->height, .width = src->width};
    if (w->height < s->out || w->width < s->out)
        return isl_fail(ISL_ERROR_SHAPE,
                        "well \"%s\" is %dx%d, smaller than the %dx%d output window of %d-pixel "
                        "crops; use a smaller crop",
                        src->name, w->width, w->height, s->out, s->out, s->crop);
    w->positions_y = w->height - s->out + 1;
    w->positions_x = w->width - s->out + 1;
    w->words = (w->positions_x + 63) / 64;
    w->targets = calloc((size_t)(s->num_labels ? s->num_labels : 1), sizeof(*w->targets));
    if (!w->targets)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int l = 0; l < s->num_labels; l++) {
        const isl_ds_target *t = isl_ds_find_target(src, label_of_head[l]);
        if (t)
            w->targets[l] = (head_target){t->values, t->mask, t->known};
    }
    return pad_well(s, w, normalization);
}

/* Builds every well's index for the mode that fits (labels if any is known). On failure
 * the sampler keeps its previous indexes. */
static isl_status index_all(isl_sampler *s)
{
    int64_t known = 0;
    for (int i = 0; i < s->num_wells; i++)
        known += count_label_pixels(s, &s->wells[i], s->wells[i].held);
    int from_labels = known > 0;
    well_index *fresh = calloc((size_t)s->num_wells, sizeof(*fresh));
    isl_status st = fresh ? ISL_OK : isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    int built = 0;
    for (; st == ISL_OK && built < s->num_wells; built++)
        st = build_index(s, &s->wells[built], s->wells[built].held, from_labels, &fresh[built]);
    for (int i = 0; i < built; i++) {
        well_index *drop = st == ISL_OK ? &s->wells[i].index : &fresh[i];
        free_index(drop);
        if (st == ISL_OK)
            s->wells[i].index = fresh[i];
    }
    free(fresh);
    if (st == ISL_OK) {
        s->from_labels = from_labels;
        update_weights(s);
    }
    return st;
}

isl_status isl_sampler_create(const isl_dataset *ds, const isl_model *model, int crop,
                              isl_sampler **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_sampler_create: out is NULL");
    *out = NULL;
    if (!ds || !model)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_sampler_create: %s is NULL",
                        ds ? "model" : "dataset");
    if (isl_arch_output_side(crop) < 0)
        return isl_fail(ISL_ERROR_SHAPE, "crop side %d is not 250 + 16m (250, 266, ..., 378, ...)",
                        crop);
    if (ds->num_z != isl_model_num_z(model))
        return isl_fail(ISL_ERROR_SHAPE, "the dataset has %d z planes but the model needs %d",
                        ds->num_z, isl_model_num_z(model));
    if (ds->num_wells == 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "the dataset has no wells");
    int heads = isl_model_num_heads(model);
    int labels = heads > 0 && !strcmp(isl_model_head_name(model, heads - 1), ISL_AUTOENCODER_NAME)
                     ? heads - 1
                     : heads;
    isl_sampler *s = calloc(1, sizeof(*s));
    int *label_of_head = malloc(sizeof(int) * (size_t)(labels ? labels : 1));
    if (!s || !label_of_head) {
        free(s);
        free(label_of_head);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    *s = (isl_sampler){.ds = ds, .crop = crop, .out = isl_arch_output_side(crop),
                       .num_z = ds->num_z, .num_labels = labels, .augment = 1,
                       .num_wells = ds->num_wells};
    for (int l = 0; l < labels; l++)
        label_of_head[l] = isl_ds_label_index(ds, isl_model_head_name(model, l));
    s->wells = calloc((size_t)s->num_wells, sizeof(*s->wells));
    s->well_start = calloc((size_t)s->num_wells + 1, sizeof(int64_t));
    isl_status st = s->wells && s->well_start ? ISL_OK
                                              : isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; st == ISL_OK && i < s->num_wells; i++)
        st = setup_well(s, i, label_of_head, isl_model_input_normalization(model));
    if (st == ISL_OK)
        st = index_all(s);
    free(label_of_head);
    if (st != ISL_OK) {
        isl_sampler_free(s);
        return st;
    }
    *out = s;
    return ISL_OK;
}

isl_status isl_sampler_set_augment(isl_sampler *s, int enable)
{
    if (!s)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_sampler_set_augment: sampler is NULL");
    s->augment = enable != 0;
    return ISL_OK;
}

/* The checks every amount setter makes: a sampler, and `value` in [0, max]. `meaning`
 * (or NULL) explains the bound in the message. */
static isl_status check_amount(const isl_sampler *s, const char *setter, const char *what,
                               double value, double max, const char *meaning)
{
    if (!s)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: sampler is NULL", setter);
    if (!(value >= 0.0 && value <= max))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s %g is outside [0, %g]%s%s%s", what, value,
                        max, meaning ? " (" : "", meaning ? meaning : "", meaning ? ")" : "");
    return ISL_OK;
}

isl_status isl_sampler_set_contrast_jitter(isl_sampler *s, double amount)
{
    ISL_CHECK(check_amount(s, "isl_sampler_set_contrast_jitter", "contrast jitter", amount, 1.0,
                           "factors e^-a .. e^a"));
    s->photometric.contrast = amount;
    return ISL_OK;
}

isl_status isl_sampler_set_gamma_jitter(isl_sampler *s, double amount)
{
    ISL_CHECK(check_amount(s, "isl_sampler_set_gamma_jitter", "gamma jitter", amount, 1.0,
                           "exponents e^-a .. e^a"));
    s->photometric.gamma = amount;
    return ISL_OK;
}

isl_status isl_sampler_set_blur(isl_sampler *s, double sigma)
{
    ISL_CHECK(check_amount(s, "isl_sampler_set_blur", "blur", sigma, 8.0,
                           "the largest sigma in pixels"));
    s->photometric.blur = sigma;
    return ISL_OK;
}

isl_status isl_sampler_set_noise(isl_sampler *s, double sd)
{
    ISL_CHECK(check_amount(s, "isl_sampler_set_noise", "noise", sd, 0.5,
                           "the largest standard deviation"));
    s->photometric.noise = sd;
    return ISL_OK;
}

/* Keeps w->held_sum in step with w->held while scale jitter is on (freed when off). */
static isl_status sum_held(const isl_sampler *s, sampler_well *w)
{
    free(w->held_sum);
    w->held_sum = NULL;
    if (s->scale == 0 || !w->held)
        return ISL_OK;
    w->held_sum = isl_integral_bytes(w->held, w->height, w->width);
    return w->held_sum ? ISL_OK : isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
}

isl_status isl_sampler_set_scale_jitter(isl_sampler *s, double amount)
{
    ISL_CHECK(check_amount(s, "isl_sampler_set_scale_jitter", "scale jitter", amount, 0.5,
                           "zoom factors e^-a .. e^a"));
    s->scale = amount;
    for (int i = 0; i < s->num_wells; i++) {
        isl_status st = sum_held(s, &s->wells[i]);
        if (st != ISL_OK) { /* off rather than half set up */
            s->scale = 0;
            for (int k = 0; k < s->num_wells; k++)
                sum_held(s, &s->wells[k]);
            return st;
        }
    }
    return ISL_OK;
}

/* The windows of every well that hold a pixel not held out, for the unlabelled share.
 * On failure the sampler keeps its previous indexes. */
static isl_status index_anywhere(isl_sampler *s)
{
    well_index *fresh = calloc((size_t)s->num_wells, sizeof(*fresh));
    isl_status st = fresh ? ISL_OK : isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    int built = 0;
    for (; st == ISL_OK && built < s->num_wells; built++)
        st = build_index(s, &s->wells[built], s->wells[built].held, 0, &fresh[built]);
    for (int i = 0; i < built; i++) {
        free_index(st == ISL_OK ? &s->wells[i].anywhere : &fresh[i]);
        if (st == ISL_OK)
            s->wells[i].anywhere = fresh[i];
    }
    free(fresh);
    if (st == ISL_OK) {
        s->anywhere_start[0] = 0;
        for (int i = 0; i < s->num_wells; i++)
            s->anywhere_start[i + 1] = s->anywhere_start[i] + s->wells[i].anywhere.free_pixels;
    }
    return st;
}

isl_status isl_sampler_set_unlabelled_share(isl_sampler *s, double share)
{
    ISL_CHECK(check_amount(s, "isl_sampler_set_unlabelled_share", "unlabelled share", share, 1.0,
                           NULL));
    if (share > 0 && !s->anywhere_start) {
        if (!(s->anywhere_start = calloc((size_t)s->num_wells + 1, sizeof(int64_t))))
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
        isl_status st = index_anywhere(s);
        if (st != ISL_OK) {
            free(s->anywhere_start);
            s->anywhere_start = NULL;
            return st;
        }
    }
    s->unlabelled = share;
    return ISL_OK;
}

static isl_status hold_out_labelled(isl_sampler *s, const isl_region *r);

isl_status isl_sampler_hold_out(isl_sampler *s, const isl_region *r)
{
    isl_status st = hold_out_labelled(s, r);
    if (st == ISL_OK && s->anywhere_start)
        st = index_anywhere(s);
    return st;
}

static isl_status hold_out_labelled(isl_sampler *s, const isl_region *r)
{
    if (!s || !r)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_sampler_hold_out: %s is NULL",
                        s ? "region" : "sampler");
    if (r->well < 0 || r->well >= s->num_wells)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "hold-out region: well %d does not exist",
                        r->well);
    sampler_well *w = &s->wells[r->well];
    const int height = w->height, width = w->width;
    if (r->width < 1 || r->height < 1 || r->x0 < 0 || r->y0 < 0 || r->x0 > width - r->width ||
        r->y0 > height - r->height)
        return isl_fail(ISL_ERROR_SHAPE,
                        "hold-out region %dx%d at (x %d, y %d) does not fit inside well \"%s\" "
                        "(%dx%d)",
                        r->width, r->height, r->x0, r->y0, s->ds->wells[r->well].name, width,
                        height);
    /* Work on copies so that a failure leaves the sampler as it was. */
    const size_t n = (size_t)height * (size_t)width;
    uint8_t *held = w->held ? malloc(n) : calloc(n, 1);
    if (!held)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    if (w->held)
        memcpy(held, w->held, n);
    for (int y = r->y0; y < r->y0 + r->height; y++)
        memset(held + (size_t)y * (size_t)width + (size_t)r->x0, 1, (size_t)r->width);
    int64_t known = count_label_pixels(s, w, held);
    for (int i = 0; i < s->num_wells; i++)
        known += i == r->well ? 0 : s->wells[i].index.label_pixels;
    int from_labels = known > 0;
    if (from_labels != s->from_labels) {
        /* The mode changes (the last known pixels were held out): every well's index. */
        uint8_t *old = w->held;
        w->held = held;
        isl_status st = index_all(s);
        w->held = st == ISL_OK ? held : old;
        free(st == ISL_OK ? old : held);
        return st == ISL_OK ? sum_held(s, w) : st;
    }
    well_index x;
    isl_status st = build_index(s, w, held, from_labels, &x);
    if (st != ISL_OK) {
        free(held);
        return st;
    }
    free(w->held);
    w->held = held;
    free_index(&w->index);
    w->index = x;
    update_weights(s);
    return sum_held(s, w);
}

/* ---------------------------------------------------------------------------------- */
/* Drawing                                                                             */
/* ---------------------------------------------------------------------------------- */

/* Uniform in [0, n) (multiply-shift; the bias is below 2^-40 for any n used here). */
static int64_t below(uint64_t *state, int64_t n)
{
    return (int64_t)(((unsigned __int128)isl_splitmix64(state) * (uint64_t)n) >> 64);
}

/* The first i with start[i + 1] > k, for a non-decreasing start[0..n]. */
static int find_interval(const int64_t *start, int n, int64_t k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (start[mid + 1] > k)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* The k-th window of index x of a well, in row-major order. */
static void window_at(const sampler_well *w, const well_index *x, int64_t k, int *oy, int *ox)
{
    int y = find_interval(x->row_start, w->positions_y, k);
    int64_t rest = k - x->row_start[y];
    const uint64_t *bits = x->valid + (size_t)y * (size_t)w->words;
    int word = 0;
    while (__builtin_popcountll(bits[word]) <= rest)
        rest -= __builtin_popcountll(bits[word++]);
    uint64_t b = bits[word];
    while (rest-- > 0)
        b &= b - 1; /* drop the lowest set bit */
    *oy = y;
    *ox = word * 64 + __builtin_ctzll(b);
}

/* Source steps of the dihedral transform t of an n x n square read with row stride
 * `stride`: output (y, x) reads origin[y * dy + x * dx]. Bit 0 flips rows, bit 1 flips
 * columns, bit 2 transposes; t = 0 is the identity. */
typedef struct walk {
    ptrdiff_t origin, dy, dx;
} walk;

static walk make_walk(int t, int n, ptrdiff_t stride)
{
    ptrdiff_t row = t & 1 ? -stride : stride, col = t & 2 ? -1 : 1;
    walk k = {(t & 1 ? (ptrdiff_t)(n - 1) * stride : 0) + (t & 2 ? n - 1 : 0),
              t & 4 ? col : row, t & 4 ? row : col};
    return k;
}

static void copy_plane(float *dst, const float *src, int n, walk k)
{
    const float *o = src + k.origin;
    if (k.dx == 1) {
        for (int y = 0; y < n; y++)
            memcpy(dst + (size_t)y * n, o + y * k.dy, sizeof(float) * (size_t)n);
    } else if (k.dx == -1) {
        for (int y = 0; y < n; y++) {
            const float *p = o + y * k.dy;
            float *d = dst + (size_t)y * n;
            for (int x = 0; x < n; x++)
                d[x] = p[-x];
        }
    } else {
        for (int by = 0; by < n; by += BLOCK)
            for (int bx = 0; bx < n; bx += BLOCK)
                for (int y = by; y < by + BLOCK && y < n; y++)
                    for (int x = bx; x < bx + BLOCK && x < n; x++)
                        dst[(size_t)y * n + x] = o[y * k.dy + x * k.dx];
    }
}

/* One label's output window: values where known and not held out, else 0 and mask 0. */
static void copy_target(float *values, uint8_t *mask, const head_target *t,
                        const uint8_t *held, size_t offset, int n, walk k)
{
    if (!t->values) {
        memset(values, 0, sizeof(float) * (size_t)n * n);
        memset(mask, 0, (size_t)n * n);
        return;
    }
    const float *v = t->values + offset + k.origin;
    const uint8_t *m = t->mask + offset + k.origin;
    const uint8_t *h = held ? held + offset + k.origin : NULL;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            ptrdiff_t i = y * k.dy + x * k.dx;
            int known = m[i] && !(h && h[i]);
            mask[(size_t)y * n + x] = (uint8_t)known;
            values[(size_t)y * n + x] = known ? v[i] : 0.0f;
        }
}

/* Buffers of one scaled crop: a plane and a label window before their dihedral walk, and
 * the bilinear sample positions of both sides. */
typedef struct scale_work {
    float *plane, *values;
    uint8_t *mask;
    int *lo;      /* [2 crop]: the input rows' samples, then the columns' */
    float *frac;  /* [2 crop] */
} scale_work;

static void scale_work_free(scale_work *k)
{
    free(k->plane);
    free(k->values);
    free(k->mask);
    free(k->lo);
    free(k->frac);
}

static isl_status scale_work_alloc(const isl_sampler *s, scale_work *k)
{
    const size_t crop = (size_t)s->crop, out = (size_t)s->out;
    *k = (scale_work){malloc(sizeof(float) * crop * crop), malloc(sizeof(float) * out * out),
                      malloc(out * out), malloc(sizeof(int) * 2 * crop),
                      malloc(sizeof(float) * 2 * crop)};
    if (k->plane && k->values && k->mask && k->lo && k->frac)
        return ISL_OK;
    scale_work_free(k);
    return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
}

/* One crop zoomed by `factor` about the centre of window (oy, ox), then walked by dihedral
 * transform t: inputs bilinear from the padded well (clamped at its edges), each label's
 * values bilinear from the dataset where all four neighbours are known and inside the
 * well, else unknown. A zoomed-out crop (factor > 1) widens every output's receptive
 * field to 121 factor source pixels, so a target is also unknown where a held-out pixel
 * lies within floor(121 (factor - 1)) + 1 of its neighbours: with the validation margin
 * of 121 no trained output then sees a held-out pixel, as without scaling. */
static isl_status scaled_crop(const isl_sampler *s, const sampler_well *w, int oy, int ox,
                              double factor, int t, scale_work *k, float *crop_inputs,
                              float *targets, uint8_t *masks)
{
    const int crop = s->crop, out = s->out, ph = w->height + 2 * ISL_INPUT_PAD,
              pw = w->width + 2 * ISL_INPUT_PAD;
    if (w->held && !w->held_sum)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "scale jitter: the held-out pixels' sums "
                        "are missing (out of memory when the region was held out)");
    const size_t crop_plane = (size_t)crop * crop, out_plane = (size_t)out * out;
    const double centre = 0.5 * (crop - 1); /* the same point as the output's centre */
    int *lo_y = k->lo, *lo_x = k->lo + crop;
    float *fy = k->frac, *fx = k->frac + crop;
    isl_rescale_axis(crop, oy + centre, factor, ph, lo_y, fy);
    isl_rescale_axis(crop, ox + centre, factor, pw, lo_x, fx);
    walk in_walk = make_walk(t, crop, crop);
    for (int z = 0; z < s->num_z; z++) {
        isl_rescale_plane(k->plane, crop, w->padded + (size_t)z * ph * pw, pw, ph, pw, lo_y, fy,
                          lo_x, fx);
        copy_plane(crop_inputs + (size_t)z * crop_plane, k->plane, crop, in_walk);
    }
    /* Output i is input i + ISL_INPUT_PAD, which is the well's pixel i in padded
     * coordinates: the same centre, in the well's coordinates. */
    const double half = 0.5 * (out - 1);
    const double reach = factor > 1 ? floor(ISL_INPUT_PAD * (factor - 1)) + 1 : 0;
    walk out_walk = make_walk(t, out, out);
    for (int l = 0; l < s->num_labels; l++) {
        const head_target *src = &w->targets[l];
        const head_target scaled = {src->values ? k->values : NULL, k->mask, 0};
        for (int y = 0; src->values && y < out; y++) {
            const double py = oy + half + (y - half) * factor;
            for (int x = 0; x < out; x++) {
                const double px = ox + half + (x - half) * factor;
                const size_t o = (size_t)y * out + x;
                k->values[o] = 0.0f;
                k->mask[o] = 0;
                if (py < 0 || px < 0 || py > w->height - 1 || px > w->width - 1)
                    continue;
                const int y0 = (int)py, x0 = (int)px;
                const int y1 = y0 + (y0 < w->height - 1), x1 = x0 + (x0 < w->width - 1);
                const size_t a = (size_t)y0 * w->width, b = (size_t)y1 * w->width;
                if (!src->mask[a + x0] || !src->mask[a + x1] || !src->mask[b + x0] ||
                    !src->mask[b + x1])
                    continue;
                if (w->held_sum && isl_box_count(w->held_sum, w->height, w->width,
                                                 y0 - (int)reach, x0 - (int)reach,
                                                 y1 + (int)reach, x1 + (int)reach))
                    continue;
                const float *v = src->values;
                k->values[o] = isl_bilinear(v[a + x0], v[a + x1], v[b + x0], v[b + x1],
                                            (float)(py - y0), (float)(px - x0));
                k->mask[o] = 1;
            }
        }
        copy_target(targets + (size_t)l * out_plane, masks + (size_t)l * out_plane, &scaled,
                    NULL, 0, out, out_walk);
    }
    return ISL_OK;
}

isl_status isl_sampler_draw(const isl_sampler *s, uint64_t seed, int batch_size, float *inputs,
                            float *targets, uint8_t *masks)
{
    return isl_sampler_draw_part(s, seed, 0, batch_size, inputs, targets, masks);
}

isl_status isl_sampler_draw_part(const isl_sampler *s, uint64_t seed, int first, int batch_size,
                                 float *inputs, float *targets, uint8_t *masks)
{
    if (!s || !inputs || (s->num_labels > 0 && (!targets || !masks)))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_sampler_draw: %s is NULL",
                        !s ? "sampler" : !inputs ? "inputs" : !targets ? "targets" : "masks");
    if (batch_size < 1)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_sampler_draw: batch size %d < 1",
                        batch_size);
    if (first < 0 || first > INT_MAX - batch_size)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_sampler_draw_part: first crop %d is out of range", first);
    const int64_t total = s->well_start[s->num_wells];
    if (total <= 0)
        return isl_fail(ISL_ERROR_VALUE, "nothing to draw: every pixel of the dataset is held out");
    const int crop = s->crop, out = s->out;
    const size_t crop_plane = (size_t)crop * crop, out_plane = (size_t)out * out;
    uint64_t state = seed;
    state = isl_splitmix64(&state); /* nearby seeds start far apart in the sequence */
    scale_work work = {0};
    isl_status st = ISL_OK;
    /* The crops before `first` are drawn (their random values) but not copied. */
    for (int i = 0; i < first + batch_size; i++) {
        const int b = i - first;
        /* Three values per crop, whatever the options: the same seed draws the same
         * wells and positions with and without augmentation. A fourth, first, decides
         * whether an unlabelled-share crop is drawn (only when the share is not 0). */
        const int anywhere =
            s->unlabelled > 0 &&
            isl_uniform53(isl_splitmix64(&state)) < s->unlabelled &&
            s->anywhere_start[s->num_wells] > 0;
        const int64_t *start = anywhere ? s->anywhere_start : s->well_start;
        int well = find_interval(start, s->num_wells, below(&state, start[s->num_wells]));
        const sampler_well *w = &s->wells[well];
        const well_index *x = anywhere ? &w->anywhere : &w->index;
        int oy, ox;
        window_at(w, x, below(&state, x->windows), &oy, &ox);
        uint64_t r = isl_splitmix64(&state);
        int t = s->augment ? (int)(r & 7) : 0;
        if (b < 0)
            continue;

        float *crop_inputs = inputs + (size_t)b * s->num_z * crop_plane;
        if (s->scale > 0) {
            /* A stream of its own (r's other uses untouched), one value per crop. */
            uint64_t zs = r ^ 0x9e3779b97f4a7c15ULL;
            const double factor = exp(s->scale * (2.0 * isl_uniform53(isl_splitmix64(&zs)) - 1.0));
            if (!work.lo)
                st = scale_work_alloc(s, &work);
            if (st == ISL_OK)
                st = scaled_crop(s, w, oy, ox, factor, t, &work, crop_inputs,
                                 targets + (size_t)b * s->num_labels * out_plane,
                                 masks + (size_t)b * s->num_labels * out_plane);
            if (st == ISL_OK)
                st = isl_photometric_apply(&s->photometric, r, crop_inputs, s->num_z, crop);
            if (st != ISL_OK)
                break;
            continue;
        }
        const int pw = w->width + 2 * ISL_INPUT_PAD;
        const size_t padded_plane = (size_t)(w->height + 2 * ISL_INPUT_PAD) * (size_t)pw;
        /* The crop's top-left in padded coordinates is the window's in well coordinates. */
        const float *origin = w->padded + (size_t)oy * (size_t)pw + (size_t)ox;
        walk in_walk = make_walk(t, crop, pw);
        for (int z = 0; z < s->num_z; z++)
            copy_plane(crop_inputs + (size_t)z * crop_plane, origin + (size_t)z * padded_plane,
                       crop, in_walk);
        /* r's high bits (independent of t's low ones) seed the photometric changes. */
        st = isl_photometric_apply(&s->photometric, r, crop_inputs, s->num_z, crop);
        if (st != ISL_OK)
            break;
        walk out_walk = make_walk(t, out, w->width);
        size_t offset = (size_t)oy * (size_t)w->width + (size_t)ox;
        for (int l = 0; l < s->num_labels; l++) {
            size_t o = ((size_t)b * s->num_labels + l) * out_plane;
            copy_target(targets + o, masks + o, &w->targets[l], w->held, offset, out, out_walk);
        }
    }
    scale_work_free(&work);
    return st;
}
