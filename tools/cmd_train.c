/* isl train: trains a model on a dataset file with checkpoints, validation and a log. */
#include "train.h"

#include "dist.h"
#include "rng.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The %g and %d fields are the library's defaults (isl_train_options_get_*). */
static const char train_help[] =
    "Usage: isl train --dataset DATA.h5 --model INIT.h5 --out MODEL.h5 --steps N [options]\n"
    "\n"
    "Trains a model on random crops of a dataset (see 'isl dataset build') with Adam, as the\n"
    "paper does, and writes the trained model to OUT.\n"
    "Checkpoints are written atomically every K steps and on Ctrl-C; --resume continues a\n"
    "run exactly where it stopped (give the same options). A CSV log records every step's\n"
    "losses and each validation's Pearson r per label.\n"
    "\n"
    "Model (one of):\n"
    "  --model PATH             initial model (e.g. from 'isl model init')\n"
    "  --init-from PATH         the same, for transfer learning with --add-head\n"
    "  --resume CKPT            continue from a checkpoint of an earlier run\n"
    "  --add-head LIST          new label heads (comma-separated) added to the initial model\n"
    "  --freeze-trunk           train only the heads (the trunk stays as it was)\n"
    "\n"
    "Data:\n"
    "  --dataset PATH           dataset file (required)\n"
    "  --crop N                 crop side, 250 + 16m (default 378: outputs 136 x 136)\n"
    "  --batch N                crops per step (default 4; the paper: 16 crops of 250)\n"
    "  --validation REGION      hold out [WELL:]X0,Y0,WIDTH,HEIGHT of a well's targets\n"
    "                           (repeatable; WELL is a name or index, default 0)\n"
    "  --validation-margin M    also keep the targets within M pixels of each region out of\n"
    "                           training (default 121: no trained output pixel's receptive\n"
    "                           field reaches a held-out pixel)\n"
    "  --validate-every K       validate every K steps (default 1000; 0: only at the end)\n"
    "  --no-augment             no random flips and 90-degree rotations\n"
    "  --contrast-jitter A      scale each crop's input contrast by a random factor in\n"
    "                           [e^-A, e^A] (default 0: off; give it again on --resume)\n"
    "  --gamma-jitter G         raise each crop's inputs to a random power in [e^-G, e^G]\n"
    "                           (default 0: off; give the photometric options on --resume)\n"
    "  --blur S                 blur each crop's input planes by a Gaussian of random sigma\n"
    "                           in [0, S] pixels (default 0: off)\n"
    "  --noise S                add noise of a random standard deviation in [0, S] to each\n"
    "                           crop's inputs (default 0: off; normalized inputs have 0.125)\n"
    "  --scale-jitter A         zoom each crop, inputs and targets, by a random factor in\n"
    "                           [e^-A, e^A] (default 0: off; A <= 0.5; give it on --resume)\n"
    "  --unlabelled-share F     draw a share F of the crops anywhere in the wells, labelled\n"
    "                           or not, for the autoencoder (semi-supervised; needs a\n"
    "                           --label-weight below 1; default 0; give it again on --resume)\n"
    "\n"
    "Optimization:\n"
    "  --steps N                total number of steps (required)\n"
    "  --lr RATE                Adam learning rate (default %g)\n"
    "  --lr-drop STEP:RATE      use RATE from STEP on (the paper: 1e-5 in its second week)\n"
    "  --label-weight W         total = W label + (1 - W) autoencoder (default %g)\n"
    "  --bn-decay D             decay of the batch-norm moving averages (default %g)\n"
    "  --weight-decay L         AdamW's decoupled weight decay of the convolution weights:\n"
    "                           each step shrinks them by 1 - rate x L first (default 0;\n"
    "                           give it again on --resume)\n"
    "  --dropout P              drop each value of every head's input with probability P\n"
    "                           while training, the rest scaled by 1 / (1 - P) (default 0;\n"
    "                           give it again on --resume)\n"
    "  --spatial-dropout P      the same, whole channels of a crop at a time\n"
    "  --stochastic-depth P     each step, skip each trunk module's branch with probability\n"
    "                           P d / 32 (d: its depth, 1..32), the rest scaled to match\n"
    "                           (default 0; give it again on --resume)\n"
    "  --bn-batches K           re-estimate the batch-norm statistics over K batches before\n"
    "                           writing OUT (default 0: keep the moving averages); with\n"
    "                           --freeze-bn, estimate them before the first step instead\n"
    "  --freeze-bn              normalize with the model's stored batch-norm statistics, as\n"
    "                           prediction does, and keep them: from an initial model with\n"
    "                           --bn-batches, or as a last phase from a trained model\n"
    "  --average-from STEP      with --freeze-bn: average the weights of the steps from STEP\n"
    "                           on; validations, --best and OUT use the average\n"
    "  --seed S                 seed of the crops (default %llu)\n"
    "  --pixel-size UM          training pixel size to record in the model, in micrometres\n"
    "                           (default: the dataset wells' when they agree, else the\n"
    "                           initial model's)\n"
    "  --threads N              threads (0: all cores; default %d)\n"
    "  --keep-activations       keep the forward pass's batch-norm outputs for the backward\n"
    "                           pass instead of recomputing them: the same results, about\n"
    "                           5%% less time a step for about 55%% more memory\n"
    "\n"
    "Outputs:\n"
    "  -o, --out PATH           trained model (required)\n"
    "  --checkpoint PATH        checkpoint file (default OUT with .checkpoint.h5)\n"
    "  --checkpoint-every K     steps between checkpoints (default 500)\n"
    "  --log PATH               CSV log (default OUT with .log.csv), appended on resume\n"
    "  --best PATH              the best validated model so far (mean r over labels;\n"
    "                           default OUT with .best.h5; written when validating)\n"
    "  -h, --help               show this help\n"
    "\n"
    "Cluster: 'mpirun -np N isl train ... --batch B' trains one model on N processes, each\n"
    "drawing its B crops of a global batch of N x B (the crops one process with --batch\n"
    "N x B would draw), with gradients and batch-norm statistics summed over all of them;\n"
    "rank 0 writes the log, checkpoints and OUT (docs/scaling.md).\n"
    "  --comm-timeout S         end the job when a rank gets no answer from the others for\n"
    "                           S seconds (default 1800: rank 0 may be validating; also\n"
    "                           bounds the start: MPI_Init and the first barrier)\n"
    "  --bucket-mb MB           sum the gradients in buckets of about MB megabytes, each\n"
    "                           started (MPI_Iallreduce) as soon as the backward pass has\n"
    "                           produced it (default 4; 0: one buffer after the pass)\n";

enum { OPT_DATASET, OPT_MODEL, OPT_INIT_FROM, OPT_RESUME, OPT_ADD_HEAD, OPT_FREEZE, OPT_CROP,
       OPT_BATCH, OPT_VALIDATION, OPT_VALIDATE_EVERY, OPT_NO_AUGMENT, OPT_STEPS, OPT_LR,
       OPT_LR_DROP, OPT_LABEL_WEIGHT, OPT_BN_DECAY, OPT_WEIGHT_DECAY, OPT_DROPOUT,
       OPT_SPATIAL_DROPOUT, OPT_STOCHASTIC_DEPTH, OPT_BN_BATCHES,
       OPT_FREEZE_BN, OPT_AVERAGE_FROM, OPT_SEED, OPT_KEEP_ACTIVATIONS,
       OPT_THREADS, OPT_CONTRAST, OPT_GAMMA, OPT_BLUR, OPT_NOISE, OPT_SCALE, OPT_VALIDATION_MARGIN,
       OPT_UNLABELLED,
       OPT_OUT, OPT_CHECKPOINT, OPT_CHECKPOINT_EVERY, OPT_LOG, OPT_BEST, OPT_COMM_TIMEOUT,
       OPT_PIXEL, OPT_BUCKET_MB };

static const cli_option train_options[] = {
    {"dataset", 0, 1, OPT_DATASET},         {"model", 'm', 1, OPT_MODEL},
    {"init-from", 0, 1, OPT_INIT_FROM},     {"resume", 0, 1, OPT_RESUME},
    {"add-head", 0, 1, OPT_ADD_HEAD},       {"freeze-trunk", 0, 0, OPT_FREEZE},
    {"crop", 0, 1, OPT_CROP},               {"batch", 0, 1, OPT_BATCH},
    {"validation", 0, 1, OPT_VALIDATION},   {"validate-every", 0, 1, OPT_VALIDATE_EVERY},
    {"no-augment", 0, 0, OPT_NO_AUGMENT},   {"steps", 0, 1, OPT_STEPS},
    {"lr", 0, 1, OPT_LR},                   {"lr-drop", 0, 1, OPT_LR_DROP},
    {"label-weight", 0, 1, OPT_LABEL_WEIGHT}, {"bn-decay", 0, 1, OPT_BN_DECAY},
    {"weight-decay", 0, 1, OPT_WEIGHT_DECAY}, {"dropout", 0, 1, OPT_DROPOUT},
    {"spatial-dropout", 0, 1, OPT_SPATIAL_DROPOUT}, {"stochastic-depth", 0, 1, OPT_STOCHASTIC_DEPTH},
    {"bn-batches", 0, 1, OPT_BN_BATCHES},   {"freeze-bn", 0, 0, OPT_FREEZE_BN},
    {"average-from", 0, 1, OPT_AVERAGE_FROM}, {"seed", 0, 1, OPT_SEED},
    {"threads", 0, 1, OPT_THREADS},         {"out", 'o', 1, OPT_OUT},
    {"checkpoint", 0, 1, OPT_CHECKPOINT},   {"checkpoint-every", 0, 1, OPT_CHECKPOINT_EVERY},
    {"log", 0, 1, OPT_LOG},                 {"best", 0, 1, OPT_BEST},
    {"contrast-jitter", 0, 1, OPT_CONTRAST}, {"validation-margin", 0, 1, OPT_VALIDATION_MARGIN},
    {"unlabelled-share", 0, 1, OPT_UNLABELLED}, {"comm-timeout", 0, 1, OPT_COMM_TIMEOUT},
    {"pixel-size", 0, 1, OPT_PIXEL},       {"keep-activations", 0, 0, OPT_KEEP_ACTIVATIONS},
    {"gamma-jitter", 0, 1, OPT_GAMMA},      {"blur", 0, 1, OPT_BLUR},
    {"noise", 0, 1, OPT_NOISE},             {"scale-jitter", 0, 1, OPT_SCALE},
    {"bucket-mb", 0, 1, OPT_BUCKET_MB},
    {NULL, 0, 0, 0},
};

#define MAX_REGIONS 16

typedef struct train_args {
    const char *dataset, *model, *resume, *add_heads, *out, *checkpoint, *log, *best;
    const char *validation[MAX_REGIONS];
    int num_validation, freeze_trunk, freeze_bn, augment, keep_activations;
    long long crop, batch, validate_every, validation_margin, steps, drop_step, bn_batches, average_from, threads,
        checkpoint_every;
    double lr, drop_rate, label_weight, contrast, gamma, blur, noise, scale, unlabelled, comm_timeout,
        bucket_mb;
    double pixel_size; /* --pixel-size; 0: not given */
    int dropout_given; /* --dropout or --spatial-dropout, which exclude each other */
    uint64_t seed;
    /* The trainer's options: the CLI sets only those given, so the library's defaults
     * apply to the rest; lr, label_weight, threads and seed are read back from it. */
    isl_train_options *options;
} train_args;

static int parse_drop(const char *text, train_args *a)
{
    const char *colon = strchr(text, ':');
    if (!colon)
        return cli_usage_error("--lr-drop: expected STEP:RATE, not '%s'", text);
    char step[32];
    size_t n = (size_t)(colon - text);
    if (n == 0 || n >= sizeof(step))
        return cli_usage_error("--lr-drop: expected STEP:RATE, not '%s'", text);
    memcpy(step, text, n);
    step[n] = '\0';
    if (cli_parse_int("--lr-drop", step, 1, INT64_MAX, &a->drop_step) != 0 ||
        cli_parse_double("--lr-drop", colon + 1, 0, 1, &a->drop_rate) != 0)
        return CLI_EXIT_USAGE;
    return CLI_EXIT_OK;
}

static isl_status set_dropout(isl_train_options *o, double rate)
{
    return isl_train_options_set_dropout(o, rate, 0);
}

static isl_status set_spatial_dropout(isl_train_options *o, double rate)
{
    return isl_train_options_set_dropout(o, rate, 1);
}

/* parse_trainer_option's answer for an option that is not the trainer's. */
enum { NOT_A_TRAINER_OPTION = -1 };

/* An option of the trainer: handed to its setter, whose checks make bad values usage
 * errors. Any other option: NOT_A_TRAINER_OPTION. */
static int parse_trainer_option(isl_train_options *o, int id, const char *v)
{
    static const struct {
        int id;
        const char *name;
        double max;
        isl_status (*set)(isl_train_options *, double);
    } reals[] = {
        {OPT_LR, "--lr", 1, isl_train_options_set_learning_rate},
        {OPT_LABEL_WEIGHT, "--label-weight", 1, isl_train_options_set_label_weight},
        {OPT_BN_DECAY, "--bn-decay", 1, isl_train_options_set_bn_decay},
        {OPT_WEIGHT_DECAY, "--weight-decay", 1e6, isl_train_options_set_weight_decay},
        {OPT_DROPOUT, "--dropout", 1, set_dropout},
        {OPT_SPATIAL_DROPOUT, "--spatial-dropout", 1, set_spatial_dropout},
        {OPT_STOCHASTIC_DEPTH, "--stochastic-depth", 1, isl_train_options_set_stochastic_depth},
    };
    long long threads = 0;
    uint64_t seed = 0;
    double x = 0;
    isl_status s = ISL_OK;
    int known = 1;
    if (id == OPT_THREADS) {
        if (cli_parse_int("--threads", v, 0, 4096, &threads) != 0)
            return CLI_EXIT_USAGE;
        s = isl_train_options_set_threads(o, (int)threads);
    } else if (id == OPT_SEED) {
        if (cli_parse_u64("--seed", v, &seed) != 0)
            return CLI_EXIT_USAGE;
        s = isl_train_options_set_seed(o, seed);
    } else {
        known = 0;
    }
    for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++)
        if (reals[i].id == id) {
            if (cli_parse_double(reals[i].name, v, 0, reals[i].max, &x) != 0)
                return CLI_EXIT_USAGE;
            s = reals[i].set(o, x);
            known = 1;
        }
    if (!known)
        return NOT_A_TRAINER_OPTION;
    if (s != ISL_OK)
        return s == ISL_ERROR_INVALID_ARGUMENT ? cli_usage_error("%s", isl_last_error())
                                               : cli_library_error(s);
    return CLI_EXIT_OK;
}

static int parse_option(train_args *a, int id, const char *v)
{
    switch (id) {
    case OPT_DATASET: a->dataset = v; return 0;
    case OPT_MODEL:
    case OPT_INIT_FROM:
        if (a->model)
            return cli_usage_error("give the initial model once (--model or --init-from)");
        a->model = v;
        return 0;
    case OPT_RESUME: a->resume = v; return 0;
    case OPT_ADD_HEAD: a->add_heads = v; return 0;
    case OPT_FREEZE: a->freeze_trunk = 1; return 0;
    case OPT_FREEZE_BN: a->freeze_bn = 1; return 0;
    case OPT_KEEP_ACTIVATIONS: a->keep_activations = 1; return 0;
    case OPT_NO_AUGMENT: a->augment = 0; return 0;
    case OPT_OUT: a->out = v; return 0;
    case OPT_CHECKPOINT: a->checkpoint = v; return 0;
    case OPT_LOG: a->log = v; return 0;
    case OPT_BEST: a->best = v; return 0;
    case OPT_VALIDATION:
        if (a->num_validation == MAX_REGIONS)
            return cli_usage_error("--validation: at most %d regions", MAX_REGIONS);
        a->validation[a->num_validation++] = v;
        return 0;
    case OPT_LR_DROP: return parse_drop(v, a);
    }
    if (id == OPT_DROPOUT || id == OPT_SPATIAL_DROPOUT) {
        if (a->dropout_given++)
            return cli_usage_error("give one of --dropout and --spatial-dropout, once");
    }
    int rc = parse_trainer_option(a->options, id, v);
    if (rc != NOT_A_TRAINER_OPTION)
        return rc;
    struct { int id; const char *name; long long min, max, *out; } ints[] = {
        {OPT_CROP, "--crop", ISL_TILE_MIN, 4090, &a->crop},
        {OPT_BATCH, "--batch", 1, 4096, &a->batch},
        {OPT_VALIDATE_EVERY, "--validate-every", 0, INT64_MAX, &a->validate_every},
        {OPT_VALIDATION_MARGIN, "--validation-margin", 0, 100000, &a->validation_margin},
        {OPT_STEPS, "--steps", 1, INT64_MAX, &a->steps},
        {OPT_BN_BATCHES, "--bn-batches", 0, 100000, &a->bn_batches},
        {OPT_AVERAGE_FROM, "--average-from", 1, INT64_MAX, &a->average_from},
        {OPT_CHECKPOINT_EVERY, "--checkpoint-every", 1, INT64_MAX, &a->checkpoint_every},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if (ints[i].id == id)
            return cli_parse_int(ints[i].name, v, ints[i].min, ints[i].max, ints[i].out)
                       ? CLI_EXIT_USAGE : 0;
    struct { int id; const char *name; double min, max, *out; } reals[] = {
        {OPT_CONTRAST, "--contrast-jitter", 0, 1, &a->contrast},
        {OPT_GAMMA, "--gamma-jitter", 0, 1, &a->gamma},
        {OPT_BLUR, "--blur", 0, 8, &a->blur},
        {OPT_NOISE, "--noise", 0, 0.5, &a->noise},
        {OPT_SCALE, "--scale-jitter", 0, 0.5, &a->scale},
        {OPT_UNLABELLED, "--unlabelled-share", 0, 1, &a->unlabelled},
        {OPT_COMM_TIMEOUT, "--comm-timeout", 1, 1e7, &a->comm_timeout},
        {OPT_PIXEL, "--pixel-size", 1e-6, 1e4, &a->pixel_size},
        {OPT_BUCKET_MB, "--bucket-mb", 0, 1024, &a->bucket_mb},
    };
    for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++)
        if (reals[i].id == id)
            return cli_parse_double(reals[i].name, v, reals[i].min, reals[i].max, reals[i].out)
                       ? CLI_EXIT_USAGE : 0;
    return cli_usage_error("internal: unhandled option");
}

static int parse_train(int argc, char **argv, train_args *a)
{
    memset(a, 0, sizeof(*a));
    a->crop = 378;
    a->batch = 4;
    a->validate_every = 1000;
    a->validation_margin = ISL_TILE_CONTEXT / 2; /* no trained receptive field reaches it */
    a->augment = 1;
    a->bn_batches = 0; /* re-estimated statistics generalized worse here (docs/training.md) */
    a->checkpoint_every = 500;
    a->comm_timeout = CLI_DIST_DEFAULT_TIMEOUT;
    a->bucket_mb = 4;
    isl_status s = isl_train_options_create(&a->options);
    if (s != ISL_OK)
        return cli_library_error(s);
    cli_args p;
    cli_args_init(&p, argc, argv, "train");
    int kind, id;
    const char *v;
    while ((kind = cli_args_next(&p, train_options, &id, &v)) != CLI_ARG_END) {
        if (kind == CLI_ARG_ERROR)
            return CLI_EXIT_USAGE;
        if (kind == CLI_ARG_POSITIONAL)
            return cli_usage_error("unexpected argument '%s' (see 'isl train --help')", v);
        int rc = parse_option(a, id, v);
        if (rc != 0)
            return rc;
    }
    a->lr = isl_train_options_get_learning_rate(a->options);
    a->label_weight = isl_train_options_get_label_weight(a->options);
    a->threads = isl_train_options_get_threads(a->options);
    a->seed = isl_train_options_get_seed(a->options);
    if (!a->dataset)
        return cli_usage_error("missing --dataset (see 'isl train --help')");
    if (!a->out)
        return cli_usage_error("missing --out (see 'isl train --help')");
    if (!a->steps)
        return cli_usage_error("missing --steps (see 'isl train --help')");
    if (!a->model == !a->resume)
        return cli_usage_error(a->model ? "--resume continues a run: do not also give --model"
                                        : "missing --model (or --resume; see 'isl train --help')");
    if (a->add_heads && !a->model)
        return cli_usage_error("--add-head needs the model to add to (--init-from)");
    if (a->average_from && !a->freeze_bn)
        return cli_usage_error("--average-from needs --freeze-bn: averaged weights need the "
                               "statistics they are averaged under");
    if (a->unlabelled > 0 && a->label_weight >= 1)
        return cli_usage_error("--unlabelled-share trains the autoencoder on unlabelled crops: "
                               "give a --label-weight below 1");
    if ((a->crop - ISL_TILE_MIN) % ISL_TILE_STEP != 0)
        return cli_usage_error("--crop: %lld is not 250 + 16m (250, 266, ..., 378, ...)", a->crop);
    return CLI_EXIT_OK;
}

/* OUT without a trailing ".h5", plus suffix. NULL if out of memory. */
static char *derived_path(const char *out, const char *suffix)
{
    size_t n = strlen(out);
    if (n > 3 && !strcmp(out + n - 3, ".h5"))
        n -= 3;
    char *p = malloc(n + strlen(suffix) + 1);
    if (p) {
        memcpy(p, out, n);
        strcpy(p + n, suffix);
    }
    return p;
}

/* [WELL:]X0,Y0,WIDTH,HEIGHT inside the well. */
static int parse_region(const isl_dataset *ds, const char *text, isl_region *r)
{
    const char *coords = text;
    r->well = 0;
    const char *colon = strrchr(text, ':');
    if (colon) {
        char well[256];
        size_t n = (size_t)(colon - text);
        if (n == 0 || n >= sizeof(well))
            return cli_usage_error("--validation: bad well in '%s'", text);
        memcpy(well, text, n);
        well[n] = '\0';
        r->well = isl_dataset_well_index(ds, well);
        char *end;
        long index = strtol(well, &end, 10);
        if (r->well < 0 && *end == '\0' && index >= 0 && index < isl_dataset_num_wells(ds))
            r->well = (int)index;
        if (r->well < 0)
            return cli_usage_error("--validation: the dataset has no well '%s'", well);
        coords = colon + 1;
    }
    int x0, y0, w, h, used = 0;
    if (sscanf(coords, "%d,%d,%d,%d%n", &x0, &y0, &w, &h, &used) != 4 || coords[used] != '\0')
        return cli_usage_error("--validation: expected [WELL:]X0,Y0,WIDTH,HEIGHT, not '%s'", text);
    int height, width;
    if (isl_dataset_well_size(ds, r->well, &height, &width) != ISL_OK)
        return cli_library_error(ISL_ERROR_INVALID_ARGUMENT);
    if (x0 < 0 || y0 < 0 || w < 1 || h < 1 || x0 > width - w || y0 > height - h)
        return cli_usage_error("--validation: %s does not lie inside well '%s' (%d x %d)", text,
                               isl_dataset_well_name(ds, r->well), width, height);
    *r = (isl_region){r->well, x0, y0, w, h};
    return CLI_EXIT_OK;
}

/* A batch being filled (by a prefetch thread) or used. */
typedef struct batch_buf {
    float *inputs, *targets;
    uint8_t *masks;
    uint64_t seed;
    isl_status status;
    char error[512];
} batch_buf;

typedef struct run_state {
    train_args a;
    char *checkpoint, *log_path, *best_path;
    double best_score; /* mean r of the best validation so far (from the log on resume) */
    isl_dataset *ds;
    isl_model *init;  /* initial model, or the checkpoint's snapshot */
    isl_trainer *trainer;
    isl_sampler *sampler;
    isl_region regions[MAX_REGIONS];
    int num_regions;
    batch_buf buf[2];
    int num_z, num_labels, num_losses;
    cli_train_log log;
    int log_open;
    cli_dist *dist; /* the ranks of an MPI job (one process: rank 0 of 1) */
    int ranks_diverged; /* every rank found it and ends alike: no MPI_Abort needed */
    double step_seconds; /* spent in isl_train_step, for the summary */
} run_state;

/* Rank 0 writes every file and the log; the other ranks only train. */
static int is_root(const run_state *r) { return r->dist->rank == 0; }

/* The crops of a step depend only on --seed and the step, so a resumed run (same seed)
 * draws what an uninterrupted one would have: the library's generator, one draw from a
 * state made of both (the draw adds one GAMMA: seed * GAMMA + step + a constant). */
static uint64_t batch_seed(uint64_t seed, uint64_t step)
{
    uint64_t state = (seed - 1) * ISL_SPLITMIX64_GAMMA + step + 0x632be59bd9b4e019ULL;
    return isl_splitmix64(&state);
}

/* The seed of attempt `attempt` at step `step`'s batch: attempt 0 is batch_seed's; the
 * others follow a batch that held no known target pixel (no step is taken on it). The
 * same for a resumed run, so resuming still repeats the straight run. */
static uint64_t attempt_seed(uint64_t seed, uint64_t step, int attempt)
{
    const uint64_t first = batch_seed(seed, step);
    return attempt == 0 ? first : isl_splitmix64_draw(first, (uint64_t)attempt);
}

/* Batches in a row with nothing known before a run gives up rather than loop forever. */
#define MAX_EMPTY_BATCHES 100

/* This rank's crops of the global batch of a seed: crops rank * B .. rank * B + B - 1, so
 * that N ranks draw what one process with batch N x B draws. */
typedef struct draw_job {
    const isl_sampler *sampler;
    batch_buf *buf;
    int batch, first;
} draw_job;

static void *draw_thread(void *arg)
{
    draw_job *j = arg;
    j->buf->status = isl_sampler_draw_part(j->sampler, j->buf->seed, j->first, j->batch,
                                           j->buf->inputs, j->buf->targets, j->buf->masks);
    if (j->buf->status != ISL_OK)
        snprintf(j->buf->error, sizeof(j->buf->error), "%s", isl_last_error());
    return NULL;
}

static int alloc_batches(run_state *r)
{
    size_t B = (size_t)r->a.batch, crop = (size_t)r->a.crop, out = crop - ISL_TILE_CONTEXT;
    for (int i = 0; i < 2; i++) {
        batch_buf *b = &r->buf[i];
        b->inputs = malloc(B * (size_t)r->num_z * crop * crop * sizeof(float));
        b->targets = malloc(B * (size_t)(r->num_labels ? r->num_labels : 1) * out * out *
                            sizeof(float));
        b->masks = malloc(B * (size_t)(r->num_labels ? r->num_labels : 1) * out * out);
        if (!b->inputs || !b->targets || !b->masks)
            return cli_runtime_error("out of memory for batches of %lld crops of %lld",
                                     r->a.batch, r->a.crop);
    }
    return CLI_EXIT_OK;
}

static isl_train_batch as_batch(const run_state *r, const batch_buf *b)
{
    isl_train_batch t = {(int)r->a.batch, (int)r->a.crop, (int)r->a.crop, b->inputs,
                         r->num_labels ? b->targets : NULL, r->num_labels ? b->masks : NULL};
    return t;
}

/* Every rank must hold the same state (they take the same steps on the same sums); one
 * that does not (a hardware fault, an MPI whose sums differ between ranks, a rank
 * started with other options) ends the run before rank 0 writes anything. */
static int check_ranks_agree(run_state *r)
{
    if (r->dist->size == 1)
        return CLI_EXIT_OK;
    unsigned char digest[16];
    int differing;
    isl_status s = isl_trainer_digest(r->trainer, digest);
    if (s != ISL_OK)
        return cli_library_error(s);
    if (cli_dist_compare(r->dist, digest, (int)sizeof(digest), &differing) != 0)
        return cli_runtime_error("MPI failed comparing the ranks' states");
    if (differing < 0)
        return CLI_EXIT_OK;
    r->ranks_diverged = 1;
    if (!is_root(r)) /* every rank reaches this verdict; rank 0 tells it */
        return CLI_EXIT_RUNTIME;
    return cli_runtime_error("after step %lld the state of rank %d (weights, optimizer) "
                             "differs from rank 0's: the ranks diverged (a hardware fault, "
                             "ranks started with different options, or an MPI whose sums "
                             "differ between ranks); nothing written: %s holds the last "
                             "state they agreed on, if any",
                             (long long)isl_trainer_step_count(r->trainer), differing,
                             r->checkpoint);
}

static int save_checkpoint(run_state *r)
{
    int rc = check_ranks_agree(r);
    if (rc != CLI_EXIT_OK || !is_root(r))
        return rc;
    isl_status s = isl_trainer_save(r->trainer, r->checkpoint);
    return s == ISL_OK ? CLI_EXIT_OK : cli_library_error(s);
}

/* The model to validate and write: the weight average once there is one. */
static isl_status current_model(const run_state *r, isl_model **out)
{
    return isl_trainer_average_count(r->trainer) > 0 ? isl_trainer_average_model(r->trainer, out)
                                                     : isl_trainer_model(r->trainer, out);
}

static int validate(run_state *r, int64_t step)
{
    if (r->num_regions == 0 || !is_root(r))
        return CLI_EXIT_OK;
    isl_model *snapshot = NULL;
    cli_validation v = {0};
    isl_status s = current_model(r, &snapshot);
    if (s == ISL_OK) {
        size_t heads = (size_t)isl_model_num_heads(snapshot);
        v.r = malloc(sizeof(double) * heads);
        v.painted = malloc(sizeof(double) * heads);
        v.pixels = malloc(sizeof(int64_t) * heads);
        s = v.r && v.painted && v.pixels ? cli_validate(r->ds, snapshot, r->regions,
                                                        r->num_regions, (int)r->a.threads, &v)
                                         : ISL_ERROR_OUT_OF_MEMORY;
    }
    int rc = s == ISL_OK ? cli_train_log_validation(&r->log, step, &v) : cli_library_error(s);
    double score = s == ISL_OK ? cli_mean_r(v.r, v.pixels, r->num_labels) : -INFINITY;
    if (rc == CLI_EXIT_OK && score > r->best_score) {
        if ((s = isl_model_save(snapshot, r->best_path)) != ISL_OK)
            rc = cli_library_error(s);
        else {
            cli_train_log_note(&r->log, "best validation so far (mean r %.4f): saved %s", score,
                               r->best_path);
            r->best_score = score;
        }
    }
    free(v.r);
    free(v.painted);
    free(v.pixels);
    isl_model_free(snapshot);
    return rc;
}

/* Batch-norm population statistics from --bn-batches batches of their own seeds. */
static int estimate_statistics(run_state *r, const char *why)
{
    cli_train_log_note(&r->log, "%s batch-norm statistics over %lld batches", why,
                       r->a.bn_batches);
    for (long long k = 0; k < r->a.bn_batches; k++) {
        batch_buf *b = &r->buf[0];
        isl_status s = isl_sampler_draw_part(r->sampler, batch_seed(~r->a.seed, (uint64_t)k),
                                             r->dist->rank * (int)r->a.batch, (int)r->a.batch,
                                             b->inputs, b->targets, b->masks);
        isl_train_batch t = as_batch(r, b);
        if (s == ISL_OK)
            s = isl_trainer_estimate_bn(r->trainer, &t, (int)k);
        if (s != ISL_OK)
            return cli_library_error(s);
        if (cli_interrupted()) {
            if (isl_trainer_step_count(r->trainer) == 0)
                return cli_runtime_error("interrupted before the first step; nothing written");
            return cli_runtime_error("interrupted; %s not written (the checkpoint %s is "
                                     "complete)", r->a.out, r->checkpoint);
        }
    }
    return CLI_EXIT_OK;
}

/* Batch-norm statistics re-estimated (unless they were frozen), then OUT. */
static int finish(run_state *r)
{
    if (!r->a.freeze_trunk && !r->a.freeze_bn && r->a.bn_batches > 0) {
        int rc = estimate_statistics(r, "re-estimating");
        if (rc != CLI_EXIT_OK)
            return rc;
    }
    int rc = check_ranks_agree(r);
    if (rc == CLI_EXIT_OK)
        rc = validate(r, isl_trainer_step_count(r->trainer));
    if (rc != CLI_EXIT_OK || !is_root(r))
        return rc;
    isl_model *trained = NULL;
    isl_status s = current_model(r, &trained);
    if (s == ISL_OK)
        s = isl_model_save(trained, r->a.out);
    isl_model_free(trained);
    if (s != ISL_OK)
        return cli_library_error(s);
    cli_train_log_note(&r->log, "wrote %s (log %s, checkpoint %s)", r->a.out, r->log_path,
                       r->checkpoint);
    printf("wrote %s\n", r->a.out);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_runtime_error("cannot write to stdout");
}

static int train_loop(run_state *r)
{
    int64_t step = isl_trainer_step_count(r->trainer);
    float *losses = malloc(sizeof(float) * (size_t)r->num_losses);
    if (!losses)
        return cli_runtime_error("out of memory");
    int rc = CLI_EXIT_OK, cur = 0;
    const int first = r->dist->rank * (int)r->a.batch;
    pthread_t thread;
    draw_job jobs[2];
    int pending = 0, attempt = 0;
    long long redrawn = 0;
    if (step < r->a.steps) {
        r->buf[cur].seed = batch_seed(r->a.seed, (uint64_t)step + 1);
        jobs[cur] = (draw_job){r->sampler, &r->buf[cur], (int)r->a.batch, first};
        draw_thread(&jobs[cur]);
    }
    while (step < r->a.steps && rc == CLI_EXIT_OK) {
        batch_buf *b = &r->buf[cur];
        if (b->status != ISL_OK) {
            rc = cli_runtime_error("drawing crops: %s", b->error);
            break;
        }
        /* Draw the next batch while this one trains (already drawn if this is a retry). */
        if (attempt == 0 && step + 1 < r->a.steps) {
            batch_buf *next = &r->buf[1 - cur];
            next->seed = batch_seed(r->a.seed, (uint64_t)step + 2);
            jobs[1 - cur] = (draw_job){r->sampler, next, (int)r->a.batch, first};
            if (pthread_create(&thread, NULL, draw_thread, &jobs[1 - cur]) != 0)
                draw_thread(&jobs[1 - cur]);
            else
                pending = 1;
        }
        isl_train_batch t = as_batch(r, b);
        double started = cli_now();
        isl_status s = isl_train_step(r->trainer, &t, losses);
        r->step_seconds += cli_now() - started;
        if (pending) {
            pthread_join(thread, NULL);
            pending = 0;
        }
        if (s != ISL_OK) {
            rc = cli_library_error(s);
            break;
        }
        if (isl_trainer_step_count(r->trainer) == step) {
            /* No known target pixel in the whole batch, so no step: e.g. a label known in
             * few pixels, zoomed by --scale-jitter. This step's batch is drawn again. */
            redrawn++;
            if (++attempt == MAX_EMPTY_BATCHES) {
                rc = cli_runtime_error("%d batches in a row for step %lld held no known "
                                       "target pixel (labels known in too few pixels, or "
                                       "all held out near them?); the last checkpoint is %s",
                                       MAX_EMPTY_BATCHES, (long long)step + 1, r->checkpoint);
                break;
            }
            b->seed = attempt_seed(r->a.seed, (uint64_t)step + 1, attempt);
            jobs[cur] = (draw_job){r->sampler, b, (int)r->a.batch, first};
            draw_thread(&jobs[cur]);
            continue;
        }
        attempt = 0;
        step = isl_trainer_step_count(r->trainer);
        double rate = r->a.drop_step && step >= r->a.drop_step ? r->a.drop_rate : r->a.lr;
        if ((rc = cli_train_log_step(&r->log, step, rate, losses)) != CLI_EXIT_OK)
            break;
        if (!isfinite(losses[r->num_losses - 1])) {
            rc = cli_runtime_error("the loss diverged at step %lld (try a lower --lr); the "
                                   "last checkpoint is %s", (long long)step, r->checkpoint);
            break;
        }
        int stop = cli_interrupted(); /* the ranks stop together, at the same step */
        if (cli_dist_max(r->dist, &stop) != 0) {
            rc = cli_runtime_error("MPI failed agreeing on an interruption");
            break;
        }
        if (stop) {
            if ((rc = save_checkpoint(r)) == CLI_EXIT_OK) {
                cli_train_log_note(&r->log, "interrupted at step %lld; checkpoint %s written; "
                                   "continue with --resume %s", (long long)step, r->checkpoint,
                                   r->checkpoint);
                rc = CLI_EXIT_INTERRUPTED;
            }
            break;
        }
        if (step % r->a.checkpoint_every == 0 || step == r->a.steps)
            rc = save_checkpoint(r);
        if (rc == CLI_EXIT_OK && r->a.validate_every && step % r->a.validate_every == 0 &&
            step < r->a.steps)
            rc = validate(r, step);
        cur = 1 - cur;
    }
    free(losses);
    if (redrawn)
        cli_train_log_note(&r->log, "%lld batches held no known target pixel and were drawn "
                           "again (no step is taken on them)", redrawn);
    if (rc == CLI_EXIT_OK)
        rc = finish(r);
    return rc;
}

/* The region grown by margin pixels on every side, clipped to its well: what training
 * must not see so that no trained output's receptive field reaches the region. */
static isl_region widen_region(const isl_dataset *ds, const isl_region *r, int margin)
{
    int height = 0, width = 0;
    isl_dataset_well_size(ds, r->well, &height, &width); /* the region was checked */
    int x0 = r->x0 > margin ? r->x0 - margin : 0;
    int y0 = r->y0 > margin ? r->y0 - margin : 0;
    int x1 = width - (r->x0 + r->width) > margin ? r->x0 + r->width + margin : width;
    int y1 = height - (r->y0 + r->height) > margin ? r->y0 + r->height + margin : height;
    return (isl_region){r->well, x0, y0, x1 - x0, y1 - y0};
}

/* The training pixel size the trained model records: --pixel-size, else the one every
 * well of known size shares (within 0.1%), else the initial model's. */
static isl_status record_pixel_size(isl_model *m, const isl_dataset *ds, double given)
{
    double um = given, first = 0;
    int agree = 1;
    for (int i = 0; um == 0 && i < isl_dataset_num_wells(ds); i++) {
        double w = isl_dataset_well_pixel_size(ds, i);
        if (w <= 0)
            continue;
        if (first == 0)
            first = w;
        else if (fabs(w - first) > 1e-3 * first)
            agree = 0;
    }
    if (um == 0 && first > 0 && !agree)
        fprintf(stderr, "isl: note: the dataset's wells have different pixel sizes; the model "
                        "keeps %g um (0: unknown); give --pixel-size to record one\n",
                isl_model_pixel_size(m));
    if (um == 0 && agree)
        um = first;
    if (um == 0)
        return ISL_OK;
    double old = isl_model_pixel_size(m);
    if (old > 0 && fabs(old - um) > 1e-3 * um)
        fprintf(stderr, "isl: note: the initial model was trained at %g um per pixel; the "
                        "trained model records %g um\n", old, um);
    return isl_model_set_pixel_size(m, um);
}

/* Loads the data and the model, creates the trainer and the sampler. */
static int setup(run_state *r)
{
    train_args *a = &r->a;
    isl_status s = isl_dataset_load(a->dataset, &r->ds);
    if (s != ISL_OK)
        return cli_library_error(s);
    for (int i = 0; i < a->num_validation; i++) {
        int rc = parse_region(r->ds, a->validation[i], &r->regions[r->num_regions++]);
        if (rc != CLI_EXIT_OK)
            return rc;
    }
    isl_train_options *o = a->options;
    s = ISL_OK;
    if (a->freeze_trunk)
        s = isl_train_options_set_freeze_trunk(o, 1);
    if (s == ISL_OK && a->freeze_bn)
        s = isl_train_options_set_freeze_bn(o, 1);
    if (s == ISL_OK && a->keep_activations)
        s = isl_train_options_set_keep_activations(o, 1);
    if (s == ISL_OK && a->average_from)
        s = isl_train_options_set_average_from(o, a->average_from);
    if (s == ISL_OK && a->drop_step)
        s = isl_train_options_set_rate_drop(o, a->drop_step, a->drop_rate);
    if (s == ISL_OK && a->resume) {
        s = isl_trainer_load(a->resume, o, &r->trainer);
        if (s == ISL_OK)
            s = isl_trainer_model(r->trainer, &r->init);
    } else if (s == ISL_OK) {
        s = isl_model_load(a->model, &r->init);
        if (s == ISL_OK && a->add_heads) {
            cli_list names;
            int rc = cli_split_list("--add-head", a->add_heads, &names);
            if (rc != 0)
                return rc;
            isl_model *grown = NULL;
            s = isl_model_add_heads(r->init, names.count, (const char *const *)names.items,
                                    a->seed, &grown);
            cli_list_free(&names);
            if (s == ISL_OK) {
                isl_model_free(r->init);
                r->init = grown;
            }
        }
        if (s == ISL_OK)
            s = record_pixel_size(r->init, r->ds, a->pixel_size);
        if (s == ISL_OK)
            s = isl_trainer_create(r->init, o, &r->trainer);
    }
    if (s != ISL_OK)
        return s == ISL_ERROR_INVALID_ARGUMENT ? cli_usage_error("%s", isl_last_error())
                                               : cli_library_error(s);
    if (isl_dataset_num_z(r->ds) != isl_model_num_z(r->init))
        return cli_runtime_error("the dataset has %d planes per stack but the model takes %d",
                                 isl_dataset_num_z(r->ds), isl_model_num_z(r->init));
    r->num_z = isl_model_num_z(r->init);
    r->num_losses = isl_trainer_num_losses(r->trainer);
    r->num_labels = r->num_losses - 3;
    int known = 0;
    for (int h = 0; h < r->num_labels; h++) {
        const char *name = isl_model_head_name(r->init, h);
        const int have = isl_dataset_label_index(r->ds, name) >= 0;
        if (!have)
            fprintf(stderr, "isl: note: the dataset has no '%s' targets; that head will not "
                            "train\n", name);
        known += have;
    }
    if (!known && a->label_weight > 0)
        return cli_runtime_error("the dataset has none of the model's labels; train the "
                                 "autoencoder alone with --label-weight 0");
    /* The sampler's settings only where given: its defaults are the library's. */
    if ((s = isl_sampler_create(r->ds, r->init, (int)a->crop, &r->sampler)) != ISL_OK ||
        (!a->augment && (s = isl_sampler_set_augment(r->sampler, 0)) != ISL_OK) ||
        (a->contrast > 0 && (s = isl_sampler_set_contrast_jitter(r->sampler, a->contrast)) != ISL_OK) ||
        (a->gamma > 0 && (s = isl_sampler_set_gamma_jitter(r->sampler, a->gamma)) != ISL_OK) ||
        (a->blur > 0 && (s = isl_sampler_set_blur(r->sampler, a->blur)) != ISL_OK) ||
        (a->noise > 0 && (s = isl_sampler_set_noise(r->sampler, a->noise)) != ISL_OK) ||
        (a->scale > 0 && (s = isl_sampler_set_scale_jitter(r->sampler, a->scale)) != ISL_OK) ||
        (a->unlabelled > 0 &&
         (s = isl_sampler_set_unlabelled_share(r->sampler, a->unlabelled)) != ISL_OK))
        return cli_library_error(s);
    for (int i = 0; i < r->num_regions; i++) {
        isl_region held = widen_region(r->ds, &r->regions[i], (int)a->validation_margin);
        if ((s = isl_sampler_hold_out(r->sampler, &held)) != ISL_OK)
            return cli_library_error(s);
    }
    return alloc_batches(r);
}

static void run_free(run_state *r)
{
    if (r->log_open)
        cli_train_log_close(&r->log);
    for (int i = 0; i < 2; i++) {
        free(r->buf[i].inputs);
        free(r->buf[i].targets);
        free(r->buf[i].masks);
    }
    isl_sampler_free(r->sampler);
    isl_trainer_free(r->trainer);
    isl_model_free(r->init);
    isl_dataset_free(r->ds);
    free(r->checkpoint);
    free(r->log_path);
    free(r->best_path);
    isl_train_options_free(r->a.options);
}

static int train(run_state *r)
{
    r->checkpoint = r->a.checkpoint ? strdup(r->a.checkpoint)
                                    : derived_path(r->a.out, ".checkpoint.h5");
    r->log_path = r->a.log ? strdup(r->a.log) : derived_path(r->a.out, ".log.csv");
    r->best_path = r->a.best ? strdup(r->a.best) : derived_path(r->a.out, ".best.h5");
    if (!r->checkpoint || !r->log_path || !r->best_path)
        return cli_runtime_error("out of memory");
    if (!r->a.resume && cli_file_size(r->checkpoint) >= 0)
        return cli_usage_error("the checkpoint %s exists: continue that run with --resume %s, "
                               "or remove it", r->checkpoint, r->checkpoint);
    if (cli_interrupt_install() != 0)
        return cli_runtime_error("cannot install the SIGINT handler");
    int rc = setup(r);
    if (rc != CLI_EXIT_OK)
        return rc;
    const int ranks = r->dist->size;
    isl_status s = ranks > 1 ? isl_trainer_set_allreduce(r->trainer, cli_dist_allreduce, r->dist)
                             : ISL_OK;
    /* This rank's crops are crops rank * B .. of the global batch (draw_part below), and
     * its dropout masks must be theirs. */
    if (s == ISL_OK)
        s = isl_trainer_set_first_crop(r->trainer, (int64_t)r->dist->rank * r->a.batch);
    if (s == ISL_OK && ranks > 1 && r->a.bucket_mb > 0)
        s = isl_trainer_set_gradient_buckets(r->trainer, (size_t)(r->a.bucket_mb * 1e6),
                                             cli_dist_allreduce_start, cli_dist_allreduce_wait);
    if (s != ISL_OK)
        return cli_library_error(s);
    int64_t first = isl_trainer_step_count(r->trainer);
    if (!is_root(r))
        r->log.quiet = 1;
    else if ((rc = cli_train_log_open(&r->log, r->log_path, r->init, first, r->a.steps)) !=
             CLI_EXIT_OK)
        return rc;
    else
        r->log_open = 1;
    r->best_score = r->a.resume && is_root(r) ? cli_train_log_best(r->log_path, r->num_labels)
                                              : -INFINITY;
    /* Frozen statistics are estimated once, before the first step of a fresh run. */
    if (r->a.freeze_bn && !r->a.resume && r->a.bn_batches > 0 &&
        (rc = estimate_statistics(r, "estimating the frozen")) != CLI_EXIT_OK)
        return rc;
    cli_train_log_note(&r->log, "training %d label head%s on %d well%s: steps %lld..%lld, "
                       "batch %lld x %lld^2, log %s",
                       r->num_labels, r->num_labels == 1 ? "" : "s", isl_dataset_num_wells(r->ds),
                       isl_dataset_num_wells(r->ds) == 1 ? "" : "s", (long long)first + 1,
                       r->a.steps, r->a.batch, r->a.crop, r->log_path);
    if (ranks > 1)
        cli_train_log_note(&r->log, "data-parallel on %d MPI ranks: a global batch of %d x %lld "
                           "crops", ranks, ranks, r->a.batch);
    rc = train_loop(r);
    int64_t steps = isl_trainer_step_count(r->trainer) - first;
    if (ranks > 1 && steps > 0)
        fprintf(stderr, "isl: rank %d of %d: %lld steps, %.3f s/step, of which waiting for "
                "and in collectives %.3f s/step (%.2f MB, %lld calls per step)\n",
                r->dist->rank, ranks, (long long)steps, r->step_seconds / (double)steps,
                r->dist->comm_seconds / (double)steps,
                (double)r->dist->comm_bytes / (double)steps / 1e6,
                (long long)(r->dist->comm_calls / steps));
    return rc;
}

int cli_cmd_train(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf(train_help, isl_train_options_get_learning_rate(NULL),
               isl_train_options_get_label_weight(NULL), isl_train_options_get_bn_decay(NULL),
               (unsigned long long)isl_train_options_get_seed(NULL),
               isl_train_options_get_threads(NULL));
        return CLI_EXIT_OK;
    }
    run_state r;
    memset(&r, 0, sizeof(r));
    int rc = parse_train(argc, argv, &r.a);
    if (rc != CLI_EXIT_OK) {
        isl_train_options_free(r.a.options);
        return rc;
    }
    cli_dist dist;
    if (cli_dist_init(&dist, r.a.comm_timeout) != 0)
        return CLI_EXIT_RUNTIME;
    r.dist = &dist;
    rc = train(&r);
    run_free(&r); /* frees what r points to; r.ranks_diverged stays */
    /* A rank that fails ends the job: the others would wait for it. Interruptions and
     * diverged states are found by all ranks together, which end normally. */
    if (dist.size > 1 && rc != CLI_EXIT_OK && rc != CLI_EXIT_INTERRUPTED && !r.ranks_diverged)
        cli_dist_abort(&dist, rc, "training failed (the message above)");
    cli_dist_finalize(&dist);
    return rc;
}
