/* isl predict: a transmitted-light stack in, one float32 TIFF per (head, statistic) out. */
#include "cli.h"
#include "dist.h"
#include "tiff_io.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Plane means (in [0, 1]) outside this range draw a warning for models without input
 * normalization. */
#define UNUSUAL_MEAN_LOW 0.2
#define UNUSUAL_MEAN_HIGH 0.8

/* The %d and %zu fields are the library's defaults (isl_predict_options_get_*). */
static const char predict_help[] =
    "Usage: isl predict --model MODEL.h5 --input STACK.tif --output-dir DIR [options]\n"
    "\n"
    "Predicts fluorescence images from a transmitted-light z-stack (a multi-page TIFF with\n"
    "one page per z plane, as many as the model's num_z; 8/16-bit unsigned or float32) and\n"
    "writes DIR/<head>_<stat>.tif for each selected head and statistic: float32 images of\n"
    "the input's height and width (the autoencoder: one page per z plane). DIR is created\n"
    "if missing. Files appear only when everything succeeded. A model without input\n"
    "normalization needs stacks preprocessed as its training data (plane means near 0.5);\n"
    "a warning says when the planes look raw (docs/cli.md, \"Input values\").\n"
    "\n"
    "Options:\n"
    "  -m, --model PATH         model file (required); repeat it (up to 16) to predict with\n"
    "                           an ensemble: the models' distributions are averaged, which\n"
    "                           predicts better than each (README, \"The bundled model\")\n"
    "  -i, --input PATH         input stack (this or --input-list)\n"
    "  --input-list FILE        many fields: FILE lists input stacks, one path a line\n"
    "                           (blank lines and lines starting with # skipped); the\n"
    "                           outputs of STACK.tif go to DIR/STACK/. Under 'mpirun -np N'\n"
    "                           the fields are shared out to the N ranks as they finish\n"
    "                           (docs/scaling.md); each rank prints a summary line\n"
    "  --comm-timeout S         with --input-list under mpirun: end the job when a rank\n"
    "                           hears nothing from the others for S seconds (default 1800;\n"
    "                           give more than one field takes)\n"
    "  -O, --output-dir DIR     output directory (required)\n"
    "  --stats LIST             statistics, comma-separated (default median):\n"
    "                           median, mean, mode, std, entropy, p_nonzero\n"
    "  --heads LIST             heads, comma-separated (default: every label head);\n"
    "                           'autoencoder' selects the autoencoder head\n"
    "  --threads N              threads (0: all cores; default %d)\n"
    "  --tile N                 input tile side, 266 + 16m (266, 282, ..., 506, ..., 1018);\n"
    "                           0 (default): the cheapest within the memory limit\n"
    "  --memory-limit MB        working-memory bound in MiB (default %zu)\n"
    "  --precision P            fp32 (default) or bf16\n"
    "  --flip-average           also predict the input's three mirror images and average\n"
    "                           the four distributions (test-time augmentation): better\n"
    "                           predictions for 4x the time (README, \"The bundled model\")\n"
    "  --preview                also write DIR/preview.tif, an 8-bit RGB picture: the\n"
    "                           input's middle z plane (left), the medians of the first\n"
    "                           three label heads in blue, green and red (middle), and in\n"
    "                           magenta where they cannot be trusted (right: predicted\n"
    "                           std above 0.15); prints the uncertain share per head\n"
    "  --format F               tiff (default): one float32 TIFF per head and statistic;\n"
    "                           ome-tiff: also DIR/predictions.ome.tif, all of them as one\n"
    "                           OME-TIFF with named channels (docs/interop.md)\n"
    "  -h, --help               show this help\n";

enum { OPT_MODEL, OPT_INPUT, OPT_OUTDIR, OPT_STATS, OPT_HEADS, OPT_THREADS, OPT_TILE, OPT_MEMORY,
       OPT_PRECISION, OPT_FLIP, OPT_PREVIEW, OPT_FORMAT, OPT_INPUT_LIST, OPT_COMM_TIMEOUT };

static const cli_option predict_options[] = {
    {"model", 'm', 1, OPT_MODEL},   {"input", 'i', 1, OPT_INPUT},     {"output-dir", 'O', 1, OPT_OUTDIR},
    {"stats", 0, 1, OPT_STATS},     {"heads", 0, 1, OPT_HEADS},       {"threads", 0, 1, OPT_THREADS},
    {"tile", 0, 1, OPT_TILE},       {"memory-limit", 0, 1, OPT_MEMORY}, {"precision", 0, 1, OPT_PRECISION},
    {"flip-average", 0, 0, OPT_FLIP}, {"preview", 0, 0, OPT_PREVIEW},
    {"format", 0, 1, OPT_FORMAT},   {"input-list", 0, 1, OPT_INPUT_LIST},
    {"comm-timeout", 0, 1, OPT_COMM_TIMEOUT},
    {NULL, 0, 0, 0},
};

typedef struct predict_args {
    const char *models[ISL_MAX_ENSEMBLE];
    int num_models;
    const char *input, *input_list, *output_dir, *heads;
    isl_stat stats[ISL_STAT_COUNT];
    int num_stats;
    long long threads, tile, memory_mb; /* -1, -1, 0: not given */
    isl_precision precision;
    int precision_given;
    int flip_average;
    int ome_tiff; /* --format ome-tiff */
    int preview;
    double comm_timeout; /* --input-list on MPI: seconds a rank may wait for the others */
} predict_args;

static int parse_stats(const char *text, predict_args *a)
{
    cli_list list;
    int rc = cli_split_list("--stats", text, &list);
    if (rc != 0)
        return rc;
    a->num_stats = 0;
    for (int i = 0; i < list.count && rc == 0; i++) {
        int s = isl_stat_from_name(list.items[i]);
        if (s < 0) {
            rc = cli_usage_error("--stats: unknown statistic '%s' (valid: median, mean, mode, "
                                 "std, entropy, p_nonzero)",
                                 list.items[i]);
            break;
        }
        int seen = 0;
        for (int k = 0; k < a->num_stats; k++)
            seen |= a->stats[k] == (isl_stat)s;
        if (!seen)
            a->stats[a->num_stats++] = (isl_stat)s;
    }
    cli_list_free(&list);
    return rc;
}

static int parse_predict(int argc, char **argv, predict_args *a)
{
    memset(a, 0, sizeof(*a));
    a->stats[0] = ISL_STAT_MEDIAN;
    a->num_stats = 1;
    a->threads = a->tile = -1;
    a->comm_timeout = CLI_DIST_DEFAULT_TIMEOUT;
    cli_args p;
    cli_args_init(&p, argc, argv, "predict");
    int kind, id;
    const char *v;
    while ((kind = cli_args_next(&p, predict_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL)
            return cli_usage_error("unexpected argument '%s' (see 'isl predict --help')", v);
        int rc = 0;
        switch (id) {
        case OPT_MODEL:
            if (a->num_models == ISL_MAX_ENSEMBLE)
                rc = cli_usage_error("--model: at most %d models form an ensemble",
                                     ISL_MAX_ENSEMBLE);
            else
                a->models[a->num_models++] = v;
            break;
        case OPT_INPUT: a->input = v; break;
        case OPT_INPUT_LIST: a->input_list = v; break;
        case OPT_COMM_TIMEOUT:
            rc = cli_parse_double("--comm-timeout", v, 1, 1e7, &a->comm_timeout) ? CLI_EXIT_USAGE
                                                                                 : 0;
            break;
        case OPT_OUTDIR: a->output_dir = v; break;
        case OPT_HEADS: a->heads = v; break;
        case OPT_STATS: rc = parse_stats(v, a); break;
        case OPT_THREADS:
            if (cli_parse_int("--threads", v, 0, 4096, &a->threads) != 0)
                rc = CLI_EXIT_USAGE;
            break;
        case OPT_TILE:
            if (cli_parse_int("--tile", v, 0, 1 << 20, &a->tile) != 0)
                rc = CLI_EXIT_USAGE;
            break;
        case OPT_MEMORY:
            if (cli_parse_int("--memory-limit", v, 1, (long long)(SIZE_MAX >> 20), &a->memory_mb) != 0)
                rc = CLI_EXIT_USAGE;
            break;
        case OPT_FLIP: a->flip_average = 1; break;
        case OPT_PREVIEW: a->preview = 1; break;
        case OPT_FORMAT:
            if (!strcmp(v, "ome-tiff"))
                a->ome_tiff = 1;
            else if (strcmp(v, "tiff") != 0)
                rc = cli_usage_error("--format: '%s' is not one of: tiff, ome-tiff", v);
            break;
        case OPT_PRECISION:
            a->precision_given = 1;
            if (!strcmp(v, "fp32"))
                a->precision = ISL_PRECISION_FP32;
            else if (!strcmp(v, "bf16"))
                a->precision = ISL_PRECISION_BF16;
            else
                rc = cli_usage_error("--precision: '%s' is not one of: fp32, bf16", v);
            break;
        }
        if (rc != 0)
            return rc;
    }
    if (a->num_models == 0)
        return cli_usage_error("missing --model (see 'isl predict --help')");
    if (!a->input == !a->input_list)
        return cli_usage_error(a->input ? "give --input or --input-list, not both"
                                        : "missing --input (see 'isl predict --help')");
    if (!a->output_dir)
        return cli_usage_error("missing --output-dir (see 'isl predict --help')");
    return CLI_EXIT_OK;
}

/* A failed option setter: invalid values are usage errors, named by their option. */
static int option_error(isl_status s, const char *option)
{
    if (s != ISL_ERROR_INVALID_ARGUMENT)
        return cli_library_error(s);
    return cli_usage_error("%s: %s", option, isl_last_error());
}

/* Options that do not depend on the model: only those given, the library's defaults
 * apply to the rest. The statistics are always set: the CLI names its files by them. */
static int make_options(const predict_args *a, cli_progress *progress, isl_predict_options **out)
{
    isl_predict_options *o = NULL;
    isl_status s = isl_predict_options_create(&o);
    if (s != ISL_OK)
        return cli_library_error(s);
    const char *failed = NULL;
    if ((s = isl_predict_options_set_stats(o, a->num_stats, a->stats)) != ISL_OK)
        failed = "--stats";
    else if (a->threads >= 0 &&
             (s = isl_predict_options_set_threads(o, (int)a->threads)) != ISL_OK)
        failed = "--threads";
    else if (a->tile >= 0 && (s = isl_predict_options_set_tile_size(o, (int)a->tile)) != ISL_OK)
        failed = "--tile";
    else if (a->memory_mb &&
             (s = isl_predict_options_set_memory_limit(o, (size_t)a->memory_mb << 20)) != ISL_OK)
        failed = "--memory-limit";
    else if (a->precision_given &&
             (s = isl_predict_options_set_precision(o, a->precision)) != ISL_OK)
        failed = "--precision";
    else if (a->flip_average && (s = isl_predict_options_set_flip_average(o, 1)) != ISL_OK)
        failed = "--flip-average";
    else if ((s = isl_predict_options_set_progress(o, cli_progress_update, progress)) != ISL_OK)
        failed = "progress";
    if (s != ISL_OK) {
        int rc = option_error(s, failed);
        isl_predict_options_free(o);
        return rc;
    }
    *out = o;
    return CLI_EXIT_OK;
}

/* Every head name of the model, comma-separated, for messages. */
static void head_names(const isl_model *m, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int h = 0; h < isl_model_num_heads(m) && used < size; h++) {
        int n = snprintf(buf + used, size - used, "%s%s", h ? ", " : "", isl_model_head_name(m, h));
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static int is_label_head(const isl_model *m, int head)
{
    return strcmp(isl_model_head_name(m, head), ISL_AUTOENCODER_NAME) != 0;
}

/* Head indices: the named ones (deduplicated) or every label head. */
static int select_heads(const isl_model *m, const char *names, int **heads, int *count)
{
    int total = isl_model_num_heads(m);
    *count = 0;
    if (!(*heads = malloc(sizeof(int) * (size_t)(total > 0 ? total : 1))))
        return cli_runtime_error("out of memory");
    if (!names) {
        for (int h = 0; h < total; h++)
            if (is_label_head(m, h))
                (*heads)[(*count)++] = h;
        if (*count == 0)
            return cli_usage_error("the model has no label heads; use --heads autoencoder");
        return CLI_EXIT_OK;
    }
    cli_list list;
    int rc = cli_split_list("--heads", names, &list);
    for (int i = 0; rc == 0 && i < list.count; i++) {
        int h = isl_model_head_index(m, list.items[i]);
        if (h < 0) {
            char valid[4096];
            head_names(m, valid, sizeof(valid));
            rc = cli_usage_error("--heads: the model has no head '%s' (valid: %s)", list.items[i],
                                 valid);
            break;
        }
        int seen = 0;
        for (int k = 0; k < *count; k++)
            seen |= (*heads)[k] == h;
        if (!seen)
            (*heads)[(*count)++] = h;
    }
    cli_list_free(&list);
    return rc;
}

typedef struct predict_job {
    isl_model *model;                       /* the first --model: heads and names */
    isl_model *members[ISL_MAX_ENSEMBLE - 1]; /* the others, averaged with it */
    isl_predict_options *options;
    int *heads;
    int num_heads;
    isl_tiff_stack stack;
    cli_dirs created;
    cli_outputs *outputs;
    cli_preview *preview; /* --preview, else NULL */
    cli_progress progress;
    const char *input, *output_dir; /* the field being predicted */
} predict_job;

/* Releases what one field needed (the models and options stay). */
static void field_free(predict_job *j, int failed)
{
    cli_outputs_free(j->outputs); /* removes uncommitted temporaries */
    j->outputs = NULL;
    cli_preview_free(j->preview);
    j->preview = NULL;
    if (failed)
        cli_remove_created_dirs(&j->created);
    else
        cli_dirs_free(&j->created);
    memset(&j->created, 0, sizeof(j->created));
    isl_tiff_stack_free(&j->stack);
    memset(&j->stack, 0, sizeof(j->stack));
}

static void job_free(predict_job *j, int failed)
{
    field_free(j, failed);
    free(j->heads);
    isl_predict_options_free(j->options);
    isl_model_free(j->model);
    for (int k = 0; k < ISL_MAX_ENSEMBLE - 1; k++)
        isl_model_free(j->members[k]);
}

/* Models without input normalization see the stack's values scaled to [0, 1] as they
 * are, so they only predict stacks preprocessed as their training data was; the paper's
 * pipeline (and the bundled model's data) puts every transmitted-light plane's mean near
 * 0.5. Raw camera images (a 12-bit camera: means near 0.05) give confident nonsense, so
 * say so. */
static void warn_unusual_input(const isl_model *m, const isl_tiff_stack *s)
{
    if (strcmp(isl_model_input_normalization(m), "none"))
        return;
    const size_t plane = (size_t)s->height * (size_t)s->width;
    double lo = INFINITY, hi = -INFINITY;
    for (int z = 0; z < s->num_z; z++) {
        double sum = 0;
        for (size_t i = (size_t)z * plane; i < (size_t)(z + 1) * plane; i++)
            sum += isl_tiff_stack_scaled(s, i);
        double mean = sum / (double)plane;
        lo = mean < lo ? mean : lo;
        hi = mean > hi ? mean : hi;
    }
    if (lo >= UNUSUAL_MEAN_LOW && hi <= UNUSUAL_MEAN_HIGH)
        return;
    fprintf(stderr,
            "isl: warning: the input's planes have means %.3g to %.3g (values scaled to [0, 1]); "
            "this model (input normalization \"none\") expects stacks preprocessed like its "
            "training data, typically means near 0.5: predictions of raw camera images are not "
            "meaningful (docs/cli.md, \"Input values\")\n",
            lo, hi);
}

/* isl_rows_fn (user = the job): rows go to their file and, medians and standard
 * deviations, to the preview. */
static int deliver_rows(void *user, int head, isl_stat stat, int y0, int rows, int width,
                        const float *data)
{
    predict_job *j = user;
    if (cli_preview_wants(j->preview, head, stat))
        cli_preview_rows(j->preview, head, stat, y0, rows, data);
    if (!cli_outputs_wants(j->outputs, head, stat))
        return cli_interrupted();
    return cli_outputs_rows(j->outputs, head, stat, y0, rows, width, data);
}

/* The preview first: if the images then fail, it is taken back, so that either every
 * file appears or none. */
static int commit(predict_job *j)
{
    if (j->preview && cli_preview_commit(j->preview) != 0)
        return -1;
    if (cli_outputs_commit(j->outputs) == 0)
        return 0;
    if (j->preview)
        unlink(cli_preview_path(j->preview));
    return -1;
}

static const char *commit_error(const predict_job *j)
{
    const char *e = j->preview ? cli_preview_error(j->preview) : "";
    return e[0] ? e : cli_outputs_error(j->outputs);
}

/* --format ome-tiff: the committed images again, as one OME-TIFF with named channels
 * (<head>_<stat>, autoencoder planes _zNN) and the input's pixel size. */
static int write_ome(predict_job *j)
{
    int files = cli_outputs_count(j->outputs), planes = 0, nz = j->stack.num_z;
    const char **paths = calloc((size_t)files, sizeof(*paths));
    char(*names)[CLI_OME_NAME] = calloc((size_t)files * (size_t)nz, sizeof(*names));
    char *out = cli_path_join(j->output_dir, "predictions.ome.tif");
    int rc = CLI_EXIT_OK;
    if (!paths || !names || !out)
        rc = cli_runtime_error("out of memory");
    for (int i = 0; rc == CLI_EXIT_OK && i < files; i++) {
        paths[i] = cli_outputs_path(j->outputs, i);
        const char *base = strrchr(paths[i], '/') ? strrchr(paths[i], '/') + 1 : paths[i];
        int len = (int)strlen(base) - 4; /* without ".tif" */
        int pages = !strncmp(base, "autoencoder_", 12) ? nz : 1;
        for (int z = 0; z < pages; z++, planes++)
            snprintf(names[planes], CLI_OME_NAME, pages > 1 ? "%.*s_z%02d" : "%.*s", len, base, z);
    }
    cli_ome_info info;
    double pixel = cli_ome_read(j->input, &info) == 0 ? info.pixel_x_um : 0;
    char err[1024];
    if (rc == CLI_EXIT_OK && cli_ome_write(out, files, paths, names, planes, j->stack.height,
                                           j->stack.width, pixel, err, sizeof(err)) != 0)
        rc = cli_runtime_error("%s", err);
    if (rc == CLI_EXIT_OK)
        printf("wrote %s\n", out);
    free(paths);
    free(names);
    free(out);
    return rc;
}

/* Runs the prediction into the opened outputs and commits them. */
static int run(predict_job *j, const predict_args *a)
{
    isl_stack input = {j->stack.data, j->stack.dtype, j->stack.num_z, j->stack.height,
                       j->stack.width};
    isl_status s = isl_predict_options_set_heads(j->options, j->num_heads, j->heads);
    if (s != ISL_OK)
        return cli_library_error(s);
    cli_progress_init(&j->progress);
    s = isl_predict_image_rows(j->model, j->options, &input, deliver_rows, j);
    int committed = s == ISL_OK && !cli_interrupted() && commit(j) == 0;
    cli_progress_clear(&j->progress);
    if (!committed && cli_interrupted()) {
        cli_runtime_error("interrupted; no output written");
        return CLI_EXIT_INTERRUPTED;
    }
    if (s != ISL_OK && commit_error(j)[0] == '\0')
        return cli_library_error(s);
    if (!committed)
        return cli_runtime_error("%s", commit_error(j));

    double seconds = cli_now() - j->progress.start;
    double mpix = (double)input.height * input.width / 1e6;
    for (int i = 0; i < cli_outputs_count(j->outputs); i++)
        printf("wrote %s\n", cli_outputs_path(j->outputs, i));
    if (j->preview)
        printf("wrote %s\n", cli_preview_path(j->preview));
    if (a->ome_tiff) {
        int rc = write_ome(j);
        if (rc != CLI_EXIT_OK)
            return rc;
    }
    if (fflush(stdout) != 0)
        return cli_runtime_error("cannot write to stdout");
    fprintf(stderr,
            "isl: predicted %d head%s x %d stat%s of a %d x %d image%s%s in %.2f s "
            "(%.3g megapixels/s)\n",
            j->num_heads, j->num_heads == 1 ? "" : "s", a->num_stats, a->num_stats == 1 ? "" : "s",
            input.width, input.height, a->num_models > 1 ? " with an ensemble" : "",
            a->flip_average ? (a->num_models > 1 ? " and flip averaging" : " with flip averaging")
                            : "",
            seconds,
            seconds > 0 ? mpix / seconds : 0.0);
    warn_unusual_input(j->model, &j->stack);
    if (j->preview) {
        char legend[1024];
        cli_preview_legend(j->preview, j->model, legend, sizeof(legend));
        fprintf(stderr, "isl: preview: left z plane %d of %d, middle %s, right magenta where "
                "uncertain\n", j->stack.num_z / 2, j->stack.num_z, legend);
        if (cli_preview_uncertainty(j->preview, j->model, legend, sizeof(legend)) == 0)
            fprintf(stderr, "isl: %s (docs/cli.md \"Uncertainty\")\n", legend);
    }
    return CLI_EXIT_OK;
}

/* The preview of the first three label heads among those selected and where they are
 * uncertain; the library then also computes their medians and standard deviations. */
static int open_preview(predict_job *j, const predict_args *a)
{
    int labels[3], n = 0;
    for (int h = 0; h < j->num_heads && n < 3; h++)
        if (is_label_head(j->model, j->heads[h]))
            labels[n++] = j->heads[h];
    if (n == 0)
        return cli_usage_error("--preview: no label head selected (the autoencoder is not "
                               "shown)");
    if (!(j->preview = cli_preview_open(j->output_dir, &j->stack, labels, n)) ||
        cli_preview_show_uncertainty(j->preview) != 0)
        return cli_runtime_error("out of memory");
    isl_stat stats[ISL_STAT_COUNT];
    int num_stats = a->num_stats, has_median = 0, has_std = 0;
    for (int i = 0; i < a->num_stats; i++) {
        stats[i] = a->stats[i];
        has_median |= stats[i] == ISL_STAT_MEDIAN;
        has_std |= stats[i] == ISL_STAT_STD;
    }
    if (!has_median)
        stats[num_stats++] = ISL_STAT_MEDIAN;
    if (!has_std)
        stats[num_stats++] = ISL_STAT_STD;
    isl_status s = isl_predict_options_set_stats(j->options, num_stats, stats);
    return s == ISL_OK ? CLI_EXIT_OK : cli_library_error(s);
}

/* The models, options and heads, shared by every field. */
static int predict_setup(predict_job *j, const predict_args *a)
{
    int rc = make_options(a, &j->progress, &j->options);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (cli_interrupt_install() != 0)
        return cli_runtime_error("cannot install the SIGINT handler");
    isl_status s = isl_model_load(a->models[0], &j->model);
    if (s != ISL_OK)
        return cli_library_error(s);
    for (int k = 1; k < a->num_models; k++)
        if ((s = isl_model_load(a->models[k], &j->members[k - 1])) != ISL_OK)
            return cli_library_error(s);
    s = isl_predict_options_set_ensemble(j->options, a->num_models - 1,
                                         (const isl_model *const *)j->members);
    if (s != ISL_OK)
        return cli_library_error(s);
    return select_heads(j->model, a->heads, &j->heads, &j->num_heads);
}

/* One field: j->input into j->output_dir. */
static int predict_field(predict_job *j, const predict_args *a)
{
    int rc;
    isl_status s;
    if ((rc = cli_ome_check_input(j->input, isl_model_num_z(j->model),
                                   isl_model_pixel_size(j->model))) != CLI_EXIT_OK)
        return rc;
    s = isl_tiff_read_stack(j->input, isl_model_num_z(j->model), &j->stack);
    if (s != ISL_OK)
        return cli_tiff_error(s);
    if (cli_interrupted()) {
        cli_runtime_error("interrupted; no output written");
        return CLI_EXIT_INTERRUPTED;
    }
    if ((rc = cli_mkdir_p(j->output_dir, &j->created)) != CLI_EXIT_OK)
        return rc;
    if (!(j->outputs = cli_outputs_new()))
        return cli_runtime_error("out of memory");
    if (cli_outputs_open(j->outputs, j->model, j->output_dir, j->heads, j->num_heads, a->stats,
                         a->num_stats, j->stack.height, j->stack.width) != 0)
        return cli_runtime_error("%s", cli_outputs_error(j->outputs));
    if (a->preview && (rc = open_preview(j, a)) != CLI_EXIT_OK)
        return rc;
    return run(j, a);
}

/* --input-list: the fields of the list, handed out one at a time to whichever rank of
 * an MPI job is free (all of them to this process without MPI). A field that fails is
 * reported and counted; the others go on. */
static int predict_fields(const predict_args *a, predict_job *j)
{
    cli_field_list fields;
    int rc = cli_field_list_read(a->input_list, &fields);
    if (rc != CLI_EXIT_OK)
        return rc;
    cli_dist d;
    if (cli_dist_init(&d, a->comm_timeout) != 0) {
        cli_field_list_free(&fields);
        return CLI_EXIT_RUNTIME;
    }
    /* Every rank needs the models: a rank that cannot load them ends the job. */
    if ((rc = predict_setup(j, a)) != CLI_EXIT_OK) {
        cli_field_list_free(&fields);
        if (d.size > 1)
            cli_dist_abort(&d, rc, "cannot predict (the message above)");
        return rc;
    }
    if (cli_dist_queue_start(&d, fields.count) != 0)
        cli_dist_abort(&d, CLI_EXIT_RUNTIME, "cannot share out the fields");
    const double start = cli_now();
    int done = 0, failed = 0, skipped = 0;
    int64_t i;
    while ((i = cli_dist_queue_next(&d)) >= 0) {
        if (cli_interrupted()) { /* drain the queue so that rank 0 can finish */
            skipped++;
            continue;
        }
        char *dir = cli_path_join(a->output_dir, fields.names[i]);
        j->input = fields.paths[i];
        j->output_dir = dir;
        int field_rc = dir ? predict_field(j, a) : cli_runtime_error("out of memory");
        field_free(j, field_rc != CLI_EXIT_OK);
        free(dir);
        if (field_rc == CLI_EXIT_INTERRUPTED)
            skipped++;
        else if (field_rc != CLI_EXIT_OK) {
            fprintf(stderr, "isl: error: field %lld (%s) failed\n", (long long)i + 1,
                    fields.paths[i]);
            failed++;
        } else
            done++;
    }
    cli_dist_queue_end(&d);
    fprintf(stderr, "isl: rank %d of %d: predicted %d field%s of %d, %d failed%s in %.1f s\n",
            d.rank, d.size, done, done == 1 ? "" : "s", fields.count, failed,
            skipped ? " (interrupted)" : "", cli_now() - start);
    cli_field_list_free(&fields);
    cli_dist_finalize(&d);
    return skipped ? CLI_EXIT_INTERRUPTED : failed ? CLI_EXIT_RUNTIME : CLI_EXIT_OK;
}

int cli_cmd_predict(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf(predict_help, isl_predict_options_get_threads(NULL),
               isl_predict_options_get_memory_limit(NULL) >> 20);
        return CLI_EXIT_OK;
    }
    predict_args a;
    int rc = parse_predict(argc, argv, &a);
    if (rc != CLI_EXIT_OK)
        return rc;
    predict_job job;
    memset(&job, 0, sizeof(job));
    if (a.input_list) {
        rc = predict_fields(&a, &job);
        job_free(&job, 0);
        return rc;
    }
    job.input = a.input;
    job.output_dir = a.output_dir;
    rc = predict_setup(&job, &a);
    if (rc == CLI_EXIT_OK)
        rc = predict_field(&job, &a);
    job_free(&job, rc != CLI_EXIT_OK);
    return rc;
}
