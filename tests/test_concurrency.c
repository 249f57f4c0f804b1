/* Concurrency and soak (docs/reliability.md).
 *
 * threads: several threads use separate models at once (predictions, a trainer with a
 * checkpoint round trip, loads and saves, failing loads); each result must equal the one
 * the same call gives alone, and each thread's error message must be its own. Meant for
 * ThreadSanitizer (scripts/test.sh builds build-tsan and runs this test there;
 * tests/tsan.supp says what is suppressed and why).
 *
 * soak: load / predict / free cycles of a tiny model (60; ISL_LONG_TESTS=1: 10,000;
 * ISL_SOAK_CYCLES=n: n): no HDF5 identifier stays open after a free, the predictions stay
 * the same, and the resident set does not grow (checked where the allocator is the C
 * library's, i.e. not under a sanitizer). */
#define _GNU_SOURCE
#include "test_util.h"

#include <pthread.h>

#define BASE 8
#define NZ 2
#define LABELS 2
#define IMG 40
#define CROP 250
#define OUT_SIDE (CROP - ISL_TILE_CONTEXT)
#define PREDICTORS 3
#define ROUNDS 2

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif

static const char *const head_names[LABELS] = {"dapi_confocal", "tuj1_widefield"};

static float input[NZ * IMG * IMG];

static size_t head_size(int h) { (void)h; return (size_t)IMG * IMG; }

/* The mean of every label head of model over `input`, one thread; out[h] malloc'd. */
static isl_status predict_means(const isl_model *m, float *out[LABELS])
{
    isl_predict_options *o = NULL;
    isl_status st = isl_predict_options_create(&o);
    isl_stat mean = ISL_STAT_MEAN;
    if (st == ISL_OK)
        st = isl_predict_options_set_threads(o, 1);
    if (st == ISL_OK)
        st = isl_predict_options_set_stats(o, 1, &mean);
    float *outputs[(LABELS + 1) * ISL_STAT_COUNT] = {0};
    for (int h = 0; h < LABELS; h++)
        outputs[h * ISL_STAT_COUNT + ISL_STAT_MEAN] = out[h];
    isl_stack s = {input, ISL_DTYPE_F32, NZ, IMG, IMG};
    if (st == ISL_OK)
        st = isl_predict_image(m, o, &s, outputs);
    isl_predict_options_free(o);
    return st;
}

static void alloc_outputs(float *out[LABELS])
{
    for (int h = 0; h < LABELS; h++)
        out[h] = malloc(sizeof(float) * head_size(h));
}

static void free_outputs(float *out[LABELS])
{
    for (int h = 0; h < LABELS; h++)
        free(out[h]);
}

/* ---- threads -------------------------------------------------------------------- */

typedef struct job {
    int id;
    char model_path[4096], other_path[4096];
    float *expected[LABELS];
    char failure[9000]; /* empty: the job did what it should */
} job;

#define FAIL(j, ...) snprintf((j)->failure, sizeof((j)->failure), __VA_ARGS__)

/* Loads its own model, predicts ROUNDS times, saves it elsewhere and loads that again. */
static void *predictor(void *arg)
{
    job *j = arg;
    float *out[LABELS];
    alloc_outputs(out);
    for (int r = 0; r < ROUNDS && !j->failure[0]; r++) {
        isl_model *m = NULL;
        const char *path = r == 0 ? j->model_path : j->other_path;
        if (isl_model_load(path, &m) != ISL_OK) {
            FAIL(j, "load %s: %s", path, isl_last_error());
            break;
        }
        if (predict_means(m, out) != ISL_OK)
            FAIL(j, "predict: %s", isl_last_error());
        for (int h = 0; h < LABELS && !j->failure[0]; h++)
            if (memcmp(out[h], j->expected[h], sizeof(float) * head_size(h)) != 0)
                FAIL(j, "round %d, head %d differs from the prediction made alone", r, h);
        if (!j->failure[0] && isl_model_save(m, j->other_path) != ISL_OK)
            FAIL(j, "save: %s", isl_last_error());
        isl_model_free(m);
    }
    free_outputs(out);
    return NULL;
}

/* Loads files that do not exist; the message must name this thread's own file. */
static void *failing_loader(void *arg)
{
    job *j = arg;
    for (int i = 0; i < 20 && !j->failure[0]; i++) {
        char path[4200];
        snprintf(path, sizeof(path), "%s.missing-%d-%d", j->model_path, j->id, i);
        isl_model *m = NULL;
        if (isl_model_load(path, &m) == ISL_OK || m)
            FAIL(j, "%s loaded", path);
        else if (!strstr(isl_last_error(), path))
            FAIL(j, "error of another call: %s", isl_last_error());
    }
    return NULL;
}

static float batch_inputs[NZ * CROP * CROP];
static float batch_targets[LABELS * OUT_SIDE * OUT_SIDE];

/* Two training steps, a checkpoint, and the checkpoint loaded back. */
static void *trainer(void *arg)
{
    job *j = arg;
    isl_model *m = NULL;
    isl_train_options *o = NULL;
    isl_trainer *t = NULL, *u = NULL;
    isl_train_batch b = {1, CROP, CROP, batch_inputs, batch_targets, NULL};
    if (isl_model_load(j->model_path, &m) != ISL_OK || isl_train_options_create(&o) != ISL_OK ||
        isl_train_options_set_threads(o, 1) != ISL_OK || isl_trainer_create(m, o, &t) != ISL_OK)
        FAIL(j, "trainer setup: %s", isl_last_error());
    for (int s = 0; s < 2 && !j->failure[0]; s++)
        if (isl_train_step(t, &b, NULL) != ISL_OK)
            FAIL(j, "step: %s", isl_last_error());
    if (!j->failure[0] && isl_trainer_save(t, j->other_path) != ISL_OK)
        FAIL(j, "checkpoint save: %s", isl_last_error());
    if (!j->failure[0] && isl_trainer_load(j->other_path, o, &u) != ISL_OK)
        FAIL(j, "checkpoint load: %s", isl_last_error());
    if (!j->failure[0] && isl_trainer_step_count(u) != 2)
        FAIL(j, "checkpoint at step %lld, not 2", (long long)isl_trainer_step_count(u));
    isl_trainer_free(u);
    isl_trainer_free(t);
    isl_train_options_free(o);
    isl_model_free(m);
    return NULL;
}

START_TEST(threads)
{
    test_scratch_make("concurrency");
    uint64_t s = 21;
    for (size_t i = 0; i < sizeof(input) / sizeof(input[0]); i++)
        input[i] = (float)test_uniform(&s);
    for (size_t i = 0; i < sizeof(batch_inputs) / sizeof(batch_inputs[0]); i++)
        batch_inputs[i] = (float)test_uniform(&s);
    for (size_t i = 0; i < sizeof(batch_targets) / sizeof(batch_targets[0]); i++)
        batch_targets[i] = (float)test_uniform(&s);

    enum { JOBS = PREDICTORS + 2 };
    static job jobs[JOBS];
    for (int i = 0; i < JOBS; i++) {
        job *j = &jobs[i];
        memset(j, 0, sizeof(*j));
        j->id = i;
        char name[64];
        snprintf(name, sizeof(name), "model-%d.h5", i);
        test_scratch_path(j->model_path, sizeof(j->model_path), name);
        snprintf(name, sizeof(name), "other-%d.h5", i);
        test_scratch_path(j->other_path, sizeof(j->other_path), name);
        isl_model *m = test_new_model(BASE, NZ, LABELS, head_names, 100 + i, "none");
        ck_assert_msg(isl_model_save(m, j->model_path) == ISL_OK, "%s", isl_last_error());
        if (i < PREDICTORS) { /* what the model predicts alone */
            alloc_outputs(j->expected);
            ck_assert_msg(predict_means(m, j->expected) == ISL_OK, "%s", isl_last_error());
        }
        isl_model_free(m);
    }
    pthread_t tid[JOBS];
    for (int i = 0; i < JOBS; i++)
        ck_assert_int_eq(pthread_create(&tid[i], NULL,
                                        i < PREDICTORS        ? predictor
                                        : i == PREDICTORS     ? trainer
                                                              : failing_loader,
                                        &jobs[i]),
                         0);
    for (int i = 0; i < JOBS; i++)
        ck_assert_int_eq(pthread_join(tid[i], NULL), 0);
    for (int i = 0; i < JOBS; i++) {
        ck_assert_msg(!jobs[i].failure[0], "thread %d: %s", i, jobs[i].failure);
        if (i < PREDICTORS)
            free_outputs(jobs[i].expected);
    }
    ck_assert_int_eq(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
    test_scratch_remove();
}
END_TEST

/* ---- soak ----------------------------------------------------------------------- */

static long resident_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    ck_assert(f != NULL);
    long size, resident;
    ck_assert_int_eq(fscanf(f, "%ld %ld", &size, &resident), 2);
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* About 0.2 s of CPU a cycle (each fresh model builds its plans). */
static int soak_cycles(void)
{
    const char *env = getenv("ISL_SOAK_CYCLES");
    if (env)
        return atoi(env);
#ifdef SANITIZED
    return 5; /* the sanitizers find a leak in one cycle; they also make RSS meaningless */
#else
    const char *long_tests = getenv("ISL_LONG_TESTS");
    return long_tests && strcmp(long_tests, "1") == 0 ? 10000 : 60;
#endif
}

START_TEST(soak)
{
    const char *env = getenv("ISL_SOAK_CYCLES");
    const int cycles = soak_cycles();
    ck_assert_msg(cycles >= 1, "ISL_SOAK_CYCLES=%s: need at least 1 cycle", env ? env : "");
    /* RSS is compared from the end of the first tenth on (at least the first cycle). */
    const int settled = cycles >= 10 ? cycles / 10 : 1;
    test_scratch_make("soak");
    char path[4096];
    test_scratch_path(path, sizeof(path), "model.h5");
    isl_model *m = test_new_model(5, NZ, LABELS, head_names, 3, "none");
    ck_assert_msg(isl_model_save(m, path) == ISL_OK, "%s", isl_last_error());
    isl_model_free(m);
    uint64_t s = 4;
    for (size_t i = 0; i < sizeof(input) / sizeof(input[0]); i++)
        input[i] = (float)test_uniform(&s);
    float *out[LABELS], *first[LABELS];
    alloc_outputs(out);
    alloc_outputs(first);
    long rss_settled = 0, rss_max = 0;
    double t_load = 0, t_pred = 0;
    double t0 = test_now();
    for (int c = 1; c <= cycles; c++) {
        double ta = test_now();
        ck_assert_msg(isl_model_load(path, &m) == ISL_OK, "cycle %d: %s", c, isl_last_error());
        t_load += test_now() - ta;
        ta = test_now();
        ck_assert_msg(predict_means(m, c == 1 ? first : out) == ISL_OK, "cycle %d: %s", c,
                      isl_last_error());
        t_pred += test_now() - ta;
        isl_model_free(m);
        ck_assert_msg(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0,
                      "cycle %d: HDF5 identifiers left open", c);
        if (c > 1)
            for (int h = 0; h < LABELS; h++)
                ck_assert(memcmp(out[h], first[h], sizeof(float) * head_size(h)) == 0);
        long rss = resident_kb();
        if (c == settled)
            rss_settled = rss;
        if (c >= settled && rss > rss_max)
            rss_max = rss;
        if (c % 1000 == 0) { /* long runs: figures survive an interrupted run */
            printf("soak: cycle %d, resident %ld kB, no HDF5 identifier open\n", c, rss);
            fflush(stdout);
        }
    }
    long rss_end = resident_kb();
    printf("soak: %d load/predict/free cycles in %.0f s (load %.0f s, predict %.0f s); resident "
           "%ld kB at cycle %d, %ld kB at cycle %d (max %ld kB after cycle %d)\n", cycles,
           test_now() - t0, t_load, t_pred, rss_settled, settled, rss_end, cycles, rss_max,
           settled);
#ifndef SANITIZED
    /* Flat: a leak of even one small block per cycle would show over 10,000 cycles; the
     * bound leaves room for the allocator's own fluctuation. */
    ck_assert_msg(rss_max - rss_settled < 8 * 1024, "resident set grew by %ld kB",
                  rss_max - rss_settled);
#endif
    free_outputs(out);
    free_outputs(first);
    test_scratch_remove();
}
END_TEST

int main(void)
{
    /* Check in fork mode sends a test's duration to the parent as an int of microseconds,
     * which overflows after 35.8 minutes and turns a passed soak into an error; the long
     * soak takes longer, so long runs do without the fork (a failed assertion still fails
     * the run; meson's timeout still bounds it). */
    if (soak_cycles() > 2000)
        setenv("CK_FORK", "no", 1);
    /* Two cases, so that CK_RUN_CASE=threads runs the threads alone (under TSan). */
    const test_case cases[] = {{"threads", threads}, {"soak", soak}};
    return test_run_cases("concurrency", cases, sizeof(cases) / sizeof(cases[0]), 7200);
}
