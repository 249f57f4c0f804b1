/* The training engine: gradients against central finite differences of an independent
 * double-precision reference (tests/ref_train.h), the loss, Adam, masking, and the public
 * training API (steps, checkpoints and resuming, batch-norm re-estimation). */
#include "adam.h"
#include "isl.h"
#include "loss.h"
#include "model.h"
#include "ref_train.h"
#include "test_util.h"
#include "train_net.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BASE 8
#define NZ 2
#define LABELS 2
#define HEADS (LABELS + 1)
#define BATCH 2
#define SIDE 250
#define OUT 8

static const char *head_names[LABELS] = {"dapi_confocal", "nfh_confocal"};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

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
    for (int h = 0; h < p->num_heads; h++)
        for (int i = 0; i < p->heads[h].out_ch * 2 * p->arch.trunk_ch; i++)
            p->heads[h].weight[i] *= 50.0f;
}

typedef struct batch {
    float inputs[BATCH * NZ * SIDE * SIDE];
    float targets[BATCH * LABELS * OUT * OUT];
    uint8_t masks[BATCH * LABELS * OUT * OUT];
    float ae_targets[BATCH * NZ * OUT * OUT]; /* the center of the inputs */
} batch;

/* Label 0 known everywhere, label 1 on a diagonal half of the pixels of image 0 only. */
static batch *random_batch(uint64_t seed)
{
    batch *b = malloc(sizeof(*b));
    uint64_t s = seed;
    for (size_t i = 0; i < sizeof(b->inputs) / sizeof(float); i++)
        b->inputs[i] = (float)test_uniform(&s);
    for (int n = 0; n < BATCH; n++)
        for (int l = 0; l < LABELS; l++)
            for (int y = 0; y < OUT; y++)
                for (int x = 0; x < OUT; x++) {
                    size_t i = (((size_t)n * LABELS + l) * OUT + y) * OUT + x;
                    b->targets[i] = (float)(test_uniform(&s) * test_uniform(&s));
                    b->masks[i] = l == 0 || (n == 0 && x >= y);
                }
    for (int n = 0; n < BATCH; n++)
        for (int z = 0; z < NZ; z++)
            for (int y = 0; y < OUT; y++)
                for (int x = 0; x < OUT; x++)
                    b->ae_targets[(((size_t)n * NZ + z) * OUT + y) * OUT + x] =
                        b->inputs[(((size_t)n * NZ + z) * SIDE + y + 121) * SIDE + x + 121];
    return b;
}

static __attribute__((unused)) isl_train_batch api_batch(const batch *b)
{
    isl_train_batch tb = {BATCH, SIDE, SIDE, b->inputs, b->targets, b->masks};
    return tb;
}

/* The reference's total loss (label weight 0.5) for params and inputs. */
static double ref_loss(const isl_params *p, const float *inputs, const batch *b)
{
    ref_t in[BATCH], logits[BATCH * HEADS];
    for (int n = 0; n < BATCH; n++) {
        in[n] = ref_new(NZ, SIDE, SIDE);
        for (size_t i = 0; i < (size_t)NZ * SIDE * SIDE; i++)
            in[n].v[i] = inputs[(size_t)n * NZ * SIDE * SIDE + i];
    }
    rt_network(p, in, BATCH, logits);
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
} engine;

static void engine_open(engine *e, isl_params *p, int input_grad)
{
    e->p = p;
    ck_assert_int_eq(isl_params_alloc(&e->g, BASE, NZ, LABELS, head_names, 1), 0);
    ck_assert_int_eq(dnnl_engine_create(&e->eng, dnnl_cpu, 0), dnnl_success);
    ck_assert_msg(isl_train_net_create(p, &e->g, e->eng, BATCH, SIDE, SIDE, input_grad, &e->net) ==
                      ISL_OK,
                  "%s", isl_last_error());
}

static void engine_close(engine *e)
{
    isl_train_net_free(e->net);
    dnnl_engine_destroy(e->eng);
    isl_params_free(&e->g);
}

static isl_loss_batch loss_batch(const batch *b)
{
    isl_loss_batch lb = {BATCH, LABELS, NZ, SIDE, SIDE, OUT, OUT, b->inputs, b->targets, b->masks};
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
    ck_assert_msg(isl_train_net_forward(e->net, active, 0) == ISL_OK, "%s", isl_last_error());
    const float *logits[HEADS];
    float *dlogits[HEADS];
    for (int h = 0; h < HEADS; h++) {
        logits[h] = isl_train_net_logits(e->net, h);
        dlogits[h] = isl_train_net_dlogits(e->net, h);
    }
    ck_assert_int_eq(isl_loss_compute(&lb, logits, dlogits, counts, 0.5, e->losses), 0);
    if (backward)
        ck_assert_msg(isl_train_net_backward(e->net) == ISL_OK, "%s", isl_last_error());
}

/* ------------------------------------------------------------------------------------ */
/* Parameter groups                                                                     */
/* ------------------------------------------------------------------------------------ */

typedef struct arr {
    char path[128];
    float *data;
    size_t count;
} arr;

typedef struct arr_list {
    arr a[2048];
    int count;
} arr_list;

static int list_arrays(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    arr_list *l = user;
    arr *a = &l->a[l->count++];
    snprintf(a->path, sizeof(a->path), "%s", path);
    a->data = data;
    a->count = 1;
    for (int i = 0; i < rank; i++)
        a->count *= (size_t)dims[i];
    return 0;
}

typedef int (*group_fn)(const isl_params *p, const char *path);

static int module_of(const char *path)
{
    int i = -1;
    return sscanf(path, "/modules/%d/", &i) == 1 ? i : -1;
}

static int has(const char *path, const char *part) { return strstr(path, part) != NULL; }

static int expand_of(const isl_params *p, const char *path, isl_module_kind kind)
{
    int i = module_of(path);
    return i >= 0 && has(path, "/expand/") && p->arch.modules[i].kind == kind;
}

static const char *debug_path;
static int g_debug(const isl_params *p, const char *s) { (void)p; return !strcmp(s, debug_path); }
static int g_projection(const isl_params *p, const char *s) { (void)p; return has(s, "/projection/"); }
static int g_proj_w(const isl_params *p, const char *s) { (void)p; return has(s, "/projection/weight"); }
static int g_proj_b(const isl_params *p, const char *s) { (void)p; return has(s, "/projection/bias"); }
static int g_expand_in(const isl_params *p, const char *s) { return expand_of(p, s, ISL_MODULE_IN); }
static int g_expand_down(const isl_params *p, const char *s) { return expand_of(p, s, ISL_MODULE_DOWN); }
static int g_expand_up(const isl_params *p, const char *s) { return expand_of(p, s, ISL_MODULE_UP); }
static int g_reduce(const isl_params *p, const char *s) { (void)p; return has(s, "/reduce/"); }
static int g_bn_gamma(const isl_params *p, const char *s) { (void)p; return has(s, "/modules/") && has(s, "/gamma"); }
static int g_bn_beta(const isl_params *p, const char *s) { (void)p; return has(s, "/modules/") && has(s, "/beta"); }
static int g_label_head(const isl_params *p, const char *s)
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

/* Central difference of the reference loss along a random direction of the group's
 * parameters against the engine's gradient projected on the same (float-rounded) step. */
static void check_direction(isl_params *p, const batch *b, const arr_list *pl,
                            const arr_list *gl, group_fn group, const char *name, uint64_t seed,
                            double tol)
{
    size_t total = 0;
    for (int i = 0; i < pl->count; i++)
        if (group(p, pl->a[i].path))
            total += pl->a[i].count;
    ck_assert_msg(total > 0, "group %s is empty", name);
    float *saved = malloc(sizeof(float) * total), *plus = malloc(sizeof(float) * total),
          *minus = malloc(sizeof(float) * total);
    uint64_t s = seed;
    double predicted = 0;
    size_t k = 0;
    for (int i = 0; i < pl->count; i++) {
        const arr *a = &pl->a[i];
        if (!group(p, a->path))
            continue;
        double rms = 0;
        for (size_t j = 0; j < a->count; j++)
            rms += (double)a->data[j] * a->data[j];
        rms = sqrt(rms / a->count);
        /* Smaller steps in bigger groups: the loss sees the sum of all perturbations. */
        const double step = (getenv("FDSTEP") ? atof(getenv("FDSTEP")) : 1e-3) * fmax(rms, 0.05) /
                            sqrt(fmax(1.0, total / 100.0));
        for (size_t j = 0; j < a->count; j++, k++) {
            double d = test_uniform(&s) * 2 - 1;
            saved[k] = a->data[j];
            plus[k] = (float)(a->data[j] + step * d);
            minus[k] = (float)(a->data[j] - step * d);
            predicted += (double)gl->a[i].data[j] * ((double)plus[k] - minus[k]);
        }
    }
    double loss[2];
    for (int side = 0; side < 2; side++) {
        k = 0;
        for (int i = 0; i < pl->count; i++)
            if (group(p, pl->a[i].path))
                for (size_t j = 0; j < pl->a[i].count; j++, k++)
                    pl->a[i].data[j] = side ? minus[k] : plus[k];
        loss[side] = ref_loss(p, b->inputs, b);
    }
    k = 0;
    for (int i = 0; i < pl->count; i++)
        if (group(p, pl->a[i].path))
            for (size_t j = 0; j < pl->a[i].count; j++, k++)
                pl->a[i].data[j] = saved[k];
    double fd = loss[0] - loss[1], err = fabs(fd - predicted) / fmax(fabs(fd), 1e-12);
    printf("  %-22s %7zu params: finite difference %+.6e, engine %+.6e, relative error %.1e\n",
           name, total, fd, predicted, err);
    ck_assert_msg(getenv("NOFAIL") || fabs(fd) > 1e-9, "%s: the check is vacuous", name);
    ck_assert_msg(err < tol, "%s: gradient off by %.2e relative", name, err);
    free(saved);
    free(plus);
    free(minus);
}

/* One parameter: the element of the group with the largest gradient. */
static void check_element(isl_params *p, const batch *b, const arr_list *pl, const arr_list *gl,
                          group_fn group, const char *name, double tol)
{
    int best_i = -1;
    size_t best_j = 0;
    double best = -1;
    for (int i = 0; i < pl->count; i++)
        if (group(p, pl->a[i].path))
            for (size_t j = 0; j < pl->a[i].count; j++)
                if (fabs(gl->a[i].data[j]) > best) {
                    best = fabs(gl->a[i].data[j]);
                    best_i = i;
                    best_j = j;
                }
    float *w = &pl->a[best_i].data[best_j], saved = *w;
    const double step = (getenv("FDSTEP") ? atof(getenv("FDSTEP")) : 1e-3) * fmax(fabs(saved), 0.05);
    float plus = (float)(saved + step), minus = (float)(saved - step);
    *w = plus;
    double lp = ref_loss(p, b->inputs, b);
    *w = minus;
    double lm = ref_loss(p, b->inputs, b);
    *w = saved;
    double fd = (lp - lm) / ((double)plus - minus), g = gl->a[best_i].data[best_j];
    double err = fabs(fd - g) / fmax(fabs(fd), 1e-12);
    printf("  %-22s %s[%zu]: finite difference %+.6e, engine %+.6e, relative error %.1e\n",
           name, pl->a[best_i].path, best_j, fd, g, err);
    ck_assert_msg(getenv("NOFAIL") || err < tol, "%s: gradient off by %.2e relative", name, err);
}

START_TEST(gradients_match_finite_differences)
{
    isl_params p;
    random_params(&p, 11);
    batch *b = random_batch(12);
    engine e;
    engine_open(&e, &p, 1);
    double t0 = now();
    engine_run(&e, b, 1);
    printf("engine forward + backward: %.2f s\n", now() - t0);

    /* The training-mode forward against the reference. */
    ref_t in[BATCH], logits[BATCH * HEADS];
    for (int n = 0; n < BATCH; n++) {
        in[n] = ref_new(NZ, SIDE, SIDE);
        for (size_t i = 0; i < (size_t)NZ * SIDE * SIDE; i++)
            in[n].v[i] = b->inputs[(size_t)n * NZ * SIDE * SIDE + i];
    }
    t0 = now();
    rt_network(&p, in, BATCH, logits);
    printf("reference forward: %.2f s\n", now() - t0);
    for (int h = 0; h < HEADS; h++) {
        const float *lg = isl_train_net_logits(e.net, h);
        const size_t per = (size_t)p.heads[h].out_ch * OUT * OUT;
        double max_err = 0, max_ref = 0;
        for (int n = 0; n < BATCH; n++)
            for (size_t i = 0; i < per; i++) {
                max_err = fmax(max_err, fabs(logits[n * HEADS + h].v[i] - lg[n * per + i]));
                max_ref = fmax(max_ref, fabs(logits[n * HEADS + h].v[i]));
            }
        printf("head %d logits: max |logit| %.3f, max error %.2e\n", h, max_ref, max_err);
        ck_assert(max_ref > 1.0);
        ck_assert(max_err < 1e-4 * max_ref);
    }
    double rl = rt_loss(logits, BATCH, LABELS, NZ, b->targets, b->masks, b->ae_targets, 0.5);
    printf("loss: engine %.9f, reference %.9f\n", e.losses[LABELS + 2], rl);
    ck_assert(fabs(e.losses[LABELS + 2] - rl) < 1e-6);
    rt_free(in, BATCH);
    rt_free(logits, BATCH * HEADS);

    arr_list *pl = calloc(1, sizeof(*pl)), *gl = calloc(1, sizeof(*gl));
    isl_params_visit(&p, list_arrays, pl);
    isl_params_visit(&e.g, list_arrays, gl);
    static const struct {
        const char *name;
        group_fn fn;
    } groups[] = {{"projection", g_proj_w},   {"expand (in)", g_expand_in},
                  {"expand (down)", g_expand_down}, {"expand (up)", g_expand_up},
                  {"reduce", g_reduce},           {"module bn gamma", g_bn_gamma},
                  {"module bn beta", g_bn_beta},  {"label heads", g_label_head},
                  {"autoencoder head", g_ae_head}, {"head bn", g_head_bn}};
    if (getenv("DEBUG_PATHS")) {
        char buf[4096];
        snprintf(buf, sizeof(buf), "%s", getenv("DEBUG_PATHS"));
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            debug_path = tok;
            check_element(&p, b, pl, gl, g_debug, "debug", 1e9);
        }
        return;
    }
    t0 = now();
    for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
        check_direction(&p, b, pl, gl, groups[i].fn, groups[i].name, 100 + i, 2e-3 + (getenv("NOFAIL") ? 1e9 : 0));
    check_element(&p, b, pl, gl, g_expand_up, "expand (up)", 1e-2);
    check_element(&p, b, pl, gl, g_bn_gamma, "module bn gamma", 1e-2);

    /* The input: perturb it, keeping the autoencoder's targets. */
    {
        static float plus[BATCH * NZ * SIDE * SIDE], minus[BATCH * NZ * SIDE * SIDE];
        const float *dx = isl_train_net_input_grad(e.net);
        uint64_t s = 99;
        double predicted = 0;
        for (size_t i = 0; i < sizeof(plus) / sizeof(float); i++) {
            double d = (getenv("FDSTEP") ? atof(getenv("FDSTEP")) : 1e-3) / sqrt(sizeof(plus) / sizeof(float) / 100.0) * (test_uniform(&s) * 2 - 1);
            plus[i] = (float)(b->inputs[i] + d);
            minus[i] = (float)(b->inputs[i] - d);
            predicted += (double)dx[i] * ((double)plus[i] - minus[i]);
        }
        double fd = ref_loss(&p, plus, b) - ref_loss(&p, minus, b);
        double err = fabs(fd - predicted) / fabs(fd);
        printf("  %-22s: finite difference %+.6e, engine %+.6e, relative error %.1e\n", "input",
               fd, predicted, err);
        ck_assert(err < 2e-3);
    }
    printf("finite differences: %.1f s\n", now() - t0);
    free(pl);
    free(gl);
    engine_close(&e);
    isl_params_free(&p);
    free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("train");
    const struct {
        const char *name;
        const TTest *test;
    } cases[] = {{"gradients", gradients_match_finite_differences}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 600);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
