/* The training engine: gradients against central finite differences of an independent
 * double-precision reference (tests/ref_train.h), the loss, Adam, masking, and the public
 * training API (steps, checkpoints and resuming, batch-norm re-estimation). */
#include "adam.h"
#include "dropout.h"
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
#define LABELS 2
#define HEADS (LABELS + 1)
#define BATCH 2
#define SIDE 250
#define OUT 8

static const char *head_names[LABELS] = {"dapi_confocal", "nfh_confocal"};

/* ------------------------------------------------------------------------------------ */
/* A small network and batch                                                            */
/* ------------------------------------------------------------------------------------ */

/* Random weights, batch-norm gamma/beta and biases; head weights large enough that the
 * predicted distributions are far from uniform. */
static void random_params(isl_params *p, uint64_t seed)
{
    const char *names[LABELS] = {head_names[0], head_names[1]};
    ck_assert_int_eq(isl_params_alloc(p, BASE, NZ, LABELS, names, 1), 0);
    isl_params_init_random(p, seed);
    test_randomize_bn(p, seed + 1);
    test_sharpen_heads(p, 50.0f);
}

typedef struct batch {
    float inputs[BATCH * NZ * SIDE * SIDE];
    float targets[BATCH * LABELS * OUT * OUT];
    uint8_t masks[BATCH * LABELS * OUT * OUT];
    float ae_targets[BATCH * NZ * OUT * OUT]; /* the center of the inputs */
    int stored; /* batch norms with the stored statistics (ISL_NET_STORED_STATS) */
    rt_dropout drop; /* of the heads' inputs (rate 0: none) */
} batch;

/* Label 0 known everywhere, label 1 on a diagonal half of the pixels of image 0 only. */
static batch *random_batch(uint64_t seed)
{
    batch *b = malloc(sizeof(*b));
    test_fill_batch(b->inputs, b->targets, b->ae_targets, BATCH, NZ, LABELS, SIDE, OUT, seed);
    b->stored = 0;
    memset(&b->drop, 0, sizeof(b->drop));
    for (int n = 0; n < BATCH; n++)
        for (int l = 0; l < LABELS; l++)
            for (int y = 0; y < OUT; y++)
                for (int x = 0; x < OUT; x++)
                    b->masks[(((size_t)n * LABELS + l) * OUT + y) * OUT + x] =
                        l == 0 || (n == 0 && x >= y);
    return b;
}

static isl_train_batch api_batch(const batch *b)
{
    isl_train_batch tb = {BATCH, SIDE, SIDE, b->inputs, b->targets, b->masks};
    return tb;
}

/* The reference's total loss (label weight 0.5) for params and inputs, with the batch
 * norms b->stored says. */
static double ref_loss(const isl_params *p, const float *inputs, const batch *b)
{
    ref_t in[BATCH], logits[BATCH * HEADS];
    test_ref_inputs(in, inputs, BATCH, NZ, SIDE, SIDE);
    rt_network_dropout(p, in, BATCH, b->stored, &b->drop, logits);
    double loss = rt_loss(logits, BATCH, LABELS, NZ, b->targets, b->masks, b->ae_targets, 0.5);
    rt_free(in, BATCH);
    rt_free(logits, BATCH * HEADS);
    return loss;
}

/* The engine's forward, loss and backward on params, writing gradients into g. */
typedef struct engine {
    isl_params *p, g;
    dnnl_engine_t eng;
    isl_train_net *net;
    double losses[LABELS + 3];
    float *logits[HEADS]; /* copies: the loss overwrites the net's with the gradient */
} engine;

static void engine_open(engine *e, isl_params *p, int input_grad)
{
    e->p = p;
    ck_assert_int_eq(isl_params_alloc(&e->g, BASE, NZ, LABELS, head_names, 1), 0);
    ck_assert_int_eq(dnnl_engine_create(&e->eng, dnnl_cpu, 0), dnnl_success);
    ck_assert_msg(isl_train_net_create(p, &e->g, e->eng, BATCH, SIDE, SIDE,
                                       input_grad ? ISL_NET_INPUT_GRAD : 0, &e->net) ==
                      ISL_OK,
                  "%s", isl_last_error());
}

static void engine_close(engine *e)
{
    for (int h = 0; h < HEADS; h++)
        free(e->logits[h]);
    isl_train_net_free(e->net);
    dnnl_engine_destroy(e->eng);
    isl_params_free(&e->g);
}

static isl_loss_batch loss_batch(const batch *b)
{
    isl_loss_batch lb = {BATCH, LABELS, NZ, SIDE, SIDE, OUT, OUT, b->inputs, b->targets, b->masks, 0};
    return lb;
}

/* Forward + loss (+ backward): the heads with known pixels and the autoencoder. */
static void engine_run(engine *e, const batch *b, int backward)
{
    isl_loss_batch lb = loss_batch(b);
    int64_t counts[LABELS];
    int active[HEADS];
    isl_loss_label_counts(&lb, counts);
    for (int l = 0; l < LABELS; l++)
        active[l] = counts[l] > 0;
    active[LABELS] = 1;
    memcpy(isl_train_net_input(e->net), b->inputs, sizeof(b->inputs));
    const isl_net_mode mode = b->stored ? ISL_NET_STORED_STATS : ISL_NET_BATCH_STATS;
    isl_train_net_set_dropout(e->net, b->drop.rate, b->drop.whole_channels, b->drop.seed,
                              b->drop.step, 0);
    ck_assert_msg(isl_train_net_forward(e->net, active, 0, mode) == ISL_OK, "%s",
                  isl_last_error());
    const float *logits[HEADS];
    float *dlogits[HEADS];
    for (int h = 0; h < HEADS; h++) {
        logits[h] = isl_train_net_logits(e->net, h);
        dlogits[h] = isl_train_net_dlogits(e->net, h);
        free(e->logits[h]);
        e->logits[h] = NULL;
        if (logits[h]) {
            size_t n = (size_t)BATCH * e->p->heads[h].out_ch * OUT * OUT;
            e->logits[h] = malloc(sizeof(float) * n);
            memcpy(e->logits[h], logits[h], sizeof(float) * n);
        }
    }
    ck_assert_int_eq(isl_loss_compute(&lb, logits, dlogits, counts, 0.5, e->losses), 0);
    if (backward)
        ck_assert_msg(isl_train_net_backward(e->net) == ISL_OK, "%s", isl_last_error());
}

/* ------------------------------------------------------------------------------------ */
/* Parameter groups                                                                     */
/* ------------------------------------------------------------------------------------ */

typedef int (*group_fn)(const isl_params *p, const char *path);

static int has(const char *path, const char *part) { return strstr(path, part) != NULL; }

static int expand_of(const isl_params *p, const char *path, isl_module_kind kind)
{
    int i = -1;
    return sscanf(path, "/modules/%d/", &i) == 1 && has(path, "/expand/") &&
           p->arch.modules[i].kind == kind;
}

/* (The projection bias has no effect with batch statistics: every consumer of the
 * projection is batch-normalized or shift-equivariant, so its gradient is 0 and checked
 * only with stored statistics.) */
static int g_projection(const isl_params *p, const char *s)
{
    (void)p;
    return has(s, "/projection/weight");
}
static int g_projection_bias(const isl_params *p, const char *s)
{
    (void)p;
    return has(s, "/projection/bias");
}
static int g_expand_in(const isl_params *p, const char *s)
{
    return expand_of(p, s, ISL_MODULE_IN);
}
static int g_expand_down(const isl_params *p, const char *s)
{
    return expand_of(p, s, ISL_MODULE_DOWN);
}
static int g_expand_up(const isl_params *p, const char *s)
{
    return expand_of(p, s, ISL_MODULE_UP);
}
static int g_reduce(const isl_params *p, const char *s)
{
    (void)p;
    return has(s, "/reduce/");
}
static int g_bn_gamma(const isl_params *p, const char *s)
{
    (void)p;
    return has(s, "/modules/") && has(s, "/gamma");
}
static int g_bn_beta(const isl_params *p, const char *s)
{
    (void)p;
    return has(s, "/modules/") && has(s, "/beta");
}
static int g_label_heads(const isl_params *p, const char *s)
{
    (void)p;
    return has(s, "/heads/") && !has(s, "autoencoder") && (has(s, "/weight") || has(s, "/bias"));
}
static int g_ae_head(const isl_params *p, const char *s)
{
    (void)p;
    return has(s, "/heads/autoencoder/") && (has(s, "/weight") || has(s, "/bias"));
}
static int g_head_bn(const isl_params *p, const char *s)
{
    (void)p;
    return has(s, "/heads/") && (has(s, "/gamma") || has(s, "/beta"));
}

/* ------------------------------------------------------------------------------------ */
/* Gradient check                                                                       */
/* ------------------------------------------------------------------------------------ */

/* The loss is far from linear at the scale of a weight (sharp softmaxes, kinks), so the
 * steps are tiny: 1e-6 of a weight's scale, divided by sqrt(size / 100) in large groups
 * since the loss sees the sum of all perturbations. The reference is double precision;
 * the realized float steps enter the prediction exactly. */
#define FD_STEP 1e-6
#define FD_TOL 5e-3 /* the engine's float sums over 10^5 terms (projection) reach ~1e-3 */

typedef struct segment {
    float *data;
    const float *grad;
    size_t count;
    double step;
} segment;

typedef struct direction {
    segment seg[2048];
    int count;
} direction;

static void add_segment(direction *d, float *data, const float *grad, size_t count, double step)
{
    d->seg[d->count++] = (segment){data, grad, count, step};
}

/* The arrays of a group, with one step size per group. */
static void add_group(direction *d, const isl_params *p, const test_arr_list *pl,
                      const test_arr_list *gl, group_fn group, double scale)
{
    size_t total = 0;
    double sq = 0;
    for (int i = 0; i < pl->count; i++)
        if (group(p, pl->a[i].path)) {
            total += pl->a[i].count;
            for (size_t j = 0; j < pl->a[i].count; j++)
                sq += (double)pl->a[i].data[j] * pl->a[i].data[j];
        }
    ck_assert(total > 0);
    double step = scale * FD_STEP * fmax(sqrt(sq / total), 0.05) / sqrt(fmax(1.0, total / 100.0));
    for (int i = 0; i < pl->count; i++)
        if (group(p, pl->a[i].path))
            add_segment(d, pl->a[i].data, gl->a[i].data, pl->a[i].count, step);
}

/* Central difference of the reference loss along a direction against the engine's
 * gradient projected on it. */
static void check_direction(const direction *d, isl_params *p, batch *b, uint64_t seed,
                            const char *name)
{
    size_t total = 0;
    for (int i = 0; i < d->count; i++)
        total += d->seg[i].count;
    float *saved = malloc(sizeof(float) * total), *pm[2] = {malloc(sizeof(float) * total),
                                                             malloc(sizeof(float) * total)};
    uint64_t s = seed;
    double predicted = 0, loss[2];
    for (int i = 0, k = 0; i < d->count; i++)
        for (size_t j = 0; j < d->seg[i].count; j++, k++) {
            /* Along the engine's gradient signs, random magnitudes: a random-sign direction
             * would sum terms that cancel, amplifying the float gradient's rounding. */
            double v = d->seg[i].data[j], u = 0.5 + test_uniform(&s);
            double delta = d->seg[i].step * (d->seg[i].grad[j] < 0 ? -u : u);
            saved[k] = (float)v;
            pm[0][k] = (float)(v + delta);
            pm[1][k] = (float)(v - delta);
            predicted += (double)d->seg[i].grad[j] * ((double)pm[0][k] - pm[1][k]);
        }
    for (int side = 0; side < 3; side++) {
        const float *src = side < 2 ? pm[side] : saved;
        for (int i = 0, k = 0; i < d->count; i++)
            for (size_t j = 0; j < d->seg[i].count; j++, k++)
                d->seg[i].data[j] = src[k];
        if (side < 2)
            loss[side] = ref_loss(p, b->inputs, b);
    }
    double fd = loss[0] - loss[1], err = fabs(fd - predicted) / fmax(fabs(fd), 1e-300);
    printf("  %-28s %7zu values: finite difference %+.6e, engine %+.6e, error %.1e\n", name,
           total, fd, predicted, err);
    ck_assert_msg(fabs(fd) > 1e-13, "%s: the check is vacuous", name);
    ck_assert_msg(err < FD_TOL, "%s: gradient off by %.2e relative", name, err);
    free(saved);
    free(pm[0]);
    free(pm[1]);
}

/* One parameter: the element of the group with the largest gradient. */
static void check_element(isl_params *p, batch *b, const test_arr_list *pl,
                          const test_arr_list *gl, group_fn group, const char *name)
{
    int bi = -1;
    size_t bj = 0;
    for (int i = 0; i < pl->count; i++)
        if (group(p, pl->a[i].path))
            for (size_t j = 0; j < pl->a[i].count; j++)
                if (bi < 0 || fabsf(gl->a[i].data[j]) > fabsf(gl->a[bi].data[bj])) {
                    bi = i;
                    bj = j;
                }
    direction *d = calloc(1, sizeof(*d));
    add_segment(d, &pl->a[bi].data[bj], &gl->a[bi].data[bj], 1,
                FD_STEP * 10 * fmax(fabsf(pl->a[bi].data[bj]), 0.05));
    char label[160];
    snprintf(label, sizeof(label), "%s %s[%zu]", name, pl->a[bi].path + 1, bj);
    check_direction(d, p, b, 7, label);
    free(d);
}

/* Forward against the reference, then every kind of parameter against finite
 * differences; stored: with the stored batch-norm statistics; drop (not NULL): with
 * dropout of the heads' inputs, and only the groups it changes (the heads, and the trunk
 * through them). */
static void check_gradients(int stored, const rt_dropout *drop)
{
    isl_params p;
    random_params(&p, 11);
    batch *b = random_batch(12);
    engine e = {0};
    engine_open(&e, &p, 1);
    if (stored) {
        /* Statistics that fit the activations (random ones would blow them up): this
         * batch's, through a batch-statistics forward that replaces them (momentum 1). */
        int all[HEADS] = {1, 1, 1};
        memcpy(isl_train_net_input(e.net), b->inputs, sizeof(b->inputs));
        ck_assert_msg(isl_train_net_forward(e.net, all, 1.0, ISL_NET_BATCH_STATS) == ISL_OK,
                      "%s", isl_last_error());
    }
    b->stored = stored;
    if (drop)
        b->drop = *drop;
    double t0 = test_now();
    engine_run(&e, b, 1);
    printf("engine forward + backward: %.2f s\n", test_now() - t0);

    /* The forward against the reference. */
    ref_t in[BATCH], logits[BATCH * HEADS];
    test_ref_inputs(in, b->inputs, BATCH, NZ, SIDE, SIDE);
    t0 = test_now();
    rt_network_dropout(&p, in, BATCH, stored, &b->drop, logits);
    printf("reference forward: %.2f s\n", test_now() - t0);
    for (int h = 0; h < HEADS; h++) {
        const float *lg = e.logits[h];
        const size_t per = (size_t)p.heads[h].out_ch * OUT * OUT;
        double max_err = 0, max_ref = 0;
        for (int n = 0; n < BATCH; n++)
            for (size_t i = 0; i < per; i++) {
                max_err = fmax(max_err, fabs(logits[n * HEADS + h].v[i] - lg[n * per + i]));
                max_ref = fmax(max_ref, fabs(logits[n * HEADS + h].v[i]));
            }
        printf("head %d logits: max |logit| %.3f, max error %.2e\n", h, max_ref, max_err);
        ck_assert(max_ref > 1.0); /* distributions far from uniform */
        ck_assert(max_err < 2e-5 * max_ref);
    }
    double rl = rt_loss(logits, BATCH, LABELS, NZ, b->targets, b->masks, b->ae_targets, 0.5);
    printf("loss: engine %.9f, reference %.9f\n", e.losses[LABELS + 2], rl);
    ck_assert(fabs(e.losses[LABELS + 2] - rl) < 1e-6);
    rt_free(in, BATCH);
    rt_free(logits, BATCH * HEADS);

    /* Directions over every kind of parameter, each kind stepped at its own scale. */
    test_arr_list *pl = test_arrays_of(&p), *gl = test_arrays_of(&e.g);
    direction *d = calloc(1, sizeof(*d));
    t0 = test_now();
    if (!drop) {
        add_group(d, &p, pl, gl, g_projection, 0.1); /* it moves every activation */
        if (stored) /* then the projection bias matters (see g_projection) */
            add_group(d, &p, pl, gl, g_projection_bias, 0.1);
        add_segment(d, b->inputs, isl_train_net_input_grad(e.net),
                    sizeof(b->inputs) / sizeof(float),
                    FD_STEP / sqrt(sizeof(b->inputs) / sizeof(float) / 100.0));
        check_direction(d, &p, b, 101, "projection + input");
        d->count = 0;
        add_group(d, &p, pl, gl, g_expand_in, 1);
        add_group(d, &p, pl, gl, g_expand_down, 1);
        add_group(d, &p, pl, gl, g_expand_up, 1);
        check_direction(d, &p, b, 102, "expand (in, down, up)");
        d->count = 0;
        add_group(d, &p, pl, gl, g_reduce, 1);
        check_direction(d, &p, b, 103, "reduce");
        d->count = 0;
    }
    /* With dropout the reduce convolutions join the module batch norms: the trunk's
     * gradient through the dropped heads' inputs. */
    add_group(d, &p, pl, gl, g_bn_gamma, 1);
    add_group(d, &p, pl, gl, g_bn_beta, 1);
    if (drop)
        add_group(d, &p, pl, gl, g_reduce, 1);
    check_direction(d, &p, b, 104, drop ? "module batch norms + reduce" : "module batch norms");
    d->count = 0;
    add_group(d, &p, pl, gl, g_label_heads, 1);
    add_group(d, &p, pl, gl, g_ae_head, 1);
    add_group(d, &p, pl, gl, g_head_bn, 1);
    check_direction(d, &p, b, 105, "heads");
    if (drop)
        goto done;
    /* Single weights where an index mix-up would hide in a sum. */
    check_element(&p, b, pl, gl, g_expand_up, "transposed conv");
    check_element(&p, b, pl, gl, g_bn_gamma, "bn gamma");
done:
    printf("finite differences: %.1f s\n", test_now() - t0);
    free(d);
    free(pl);
    free(gl);
    engine_close(&e);
    isl_params_free(&p);
    free(b);
}

/* Stochastic depth: the engine on p with some modules skipped equals the plain engine on
 * p', whose skipped modules' reduce weights are 0 and the others' divided by their
 * survival probability (the reduce convolution has no bias): the same logits and loss,
 * and the same gradients, a reduce weight's divided by its survival probability (0 for
 * a skipped module). Which modules skip is computed here from the depths of the spec. */
static void check_stochastic_depth(int stored)
{
    const double rate = 0.5;
    const uint64_t seed = 5;
    const int64_t step = 3;
    isl_params p, q;
    random_params(&p, 11);
    batch *b = random_batch(12);
    engine e1 = {0}, e2 = {0};
    engine_open(&e1, &p, 1);
    if (stored) { /* statistics that fit the activations, as in check_gradients */
        int all[HEADS] = {1, 1, 1};
        memcpy(isl_train_net_input(e1.net), b->inputs, sizeof(b->inputs));
        ck_assert(isl_train_net_forward(e1.net, all, 1.0, ISL_NET_BATCH_STATS) == ISL_OK);
    }
    b->stored = stored;
    random_params(&q, 11); /* then p's statistics, fitted above */
    isl_params_copy_trunk(&q, &p);
    for (int h = 0; h < p.num_heads; h++)
        isl_params_copy_head(&q.heads[h], &p.heads[h], p.arch.trunk_ch);
    const isl_arch *a = &p.arch;
    double keep[1024];
    int skipped[1024], count = 0;
    ck_assert(a->num_modules <= 1024);
    for (int i = 0; i < a->num_modules; i++) {
        /* Depth on the path: 18 modules in every tower, then the 14 of the upper tower. */
        const int tower = a->modules[i].tower;
        int depth = 1;
        for (int j = 0; j < i; j++)
            depth += a->modules[j].tower == tower;
        if (tower == ISL_UPPER_TOWER)
            depth += 18;
        const double prob = rate * depth / 32;
        keep[i] = 1 - prob;
        skipped[i] = isl_depth_skips(seed, step, i, prob);
        count += skipped[i];
        const isl_module_arch *m = &a->modules[i];
        for (size_t j = 0; j < (size_t)m->reduce_ch * 2 * m->e_ch; j++)
            q.modules[i].reduce_weight[j] =
                skipped[i] ? 0 : (float)(p.modules[i].reduce_weight[j] / (float)keep[i]);
    }
    printf("stochastic depth %.1f (%s statistics): %d of %d modules skipped\n", rate,
           stored ? "stored" : "batch", count, a->num_modules);
    ck_assert(count > 2 && count < a->num_modules - 2);
    isl_train_net_set_stochastic_depth(e1.net, rate, seed, step);
    engine_run(&e1, b, 1);
    engine_open(&e2, &q, 1);
    engine_run(&e2, b, 1);
    double max_err = 0, max_ref = 0;
    for (int h = 0; h < HEADS; h++)
        for (size_t i = 0; i < (size_t)BATCH * p.heads[h].out_ch * OUT * OUT; i++) {
            max_err = fmax(max_err, fabs(e1.logits[h][i] - e2.logits[h][i]));
            max_ref = fmax(max_ref, fabs(e2.logits[h][i]));
        }
    printf("  logits: max %.3f, largest difference %.2e; loss %.9f against %.9f\n", max_ref,
           max_err, e1.losses[LABELS + 2], e2.losses[LABELS + 2]);
    /* Float rounding through 32 modules: about 1e-5 relative. A branch scaled wrongly
     * shows as its skip probability (at least 1/64 here). */
    ck_assert(max_err < 1e-4 * max_ref);
    ck_assert(fabs(e1.losses[LABELS + 2] - e2.losses[LABELS + 2]) < 1e-6);
    test_arr_list *g1 = test_arrays_of(&e1.g), *g2 = test_arrays_of(&e2.g);
    double err[2] = {0, 0}, ref[2] = {0, 0}; /* other gradients, reduce weights' */
    for (int k = 0; k < g1->count; k++) {
        int mod = -1;
        for (int i = 0; i < a->num_modules; i++)
            if (g1->a[k].data == e1.g.modules[i].reduce_weight)
                mod = i;
        for (size_t j = 0; j < g1->a[k].count; j++) {
            double want = g2->a[k].data[j];
            if (mod >= 0)
                want = skipped[mod] ? 0 : want / keep[mod];
            err[mod >= 0] = fmax(err[mod >= 0], fabs(g1->a[k].data[j] - want));
            ref[mod >= 0] = fmax(ref[mod >= 0], fabs(want));
        }
    }
    printf("  gradients: max %.3e, largest difference %.2e; reduce weights %.3e, %.2e\n",
           ref[0], err[0], ref[1], err[1]);
    /* With batch statistics the rounding reaches 3e-4 of the largest gradient on AVX2
     * (staged nChw8c kernels; 3e-5 with AVX-512); a wrong scale is off by at least
     * its skip probability, 1/64 here. */
    ck_assert(ref[0] > 0 && err[0] < 1e-3 * ref[0]);
    ck_assert(ref[1] > 0 && err[1] < 1e-3 * ref[1]);
    free(g1);
    free(g2);
    engine_close(&e1);
    engine_close(&e2);
    isl_params_free(&p);
    isl_params_free(&q);
    free(b);
}

START_TEST(stochastic_depth_equals_scaled_branches)
{
    check_stochastic_depth(0);
    check_stochastic_depth(1);
}
END_TEST

START_TEST(gradients_match_finite_differences) { check_gradients(0, NULL); }
END_TEST

/* Every oneDNN primitive of the training net (all passes, weight and staging reorders)
 * runs a JIT kernel, never oneDNN's reference one (~20x slower). Run again under
 * ONEDNN_MAX_CPU_ISA=AVX2 (avx2_train_jit): without AVX-512 the convolutions and poolings
 * must work on nChw8c copies (docs/testing-cpus.md). */
START_TEST(train_net_uses_no_reference_kernels)
{
    isl_params p;
    engine e = {0};
    random_params(&p, 12);
    engine_open(&e, &p, 1);
    const int n = isl_train_net_impls(e.net, NULL, 0);
    const char **impl = malloc(sizeof(*impl) * (size_t)n);
    ck_assert_int_eq(isl_train_net_impls(e.net, impl, n), n);
    int jit = 0;
    for (int i = 0; i < n; i++) {
        ck_assert_msg(strncmp(impl[i], "ref", 3) != 0,
                      "training primitive %d runs oneDNN's reference kernel %s", i, impl[i]);
        jit += strstr(impl[i], "jit") != NULL;
    }
    /* At least the three passes of each module's two convolutions. */
    ck_assert_int_ge(jit, 6 * p.arch.num_modules);
    printf("training net: %d primitives, %d JIT, none a reference kernel (ISA 0x%x)\n", n, jit,
           (unsigned)dnnl_get_effective_cpu_isa());
    free(impl);
    engine_close(&e);
    isl_params_free(&p);
}
END_TEST

/* Training with frozen batch-norm statistics (isl_train_options_set_freeze_bn): the
 * statistics are constants, so the mean and variance terms vanish from dx. */
START_TEST(gradients_with_stored_statistics) { check_gradients(1, NULL); }
END_TEST

/* Dropout of the heads' inputs, whole channels with the stored statistics (the folds'
 * recipe; the gradient reaches the trunk). Values dropped with batch statistics are
 * checked against PyTorch (tests/python/cli/test_train_oracle.py); one finite-difference
 * case keeps the sanitizer run of this test within its time limit. */
START_TEST(gradients_with_dropout)
{
    const rt_dropout channels = {0.5, 1, 92, 6};
    check_gradients(1, &channels);
}
END_TEST

/* isl_dropout_apply on the blocked layout drops exactly what the mask formula of dropout.h
 * says of each value's plain [n, c, y, x] index, n counted from crop `first` of the global
 * batch, scales the rest by 1 / (1 - rate), leaves the padding channels alone, and keeps
 * about 1 - rate of the values; heads' and steps' masks are independent; whole channels
 * drop alike at every pixel. */
static void check_mask(int whole, int n, int c, int h, int w, double rate, int first)
{
    const int blocks = (c + 15) / 16;
    const size_t hw = (size_t)h * w, count = isl_tt_floats(n, c, h, w);
    float *v = malloc(sizeof(float) * count), *ones = malloc(sizeof(float) * count);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < blocks * 16; k++)
            for (size_t p = 0; p < hw; p++) {
                size_t at = (((size_t)i * blocks + k / 16) * hw + p) * 16 + k % 16;
                v[at] = k < c ? (float)(((size_t)i * c + k) * hw + p + 1) : -7.0f;
                ones[at] = k < c ? 1.0f : 0.0f;
            }
    const uint64_t key = isl_dropout_key(5, 3, 1);
    isl_tt t = isl_tt_make(n, c, h, w, v), u = isl_tt_make(n, c, h, w, ones);
    isl_dropout_apply(&t, key, rate, whole, first);
    isl_dropout_apply(&u, isl_dropout_key(5, 3, 2), rate, whole, first); /* another head's */
    const float scale = (float)(1.0 / (1.0 - rate));
    size_t kept = 0, agree = 0, total = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < blocks * 16; k++)
            for (size_t p = 0; p < hw; p++) {
                size_t at = (((size_t)i * blocks + k / 16) * hw + p) * 16 + k % 16;
                if (k >= c) {
                    ck_assert_float_eq(v[at], -7.0f);
                    continue;
                }
                const uint64_t channel = (uint64_t)i * c + k, index = channel * hw + p;
                const uint64_t global = ((uint64_t)(first + i) * c + k) * hw + p;
                const int keep = isl_dropout_keeps(key, whole ? (uint64_t)(first + i) * c + k
                                                              : global, rate);
                ck_assert_msg(v[at] == (keep ? (float)(index + 1) * scale : 0.0f),
                              "value (%d, %d, %zu): %g", i, k, p, v[at]);
                if (whole) /* one draw per channel: the same at every pixel */
                    ck_assert((u.v[at] != 0) == (u.v[(at / (hw * 16)) * hw * 16 + k % 16] != 0));
                kept += keep;
                agree += keep == (u.v[at] != 0);
                total++;
            }
    /* Draws per value or per channel: binomial bounds of 5 standard deviations. */
    const double draws = whole ? (double)n * c : (double)total;
    const double sd = sqrt(rate * (1 - rate) / draws), both = rate * rate + (1 - rate) * (1 - rate);
    printf("dropout %.2f (%s): kept %.4f, two heads agree on %.4f (independent: %.4f)\n", rate,
           whole ? "channels" : "values", (double)kept / total, (double)agree / total, both);
    ck_assert(fabs((double)kept / total - (1 - rate)) < 5 * sd);
    ck_assert(fabs((double)agree / total - both) < 5 * sqrt(both * (1 - both) / draws));
    ck_assert(isl_dropout_key(5, 3, 1) != isl_dropout_key(5, 4, 1));
    ck_assert(isl_dropout_key(5, 3, 1) != isl_dropout_key(6, 3, 1));
    free(v);
    free(ones);
}

START_TEST(dropout_mask)
{
    check_mask(0, 2, 40, 9, 11, 0.3, 0);
    check_mask(0, 1, 17, 30, 30, 0.5, 0);
    check_mask(1, 4, 120, 3, 5, 0.4, 0);
    check_mask(0, 2, 40, 9, 11, 0.3, 3); /* crops 3 and 4 of a global batch */
    check_mask(1, 1, 120, 3, 5, 0.4, 2);
}
END_TEST


/* ------------------------------------------------------------------------------------ */
/* Loss and Adam                                                                        */
/* ------------------------------------------------------------------------------------ */

START_TEST(loss_values_and_gradient)
{
    ck_assert_int_eq(isl_loss_bin(0.0f), 0);
    ck_assert_int_eq(isl_loss_bin(1.0f), 255);
    ck_assert_int_eq(isl_loss_bin(1.0f / 255), 1);
    ck_assert_int_eq(isl_loss_bin(0.5f), 128); /* 127.5 rounds to even */
    ck_assert_int_eq(isl_loss_bin(-0.1f), 0);
    ck_assert_int_eq(isl_loss_bin(2.0f), 255);

    /* Uniform logits score exactly 1. */
    enum { B = 2, G = 3, H = 2, W = 3, N = B * G * 256 * H * W };
    static float logits[N], dl[N];
    float target[B * G * H * W];
    uint8_t mask[B * G * H * W];
    uint64_t s = 3;
    for (int i = 0; i < B * G * H * W; i++) {
        target[i] = (float)test_uniform(&s);
        mask[i] = (i % 3) != 0;
    }
    isl_loss_view tv = {target, G * H * W, H * W, W}, mv = {mask, G * H * W, H * W, W};
    isl_loss_view all = {NULL, 0, 0, 0};
    double sum;
    ck_assert_int_eq(isl_loss_cross_entropy(logits, B, G, H, W, tv, all, 1.0, NULL, &sum), 0);
    ck_assert(fabs(sum / (B * G * H * W) - 1.0) < 1e-12);
    ck_assert_int_eq(isl_loss_count(mv, B, G, H, W), 24);

    /* Gradient against central differences; zero at unselected pixels. */
    for (int i = 0; i < N; i++)
        logits[i] = (float)(4 * test_uniform(&s) - 2);
    ck_assert_int_eq(isl_loss_cross_entropy(logits, B, G, H, W, tv, mv, 0.5, dl, &sum), 0);
    for (int trial = 0; trial < 20; trial++) {
        int i = (int)(test_uniform(&s) * N);
        float saved = logits[i];
        double lp, lm;
        logits[i] = saved + 1e-2f;
        isl_loss_cross_entropy(logits, B, G, H, W, tv, mv, 1.0, NULL, &lp);
        logits[i] = saved - 1e-2f;
        isl_loss_cross_entropy(logits, B, G, H, W, tv, mv, 1.0, NULL, &lm);
        logits[i] = saved;
        double fd = 0.5 * (lp - lm) / ((double)(saved + 1e-2f) - (saved - 1e-2f));
        ck_assert_msg(fabs(fd - dl[i]) < 1e-5, "logit %d: %g vs %g", i, fd, dl[i]);
        int pixel = (i / (256 * H * W)) * H * W + i % (H * W); /* (b, g) plane, pixel */
        if (!mask[pixel])
            ck_assert(dl[i] == 0.0f);
    }
}
END_TEST

START_TEST(adam_matches_the_formula)
{
    isl_adam_config c;
    isl_adam_defaults(&c);
    c.drop_step = 3;
    float w[3] = {1.0f, -2.0f, 0.5f}, m[3] = {0}, v[3] = {0};
    const float g1[3] = {0.1f, -0.3f, 0.0f}, g2[3] = {-0.2f, 0.1f, 1e-3f};
    double W[3] = {1.0, -2.0, 0.5}, M[3] = {0}, V[3] = {0};
    const float *gs[3] = {g1, g2, g1};
    for (int t = 1; t <= 3; t++) {
        isl_adam_update(&c, t, t, w, gs[t - 1], m, v, 3, 0);
        double lr = t >= 3 ? 1e-5 : 1e-4;
        ck_assert(isl_adam_rate(&c, t) == lr);
        for (int i = 0; i < 3; i++) {
            double g = gs[t - 1][i];
            M[i] = 0.9 * M[i] + 0.1 * g;
            V[i] = 0.999 * V[i] + 0.001 * g * g;
            W[i] -= lr * (M[i] / (1 - pow(0.9, t))) / (sqrt(V[i] / (1 - pow(0.999, t))) + 1e-8);
            ck_assert_msg(fabs(w[i] - W[i]) < 1e-7, "step %d, w[%d] = %.9g, want %.9g", t, i,
                          w[i], W[i]);
        }
    }
    /* The first step moves each weight by about the learning rate. */
    ck_assert(fabs((1.0 - 1e-4) - (double)(float)(1.0 - 1e-4)) < 1e-7);
}
END_TEST

/* AdamW: the weights shrink by 1 - lr * decay before the Adam step (torch.optim.AdamW);
 * an array that does not decay takes the plain Adam step. */
START_TEST(adam_weight_decay_is_decoupled)
{
    isl_adam_config c;
    isl_adam_defaults(&c);
    c.learning_rate = 1e-2;
    c.weight_decay = 5;
    float w[3] = {1.0f, -2.0f, 0.5f}, m[3] = {0}, v[3] = {0};
    float u[3] = {1.0f, -2.0f, 0.5f}, mu[3] = {0}, vu[3] = {0};
    const float g[3] = {0.1f, -0.3f, 0.0f};
    double W[3] = {1.0, -2.0, 0.5}, M[3] = {0}, V[3] = {0};
    for (int t = 1; t <= 2; t++) {
        isl_adam_update(&c, t, t, w, g, m, v, 3, 1);
        isl_adam_update(&c, t, t, u, g, mu, vu, 3, 0);
        for (int i = 0; i < 3; i++) {
            M[i] = 0.9 * M[i] + 0.1 * g[i];
            V[i] = 0.999 * V[i] + 0.001 * g[i] * g[i];
            W[i] = W[i] * (1 - 1e-2 * 5) -
                   1e-2 * (M[i] / (1 - pow(0.9, t))) / (sqrt(V[i] / (1 - pow(0.999, t))) + 1e-8);
            ck_assert_msg(fabs(w[i] - W[i]) < 1e-6, "step %d, w[%d] = %.9g, want %.9g", t, i,
                          w[i], W[i]);
        }
    }
    /* Without decay a zero gradient leaves the weight; with it, 0.95^2 of it remains. */
    ck_assert(u[2] == 0.5f);
    ck_assert(fabs(w[2] - 0.5 * 0.95 * 0.95) < 1e-7);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Masks                                                                                */
/* ------------------------------------------------------------------------------------ */

START_TEST(masked_labels_get_no_gradient)
{
    isl_params p;
    random_params(&p, 21);
    batch *b = random_batch(22);
    memset(b->masks, 0, sizeof(b->masks)); /* label 1 unknown everywhere, 0 on a few pixels */
    for (int n = 0; n < BATCH; n++)
        b->masks[((size_t)n * LABELS + 0) * OUT * OUT + 9] = 1;
    engine e = {0};
    engine_open(&e, &p, 0);
    engine_run(&e, b, 1);
    ck_assert(isnan(e.losses[1]));
    ck_assert(!isnan(e.losses[0]));
    /* Head 1: exactly zero gradient; head 0: only its known pixels have logit gradients. */
    const isl_head_params *g1 = &e.g.heads[1], *g0 = &e.g.heads[0];
    for (int i = 0; i < g1->out_ch * 2 * p.arch.trunk_ch; i++)
        ck_assert(g1->weight[i] == 0.0f);
    for (int c = 0; c < g1->out_ch; c++)
        ck_assert(g1->bias[c] == 0.0f);
    for (int c = 0; c < p.arch.trunk_ch; c++)
        ck_assert(g1->bn.gamma[c] == 0.0f && g1->bn.beta[c] == 0.0f);
    double any = 0;
    for (int c = 0; c < g0->out_ch; c++)
        any += fabs(g0->bias[c]);
    ck_assert(any > 0);
    const float *dl = isl_train_net_dlogits(e.net, 0);
    for (int n = 0; n < BATCH; n++)
        for (int k = 0; k < 256; k++)
            for (int i = 0; i < OUT * OUT; i++)
                if (i != 9)
                    ck_assert(dl[((size_t)n * 256 + k) * OUT * OUT + i] == 0.0f);
    engine_close(&e);
    isl_params_free(&p);
    free(b);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* The public API                                                                       */
/* ------------------------------------------------------------------------------------ */

static isl_model *api_model(uint64_t seed)
{
    return test_new_model(BASE, NZ, LABELS, head_names, seed, "none");
}

static isl_trainer *api_trainer(const isl_model *m, double rate)
{
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, rate), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_seed(o, 77), ISL_OK);
    return test_trainer_create(m, o);
}

static void step_ok(isl_trainer *t, const batch *b, float *losses)
{
    isl_train_batch tb = api_batch(b);
    ck_assert_msg(isl_train_step(t, &tb, losses) == ISL_OK, "%s", isl_last_error());
}

START_TEST(loss_decreases_on_a_fixed_batch)
{
    isl_model *m = api_model(31);
    isl_trainer *t = api_trainer(m, 1e-3);
    batch *b = random_batch(32);
    ck_assert_int_eq(isl_trainer_num_losses(t), LABELS + 3);
    float losses[LABELS + 3], last = INFINITY;
    for (int s = 0; s < 5; s++) {
        double t0 = test_now();
        step_ok(t, b, losses);
        printf("step %d (%.2f s): labels %.5f %.5f, label %.5f, autoencoder %.5f, total %.5f\n",
               s, test_now() - t0, losses[0], losses[1], losses[2], losses[3], losses[4]);
        ck_assert(losses[4] < last);
        ck_assert(fabs(losses[4] - (0.5 * losses[2] + 0.5 * losses[3])) < 1e-6);
        last = losses[4];
    }
    ck_assert_int_eq(isl_trainer_step_count(t), 5);
    isl_trainer_free(t);
    isl_model_free(m);
    free(b);
}
END_TEST

START_TEST(resuming_equals_not_stopping)
{
    isl_model *m = api_model(41);
    batch *b1 = random_batch(42), *b2 = random_batch(43);
    char *path = test_temp_path("checkpoint");
    float la[LABELS + 3], lb[LABELS + 3];

    isl_trainer *t = api_trainer(m, 1e-3);
    step_ok(t, b1, la);
    step_ok(t, b2, la);
    unsigned char before_draw[16], saved[16], after[16], resumed[16];
    ck_assert_int_eq(isl_trainer_digest(t, before_draw), ISL_OK);
    (void)isl_trainer_random(t);
    ck_assert_msg(isl_trainer_save(t, path) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_trainer_digest(t, saved), ISL_OK);
    uint64_t r1 = isl_trainer_random(t);
    step_ok(t, b1, la);
    ck_assert_int_eq(isl_trainer_digest(t, after), ISL_OK);
    /* The digest follows the whole state: the random generator, then a step. */
    ck_assert(memcmp(before_draw, saved, 16) != 0);
    ck_assert(memcmp(saved, after, 16) != 0);
    ck_assert_int_eq(isl_trainer_digest(NULL, saved), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_trainer_digest(t, NULL), ISL_ERROR_INVALID_ARGUMENT);

    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, 1e-3), ISL_OK);
    isl_trainer *u = NULL;
    ck_assert_msg(isl_trainer_load(path, o, &u) == ISL_OK, "%s", isl_last_error());
    isl_train_options_free(o);
    ck_assert_int_eq(isl_trainer_step_count(u), 2);
    ck_assert_int_eq(isl_trainer_digest(u, resumed), ISL_OK);
    ck_assert(memcmp(saved, resumed, 16) == 0);
    ck_assert(isl_trainer_random(u) == r1);
    step_ok(u, b1, lb);
    ck_assert_int_eq(isl_trainer_step_count(u), 3);
    test_assert_losses_equal(la, lb, LABELS + 3);
    ck_assert_int_eq(isl_trainer_digest(u, resumed), ISL_OK);
    ck_assert(memcmp(after, resumed, 16) == 0);
    isl_model *ma, *mb;
    ck_assert_int_eq(isl_trainer_model(t, &ma), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(u, &mb), ISL_OK);
    ck_assert(test_models_equal(ma, mb));

    /* A checkpoint is a model file; a model file is not a checkpoint. */
    isl_model *loaded;
    ck_assert_msg(isl_model_load(path, &loaded) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_model_num_heads(loaded), HEADS);
    ck_assert_int_eq(isl_model_save(ma, path), ISL_OK);
    isl_trainer *bad = NULL;
    ck_assert_int_eq(isl_trainer_load(path, NULL, &bad), ISL_ERROR_FORMAT);
    ck_assert(bad == NULL);
    ck_assert(strstr(isl_last_error(), "not a training checkpoint"));

    /* The snapshot predicts. */
    static float in[NZ * SIDE * SIDE], out0[256 * OUT * OUT];
    memcpy(in, b1->inputs, sizeof(in));
    float *outs[HEADS] = {out0, NULL, NULL};
    ck_assert_msg(isl_predict_tile(ma, NULL, in, SIDE, SIDE, outs) == ISL_OK, "%s",
                  isl_last_error());

    remove(path);
    free(path);
    isl_model_free(loaded);
    isl_model_free(ma);
    isl_model_free(mb);
    isl_trainer_free(t);
    isl_trainer_free(u);
    isl_model_free(m);
    free(b1);
    free(b2);
}
END_TEST

/* isl_train_options_set_average_from: the running mean of the trained arrays over the
 * models after steps 2, 3 and 4 (summed here in double from snapshots), the statistics
 * the current ones; kept in checkpoints. */
START_TEST(weight_average)
{
    isl_model *m = api_model(61);
    batch *b[4] = {random_batch(62), random_batch(63), random_batch(64), random_batch(65)};
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, 1e-3), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_average_from(o, -1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_average_from(o, 2), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_freeze_bn(o, 1), ISL_OK);
    isl_trainer *t = NULL;
    ck_assert_msg(isl_trainer_create(m, o, &t) == ISL_OK, "%s", isl_last_error());
    isl_model *avg = NULL, *cur = NULL;
    ck_assert_int_eq(isl_trainer_average_model(t, &avg), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_ptr_null(avg);

    const size_t n = (size_t)isl_model_parameter_count(m);
    double *sum = calloc(n, sizeof(double));
    char *path = test_temp_path("average");
    for (int s = 0; s < 4; s++) {
        step_ok(t, b[s], NULL);
        ck_assert_int_eq(isl_trainer_average_count(t), s < 1 ? 0 : s);
        if (s < 1)
            continue;
        ck_assert_int_eq(isl_trainer_model(t, &cur), ISL_OK);
        test_arr_list *l = test_arrays_of(&cur->params);
        for (int i = 0, k = 0; i < l->count; i++)
            for (size_t j = 0; j < l->a[i].count; j++, k++)
                sum[k] += l->a[i].data[j];
        free(l);
        isl_model_free(cur);
        if (s == 2)
            ck_assert_msg(isl_trainer_save(t, path) == ISL_OK, "%s", isl_last_error());
    }
    ck_assert_int_eq(isl_trainer_average_model(t, &avg), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(t, &cur), ISL_OK);
    test_arr_list *la = test_arrays_of(&avg->params), *lc = test_arrays_of(&cur->params);
    double worst = 0;
    int differs = 0;
    for (int i = 0, k = 0; i < la->count; i++) {
        const int stat = strstr(la->a[i].path, "/mean") || strstr(la->a[i].path, "/var");
        for (size_t j = 0; j < la->a[i].count; j++, k++) {
            if (stat) { /* the current statistics (frozen: the initial ones) */
                ck_assert(la->a[i].data[j] == lc->a[i].data[j]);
                continue;
            }
            const double want = sum[k] / 3;
            worst = fmax(worst, fabs(la->a[i].data[j] - want) / fmax(fabs(want), 1e-3));
            differs |= la->a[i].data[j] != lc->a[i].data[j];
        }
    }
    printf("weight average of 3 steps: max relative error %.2e\n", worst);
    ck_assert(worst < 1e-5);
    ck_assert(differs); /* the average is not the last model */

    /* Resumed from the checkpoint after step 3 (average of 2), step 4 gives the same. */
    isl_train_options *o2;
    ck_assert_int_eq(isl_train_options_create(&o2), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o2, 1e-3), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_average_from(o2, 2), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_freeze_bn(o2, 1), ISL_OK);
    isl_trainer *r = NULL;
    ck_assert_msg(isl_trainer_load(path, o2, &r) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_trainer_average_count(r), 2);
    step_ok(r, b[3], NULL);
    isl_model *ravg = NULL;
    ck_assert_int_eq(isl_trainer_average_model(r, &ravg), ISL_OK);
    ck_assert(test_models_equal(avg, ravg));
    unsigned char dt[16], dr[16]; /* the average is part of the state's digest */
    ck_assert_int_eq(isl_trainer_digest(t, dt), ISL_OK);
    ck_assert_int_eq(isl_trainer_digest(r, dr), ISL_OK);
    ck_assert(memcmp(dt, dr, 16) == 0);

    free(la);
    free(lc);
    free(sum);
    remove(path);
    free(path);
    isl_model_free(ravg);
    isl_model_free(avg);
    isl_model_free(cur);
    isl_trainer_free(r);
    isl_trainer_free(t);
    isl_train_options_free(o);
    isl_train_options_free(o2);
    isl_model_free(m);
    for (int s = 0; s < 4; s++)
        free(b[s]);
}
END_TEST

START_TEST(absent_heads_are_not_updated)
{
    isl_model *m = api_model(51);
    isl_trainer *t = api_trainer(m, 1e-3);
    batch *b = random_batch(52);
    for (int n = 0; n < BATCH; n++)
        memset(b->masks + ((size_t)n * LABELS + 1) * OUT * OUT, 0, OUT * OUT);
    float losses[LABELS + 3];
    step_ok(t, b, losses);
    ck_assert(isnan(losses[1]) && !isnan(losses[0]));
    ck_assert(fabs(losses[2] - losses[0]) < 1e-7); /* the label loss: head 0 alone */
    isl_model *after;
    ck_assert_int_eq(isl_trainer_model(t, &after), ISL_OK);
    const isl_head_params *h0 = &m->params.heads[0], *h1 = &m->params.heads[1];
    size_t n = (size_t)h1->out_ch * 2 * m->params.arch.trunk_ch;
    ck_assert(memcmp(h1->weight, after->params.heads[1].weight, sizeof(float) * n) == 0);
    ck_assert(memcmp(h1->bias, after->params.heads[1].bias, sizeof(float) * 256) == 0);
    ck_assert(memcmp(h0->weight, after->params.heads[0].weight, sizeof(float) * n) != 0);

    /* Head 1's first update comes at step 2 and is bias-corrected as a first update
     * (torch.optim.Adam counts a parameter's own steps): each weight moves by the learning
     * rate, lr |g| / (|g| + eps), where the trainer's step count (2) would give 0.74 lr.
     * A checkpoint keeps each head's count: resumed, the step is the same. */
    char *path = test_temp_path("absent");
    ck_assert_msg(isl_trainer_save(t, path) == ISL_OK, "%s", isl_last_error());
    batch *full = random_batch(53);
    step_ok(t, full, losses);
    ck_assert(!isnan(losses[1]));
    isl_model *second;
    ck_assert_int_eq(isl_trainer_model(t, &second), ISL_OK);
    size_t near_lr = 0, moved = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)second->params.heads[1].weight[i] -
                              after->params.heads[1].weight[i]);
        moved += d > 0;
        near_lr += fabs(d / 1e-3 - 1) < 0.01;
    }
    printf("head 1's first update at step 2: %zu of %zu weights moved by the rate +- 1%%\n",
           near_lr, n);
    ck_assert(moved > n / 2 && near_lr > 9 * moved / 10);
    isl_trainer *u = NULL;
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, 1e-3), ISL_OK);
    ck_assert_msg(isl_trainer_load(path, o, &u) == ISL_OK, "%s", isl_last_error());
    isl_train_options_free(o);
    step_ok(u, full, losses);
    isl_model *resumed;
    ck_assert_int_eq(isl_trainer_model(u, &resumed), ISL_OK);
    ck_assert(test_models_equal(second, resumed));
    remove(path);
    free(path);
    free(full);
    isl_model_free(resumed);
    isl_model_free(second);
    isl_trainer_free(u);
    isl_model_free(after);

    /* No label known at all: the autoencoder half alone. */
    isl_train_batch tb = api_batch(b);
    tb.targets = NULL;
    tb.masks = NULL;
    ck_assert_int_eq(isl_train_step(t, &tb, losses), ISL_OK);
    ck_assert(isnan(losses[0]) && isnan(losses[1]) && isnan(losses[2]));
    ck_assert(fabs(losses[4] - 0.5 * losses[3]) < 1e-7);
    isl_trainer_free(t);

    /* Nothing to learn (label weight 1, no label known): the step changes nothing, not
     * even the batch-norm moving averages a forward pass with batch statistics would
     * update, and does not count. */
    isl_train_options *o1;
    ck_assert_int_eq(isl_train_options_create(&o1), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_label_weight(o1, 1), ISL_OK);
    isl_trainer *v = test_trainer_create(m, o1);
    memset(b->masks, 0, sizeof(b->masks));
    step_ok(v, b, losses);
    ck_assert(isnan(losses[0]) && isnan(losses[1]) && isnan(losses[2]) && isnan(losses[3]));
    ck_assert(losses[4] == 0);
    ck_assert_int_eq(isl_trainer_step_count(v), 0);
    isl_model *unchanged;
    ck_assert_int_eq(isl_trainer_model(v, &unchanged), ISL_OK);
    ck_assert(test_models_equal(m, unchanged));
    isl_model_free(unchanged);
    isl_trainer_free(v);
    isl_model_free(m);
    free(b);
}
END_TEST

/* Batch mean and unbiased variance of channel c of the first tower's input (a crop of the
 * projection) over a batch, in double. */
static void first_input_stats(const isl_params *p, const batch *b, int c, double *mean,
                              double *var)
{
    const int border = (250 - 72) / 2;
    double s = 0, ss = 0;
    long n = 0;
    for (int i = 0; i < BATCH; i++)
        for (int y = border; y < SIDE - border; y++)
            for (int x = border; x < SIDE - border; x++) {
                double v = p->projection_bias[c];
                for (int z = 0; z < NZ; z++)
                    v += p->projection_weight[c * NZ + z] *
                         b->inputs[(((size_t)i * NZ + z) * SIDE + y) * SIDE + x];
                s += v;
                ss += v * v;
                n++;
            }
    *mean = s / n;
    *var = (ss - s * s / n) / (n - 1);
}

START_TEST(batch_norm_statistics)
{
    isl_model *m = api_model(61);
    batch *b1 = random_batch(62), *b2 = random_batch(63);
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_bn_decay(o, 0.9), ISL_OK);
    isl_trainer *t = NULL;
    ck_assert_int_eq(isl_trainer_create(m, o, &t), ISL_OK);
    isl_train_options_free(o);

    /* A step folds the batch into the moving averages (initially mean 0, var 1). */
    isl_model *s;
    float losses[LABELS + 3];
    step_ok(t, b1, losses);
    ck_assert_int_eq(isl_trainer_model(t, &s), ISL_OK);
    for (int c = 0; c < 16; c++) {
        double mean, var;
        first_input_stats(&m->params, b1, c, &mean, &var);
        const isl_bn_params *bn = &s->params.modules[0].bn1;
        ck_assert(fabs(bn->mean[c] - 0.1 * mean) < 1e-5 * (1 + fabs(mean)));
        ck_assert(fabs(bn->var[c] - (0.9 + 0.1 * var)) < 1e-5 * (1 + var));
    }
    isl_model_free(s);

    /* Re-estimation: batch k weighs 1 / (k + 1), so two batches give their mean. Running
     * statistics never enter a training-mode forward, so every layer can be checked. */
    isl_train_batch tb1 = api_batch(b1), tb2 = api_batch(b2);
    isl_model *a, *ab, *bb;
    ck_assert_int_eq(isl_trainer_estimate_bn(t, &tb1, 0), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(t, &a), ISL_OK);
    ck_assert_int_eq(isl_trainer_estimate_bn(t, &tb2, 1), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(t, &ab), ISL_OK);
    ck_assert_int_eq(isl_trainer_estimate_bn(t, &tb2, 0), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(t, &bb), ISL_OK);
    ck_assert_int_eq(isl_trainer_step_count(t), 1);
    isl_params *pa = &a->params, *pab = &ab->params, *pbb = &bb->params;
    for (int c = 0; c < 16; c++) {
        double mean, var;
        first_input_stats(pa, b1, c, &mean, &var); /* the weights after the step */
        ck_assert(fabs(pa->modules[0].bn1.mean[c] - mean) < 1e-5 * (1 + fabs(mean)));
        ck_assert(fabs(pa->modules[0].bn1.var[c] - var) < 1e-5 * (1 + var));
    }
    for (int i = 0; i < pa->arch.num_modules; i++) {
        const isl_bn_params *x[3] = {&pa->modules[i].bn2, &pab->modules[i].bn2,
                                     &pbb->modules[i].bn2};
        for (int c = 0; c < x[0]->channels; c++) {
            ck_assert(fabs(x[1]->mean[c] - 0.5 * (x[0]->mean[c] + x[2]->mean[c])) <
                      1e-5 * (1 + fabs(x[1]->mean[c])));
            ck_assert(fabs(x[1]->var[c] - 0.5 * (x[0]->var[c] + x[2]->var[c])) <
                      1e-5 * (1 + x[1]->var[c]));
        }
    }
    isl_model_free(a);
    isl_model_free(ab);
    isl_model_free(bb);
    isl_trainer_free(t);
    isl_model_free(m);
    free(b1);
    free(b2);
}
END_TEST

/* Options of rate 1e-3 and the seed, with dropout at the rate (none when negative). */
static isl_train_options *dropout_options(uint64_t seed, double rate, int whole)
{
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, 1e-3), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_seed(o, seed), ISL_OK);
    if (rate >= 0)
        ck_assert_int_eq(isl_train_options_set_dropout(o, rate, whole), ISL_OK);
    return o;
}

static isl_trainer *dropout_trainer(const isl_model *m, uint64_t seed, double rate, int whole)
{
    return test_trainer_create(m, dropout_options(seed, rate, whole));
}

/* The trainer's dropout: rate 0 is no dropout, bit for bit; a rate changes the step and
 * the seed the mask; a resumed run drops what an uninterrupted one does; bad rates are
 * refused. */
START_TEST(dropout_in_training)
{
    isl_model *m = api_model(81);
    batch *b1 = random_batch(82), *b2 = random_batch(83);
    float l0[LABELS + 3], lz[LABELS + 3], ld[LABELS + 3], ls[LABELS + 3];
    isl_trainer *plain = dropout_trainer(m, 7, -1, 0), *zero = dropout_trainer(m, 7, 0, 0),
                *dropped = dropout_trainer(m, 7, 0.3, 0), *seeded = dropout_trainer(m, 8, 0.3, 0);
    step_ok(plain, b1, l0);
    step_ok(zero, b1, lz);
    step_ok(dropped, b1, ld);
    step_ok(seeded, b1, ls);
    test_assert_losses_equal(l0, lz, LABELS + 3);
    printf("first step's total loss: without dropout %.6f, 0.3 seed 7 %.6f, seed 8 %.6f\n",
           l0[LABELS + 2], ld[LABELS + 2], ls[LABELS + 2]);
    ck_assert(fabsf(ld[LABELS + 2] - l0[LABELS + 2]) > 1e-4);
    ck_assert(fabsf(ld[LABELS + 2] - ls[LABELS + 2]) > 1e-4);
    step_ok(plain, b2, l0);
    step_ok(zero, b2, lz);
    isl_model *mp, *mz;
    ck_assert_int_eq(isl_trainer_model(plain, &mp), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(zero, &mz), ISL_OK);
    ck_assert(test_models_equal(mp, mz));

    /* Resumed after step 1 (the option given again) = not stopped. */
    char *path = test_temp_path("checkpoint");
    ck_assert_msg(isl_trainer_save(dropped, path) == ISL_OK, "%s", isl_last_error());
    step_ok(dropped, b2, ld);
    isl_train_options *o = dropout_options(7, 0.3, 0);
    isl_trainer *resumed = NULL;
    ck_assert_msg(isl_trainer_load(path, o, &resumed) == ISL_OK, "%s", isl_last_error());
    isl_train_options_free(o);
    step_ok(resumed, b2, ls);
    test_assert_losses_equal(ld, ls, LABELS + 3);
    isl_model *md, *mr;
    ck_assert_int_eq(isl_trainer_model(dropped, &md), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(resumed, &mr), ISL_OK);
    ck_assert(test_models_equal(md, mr));

    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_dropout(o, -0.1, 0), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_dropout(o, 0.95, 1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_dropout(o, NAN, 0), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_dropout(NULL, 0.1, 0), ISL_ERROR_INVALID_ARGUMENT);
    isl_train_options_free(o);

    remove(path);
    free(path);
    isl_model_free(mp);
    isl_model_free(mz);
    isl_model_free(md);
    isl_model_free(mr);
    isl_trainer_free(plain);
    isl_trainer_free(zero);
    isl_trainer_free(dropped);
    isl_trainer_free(seeded);
    isl_trainer_free(resumed);
    isl_model_free(m);
    free(b1);
    free(b2);
}
END_TEST

/* Stochastic depth through the trainer: rate 0 is no stochastic depth; a step with it
 * differs; the batch-norm statistics estimated after such a step use every module (those
 * of a trainer without it, from the same weights); bad rates are refused. */
static isl_trainer *depth_trainer(const isl_model *m, double rate)
{
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_seed(o, 7), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, 1e-3), ISL_OK);
    if (rate >= 0)
        ck_assert_int_eq(isl_train_options_set_stochastic_depth(o, rate), ISL_OK);
    isl_trainer *t = NULL;
    ck_assert_msg(isl_trainer_create(m, o, &t) == ISL_OK, "%s", isl_last_error());
    isl_train_options_free(o);
    return t;
}

START_TEST(stochastic_depth_in_training)
{
    isl_model *m = api_model(91);
    batch *b1 = random_batch(92), *b2 = random_batch(93);
    float l0[LABELS + 3], lz[LABELS + 3], ld[LABELS + 3];
    isl_trainer *plain = depth_trainer(m, -1), *zero = depth_trainer(m, 0),
                *deep = depth_trainer(m, 0.5);
    step_ok(plain, b1, l0);
    step_ok(zero, b1, lz);
    step_ok(deep, b1, ld);
    test_assert_losses_equal(l0, lz, LABELS + 3);
    printf("first step's total loss: without stochastic depth %.6f, with 0.5 %.6f\n",
           l0[LABELS + 2], ld[LABELS + 2]);
    ck_assert(fabsf(ld[LABELS + 2] - l0[LABELS + 2]) > 1e-4);

    /* Statistics estimated after the step: every module's, as a trainer without
     * stochastic depth estimates them from the same weights. */
    isl_model *after, *est, *ref;
    ck_assert_int_eq(isl_trainer_model(deep, &after), ISL_OK);
    isl_trainer *other = depth_trainer(after, -1);
    isl_train_batch tb2 = api_batch(b2);
    ck_assert_int_eq(isl_trainer_estimate_bn(deep, &tb2, 0), ISL_OK);
    ck_assert_int_eq(isl_trainer_estimate_bn(other, &tb2, 0), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(deep, &est), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(other, &ref), ISL_OK);
    ck_assert(!test_models_equal(after, est)); /* the estimate changed them */
    ck_assert(test_models_equal(est, ref));

    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_stochastic_depth(o, -0.1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_stochastic_depth(o, 0.95), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_stochastic_depth(o, NAN), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_stochastic_depth(NULL, 0.1), ISL_ERROR_INVALID_ARGUMENT);
    isl_train_options_free(o);

    isl_model_free(after);
    isl_model_free(est);
    isl_model_free(ref);
    isl_trainer_free(plain);
    isl_trainer_free(zero);
    isl_trainer_free(deep);
    isl_trainer_free(other);
    isl_model_free(m);
    free(b1);
    free(b2);
}
END_TEST

/* Keeping the activations (isl_train_options_set_keep_activations) changes no result: two
 * steps with and without it give the same losses and the same model, bit for bit, with
 * batch statistics; with frozen statistics, dropout of the heads' inputs and stochastic
 * depth (the recipe's kind of step: the kept head inputs are the dropped ones); and with a
 * frozen trunk and whole-channel dropout. The steps change the model, so equal models
 * are not the trivial case. */
static isl_trainer *keep_trainer(const isl_model *m, int variant, int keep)
{
    isl_train_options *o = dropout_options(7, variant ? 0.3 : -1, variant == 2);
    ck_assert_int_eq(isl_train_options_set_keep_activations(o, keep), ISL_OK);
    if (variant == 1) {
        ck_assert_int_eq(isl_train_options_set_freeze_bn(o, 1), ISL_OK);
        ck_assert_int_eq(isl_train_options_set_stochastic_depth(o, 0.5), ISL_OK);
    } else if (variant == 2) {
        ck_assert_int_eq(isl_train_options_set_freeze_trunk(o, 1), ISL_OK);
    }
    return test_trainer_create(m, o);
}

START_TEST(kept_activations_change_nothing)
{
    static const char *const variants[] = {"batch statistics",
                                           "frozen statistics, dropout, stochastic depth",
                                           "frozen trunk, whole-channel dropout"};
    isl_model *m = api_model(95);
    batch *b1 = random_batch(96), *b2 = random_batch(97);
    for (int v = 0; v < 3; v++) {
        isl_trainer *recomputed = keep_trainer(m, v, 0), *kept = keep_trainer(m, v, 1);
        float lr[LABELS + 3], lk[LABELS + 3];
        for (int s = 0; s < 2; s++) {
            step_ok(recomputed, s ? b2 : b1, lr);
            step_ok(kept, s ? b2 : b1, lk);
            test_assert_losses_equal(lr, lk, LABELS + 3);
        }
        isl_model *mr, *mk;
        ck_assert_int_eq(isl_trainer_model(recomputed, &mr), ISL_OK);
        ck_assert_int_eq(isl_trainer_model(kept, &mk), ISL_OK);
        ck_assert_msg(!test_models_equal(m, mr), "%s: the steps changed nothing", variants[v]);
        ck_assert_msg(test_models_equal(mr, mk), "%s: kept activations changed the model",
                      variants[v]);
        printf("kept activations, %s: second step's total loss %.6f both ways\n", variants[v],
               lk[LABELS + 2]);
        isl_model_free(mr);
        isl_model_free(mk);
        isl_trainer_free(recomputed);
        isl_trainer_free(kept);
    }
    ck_assert_int_eq(isl_train_options_set_keep_activations(NULL, 1), ISL_ERROR_INVALID_ARGUMENT);
    isl_model_free(m);
    free(b1);
    free(b2);
}
END_TEST

START_TEST(invalid_batches_and_options)
{
    isl_model *m = api_model(71);
    isl_trainer *t = api_trainer(m, 1e-4);
    batch *b = random_batch(72);
    isl_train_batch tb = api_batch(b);
    float losses[LABELS + 3];
    tb.height = 251;
    ck_assert_int_eq(isl_train_step(t, &tb, losses), ISL_ERROR_SHAPE);
    tb.height = SIDE;
    tb.batch_size = 0;
    ck_assert_int_eq(isl_train_step(t, &tb, losses), ISL_ERROR_SHAPE);
    tb.batch_size = BATCH;
    b->inputs[5] = 1.5f;
    ck_assert_int_eq(isl_train_step(t, &tb, losses), ISL_ERROR_VALUE);
    b->inputs[5] = 0.5f;
    b->targets[3] = NAN; /* known pixel */
    ck_assert_int_eq(isl_train_step(t, &tb, losses), ISL_ERROR_VALUE);
    b->masks[3] = 0; /* unknown: ignored */
    ck_assert_int_eq(isl_train_step(t, &tb, losses), ISL_OK);
    ck_assert_int_eq(isl_train_step(t, NULL, losses), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_step(NULL, &tb, losses), ISL_ERROR_INVALID_ARGUMENT);

    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, -1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_label_weight(o, 1.5), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_bn_decay(o, 1.0), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_adam(o, 1.0, 0.999, 1e-8), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_rate_drop(o, 10, 0), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_threads(o, -1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_weight_decay(o, -1e-4), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_weight_decay(o, NAN), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_train_options_set_weight_decay(o, 0.05), ISL_OK);
    /* A decay whose product with the rate reaches 1 would zero or flip every weight. */
    ck_assert_int_eq(isl_train_options_set_weight_decay(o, 1e4), ISL_OK);
    isl_trainer *decayed = NULL;
    ck_assert_int_eq(isl_trainer_create(m, o, &decayed), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_ptr_null(decayed);
    ck_assert_ptr_nonnull(strstr(isl_last_error(), "weight decay"));
    isl_train_options_free(o);
    isl_trainer *none = NULL;
    ck_assert_int_eq(isl_trainer_create(NULL, NULL, &none), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_trainer_load("/nonexistent/x.h5", NULL, &none), ISL_ERROR_IO);
    isl_trainer_free(NULL);
    isl_trainer_free(t);
    isl_model_free(m);
    free(b);
}
END_TEST

/* The getters read back what was set, and with NULL the defaults isl.h documents (the
 * paper's Adam rate, w = 0.5, decay 0.99, all cores, seed 0; 1.75 GiB of memory). */
START_TEST(option_getters)
{
    ck_assert_double_eq(isl_train_options_get_learning_rate(NULL), 1e-4);
    ck_assert_double_eq(isl_train_options_get_label_weight(NULL), 0.5);
    ck_assert_double_eq(isl_train_options_get_bn_decay(NULL), 0.99);
    ck_assert_int_eq(isl_train_options_get_threads(NULL), 0);
    ck_assert_uint_eq(isl_train_options_get_seed(NULL), 0);
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_double_eq(isl_train_options_get_bn_decay(o), 0.99);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, 3e-4), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_label_weight(o, 1), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_bn_decay(o, 0.9), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_threads(o, 3), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_seed(o, UINT64_MAX), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_bn_decay(o, 1.0), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_double_eq(isl_train_options_get_learning_rate(o), 3e-4);
    ck_assert_double_eq(isl_train_options_get_label_weight(o), 1);
    ck_assert_double_eq(isl_train_options_get_bn_decay(o), 0.9);
    ck_assert_int_eq(isl_train_options_get_threads(o), 3);
    ck_assert_uint_eq(isl_train_options_get_seed(o), UINT64_MAX);
    isl_train_options_free(o);

    ck_assert_uint_eq(isl_predict_options_get_memory_limit(NULL), (size_t)1792 << 20);
    ck_assert_int_eq(isl_predict_options_get_threads(NULL), 0);
    isl_predict_options *p;
    ck_assert_int_eq(isl_predict_options_create(&p), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_memory_limit(p, 12345), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_threads(p, 2), ISL_OK);
    ck_assert_uint_eq(isl_predict_options_get_memory_limit(p), 12345);
    ck_assert_int_eq(isl_predict_options_get_threads(p), 2);
    ck_assert_int_eq(isl_predict_options_set_memory_limit(p, 0), ISL_OK); /* 0: the default */
    ck_assert_uint_eq(isl_predict_options_get_memory_limit(p), (size_t)1792 << 20);
    isl_predict_options_free(p);
}
END_TEST

/* The parallel kernels against one thread: same logits and gradients (the custom kernels
 * are bitwise equal by design; oneDNN may sum in another order). */
START_TEST(threads_agree)
{
    isl_params p;
    random_params(&p, 81);
    batch *b = random_batch(82);
    engine e[2] = {{0}, {0}};
    test_arr_list *g[2];
    const int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        engine_open(&e[k], &p, 1);
        engine_run(&e[k], b, 1);
        g[k] = test_arrays_of(&e[k].g);
    }
    omp_set_num_threads(saved);
    double worst = 0;
    for (int i = 0; i < g[0]->count; i++) {
        if (!strcmp(g[0]->a[i].path, "/projection/bias"))
            continue; /* 0 up to rounding (see g_projection) */
        double scale = 0, diff = 0;
        for (size_t j = 0; j < g[0]->a[i].count; j++) {
            scale = fmax(scale, fabs(g[0]->a[i].data[j]));
            diff = fmax(diff, fabs(g[0]->a[i].data[j] - g[1]->a[i].data[j]));
        }
        if (scale > 0)
            worst = fmax(worst, diff / scale);
        ck_assert_msg(diff <= 1e-4 * scale + 1e-12, "%s: %g vs scale %g", g[0]->a[i].path, diff,
                      scale);
    }
    for (int h = 0; h < HEADS; h++)
        for (size_t j = 0; j < (size_t)BATCH * p.heads[h].out_ch * OUT * OUT; j++)
            ck_assert(fabsf(e[0].logits[h][j] - e[1].logits[h][j]) < 1e-5f);
    ck_assert(fabs(e[0].losses[LABELS + 2] - e[1].losses[LABELS + 2]) < 1e-6);
    printf("1 vs 2 threads: largest gradient difference %.1e of its array's largest value\n",
           worst);
    for (int k = 0; k < 2; k++) {
        free(g[k]);
        engine_close(&e[k]);
    }
    isl_params_free(&p);
    free(b);
}
END_TEST

/* ------------------------------------------------------------------------------------ */
/* Dump mode, for the PyTorch oracle (tests/python/cli/test_train_oracle.py)                */
/* ------------------------------------------------------------------------------------ */

/* test_train --dump MODEL BATCH OUT [RATE WHOLE SEED STEP]: one training-mode forward and
 * backward of MODEL on the batch in BATCH (group /batch: attributes batch, height, width;
 * float32 datasets inputs, targets, masks), label weight 0.5, no update, with dropout of
 * the heads' inputs when RATE... are given (isl_train_net_set_dropout). OUT is a model
 * file holding the gradients, plus /logits/<head>, /losses (as isl_train_step reports
 * them) and /input_grad. */
typedef struct dump_ctx {
    const isl_params *p;
    int B, H, W, oh, ow, L, nz;
    float *inputs, *targets, *maskf, *logits[64], *losses, *input_grad;
} dump_ctx;

static isl_status read_dump_batch(void *user, isl_h5_file *f)
{
    dump_ctx *c = user;
    uint64_t B, H, W;
    ISL_CHECK(isl_h5_read_u64_attr(f, "/batch", "batch", &B));
    ISL_CHECK(isl_h5_read_u64_attr(f, "/batch", "height", &H));
    ISL_CHECK(isl_h5_read_u64_attr(f, "/batch", "width", &W));
    c->B = (int)B;
    c->H = (int)H;
    c->W = (int)W;
    c->oh = isl_arch_output_side(c->H);
    c->ow = isl_arch_output_side(c->W);
    if (c->oh < 0 || c->ow < 0 || B < 1 || B > 64)
        return isl_fail(ISL_ERROR_SHAPE, "bad batch shape");
    int64_t in[4] = {c->B, c->nz, c->H, c->W}, lab[4] = {c->B, c->L, c->oh, c->ow};
    c->inputs = malloc(sizeof(float) * (size_t)(in[0] * in[1] * in[2] * in[3]));
    c->targets = malloc(sizeof(float) * (size_t)(lab[0] * lab[1] * lab[2] * lab[3] + 1));
    c->maskf = malloc(sizeof(float) * (size_t)(lab[0] * lab[1] * lab[2] * lab[3] + 1));
    ISL_CHECK(isl_h5_read_floats(f, "/batch/inputs", 4, in, c->inputs));
    ISL_CHECK(isl_h5_read_floats(f, "/batch/targets", 4, lab, c->targets));
    return isl_h5_read_floats(f, "/batch/masks", 4, lab, c->maskf);
}

static isl_status write_dump(void *user, isl_h5_file *f)
{
    dump_ctx *c = user;
    char path[128];
    for (int h = 0; h < c->p->num_heads; h++) {
        int64_t d[4] = {c->B, c->p->heads[h].out_ch, c->oh, c->ow};
        snprintf(path, sizeof(path), "/logits/%s", c->p->heads[h].name);
        ISL_CHECK(isl_h5_write_floats(f, path, 4, d, c->logits[h]));
    }
    int64_t nl[1] = {c->L + 3}, in[4] = {c->B, c->nz, c->H, c->W};
    ISL_CHECK(isl_h5_write_floats(f, "/losses", 1, nl, c->losses));
    return isl_h5_write_floats(f, "/input_grad", 4, in, c->input_grad);
}

static int dump(const char *model_path, const char *batch_path, const char *out_path,
                const rt_dropout *drop)
{
    isl_model *m = NULL;
    isl_params g = {0};
    dnnl_engine_t eng = NULL;
    isl_train_net *net = NULL;
    uint8_t *masks = NULL;
    dump_ctx c = {0};
    float fl[67];
    double losses[67];
    int rc = 1;
    if (isl_model_load(model_path, &m) != ISL_OK)
        goto done;
    isl_params *p = &m->params;
    c.p = p;
    c.nz = p->arch.num_z;
    c.L = p->num_heads - 1;
    if (c.L < 0 || c.L > 60 || strcmp(p->heads[c.L].name, ISL_AUTOENCODER_NAME)) {
        isl_fail(ISL_ERROR_INVALID_ARGUMENT, "the model needs an autoencoder and <= 60 labels");
        goto done;
    }
    if (isl_h5_read_file(batch_path, read_dump_batch, &c) != ISL_OK)
        goto done;
    const char *names[64];
    for (int h = 0; h < c.L; h++)
        names[h] = p->heads[h].name;
    if (isl_params_alloc(&g, p->arch.base_depth, c.nz, c.L, names, 1) ||
        dnnl_engine_create(&eng, dnnl_cpu, 0) != dnnl_success ||
        isl_train_net_create(p, &g, eng, c.B, c.H, c.W, ISL_NET_INPUT_GRAD, &net) != ISL_OK)
        goto done;
    size_t lab = (size_t)c.B * c.L * c.oh * c.ow;
    masks = malloc(lab + 1);
    for (size_t i = 0; i < lab; i++)
        masks[i] = c.maskf[i] != 0;
    isl_loss_batch lb = {c.B, c.L, c.nz, c.H, c.W, c.oh, c.ow, c.inputs, c.targets, masks, 0};
    int64_t counts[64];
    int active[64];
    isl_loss_label_counts(&lb, counts);
    for (int h = 0; h < c.L; h++)
        active[h] = counts[h] > 0;
    active[c.L] = 1;
    memcpy(isl_train_net_input(net), c.inputs, sizeof(float) * (size_t)c.B * c.nz * c.H * c.W);
    isl_train_net_set_dropout(net, drop->rate, drop->whole_channels, drop->seed, drop->step, 0);
    if (isl_train_net_forward(net, active, 0, ISL_NET_BATCH_STATS) != ISL_OK)
        goto done;
    const float *lg[64];
    float *dl[64];
    for (int h = 0; h <= c.L; h++) {
        lg[h] = isl_train_net_logits(net, h);
        dl[h] = isl_train_net_dlogits(net, h);
        size_t n = (size_t)c.B * p->heads[h].out_ch * c.oh * c.ow;
        c.logits[h] = calloc(n, sizeof(float));
        if (lg[h])
            memcpy(c.logits[h], lg[h], sizeof(float) * n);
    }
    if (isl_loss_compute(&lb, lg, dl, counts, 0.5, losses) ||
        isl_train_net_backward(net) != ISL_OK)
        goto done;
    for (int i = 0; i < c.L + 3; i++)
        fl[i] = (float)losses[i];
    c.losses = fl;
    c.input_grad = (float *)isl_train_net_input_grad(net);
    if (isl_model_write_h5_extra(out_path, &g, write_dump, &c) == ISL_OK)
        rc = 0;
done:
    if (rc)
        fprintf(stderr, "test_train --dump: %s\n", isl_last_error());
    for (int h = 0; h < 64; h++)
        free(c.logits[h]);
    free(c.inputs);
    free(c.targets);
    free(c.maskf);
    free(masks);
    isl_train_net_free(net);
    if (eng)
        dnnl_engine_destroy(eng);
    isl_params_free(&g);
    isl_model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    /* One thread unless told otherwise, as the Python tests: on a shared, busy machine
     * OpenMP teams mostly wait for each other. threads_agree runs two. */
    const char *threads = getenv("ISL_TEST_THREADS");
    omp_set_num_threads(threads && atoi(threads) > 0 ? atoi(threads) : 1);
    if ((argc == 5 || argc == 9) && !strcmp(argv[1], "--dump")) {
        rt_dropout drop = {0};
        if (argc == 9)
            drop = (rt_dropout){strtod(argv[5], NULL), atoi(argv[6]),
                                strtoull(argv[7], NULL, 10), strtoll(argv[8], NULL, 10)};
        return dump(argv[2], argv[3], argv[4], &drop);
    }
    const test_case cases[] = {{"loss", loss_values_and_gradient},
                 {"adam", adam_matches_the_formula},
                 {"adam_weight_decay", adam_weight_decay_is_decoupled},
                 {"masks", masked_labels_get_no_gradient},
                 {"decrease", loss_decreases_on_a_fixed_batch},
                 {"resume", resuming_equals_not_stopping},
                 {"absent_heads", absent_heads_are_not_updated},
                 {"average", weight_average},
                 {"batch_norm", batch_norm_statistics},
                 {"invalid", invalid_batches_and_options},
                 {"option_getters", option_getters},
                 {"threads", threads_agree},
                 {"gradients", gradients_match_finite_differences},
                 {"gradients_stored", gradients_with_stored_statistics},
                 {"gradients_dropout", gradients_with_dropout},
                 {"dropout_mask", dropout_mask},
                 {"dropout", dropout_in_training},
                 {"stochastic_depth_net", stochastic_depth_equals_scaled_branches},
                 {"stochastic_depth", stochastic_depth_in_training},
                 {"keep_activations", kept_activations_change_nothing},
                 {"jit_kernels", train_net_uses_no_reference_kernels}};
    return test_run_cases("train", cases, sizeof(cases) / sizeof(cases[0]), 600);
}
