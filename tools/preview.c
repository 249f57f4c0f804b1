/* isl predict --preview: one 8-bit RGB picture to look at, beside the float32 images.
 *
 * Left panel: the input's middle z plane in gray. Right panel: the medians of up to three
 * label heads, one color each (one head: gray). Each channel is stretched between its
 * 0.5th and 99.5th percentiles: a display, not data. Panels wider or taller than
 * PREVIEW_SIDE pixels are shrunk by an integer factor (box means), so memory stays
 * bounded for any image size. With cli_preview_show_uncertainty, a third panel shows where
 * the prediction cannot be trusted: the input plane, dimmed, with the pixels that
 * isl_uncertain_mask marks for any shown head in magenta. */
#include "cli.h"
#include "tiff_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREVIEW_SIDE 1024
#define LOW_QUANTILE 0.005
#define HIGH_QUANTILE 0.995

enum { GRAY = -1, RED = 0, GREEN = 1, BLUE = 2 };

struct cli_preview {
    char *path;
    int height, width;   /* the image predicted */
    int factor;          /* panel pixel = factor x factor image pixels */
    int ph, pw;          /* panel size */
    int num_heads;
    int heads[3];
    int colors[3];       /* GRAY, or the RGB channel of each head */
    float *input;        /* [ph * pw] box means of the middle plane */
    float *sums[3];      /* [ph * pw] box sums of each head's median */
    float *unsure[3];    /* [ph * pw] box counts of each head's uncertain pixels, or NULL */
    size_t uncertain[3]; /* each head's uncertain pixels in the whole image */
    unsigned char *mask; /* [width] one row of isl_uncertain_mask */
    int png;             /* write PNG (cli_preview_as_png) instead of TIFF */
    char error[1024];
};

static void set_error(cli_preview *p, const char *msg)
{
    if (!p->error[0])
        snprintf(p->error, sizeof(p->error), "%s", msg);
}

/* Pixels of the image that panel pixel (py, px) covers (fewer at the right and bottom). */
static int box_count(const cli_preview *p, int py, int px)
{
    int h = p->height - py * p->factor, w = p->width - px * p->factor;
    return (h < p->factor ? h : p->factor) * (w < p->factor ? w : p->factor);
}

/* means = box sums / pixels per box (in place when means == sums). */
static void box_means(const cli_preview *p, const float *sums, float *means)
{
    for (int py = 0; py < p->ph; py++)
        for (int px = 0; px < p->pw; px++) {
            size_t i = (size_t)py * p->pw + px;
            means[i] = sums[i] / (float)box_count(p, py, px);
        }
}

cli_preview *cli_preview_open(const char *dir, const isl_tiff_stack *stack, const int *heads,
                              int num_heads)
{
    cli_preview *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->height = stack->height;
    p->width = stack->width;
    int side = p->height > p->width ? p->height : p->width;
    p->factor = (side + PREVIEW_SIDE - 1) / PREVIEW_SIDE;
    p->ph = (p->height + p->factor - 1) / p->factor;
    p->pw = (p->width + p->factor - 1) / p->factor;
    p->num_heads = num_heads < 3 ? num_heads : 3;
    static const int order[3] = {BLUE, GREEN, RED}; /* nuclei blue, as in the paper */
    for (int k = 0; k < p->num_heads; k++) {
        p->heads[k] = heads[k];
        p->colors[k] = p->num_heads == 1 ? GRAY : order[k];
    }
    size_t n = (size_t)p->ph * (size_t)p->pw;
    p->path = cli_path_join(dir, "preview.tif");
    p->input = calloc(n, sizeof(float));
    int ok = p->path && p->input;
    for (int k = 0; ok && k < p->num_heads; k++)
        ok = (p->sums[k] = calloc(n, sizeof(float))) != NULL;
    if (!ok) {
        cli_preview_free(p);
        return NULL;
    }
    /* The middle plane is summed now, so that the picture needs nothing of the stack later. */
    const size_t plane = (size_t)p->height * (size_t)p->width;
    const size_t z = (size_t)(stack->num_z / 2);
    for (int y = 0; y < p->height; y++)
        for (int x = 0; x < p->width; x++)
            p->input[(size_t)(y / p->factor) * p->pw + (size_t)(x / p->factor)] +=
                (float)isl_tiff_stack_scaled(stack, z * plane + (size_t)y * p->width + (size_t)x);
    box_means(p, p->input, p->input);
    return p;
}

int cli_preview_show_uncertainty(cli_preview *p)
{
    const size_t n = (size_t)p->ph * (size_t)p->pw;
    if (!(p->mask = malloc((size_t)p->width)))
        return -1;
    for (int k = 0; k < p->num_heads; k++)
        if (!(p->unsure[k] = calloc(n, sizeof(float))))
            return -1;
    return 0;
}

int cli_preview_wants(const cli_preview *p, int head, isl_stat stat)
{
    if (!p || !(stat == ISL_STAT_MEDIAN || (stat == ISL_STAT_STD && p->mask)))
        return 0;
    for (int k = 0; k < p->num_heads; k++)
        if (p->heads[k] == head)
            return 1;
    return 0;
}

/* Box counts of the uncertain pixels of rows of a head's standard deviation. */
static void add_uncertain_rows(cli_preview *p, int k, int y0, int rows, const float *data)
{
    for (int y = y0; y < y0 + rows; y++) {
        size_t count = 0;
        /* Cannot fail: the arguments are valid by construction. */
        (void)isl_uncertain_mask(data + (size_t)(y - y0) * p->width, (size_t)p->width,
                                 ISL_UNCERTAIN_STD, p->mask, &count);
        p->uncertain[k] += count;
        float *box = p->unsure[k] + (size_t)(y / p->factor) * p->pw;
        for (int x = 0; x < p->width; x++)
            box[x / p->factor] += p->mask[x];
    }
}

void cli_preview_rows(cli_preview *p, int head, isl_stat stat, int y0, int rows,
                      const float *data)
{
    for (int k = 0; k < p->num_heads; k++) {
        if (p->heads[k] != head)
            continue;
        if (stat == ISL_STAT_STD) {
            add_uncertain_rows(p, k, y0, rows, data);
            continue;
        }
        for (int y = y0; y < y0 + rows; y++) {
            float *sum = p->sums[k] + (size_t)(y / p->factor) * p->pw;
            const float *row = data + (size_t)(y - y0) * p->width;
            for (int x = 0; x < p->width; x++)
                sum[x / p->factor] += row[x];
        }
    }
}

static int compare_floats(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Writes v (n values) stretched to bytes into out. The quantiles are the sorted values at
 * ranks round(q (n - 1)), so that anyone can recompute them. */
static int stretch(const float *v, size_t n, uint8_t *out)
{
    float *sorted = malloc(n * sizeof(float));
    if (!sorted)
        return -1;
    memcpy(sorted, v, n * sizeof(float));
    qsort(sorted, n, sizeof(float), compare_floats);
    double lo = sorted[(size_t)floor(LOW_QUANTILE * (double)(n - 1) + 0.5)];
    double hi = sorted[(size_t)floor(HIGH_QUANTILE * (double)(n - 1) + 0.5)];
    free(sorted);
    for (size_t i = 0; i < n; i++) {
        double t = hi > lo ? ((double)v[i] - lo) / (hi - lo) : 0.0;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        out[i] = (uint8_t)floor(255.0 * t + 0.5);
    }
    return 0;
}

/* Third panel: the input plane (already stretched in gray), dimmed, turning magenta with
 * the largest share of uncertain pixels of any head in each box. */
static void uncertainty_panel(const cli_preview *p, const uint8_t *gray, uint8_t *rgb, int out_w)
{
    for (size_t i = 0; i < (size_t)p->ph * (size_t)p->pw; i++) {
        const float pixels = (float)box_count(p, (int)(i / p->pw), (int)(i % p->pw));
        float share = 0;
        for (int k = 0; k < p->num_heads; k++) {
            float f = p->unsure[k][i] / pixels;
            share = f > share ? f : share;
        }
        const float g = 0.6f * gray[i];
        uint8_t *px = rgb + (((i / p->pw) * out_w) + 2 * p->pw + i % p->pw) * 3;
        px[RED] = px[BLUE] = (uint8_t)(g + share * (255.0f - g) + 0.5f);
        px[GREEN] = (uint8_t)(g * (1.0f - share) + 0.5f);
    }
}

int cli_preview_commit(cli_preview *p)
{
    const size_t n = (size_t)p->ph * (size_t)p->pw;
    const int panels = p->mask ? 3 : 2, out_w = panels * p->pw;
    uint8_t *rgb = calloc(n * panels * 3, 1);
    uint8_t *channel = malloc(n);
    float *median = malloc(n * sizeof(float));
    int rc = rgb && channel && median ? 0 : -1;
    if (rc != 0)
        set_error(p, "out of memory for the preview");
    /* Left panel: the input plane, gray. */
    if (rc == 0 && (rc = stretch(p->input, n, channel)) != 0)
        set_error(p, "out of memory for the preview");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        uint8_t *px = rgb + (((i / p->pw) * out_w) + i % p->pw) * 3;
        px[0] = px[1] = px[2] = channel[i];
    }
    if (rc == 0 && p->mask)
        uncertainty_panel(p, channel, rgb, out_w);
    /* Middle panel: each head's median in its color. */
    for (int k = 0; rc == 0 && k < p->num_heads; k++) {
        box_means(p, p->sums[k], median);
        if ((rc = stretch(median, n, channel)) != 0) {
            set_error(p, "out of memory for the preview");
            break;
        }
        for (size_t i = 0; i < n; i++) {
            uint8_t *px = rgb + (((i / p->pw) * out_w) + p->pw + i % p->pw) * 3;
            if (p->colors[k] == GRAY)
                px[0] = px[1] = px[2] = channel[i];
            else
                px[p->colors[k]] = channel[i];
        }
    }
    if (rc == 0 && p->png) {
        rc = cli_png_write_rgb8(p->path, rgb, p->ph, out_w, p->error, sizeof(p->error));
    } else if (rc == 0) {
        isl_status s = isl_tiff_write_rgb8(p->path, rgb, p->ph, out_w);
        if (s != ISL_OK) {
            set_error(p, isl_tiff_last_error());
            rc = -1;
        }
    }
    free(rgb);
    free(channel);
    free(median);
    return rc;
}

int cli_preview_as_png(cli_preview *p, const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    free(p->path);
    p->path = copy;
    p->png = 1;
    return 0;
}

const char *cli_preview_path(const cli_preview *p) { return p->path; }

const char *cli_preview_error(const cli_preview *p) { return p->error; }

int cli_preview_uncertainty(const cli_preview *p, const isl_model *model, char *buf,
                            size_t size)
{
    const char *names[3];
    for (int k = 0; k < p->num_heads; k++)
        names[k] = isl_model_head_name(model, p->heads[k]);
    return isl_uncertainty_summary(p->num_heads, names, p->uncertain,
                                   (size_t)p->height * (size_t)p->width, ISL_UNCERTAIN_STD, buf,
                                   size) == ISL_OK ? 0 : -1;
}

/* "dapi_confocal blue, map2_confocal green, nfh_confocal red" into buf. */
void cli_preview_legend(const cli_preview *p, const isl_model *model, char *buf, size_t size)
{
    static const char *names[3] = {"red", "green", "blue"};
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < p->num_heads && used < size; k++) {
        int n = snprintf(buf + used, size - used, "%s%s %s", k ? ", " : "",
                         isl_model_head_name(model, p->heads[k]),
                         p->colors[k] == GRAY ? "gray" : names[p->colors[k]]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

void cli_preview_free(cli_preview *p)
{
    if (!p)
        return;
    free(p->path);
    free(p->input);
    free(p->mask);
    for (int k = 0; k < 3; k++) {
        free(p->sums[k]);
        free(p->unsure[k]);
    }
    free(p);
}
