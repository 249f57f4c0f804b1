/* Pieces of `isl train` shared between its files. */
#ifndef ISL_CLI_TRAIN_H
#define ISL_CLI_TRAIN_H

#include "cli.h"

#include <stdio.h>

/* What a validation measures per head h < isl_model_num_heads (NaN and 0 for heads
 * without known pixels, e.g. the autoencoder), over the known target pixels inside the
 * regions, against the median prediction of each well (predicted whole). */
typedef struct cli_validation {
    double *r;       /* [heads] Pearson r */
    double *painted; /* [heads] fraction of the dark target pixels (below the target's
                        median) predicted bright (above its 90th percentile) */
    int64_t *pixels; /* [heads] pixels compared */
} cli_validation;

isl_status cli_validate(const isl_dataset *ds, const isl_model *model, const isl_region *regions,
                        int num_regions, int threads, cli_validation *v);

/* Training log: one CSV row per step, a progress line on stderr. */
typedef struct cli_train_log {
    FILE *csv;
    const isl_model *model; /* for head names (borrowed) */
    int num_labels;         /* label heads: the first num_labels heads of the model */
    int tty;                /* stderr is a terminal: redraw one line */
    double start, last_print;
    int64_t first_step, last_step;
    double avg[64];         /* smoothed losses for the progress line */
    int have_avg;
    int drawn;
    int quiet;              /* a data-parallel rank other than 0: logs nothing */
} cli_train_log;

/* Opens (appends to) the CSV log; writes the header if the file is new. 0 or exit code. */
int cli_train_log_open(cli_train_log *log, const char *path, const isl_model *model,
                       int64_t first_step, int64_t last_step);
/* Logs the losses of `step` (isl_trainer_num_losses floats) and the learning rate. */
int cli_train_log_step(cli_train_log *log, int64_t step, double rate, const float *losses);
/* Logs a validation as a row and a line. */
int cli_train_log_validation(cli_train_log *log, int64_t step, const cli_validation *v);
/* Prints a message line, clearing the progress line first. */
void cli_train_log_note(cli_train_log *log, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Mean of r[h] over the first num_labels heads with pixels[h] > 0; -inf if none. */
double cli_mean_r(const double *r, const int64_t *pixels, int num_labels);
/* The best mean r among the validation rows of an existing log (-inf if none): a resumed
 * run keeps its best model unless it beats it. */
double cli_train_log_best(const char *path, int num_labels);
/* Closes the CSV; 0 or the exit code of a write error. */
int cli_train_log_close(cli_train_log *log);

#endif
