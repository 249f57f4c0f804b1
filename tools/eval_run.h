/* The evaluation shared by `isl evaluate` and `isl report`: options, inputs, metrics. */
#ifndef ISL_CLI_EVAL_RUN_H
#define ISL_CLI_EVAL_RUN_H

#include "cli.h"

#define CLI_EVAL_BINS 10

typedef struct cli_eval_label {
    char *name;                 /* head, e.g. "dapi_confocal" */
    char *truth_path, *pred_path, *entropy_path, *std_path; /* entropy/std may be NULL */
    int x0, y0;                 /* truth's top-left pixel in prediction coordinates */
    int nuclear;                /* segment nuclei and compare objects */
    /* Crops of the evaluated region (width x height). */
    float *truth, *pred, *entropy, *std;
    /* Results. */
    int64_t pixels, sampled;
    double r;
    double heatmap[CLI_EVAL_BINS * CLI_EVAL_BINS]; /* [true bin][predicted bin], per 1,000 */
    double threshold_true, threshold_pred;
    int num_true, num_pred;
    int32_t *labels_true, *labels_pred;
    isl_object_errors objects;
    double ks_statistic, ks_p;
    double radius_true_mean, radius_true_sd, radius_pred_mean, radius_pred_sd;
} cli_eval_label;

typedef struct cli_eval {
    /* Settings. */
    const char *prediction_dir, *stat, *mask_path, *nuclei_list;
    int region_given, rx, ry, rw, rh; /* region in prediction coordinates */
    int64_t max_pixels;
    uint64_t seed;
    int min_area, exclude_border;
    /* Inputs and results. */
    int num_labels;
    cli_eval_label *labels;
    int pred_width, pred_height;
    uint8_t *mask;              /* region-sized, NULL = every pixel */
} cli_eval;

/* Options both commands take; ids from CLI_EVAL_OPT_FIRST on. */
enum {
    CLI_EVAL_OPT_PREDICTION = 1000, CLI_EVAL_OPT_PREDICTED, CLI_EVAL_OPT_TRUTH,
    CLI_EVAL_OPT_REGION, CLI_EVAL_OPT_MASK, CLI_EVAL_OPT_PIXELS, CLI_EVAL_OPT_SEED,
    CLI_EVAL_OPT_STAT, CLI_EVAL_OPT_NUCLEI, CLI_EVAL_OPT_MIN_AREA, CLI_EVAL_OPT_KEEP_BORDER
};
#define CLI_EVAL_OPTIONS                                                                 \
    {"prediction", 0, 1, CLI_EVAL_OPT_PREDICTION}, {"predicted", 0, 1, CLI_EVAL_OPT_PREDICTED}, \
    {"truth", 0, 1, CLI_EVAL_OPT_TRUTH}, {"region", 0, 1, CLI_EVAL_OPT_REGION},           \
    {"mask", 0, 1, CLI_EVAL_OPT_MASK}, {"pixels", 0, 1, CLI_EVAL_OPT_PIXELS},             \
    {"seed", 0, 1, CLI_EVAL_OPT_SEED}, {"stat", 0, 1, CLI_EVAL_OPT_STAT},                 \
    {"nuclei", 0, 1, CLI_EVAL_OPT_NUCLEI}, {"min-area", 0, 1, CLI_EVAL_OPT_MIN_AREA},     \
    {"keep-border", 0, 0, CLI_EVAL_OPT_KEEP_BORDER}

/* Help text of those options. */
extern const char cli_eval_options_help[];

void cli_eval_init(cli_eval *e);
/* Takes one of the shared options. 0, or the exit code of a reported error. */
int cli_eval_option(cli_eval *e, int id, const char *value);

/* An option of one command alone (ids below CLI_EVAL_OPT_PREDICTION): its value. */
typedef struct cli_eval_own {
    int id;
    const char **value;
} cli_eval_own;
/* Prints the help of an evaluation command: head, then the shared options. Exit code. */
int cli_eval_help(const char *head);
/* Initializes e, parses the arguments of `isl <command>` and runs the evaluation
 * (cli_eval_run): opts lists the shared options (CLI_EVAL_OPTIONS) and the command's own,
 * whose values go to own[0 .. num_own); own[0], the output, is required (`output` names it
 * in the message when missing, e.g. "-o OUTDIR"). 0 or the exit code of a reported error;
 * free e with cli_eval_free either way. */
int cli_eval_start(cli_eval *e, int argc, char **argv, const char *command,
                   const cli_option *opts, const cli_eval_own *own, int num_own,
                   const char *output);
/* Reads the inputs, checks them and computes every metric. 0 or an exit code. */
int cli_eval_run(cli_eval *e);
int cli_eval_width(const cli_eval *e);
int cli_eval_height(const cli_eval *e);
/* Pictures of a label. The heat map is CLI_EVAL_HEATMAP_SIDE pixels square: true value
 * along x (left to right), predicted along y (bottom to top), colour log(1 + count). */
enum { CLI_FIG_TRUE, CLI_FIG_PRED, CLI_FIG_ERROR, CLI_FIG_ENTROPY, CLI_FIG_STD, CLI_FIG_HEATMAP,
       CLI_FIG_COUNT };
#define CLI_EVAL_HEATMAP_SIDE 320
/* File suffix ("_error.png") and caption of each picture. */
extern const char *const cli_eval_fig_suffix[CLI_FIG_COUNT];
extern const char *const cli_eval_fig_caption[CLI_FIG_COUNT];
/* Picture fig of label l in *pixels (allocated; free it), 3 channels: 0, 1 if the label
 * has none (no entropy or std image), or -1 with an error reported. */
int cli_eval_picture(const cli_eval *e, const cli_eval_label *l, int fig, uint8_t **pixels,
                     int *height, int *width);
/* dir/<label><suffix>, allocated (NULL when out of memory). */
char *cli_eval_label_path(const char *dir, const char *label, const char *suffix);
void cli_eval_free(cli_eval *e);

#endif
