/* cli_dist without MPI (dist.h): every job is one process. */
#include "dist.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t next_index, total_count;

int cli_dist_built(void) { return 0; }

int cli_dist_init(cli_dist *d, double timeout)
{
    memset(d, 0, sizeof(*d));
    d->size = 1;
    d->timeout = timeout > 0 ? timeout : CLI_DIST_DEFAULT_TIMEOUT;
    if (getenv("OMPI_COMM_WORLD_SIZE") && atoi(getenv("OMPI_COMM_WORLD_SIZE")) > 1)
        fprintf(stderr, "isl: warning: started by mpirun, but this isl was built without MPI "
                        "(meson -Dmpi=enabled): every rank runs the whole job alone\n");
    return 0;
}

void cli_dist_finalize(cli_dist *d) { (void)d; }

void cli_dist_abort(cli_dist *d, int code, const char *fmt, ...)
{
    (void)d;
    va_list ap;
    va_start(ap, fmt);
    fputs("isl: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code ? code : 1);
}

int cli_dist_allreduce(void *buf, size_t count, isl_reduce_type type, void *user)
{
    (void)buf, (void)count, (void)type, (void)user;
    return 0;
}

int cli_dist_allreduce_start(void *buf, size_t count, isl_reduce_type type, void *user)
{
    return cli_dist_allreduce(buf, count, type, user);
}

int cli_dist_allreduce_wait(void *user)
{
    (void)user;
    return 0;
}

int cli_dist_max(cli_dist *d, int *value)
{
    (void)d, (void)value;
    return 0;
}

int cli_dist_compare(cli_dist *d, const void *bytes, int n, int *differing)
{
    (void)d, (void)bytes, (void)n;
    *differing = -1;
    return 0;
}

int cli_dist_queue_start(cli_dist *d, int64_t total)
{
    (void)d;
    next_index = 0;
    total_count = total;
    return 0;
}

int64_t cli_dist_queue_next(cli_dist *d)
{
    (void)d;
    return next_index < total_count ? next_index++ : -1;
}

void cli_dist_queue_end(cli_dist *d) { (void)d; }
