/* Training throughput of isl: one model (13 planes, 3 label heads + autoencoder) of a
 * given base depth, one trainer, one fixed random batch (inputs and targets uniform in
 * [0, 1], every label known); W warm-up steps (the first builds the network for the crop
 * size), then N timed isl_train_step calls. Prints one line of figures:
 *
 *   isl_train_bench base=.. crop=.. batch=.. label_weight=.. threads=.. steps=.. warmup=..
 *     sec_per_step=.. sec_per_step_median=.. sec_per_step_min=.. steps_per_s=.. out_px_per_s=.. in_px_per_s=..
 *     cpu_sec_per_step=.. peak_rss_mb=.. fwd_gflop=.. gflops=.. loss_first=.. loss_last=..
 *
 * sec_per_step is the mean over the timed steps, _median and _min their median and minimum
 * (on a shared machine the minimum is the least disturbed step).
 * out_px = batch * (crop - 242)^2 output pixels per step (per head), in_px = batch * crop^2
 * input pixel positions (each with 13 planes). fwd_gflop is 2 x the multiply-accumulates of
 * one training forward over the batch (the network's real work, heads included, no channel
 * padding); gflops = 3 x fwd_gflop per second (forward + backward-data + backward-weights),
 * an estimate. loss_first is the total loss of the first (warm-up) step, computed before
 * any update: the same figure as bench_train_torch.py's for the same model and batch.
 *
 *   bench_train [--base 100] [--crop 250] [--batch 4] [--steps 5] [--warmup 2]
 *               [--threads 0] [--label-weight 0.5] [--seed 1] [--version]
 *               [--freeze-bn 0|1]         1: stored batch-norm statistics (the folds' recipe)
 *               [--dropout P]             dropout of the heads' inputs (0: none)
 *               [--stochastic-depth P]    stochastic depth of the deepest module (0: none)
 *               [--keep-activations 0|1]  1: keep the forward pass's BNAct outputs for the
 *                                         backward pass (isl_train_options_set_keep_activations)
 *               [--model IN.h5]           train this model instead of a random one
 *               [--save-model OUT.h5]     write the initial model (for bench_train_torch.py)
 *               [--save-batch PREFIX]     write PREFIX.inputs.f32 / PREFIX.targets.f32 (raw
 *                                         float32, [B, 13, S, S] / [B, 3, S-242, S-242])
 */
#include "isl.h"
#include "bench_util.h"

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NUM_Z 13
#define NUM_LABELS 3

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Uniform floats in [0, 1] from a fixed 64-bit LCG (same batch on every run). */
static void fill_uniform(float *p, size_t n, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) {
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = (float)((*s >> 40) * (1.0 / 16777215.0));
    }
}

static int write_raw(const char *prefix, const char *suffix, const float *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s.%s", prefix, suffix);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "bench_train: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

static void usage(void)
{
    fputs("usage: bench_train [--base 100] [--crop 250] [--batch 4] [--steps 5] [--warmup 2]\n"
          "                   [--threads 0] [--label-weight 0.5] [--seed 1] [--model IN.h5]\n"
          "                   [--save-model OUT.h5] [--save-batch PREFIX] [--freeze-bn 0|1]\n"
          "                   [--dropout P] [--stochastic-depth P] [--keep-activations 0|1]\n"
          "                   [--version]\n",
          stderr);
}

int main(int argc, char **argv)
{
    int base = 100, crop = 250, batch = 4, steps = 5, warmup = 2, threads = 0, freeze_bn = 0;
    int keep_acts = 0;
    double dropout = 0, depth = 0;
    double label_weight = 0.5;
    uint64_t seed = 1;
    const char *model_path = NULL, *save_model = NULL, *save_batch = NULL;
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) {
            usage();
            return 0;
        }
        if (!strcmp(k, "--version")) {
            const dnnl_version_t *dv = dnnl_version();
            printf("isl %s, oneDNN %d.%d.%d (%s, cpu runtime %s), OpenMP max threads %d\n",
                   isl_version_string(), dv->major, dv->minor, dv->patch, dv->hash,
                   dv->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other", omp_get_max_threads());
            return 0;
        }
        if (!v) {
            fprintf(stderr, "bench_train: %s needs a value\n", k);
            usage();
            return 2;
        }
        if (!strcmp(k, "--base")) base = atoi(v);
        else if (!strcmp(k, "--crop")) crop = atoi(v);
        else if (!strcmp(k, "--batch")) batch = atoi(v);
        else if (!strcmp(k, "--steps")) steps = atoi(v);
        else if (!strcmp(k, "--warmup")) warmup = atoi(v);
        else if (!strcmp(k, "--threads")) threads = atoi(v);
        else if (!strcmp(k, "--label-weight")) label_weight = atof(v);
        else if (!strcmp(k, "--freeze-bn")) freeze_bn = atoi(v);
        else if (!strcmp(k, "--dropout")) dropout = atof(v);
        else if (!strcmp(k, "--stochastic-depth")) depth = atof(v);
        else if (!strcmp(k, "--keep-activations")) keep_acts = atoi(v);
        else if (!strcmp(k, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--model")) model_path = v;
        else if (!strcmp(k, "--save-model")) save_model = v;
        else if (!strcmp(k, "--save-batch")) save_batch = v;
        else {
            fprintf(stderr, "bench_train: unknown option %s\n", k);
            usage();
            return 2;
        }
    }
    if (crop < ISL_TILE_MIN || (crop - ISL_TILE_MIN) % ISL_TILE_STEP || batch < 1 || steps < 1 || warmup < 1 || threads < 0) {
        fprintf(stderr, "bench_train: need crop = 250 + 16m, batch >= 1, steps >= 1, warmup >= 1\n");
        return 2;
    }

    static const char *names[NUM_LABELS] = {"dapi_confocal", "map2_confocal", "nfh_confocal"};
    isl_model *m;
    if (model_path) {
        if (isl_model_load(model_path, &m) != ISL_OK) {
            fprintf(stderr, "bench_train: %s\n", isl_last_error());
            return 1;
        }
        base = isl_model_base_depth(m);
        if (isl_model_num_z(m) != NUM_Z || isl_model_num_heads(m) != NUM_LABELS + 1) {
            fprintf(stderr, "bench_train: %s: need %d planes and %d label heads + autoencoder\n",
                    model_path, NUM_Z, NUM_LABELS);
            return 1;
        }
    } else {
        isl_model_config c;
        isl_model_config_init(&c);
        c.base_depth = base;
        c.num_z = NUM_Z;
        c.num_heads = NUM_LABELS;
        c.head_names = names;
        c.seed = seed;
        if (isl_model_create(&c, &m) != ISL_OK) {
            fprintf(stderr, "bench_train: %s\n", isl_last_error());
            return 1;
        }
    }
    if (save_model && isl_model_save(m, save_model) != ISL_OK) {
        fprintf(stderr, "bench_train: %s\n", isl_last_error());
        return 1;
    }

    int out = crop - ISL_TILE_CONTEXT;
    size_t n_in = (size_t)batch * NUM_Z * crop * crop;
    size_t n_tg = (size_t)batch * NUM_LABELS * out * out;
    float *inputs = malloc(sizeof(float) * n_in), *targets = malloc(sizeof(float) * n_tg);
    if (!inputs || !targets) {
        fprintf(stderr, "bench_train: out of memory\n");
        return 1;
    }
    uint64_t s = 12345 + seed;
    fill_uniform(inputs, n_in, &s);
    fill_uniform(targets, n_tg, &s);
    if (save_batch && (write_raw(save_batch, "inputs.f32", inputs, n_in) ||
                       write_raw(save_batch, "targets.f32", targets, n_tg)))
        return 1;

    isl_train_options *o;
    isl_trainer *t;
    if (isl_train_options_create(&o) != ISL_OK || isl_train_options_set_threads(o, threads) != ISL_OK ||
        isl_train_options_set_label_weight(o, label_weight) != ISL_OK ||
        isl_train_options_set_freeze_bn(o, freeze_bn) != ISL_OK ||
        isl_train_options_set_dropout(o, dropout, 0) != ISL_OK ||
        isl_train_options_set_stochastic_depth(o, depth) != ISL_OK ||
        isl_train_options_set_keep_activations(o, keep_acts) != ISL_OK ||
        isl_trainer_create(m, o, &t) != ISL_OK) {
        fprintf(stderr, "bench_train: %s\n", isl_last_error());
        return 1;
    }
    int nl = isl_trainer_num_losses(t);
    float *losses = calloc((size_t)nl, sizeof(float));
    isl_train_batch b = {batch, crop, crop, inputs, targets, NULL};

    /* Real work of one training forward over the batch (heads that train). */
    int heads[NUM_LABELS + 1] = {0, 1, 2, 3}; /* the labels, then the autoencoder */
    double fwd_flop = 2.0 * batch *
                      isl_model_macs(m, crop, crop,
                                     label_weight < 1 ? NUM_LABELS + 1 : NUM_LABELS, heads);

    double loss_first = 0, warm_wall = wall_now();
    for (int i = 0; i < warmup; i++) {
        double w0 = wall_now();
        if (isl_train_step(t, &b, losses) != ISL_OK) {
            fprintf(stderr, "bench_train: warm-up step %d: %s\n", i, isl_last_error());
            return 1;
        }
        if (i == 0)
            loss_first = losses[nl - 1];
        fprintf(stderr, "bench_train: warm-up step %d: %.3f s, loss %.6f\n", i, wall_now() - w0,
                losses[nl - 1]);
    }
    warm_wall = wall_now() - warm_wall;

    double *per = malloc(sizeof(double) * steps);
    double w0 = wall_now(), c0 = cpu_now();
    for (int i = 0; i < steps; i++) {
        double t0 = wall_now();
        if (isl_train_step(t, &b, losses) != ISL_OK) {
            fprintf(stderr, "bench_train: step %d: %s\n", i, isl_last_error());
            return 1;
        }
        per[i] = wall_now() - t0;
    }
    double wall = wall_now() - w0, cpu = cpu_now() - c0;
    qsort(per, steps, sizeof(double), cmp_double);
    double median = steps % 2 ? per[steps / 2] : 0.5 * (per[steps / 2 - 1] + per[steps / 2]);
    double sps = wall / steps;

    int team = threads ? threads : omp_get_max_threads();
    const dnnl_version_t *dv = dnnl_version();
    printf("isl_train_bench base=%d crop=%d batch=%d label_weight=%g freeze_bn=%d dropout=%g stochastic_depth=%g keep_activations=%d threads=%d steps=%d warmup=%d "
           "sec_per_step=%.4f sec_per_step_median=%.4f sec_per_step_min=%.4f steps_per_s=%.4f out_px_per_s=%.0f "
           "in_px_per_s=%.0f cpu_sec_per_step=%.4f peak_rss_mb=%ld fwd_gflop=%.2f gflops=%.1f "
           "warmup_seconds=%.2f loss_first=%.6f loss_last=%.6f isl=%s onednn=%d.%d.%d\n",
           base, crop, batch, label_weight, freeze_bn, dropout, depth, keep_acts, team, steps, warmup, sps, median, per[0], 1.0 / sps,
           (double)batch * out * out / sps, (double)batch * crop * crop / sps, cpu / steps,
           peak_rss_mb(), fwd_flop / 1e9, 3 * fwd_flop / sps / 1e9, warm_wall, loss_first,
           losses[nl - 1], isl_version_string(), dv->major, dv->minor, dv->patch);
    free(per);
    free(losses);
    free(inputs);
    free(targets);
    isl_trainer_free(t);
    isl_train_options_free(o);
    isl_model_free(m);
    return 0;
}
