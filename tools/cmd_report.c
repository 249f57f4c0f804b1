/* isl report: one self-contained HTML page (pictures inline as PNG, tables, the run's
 * settings) of the evaluation of a prediction, for a paper's supplement. */
#include "eval_run.h"
#include "png_write.h"


#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char help_head[] =
    "Usage: isl report --prediction DIR --truth NAME=FILE[:X0,Y0]... -o report.html [options]\n"
    "\n"
    "Evaluates as 'isl evaluate' does and writes one self-contained HTML page: the settings,\n"
    "a table of the metrics, and per label the true, predicted, error, entropy and standard\n"
    "deviation pictures and the heat map (pictures inline as PNG; no other file needed).\n"
    "\n"
    "Options:\n"
    "  -o, --output FILE    the HTML page\n"
    "  --title TEXT         its title (default: In Silico Labeling evaluation)\n";

enum { OPT_OUTPUT = 1, OPT_TITLE };

typedef struct page {
    char *s;
    size_t n, cap;
    int failed;
} page;

static void put(page *p, const char *data, size_t k)
{
    if (p->failed)
        return;
    if (p->n + k + 1 > p->cap) {
        size_t cap = (p->n + k + 1) * 2;
        char *s = realloc(p->s, cap);
        if (!s) {
            p->failed = 1;
            return;
        }
        p->s = s, p->cap = cap;
    }
    memcpy(p->s + p->n, data, k);
    p->n += k;
    p->s[p->n] = '\0';
}

static void add(page *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(page *p, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (k < 0) {
        p->failed = 1;
        return;
    }
    if ((size_t)k < sizeof small) {
        put(p, small, (size_t)k);
        return;
    }
    char *big = malloc((size_t)k + 1);
    if (!big) {
        p->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    put(p, big, (size_t)k);
    free(big);
}

/* Text with HTML's special characters escaped. */
static void add_text(page *p, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': put(p, "&lt;", 4); break;
        case '>': put(p, "&gt;", 4); break;
        case '&': put(p, "&amp;", 5); break;
        case '"': put(p, "&quot;", 6); break;
        default: put(p, s, 1);
        }
    }
}

static void add_base64(page *p, const uint8_t *d, size_t n)
{
    static const char abc[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char q[4];
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) |
                     (i + 2 < n ? d[i + 2] : 0);
        q[0] = abc[v >> 18 & 63], q[1] = abc[v >> 12 & 63];
        q[2] = i + 1 < n ? abc[v >> 6 & 63] : '=';
        q[3] = i + 2 < n ? abc[v & 63] : '=';
        put(p, q, 4);
    }
}

static void add_number(page *p, double v, const char *fmt)
{
    if (isfinite(v))
        add(p, fmt, v);
    else
        add(p, "&ndash;");
}

static const char style[] =
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
    "text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}"
    "figure{display:inline-block;vertical-align:top;margin:0 1em 1em 0;max-width:100%}"
    "figure img{max-width:100%;height:auto;image-rendering:pixelated}"
    "figcaption{font-size:85%;max-width:360px}table.heat td{font-size:80%}";

static void settings(page *p, const cli_eval *e)
{
    time_t now = time(NULL);
    char when[64] = "";
    strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    add(p, "<h2>Settings</h2><table><tr><th>setting</th><th>value</th></tr>");
    add(p, "<tr><td>isl version</td><td>%s</td></tr>", isl_version_string());
    add(p, "<tr><td>created</td><td>%s</td></tr>", when);
    if (e->prediction_dir) {
        add(p, "<tr><td>prediction directory</td><td>");
        add_text(p, e->prediction_dir);
        add(p, "</td></tr>");
    }
    for (int i = 0; i < e->num_labels; i++) {
        const cli_eval_label *l = &e->labels[i];
        add(p, "<tr><td>");
        add_text(p, l->name);
        add(p, "</td><td>predicted: ");
        add_text(p, l->pred_path);
        add(p, "; true: ");
        add_text(p, l->truth_path);
        add(p, " at %d,%d</td></tr>", l->x0, l->y0);
    }
    add(p, "<tr><td>region (x0, y0, width, height)</td><td>%d, %d, %d, %d of %d x %d</td></tr>",
        e->rx, e->ry, e->rw, e->rh, e->pred_width, e->pred_height);
    add(p, "<tr><td>mask</td><td>");
    add_text(p, e->mask_path ? e->mask_path : "none");
    add(p, "</td></tr><tr><td>predicted statistic</td><td>%s</td></tr>", e->stat);
    add(p, "<tr><td>Pearson pixels (seed)</td><td>%lld (%llu)</td></tr>",
        (long long)e->max_pixels, (unsigned long long)e->seed);
    add(p, "<tr><td>nuclei: smallest area, border objects</td><td>%d px, %s</td></tr></table>",
        e->min_area, e->exclude_border ? "not scored" : "scored");
}

static void metrics(page *p, const cli_eval *e)
{
    add(p, "<h2>Metrics</h2><table><tr><th>label</th><th>pixels</th><th>sampled</th>"
           "<th>Pearson r</th><th>true / predicted nuclei</th><th>split</th><th>merged</th>"
           "<th>added</th><th>missed</th><th>accuracy</th><th>mean radius true / predicted "
           "(px)</th><th>KS D of radii</th><th>KS p</th></tr>");
    for (int i = 0; i < e->num_labels; i++) {
        const cli_eval_label *l = &e->labels[i];
        const isl_object_errors *o = &l->objects;
        add(p, "<tr><td>");
        add_text(p, l->name);
        add(p, "</td><td>%lld</td><td>%lld</td><td>%.3f</td>", (long long)l->pixels,
            (long long)l->sampled, l->r);
        if (!l->nuclear) {
            add(p, "<td colspan=\"9\">not a nuclear label</td></tr>");
            continue;
        }
        add(p, "<td>%d / %d</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>",
            o->true_objects, o->predicted_objects, o->split, o->merged, o->added, o->missed);
        add_number(p, o->accuracy, "%.3f");
        add(p, "</td><td>");
        add_number(p, l->radius_true_mean, "%.2f");
        add(p, " / ");
        add_number(p, l->radius_pred_mean, "%.2f");
        add(p, "</td><td>");
        add_number(p, l->ks_statistic, "%.3f");
        add(p, "</td><td>");
        add_number(p, l->ks_p, "%.3g");
        add(p, "</td></tr>");
    }
    add(p, "</table>");
}

static void heat_table(page *p, const cli_eval_label *l)
{
    add(p, "<table class=\"heat\"><tr><th>predicted \\ true</th>");
    for (int t = 0; t < CLI_EVAL_BINS; t++)
        add(p, "<th>%.1f</th>", t / 10.0);
    add(p, "</tr>");
    for (int pb = CLI_EVAL_BINS - 1; pb >= 0; pb--) {
        add(p, "<tr><th>%.1f</th>", pb / 10.0);
        for (int t = 0; t < CLI_EVAL_BINS; t++)
            add(p, "<td>%.0f</td>", l->heatmap[t * CLI_EVAL_BINS + pb]);
        add(p, "</tr>");
    }
    add(p, "</table>");
}

static int label_section(page *p, const cli_eval *e, const cli_eval_label *l)
{
    add(p, "<h2>");
    add_text(p, l->name);
    add(p, "</h2><p>Pearson r = %.3f on %lld of %lld pixels.", l->r, (long long)l->sampled,
        (long long)l->pixels);
    if (l->nuclear)
        add(p, " Otsu thresholds: true %.3f, predicted %.3f.", l->threshold_true,
            l->threshold_pred);
    add(p, "</p>");
    for (int fig = 0; fig < CLI_FIG_COUNT; fig++) {
        uint8_t *pix, *png = NULL;
        size_t size = 0;
        int h, w, got = cli_eval_picture(e, l, fig, &pix, &h, &w);
        if (got < 0)
            return CLI_EXIT_RUNTIME;
        if (got > 0)
            continue;
        int bad = cli_png_encode(pix, h, w, 3, &png, &size);
        free(pix);
        if (bad)
            return cli_runtime_error("cannot encode a PNG picture (out of memory?)");
        add(p, "<figure><img alt=\"%s\" data-width=\"%d\" data-height=\"%d\" width=\"%d\" "
               "height=\"%d\" src=\"data:image/png;base64,", cli_eval_fig_suffix[fig] + 1, w, h,
            w, h);
        add_base64(p, png, size);
        free(png);
        add(p, "\"><figcaption>%s</figcaption></figure>", cli_eval_fig_caption[fig]);
    }
    add(p, "<p>Heat map counts per 1,000 pixels (rows: predicted bin, columns: true bin, "
           "lower bin edges):</p>");
    heat_table(p, l);
    return 0;
}

int cli_cmd_report(int argc, char **argv)
{
    if (cli_wants_help(argc, argv))
        return cli_eval_help(help_head);
    static const cli_option opts[] = {CLI_EVAL_OPTIONS, {"output", 'o', 1, OPT_OUTPUT},
                                      {"title", 0, 1, OPT_TITLE}, {NULL, 0, 0, 0}};
    const char *out = NULL, *title = "In Silico Labeling evaluation";
    const cli_eval_own own[] = {{OPT_OUTPUT, &out}, {OPT_TITLE, &title}};
    cli_eval e;
    int rc = cli_eval_start(&e, argc, argv, "report", opts, own, 2, "-o report.html");
    page p = {0};
    if (!rc) {
        add(&p, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>");
        add_text(&p, title);
        add(&p, "</title><style>%s</style></head><body><h1>", style);
        add_text(&p, title);
        add(&p, "</h1><p>Predicted against true fluorescence as in Christiansen et al., Cell "
                "2018 (STAR Methods, \"Evaluation\"); definitions in isl's "
                "docs/evaluation.md.</p>");
        metrics(&p, &e);
        for (int i = 0; !rc && i < e.num_labels; i++)
            rc = label_section(&p, &e, &e.labels[i]);
        settings(&p, &e);
        add(&p, "</body></html>\n");
    }
    if (!rc && p.failed)
        rc = cli_runtime_error("out of memory");
    if (!rc) {
        rc = cli_write_file_atomic(out, p.s, p.n);
    }
    if (!rc)
        printf("wrote %s (%zu bytes)\n", out, p.n);
    free(p.s);
    cli_eval_free(&e);
    return rc;
}
