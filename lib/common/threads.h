/* The thread count of one call: the public functions that take a `threads` option run
 * their OpenMP work with it on the calling thread, then restore the caller's setting. */
#ifndef ISL_THREADS_H
#define ISL_THREADS_H

#include <omp.h>

/* Sets the calling thread's OpenMP team size to threads (> 0; 0 keeps it) and returns
 * the previous one, for isl_threads_end. */
static inline int isl_threads_begin(int threads)
{
    int saved = omp_get_max_threads();
    if (threads > 0)
        omp_set_num_threads(threads);
    return saved;
}

static inline void isl_threads_end(int saved) { omp_set_num_threads(saved); }

#endif
