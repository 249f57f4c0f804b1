/* The public training API (include/isl.h, "Training"): options, the trainer, steps,
 * batch-norm re-estimation, snapshots and checkpoints. */
#include "adam.h"
#include "error.h"
#include "loss.h"
#include "model.h"
#include "model_io.h"
#include "rng.h"
#include "threads.h"
#include "train_net.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define CHECKPOINT_VERSION 1
#define OPTIMIZER_GROUP "/optimizer"
#define AVERAGE_GROUP OPTIMIZER_GROUP "/average" /* present once averaging has begun */
#define UPDATES_GROUP OPTIMIZER_GROUP "/updates" /* one attribute per head: its Adam updates */

struct isl_train_options {
    isl_adam_config adam;
    double label_weight;
    double bn_decay;
    int threads;
    uint64_t seed;
    int freeze_trunk;
    int freeze_bn;
    int64_t average_from;
    double dropout;     /* of the heads' inputs; 0: none */
    int dropout_whole;  /* whole channels of an image (spatial dropout) */
    double depth_rate;  /* stochastic depth of the deepest module; 0: none */
    int keep_activations; /* BNAct outputs kept for the backward pass, not recomputed */
};

static const isl_train_options default_options = {
    .adam = {1e-4, 1e-5, 0, 0.9, 0.999, 1e-8, 0},
    .label_weight = 0.5,
    .bn_decay = 0.99, /* the paper's 0.999 needs far longer runs (docs/training.md) */
    .threads = 0,
    .seed = 0,
    .freeze_trunk = 0,
    .freeze_bn = 0,
    .average_from = 0,
    .dropout = 0,
    .dropout_whole = 0,
    .depth_rate = 0,
    .keep_activations = 0,
};

/* One parameter array with its gradient and Adam moments. */
typedef struct param_array {
    char path[320];
    int rank;
    int64_t dims[4];
    size_t count;
    float *w, *g, *m, *v;
    float *avg;    /* running mean of w (isl_train_options_set_average_from), or NULL */
    int head;      /* index of the head it belongs to, -1 for the trunk */
    int trainable; /* 0 for batch-norm running statistics */
    int decays;    /* a convolution's weights: the weight decay applies */
} param_array;

struct isl_trainer {
    isl_train_options opts;
    isl_params params, grad, m, v, avg;
    int64_t avg_count; /* steps in the running mean of the weights */
    int num_labels, has_autoencoder;
    param_array *arrays;
    int num_arrays;
    dnnl_engine_t engine;
    isl_train_net *net;
    int64_t step;
    int64_t *updates;  /* [num_heads + 1] Adam updates of the trunk (0) and of head h (h + 1) */
    uint64_t rng;
    int *active;       /* [num_heads] heads computed by the current step */
    int64_t *counts;   /* [num_labels] known pixels */
    double *losses;    /* [num_labels + 3] */
    const float **logits; /* [num_labels + 1]: the net's head outputs ... */
    float **dlogits;      /* ... and where their gradients go */
    /* Data-parallel training (isl_trainer_set_allreduce): the hook, and the gradients of
     * a step packed into one buffer for it. */
    isl_allreduce_fn allreduce;
    void *allreduce_user;
    int64_t first_crop; /* this process's first crop in the global batch (dropout masks) */
    float *flat;
    size_t flat_count;
    /* Gradient buckets (isl_trainer_set_gradient_buckets): 0 bytes = one flat buffer. The
     * step's updated arrays are packed into flat in the order the backward pass finishes
     * them (order[0..packed)); flat[sent..cursor) is the bucket being filled. */
    size_t bucket_bytes;
    isl_allreduce_fn bucket_start;   /* NULL: the allreduce hook, synchronously */
    isl_allreduce_wait_fn bucket_wait;
    int *order, *queued;             /* [num_arrays] */
    int packed;
    size_t cursor, sent;
    int started;                     /* asynchronous sums not waited for yet */
};

/* ------------------------------------------------------------------------------------ */
/* Options                                                                              */
/* ------------------------------------------------------------------------------------ */

isl_status isl_train_options_create(isl_train_options **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_train_options_create: out is NULL");
    *out = malloc(sizeof(**out));
    if (!*out)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    **out = default_options;
    return ISL_OK;
}

void isl_train_options_free(isl_train_options *o) { free(o); }

#define NEED_OPTIONS(o)                                                                      \
    do {                                                                                     \
        if (!(o))                                                                            \
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: options is NULL", __func__);   \
    } while (0)

static int positive(double v) { return isfinite(v) && v > 0; }

isl_status isl_train_options_set_learning_rate(isl_train_options *o, double rate)
{
    NEED_OPTIONS(o);
    if (!positive(rate))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "learning rate %g is not positive", rate);
    o->adam.learning_rate = rate;
    return ISL_OK;
}

isl_status isl_train_options_set_rate_drop(isl_train_options *o, int64_t step, double rate)
{
    NEED_OPTIONS(o);
    if (step < 0 || !positive(rate))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "learning rate drop at step %lld to %g: need step >= 0, rate > 0",
                        (long long)step, rate);
    o->adam.drop_step = step;
    o->adam.late_rate = rate;
    return ISL_OK;
}

isl_status isl_train_options_set_adam(isl_train_options *o, double beta1, double beta2,
                                      double epsilon)
{
    NEED_OPTIONS(o);
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !positive(epsilon))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "Adam betas %g, %g must lie in [0, 1) and epsilon %g be positive", beta1,
                        beta2, epsilon);
    o->adam.beta1 = beta1;
    o->adam.beta2 = beta2;
    o->adam.epsilon = epsilon;
    return ISL_OK;
}

isl_status isl_train_options_set_weight_decay(isl_train_options *o, double decay)
{
    NEED_OPTIONS(o);
    if (!(isfinite(decay) && decay >= 0))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "weight decay %g is negative or not finite",
                        decay);
    o->adam.weight_decay = decay;
    return ISL_OK;
}

isl_status isl_train_options_set_dropout(isl_train_options *o, double rate, int whole_channels)
{
    NEED_OPTIONS(o);
    if (!(rate >= 0 && rate <= 0.9))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "dropout rate %g is outside [0, 0.9]", rate);
    o->dropout = rate;
    o->dropout_whole = whole_channels != 0;
    return ISL_OK;
}

isl_status isl_train_options_set_stochastic_depth(isl_train_options *o, double rate)
{
    NEED_OPTIONS(o);
    if (!(rate >= 0 && rate <= 0.9))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "stochastic depth rate %g is outside [0, 0.9]", rate);
    o->depth_rate = rate;
    return ISL_OK;
}

isl_status isl_train_options_set_keep_activations(isl_train_options *o, int keep)
{
    NEED_OPTIONS(o);
    o->keep_activations = keep != 0;
    return ISL_OK;
}

isl_status isl_train_options_set_label_weight(isl_train_options *o, double weight)
{
    NEED_OPTIONS(o);
    if (!(weight >= 0 && weight <= 1))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "label weight %g is outside [0, 1]", weight);
    o->label_weight = weight;
    return ISL_OK;
}

isl_status isl_train_options_set_bn_decay(isl_train_options *o, double decay)
{
    NEED_OPTIONS(o);
    if (!(decay >= 0 && decay < 1))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "batch-norm decay %g is outside [0, 1)",
                        decay);
    o->bn_decay = decay;
    return ISL_OK;
}

isl_status isl_train_options_set_threads(isl_train_options *o, int threads)
{
    NEED_OPTIONS(o);
    if (threads < 0 || threads > 4096)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "thread count %d is out of range", threads);
    o->threads = threads;
    return ISL_OK;
}

isl_status isl_train_options_set_seed(isl_train_options *o, uint64_t seed)
{
    NEED_OPTIONS(o);
    o->seed = seed;
    return ISL_OK;
}

isl_status isl_train_options_set_freeze_trunk(isl_train_options *o, int freeze)
{
    NEED_OPTIONS(o);
    o->freeze_trunk = freeze != 0;
    return ISL_OK;
}

isl_status isl_train_options_set_freeze_bn(isl_train_options *o, int freeze)
{
    NEED_OPTIONS(o);
    o->freeze_bn = freeze != 0;
    return ISL_OK;
}

isl_status isl_train_options_set_average_from(isl_train_options *o, int64_t step)
{
    NEED_OPTIONS(o);
    if (step < 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "averaging start step %lld is negative",
                        (long long)step);
    o->average_from = step;
    return ISL_OK;
}

/* The getters read the defaults when o is NULL: the one place they are written down is
 * default_options, which the CLI's help and the bindings read through these. */
static const isl_train_options *or_defaults(const isl_train_options *o)
{
    return o ? o : &default_options;
}

double isl_train_options_get_learning_rate(const isl_train_options *o)
{
    return or_defaults(o)->adam.learning_rate;
}

double isl_train_options_get_label_weight(const isl_train_options *o)
{
    return or_defaults(o)->label_weight;
}

double isl_train_options_get_bn_decay(const isl_train_options *o)
{
    return or_defaults(o)->bn_decay;
}

int isl_train_options_get_threads(const isl_train_options *o) { return or_defaults(o)->threads; }

uint64_t isl_train_options_get_seed(const isl_train_options *o) { return or_defaults(o)->seed; }

/* ------------------------------------------------------------------------------------ */
/* Parameter sets                                                                       */
/* ------------------------------------------------------------------------------------ */

typedef struct array_list {
    param_array *a;
    int count, cap, which; /* which: 0 params, 1 grad, 2 m, 3 v */
    const isl_params *p;
} array_list;

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), t = strlen(tail);
    return n >= t && !strcmp(s + n - t, tail);
}

static int collect(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    array_list *l = user;
    if (l->which == 0) {
        if (l->count == l->cap) {
            int cap = l->cap ? 2 * l->cap : 512;
            param_array *a = realloc(l->a, sizeof(*a) * (size_t)cap);
            if (!a)
                return (int)isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
            l->a = a;
            l->cap = cap;
        }
        param_array *a = &l->a[l->count];
        memset(a, 0, sizeof(*a));
        snprintf(a->path, sizeof(a->path), "%s", path);
        a->rank = rank;
        a->count = 1;
        for (int i = 0; i < rank; i++) {
            a->dims[i] = dims[i];
            a->count *= (size_t)dims[i];
        }
        a->head = -1;
        for (int h = 0; h < l->p->num_heads; h++) {
            char prefix[96];
            snprintf(prefix, sizeof(prefix), "/heads/%s/", l->p->heads[h].name);
            if (!strncmp(path, prefix, strlen(prefix)))
                a->head = h;
        }
        a->trainable = !ends_with(path, "/mean") && !ends_with(path, "/var");
        a->decays = ends_with(path, "/weight"); /* convolutions; not biases, gamma, beta */
    }
    param_array *a = &l->a[l->count++];
    float **slot[5] = {&a->w, &a->g, &a->m, &a->v, &a->avg};
    *slot[l->which] = data;
    return 0;
}

/* Allocates params-shaped arrays like p (zeroed, BN var 1 as isl_params_alloc does). */
static int alloc_like(isl_params *dst, const isl_params *p, int num_labels, int has_ae)
{
    const char *names[1024];
    for (int h = 0; h < num_labels; h++)
        names[h] = p->heads[h].name;
    return isl_params_alloc(dst, p->arch.base_depth, p->arch.num_z, num_labels, names, has_ae);
}

static int copy_array(void *user, const char *path, int rank, const int64_t *dims, float *data)
{
    (void)path;
    float **src = user;
    size_t count = 1;
    for (int i = 0; i < rank; i++)
        count *= (size_t)dims[i];
    memcpy(data, *src, sizeof(float) * count);
    *src += count;
    return 0;
}

/* dst = a copy of p (allocated here). */
static isl_status copy_params(isl_params *dst, const isl_params *p)
{
    int has_ae = p->num_heads > 0 && !strcmp(p->heads[p->num_heads - 1].name, ISL_AUTOENCODER_NAME);
    if (alloc_like(dst, p, p->num_heads - has_ae, has_ae))
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory copying a model");
    memcpy(dst->input_normalization, p->input_normalization, sizeof(dst->input_normalization));
    dst->pixel_size_um = p->pixel_size_um;
    /* Flatten p, then scatter into dst in the same (file) order. */
    size_t total = (size_t)isl_params_count(p);
    float *flat = malloc(sizeof(float) * (total ? total : 1)), *cursor = flat;
    if (!flat) {
        isl_params_free(dst);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory copying a model");
    }
    array_list l = {0};
    l.p = p;
    isl_status s = (isl_status)isl_params_visit((isl_params *)p, collect, &l);
    for (int i = 0; s == ISL_OK && i < l.count; i++) {
        memcpy(cursor, l.a[i].w, sizeof(float) * l.a[i].count);
        cursor += l.a[i].count;
    }
    cursor = flat;
    if (s == ISL_OK)
        isl_params_visit(dst, copy_array, &cursor);
    free(l.a);
    free(flat);
    if (s != ISL_OK)
        isl_params_free(dst);
    return s;
}

/* ------------------------------------------------------------------------------------ */
/* Trainer                                                                              */
/* ------------------------------------------------------------------------------------ */

void isl_trainer_free(isl_trainer *t)
{
    if (!t)
        return;
    isl_train_net_free(t->net);
    if (t->engine)
        dnnl_engine_destroy(t->engine);
    isl_params_free(&t->params);
    isl_params_free(&t->grad);
    isl_params_free(&t->m);
    isl_params_free(&t->v);
    isl_params_free(&t->avg);
    free(t->arrays);
    free(t->active);
    free(t->updates);
    free(t->counts);
    free(t->losses);
    free(t->logits);
    free(t->dlogits);
    free(t->flat);
    free(t->order);
    free(t->queued);
    free(t);
}

/* A trainer around params (takes ownership of *p's contents). */
static isl_status trainer_from_params(isl_params *p, const isl_train_options *o,
                                      isl_trainer **out)
{
    *out = NULL;
    isl_trainer *t = calloc(1, sizeof(*t));
    if (!t) {
        isl_params_free(p);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    t->params = *p;
    memset(p, 0, sizeof(*p));
    t->opts = o ? *o : default_options;
    t->rng = t->opts.seed;
    const isl_params *P = &t->params;
    t->has_autoencoder =
        P->num_heads > 0 && !strcmp(P->heads[P->num_heads - 1].name, ISL_AUTOENCODER_NAME);
    t->num_labels = P->num_heads - t->has_autoencoder;
    isl_status s = ISL_OK;
    const isl_adam_config *A = &t->opts.adam;
    const double top_rate = A->drop_step > 0 ? fmax(A->learning_rate, A->late_rate)
                                             : A->learning_rate;
    if (A->weight_decay * top_rate >= 1) /* a step would zero or flip every weight */
        s = isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                     "weight decay %g times the learning rate %g is 1 or more", A->weight_decay,
                     top_rate);
    else if (!t->has_autoencoder && t->opts.label_weight < 1)
        s = isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                     "the model has no autoencoder head: training needs label weight 1 (it is %g)",
                     t->opts.label_weight);
    else if (alloc_like(&t->grad, P, t->num_labels, t->has_autoencoder) ||
             alloc_like(&t->m, P, t->num_labels, t->has_autoencoder) ||
             alloc_like(&t->v, P, t->num_labels, t->has_autoencoder) ||
             (t->opts.average_from > 0 &&
              alloc_like(&t->avg, P, t->num_labels, t->has_autoencoder)))
        s = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory for the optimizer state");
    if (s == ISL_OK) {
        /* Moments start at zero (alloc sets BN variances to 1). */
        isl_params *zero[2] = {&t->m, &t->v};
        for (int k = 0; k < 2; k++) {
            array_list l = {0};
            l.p = P;
            if (isl_params_visit(zero[k], collect, &l) == 0)
                for (int i = 0; i < l.count; i++)
                    memset(l.a[i].w, 0, sizeof(float) * l.a[i].count);
            free(l.a);
        }
        array_list l = {0};
        l.p = P;
        isl_params *sets[5] = {&t->params, &t->grad, &t->m, &t->v, &t->avg};
        const int num_sets = t->opts.average_from > 0 ? 5 : 4;
        for (int k = 0; k < num_sets && s == ISL_OK; k++) {
            l.which = k;
            l.count = 0;
            s = (isl_status)isl_params_visit(sets[k], collect, &l);
        }
        t->arrays = l.a;
        t->num_arrays = l.count;
    }
    if (s == ISL_OK) {
        t->active = calloc((size_t)(P->num_heads + 1), sizeof(int));
        t->updates = calloc((size_t)(P->num_heads + 1), sizeof(int64_t));
        t->counts = calloc((size_t)(t->num_labels + 1), sizeof(int64_t));
        t->losses = calloc((size_t)(t->num_labels + 3), sizeof(double));
        t->logits = calloc((size_t)(t->num_labels + 1), sizeof(*t->logits));
        t->dlogits = calloc((size_t)(t->num_labels + 1), sizeof(*t->dlogits));
        if (!t->active || !t->updates || !t->counts || !t->losses || !t->logits || !t->dlogits)
            s = isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    if (s == ISL_OK && dnnl_engine_create(&t->engine, dnnl_cpu, 0) != dnnl_success)
        s = isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create a CPU engine");
    if (s != ISL_OK) {
        isl_trainer_free(t);
        return s;
    }
    *out = t;
    return ISL_OK;
}

isl_status isl_trainer_create(const isl_model *init, const isl_train_options *o,
                              isl_trainer **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_create: out is NULL");
    *out = NULL;
    if (!init)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_create: model is NULL");
    isl_params p;
    ISL_CHECK(copy_params(&p, &init->params));
    return trainer_from_params(&p, o, out);
}

int isl_trainer_num_losses(const isl_trainer *t) { return t ? t->num_labels + 3 : 0; }
int64_t isl_trainer_step_count(const isl_trainer *t) { return t ? t->step : 0; }

uint64_t isl_trainer_random(isl_trainer *t)
{
    if (!t)
        return 0;
    return isl_splitmix64(&t->rng);
}

isl_status isl_trainer_model(const isl_trainer *t, isl_model **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_model: out is NULL");
    *out = NULL;
    if (!t)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_model: trainer is NULL");
    isl_params p;
    ISL_CHECK(copy_params(&p, &t->params));
    return isl_model_from_params(&p, out);
}

isl_status isl_trainer_average_model(const isl_trainer *t, isl_model **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_average_model: out is NULL");
    *out = NULL;
    if (!t)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_average_model: trainer is NULL");
    if (t->avg_count == 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        t->opts.average_from > 0
                            ? "no weight average yet: averaging starts after step %lld"
                            : "no weight average: averaging is off (%lld)",
                        (long long)t->opts.average_from);
    isl_params p;
    ISL_CHECK(copy_params(&p, &t->params));
    /* The copy's arrays come in the trainer's order: overwrite the trained ones. */
    array_list l = {0};
    l.p = &p;
    isl_status s = (isl_status)isl_params_visit(&p, collect, &l);
    for (int i = 0; s == ISL_OK && i < l.count; i++)
        if (t->arrays[i].trainable)
            memcpy(l.a[i].w, t->arrays[i].avg, sizeof(float) * t->arrays[i].count);
    free(l.a);
    if (s != ISL_OK) {
        isl_params_free(&p);
        return s;
    }
    return isl_model_from_params(&p, out);
}

int64_t isl_trainer_average_count(const isl_trainer *t) { return t ? t->avg_count : 0; }

/* ------------------------------------------------------------------------------------ */
/* Steps                                                                                */
/* ------------------------------------------------------------------------------------ */

static isl_status check_batch(const isl_trainer *t, const isl_train_batch *b)
{
    if (!b)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "training batch is NULL");
    if (b->batch_size < 1)
        return isl_fail(ISL_ERROR_SHAPE, "batch size %d is not positive", b->batch_size);
    if (isl_arch_output_side(b->height) < 0 || isl_arch_output_side(b->width) < 0)
        return isl_fail(ISL_ERROR_SHAPE,
                        "training crops of %dx%d: each side must be 250 + 16m (250, 266, ...)",
                        b->height, b->width);
    if (!b->inputs)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "training batch has no inputs");
    const size_t n = (size_t)b->batch_size * t->params.arch.num_z * b->height * b->width;
    for (size_t i = 0; i < n; i++)
        if (!(b->inputs[i] >= 0.0f && b->inputs[i] <= 1.0f))
            return isl_fail(ISL_ERROR_VALUE, "training input %zu is %g, outside [0, 1]", i,
                            (double)b->inputs[i]);
    if (b->targets && t->num_labels > 0) {
        const size_t m = (size_t)b->batch_size * t->num_labels *
                         isl_arch_output_side(b->height) * isl_arch_output_side(b->width);
        for (size_t i = 0; i < m; i++)
            if ((!b->masks || b->masks[i]) && !(b->targets[i] >= 0.0f && b->targets[i] <= 1.0f))
                return isl_fail(ISL_ERROR_VALUE, "training target %zu is %g, outside [0, 1]", i,
                                (double)b->targets[i]);
    }
    return ISL_OK;
}

/* The net for this batch shape, rebuilt when the shape changes. */
static isl_status ensure_net(isl_trainer *t, const isl_train_batch *b)
{
    isl_train_net *n = t->net;
    if (n && isl_train_net_batch(n) == b->batch_size && isl_train_net_height(n) == b->height &&
        isl_train_net_width(n) == b->width)
        return ISL_OK;
    isl_train_net_free(n);
    t->net = NULL;
    int flags = 0;
    if (t->opts.keep_activations) /* a frozen trunk has no backward pass to keep them for */
        flags = t->opts.freeze_trunk ? ISL_NET_KEEP_HEAD_ACTIVATIONS : ISL_NET_KEEP_ACTIVATIONS;
    return isl_train_net_create(&t->params, &t->grad, t->engine, b->batch_size, b->height,
                                b->width, flags, &t->net);
}

static isl_loss_batch loss_batch(const isl_trainer *t, const isl_train_batch *b)
{
    isl_loss_batch lb = {
        .batch = b->batch_size, .num_labels = t->num_labels, .num_z = t->params.arch.num_z,
        .in_h = b->height, .in_w = b->width,
        .out_h = isl_arch_output_side(b->height), .out_w = isl_arch_output_side(b->width),
        .inputs = b->inputs, .targets = b->targets, .masks = b->masks};
    return lb;
}

static void load_input(isl_trainer *t, const isl_train_batch *b)
{
    memcpy(isl_train_net_input(t->net), b->inputs,
           sizeof(float) * (size_t)b->batch_size * t->params.arch.num_z * b->height * b->width);
}

/* Folds the weights after this step into their running mean. */
static void update_average(isl_trainer *t)
{
    const int64_t n = ++t->avg_count;
    for (int i = 0; i < t->num_arrays; i++) {
        param_array *a = &t->arrays[i];
        if (!a->trainable)
            continue;
        if (n == 1) {
            memcpy(a->avg, a->w, sizeof(float) * a->count);
            continue;
        }
        const float k = 1.0f / (float)n;
        for (size_t j = 0; j < a->count; j++)
            a->avg[j] += (a->w[j] - a->avg[j]) * k;
    }
}

/* ------------------------------------------------------------------------------------ */
/* Data-parallel steps (isl_trainer_set_allreduce)                                      */
/* ------------------------------------------------------------------------------------ */

isl_status isl_trainer_set_allreduce(isl_trainer *t, isl_allreduce_fn fn, void *user)
{
    if (!t)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_set_allreduce: trainer is NULL");
    t->allreduce = fn;
    t->allreduce_user = fn ? user : NULL;
    return ISL_OK;
}

isl_status isl_trainer_set_first_crop(isl_trainer *t, int64_t first)
{
    if (!t)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_set_first_crop: trainer is NULL");
    if (first < 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_trainer_set_first_crop: first crop %lld is negative",
                        (long long)first);
    t->first_crop = first;
    return ISL_OK;
}

static isl_status reduce(const isl_trainer *t, void *buf, size_t count, isl_reduce_type type,
                         const char *what)
{
    int rc = t->allreduce(buf, count, type, t->allreduce_user);
    if (rc != 0)
        return isl_fail(ISL_ERROR_BACKEND, "the allreduce hook failed (%d) on the %s", rc, what);
    return ISL_OK;
}

static int sum_doubles(double *buf, size_t count, void *user)
{
    const isl_trainer *t = user;
    return t->allreduce(buf, count, ISL_REDUCE_FLOAT64, t->allreduce_user);
}

/* The global batch of a data-parallel step: its size into *global, and counts (unless
 * NULL) made the known pixels of each label head over all processes. The net's batch
 * norms then use the statistics of the global batch. */
static isl_status global_batch(isl_trainer *t, const isl_train_batch *b, int64_t *counts,
                               int *global)
{
    const int L = counts ? t->num_labels : 0;
    double *d = malloc(sizeof(double) * (size_t)(L + 4));
    if (!d)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int l = 0; l < L; l++)
        d[l] = (double)counts[l];
    d[L] = b->batch_size;
    d[L + 1] = 1; /* the number of processes */
    d[L + 2] = b->height;
    d[L + 3] = b->width;
    isl_status s = reduce(t, d, (size_t)L + 4, ISL_REDUCE_FLOAT64, "batch shape");
    if (s == ISL_OK && (d[L + 2] != d[L + 1] * b->height || d[L + 3] != d[L + 1] * b->width))
        s = isl_fail(ISL_ERROR_SHAPE, "data-parallel processes train on crops of different "
                     "sizes (this one: %dx%d)", b->height, b->width);
    if (s == ISL_OK && !(d[L] <= INT32_MAX))
        s = isl_fail(ISL_ERROR_SHAPE, "a global batch of %g crops", d[L]);
    if (s == ISL_OK) {
        for (int l = 0; l < L; l++)
            counts[l] = (int64_t)d[l];
        *global = (int)d[L];
        isl_tk_sync sync = {sum_doubles, t, *global};
        isl_train_net_set_sync(t->net, &sync);
    }
    free(d);
    return s;
}

/* Whether a step updates the trunk (head -1) or a head: heads without known pixels are
 * not updated at all (no momentum either); a frozen trunk keeps its weights and moments. */
static int group_updates(const isl_trainer *t, int head)
{
    return head < 0 ? !t->opts.freeze_trunk : t->active[head] != 0;
}

/* Whether a step updates an array (batch-norm statistics never train). */
static int updates(const isl_trainer *t, const param_array *a)
{
    return a->trainable && group_updates(t, a->head);
}

/* Sums the gradients of the arrays this step updates over the processes: packed into
 * flat, in one buffer after the backward pass, or in buckets while it runs. Each
 * process's gradient is its share of the global batch's (the loss is normalized by
 * global counts), so the sum is the global batch's gradient. The sum of each element is
 * the same however the arrays are bucketed. */
static isl_status prepare_gradients(isl_trainer *t)
{
    size_t n = 0;
    for (int i = 0; i < t->num_arrays; i++)
        n += updates(t, &t->arrays[i]) ? t->arrays[i].count : 0;
    if (n > t->flat_count) {
        float *f = realloc(t->flat, sizeof(float) * n);
        if (!f)
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory for %zu gradients", n);
        t->flat = f;
        t->flat_count = n;
    }
    if (!t->order) {
        t->order = malloc(sizeof(int) * (size_t)t->num_arrays);
        t->queued = malloc(sizeof(int) * (size_t)t->num_arrays);
        if (!t->order || !t->queued)
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    memset(t->queued, 0, sizeof(int) * (size_t)t->num_arrays);
    t->packed = 0;
    t->cursor = t->sent = 0;
    t->started = 0;
    return ISL_OK;
}

/* Hands flat[sent..cursor) over: started asynchronously, or summed at once. */
static isl_status send_bucket(isl_trainer *t)
{
    const size_t count = t->cursor - t->sent;
    if (count == 0)
        return ISL_OK;
    float *buf = t->flat + t->sent;
    t->sent = t->cursor;
    if (!t->bucket_start)
        return reduce(t, buf, count, ISL_REDUCE_FLOAT32, "gradients");
    int rc = t->bucket_start(buf, count, ISL_REDUCE_FLOAT32, t->allreduce_user);
    if (rc != 0)
        return isl_fail(ISL_ERROR_BACKEND, "the allreduce hook failed (%d) starting a gradient "
                        "bucket", rc);
    t->started = 1;
    return ISL_OK;
}

static isl_status pack_array(isl_trainer *t, int i)
{
    param_array *a = &t->arrays[i];
    if (t->queued[i] || !updates(t, a))
        return ISL_OK;
    t->queued[i] = 1;
    t->order[t->packed++] = i;
    memcpy(t->flat + t->cursor, a->g, sizeof(float) * a->count);
    t->cursor += a->count;
    return ISL_OK;
}

/* isl_train_net_ready_fn: packs the finished arrays, and sends the bucket once full. */
static isl_status gradients_ready(void *user, float *const *grads, int count)
{
    isl_trainer *t = user;
    for (int k = 0; k < count; k++)
        for (int i = 0; grads[k] && i < t->num_arrays; i++)
            if (t->arrays[i].g == grads[k])
                ISL_CHECK(pack_array(t, i));
    if (sizeof(float) * (t->cursor - t->sent) >= t->bucket_bytes)
        return send_bucket(t);
    return ISL_OK;
}

/* Waits for the started buckets (also after an error: the buffer is then free again). */
static isl_status wait_buckets(isl_trainer *t)
{
    if (!t->started)
        return ISL_OK;
    t->started = 0;
    int rc = t->bucket_wait(t->allreduce_user);
    if (rc != 0)
        return isl_fail(ISL_ERROR_BACKEND, "the allreduce hook failed (%d) waiting for the "
                        "gradient buckets", rc);
    return ISL_OK;
}

/* After the backward pass: sends what is left (one flat buffer without buckets), waits,
 * and unpacks the sums into the gradient arrays. */
static isl_status finish_gradients(isl_trainer *t)
{
    for (int i = 0; i < t->num_arrays; i++)
        ISL_CHECK(pack_array(t, i));
    ISL_CHECK(send_bucket(t));
    ISL_CHECK(wait_buckets(t));
    const float *cursor = t->flat;
    for (int k = 0; k < t->packed; k++) {
        param_array *a = &t->arrays[t->order[k]];
        memcpy(a->g, cursor, sizeof(float) * a->count);
        cursor += a->count;
    }
    return ISL_OK;
}

/* The backward pass of a step, with its gradients summed over the processes. */
static isl_status backward(isl_trainer *t)
{
    if (!t->allreduce)
        return isl_train_net_backward(t->net);
    ISL_CHECK(prepare_gradients(t));
    isl_train_net_set_ready(t->net, t->bucket_bytes ? gradients_ready : NULL, t);
    isl_status s = isl_train_net_backward(t->net);
    if (s == ISL_OK)
        s = finish_gradients(t);
    if (s != ISL_OK)
        wait_buckets(t); /* the error stays the first one */
    isl_train_net_set_ready(t->net, NULL, NULL);
    return s;
}

isl_status isl_trainer_set_gradient_buckets(isl_trainer *t, size_t bucket_bytes,
                                            isl_allreduce_fn start, isl_allreduce_wait_fn wait)
{
    if (!t)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_trainer_set_gradient_buckets: trainer is NULL");
    if (!start != !wait)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_set_gradient_buckets: start "
                        "and wait go together (both NULL or both set)");
    if (start && bucket_bytes == 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_set_gradient_buckets: "
                        "asynchronous sums need buckets (bucket_bytes > 0)");
    t->bucket_bytes = bucket_bytes;
    t->bucket_start = start;
    t->bucket_wait = wait;
    return ISL_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Steps                                                                                */
/* ------------------------------------------------------------------------------------ */

static isl_status step(isl_trainer *t, const isl_train_batch *b, float *losses_out)
{
    ISL_CHECK(check_batch(t, b));
    ISL_CHECK(ensure_net(t, b));
    const int L = t->num_labels, H = t->params.num_heads;
    const double w = t->opts.label_weight;
    isl_loss_batch lb = loss_batch(t, b);
    isl_loss_label_counts(&lb, t->counts);
    if (t->allreduce) /* one batch over all processes: global counts and statistics */
        ISL_CHECK(global_batch(t, b, t->counts, &lb.count_batch));
    else
        isl_train_net_set_sync(t->net, NULL);
    int any = 0;
    for (int l = 0; l < L; l++)
        any |= t->active[l] = w > 0 && t->counts[l] > 0;
    if (t->has_autoencoder)
        any |= t->active[L] = w < 1;
    /* Nothing to learn from (no known label and no autoencoder): no forward pass, which
     * would move the batch-norm moving averages; the losses are still reported. Every
     * process of a data-parallel step decides alike (global counts). */
    const int frozen = t->opts.freeze_trunk;
    if (any) {
        load_input(t, b);
        isl_train_net_set_dropout(t->net, t->opts.dropout, t->opts.dropout_whole, t->opts.seed,
                                  t->step + 1, t->first_crop);
        isl_train_net_set_stochastic_depth(t->net, t->opts.depth_rate, t->opts.seed, t->step + 1);
        const isl_net_mode mode = frozen              ? ISL_NET_FROZEN_TRUNK
                                  : t->opts.freeze_bn ? ISL_NET_STORED_STATS
                                                      : ISL_NET_BATCH_STATS;
        ISL_CHECK(isl_train_net_forward(t->net, t->active, 1.0 - t->opts.bn_decay, mode));
    }
    for (int h = 0; h <= L; h++) { /* [L]: the autoencoder, NULL if the model has none */
        t->logits[h] = any && h < H ? isl_train_net_logits(t->net, h) : NULL;
        t->dlogits[h] = any && h < H ? isl_train_net_dlogits(t->net, h) : NULL;
    }
    if (isl_loss_compute(&lb, t->logits, t->dlogits, t->counts, w, t->losses))
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory computing the loss");
    if (t->allreduce) /* each process has its share of the global batch's losses */
        ISL_CHECK(reduce(t, t->losses, (size_t)L + 3, ISL_REDUCE_FLOAT64, "losses"));
    if (losses_out)
        for (int i = 0; i < L + 3; i++)
            losses_out[i] = (float)t->losses[i];
    if (!isfinite(t->losses[L + 2]))
        return isl_fail(ISL_ERROR_VALUE, "the loss is %g (diverged?); the step was not applied",
                        t->losses[L + 2]);
    if (!any)
        return ISL_OK;
    ISL_CHECK(backward(t));
    const int64_t step_index = t->step + 1;
    for (int h = -1; h < t->params.num_heads; h++)
        t->updates[h + 1] += group_updates(t, h);
    for (int i = 0; i < t->num_arrays; i++) {
        param_array *a = &t->arrays[i];
        if (updates(t, a))
            isl_adam_update(&t->opts.adam, step_index, t->updates[a->head + 1], a->w, a->g,
                            a->m, a->v, a->count, a->decays);
    }
    t->step = step_index;
    if (t->opts.average_from > 0 && step_index >= t->opts.average_from)
        update_average(t);
    return frozen ? isl_train_net_load_head_weights(t->net) : isl_train_net_load_weights(t->net);
}

isl_status isl_train_step(isl_trainer *t, const isl_train_batch *b, float *losses_out)
{
    if (!t)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_train_step: trainer is NULL");
    int saved = isl_threads_begin(t->opts.threads);
    isl_status s = step(t, b, losses_out);
    isl_threads_end(saved);
    return s;
}

static isl_status estimate(isl_trainer *t, const isl_train_batch *b, int index)
{
    ISL_CHECK(check_batch(t, b));
    if (t->opts.freeze_trunk) /* the statistics are part of what is frozen */
        return ISL_OK;
    ISL_CHECK(ensure_net(t, b));
    int global;
    if (t->allreduce) /* the statistics of the global batch */
        ISL_CHECK(global_batch(t, b, NULL, &global));
    else
        isl_train_net_set_sync(t->net, NULL);
    memset(t->active, 0, sizeof(int) * (size_t)t->params.num_heads);
    load_input(t, b);
    isl_train_net_set_stochastic_depth(t->net, 0, 0, 0); /* the statistics of the whole net */
    /* The k-th batch (0-based) weighs 1 / (k + 1): the running mean of the batches. */
    return isl_train_net_forward(t->net, t->active, 1.0 / (index + 1.0), ISL_NET_BATCH_STATS);
}

isl_status isl_trainer_estimate_bn(isl_trainer *t, const isl_train_batch *b, int index)
{
    if (!t || index < 0)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_estimate_bn: %s",
                        t ? "negative index" : "trainer is NULL");
    int saved = isl_threads_begin(t->opts.threads);
    isl_status s = estimate(t, b, index);
    isl_threads_end(saved);
    return s;
}

/* ------------------------------------------------------------------------------------ */
/* Checkpoints                                                                          */
/* ------------------------------------------------------------------------------------ */

/* What a checkpoint adds to the model file; isl_trainer_digest hashes the same state,
 * so a field added here belongs there too. */
static isl_status write_optimizer(void *user, isl_h5_file *f)
{
    const isl_trainer *t = user;
    ISL_CHECK(isl_h5_write_u64_attr(f, OPTIMIZER_GROUP, "version", CHECKPOINT_VERSION));
    ISL_CHECK(isl_h5_write_u64_attr(f, OPTIMIZER_GROUP, "step", (uint64_t)t->step));
    ISL_CHECK(isl_h5_write_u64_attr(f, OPTIMIZER_GROUP, "rng_state", t->rng));
    ISL_CHECK(isl_h5_write_u64_attr(f, OPTIMIZER_GROUP, "trunk_updates", (uint64_t)t->updates[0]));
    for (int h = 0; h < t->params.num_heads; h++)
        ISL_CHECK(isl_h5_write_u64_attr(f, UPDATES_GROUP, t->params.heads[h].name,
                                        (uint64_t)t->updates[h + 1]));
    char path[400];
    for (int i = 0; i < t->num_arrays; i++) {
        const param_array *a = &t->arrays[i];
        if (!a->trainable)
            continue;
        snprintf(path, sizeof(path), OPTIMIZER_GROUP "/m%s", a->path);
        ISL_CHECK(isl_h5_write_floats(f, path, a->rank, a->dims, a->m));
        snprintf(path, sizeof(path), OPTIMIZER_GROUP "/v%s", a->path);
        ISL_CHECK(isl_h5_write_floats(f, path, a->rank, a->dims, a->v));
        if (t->avg_count > 0) {
            snprintf(path, sizeof(path), AVERAGE_GROUP "%s", a->path);
            ISL_CHECK(isl_h5_write_floats(f, path, a->rank, a->dims, a->avg));
        }
    }
    if (t->avg_count > 0)
        ISL_CHECK(isl_h5_write_u64_attr(f, AVERAGE_GROUP, "count", (uint64_t)t->avg_count));
    return ISL_OK;
}

isl_status isl_trainer_save(const isl_trainer *t, const char *path)
{
    if (!t || !path)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_save: trainer or path is NULL");
    return isl_model_write_h5_extra(path, &t->params, write_optimizer, (void *)t);
}

/* Everything a checkpoint holds, in write_optimizer's terms, hashed as this machine
 * stores it: equal states give equal digests; processes of a data-parallel run compare
 * them to find one that diverged. */
isl_status isl_trainer_digest(const isl_trainer *t, unsigned char digest[16])
{
    if (!t || !digest)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_digest: trainer or digest "
                        "is NULL");
    XXH3_state_t *state = XXH3_createState();
    if (!state)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    const uint64_t counters[3] = {(uint64_t)t->step, t->rng, (uint64_t)t->avg_count};
    int ok = XXH3_128bits_reset(state) == XXH_OK &&
             XXH3_128bits_update(state, counters, sizeof(counters)) == XXH_OK &&
             XXH3_128bits_update(state, t->updates,
                                 sizeof(*t->updates) * (size_t)(t->params.num_heads + 1)) ==
                 XXH_OK;
    for (int i = 0; ok && i < t->num_arrays; i++) {
        const param_array *a = &t->arrays[i];
        const size_t bytes = sizeof(float) * a->count;
        ok = XXH3_128bits_update(state, a->w, bytes) == XXH_OK;
        if (ok && a->trainable)
            ok = XXH3_128bits_update(state, a->m, bytes) == XXH_OK &&
                 XXH3_128bits_update(state, a->v, bytes) == XXH_OK &&
                 (t->avg_count == 0 || XXH3_128bits_update(state, a->avg, bytes) == XXH_OK);
    }
    if (ok) {
        XXH128_canonical_t canonical;
        XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(state));
        memcpy(digest, canonical.digest, 16);
    }
    XXH3_freeState(state);
    return ok ? ISL_OK : isl_fail(ISL_ERROR_BACKEND, "isl_trainer_digest: xxhash failed");
}

typedef struct load_ctx {
    isl_trainer *t;
    const char *file;
} load_ctx;

/* Each head's and the trunk's count of Adam updates; a checkpoint written before isl 0.10.2
 * has none, and its updates were bias-corrected with the step count, which they keep. */
static isl_status read_updates(const load_ctx *c, isl_h5_file *f, uint64_t step)
{
    isl_trainer *t = c->t;
    const int H = t->params.num_heads;
    uint64_t n;
    if (!isl_h5_exists(f, UPDATES_GROUP)) {
        for (int g = 0; g <= H; g++)
            t->updates[g] = (int64_t)step;
        return ISL_OK;
    }
    for (int g = 0; g <= H; g++) {
        const char *name = g ? t->params.heads[g - 1].name : "trunk_updates";
        ISL_CHECK(isl_h5_read_u64_attr(f, g ? UPDATES_GROUP : OPTIMIZER_GROUP, name, &n));
        if (n > step)
            return isl_fail(ISL_ERROR_FORMAT, "%s: %llu updates of %s after step %llu", c->file,
                            (unsigned long long)n, g ? name : "the trunk",
                            (unsigned long long)step);
        t->updates[g] = (int64_t)n;
    }
    return ISL_OK;
}

static isl_status read_optimizer(void *user, isl_h5_file *f)
{
    const load_ctx *c = user;
    isl_trainer *t = c->t;
    uint64_t version, step;
    if (!isl_h5_exists(f, OPTIMIZER_GROUP))
        return isl_fail(ISL_ERROR_FORMAT,
                        "%s: not a training checkpoint: no " OPTIMIZER_GROUP
                        " group (a model file?)", c->file);
    ISL_CHECK(isl_h5_read_u64_attr(f, OPTIMIZER_GROUP, "version", &version));
    if (version != CHECKPOINT_VERSION)
        return isl_fail(ISL_ERROR_UNSUPPORTED, "%s: checkpoint version %llu; this isl reads %d",
                        c->file, (unsigned long long)version, CHECKPOINT_VERSION);
    ISL_CHECK(isl_h5_read_u64_attr(f, OPTIMIZER_GROUP, "step", &step));
    ISL_CHECK(isl_h5_read_u64_attr(f, OPTIMIZER_GROUP, "rng_state", &t->rng));
    t->step = (int64_t)step;
    ISL_CHECK(read_updates(c, f, step));
    char path[400];
    for (int i = 0; i < t->num_arrays; i++) {
        param_array *a = &t->arrays[i];
        if (!a->trainable)
            continue;
        snprintf(path, sizeof(path), OPTIMIZER_GROUP "/m%s", a->path);
        ISL_CHECK(isl_h5_read_floats(f, path, a->rank, a->dims, a->m));
        snprintf(path, sizeof(path), OPTIMIZER_GROUP "/v%s", a->path);
        ISL_CHECK(isl_h5_read_floats(f, path, a->rank, a->dims, a->v));
        for (size_t k = 0; k < a->count; k++)
            if (a->v[k] < 0)
                return isl_fail(ISL_ERROR_VALUE, "%s: %s: negative second moment", c->file, path);
    }
    /* The weight average, when this trainer keeps one (else it is ignored). */
    if (t->opts.average_from <= 0 || !isl_h5_exists(f, AVERAGE_GROUP))
        return ISL_OK;
    uint64_t count;
    ISL_CHECK(isl_h5_read_u64_attr(f, AVERAGE_GROUP, "count", &count));
    if (count == 0 || count > step)
        return isl_fail(ISL_ERROR_FORMAT, "%s: a weight average over %llu steps after step %llu",
                        c->file, (unsigned long long)count, (unsigned long long)step);
    t->avg_count = (int64_t)count;
    for (int i = 0; i < t->num_arrays; i++) {
        param_array *a = &t->arrays[i];
        if (!a->trainable)
            continue;
        snprintf(path, sizeof(path), AVERAGE_GROUP "%s", a->path);
        ISL_CHECK(isl_h5_read_floats(f, path, a->rank, a->dims, a->avg));
    }
    return ISL_OK;
}

isl_status isl_trainer_load(const char *path, const isl_train_options *o, isl_trainer **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_load: out is NULL");
    *out = NULL;
    if (!path)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_trainer_load: path is NULL");
    isl_params p;
    ISL_CHECK(isl_model_read_h5(path, &p));
    isl_trainer *t;
    ISL_CHECK(trainer_from_params(&p, o, &t));
    load_ctx c = {t, path};
    isl_status s = isl_h5_read_file(path, read_optimizer, &c);
    if (s != ISL_OK) {
        isl_trainer_free(t);
        return s;
    }
    *out = t;
    return ISL_OK;
}
