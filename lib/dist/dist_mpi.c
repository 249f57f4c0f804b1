/* cli_dist on MPI (dist.h). */
#include "dist.h"

#include <mpi.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TAG_ASK 7101   /* a rank asks rank 0 for the next field */
#define TAG_GIVE 7102  /* rank 0's answer: an index, or -1 */

int cli_dist_built(void) { return 1; }

/* Started by mpirun (Open MPI, PMIx) or an MPICH-style launcher. */
static int launched_by_mpi(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        if (getenv(vars[i]))
            return 1;
    return 0;
}

static int thread_multiple; /* the queue's server thread may call MPI */

static void wait_for(cli_dist *d, MPI_Request *req, const char *what);

/* The start-up watchdog: MPI_Init waits for every rank of the job, and there is no
 * communicator yet to time out on, so a thread ends this process if MPI_Init has not
 * returned in time (mpirun then ends the rest of the job). */
static struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    int done;
    double timeout;
} watchdog = {.lock = PTHREAD_MUTEX_INITIALIZER, .done_cond = PTHREAD_COND_INITIALIZER};

static void *watch(void *arg)
{
    (void)arg;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)watchdog.timeout;
    deadline.tv_nsec += (long)((watchdog.timeout - (double)(time_t)watchdog.timeout) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&watchdog.lock);
    int rc = 0;
    while (!watchdog.done && rc == 0)
        rc = pthread_cond_timedwait(&watchdog.done_cond, &watchdog.lock, &deadline);
    const int done = watchdog.done;
    pthread_mutex_unlock(&watchdog.lock);
    if (!done) {
        const char *rank = getenv("OMPI_COMM_WORLD_RANK");
        if (!rank)
            rank = getenv("PMIX_RANK");
        fprintf(stderr, "isl: error: rank %s: MPI_Init did not finish within %.0f s: a rank "
                "never started or died starting (raise the limit with --comm-timeout); "
                "ending this rank\n", rank ? rank : "?", watchdog.timeout);
        fflush(stderr);
        _exit(1);
    }
    return NULL;
}

int cli_dist_init(cli_dist *d, double timeout)
{
    memset(d, 0, sizeof(*d));
    d->size = 1;
    d->timeout = timeout > 0 ? timeout : CLI_DIST_DEFAULT_TIMEOUT;
    if (!launched_by_mpi())
        return 0;
    watchdog.done = 0;
    watchdog.timeout = d->timeout;
    if (pthread_create(&watchdog.thread, NULL, watch, NULL) != 0) {
        fprintf(stderr, "isl: error: cannot start the MPI start-up watchdog\n");
        return -1;
    }
    int provided = MPI_THREAD_SINGLE;
    const int init = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
    pthread_mutex_lock(&watchdog.lock);
    watchdog.done = 1;
    pthread_cond_signal(&watchdog.done_cond);
    pthread_mutex_unlock(&watchdog.lock);
    pthread_join(watchdog.thread, NULL);
    if (init != MPI_SUCCESS) {
        fprintf(stderr, "isl: error: MPI_Init_thread failed\n");
        return -1;
    }
    thread_multiple = provided >= MPI_THREAD_MULTIPLE;
    d->mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    /* Every rank is in: the first collective, under the timeout like every other. */
    if (d->size > 1) {
        MPI_Request req;
        if (MPI_Ibarrier(MPI_COMM_WORLD, &req) != MPI_SUCCESS)
            cli_dist_abort(d, 1, "MPI failed in the start-up barrier");
        wait_for(d, &req, "the start-up barrier");
        d->comm_seconds = 0; /* the figures are of the work after it */
        d->comm_calls = 0;
    }
    return 0;
}

void cli_dist_abort(cli_dist *d, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char message[1024];
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    if (d && d->mpi && d->size > 1) {
        fprintf(stderr, "isl: error: rank %d of %d: %s; ending the MPI job\n", d->rank, d->size,
                message);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
    } else
        fprintf(stderr, "isl: error: %s\n", message);
    exit(code ? code : 1);
}

/* Waits for req, polling: spins briefly (small collectives answer within microseconds),
 * then sleeps up to 0.2 ms between polls so that the ranks sharing cores keep them. */
static void wait_for(cli_dist *d, MPI_Request *req, const char *what)
{
    const double start = MPI_Wtime(), deadline = start + d->timeout;
    long polls = 0;
    long nap = 1000; /* ns */
    for (;;) {
        int done = 0;
        if (MPI_Test(req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            cli_dist_abort(d, 1, "MPI failed in %s", what);
        if (done)
            break;
        if (MPI_Wtime() > deadline)
            cli_dist_abort(d, 1, "no answer from the other ranks for %.0f s in %s: a rank has "
                           "died or hangs (raise the limit with --comm-timeout)",
                           d->timeout, what);
        if (++polls > 2000) {
            struct timespec ts = {0, nap};
            nanosleep(&ts, NULL);
            nap = nap < 200000 ? 2 * nap : 200000;
        }
    }
    d->comm_seconds += MPI_Wtime() - start;
    d->comm_calls++;
}

/* Starts the in-place sums of buf over the ranks: requests appended to d->pending. */
static int start_sum(cli_dist *d, void *buf, size_t count, isl_reduce_type type)
{
    const MPI_Datatype t = type == ISL_REDUCE_FLOAT64 ? MPI_DOUBLE : MPI_FLOAT;
    const size_t elem = type == ISL_REDUCE_FLOAT64 ? sizeof(double) : sizeof(float);
    /* MPI counts are ints: large buffers go in pieces. */
    const size_t piece = (size_t)1 << 28;
    for (size_t off = 0; off < count; off += piece) {
        if (d->num_pending == d->cap_pending) {
            int cap = d->cap_pending ? 2 * d->cap_pending : 16;
            MPI_Request *r = realloc(d->pending, sizeof(MPI_Request) * (size_t)cap);
            if (!r)
                return -1;
            d->pending = r;
            d->cap_pending = cap;
        }
        MPI_Request *req = (MPI_Request *)d->pending + d->num_pending;
        int n = (int)(count - off < piece ? count - off : piece);
        if (MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * elem, n, t, MPI_SUM,
                           MPI_COMM_WORLD, req) != MPI_SUCCESS)
            return -1;
        d->num_pending++;
    }
    d->comm_bytes += (int64_t)(count * elem);
    return 0;
}

/* Completes d->pending[first..]. */
static void wait_pending(cli_dist *d, int first, const char *what)
{
    for (int i = first; i < d->num_pending; i++)
        wait_for(d, (MPI_Request *)d->pending + i, what);
    d->num_pending = first;
}

int cli_dist_allreduce(void *buf, size_t count, isl_reduce_type type, void *user)
{
    cli_dist *d = user;
    if (!d->mpi || d->size == 1)
        return 0;
    const int first = d->num_pending; /* gradient buckets may be in flight */
    if (start_sum(d, buf, count, type) != 0)
        return -1;
    wait_pending(d, first, type == ISL_REDUCE_FLOAT64 ? "a float64 allreduce"
                                                      : "the gradient allreduce");
    return 0;
}

int cli_dist_allreduce_start(void *buf, size_t count, isl_reduce_type type, void *user)
{
    cli_dist *d = user;
    if (!d->mpi || d->size == 1)
        return 0;
    const double start = MPI_Wtime();
    /* Open MPI moves nonblocking collectives on only inside MPI calls: let the buckets
     * in flight progress here (a false flag leaves every request as it was). */
    int flag = 0;
    if (d->num_pending > 0 &&
        MPI_Testall(d->num_pending, d->pending, &flag, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
        return -1;
    const int rc = start_sum(d, buf, count, type);
    d->comm_seconds += MPI_Wtime() - start;
    return rc;
}

int cli_dist_allreduce_wait(void *user)
{
    cli_dist *d = user;
    if (d->mpi && d->size > 1)
        wait_pending(d, 0, "a gradient bucket's allreduce");
    return 0;
}

int cli_dist_max(cli_dist *d, int *value)
{
    if (!d->mpi || d->size == 1)
        return 0;
    MPI_Request req;
    if (MPI_Iallreduce(MPI_IN_PLACE, value, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD, &req) !=
        MPI_SUCCESS)
        return -1;
    wait_for(d, &req, "an allreduce of flags");
    return 0;
}

int cli_dist_compare(cli_dist *d, const void *bytes, int n, int *differing)
{
    *differing = -1;
    if (!d->mpi || d->size == 1)
        return 0;
    unsigned char *all = malloc((size_t)n * (size_t)d->size);
    if (!all)
        return -1;
    MPI_Request req;
    if (MPI_Iallgather(bytes, n, MPI_BYTE, all, n, MPI_BYTE, MPI_COMM_WORLD, &req) !=
        MPI_SUCCESS) {
        free(all);
        return -1;
    }
    wait_for(d, &req, "a comparison of the ranks' states");
    for (int k = 1; k < d->size && *differing < 0; k++)
        if (memcmp(all + (size_t)k * (size_t)n, all, (size_t)n) != 0)
            *differing = k;
    free(all);
    return 0;
}

void cli_dist_finalize(cli_dist *d)
{
    if (!d->mpi)
        return;
    if (d->size > 1) {
        MPI_Request req;
        if (MPI_Ibarrier(MPI_COMM_WORLD, &req) == MPI_SUCCESS)
            wait_for(d, &req, "the final barrier");
    }
    MPI_Finalize();
    d->mpi = 0;
    free(d->pending);
    d->pending = NULL;
}

/* ------------------------------------------------------------------------------------ */
/* The field queue                                                                      */
/* ------------------------------------------------------------------------------------ */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static struct {
    atomic_llong next;  /* the next index to hand out */
    int64_t total;
    int serving;        /* rank 0's server thread runs */
    atomic_int served;  /* ... and has told every other rank -1 */
    _Atomic double last_request; /* now_seconds() of the last request it answered */
    int64_t round;      /* without MPI_THREAD_MULTIPLE: this rank's last index, or -1 */
    pthread_t server;
    cli_dist *d;
} queue;

static int64_t take(void)
{
    long long i = atomic_fetch_add(&queue.next, 1);
    return i < queue.total ? (int64_t)i : -1;
}

/* Rank 0: answers every other rank's requests until each has been told -1. */
static void *serve(void *arg)
{
    (void)arg;
    int finished = 0;
    const int others = queue.d->size - 1;
    long nap = 1000;
    while (finished < others) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, TAG_ASK, MPI_COMM_WORLD, &flag, &st) != MPI_SUCCESS)
            cli_dist_abort(queue.d, 1, "MPI failed serving the field queue");
        if (!flag) { /* a field takes seconds: no need to spin */
            struct timespec ts = {0, nap};
            nanosleep(&ts, NULL);
            nap = nap < 1000000 ? 2 * nap : 1000000;
            continue;
        }
        nap = 1000;
        char dummy;
        MPI_Recv(&dummy, 1, MPI_CHAR, st.MPI_SOURCE, TAG_ASK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        long long i = (long long)take();
        MPI_Send(&i, 1, MPI_LONG_LONG, st.MPI_SOURCE, TAG_GIVE, MPI_COMM_WORLD);
        atomic_store(&queue.last_request, now_seconds());
        finished += i < 0;
    }
    atomic_store(&queue.served, 1);
    return NULL;
}

int cli_dist_queue_start(cli_dist *d, int64_t total)
{
    atomic_store(&queue.next, 0);
    queue.total = total;
    queue.d = d;
    queue.serving = 0;
    atomic_store(&queue.served, 0);
    queue.round = -1;
    if (d->mpi && d->size > 1 && thread_multiple && d->rank == 0) {
        if (pthread_create(&queue.server, NULL, serve, NULL) != 0) {
            fprintf(stderr, "isl: error: cannot start the field queue's thread\n");
            return -1;
        }
        queue.serving = 1;
    }
    return 0;
}

int64_t cli_dist_queue_next(cli_dist *d)
{
    const int shared = d->mpi && d->size > 1;
    if (shared && !thread_multiple) { /* no server thread possible: round robin */
        queue.round = queue.round < 0 ? d->rank : queue.round + d->size;
        return queue.round < queue.total ? queue.round : -1;
    }
    if (!shared || d->rank == 0)
        return take();
    char ask = 0;
    long long i = -1;
    MPI_Request req;
    /* A field of rank 0's may take long, but its server thread answers at once: the
     * timeout applies. */
    if (MPI_Isend(&ask, 1, MPI_CHAR, 0, TAG_ASK, MPI_COMM_WORLD, &req) != MPI_SUCCESS)
        cli_dist_abort(d, 1, "MPI failed asking for a field");
    wait_for(d, &req, "a request for the next field");
    if (MPI_Irecv(&i, 1, MPI_LONG_LONG, 0, TAG_GIVE, MPI_COMM_WORLD, &req) != MPI_SUCCESS)
        cli_dist_abort(d, 1, "MPI failed asking for a field");
    wait_for(d, &req, "waiting for the next field");
    return (int64_t)i;
}

/* Rank 0, its own fields done, waits for the others to ask for their last: each does
 * within one field's time, so a rank silent for the timeout (counted from the last
 * request, or from now) has died or hangs. */
void cli_dist_queue_end(cli_dist *d)
{
    if (!queue.serving)
        return;
    const double start = now_seconds();
    while (!atomic_load(&queue.served)) {
        double last = atomic_load(&queue.last_request);
        if (now_seconds() - (last > start ? last : start) > d->timeout)
            cli_dist_abort(d, 1, "no request for a field from the other ranks for %.0f s "
                           "while they should be finishing theirs: a rank has died or hangs "
                           "(raise the limit with --comm-timeout)", d->timeout);
        struct timespec ts = {0, 20000000}; /* 20 ms: fields take far longer */
        nanosleep(&ts, NULL);
    }
    pthread_join(queue.server, NULL);
    queue.serving = 0;
}
