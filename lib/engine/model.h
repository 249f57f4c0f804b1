/* The isl_model handle: parameters, their padded layout, and a cache of execution plans
 * per tile shape (building a plan JIT-compiles ~1000 oneDNN primitives, so it is reused). */
#ifndef ISL_MODEL_H
#define ISL_MODEL_H

#include "isl.h"
#include "layout.h"
#include "plan.h"

#include <pthread.h>

#define ISL_PLAN_CACHE_SIZE 4

typedef struct isl_plan_entry {
    isl_plan *plan;
    isl_exec *idle;      /* one reusable exec, kept to avoid re-allocating buffers */
    int in_h, in_w;
    isl_precision precision;
    int refs;
    unsigned long last_used;
} isl_plan_entry;

struct isl_model {
    isl_params params;
    isl_layout layout;
    dnnl_engine_t engine;
    pthread_mutex_t cache_lock; /* guards the cache only; plans are immutable */
    isl_plan_entry cache[ISL_PLAN_CACHE_SIZE];
    unsigned long clock;
};

/* Takes a plan and an exec for the tile shape (building them if needed). Thread-safe. */
isl_status isl_model_acquire(const isl_model *m, int in_h, int in_w, isl_precision precision,
                             isl_plan **plan, isl_exec **exec);
/* Gives back what isl_model_acquire returned. */
void isl_model_release(const isl_model *m, isl_plan *plan, isl_exec *exec);

/* Builds a model around parameters (takes ownership of *p's contents). */
isl_status isl_model_from_params(isl_params *p, isl_model **out);

#endif
