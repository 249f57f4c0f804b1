/* Transfer learning (the paper's condition E, Figure S5): isl_model_add_heads (a copy
 * with new label heads, the rest unchanged) and training with a frozen trunk
 * (isl_train_options_set_freeze_trunk): the trunk and every batch-norm statistic stay
 * bit for bit, the heads learn from the features prediction computes, head gradients
 * match central finite differences of the double-precision reference with stored
 * statistics (tests/ref_train.h), and checkpoints resume exactly. */
#include "model_io.h"
#include "error.h"
#include "isl.h"
#include "loss.h"
#include "model.h"
#include "ref_train.h"
#include "test_util.h"
#include "train_net.h"

#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BASE 8
#define NZ 2
#define OLD 2                /* label heads of the pretrained model */
#define LABELS (OLD + 1)     /* after adding one */
#define HEADS (LABELS + 1)
#define NEW OLD              /* index of the new head */
#define AE LABELS            /* index of the autoencoder after adding */
#define BATCH 2
#define SIDE 250
#define OUT 8

static const char *old_names[OLD] = {"dapi_confocal", "nfh_confocal"};
static const char *new_names[1] = {"tuj1_widefield"};

/* ------------------------------------------------------------------------------------ */
/* Batches and models                                                                   */
/* ------------------------------------------------------------------------------------ */

typedef struct batch {
    float inputs[BATCH * NZ * SIDE * SIDE];
    float targets[BATCH * LABELS * OUT * OUT];
    uint8_t masks[BATCH * LABELS * OUT * OUT];
    float ae_targets[BATCH * NZ * OUT * OUT]; /* the center of the inputs */
} batch;

/* The new label known everywhere, label 0 on half of image 0, label 1 nowhere. */
static batch *random_batch(uint64_t seed)
{
    batch *b = calloc(1, sizeof(*b));
    test_fill_batch(b->inputs, b->targets, b->ae_targets, BATCH, NZ, LABELS, SIDE, OUT, seed);
    for (int n = 0; n < BATCH; n++)
        for (int l = 0; l < LABELS; l++)
            for (int y = 0; y < OUT; y++)
                for (int x = 0; x < OUT; x++)
                    b->masks[(((size_t)n * LABELS + l) * OUT + y) * OUT + x] =
                        l == NEW || (l == 0 && n == 0 && x >= y);
    return b;
}

static isl_train_batch api_batch(const batch *b)
{
    isl_train_batch tb = {BATCH, SIDE, SIDE, b->inputs, b->targets, b->masks};
    return tb;
}

/* A "pretrained" model: random weights and batch-norm gamma/beta, confident label heads,
 * and population statistics re-estimated on a batch (so that a frozen trunk sees
 * normalized activations, as after real training). */
static isl_model *pretrained(uint64_t seed)
{
    isl_params p;
    ck_assert_int_eq(isl_params_alloc(&p, BASE, NZ, OLD, old_names, 1), 0);
    isl_params_init_random(&p, seed);
    test_randomize_bn(&p, seed + 1);
    test_sharpen_heads(&p, 50.0f); /* the OLD label heads */
    isl_model *raw = NULL, *m = NULL;
    ck_assert_int_eq(isl_model_from_params(&p, &raw), ISL_OK);
    isl_trainer *t = NULL;
    ck_assert_int_eq(isl_trainer_create(raw, NULL, &t), ISL_OK);
    batch *b = random_batch(seed + 2);
    isl_train_batch tb = api_batch(b);
    tb.targets = NULL;
    tb.masks = NULL;
    ck_assert_msg(isl_trainer_estimate_bn(t, &tb, 0) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_trainer_model(t, &m), ISL_OK);
    isl_trainer_free(t);
    isl_model_free(raw);
    free(b);
    return m;
}

static isl_model *with_new_head(const isl_model *m, uint64_t seed)
{
    isl_model *q = NULL;
    ck_assert_msg(isl_model_add_heads(m, 1, new_names, seed, &q) == ISL_OK, "%s",
                  isl_last_error());
    return q;
}

/* ------------------------------------------------------------------------------------ */
/* Parameter arrays                                                                     */
/* ------------------------------------------------------------------------------------ */

static int has(const char *path, const char *part) { return strstr(path, part) != NULL; }

static int is_statistic(const char *path) { return has(path, "/mean") || has(path, "/var"); }

static int in_head(const char *path, const char *name)
{
    char prefix[96];
    snprintf(prefix, sizeof(prefix), "/heads/%s/", name);
    return !strncmp(path, prefix, strlen(prefix));
}

/* ------------------------------------------------------------------------------------ */
/* isl_model_add_heads                                                                  */
/* ------------------------------------------------------------------------------------ */

/* isl_predict_tile logits of every head of m on one crop; out[h] has channels x 8 x 8. */
static void predict_all(const isl_model *m, const float *crop, float **out)
{
    for (int h = 0; h < isl_model_num_heads(m); h++)
        out[h] = malloc(sizeof(float) * (size_t)isl_model_head_channels(m, h) * OUT * OUT);
    ck_assert_msg(isl_predict_tile(m, NULL, crop, SIDE, SIDE, out) == ISL_OK, "%s",
                  isl_last_error());
}

static void free_all(float **out, int n)
{
    for (int h = 0; h < n; h++)
        free(out[h]);
}

START_TEST(add_heads_copies_and_appends)
{
    isl_model *m = pretrained(1);
    isl_model *q = with_new_head(m, 9);
    const isl_arch *arch = &m->params.arch;

    /* Heads: the old labels, the new one, the autoencoder. */
    ck_assert_int_eq(isl_model_num_heads(q), HEADS);
    ck_assert_str_eq(isl_model_head_name(q, 0), old_names[0]);
    ck_assert_str_eq(isl_model_head_name(q, 1), old_names[1]);
    ck_assert_str_eq(isl_model_head_name(q, NEW), new_names[0]);
    ck_assert_str_eq(isl_model_head_name(q, AE), "autoencoder");
    ck_assert_int_eq(isl_model_head_index(q, new_names[0]), NEW);
    ck_assert_int_eq(isl_model_head_channels(q, NEW), 256);
    ck_assert_int_eq(isl_model_head_channels(q, AE), NZ * 256);
    ck_assert_int_eq(isl_model_parameter_count(q) - isl_model_parameter_count(m),
                     isl_arch_head_parameters(arch, 256));
    ck_assert_int_eq(isl_model_base_depth(q), BASE);
    ck_assert_int_eq(isl_model_num_z(q), NZ);
    ck_assert_str_eq(isl_model_input_normalization(q), isl_model_input_normalization(m));

    /* Every array of the original is copied bitwise; the new head is initialised as
     * isl_model_create initialises heads, its statistics those of head 0. */
    test_arr_list *lm = test_arrays_of(&m->params), *lq = test_arrays_of(&q->params);
    ck_assert_int_eq(lq->count, lm->count + 6);
    for (int i = 0; i < lm->count; i++)
        ck_assert_msg(test_same_array(&lm->a[i], test_find_array(lq, lm->a[i].path)), "%s",
                      lm->a[i].path);
    const isl_head_params *nh = &q->params.heads[NEW], *h0 = &m->params.heads[0];
    const int tc = arch->trunk_ch;
    ck_assert(memcmp(nh->bn.mean, h0->bn.mean, sizeof(float) * tc) == 0);
    ck_assert(memcmp(nh->bn.var, h0->bn.var, sizeof(float) * tc) == 0);
    for (int c = 0; c < tc; c++)
        ck_assert(nh->bn.gamma[c] == 1.0f && nh->bn.beta[c] == 0.0f);
    for (int c = 0; c < 256; c++)
        ck_assert(nh->bias[c] == 0.0f);
    const size_t nw = (size_t)256 * 2 * tc;
    double sq = 0;
    for (size_t i = 0; i < nw; i++)
        sq += (double)nh->weight[i] * nh->weight[i];
    const double sd = sqrt(sq / nw), want = 0.1 * sqrt(1.0 / (2.0 * tc));
    printf("new head: weight sd %.5f (He-normal / 10: %.5f)\n", sd, want);
    ck_assert(fabs(sd / want - 1) < 0.1);

    /* Deterministic in the seed; heads added together draw in order from it. */
    isl_model *q2 = with_new_head(m, 9), *q3 = with_new_head(m, 10), *two = NULL;
    ck_assert(test_models_equal(q, q2));
    ck_assert(memcmp(q3->params.heads[NEW].weight, nh->weight, sizeof(float) * nw) != 0);
    const char *pair[2] = {"a", "b"};
    ck_assert_int_eq(isl_model_add_heads(m, 2, pair, 9, &two), ISL_OK);
    ck_assert_int_eq(isl_model_num_heads(two), HEADS + 1);
    ck_assert_str_eq(isl_model_head_name(two, OLD), "a");
    ck_assert_str_eq(isl_model_head_name(two, OLD + 1), "b");
    ck_assert_str_eq(isl_model_head_name(two, OLD + 2), "autoencoder");
    ck_assert(memcmp(two->params.heads[OLD].weight, nh->weight, sizeof(float) * nw) == 0);
    ck_assert(memcmp(two->params.heads[OLD + 1].weight, nh->weight, sizeof(float) * nw) != 0);

    /* The old heads predict exactly as before. */
    batch *b = random_batch(3);
    float *pm[HEADS], *pq[HEADS];
    predict_all(m, b->inputs, pm);
    predict_all(q, b->inputs, pq);
    const int from[3] = {0, 1, OLD}, to[3] = {0, 1, AE};
    for (int k = 0; k < 3; k++)
        ck_assert_msg(memcmp(pm[from[k]], pq[to[k]],
                             sizeof(float) * (size_t)isl_model_head_channels(m, from[k]) * OUT *
                                 OUT) == 0,
                      "head %s predicts differently", isl_model_head_name(m, from[k]));

    /* Save and load. */
    char *path = test_temp_path("transfer_model");
    ck_assert_msg(isl_model_save(q, path) == ISL_OK, "%s", isl_last_error());
    isl_model *r = NULL;
    ck_assert_msg(isl_model_load(path, &r) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_model_num_heads(r), HEADS);
    for (int h = 0; h < HEADS; h++)
        ck_assert_str_eq(isl_model_head_name(r, h), isl_model_head_name(q, h));
    ck_assert(test_models_equal(q, r));
    float *pr[HEADS];
    predict_all(r, b->inputs, pr);
    ck_assert(memcmp(pr[NEW], pq[NEW], sizeof(float) * 256 * OUT * OUT) == 0);
    remove(path);
    free(path);

    free_all(pm, OLD + 1);
    free_all(pq, HEADS);
    free_all(pr, HEADS);
    free(lm);
    free(lq);
    free(b);
    isl_model_free(r);
    isl_model_free(two);
    isl_model_free(q2);
    isl_model_free(q3);
    isl_model_free(q);
    isl_model_free(m);
}
END_TEST

START_TEST(add_heads_errors)
{
    isl_model *m = pretrained(5), *out = (isl_model *)1;
    const char *dup_old[1] = {"nfh_confocal"}, *dup_new[2] = {"x", "x"};
    const char *ae[1] = {"autoencoder"}, *slash[1] = {"a/b"}, *empty[1] = {""};
    const char *null_name[1] = {NULL};
    struct {
        const isl_model *m;
        int count;
        const char *const *names;
    } bad[] = {{m, 1, dup_old}, {m, 2, dup_new}, {m, 1, ae},        {m, 1, slash},
               {m, 1, empty},   {m, 1, null_name}, {m, 0, new_names}, {m, -1, new_names},
               {m, 1, NULL},    {NULL, 1, new_names}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        out = (isl_model *)1;
        ck_assert_int_eq(isl_model_add_heads(bad[i].m, bad[i].count, bad[i].names, 0, &out),
                         ISL_ERROR_INVALID_ARGUMENT);
        ck_assert(out == NULL);
        ck_assert(isl_last_error()[0] != 0);
    }
    ck_assert_int_eq(isl_model_add_heads(m, 1, new_names, 0, NULL), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_model_add_heads(m, 1, dup_old, 0, &out), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert(strstr(isl_last_error(), "nfh_confocal"));

    /* A model without an autoencoder: the new head is the last one. */
    isl_params p;
    ck_assert_int_eq(isl_params_alloc(&p, BASE, NZ, OLD, old_names, 0), 0);
    isl_params_init_random(&p, 6);
    isl_model *plain = NULL, *q = NULL;
    ck_assert_int_eq(isl_model_from_params(&p, &plain), ISL_OK);
    ck_assert_int_eq(isl_model_add_heads(plain, 1, new_names, 0, &q), ISL_OK);
    ck_assert_int_eq(isl_model_num_heads(q), OLD + 1);
    ck_assert_str_eq(isl_model_head_name(q, OLD), new_names[0]);
    isl_model_free(q);
    isl_model_free(plain);
    isl_model_free(m);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* The engine with a frozen trunk: logits and gradients                                 */
/* ------------------------------------------------------------------------------------ */

/* A copy of m's parameters (the engine writes into them; finite differences perturb). */
static void copy_params(isl_params *p, const isl_model *m)
{
    const isl_params *src = &m->params;
    const char *names[LABELS];
    for (int h = 0; h < LABELS; h++)
        names[h] = src->heads[h].name;
    ck_assert_int_eq(isl_params_alloc(p, BASE, NZ, LABELS, names, 1), 0);
    isl_params_copy_trunk(p, src);
    for (int h = 0; h < HEADS; h++)
        isl_params_copy_head(&p->heads[h], &src->heads[h], src->arch.trunk_ch);
}

/* The reference loss (label weight 0.5) of the heads on a fixed trunk output. */
static double head_loss(const isl_params *p, const ref_t *trunk, const batch *b)
{
    ref_t logits[BATCH * HEADS];
    rt_heads(p, trunk, BATCH, 1, logits);
    double loss = rt_loss(logits, BATCH, LABELS, NZ, b->targets, b->masks, b->ae_targets, 0.5);
    rt_free(logits, BATCH * HEADS);
    return loss;
}

/* Central difference along a direction over the arrays whose path contains `part` (and
 * belongs to head `head`, or any head if NULL) against the gradient projected on it:
 * each value moves by step * u * sign(gradient), u uniform in [0.5, 1.5). */
static void check_direction(isl_params *p, const test_arr_list *pl, const test_arr_list *gl,
                            const char *head, const char *part, const ref_t *trunk,
                            const batch *b, uint64_t seed)
{
    float *saved[64];
    int idx[64], n = 0;
    size_t total = 0;
    double sq = 0;
    for (int i = 0; i < pl->count; i++) {
        const char *path = pl->a[i].path;
        if (!has(path, "/heads/") || !has(path, part) || is_statistic(path) ||
            (head && !in_head(path, head)))
            continue;
        idx[n++] = i;
        total += pl->a[i].count;
        for (size_t j = 0; j < pl->a[i].count; j++)
            sq += (double)pl->a[i].data[j] * pl->a[i].data[j];
    }
    ck_assert(n > 0 && n < 64);
    const double step = 1e-5 * fmax(sqrt(sq / total), 0.05) / sqrt(fmax(1.0, total / 100.0));
    double predicted = 0, loss[2];
    uint64_t s = seed;
    for (int k = 0; k < n; k++) {
        saved[k] = malloc(sizeof(float) * pl->a[idx[k]].count);
        memcpy(saved[k], pl->a[idx[k]].data, sizeof(float) * pl->a[idx[k]].count);
    }
    float **delta = malloc(sizeof(float *) * n);
    for (int k = 0; k < n; k++) {
        const test_arr *a = &pl->a[idx[k]], *g = &gl->a[idx[k]];
        delta[k] = malloc(sizeof(float) * a->count);
        for (size_t j = 0; j < a->count; j++) {
            double u = 0.5 + test_uniform(&s);
            delta[k][j] = (float)(step * (g->data[j] < 0 ? -u : u));
        }
    }
    for (int side = 0; side < 2; side++) {
        for (int k = 0; k < n; k++) {
            const test_arr *a = &pl->a[idx[k]], *g = &gl->a[idx[k]];
            for (size_t j = 0; j < a->count; j++) {
                a->data[j] = side == 0 ? saved[k][j] + delta[k][j] : saved[k][j] - delta[k][j];
                if (side == 1) /* the realized step enters the prediction exactly */
                    predicted += (double)g->data[j] *
                                 ((double)(saved[k][j] + delta[k][j]) - a->data[j]);
            }
        }
        loss[side] = head_loss(p, trunk, b);
    }
    for (int k = 0; k < n; k++) {
        memcpy(pl->a[idx[k]].data, saved[k], sizeof(float) * pl->a[idx[k]].count);
        free(saved[k]);
        free(delta[k]);
    }
    free(delta);
    const double fd = loss[0] - loss[1], err = fabs(fd - predicted) / fmax(fabs(fd), 1e-300);
    printf("  %-16s %-8s %7zu values: finite difference %+.6e, engine %+.6e, error %.1e\n",
           head ? head : "all heads", part, total, fd, predicted, err);
    ck_assert_msg(fabs(fd) > 1e-12, "%s %s: the check is vacuous", head, part);
    ck_assert_msg(err < 2e-3, "%s %s: gradient off by %.2e relative", head, part, err);
}

START_TEST(frozen_engine_logits_and_gradients)
{
    isl_model *m = pretrained(11);
    isl_model *q = with_new_head(m, 12);
    batch *b = random_batch(13);
    isl_params p, g;
    copy_params(&p, q);
    copy_params(&g, q);
    dnnl_engine_t eng;
    ck_assert_int_eq(dnnl_engine_create(&eng, dnnl_cpu, 0), dnnl_success);
    isl_train_net *net = NULL;
    ck_assert_msg(isl_train_net_create(&p, &g, eng, BATCH, SIDE, SIDE, 0, &net) == ISL_OK, "%s",
                  isl_last_error());

    isl_loss_batch lb = {BATCH, LABELS, NZ, SIDE, SIDE, OUT, OUT, b->inputs, b->targets, b->masks, 0};
    int64_t counts[LABELS];
    int active[HEADS];
    isl_loss_label_counts(&lb, counts);
    for (int l = 0; l < LABELS; l++)
        active[l] = counts[l] > 0;
    active[AE] = 1;
    ck_assert(active[0] && !active[1] && active[NEW]);
    memcpy(isl_train_net_input(net), b->inputs, sizeof(b->inputs));
    double t0 = test_now();
    ck_assert_msg(isl_train_net_forward(net, active, 0.5, ISL_NET_FROZEN_TRUNK) == ISL_OK, "%s", isl_last_error());

    /* The logits are the model's predictions (stored statistics), and the reference's. */
    const float *logits[HEADS];
    float *dlogits[HEADS], *copy[HEADS] = {0};
    for (int h = 0; h < HEADS; h++) {
        logits[h] = isl_train_net_logits(net, h);
        dlogits[h] = isl_train_net_dlogits(net, h);
        ck_assert((logits[h] != NULL) == (active[h] != 0));
        if (logits[h]) {
            size_t n = (size_t)BATCH * p.heads[h].out_ch * OUT * OUT;
            copy[h] = malloc(sizeof(float) * n);
            memcpy(copy[h], logits[h], sizeof(float) * n);
        }
    }
    ref_t in[BATCH], trunk[BATCH], ref_logits[BATCH * HEADS];
    test_ref_inputs(in, b->inputs, BATCH, NZ, SIDE, SIDE);
    rt_trunk(&p, in, BATCH, 1, trunk);
    rt_heads(&p, trunk, BATCH, 1, ref_logits);
    for (int n = 0; n < BATCH; n++) {
        float *pred[HEADS];
        predict_all(q, b->inputs + (size_t)n * NZ * SIDE * SIDE, pred);
        for (int h = 0; h < HEADS; h++) {
            if (!copy[h])
                continue;
            const size_t per = (size_t)p.heads[h].out_ch * OUT * OUT;
            double err_pred = 0, err_ref = 0, scale = 0;
            for (size_t i = 0; i < per; i++) {
                const double v = copy[h][n * per + i];
                scale = fmax(scale, fabs(ref_logits[n * HEADS + h].v[i]));
                err_ref = fmax(err_ref, fabs(v - ref_logits[n * HEADS + h].v[i]));
                err_pred = fmax(err_pred, fabs(v - pred[h][i]));
            }
            printf("image %d head %-14s max |logit| %.3f: vs prediction %.1e, vs reference "
                   "%.1e\n", n, p.heads[h].name, scale, err_pred, err_ref);
            ck_assert(scale > 0.05);
            ck_assert(err_pred < 1e-5 * scale && err_ref < 2e-5 * scale);
        }
        free_all(pred, HEADS);
    }
    double losses[LABELS + 3];
    ck_assert_int_eq(isl_loss_compute(&lb, logits, dlogits, counts, 0.5, losses), 0);
    const double rl = head_loss(&p, trunk, b);
    printf("loss: engine %.9f, reference %.9f\n", losses[LABELS + 2], rl);
    ck_assert(fabs(losses[LABELS + 2] - rl) < 1e-6);
    ck_assert_msg(isl_train_net_backward(net) == ISL_OK, "%s", isl_last_error());
    printf("frozen forward + backward: %.2f s\n", test_now() - t0);

    /* Nothing was written into the statistics (momentum 0.5 is ignored), the trunk's
     * gradients are zero, and so are those of the head without known pixels. */
    ck_assert(test_params_equal(&q->params, &p));
    test_arr_list *pl = test_arrays_of(&p), *gl = test_arrays_of(&g);
    for (int i = 0; i < gl->count; i++) {
        const test_arr *a = &gl->a[i];
        int zero = !has(a->path, "/heads/") || is_statistic(a->path) ||
                   in_head(a->path, old_names[1]);
        double sum = 0;
        for (size_t j = 0; j < a->count; j++)
            sum += fabs(a->data[j]);
        ck_assert_msg(zero ? sum == 0 : sum > 0, "%s: gradient sum %g", a->path, sum);
    }

    /* Gradients against central differences of the reference with stored statistics. */
    t0 = test_now();
    check_direction(&p, pl, gl, new_names[0], "/weight", trunk, b, 101);
    check_direction(&p, pl, gl, new_names[0], "/bias", trunk, b, 102);
    check_direction(&p, pl, gl, new_names[0], "/bn/", trunk, b, 103);
    check_direction(&p, pl, gl, old_names[0], "/", trunk, b, 104);
    check_direction(&p, pl, gl, "autoencoder", "/", trunk, b, 105);
    check_direction(&p, pl, gl, NULL, "/gamma", trunk, b, 106);
    check_direction(&p, pl, gl, NULL, "/beta", trunk, b, 107);
    printf("finite differences: %.1f s\n", test_now() - t0);

    free(pl);
    free(gl);
    for (int h = 0; h < HEADS; h++)
        free(copy[h]);
    rt_free(in, BATCH);
    rt_free(trunk, BATCH);
    rt_free(ref_logits, BATCH * HEADS);
    isl_train_net_free(net);
    dnnl_engine_destroy(eng);
    isl_params_free(&p);
    isl_params_free(&g);
    isl_model_free(q);
    isl_model_free(m);
    free(b);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* The public API: frozen training, statistics, checkpoints                             */
/* ------------------------------------------------------------------------------------ */

static isl_train_options *options(int freeze)
{
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, 1e-3), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_bn_decay(o, 0.9), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_seed(o, 77), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_freeze_trunk(o, freeze), ISL_OK);
    return o;
}

static isl_trainer *trainer(const isl_model *m, int freeze)
{
    return test_trainer_create(m, options(freeze));
}

static void step_ok(isl_trainer *t, const batch *b, float *losses)
{
    isl_train_batch tb = api_batch(b);
    ck_assert_msg(isl_train_step(t, &tb, losses) == ISL_OK, "%s", isl_last_error());
}

/* The total loss (label weight 0.5) of m's predictions on the batch, in double. */
static double predicted_loss(const isl_model *m, const batch *b)
{
    ref_t logits[BATCH * HEADS];
    for (int n = 0; n < BATCH; n++) {
        float *pred[HEADS];
        predict_all(m, b->inputs + (size_t)n * NZ * SIDE * SIDE, pred);
        for (int h = 0; h < HEADS; h++) {
            ref_t *l = &logits[n * HEADS + h];
            *l = ref_new(isl_model_head_channels(m, h), OUT, OUT);
            for (size_t i = 0; i < (size_t)l->c * OUT * OUT; i++)
                l->v[i] = pred[h][i];
        }
        free_all(pred, HEADS);
    }
    double loss = rt_loss(logits, BATCH, LABELS, NZ, b->targets, b->masks, b->ae_targets, 0.5);
    rt_free(logits, BATCH * HEADS);
    return loss;
}

START_TEST(frozen_trunk_training)
{
    ck_assert_int_eq(isl_train_options_set_freeze_trunk(NULL, 1), ISL_ERROR_INVALID_ARGUMENT);
    isl_model *m = pretrained(21);
    isl_model *q = with_new_head(m, 22);
    batch *b = random_batch(23);
    isl_trainer *t = trainer(q, 1), *full = trainer(q, 0);
    float losses[LABELS + 3], last = INFINITY;
    double frozen_time = 0, full_time = 0;
    step_ok(t, b, losses); /* builds the net */
    step_ok(full, b, losses);
    for (int s = 0; s < 5; s++) {
        double t0 = test_now();
        step_ok(t, b, losses);
        frozen_time += test_now() - t0;
        printf("frozen step %d: labels %.5f %.5f %.5f, autoencoder %.5f, total %.5f\n", s,
               losses[0], losses[1], losses[NEW], losses[LABELS + 1], losses[LABELS + 2]);
        ck_assert(losses[LABELS + 2] < last);
        ck_assert(isnan(losses[1]) && !isnan(losses[0]) && !isnan(losses[NEW]));
        last = losses[LABELS + 2];
        t0 = test_now();
        step_ok(full, b, NULL);
        full_time += test_now() - t0;
    }
    printf("step time (batch %d, base %d): frozen trunk %.3f s, full %.3f s\n", BATCH, BASE,
           frozen_time / 5, full_time / 5);
    ck_assert_int_eq(isl_trainer_step_count(t), 6);

    /* The trunk and every statistic are bit for bit the original; the trained heads moved;
     * the head without known pixels did not. */
    isl_model *s = NULL;
    ck_assert_int_eq(isl_trainer_model(t, &s), ISL_OK);
    test_arr_list *lq = test_arrays_of(&q->params), *ls = test_arrays_of(&s->params);
    for (int i = 0; i < lq->count; i++) {
        const char *path = lq->a[i].path;
        int fixed = !has(path, "/heads/") || is_statistic(path) || in_head(path, old_names[1]);
        ck_assert_msg(test_same_array(&lq->a[i], test_find_array(ls, path)) == fixed, "%s %s",
                      path, fixed ? "changed" : "did not change");
    }

    /* Re-estimating the statistics changes nothing (they are frozen). */
    isl_train_batch tb = api_batch(b);
    ck_assert_int_eq(isl_trainer_estimate_bn(t, &tb, 0), ISL_OK);
    isl_model *e = NULL;
    ck_assert_int_eq(isl_trainer_model(t, &e), ISL_OK);
    ck_assert(test_models_equal(s, e));
    tb.batch_size = 0;
    ck_assert_int_eq(isl_trainer_estimate_bn(t, &tb, 0), ISL_ERROR_SHAPE);

    /* The training forward is the snapshot's prediction: the next step's loss (computed
     * before its update) is the loss of the snapshot's predicted logits. */
    const double pl = predicted_loss(s, b);
    step_ok(t, b, losses);
    printf("loss of the snapshot's predictions %.7f, of the next step %.7f\n", pl,
           losses[LABELS + 2]);
    ck_assert(fabs(pl - losses[LABELS + 2]) < 1e-5);

    free(lq);
    free(ls);
    isl_model_free(e);
    isl_model_free(s);
    isl_trainer_free(t);
    isl_trainer_free(full);
    isl_model_free(q);
    isl_model_free(m);
    free(b);
}
END_TEST

/* Adam moments of a checkpoint, shaped as the model's parameters (statistics: zero). */
typedef struct moments_ctx {
    isl_h5_file *f;
    const char *which; /* "m" or "v" */
} moments_ctx;

static int read_moment(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    moments_ctx *c = user;
    if (is_statistic(path))
        return 0;
    char full[400];
    snprintf(full, sizeof(full), "/optimizer/%s%s", c->which, path);
    return (int)isl_h5_read_floats(c->f, full, rank, dims, data);
}

typedef struct moments {
    isl_params m, v;
} moments;

static isl_status read_moments_cb(void *user, isl_h5_file *f)
{
    moments *mo = user;
    moments_ctx cm = {f, "m"}, cv = {f, "v"};
    ISL_CHECK((isl_status)isl_params_visit(&mo->m, read_moment, &cm));
    return (isl_status)isl_params_visit(&mo->v, read_moment, &cv);
}

static void read_moments(const char *path, const isl_model *like, moments *mo)
{
    copy_params(&mo->m, like);
    copy_params(&mo->v, like);
    ck_assert_msg(isl_h5_read_file(path, read_moments_cb, mo) == ISL_OK, "%s",
                  isl_last_error());
}

/* Sum of |moments| over the trunk's arrays and over one head's. */
static void moment_sums(const moments *mo, const char *head, double *trunk, double *in)
{
    *trunk = *in = 0;
    const isl_params *sets[2] = {&mo->m, &mo->v};
    for (int k = 0; k < 2; k++) {
        test_arr_list *l = test_arrays_of(sets[k]);
        for (int i = 0; i < l->count; i++) {
            const test_arr *a = &l->a[i];
            if (is_statistic(a->path))
                continue;
            double *sum = !has(a->path, "/heads/") ? trunk : in_head(a->path, head) ? in : NULL;
            for (size_t j = 0; sum && j < a->count; j++)
                *sum += fabs(a->data[j]);
        }
        free(l);
    }
}

static int trunk_moments_equal(const moments *a, const moments *b)
{
    const isl_params *sa[2] = {&a->m, &a->v}, *sb[2] = {&b->m, &b->v};
    int equal = 1;
    for (int k = 0; k < 2; k++) {
        test_arr_list *la = test_arrays_of(sa[k]), *lb = test_arrays_of(sb[k]);
        for (int i = 0; i < la->count; i++)
            if (!has(la->a[i].path, "/heads/"))
                equal &= test_same_array(&la->a[i], &lb->a[i]);
        free(la);
        free(lb);
    }
    return equal;
}

static void free_moments(moments *mo)
{
    isl_params_free(&mo->m);
    isl_params_free(&mo->v);
}

START_TEST(frozen_checkpoints_resume)
{
    isl_model *m = pretrained(31);
    isl_model *q = with_new_head(m, 32);
    batch *b1 = random_batch(33), *b2 = random_batch(34);
    char *path = test_temp_path("transfer_checkpoint");
    char *path2 = test_temp_path("transfer_checkpoint2");
    float la[LABELS + 3], lb[LABELS + 3];

    isl_trainer *t = trainer(q, 1);
    step_ok(t, b1, la);
    step_ok(t, b2, la);
    (void)isl_trainer_random(t);
    ck_assert_msg(isl_trainer_save(t, path) == ISL_OK, "%s", isl_last_error());
    const uint64_t r1 = isl_trainer_random(t);
    step_ok(t, b1, la);

    /* The trunk's Adam moments stay zero; the new head's are not. */
    moments mo;
    double trunk_sum, head_sum;
    read_moments(path, q, &mo);
    moment_sums(&mo, new_names[0], &trunk_sum, &head_sum);
    ck_assert(trunk_sum == 0 && head_sum > 0);
    free_moments(&mo);

    isl_train_options *o = options(1);
    isl_trainer *u = NULL;
    ck_assert_msg(isl_trainer_load(path, o, &u) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_trainer_step_count(u), 2);
    ck_assert(isl_trainer_random(u) == r1);
    step_ok(u, b1, lb);
    test_assert_losses_equal(la, lb, LABELS + 3);
    isl_model *ma, *mb;
    ck_assert_int_eq(isl_trainer_model(t, &ma), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(u, &mb), ISL_OK);
    ck_assert(test_models_equal(ma, mb));

    /* From an unfrozen checkpoint: freezing keeps the trunk's moments as they were. */
    isl_trainer *full = trainer(q, 0);
    step_ok(full, b1, la);
    ck_assert_int_eq(isl_trainer_save(full, path), ISL_OK);
    isl_trainer *fz = NULL;
    ck_assert_msg(isl_trainer_load(path, o, &fz) == ISL_OK, "%s", isl_last_error());
    step_ok(fz, b2, la);
    ck_assert_int_eq(isl_trainer_save(fz, path2), ISL_OK);
    moments before, after;
    read_moments(path, q, &before);
    read_moments(path2, q, &after);
    moment_sums(&before, new_names[0], &trunk_sum, &head_sum);
    ck_assert(trunk_sum > 0);
    ck_assert(trunk_moments_equal(&before, &after));
    free_moments(&before);
    free_moments(&after);

    remove(path);
    remove(path2);
    free(path);
    free(path2);
    isl_train_options_free(o);
    isl_model_free(ma);
    isl_model_free(mb);
    isl_trainer_free(t);
    isl_trainer_free(u);
    isl_trainer_free(full);
    isl_trainer_free(fz);
    isl_model_free(q);
    isl_model_free(m);
    free(b1);
    free(b2);
}
END_TEST

int main(void)
{
    /* One thread unless told otherwise (see tests/test_train.c). */
    const char *threads = getenv("ISL_TEST_THREADS");
    omp_set_num_threads(threads && atoi(threads) > 0 ? atoi(threads) : 1);
    const test_case cases[] = {{"add_heads", add_heads_copies_and_appends},
                               {"add_heads_errors", add_heads_errors},
                               {"frozen_engine", frozen_engine_logits_and_gradients},
                               {"frozen_training", frozen_trunk_training},
                               {"frozen_resume", frozen_checkpoints_resume}};
    return test_run_cases("transfer", cases, sizeof(cases) / sizeof(cases[0]), 600);
}
