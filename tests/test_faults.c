/* Fault injection (SQLite's malloc and I/O-error tests are the model): the Nth allocation,
 * or the Nth write, fsync, close, rename, open or temporary-file creation made by the
 * library fails, for N = 1, 2, ... until the call under test completes without meeting
 * the fault. Each call must then return an error with a message (or succeed with a
 * correct result), leave no HDF5 identifier or file descriptor open, leave its
 * destination with the old bytes, absent, or complete (never partial) and leave no
 * temporary file behind. Leaks are found by LeakSanitizer in the ASan build.
 *
 * How: tests/meson.build links this program with -Wl,--wrap=malloc,... so that the calls
 * of the library's own object files (the static isl_internal) and of this file go to the
 * __wrap_ functions below; HDF5, oneDNN and libc keep their own allocator, and the library
 * itself is untouched. HDF5 builds files in memory (lib/io/h5_io.c), so every byte the
 * library writes to disk goes through the wrapped calls. The disk-full test additionally
 * lets the kernel fail the writes (RLIMIT_FSIZE, EFBIG) in a forked child.
 *
 * The default suite samples N where a call makes many allocations and runs the costlier
 * variants (persistent faults, a second errno) only where they are cheap; ISL_LONG_TESTS=1
 * runs every N of every variant. */
#define _GNU_SOURCE
#include "test_util.h"
#include "error.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define BASE 8
#define NZ 2
#define SIDE 250
#define LABELS 2

static const char *const head_names[LABELS] = {"dapi_confocal", "tuj1_widefield"};

/* ---- the fault switch ----------------------------------------------------------- */

enum { FAULT_ALLOC = 1, FAULT_IO = 2 };

static atomic_int fault_kinds;  /* kinds armed; 0: none */
static atomic_long fault_left;  /* calls of an armed kind until the fault */
static atomic_int fault_persist; /* once hit, every later call fails too */
static atomic_long fault_hits;
static int fault_errno = ENOSPC;

static void fault_arm(int kinds, long n, int persist, int err)
{
    atomic_store(&fault_hits, 0);
    atomic_store(&fault_left, n);
    atomic_store(&fault_persist, persist);
    fault_errno = err;
    atomic_store(&fault_kinds, kinds);
}

/* Disarms; returns how many calls were failed. */
static long fault_disarm(void)
{
    atomic_store(&fault_kinds, 0);
    return atomic_load(&fault_hits);
}

static int fault_now(int kind)
{
    if (!(atomic_load(&fault_kinds) & kind))
        return 0;
    if ((atomic_load(&fault_persist) && atomic_load(&fault_hits) > 0) ||
        atomic_fetch_sub(&fault_left, 1) == 1) {
        atomic_fetch_add(&fault_hits, 1);
        return 1;
    }
    return 0;
}

/* ---- the wrapped calls ---------------------------------------------------------- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);
char *__real_strdup(const char *s);
ssize_t __real_write(int fd, const void *buf, size_t n);
int __real_close(int fd);
int __real_rename(const char *from, const char *to);
int __real_mkostemp64(char *tmpl, int flags);
int __real_fchmod(int fd, mode_t mode);
int __real_open64(const char *path, int flags, ...);
FILE *__real_fopen64(const char *path, const char *mode);

void *__wrap_malloc(size_t n)
{
    if (fault_now(FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    if (fault_now(FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    if (fault_now(FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_realloc(p, n);
}

void *__wrap_aligned_alloc(size_t align, size_t n)
{
    if (fault_now(FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_aligned_alloc(align, n);
}

int __wrap_posix_memalign(void **p, size_t align, size_t n)
{
    if (fault_now(FAULT_ALLOC))
        return ENOMEM;
    return __real_posix_memalign(p, align, n);
}

char *__wrap_strdup(const char *s)
{
    if (fault_now(FAULT_ALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return __real_strdup(s);
}

ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
    if (fault_now(FAULT_IO)) {
        errno = fault_errno;
        return -1;
    }
    return __real_write(fd, buf, n);
}

/* Durability is not under test here: not syncing saves seconds per call on a busy disk. */
int __wrap_fsync(int fd)
{
    if (fault_now(FAULT_IO)) {
        errno = fault_errno == ENOSPC ? ENOSPC : EIO;
        return -1;
    }
    return fcntl(fd, F_GETFD) < 0 ? -1 : 0;
}

/* Linux releases the descriptor even when close reports an error. */
int __wrap_close(int fd)
{
    int rc = __real_close(fd);
    if (fault_now(FAULT_IO)) {
        errno = EIO;
        return -1;
    }
    return rc;
}

int __wrap_rename(const char *from, const char *to)
{
    if (fault_now(FAULT_IO)) {
        errno = fault_errno;
        return -1;
    }
    return __real_rename(from, to);
}

int __wrap_mkostemp64(char *tmpl, int flags)
{
    if (fault_now(FAULT_IO)) {
        errno = fault_errno;
        return -1;
    }
    return __real_mkostemp64(tmpl, flags);
}

int __wrap_fchmod(int fd, mode_t mode)
{
    if (fault_now(FAULT_IO)) {
        errno = EIO;
        return -1;
    }
    return __real_fchmod(fd, mode);
}

int __wrap_open64(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    if (fault_now(FAULT_IO)) {
        errno = fault_errno == ENOSPC ? EMFILE : EIO;
        return -1;
    }
    return __real_open64(path, flags, mode);
}

FILE *__wrap_fopen64(const char *path, const char *mode)
{
    if (fault_now(FAULT_IO)) {
        errno = EMFILE;
        return NULL;
    }
    return __real_fopen64(path, mode);
}

/* ---- what must hold after every call -------------------------------------------- */

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    ck_assert(d != NULL);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void assert_no_temp_files(const char *what, long n)
{
    DIR *d = opendir(test_scratch_dir());
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)))
        ck_assert_msg(strstr(e->d_name, ".tmp") == NULL, "%s, fault %ld: %s left behind", what,
                      n, e->d_name);
    closedir(d);
}

/* The whole file (malloc'd), or NULL with *size 0 if it does not exist. */
static uint8_t *read_all(const char *path, size_t *size)
{
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        ck_assert_int_eq(errno, ENOENT);
        return NULL;
    }
    ck_assert(fseek(f, 0, SEEK_END) == 0);
    long n = ftell(f);
    rewind(f);
    uint8_t *b = malloc(n ? (size_t)n : 1);
    ck_assert((size_t)n == fread(b, 1, (size_t)n, f));
    fclose(f);
    *size = (size_t)n;
    return b;
}

static void write_all(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    ck_assert(f != NULL);
    ck_assert(fwrite(data, 1, size, f) == size);
    ck_assert(fclose(f) == 0);
}

/* One path under test. run() makes the call (the faults are armed only around it);
 * check() verifies and releases what a successful run() made, or releases what a failed
 * one left in ctx; verify_file() checks that dest holds a complete, correct file. */
typedef struct fault_case {
    const char *name;
    isl_status (*run)(void);
    void (*check)(isl_status st);
    void (*prepare)(void);          /* before each call, unarmed (may be NULL) */
    const char *dest;               /* the file run() writes, or NULL */
    void (*verify_file)(const char *path);
} fault_case;

static const char old_bytes[] = "the previous contents of the file\n";

/* Runs c once with the nth call of the armed kinds failing (n = LONG_MAX: none) and
 * checks what must hold afterwards. Returns how many calls were failed; *calls receives
 * how many calls of those kinds the run made before the fault (all of them if none). */
static long fault_run(const fault_case *c, const char *what, int kinds, long n, int persist,
                      int err, int has_old, long *calls)
{
    if (c->dest) {
        unlink(c->dest);
        if (has_old)
            write_all(c->dest, old_bytes, sizeof(old_bytes));
    }
    if (c->prepare)
        c->prepare();
    int fds = count_fds();
    isl_fail(ISL_ERROR_IO, "sentinel"); /* a failure must replace it */
    fault_arm(kinds, n, persist, err);
    isl_status st = c->run();
    long hits = fault_disarm();
    *calls = n - atomic_load(&fault_left);
    ck_assert_msg(hits > 0 || st == ISL_OK, "%s, fault %ld: no fault met, but %s: %s", what, n,
                  isl_status_string(st), isl_last_error());
    if (st != ISL_OK)
        ck_assert_msg(strcmp(isl_last_error(), "sentinel") != 0,
                      "%s, fault %ld: %s without a message", what, n, isl_status_string(st));
    c->check(st);
    ck_assert_msg(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0,
                  "%s, fault %ld: HDF5 identifiers left open", what, n);
    ck_assert_msg(count_fds() == fds, "%s, fault %ld: file descriptors leaked (%d -> %d)", what,
                  n, fds, count_fds());
    if (c->dest) {
        size_t size;
        uint8_t *now = read_all(c->dest, &size);
        int old = has_old ? now && size == sizeof(old_bytes) && memcmp(now, old_bytes, size) == 0
                          : now == NULL;
        /* Anything but the old state must be the whole new file: after a successful call,
         * or when only the directory sync after the rename failed. */
        if (st == ISL_OK || !old) {
            ck_assert_msg(now != NULL, "%s, fault %ld: the file is gone", what, n);
            c->verify_file(c->dest);
        }
        free(now);
        assert_no_temp_files(what, n);
    }
    return hits;
}

static int long_tests(void)
{
    const char *v = getenv("ISL_LONG_TESTS");
    return v && strcmp(v, "1") == 0;
}

/* Totals for docs/reliability.md. */
static long total_injected, total_calls;

/* Runs c with the Nth call of the armed kinds failing, for every N up to the number of
 * calls an unfaulted run makes (ISL_LONG_TESTS=1, or when there are at most SAMPLED of
 * them), else for the first and last SAMPLED / 4 and SAMPLED / 2 spread evenly between.
 * has_old: dest holds old_bytes before each call (else it is absent). Returns the number
 * of runs that met a fault. */
#define SAMPLED 24
static long fault_sweep(const fault_case *c, int kinds, int persist, int err, int has_old)
{
    char what[160];
    snprintf(what, sizeof(what), "%s (%s%s, %s%s)", c->name,
             kinds == FAULT_ALLOC ? "allocation" : "I/O", persist ? ", persistent" : "",
             strerror(err), !c->dest ? "" : has_old ? ", replacing a file" : ", new file");
    double t0 = test_now();
    long calls, n_calls, injected = 0;
    ck_assert_int_eq(fault_run(c, what, kinds, LONG_MAX, persist, err, has_old, &calls), 0);
    long edge = SAMPLED / 4, step = calls <= SAMPLED || long_tests()
                                        ? 1 : (calls - 2 * edge) / (SAMPLED / 2) + 1;
    for (long n = 1; n <= calls; n += (n < edge || n > calls - edge) ? 1 : step) {
        ck_assert_msg(fault_run(c, what, kinds, n, persist, err, has_old, &n_calls) > 0,
                      "%s: fault %ld of %ld not met (the calls are not deterministic)", what,
                      n, calls);
        injected++;
    }
    /* And the first call past the last: no fault, a correct result. */
    ck_assert_int_eq(fault_run(c, what, kinds, calls + 1, persist, err, has_old, &n_calls), 0);
    printf("faults: %-72s %5ld of %5ld calls failed (%.1f s)\n", what, injected, calls,
           test_now() - t0);
    total_injected += injected;
    total_calls += calls;
    return injected;
}

/* ---- fixtures ------------------------------------------------------------------- */

static struct {
    char model_path[4096], dest[4096], dataset_path[4096], ckpt_path[4096];
    isl_model *model;     /* the reference model, saved at model_path */
    isl_model *result;    /* what a run made */
    isl_model *fresh;     /* a freshly loaded model (empty plan cache) for predict */
    isl_predict_options *popts;
    float *input;         /* NZ x H x W */
    float *ref_out[LABELS + 1], *out[LABELS + 1];
    isl_dataset *dataset, *dataset_result;
    isl_trainer *trainer, *trainer_result;
    isl_train_options *topts;
} F;

#define IMG 40 /* predict: a 40 x 40 image (one padded 250 x 250 tile) */

#define MAX_ARRAYS 4096
typedef struct { float *data[MAX_ARRAYS]; size_t count[MAX_ARRAYS]; int n; } param_list;

static int collect(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    (void)path;
    param_list *l = user;
    size_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (size_t)dims[i];
    ck_assert(l->n < MAX_ARRAYS);
    l->data[l->n] = data;
    l->count[l->n++] = count;
    return 0;
}

static void assert_same_params(const isl_params *a, const isl_params *b)
{
    static param_list la, lb;
    la.n = lb.n = 0;
    isl_params_visit((isl_params *)a, collect, &la);
    isl_params_visit((isl_params *)b, collect, &lb);
    ck_assert_int_eq(la.n, lb.n);
    for (int i = 0; i < la.n; i++) {
        ck_assert_uint_eq(la.count[i], lb.count[i]);
        ck_assert(memcmp(la.data[i], lb.data[i], la.count[i] * sizeof(float)) == 0);
    }
}

static void verify_model_file(const char *path)
{
    isl_model *m = NULL;
    ck_assert_msg(isl_model_load(path, &m) == ISL_OK, "%s", isl_last_error());
    assert_same_params(&m->params, &F.model->params);
    isl_model_free(m);
}

static void setup(void)
{
    test_scratch_make("faults");
    test_scratch_path(F.model_path, sizeof(F.model_path), "model.h5");
    test_scratch_path(F.dest, sizeof(F.dest), "dest.h5");
    test_scratch_path(F.dataset_path, sizeof(F.dataset_path), "dataset.h5");
    test_scratch_path(F.ckpt_path, sizeof(F.ckpt_path), "checkpoint.h5");
    F.model = test_new_model(BASE, NZ, LABELS, head_names, 5, "none");
    ck_assert_msg(isl_model_save(F.model, F.model_path) == ISL_OK, "%s", isl_last_error());
}

static void teardown(void)
{
    isl_model_free(F.model);
    test_scratch_remove();
    memset(&F, 0, sizeof(F));
}

/* ---- model load and save -------------------------------------------------------- */

static isl_status run_load(void) { return isl_model_load(F.model_path, &F.result); }

static void check_load(isl_status st)
{
    if (st == ISL_OK)
        assert_same_params(&F.result->params, &F.model->params);
    else
        ck_assert_msg(F.result == NULL, "a failed load returned a model");
    isl_model_free(F.result);
    F.result = NULL;
}

static isl_status run_save(void) { return isl_model_save(F.model, F.dest); }
static void check_nothing(isl_status st) { (void)st; }

static const fault_case load_case = {"model load", run_load, check_load, NULL, NULL, NULL};
static const fault_case save_case = {"model save", run_save, check_nothing, NULL, F.dest,
                                     verify_model_file};

START_TEST(model_load_and_save)
{
    long total = fault_sweep(&load_case, FAULT_ALLOC, 0, ENOMEM, 0);
    if (long_tests())
        total += fault_sweep(&load_case, FAULT_ALLOC, 1, ENOMEM, 0);
    total += fault_sweep(&save_case, FAULT_ALLOC, 0, ENOMEM, 1);
    if (long_tests())
        total += fault_sweep(&save_case, FAULT_ALLOC, 1, ENOMEM, 0);
    total += fault_sweep(&save_case, FAULT_IO, 0, ENOSPC, 1);
    if (long_tests())
        total += fault_sweep(&save_case, FAULT_IO, 0, EIO, 0);
    total += fault_sweep(&save_case, FAULT_IO, 1, EIO, 1);
    ck_assert(total > 20); /* the wrappers do see the library's calls */
}
END_TEST

/* ---- prediction ----------------------------------------------------------------- */

static void prepare_predict(void)
{
    ck_assert_msg(isl_model_load(F.model_path, &F.fresh) == ISL_OK, "%s", isl_last_error());
}

static isl_status run_predict(void)
{
    float *outputs[(LABELS + 1) * ISL_STAT_COUNT] = {0};
    for (int h = 0; h <= LABELS; h++) {
        memset(F.out[h], 0xff, sizeof(float) * (h == LABELS ? NZ : 1) * IMG * IMG);
        outputs[h * ISL_STAT_COUNT + ISL_STAT_MEAN] = F.out[h];
    }
    isl_stack s = {F.input, ISL_DTYPE_F32, NZ, IMG, IMG};
    return isl_predict_image(F.fresh, F.popts, &s, outputs);
}

static void check_predict(isl_status st)
{
    if (st == ISL_OK)
        for (int h = 0; h <= LABELS; h++)
            ck_assert_msg(memcmp(F.out[h], F.ref_out[h],
                                 sizeof(float) * (h == LABELS ? NZ : 1) * IMG * IMG) == 0,
                          "head %d: a prediction that met a fault differs", h);
    isl_model_free(F.fresh);
    F.fresh = NULL;
}

static const fault_case predict_case = {"predict", run_predict, check_predict, prepare_predict,
                                         NULL, NULL};

START_TEST(predict)
{
    ck_assert_int_eq(isl_model_num_heads(F.model), LABELS + 1); /* + the autoencoder */
    ck_assert_int_eq(isl_predict_options_create(&F.popts), ISL_OK);
    ck_assert_int_eq(isl_predict_options_set_threads(F.popts, 1), ISL_OK);
    isl_stat mean = ISL_STAT_MEAN;
    ck_assert_int_eq(isl_predict_options_set_stats(F.popts, 1, &mean), ISL_OK);
    F.input = malloc(sizeof(float) * NZ * IMG * IMG);
    uint64_t s = 9;
    for (int i = 0; i < NZ * IMG * IMG; i++)
        F.input[i] = (float)test_uniform(&s);
    for (int h = 0; h <= LABELS; h++) {
        size_t n = (size_t)(h == LABELS ? NZ : 1) * IMG * IMG;
        F.ref_out[h] = malloc(sizeof(float) * n);
        F.out[h] = malloc(sizeof(float) * n);
    }
    /* The reference: an unfaulted run. */
    prepare_predict();
    ck_assert_msg(run_predict() == ISL_OK, "%s", isl_last_error());
    for (int h = 0; h <= LABELS; h++)
        memcpy(F.ref_out[h], F.out[h], sizeof(float) * (h == LABELS ? NZ : 1) * IMG * IMG);
    check_predict(ISL_ERROR_IO); /* frees F.fresh */

    long total = fault_sweep(&predict_case, FAULT_ALLOC, 0, ENOMEM, 0);
    if (long_tests()) /* each call builds a plan: a quarter of a second */
        total += fault_sweep(&predict_case, FAULT_ALLOC, 1, ENOMEM, 0);
    ck_assert(total > 5);
    for (int h = 0; h <= LABELS; h++) {
        free(F.ref_out[h]);
        free(F.out[h]);
    }
    free(F.input);
    isl_predict_options_free(F.popts);
}
END_TEST

/* ---- dataset build, save and load ---------------------------------------------- */

#define DH 30
#define DW 34

static uint16_t ds_stack[NZ * DH * DW];
static uint8_t ds_label[DH * DW];
static uint8_t ds_mask[DH * DW];

/* Builds a two-well dataset in F.dataset_result (the whole build is under faults). */
static isl_status run_build(void)
{
    isl_dataset *d = NULL;
    isl_status st = isl_dataset_create(NZ, &d);
    isl_stack stack = {ds_stack, ISL_DTYPE_U16, NZ, DH, DW};
    isl_stack label = {ds_label, ISL_DTYPE_U8, 1, DH - 4, DW - 6};
    int well = -1;
    if (st == ISL_OK)
        st = isl_dataset_add_well(d, "A1", "control", 0.65, &stack, &well);
    if (st == ISL_OK)
        st = isl_dataset_add_target(d, well, "dapi_confocal", 2, 3, &label, ds_mask);
    if (st == ISL_OK)
        st = isl_dataset_add_well(d, "B2", NULL, 0, &stack, &well);
    if (st == ISL_OK)
        st = isl_dataset_add_target(d, well, "tuj1_widefield", 0, 0, &label, NULL);
    if (st != ISL_OK) {
        isl_dataset_free(d);
        d = NULL;
    }
    F.dataset_result = d;
    return st;
}

static void assert_dataset_ok(const isl_dataset *d)
{
    ck_assert_int_eq(isl_dataset_num_wells(d), 2);
    ck_assert_int_eq(isl_dataset_num_labels(d), 2);
    ck_assert_str_eq(isl_dataset_well_name(d, 1), "B2");
    const float *s = isl_dataset_well_stack(d, 0);
    for (int i = 0; i < NZ * DH * DW; i++)
        ck_assert(fabs(s[i] - ds_stack[i] / 65535.0) < 1e-6);
}

static void check_build(isl_status st)
{
    if (st == ISL_OK)
        assert_dataset_ok(F.dataset_result);
    isl_dataset_free(F.dataset_result);
    F.dataset_result = NULL;
}

static isl_status run_dataset_save(void) { return isl_dataset_save(F.dataset, F.dest); }

static void verify_dataset_file(const char *path)
{
    isl_dataset *d = NULL;
    ck_assert_msg(isl_dataset_load(path, &d) == ISL_OK, "%s", isl_last_error());
    assert_dataset_ok(d);
    isl_dataset_free(d);
}

static isl_status run_dataset_load(void)
{
    return isl_dataset_load(F.dataset_path, &F.dataset_result);
}

static const fault_case build_case = {"dataset build", run_build, check_build, NULL, NULL,
                                      NULL};
static const fault_case dsave_case = {"dataset save", run_dataset_save, check_nothing, NULL,
                                      F.dest, verify_dataset_file};
static const fault_case dload_case = {"dataset load", run_dataset_load, check_build, NULL, NULL,
                                      NULL};

START_TEST(dataset)
{
    uint64_t s = 3;
    for (int i = 0; i < NZ * DH * DW; i++)
        ds_stack[i] = (uint16_t)(isl_splitmix64(&s) >> 48);
    for (int i = 0; i < DH * DW; i++) {
        ds_label[i] = (uint8_t)i;
        ds_mask[i] = (uint8_t)(i % 3 != 0);
    }
    ck_assert_msg(run_build() == ISL_OK, "%s", isl_last_error());
    F.dataset = F.dataset_result;
    F.dataset_result = NULL;
    ck_assert_msg(isl_dataset_save(F.dataset, F.dataset_path) == ISL_OK, "%s", isl_last_error());

    long total = fault_sweep(&build_case, FAULT_ALLOC, 0, ENOMEM, 0);
    total += fault_sweep(&build_case, FAULT_ALLOC, 1, ENOMEM, 0);
    total += fault_sweep(&dsave_case, FAULT_ALLOC, 0, ENOMEM, 1);
    total += fault_sweep(&dsave_case, FAULT_IO, 0, ENOSPC, 0);
    total += fault_sweep(&dsave_case, FAULT_IO, 0, EIO, 1);
    total += fault_sweep(&dload_case, FAULT_ALLOC, 0, ENOMEM, 0);
    total += fault_sweep(&dload_case, FAULT_ALLOC, 1, ENOMEM, 0);
    ck_assert(total > 10);
    isl_dataset_free(F.dataset);
}
END_TEST

/* ---- checkpoints ---------------------------------------------------------------- */

static isl_status run_ckpt_save(void) { return isl_trainer_save(F.trainer, F.dest); }

static void assert_same_trainer(const isl_trainer *a, const isl_trainer *b)
{
    ck_assert_int_eq(isl_trainer_step_count(a), isl_trainer_step_count(b));
    isl_model *ma = NULL, *mb = NULL;
    ck_assert_int_eq(isl_trainer_model(a, &ma), ISL_OK);
    ck_assert_int_eq(isl_trainer_model(b, &mb), ISL_OK);
    assert_same_params(&ma->params, &mb->params);
    isl_model_free(ma);
    isl_model_free(mb);
}

static void verify_ckpt_file(const char *path)
{
    isl_trainer *t = NULL;
    ck_assert_msg(isl_trainer_load(path, F.topts, &t) == ISL_OK, "%s", isl_last_error());
    assert_same_trainer(t, F.trainer);
    isl_trainer_free(t);
}

static isl_status run_ckpt_load(void)
{
    return isl_trainer_load(F.ckpt_path, F.topts, &F.trainer_result);
}

static void check_ckpt_load(isl_status st)
{
    if (st == ISL_OK)
        assert_same_trainer(F.trainer_result, F.trainer);
    isl_trainer_free(F.trainer_result);
    F.trainer_result = NULL;
}

static isl_status run_trainer_create(void)
{
    return isl_trainer_create(F.model, F.topts, &F.trainer_result);
}

static void check_trainer_create(isl_status st)
{
    if (st == ISL_OK)
        ck_assert_int_eq(isl_trainer_step_count(F.trainer_result), 0);
    isl_trainer_free(F.trainer_result);
    F.trainer_result = NULL;
}

static const fault_case csave_case = {"checkpoint save", run_ckpt_save, check_nothing, NULL,
                                      F.dest, verify_ckpt_file};
static const fault_case cload_case = {"checkpoint load", run_ckpt_load, check_ckpt_load, NULL,
                                      NULL, NULL};
static const fault_case tcreate_case = {"trainer create", run_trainer_create,
                                        check_trainer_create, NULL, NULL, NULL};

START_TEST(checkpoint)
{
    ck_assert_int_eq(isl_train_options_create(&F.topts), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_threads(F.topts, 1), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_seed(F.topts, 11), ISL_OK);
    ck_assert_int_eq(isl_train_options_set_average_from(F.topts, 0), ISL_OK);
    ck_assert_msg(isl_trainer_create(F.model, F.topts, &F.trainer) == ISL_OK, "%s",
                  isl_last_error());
    ck_assert_msg(isl_trainer_save(F.trainer, F.ckpt_path) == ISL_OK, "%s", isl_last_error());

    long total = fault_sweep(&tcreate_case, FAULT_ALLOC, 0, ENOMEM, 0);
    total += fault_sweep(&csave_case, FAULT_ALLOC, 0, ENOMEM, 1);
    if (long_tests())
        total += fault_sweep(&csave_case, FAULT_ALLOC, 1, ENOMEM, 0);
    total += fault_sweep(&csave_case, FAULT_IO, 0, ENOSPC, 1);
    if (long_tests())
        total += fault_sweep(&csave_case, FAULT_IO, 1, EIO, 0);
    total += fault_sweep(&cload_case, FAULT_ALLOC, 0, ENOMEM, 0);
    if (long_tests())
        total += fault_sweep(&cload_case, FAULT_ALLOC, 1, ENOMEM, 0);
    ck_assert(total > 20);
    isl_trainer_free(F.trainer);
    isl_train_options_free(F.topts);
}
END_TEST

/* ---- a real full disk ------------------------------------------------------------ */

/* The kernel refuses writes past RLIMIT_FSIZE (EFBIG, with SIGXFSZ ignored): save a model
 * over an old file with the limit at several sizes below the file's, in a forked child
 * (the limit is process-wide). */
START_TEST(file_size_limit)
{
    ck_assert_msg(isl_model_save(F.model, F.dest) == ISL_OK, "%s", isl_last_error());
    size_t full;
    free(read_all(F.dest, &full));
    const size_t limits[] = {0, 1, 4096, full / 2, full - 1};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        write_all(F.dest, old_bytes, sizeof(old_bytes));
        fflush(NULL);
        pid_t pid = fork();
        ck_assert(pid >= 0);
        if (pid == 0) {
            signal(SIGXFSZ, SIG_IGN);
            struct rlimit r = {limits[i], limits[i]};
            if (setrlimit(RLIMIT_FSIZE, &r) != 0)
                _exit(2);
            isl_status st = isl_model_save(F.model, F.dest);
            int efbig = strstr(isl_last_error(), strerror(EFBIG)) != NULL;
            _exit(st == ISL_ERROR_IO && efbig ? 0 : 1);
        }
        int status;
        ck_assert(waitpid(pid, &status, 0) == pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "limit %zu: the save did not fail with EFBIG (status %d)", limits[i],
                      status);
        size_t size;
        uint8_t *now = read_all(F.dest, &size);
        ck_assert_msg(now && size == sizeof(old_bytes) && memcmp(now, old_bytes, size) == 0,
                      "limit %zu: the old file was not kept", limits[i]);
        free(now);
        assert_no_temp_files("file size limit", (long)i);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("faults");
    TCase *tc = tcase_create("faults");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, model_load_and_save);
    tcase_add_test(tc, predict);
    tcase_add_test(tc, dataset);
    tcase_add_test(tc, checkpoint);
    tcase_add_test(tc, file_size_limit);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    printf("faults: %ld faults injected in all (%s) over %ld counted calls\n", total_injected,
           long_tests() ? "every N" : "sampled N; ISL_LONG_TESTS=1 for every N", total_calls);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
