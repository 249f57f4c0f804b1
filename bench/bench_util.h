/* Clocks and memory figures shared by the benchmarks. */
#ifndef ISL_BENCH_UTIL_H
#define ISL_BENCH_UTIL_H

#include <sys/resource.h>
#include <time.h>

static inline double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* User + system CPU seconds of this process (all threads). */
static inline double cpu_now(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

static inline long peak_rss_mb(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss / 1024;
}

#endif
