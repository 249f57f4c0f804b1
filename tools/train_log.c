/* Progress and CSV log of `isl train`. */
#include "train.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PRINT_SECONDS_TTY 0.5
#define PRINT_SECONDS_FILE 30.0
#define AVG_WEIGHT 0.05 /* exponential smoothing of the displayed losses */

int cli_train_log_open(cli_train_log *log, const char *path, const isl_model *model,
                       int64_t first_step, int64_t last_step)
{
    memset(log, 0, sizeof(*log));
    log->model = model;
    for (int h = 0; h < isl_model_num_heads(model); h++)
        if (strcmp(isl_model_head_name(model, h), ISL_AUTOENCODER_NAME))
            log->num_labels++;
    if (log->num_labels + 3 > (int)(sizeof(log->avg) / sizeof(log->avg[0])))
        return cli_usage_error("too many label heads (%d) for the training log", log->num_labels);
    log->tty = isatty(STDERR_FILENO);
    log->start = cli_now();
    log->last_print = log->start;
    log->first_step = first_step;
    log->last_step = last_step;
    int exists = cli_file_size(path) > 0;
    if (!(log->csv = fopen(path, "a")))
        return cli_runtime_error("cannot open the log %s: %m", path);
    if (!exists) {
        fputs("step,elapsed_s,learning_rate", log->csv);
        for (int h = 0; h < log->num_labels; h++)
            fprintf(log->csv, ",loss_%s", isl_model_head_name(model, h));
        fputs(",loss_label,loss_autoencoder,loss_total", log->csv);
        for (int h = 0; h < log->num_labels; h++)
            fprintf(log->csv, ",r_%s", isl_model_head_name(model, h));
        for (int h = 0; h < log->num_labels; h++)
            fprintf(log->csv, ",painted_%s", isl_model_head_name(model, h));
        fputc('\n', log->csv);
    }
    return CLI_EXIT_OK;
}

static void clear_line(cli_train_log *log)
{
    if (log->tty && log->drawn) {
        fputs("\r\033[K", stderr);
        log->drawn = 0;
    }
}

static void print_progress(cli_train_log *log, int64_t step, double now)
{
    double elapsed = now - log->start;
    double rate = elapsed > 0 ? (double)(step - log->first_step) / elapsed : 0;
    char eta[32];
    cli_format_duration(rate > 0 ? (double)(log->last_step - step) / rate : -1, eta, sizeof(eta));
    clear_line(log);
    fprintf(stderr, "step %lld/%lld  loss", (long long)step, (long long)log->last_step);
    int L = log->num_labels;
    for (int h = 0; h < L; h++)
        fprintf(stderr, " %s %.3f", isl_model_head_name(log->model, h), log->avg[h]);
    if (!isnan(log->avg[L + 1]))
        fprintf(stderr, " autoencoder %.3f", log->avg[L + 1]);
    fprintf(stderr, "  %.3g steps/s  ETA %s%s", rate, eta, log->tty ? "" : "\n");
    fflush(stderr);
    log->drawn = log->tty;
    log->last_print = now;
}

int cli_train_log_step(cli_train_log *log, int64_t step, double rate, const float *losses)
{
    if (log->quiet)
        return CLI_EXIT_OK;
    int n = log->num_labels + 3;
    fprintf(log->csv, "%lld,%.2f,%.3g", (long long)step, cli_now() - log->start, rate);
    for (int i = 0; i < n; i++) {
        if (isnan(losses[i]))
            fputs(",", log->csv);
        else
            fprintf(log->csv, ",%.5f", losses[i]);
        /* Smoothed for display; a loss seen for the first time starts the average. */
        if (!isnan(losses[i]))
            log->avg[i] = (!log->have_avg || isnan(log->avg[i]))
                              ? losses[i]
                              : (1 - AVG_WEIGHT) * log->avg[i] + AVG_WEIGHT * losses[i];
        else if (!log->have_avg)
            log->avg[i] = NAN;
    }
    log->have_avg = 1;
    for (int h = 0; h < 2 * log->num_labels; h++)
        fputc(',', log->csv);
    fputc('\n', log->csv);
    if (fflush(log->csv) != 0 || ferror(log->csv))
        return cli_runtime_error("cannot write the training log: %m");
    double now = cli_now();
    if (step == log->last_step ||
        now - log->last_print >= (log->tty ? PRINT_SECONDS_TTY : PRINT_SECONDS_FILE) ||
        step == log->first_step + 1)
        print_progress(log, step, now);
    return CLI_EXIT_OK;
}

static void write_values(FILE *csv, const double *x, int n)
{
    for (int h = 0; h < n; h++)
        if (isnan(x[h]))
            fputc(',', csv);
        else
            fprintf(csv, ",%.4f", x[h]);
}

int cli_train_log_validation(cli_train_log *log, int64_t step, const cli_validation *v)
{
    fprintf(log->csv, "%lld,%.2f,", (long long)step, cli_now() - log->start);
    for (int i = 0; i < log->num_labels + 3; i++)
        fputc(',', log->csv);
    write_values(log->csv, v->r, log->num_labels);
    write_values(log->csv, v->painted, log->num_labels);
    fputc('\n', log->csv);
    if (fflush(log->csv) != 0 || ferror(log->csv))
        return cli_runtime_error("cannot write the training log: %m");
    clear_line(log);
    fprintf(stderr, "validation at step %lld: Pearson r", (long long)step);
    for (int h = 0; h < log->num_labels; h++) {
        char count[32];
        if (v->pixels[h] > 0)
            fprintf(stderr, " %s %.3f (%s px)", isl_model_head_name(log->model, h), v->r[h],
                    cli_thousands(v->pixels[h], count, sizeof(count)));
    }
    fputs("; dark background painted bright", stderr);
    for (int h = 0; h < log->num_labels; h++)
        if (v->pixels[h] > 0)
            fprintf(stderr, " %s %.1f%%", isl_model_head_name(log->model, h),
                    100 * v->painted[h]);
    fputc('\n', stderr);
    fflush(stderr);
    return CLI_EXIT_OK;
}

void cli_train_log_note(cli_train_log *log, const char *fmt, ...)
{
    if (log->quiet)
        return;
    clear_line(log);
    va_list ap;
    va_start(ap, fmt);
    fputs("isl: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

int cli_train_log_close(cli_train_log *log)
{
    clear_line(log);
    int rc = CLI_EXIT_OK;
    if (log->csv && fclose(log->csv) != 0)
        rc = cli_runtime_error("cannot write the training log: %m");
    log->csv = NULL;
    return rc;
}

double cli_mean_r(const double *r, const int64_t *pixels, int num_labels)
{
    double sum = 0;
    int n = 0;
    for (int h = 0; h < num_labels; h++)
        if (pixels[h] > 0 && !isnan(r[h])) {
            sum += r[h];
            n++;
        }
    return n ? sum / n : -INFINITY;
}

double cli_train_log_best(const char *path, int num_labels)
{
    double best = -INFINITY;
    FILE *f = fopen(path, "r");
    if (!f)
        return best;
    char line[4096];
    /* step, elapsed, rate, L losses, label, autoencoder, total, L r's: a validation row
     * has an empty total and the r's. */
    int total_col = 3 + num_labels + 2, first_r = total_col + 1;
    while (fgets(line, sizeof(line), f)) {
        if (!isdigit((unsigned char)line[0]))
            continue; /* header */
        double sum = 0;
        int col = 0, n = 0, is_validation = 0;
        for (char *p = line; col <= first_r + num_labels - 1; col++) {
            char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strcspn(p, "\r\n");
            if (col == total_col)
                is_validation = len == 0;
            else if (col >= first_r && len > 0) {
                sum += strtod(p, NULL);
                n++;
            }
            if (!comma)
                break;
            p = comma + 1;
        }
        if (is_validation && n > 0 && sum / n > best)
            best = sum / n;
    }
    fclose(f);
    return best;
}
