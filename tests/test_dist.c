/* Data-parallel training through the allreduce hook (isl_trainer_set_allreduce), with a
 * fake in-process transport: two "ranks" are two threads, each stepping its own trainer
 * on one half of a global batch, their hook adding up the two buffers. After K steps they
 * must hold the weights one trainer reaches on the whole batch (the global batch is the
 * batch: known-pixel counts, batch-norm statistics and gradients are all global), up to
 * float summation order; and a rank trained on its half alone must not. No MPI needed. */
#include "isl.h"
#include "model.h"
#include "test_util.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BASE 8
#define NZ 2
#define LABELS 2
#define HALF 2               /* crops per rank */
#define GLOBAL (2 * HALF)    /* crops of the single process */
#define SIDE 250
#define OUT 8
#define STEPS 3
#define LOSSES (LABELS + 3)
/* Float summation order (a batch of 4 in one oneDNN reduction vs 2 + 2) moves gradients
 * by ~1e-7 relative. Adam divides by sqrt(v) + epsilon: with the default epsilon (1e-8)
 * a gradient that is ~0 up to rounding becomes a step of +-RATE either way (measured:
 * 2.3e-3 apart after 3 steps), so the test uses epsilon 1e-3, which bounds that
 * amplification; the weights then agree within 7e-6 (measured) after STEPS steps of
 * rate RATE. A rank trained alone on its half moves them by ~RATE. */
#define RATE 1e-3
#define EPSILON 1e-3
#define WEIGHT_TOL 5e-5
#define LOSS_TOL 1e-5

static const char *names[LABELS] = {"dapi_confocal", "nfh_confocal"};

typedef struct global_batch {
    float inputs[GLOBAL * NZ * SIDE * SIDE];
    float targets[GLOBAL * LABELS * OUT * OUT];
    uint8_t masks[GLOBAL * LABELS * OUT * OUT];
} global_batch;

/* Label 0 known everywhere; label 1 only in crop 0 (so rank 1 has none of it: the head
 * must still be computed and updated there, with the global count). */
static global_batch *make_batch(uint64_t seed)
{
    global_batch *b = malloc(sizeof(*b));
    ck_assert_ptr_nonnull(b);
    uint64_t s = seed;
    for (size_t i = 0; i < sizeof(b->inputs) / sizeof(float); i++)
        b->inputs[i] = (float)test_uniform(&s);
    for (size_t i = 0; i < sizeof(b->targets) / sizeof(float); i++)
        b->targets[i] = (float)test_uniform(&s);
    for (int n = 0; n < GLOBAL; n++)
        for (int l = 0; l < LABELS; l++)
            for (int p = 0; p < OUT * OUT; p++)
                b->masks[((size_t)n * LABELS + l) * OUT * OUT + p] = l == 0 || n == 0;
    return b;
}

/* Crops first .. first + count - 1 of b. */
static isl_train_batch part(const global_batch *b, int first, int count)
{
    isl_train_batch t = {count, SIDE, SIDE, b->inputs + (size_t)first * NZ * SIDE * SIDE,
                         b->targets + (size_t)first * LABELS * OUT * OUT,
                         b->masks + (size_t)first * LABELS * OUT * OUT};
    return t;
}

static isl_trainer *make_trainer(const isl_model *m)
{
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_learning_rate(o, RATE), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_adam(o, 0.9, 0.999, EPSILON), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_threads(o, 1), ISL_OK);
    isl_trainer *t = NULL;
    ck_assert_msg(isl_trainer_create(m, o, &t) == ISL_OK, "%s", isl_last_error());
    isl_train_options_free(o);
    return t;
}

/* ------------------------------------------------------------------------------------ */
/* The fake transport: a two-thread allreduce                                          */
/* ------------------------------------------------------------------------------------ */

typedef struct transport {
    pthread_barrier_t barrier;
    const void *slot[2];
    int calls[2];
    size_t bytes[2];
} transport;

typedef struct rank_ctx {
    transport *net;
    int rank;
    isl_trainer *trainer;
    const global_batch *batches[STEPS];
    float losses[STEPS][LOSSES];
    isl_status status;
    char error[512];
} rank_ctx;

/* Both ranks publish their buffer, then each adds the two up in rank order (the same
 * sums, bit for bit, on both), then neither leaves before both have read. */
static int fake_allreduce(void *buf, size_t count, isl_reduce_type type, void *user)
{
    rank_ctx *c = user;
    transport *t = c->net;
    const size_t elem = type == ISL_REDUCE_FLOAT64 ? sizeof(double) : sizeof(float);
    void *sum = malloc(count * elem);
    if (!sum)
        return -1;
    t->slot[c->rank] = buf;
    pthread_barrier_wait(&t->barrier);
    for (size_t i = 0; i < count; i++) {
        if (type == ISL_REDUCE_FLOAT64)
            ((double *)sum)[i] = ((const double *)t->slot[0])[i] + ((const double *)t->slot[1])[i];
        else
            ((float *)sum)[i] = ((const float *)t->slot[0])[i] + ((const float *)t->slot[1])[i];
    }
    pthread_barrier_wait(&t->barrier);
    memcpy(buf, sum, count * elem);
    free(sum);
    t->calls[c->rank]++;
    t->bytes[c->rank] += count * elem;
    return 0;
}

static void *rank_main(void *arg)
{
    rank_ctx *c = arg;
    for (int k = 0; k < STEPS && c->status == ISL_OK; k++) {
        isl_train_batch b = part(c->batches[k], c->rank * HALF, HALF);
        c->status = isl_train_step(c->trainer, &b, c->losses[k]);
        if (c->status != ISL_OK)
            snprintf(c->error, sizeof(c->error), "%s", isl_last_error());
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* Comparisons                                                                          */
/* ------------------------------------------------------------------------------------ */

/* Largest |a - b| over the parameters (weights and batch-norm statistics). */
static double max_weight_difference(const isl_trainer *ta, const isl_trainer *tb)
{
    isl_model *a, *b;
    ck_assert_int_eq(isl_trainer_model(ta, &a), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(tb, &b), ISL_OK);
    test_arr_list *la = test_arrays_of(&a->params), *lb = test_arrays_of(&b->params);
    ck_assert_int_eq(la->count, lb->count);
    double worst = 0;
    for (int k = 0; k < la->count; k++) {
        ck_assert_uint_eq(la->a[k].count, lb->a[k].count);
        for (size_t i = 0; i < la->a[k].count; i++) {
            double d = fabs((double)la->a[k].data[i] - lb->a[k].data[i]);
            worst = d > worst ? d : worst;
        }
    }
    free(la);
    free(lb);
    isl_model_free(a);
    isl_model_free(b);
    return worst;
}

START_TEST(two_ranks_equal_one_process_of_the_global_batch)
{
    isl_model *m = test_new_model(BASE, NZ, LABELS, names, 5, "none");
    global_batch *batches[STEPS];
    for (int k = 0; k < STEPS; k++)
        batches[k] = make_batch(100 + (uint64_t)k);

    /* One process, global batch. */
    isl_trainer *single = make_trainer(m);
    float ref[STEPS][LOSSES];
    for (int k = 0; k < STEPS; k++) {
        isl_train_batch b = part(batches[k], 0, GLOBAL);
        ck_assert_msg(isl_train_step(single, &b, ref[k]) == ISL_OK, "%s", isl_last_error());
    }

    /* Two ranks, half each. */
    transport net;
    memset(&net, 0, sizeof(net));
    ck_assert_int_eq(pthread_barrier_init(&net.barrier, NULL, 2), 0);
    rank_ctx ranks[2];
    pthread_t threads[2];
    for (int r = 0; r < 2; r++) {
        memset(&ranks[r], 0, sizeof(ranks[r]));
        ranks[r].net = &net;
        ranks[r].rank = r;
        ranks[r].trainer = make_trainer(m);
        for (int k = 0; k < STEPS; k++)
            ranks[r].batches[k] = batches[k];
        ck_assert_int_eq(isl_trainer_set_allreduce(ranks[r].trainer, fake_allreduce, &ranks[r]),
                         ISL_OK);
    }
    for (int r = 0; r < 2; r++)
        ck_assert_int_eq(pthread_create(&threads[r], NULL, rank_main, &ranks[r]), 0);
    for (int r = 0; r < 2; r++)
        pthread_join(threads[r], NULL);
    for (int r = 0; r < 2; r++)
        ck_assert_msg(ranks[r].status == ISL_OK, "rank %d: %s", r, ranks[r].error);
    pthread_barrier_destroy(&net.barrier);

    /* The hook carried the batch norms' sums and the gradients: many calls, and at
     * least every trainable float once per step. */
    ck_assert_int_eq(net.calls[0], net.calls[1]);
    ck_assert_int_gt(net.calls[0], 10 * STEPS);
    ck_assert_uint_ge(net.bytes[0], (size_t)STEPS * sizeof(float) *
                                        (size_t)(isl_model_parameter_count(m) / 2));

    /* Both ranks hold the same weights, bit for bit, and report the global losses. */
    ck_assert(max_weight_difference(ranks[0].trainer, ranks[1].trainer) == 0.0);
    for (int k = 0; k < STEPS; k++)
        for (int i = 0; i < LOSSES; i++) {
            ck_assert(isfinite(ref[k][i]));
            ck_assert_float_eq(ranks[0].losses[k][i], ranks[1].losses[k][i]);
            ck_assert_msg(fabs(ranks[0].losses[k][i] - ref[k][i]) <= LOSS_TOL * fabs(ref[k][i]),
                          "step %d loss %d: %.9g (2 ranks) vs %.9g (1 process)", k + 1, i,
                          (double)ranks[0].losses[k][i], (double)ref[k][i]);
        }
    double diff = max_weight_difference(single, ranks[0].trainer);
    printf("two ranks vs one process after %d steps: max |w difference| %.3g (tolerance %.1g)\n",
           STEPS, diff, WEIGHT_TOL);
    ck_assert_msg(diff <= WEIGHT_TOL, "max weight difference %.3g > %.1g", diff, WEIGHT_TOL);

    /* The control: a rank alone on its half (no hook) trains a different model. */
    isl_trainer *alone = make_trainer(m);
    for (int k = 0; k < STEPS; k++) {
        isl_train_batch b = part(batches[k], 0, HALF);
        ck_assert_msg(isl_train_step(alone, &b, NULL) == ISL_OK, "%s", isl_last_error());
    }
    double apart = max_weight_difference(single, alone);
    printf("one rank alone on its half: max |w difference| %.3g\n", apart);
    ck_assert_msg(apart > 10 * WEIGHT_TOL, "half a batch alone differs by only %.3g", apart);

    isl_trainer_free(alone);
    for (int r = 0; r < 2; r++)
        isl_trainer_free(ranks[r].trainer);
    isl_trainer_free(single);
    for (int k = 0; k < STEPS; k++)
        free(batches[k]);
    isl_model_free(m);
}
END_TEST

/* A failing hook fails the step with a clear error, and the trainer is unchanged. */
static int broken_allreduce(void *buf, size_t count, isl_reduce_type type, void *user)
{
    (void)buf, (void)count, (void)type, (void)user;
    return 3;
}

START_TEST(a_failing_hook_fails_the_step)
{
    isl_model *m = test_new_model(BASE, NZ, LABELS, names, 6, "none");
    global_batch *g = make_batch(7);
    isl_trainer *t = make_trainer(m);
    ck_assert_int_eq(isl_trainer_set_allreduce(NULL, broken_allreduce, NULL),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_trainer_set_allreduce(t, broken_allreduce, NULL), ISL_OK);
    isl_train_batch b = part(g, 0, HALF);
    ck_assert_int_eq(isl_train_step(t, &b, NULL), ISL_ERROR_BACKEND);
    ck_assert_msg(strstr(isl_last_error(), "allreduce"), "%s", isl_last_error());
    ck_assert_int_eq(isl_trainer_step_count(t), 0);
    /* Alone again: steps work. */
    ck_assert_int_eq(isl_trainer_set_allreduce(t, NULL, NULL), ISL_OK);
    ck_assert_msg(isl_train_step(t, &b, NULL) == ISL_OK, "%s", isl_last_error());
    ck_assert_int_eq(isl_trainer_step_count(t), 1);
    isl_trainer_free(t);
    free(g);
    isl_model_free(m);
}
END_TEST

int main(void)
{
    const test_case cases[] = {
        {"two_ranks_equal_one_process_of_the_global_batch",
         two_ranks_equal_one_process_of_the_global_batch},
        {"a_failing_hook_fails_the_step", a_failing_hook_fails_the_step},
    };
    return test_run_cases("dist", cases, sizeof(cases) / sizeof(cases[0]), 600);
}
