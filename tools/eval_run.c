/* The evaluation shared by `isl evaluate` and `isl report` (docs/evaluation.md). */
#include "eval_run.h"

#include "error.h" /* ISL_CHECK */
#include "tiff_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char cli_eval_options_help[] =
    "  --prediction DIR     directory written by 'isl predict': DIR/<label>_<stat>.tif, and\n"
    "                       <label>_entropy.tif, <label>_std.tif when present\n"
    "  --predicted NAME=FILE  the predicted image of label NAME (instead of --prediction)\n"
    "  --truth NAME=FILE[:X0,Y0]  true image of label NAME; its top-left pixel lies at X0,Y0 of\n"
    "                       the prediction (default 0,0); repeat per label\n"
    "  --region X0,Y0,W,H   evaluate only this rectangle of the prediction (default: where\n"
    "                       every truth overlaps the prediction)\n"
    "  --mask FILE          TIFF of the prediction's size: only its nonzero pixels count\n"
    "  --pixels N           Pearson r on N random pixels (default 1000000; 0: all)\n"
    "  --seed S             seed of that draw (default 0)\n"
    "  --stat NAME          predicted statistic compared (default median)\n"
    "  --nuclei LIST        labels segmented as nuclei (default: names with dapi, hoechst or\n"
    "                       nucle; 'none' for no segmentation)\n"
    "  --min-area N         smallest nucleus in pixels (default 20)\n"
    "  --keep-border        score nuclei touching the region's border too\n";

void cli_eval_init(cli_eval *e)
{
    memset(e, 0, sizeof *e);
    e->stat = "median";
    e->max_pixels = 1000000;
    e->min_area = 20;
    e->exclude_border = 1;
}

static cli_eval_label *label_named(cli_eval *e, const char *name)
{
    for (int i = 0; i < e->num_labels; i++)
        if (!strcmp(e->labels[i].name, name))
            return &e->labels[i];
    cli_eval_label *l = realloc(e->labels, (size_t)(e->num_labels + 1) * sizeof *l);
    if (!l)
        return NULL;
    e->labels = l;
    l = &e->labels[e->num_labels];
    memset(l, 0, sizeof *l);
    l->objects.struct_size = sizeof l->objects;
    if (!(l->name = strdup(name)))
        return NULL;
    e->num_labels++;
    return l;
}

static int parse_region(cli_eval *e, const char *text)
{
    int x, y, w, h, n = 0;
    if (sscanf(text, "%d,%d,%d,%d%n", &x, &y, &w, &h, &n) != 4 || text[n] || x < 0 || y < 0 ||
        w < 1 || h < 1)
        return cli_usage_error("--region: '%s' is not X0,Y0,W,H (X0, Y0 >= 0; W, H >= 1)", text);
    e->region_given = 1;
    e->rx = x, e->ry = y, e->rw = w, e->rh = h;
    return 0;
}

int cli_eval_help(const char *head)
{
    fputs(head, stdout);
    fputs(cli_eval_options_help, stdout);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_RUNTIME;
}

int cli_eval_start(cli_eval *e, int argc, char **argv, const char *command,
                   const cli_option *opts, const cli_eval_own *own, int num_own,
                   const char *output)
{
    cli_eval_init(e);
    cli_args a;
    cli_args_init(&a, argc, argv, command);
    const char *value;
    int id, kind, rc = 0;
    while (!rc && (kind = cli_args_next(&a, opts, &id, &value)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL)
            return cli_usage_error("%s: unexpected argument '%s'", command, value);
        int i = 0;
        while (i < num_own && own[i].id != id)
            i++;
        if (i < num_own)
            *own[i].value = value;
        else
            rc = cli_eval_option(e, id, value);
    }
    if (!rc && !*own[0].value)
        rc = cli_usage_error("%s: missing %s", command, output);
    return rc ? rc : cli_eval_run(e);
}

int cli_eval_option(cli_eval *e, int id, const char *value)
{
    long long v;
    char *name = NULL, *file = NULL;
    int x0 = 0, y0 = 0, rc = 0;
    switch (id) {
    case CLI_EVAL_OPT_PREDICTION: e->prediction_dir = value; return 0;
    case CLI_EVAL_OPT_MASK: e->mask_path = value; return 0;
    case CLI_EVAL_OPT_NUCLEI: e->nuclei_list = value; return 0;
    case CLI_EVAL_OPT_KEEP_BORDER: e->exclude_border = 0; return 0;
    case CLI_EVAL_OPT_REGION: return parse_region(e, value);
    case CLI_EVAL_OPT_SEED: return cli_parse_u64("--seed", value, &e->seed) ? CLI_EXIT_USAGE : 0;
    case CLI_EVAL_OPT_PIXELS:
        if (cli_parse_int("--pixels", value, 0, INT64_MAX, &v))
            return CLI_EXIT_USAGE;
        e->max_pixels = v;
        return 0;
    case CLI_EVAL_OPT_MIN_AREA:
        if (cli_parse_int("--min-area", value, 1, 1 << 30, &v))
            return CLI_EXIT_USAGE;
        e->min_area = (int)v;
        return 0;
    case CLI_EVAL_OPT_STAT:
        if (isl_stat_from_name(value) < 0)
            return cli_usage_error("--stat: unknown statistic '%s'", value);
        e->stat = value;
        return 0;
    case CLI_EVAL_OPT_TRUTH:
    case CLI_EVAL_OPT_PREDICTED: {
        int truth = id == CLI_EVAL_OPT_TRUTH;
        const char *opt = truth ? "--truth" : "--predicted";
        if ((rc = cli_parse_named_file(opt, value, truth, &name, &file, &x0, &y0)))
            return rc;
        cli_eval_label *l = label_named(e, name);
        if (!l)
            rc = cli_runtime_error("out of memory");
        else if (truth ? l->truth_path != NULL : l->pred_path != NULL)
            rc = cli_usage_error("%s: label '%s' given twice", opt, name);
        else if (truth) {
            l->truth_path = file, l->x0 = x0, l->y0 = y0;
            file = NULL;
        } else {
            l->pred_path = file;
            file = NULL;
        }
        free(name);
        free(file);
        return rc;
    }
    default: return cli_usage_error("internal: unknown evaluation option %d", id);
    }
}

/* One-page image as floats (integers scaled to [0, 1]); *data NULL on error (reported). */
static int read_image(const char *path, float **data, int *height, int *width)
{
    isl_tiff_stack s;
    *data = NULL;
    isl_status st = isl_tiff_read_stack(path, 1, &s);
    if (st != ISL_OK)
        return cli_tiff_error(st);
    size_t n = (size_t)s.height * s.width;
    *data = malloc(n * sizeof **data);
    if (!*data) {
        isl_tiff_stack_free(&s);
        return cli_runtime_error("%s: out of memory", path);
    }
    for (size_t i = 0; i < n; i++)
        (*data)[i] = (float)isl_tiff_stack_scaled(&s, i);
    *height = s.height, *width = s.width;
    isl_tiff_stack_free(&s);
    return 0;
}

/* Copies the region (rx, ry) .. + (rw, rh) of an image whose top-left lies at (ox, oy) in
 * prediction coordinates, checking every value is finite. */
static int crop(const char *path, const float *image, int width, int ox, int oy, const cli_eval *e,
                float **out)
{
    *out = malloc((size_t)e->rw * e->rh * sizeof **out);
    if (!*out)
        return cli_runtime_error("%s: out of memory", path);
    for (int y = 0; y < e->rh; y++)
        for (int x = 0; x < e->rw; x++) {
            float v = image[(size_t)(y + e->ry - oy) * width + (x + e->rx - ox)];
            if (!isfinite(v))
                return cli_runtime_error("%s: pixel (%d, %d) is %s", path, x + e->rx - ox,
                                         y + e->ry - oy, isnan(v) ? "NaN" : "infinite");
            (*out)[(size_t)y * e->rw + x] = v;
        }
    return 0;
}

char *cli_eval_label_path(const char *dir, const char *label, const char *suffix)
{
    size_t n = strlen(label) + strlen(suffix) + 1;
    char *name = malloc(n);
    if (!name)
        return NULL;
    snprintf(name, n, "%s%s", label, suffix);
    char *path = cli_path_join(dir, name);
    free(name);
    return path;
}

/* dir/<label>_<stat>.tif */
static char *stat_path(const char *dir, const char *label, const char *stat)
{
    char suffix[64];
    snprintf(suffix, sizeof suffix, "_%s.tif", stat);
    return cli_eval_label_path(dir, label, suffix);
}

static int is_nuclear(const cli_eval *e, const char *name)
{
    if (!e->nuclei_list)
        return strstr(name, "dapi") || strstr(name, "hoechst") || strstr(name, "nucle");
    size_t n = strlen(name);
    for (const char *p = e->nuclei_list; *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && !strncmp(p, name, n))
            return 1;
        p += k + (p[k] == ',');
    }
    return 0;
}

/* Finds every file; reads predictions and truths; fixes and checks the region. */
static int load(cli_eval *e)
{
    if (!e->num_labels)
        return cli_usage_error("no --truth given: nothing to evaluate");
    float **full_pred = calloc((size_t)e->num_labels * 4, sizeof *full_pred);
    int *tw = calloc((size_t)e->num_labels, sizeof *tw), *th = calloc((size_t)e->num_labels, sizeof *th);
    int rc = !full_pred || !tw || !th ? cli_runtime_error("out of memory") : 0;
    float **full_truth = full_pred ? full_pred + e->num_labels : NULL;
    float **full_ent = full_pred ? full_pred + 2 * e->num_labels : NULL;
    float **full_std = full_pred ? full_pred + 3 * e->num_labels : NULL;
    int ph = 0, pw = 0;
    const char *first = NULL;
    for (int i = 0; !rc && i < e->num_labels; i++) {
        cli_eval_label *l = &e->labels[i];
        if (!l->truth_path) {
            rc = cli_usage_error("--predicted %s has no --truth %s=FILE", l->name, l->name);
            break;
        }
        if (!l->pred_path && !e->prediction_dir) {
            rc = cli_usage_error("label '%s': give --prediction DIR or --predicted %s=FILE",
                                 l->name, l->name);
            break;
        }
        if (!l->pred_path && !(l->pred_path = stat_path(e->prediction_dir, l->name, e->stat)))
            rc = cli_runtime_error("out of memory");
        if (!rc && access(l->pred_path, F_OK) != 0)
            rc = cli_runtime_error("%s: no such file (the prediction of label '%s')", l->pred_path,
                                   l->name);
        if (!rc && e->prediction_dir) {
            l->entropy_path = stat_path(e->prediction_dir, l->name, "entropy");
            l->std_path = stat_path(e->prediction_dir, l->name, "std");
            if (l->entropy_path && access(l->entropy_path, F_OK) != 0)
                free(l->entropy_path), l->entropy_path = NULL;
            if (l->std_path && access(l->std_path, F_OK) != 0)
                free(l->std_path), l->std_path = NULL;
        }
        int h = 0, w = 0;
        if (!rc)
            rc = read_image(l->pred_path, &full_pred[i], &h, &w);
        if (!rc && first && (h != ph || w != pw))
            rc = cli_runtime_error("%s is %d x %d but %s is %d x %d: predictions differ in size",
                                   l->pred_path, w, h, first, pw, ph);
        ph = h, pw = w, first = l->pred_path;
        const char *extra[2] = {l->entropy_path, l->std_path};
        float **dst[2] = {&full_ent[i], &full_std[i]};
        for (int k = 0; k < 2 && !rc; k++) {
            if (!extra[k])
                continue;
            rc = read_image(extra[k], dst[k], &h, &w);
            if (!rc && (h != ph || w != pw))
                rc = cli_runtime_error("%s is %d x %d but %s is %d x %d", extra[k], w, h, first,
                                       pw, ph);
        }
        if (!rc)
            rc = read_image(l->truth_path, &full_truth[i], &th[i], &tw[i]);
        if (!rc && (l->x0 >= pw || l->y0 >= ph))
            rc = cli_runtime_error("%s: its offset %d,%d lies outside the %d x %d prediction",
                                   l->truth_path, l->x0, l->y0, pw, ph);
        l->nuclear = is_nuclear(e, l->name);
    }
    if (!rc) {
        e->pred_width = pw, e->pred_height = ph;
        /* The region: given, or where every truth overlaps the prediction. */
        int x0 = 0, y0 = 0, x1 = pw, y1 = ph;
        for (int i = 0; i < e->num_labels; i++) {
            cli_eval_label *l = &e->labels[i];
            x0 = x0 > l->x0 ? x0 : l->x0, y0 = y0 > l->y0 ? y0 : l->y0;
            x1 = x1 < l->x0 + tw[i] ? x1 : l->x0 + tw[i];
            y1 = y1 < l->y0 + th[i] ? y1 : l->y0 + th[i];
        }
        if (!e->region_given) {
            e->rx = x0, e->ry = y0, e->rw = x1 - x0, e->rh = y1 - y0;
            if (e->rw < 1 || e->rh < 1)
                rc = cli_runtime_error("the true images do not overlap each other on the "
                                       "prediction: nothing to evaluate");
        } else if (e->rx < x0 || e->ry < y0 || (int64_t)e->rx + e->rw > x1 ||
                   (int64_t)e->ry + e->rh > y1) {
            rc = cli_runtime_error("--region %d,%d,%d,%d is not inside %d,%d,%d,%d, where every "
                                   "true image overlaps the %d x %d prediction",
                                   e->rx, e->ry, e->rw, e->rh, x0, y0, x1 - x0, y1 - y0, pw, ph);
        }
    }
    for (int i = 0; !rc && i < e->num_labels; i++) {
        cli_eval_label *l = &e->labels[i];
        rc = crop(l->pred_path, full_pred[i], pw, 0, 0, e, &l->pred);
        if (!rc)
            rc = crop(l->truth_path, full_truth[i], tw[i], l->x0, l->y0, e, &l->truth);
        if (!rc && full_ent[i])
            rc = crop(l->entropy_path, full_ent[i], pw, 0, 0, e, &l->entropy);
        if (!rc && full_std[i])
            rc = crop(l->std_path, full_std[i], pw, 0, 0, e, &l->std);
    }
    if (!rc && e->mask_path) {
        float *m = NULL;
        int mh = 0, mw = 0;
        rc = read_image(e->mask_path, &m, &mh, &mw);
        if (!rc && (mh != e->pred_height || mw != e->pred_width))
            rc = cli_runtime_error("%s is %d x %d but the prediction is %d x %d", e->mask_path,
                                   mw, mh, e->pred_width, e->pred_height);
        if (!rc && !(e->mask = malloc((size_t)e->rw * e->rh)))
            rc = cli_runtime_error("out of memory");
        for (int y = 0; !rc && y < e->rh; y++)
            for (int x = 0; x < e->rw; x++)
                e->mask[(size_t)y * e->rw + x] =
                    m[(size_t)(y + e->ry) * mw + x + e->rx] != 0;
        free(m);
    }
    if (full_pred)
        for (int i = 0; i < 4 * e->num_labels; i++)
            free(full_pred[i]);
    free(full_pred);
    free(tw);
    free(th);
    return rc;
}

static void mean_sd(const double *v, int n, double *mean, double *sd)
{
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    *mean = n ? s / n : NAN;
    for (int i = 0; i < n; i++)
        ss += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(ss / (n - 1)) : NAN;
}

static isl_status nuclei(cli_eval *e, cli_eval_label *l)
{
    int64_t n = (int64_t)e->rw * e->rh;
    if (!(l->labels_true = malloc((size_t)n * sizeof(int32_t))) ||
        !(l->labels_pred = malloc((size_t)n * sizeof(int32_t))))
        return ISL_ERROR_OUT_OF_MEMORY;
    ISL_CHECK(isl_eval_otsu(l->truth, e->mask, n, &l->threshold_true));
    ISL_CHECK(isl_eval_otsu(l->pred, e->mask, n, &l->threshold_pred));
    ISL_CHECK(isl_eval_segment_nuclei(l->truth, e->rh, e->rw, l->threshold_true, e->min_area,
                                          1, l->labels_true, &l->num_true));
    ISL_CHECK(isl_eval_segment_nuclei(l->pred, e->rh, e->rw, l->threshold_pred, e->min_area,
                                          1, l->labels_pred, &l->num_pred));
    ISL_CHECK(isl_eval_object_errors(l->labels_true, l->num_true, l->labels_pred,
                                         l->num_pred, e->rh, e->rw, e->exclude_border,
                                         &l->objects));
    double *rt = malloc(((size_t)l->num_true + l->num_pred + 1) * sizeof *rt);
    if (!rt)
        return ISL_ERROR_OUT_OF_MEMORY;
    double *rp = rt + l->num_true;
    isl_status s = isl_eval_object_radii(l->labels_true, e->rh, e->rw, l->num_true, rt);
    if (s == ISL_OK)
        s = isl_eval_object_radii(l->labels_pred, e->rh, e->rw, l->num_pred, rp);
    mean_sd(rt, l->num_true, &l->radius_true_mean, &l->radius_true_sd);
    mean_sd(rp, l->num_pred, &l->radius_pred_mean, &l->radius_pred_sd);
    l->ks_statistic = l->ks_p = NAN;
    if (s == ISL_OK && l->num_true && l->num_pred)
        s = isl_eval_ks_2samp(rt, l->num_true, rp, l->num_pred, &l->ks_statistic, &l->ks_p);
    free(rt);
    return s;
}

int cli_eval_run(cli_eval *e)
{
    int rc = load(e);
    if (rc)
        return rc;
    int64_t n = (int64_t)e->rw * e->rh;
    for (int i = 0; i < e->num_labels; i++) {
        cli_eval_label *l = &e->labels[i];
        l->pixels = 0;
        for (int64_t k = 0; k < n; k++)
            l->pixels += !e->mask || e->mask[k];
        if (l->pixels < 2)
            return cli_runtime_error("label '%s': %lld pixel(s) to evaluate; the mask and region "
                                     "leave too few", l->name, (long long)l->pixels);
        isl_status s = isl_eval_pearson(l->pred, l->truth, e->mask, n, e->max_pixels, e->seed,
                                        &l->r, &l->sampled);
        if (s == ISL_OK)
            s = isl_eval_heatmap(l->pred, l->truth, e->mask, n, CLI_EVAL_BINS, l->heatmap);
        if (s == ISL_OK && l->nuclear)
            s = nuclei(e, l);
        if (s == ISL_ERROR_OUT_OF_MEMORY)
            return cli_runtime_error("out of memory");
        if (s != ISL_OK)
            return cli_library_error(s);
    }
    return 0;
}

const char *const cli_eval_fig_suffix[CLI_FIG_COUNT] = {
    "_true.png", "_predicted.png", "_error.png", "_entropy.png", "_std.png", "_heatmap.png"};
const char *const cli_eval_fig_caption[CLI_FIG_COUNT] = {
    "true image, shown as f(x) = clip((x - 0.2) / 0.6)",
    "predicted image, same display",
    "errors: gray where prediction and truth agree, magenta where the prediction is too "
    "bright (false positive), teal where it is too dim (false negative)",
    "entropy of the predicted distribution (dark blue 0: certain, yellow 1: uniform)",
    "standard deviation of the predicted distribution (dark blue 0, yellow 0.25 or more)",
    "heat map of true (x, left to right) against predicted (y, bottom to top) values in bins "
    "of 0.1; colour: log(1 + count per 1,000 pixels)"};

static uint8_t *heatmap_picture(const double *per_thousand)
{
    const int cell = CLI_EVAL_HEATMAP_SIDE / CLI_EVAL_BINS;
    float v[CLI_EVAL_BINS * CLI_EVAL_BINS];
    uint8_t colours[CLI_EVAL_BINS * CLI_EVAL_BINS * 3];
    for (int i = 0; i < CLI_EVAL_BINS * CLI_EVAL_BINS; i++)
        v[i] = (float)(log1p(per_thousand[i]) / log(1001.0));
    if (isl_eval_map_image(v, CLI_EVAL_BINS * CLI_EVAL_BINS, 0, 1, colours) != ISL_OK)
        return NULL;
    uint8_t *pix = malloc((size_t)CLI_EVAL_HEATMAP_SIDE * CLI_EVAL_HEATMAP_SIDE * 3);
    for (int y = 0; pix && y < CLI_EVAL_HEATMAP_SIDE; y++)
        for (int x = 0; x < CLI_EVAL_HEATMAP_SIDE; x++) {
            int t = x / cell, p = CLI_EVAL_BINS - 1 - y / cell;
            int edge = x % cell == 0 || y % cell == 0;
            for (int c = 0; c < 3; c++)
                pix[((size_t)y * CLI_EVAL_HEATMAP_SIDE + x) * 3 + c] =
                    edge ? 255 : colours[(t * CLI_EVAL_BINS + p) * 3 + c];
        }
    return pix;
}

int cli_eval_picture(const cli_eval *e, const cli_eval_label *l, int fig, uint8_t **pixels,
                     int *height, int *width)
{
    int64_t n = (int64_t)e->rw * e->rh;
    *pixels = NULL;
    *height = e->rh, *width = e->rw;
    if ((fig == CLI_FIG_ENTROPY && !l->entropy) || (fig == CLI_FIG_STD && !l->std))
        return 1;
    if (fig == CLI_FIG_HEATMAP) {
        *height = *width = CLI_EVAL_HEATMAP_SIDE;
        *pixels = heatmap_picture(l->heatmap);
        return *pixels ? 0 : (cli_runtime_error("out of memory"), -1);
    }
    uint8_t *rgb = malloc((size_t)n * 3);
    if (!rgb)
        return cli_runtime_error("out of memory"), -1;
    isl_status s = ISL_OK;
    switch (fig) {
    case CLI_FIG_TRUE:
    case CLI_FIG_PRED: {
        const float *im = fig == CLI_FIG_TRUE ? l->truth : l->pred;
        for (int64_t i = 0; i < n; i++)
            rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] =
                (uint8_t)(isl_eval_display(im[i]) * 255.0 + 0.5);
        break;
    }
    case CLI_FIG_ERROR: s = isl_eval_error_image(l->pred, l->truth, n, rgb); break;
    case CLI_FIG_ENTROPY: s = isl_eval_map_image(l->entropy, n, 0, 1, rgb); break;
    default: s = isl_eval_map_image(l->std, n, 0, 0.25, rgb); break;
    }
    if (s != ISL_OK) {
        free(rgb);
        cli_library_error(s);
        return -1;
    }
    *pixels = rgb;
    return 0;
}

void cli_eval_free(cli_eval *e)
{
    for (int i = 0; i < e->num_labels; i++) {
        cli_eval_label *l = &e->labels[i];
        free(l->name), free(l->truth_path), free(l->pred_path), free(l->entropy_path);
        free(l->std_path), free(l->truth), free(l->pred), free(l->entropy), free(l->std);
        free(l->labels_true), free(l->labels_pred);
    }
    free(e->labels);
    free(e->mask);
    memset(e, 0, sizeof *e);
}
