/* The processes of an MPI job as `isl train` and `isl predict` use them (docs/scaling.md).
 *
 * A small module of the CLI, not of libisl: the library only sees an allreduce hook
 * (isl_trainer_set_allreduce). Built with MPI (meson -Dmpi=enabled|auto) it is
 * dist_mpi.c; without, dist_none.c, where every job is one process. A program started
 * without mpirun is one process either way (MPI is not even initialized).
 *
 * Collectives never wait forever: each polls its nonblocking MPI call against a
 * deadline, and a process that gets no answer within the timeout aborts the whole job
 * with a message naming the collective (a rank that died or hangs). Errors of one rank
 * end the job the same way (cli_dist_abort), never leaving the others waiting. */
#ifndef ISL_DIST_H
#define ISL_DIST_H

#include "isl.h"

#include <stddef.h>
#include <stdint.h>

#define CLI_DIST_DEFAULT_TIMEOUT 1800.0 /* seconds: rank 0 may validate meanwhile */

typedef struct cli_dist {
    int rank, size;
    int mpi;              /* MPI initialized by cli_dist_init */
    double timeout;       /* seconds a collective may wait */
    double comm_seconds;  /* spent in collectives so far (waiting included) */
    int64_t comm_bytes;   /* payload summed so far (per process) */
    int64_t comm_calls;
    void *pending;        /* gradient buckets started (MPI requests), not waited for yet */
    int num_pending, cap_pending;
} cli_dist;

/* 1 if this isl was built with MPI. */
int cli_dist_built(void);

/* Joins the MPI job if the process was started by mpirun (else rank 0 of 1, no MPI).
 * timeout: seconds (> 0). A watchdog ends the process if MPI_Init and a first barrier
 * have not completed within it (a rank that never starts, or died starting), so that no
 * rank waits forever. Returns 0, or -1 with a message on stderr. */
int cli_dist_init(cli_dist *d, double timeout);

/* Leaves the job after a barrier (all ranks must call it). */
void cli_dist_finalize(cli_dist *d);

/* Ends every process of the job with exit code `code` after printing the message
 * (prefixed with the rank); does not return. Alone, it just exits. */
void cli_dist_abort(cli_dist *d, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

/* isl_allreduce_fn (user = the cli_dist): sums over the ranks, in place. */
int cli_dist_allreduce(void *buf, size_t count, isl_reduce_type type, void *user);

/* Gradient buckets (isl_trainer_set_gradient_buckets, user = the cli_dist): start
 * begins an MPI_Iallreduce of one bucket and returns (it also lets MPI progress the
 * buckets started before); wait completes all of them, within the timeout. */
int cli_dist_allreduce_start(void *buf, size_t count, isl_reduce_type type, void *user);
int cli_dist_allreduce_wait(void *user);

/* The largest of every rank's *value (e.g. "some rank was interrupted"). 0 or -1. */
int cli_dist_max(cli_dist *d, int *value);

/* Compares bytes[0..n) (a digest, n small) over the ranks: *differing becomes the lowest
 * rank whose bytes differ from rank 0's, or -1 if every rank holds the same. 0 or -1. */
int cli_dist_compare(cli_dist *d, const void *bytes, int n, int *differing);

/* Many-field work: hands out 0, 1, ..., total - 1 to whichever rank asks first (rank 0
 * serves the counter from a thread, so a slow field never stalls the others), then -1.
 * Every rank calls cli_dist_queue_start, then cli_dist_queue_next until -1, then
 * cli_dist_queue_end. Alone: 0, 1, ..., total - 1. */
int cli_dist_queue_start(cli_dist *d, int64_t total);
int64_t cli_dist_queue_next(cli_dist *d);
void cli_dist_queue_end(cli_dist *d);

#endif
