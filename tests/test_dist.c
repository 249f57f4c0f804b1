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

/* dropout: the rate of value dropout of the heads' inputs (0: none). */
static isl_trainer *make_trainer(const isl_model *m, double dropout)
{
    isl_train_options *o;
    ck_assert_int_eq(isl_train_options_create(&o), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_dropout(o, dropout, 0), ISL_OK);
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
    int calls[2], gradient_calls[2];
    size_t bytes[2];
} transport;

#define MAX_PENDING 256

typedef struct rank_ctx {
    transport *net;
    int rank;
    isl_trainer *trainer;
    const global_batch *batches[STEPS];
    float losses[STEPS][LOSSES];
    isl_status status;
    char error[512];
    /* Gradient buckets started by async_start, summed by async_wait. */
    float *pending[MAX_PENDING];
    size_t pending_count[MAX_PENDING];
    int num_pending, max_pending;
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
    t->gradient_calls[c->rank] += type == ISL_REDUCE_FLOAT32;
    t->bytes[c->rank] += count * elem;
    return 0;
}

/* An asynchronous transport: start only notes the bucket (the trainer must leave it
 * alone), wait sums them all in the order they were started. */
static int async_start(void *buf, size_t count, isl_reduce_type type, void *user)
{
    rank_ctx *c = user;
    if (type != ISL_REDUCE_FLOAT32 || count == 0 || c->num_pending == MAX_PENDING)
        return -1;
    c->pending[c->num_pending] = buf;
    c->pending_count[c->num_pending++] = count;
    c->max_pending = c->num_pending > c->max_pending ? c->num_pending : c->max_pending;
    return 0;
}

static int async_wait(void *user)
{
    rank_ctx *c = user;
    int rc = 0;
    for (int k = 0; k < c->num_pending && rc == 0; k++)
        rc = fake_allreduce(c->pending[k], c->pending_count[k], ISL_REDUCE_FLOAT32, user);
    c->num_pending = 0;
    return rc;
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

/* How the ranks of run_two_ranks hand over their gradients. */
enum { FLAT, BUCKETS, ASYNC_BUCKETS };

/* STEPS steps of two ranks (threads), half of each batch each, with dropout of that rate
 * and, if first_crops, each rank told where its crops lie in the global batch
 * (isl_trainer_set_first_crop); ranks[r].trainer stay the caller's to free. */
static void run_two_ranks(const isl_model *m, global_batch *const *batches, int how,
                          size_t bucket_bytes, double dropout, int first_crops, transport *net,
                          rank_ctx ranks[2])
{
    memset(net, 0, sizeof(*net));
    ck_assert_int_eq(pthread_barrier_init(&net->barrier, NULL, 2), 0);
    pthread_t threads[2];
    for (int r = 0; r < 2; r++) {
        memset(&ranks[r], 0, sizeof(ranks[r]));
        ranks[r].net = net;
        ranks[r].rank = r;
        ranks[r].trainer = make_trainer(m, dropout);
        if (first_crops)
            ck_assert_int_eq(isl_trainer_set_first_crop(ranks[r].trainer, r * HALF), ISL_OK);
        for (int k = 0; k < STEPS; k++)
            ranks[r].batches[k] = batches[k];
        ck_assert_int_eq(isl_trainer_set_allreduce(ranks[r].trainer, fake_allreduce, &ranks[r]),
                         ISL_OK);
        if (how != FLAT)
            ck_assert_int_eq(isl_trainer_set_gradient_buckets(
                                 ranks[r].trainer, bucket_bytes,
                                 how == ASYNC_BUCKETS ? async_start : NULL,
                                 how == ASYNC_BUCKETS ? async_wait : NULL),
                             ISL_OK);
    }
    for (int r = 0; r < 2; r++)
        ck_assert_int_eq(pthread_create(&threads[r], NULL, rank_main, &ranks[r]), 0);
    for (int r = 0; r < 2; r++)
        pthread_join(threads[r], NULL);
    for (int r = 0; r < 2; r++)
        ck_assert_msg(ranks[r].status == ISL_OK, "rank %d: %s", r, ranks[r].error);
    pthread_barrier_destroy(&net->barrier);
}

/* One process trained on the whole of each batch, with dropout of that rate; the losses
 * of each step into losses (may be NULL). */
static isl_trainer *train_one_process(const isl_model *m, global_batch *const *batches,
                                      double dropout, float (*losses)[LOSSES])
{
    isl_trainer *t = make_trainer(m, dropout);
    for (int k = 0; k < STEPS; k++) {
        isl_train_batch b = part(batches[k], 0, GLOBAL);
        ck_assert_msg(isl_train_step(t, &b, losses ? losses[k] : NULL) == ISL_OK, "%s",
                      isl_last_error());
    }
    return t;
}

static void free_batches(global_batch **batches)
{
    for (int k = 0; k < STEPS; k++)
        free(batches[k]);
}

START_TEST(two_ranks_equal_one_process_of_the_global_batch)
{
    isl_model *m = test_new_model(BASE, NZ, LABELS, names, 5, "none");
    global_batch *batches[STEPS];
    for (int k = 0; k < STEPS; k++)
        batches[k] = make_batch(100 + (uint64_t)k);

    float ref[STEPS][LOSSES];
    isl_trainer *single = train_one_process(m, batches, 0, ref);

    /* Two ranks, half each. */
    transport net;
    rank_ctx ranks[2];
    run_two_ranks(m, batches, FLAT, 0, 0, 1, &net, ranks);

    /* The hook carried the batch norms' sums and the gradients: many calls, and at
     * least every trainable float once per step. */
    ck_assert_int_eq(net.calls[0], net.calls[1]);
    ck_assert_int_gt(net.calls[0], 10 * STEPS);
    ck_assert_int_eq(net.gradient_calls[0], STEPS); /* flat: one buffer per step */
    ck_assert_uint_ge(net.bytes[0], (size_t)STEPS * sizeof(float) *
                                        (size_t)(isl_model_parameter_count(m) / 2));

    /* Both ranks hold the same weights, bit for bit, and report the global losses; their
     * whole states agree (what `isl train` compares at checkpoints). */
    ck_assert(max_weight_difference(ranks[0].trainer, ranks[1].trainer) == 0.0);
    unsigned char d0[16], d1[16];
    ck_assert_int_eq(isl_trainer_digest(ranks[0].trainer, d0), ISL_OK);
    ck_assert_int_eq(isl_trainer_digest(ranks[1].trainer, d1), ISL_OK);
    ck_assert(memcmp(d0, d1, 16) == 0);
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
    isl_trainer *alone = make_trainer(m, 0);
    for (int k = 0; k < STEPS; k++) {
        isl_train_batch b = part(batches[k], 0, HALF);
        ck_assert_msg(isl_train_step(alone, &b, NULL) == ISL_OK, "%s", isl_last_error());
    }
    double apart = max_weight_difference(single, alone);
    printf("one rank alone on its half: max |w difference| %.3g\n", apart);
    ck_assert_msg(apart > 10 * WEIGHT_TOL, "half a batch alone differs by only %.3g", apart);
    unsigned char d_alone[16];
    ck_assert_int_eq(isl_trainer_digest(alone, d_alone), ISL_OK);
    ck_assert(memcmp(d0, d_alone, 16) != 0);

    isl_trainer_free(alone);
    for (int r = 0; r < 2; r++)
        isl_trainer_free(ranks[r].trainer);
    isl_trainer_free(single);
    free_batches(batches);
    isl_model_free(m);
}
END_TEST

/* Dropout masks are drawn per crop of the global batch: ranks that know where their crops
 * lie (isl_trainer_set_first_crop) drop what one process on the global batch drops and
 * reach its weights; ranks that do not each drop the mask of the global batch's first
 * crops on their own, and train another model. */
START_TEST(two_ranks_with_dropout_drop_what_one_process_would)
{
    const double rate = 0.5;
    isl_model *m = test_new_model(BASE, NZ, LABELS, names, 11, "none");
    global_batch *batches[STEPS];
    for (int k = 0; k < STEPS; k++)
        batches[k] = make_batch(200 + (uint64_t)k);
    isl_trainer *single = train_one_process(m, batches, rate, NULL);
    transport net[2];
    rank_ctx placed[2], unplaced[2];
    run_two_ranks(m, batches, FLAT, 0, rate, 1, &net[0], placed);
    run_two_ranks(m, batches, FLAT, 0, rate, 0, &net[1], unplaced);
    ck_assert(max_weight_difference(placed[0].trainer, placed[1].trainer) == 0.0);
    double diff = max_weight_difference(single, placed[0].trainer);
    double apart = max_weight_difference(single, unplaced[0].trainer);
    printf("dropout %.1f, two ranks vs one process after %d steps: max |w difference| %.3g "
           "with first crops set, %.3g without\n", rate, STEPS, diff, apart);
    ck_assert_msg(diff <= WEIGHT_TOL, "max weight difference %.3g > %.1g", diff, WEIGHT_TOL);
    ck_assert_msg(apart > 10 * WEIGHT_TOL, "ranks sharing one mask differ by only %.3g", apart);

    ck_assert_int_eq(isl_trainer_set_first_crop(NULL, 0), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_trainer_set_first_crop(single, -1), ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(isl_last_error(), "negative"), "%s", isl_last_error());
    for (int r = 0; r < 2; r++) {
        isl_trainer_free(placed[r].trainer);
        isl_trainer_free(unplaced[r].trainer);
    }
    isl_trainer_free(single);
    free_batches(batches);
    isl_model_free(m);
}
END_TEST

/* A failing hook fails the step with a clear error, and the trainer is unchanged. */
static int broken_allreduce(void *buf, size_t count, isl_reduce_type type, void *user)
{
    (void)buf, (void)count, (void)type, (void)user;
    return 3;
}

static int alone_allreduce(void *buf, size_t count, isl_reduce_type type, void *user)
{
    (void)buf, (void)count, (void)type, (void)user;
    return 0;
}

START_TEST(a_failing_hook_fails_the_step)
{
    isl_model *m = test_new_model(BASE, NZ, LABELS, names, 6, "none");
    global_batch *g = make_batch(7);
    isl_trainer *t = make_trainer(m, 0);
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

/* Buckets (sent as the backward pass goes, or started and waited for) carry every
 * gradient element over the same two ranks as the flat buffer: the same sums, so the
 * same weights bit for bit after STEPS steps, in several buckets per step. */
START_TEST(gradient_buckets_give_the_flat_result)
{
    isl_model *m = test_new_model(BASE, NZ, LABELS, names, 8, "none");
    global_batch *batches[STEPS];
    for (int k = 0; k < STEPS; k++)
        batches[k] = make_batch(200 + (uint64_t)k);
    const size_t bucket = sizeof(float) * (size_t)isl_model_parameter_count(m) / 8;
    transport net[3];
    rank_ctx flat[2], sync[2], async[2];
    run_two_ranks(m, batches, FLAT, 0, 0, 1, &net[0], flat);
    run_two_ranks(m, batches, BUCKETS, bucket, 0, 1, &net[1], sync);
    run_two_ranks(m, batches, ASYNC_BUCKETS, bucket, 0, 1, &net[2], async);

    ck_assert_int_eq(net[0].gradient_calls[0], STEPS);
    /* At least 8 buckets' worth of bytes, at most one bucket per layer. */
    for (int i = 1; i < 3; i++) {
        printf("buckets of %zu bytes: %d gradient calls in %d steps\n", bucket,
               net[i].gradient_calls[0], STEPS);
        ck_assert_int_ge(net[i].gradient_calls[0], 4 * STEPS);
        ck_assert_int_le(net[i].gradient_calls[0], STEPS * (m->params.arch.num_modules + m->params.num_heads + 1));
        ck_assert_uint_eq(net[i].bytes[0], net[0].bytes[0]); /* every gradient once */
    }
    ck_assert_int_ge(async[0].max_pending, 4); /* several in flight before the wait */
    const double d_sync = max_weight_difference(flat[0].trainer, sync[0].trainer);
    const double d_async = max_weight_difference(flat[0].trainer, async[0].trainer);
    ck_assert_msg(d_sync == 0.0, "buckets vs flat: max |w difference| %.3g", d_sync);
    ck_assert_msg(d_async == 0.0, "async buckets vs flat: max |w difference| %.3g", d_async);
    ck_assert(max_weight_difference(async[0].trainer, async[1].trainer) == 0.0);
    for (int k = 0; k < STEPS; k++)
        for (int i = 0; i < LOSSES; i++)
            ck_assert_float_eq(flat[0].losses[k][i], async[0].losses[k][i]);
    /* The control: the runs did train (the weights left the initial ones). */
    isl_trainer *untrained = make_trainer(m, 0);
    ck_assert(max_weight_difference(flat[0].trainer, untrained) > 10 * WEIGHT_TOL);

    isl_trainer_free(untrained);
    for (int r = 0; r < 2; r++) {
        isl_trainer_free(flat[r].trainer);
        isl_trainer_free(sync[r].trainer);
        isl_trainer_free(async[r].trainer);
    }
    free_batches(batches);
    isl_model_free(m);
}
END_TEST

/* A failing start or wait fails the step; the settings are checked. */
static int broken_wait(void *user)
{
    (void)user;
    return 4;
}

START_TEST(failing_buckets_fail_the_step)
{
    isl_model *m = test_new_model(BASE, NZ, LABELS, names, 9, "none");
    global_batch *g = make_batch(9);
    isl_trainer *t = make_trainer(m, 0);
    ck_assert_int_eq(isl_trainer_set_gradient_buckets(NULL, 1, NULL, NULL),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_trainer_set_gradient_buckets(t, 1, broken_allreduce, NULL),
                     ISL_ERROR_INVALID_ARGUMENT);
    ck_assert_int_eq(isl_trainer_set_gradient_buckets(t, 0, broken_allreduce, broken_wait),
                     ISL_ERROR_INVALID_ARGUMENT);
    /* A transport alone: every sum is this process's own numbers. */
    isl_train_batch b = part(g, 0, HALF);
    ck_assert_int_eq(isl_trainer_set_allreduce(t, alone_allreduce, NULL), ISL_OK);
    ck_assert_int_eq(isl_trainer_set_gradient_buckets(t, 1, broken_allreduce, broken_wait),
                     ISL_OK);
    ck_assert_int_eq(isl_train_step(t, &b, NULL), ISL_ERROR_BACKEND);
    ck_assert_msg(strstr(isl_last_error(), "bucket"), "%s", isl_last_error());
    ck_assert_int_eq(isl_trainer_set_gradient_buckets(t, 1, alone_allreduce, broken_wait),
                     ISL_OK);
    ck_assert_int_eq(isl_train_step(t, &b, NULL), ISL_ERROR_BACKEND);
    ck_assert_msg(strstr(isl_last_error(), "waiting"), "%s", isl_last_error());
    ck_assert_int_eq(isl_trainer_step_count(t), 0);
    ck_assert_int_eq(isl_trainer_set_gradient_buckets(t, 1, NULL, NULL), ISL_OK);
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
        {"two_ranks_with_dropout_drop_what_one_process_would",
         two_ranks_with_dropout_drop_what_one_process_would},
        {"a_failing_hook_fails_the_step", a_failing_hook_fails_the_step},
        {"gradient_buckets_give_the_flat_result", gradient_buckets_give_the_flat_result},
        {"failing_buckets_fail_the_step", failing_buckets_fail_the_step},
    };
    return test_run_cases("dist", cases, sizeof(cases) / sizeof(cases[0]), 600);
}
