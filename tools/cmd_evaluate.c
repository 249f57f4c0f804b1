/* isl evaluate: metrics of predicted against true images, as CSV, Markdown and PNG files. */
#include "eval_run.h"
#include "png_write.h"

#include "error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char help_head[] =
    "Usage: isl evaluate --prediction DIR --truth NAME=FILE[:X0,Y0]... -o OUTDIR [options]\n"
    "\n"
    "Compares predicted with true fluorescence images as the paper does (docs/evaluation.md):\n"
    "Pearson r on 1,000,000 random pixels, the 10-bin true-vs-predicted heat map (counts per\n"
    "1,000 pixels), error and uncertainty pictures, and for nuclear labels Otsu segmentation,\n"
    "object errors (split, merged, added, missed) and a Kolmogorov-Smirnov test of the\n"
    "nuclear radii. Writes OUTDIR/metrics.csv, metrics.md and per label <label>_heatmap.csv,\n"
    "<label>_heatmap.png, <label>_error.png (magenta too bright, teal too dim),\n"
    "<label>_entropy.png and <label>_std.png (when the prediction has them).\n"
    "\n"
    "Options:\n"
    "  -o, --output-dir OUTDIR  where the files go (created if needed)\n";

enum { OPT_OUTPUT = 1, OPT_HELP };

/* Growable text. */
typedef struct text {
    char *s;
    size_t n, cap;
    int failed;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (t->failed || k < 0)
        return;
    if (t->n + (size_t)k + 1 > t->cap) {
        size_t cap = (t->n + (size_t)k + 1) * 2;
        char *s = realloc(t->s, cap);
        if (!s) {
            t->failed = 1;
            return;
        }
        t->s = s, t->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(t->s + t->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    t->n += (size_t)k;
}

static int save_text(const char *dir, const char *name, text *t)
{
    char *path = cli_path_join(dir, name);
    int rc = 0;
    if (!path || t->failed)
        rc = cli_runtime_error("out of memory");
    else {
        rc = cli_write_file_atomic(path, t->s ? t->s : "", t->n);
    }
    free(path);
    free(t->s);
    memset(t, 0, sizeof *t);
    return rc;
}

static int write_png(const char *dir, const char *label, const char *suffix, const uint8_t *pix,
                     int h, int w, int channels)
{
    char *path = cli_eval_label_path(dir, label, suffix);
    int rc = path ? cli_png_write(path, pix, h, w, channels) : cli_runtime_error("out of memory");
    free(path);
    return rc;
}

/* Text of a number: NaN as "" in CSV. */
static void add_num(text *t, double v, const char *fmt)
{
    if (isfinite(v))
        add(t, fmt, v);
}

/* Every picture of the label as OUTDIR/<label><suffix>. */
static int write_pictures(const cli_eval *e, const cli_eval_label *l, const char *dir)
{
    for (int fig = 0; fig < CLI_FIG_COUNT; fig++) {
        uint8_t *pix;
        int h, w, got = cli_eval_picture(e, l, fig, &pix, &h, &w);
        if (got < 0)
            return CLI_EXIT_RUNTIME;
        if (got > 0)
            continue;
        int rc = write_png(dir, l->name, cli_eval_fig_suffix[fig], pix, h, w, 3);
        free(pix);
        if (rc)
            return rc;
    }
    return 0;
}

int cli_cmd_evaluate(int argc, char **argv)
{
    if (cli_wants_help(argc, argv))
        return cli_eval_help(help_head);
    static const cli_option opts[] = {CLI_EVAL_OPTIONS, {"output-dir", 'o', 1, OPT_OUTPUT},
                                      {NULL, 0, 0, 0}};
    const char *out_dir = NULL;
    const cli_eval_own own[] = {{OPT_OUTPUT, &out_dir}};
    cli_eval e;
    int rc = cli_eval_start(&e, argc, argv, "evaluate", opts, own, 1, "-o OUTDIR");
    cli_dirs created = {0};
    if (!rc)
        rc = cli_mkdir_p(out_dir, &created);
    text csv = {0}, md = {0};
    add(&csv, "label,region,pixels,pixels_sampled,pearson_r,true_nuclei,predicted_nuclei,"
              "scored_true,scored_predicted,split,merged,added,missed,accuracy,"
              "radius_true_mean,radius_true_sd,radius_predicted_mean,radius_predicted_sd,"
              "ks_statistic,ks_p\n");
    add(&md, "| label | pixels | sampled | Pearson r | nuclei true / pred | split | merged | "
             "added | missed | accuracy | KS D (p) of radii |\n|---|---|---|---|---|---|---|---|"
             "---|---|---|\n");
    for (int i = 0; !rc && i < e.num_labels; i++) {
        cli_eval_label *l = &e.labels[i];
        isl_object_errors *o = &l->objects;
        add(&csv, "%s,%d %d %d %d,%lld,%lld,%.6f,", l->name, e.rx, e.ry, e.rw, e.rh,
            (long long)l->pixels, (long long)l->sampled, l->r);
        if (l->nuclear) {
            add(&csv, "%d,%d,%d,%d,%d,%d,%d,%d,", l->num_true, l->num_pred, o->true_objects,
                o->predicted_objects, o->split, o->merged, o->added, o->missed);
            const double v[] = {o->accuracy, l->radius_true_mean, l->radius_true_sd,
                                l->radius_pred_mean, l->radius_pred_sd, l->ks_statistic, l->ks_p};
            for (int k = 0; k < 7; k++) {
                add_num(&csv, v[k], k == 6 ? "%.6g" : "%.6f");
                add(&csv, k == 6 ? "\n" : ",");
            }
            add(&md, "| %s | %lld | %lld | %.3f | %d / %d | %d | %d | %d | %d | %.3f | %.3f (%.3g) |\n",
                l->name, (long long)l->pixels, (long long)l->sampled, l->r, o->true_objects,
                o->predicted_objects, o->split, o->merged, o->added, o->missed, o->accuracy,
                l->ks_statistic, l->ks_p);
        } else {
            add(&csv, ",,,,,,,,,,,,,,\n");
            add(&md, "| %s | %lld | %lld | %.3f | | | | | | | |\n", l->name, (long long)l->pixels,
                (long long)l->sampled, l->r);
        }
        text heat = {0};
        add(&heat, "true_bin\\predicted_bin");
        for (int p = 0; p < CLI_EVAL_BINS; p++)
            add(&heat, ",%.1f-%.1f", p / 10.0, (p + 1) / 10.0);
        add(&heat, "\n");
        for (int t = 0; t < CLI_EVAL_BINS; t++) {
            add(&heat, "%.1f-%.1f", t / 10.0, (t + 1) / 10.0);
            for (int p = 0; p < CLI_EVAL_BINS; p++)
                add(&heat, ",%.3f", l->heatmap[t * CLI_EVAL_BINS + p]);
            add(&heat, "\n");
        }
        char name[300];
        snprintf(name, sizeof name, "%s_heatmap.csv", l->name);
        rc = save_text(out_dir, name, &heat);
        if (!rc)
            rc = write_pictures(&e, l, out_dir);
        printf("%s: r = %.4f on %lld of %lld pixels", l->name, l->r, (long long)l->sampled,
               (long long)l->pixels);
        if (l->nuclear)
            printf("; nuclei %d true, %d predicted: split %d, merged %d, added %d, missed %d, "
                   "accuracy %.3f; radii KS D = %.3f, p = %.3g", o->true_objects,
                   o->predicted_objects, o->split, o->merged, o->added, o->missed, o->accuracy,
                   l->ks_statistic, l->ks_p);
        printf("\n");
    }
    if (!rc)
        rc = save_text(out_dir, "metrics.csv", &csv);
    if (!rc)
        rc = save_text(out_dir, "metrics.md", &md);
    free(csv.s);
    free(md.s);
    if (!rc)
        printf("wrote %s/metrics.csv, metrics.md and pictures\n", out_dir);
    if (rc)
        cli_remove_created_dirs(&created);
    else
        cli_dirs_free(&created);
    cli_eval_free(&e);
    return rc;
}
