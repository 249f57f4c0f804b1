#include "params.h"
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bn_alloc(isl_bn_params *bn, int channels)
{
    bn->channels = channels;
    bn->gamma = calloc((size_t)channels, sizeof(float));
    bn->beta = calloc((size_t)channels, sizeof(float));
    bn->mean = calloc((size_t)channels, sizeof(float));
    bn->var = calloc((size_t)channels, sizeof(float));
    if (!bn->gamma || !bn->beta || !bn->mean || !bn->var)
        return -1;
    for (int c = 0; c < channels; c++) {
        bn->gamma[c] = 1.0f;
        bn->var[c] = 1.0f;
    }
    return 0;
}

static void bn_free(isl_bn_params *bn)
{
    free(bn->gamma);
    free(bn->beta);
    free(bn->mean);
    free(bn->var);
    memset(bn, 0, sizeof(*bn));
}

static size_t expand_weight_count(const isl_module_arch *m)
{
    return (size_t)m->expand_ch * 2 * m->in_ch * m->kernel * m->kernel;
}

static size_t reduce_weight_count(const isl_module_arch *m)
{
    return (size_t)m->reduce_ch * 2 * m->e_ch;
}

int isl_params_alloc(isl_params *p, int base_depth, int num_z, int num_label_heads,
                     const char *const *head_names, int with_autoencoder)
{
    memset(p, 0, sizeof(*p));
    if (num_label_heads < 0 || (num_label_heads > 0 && !head_names))
        return -1;
    if (isl_arch_build(&p->arch, base_depth, num_z) != 0)
        return -1;
    snprintf(p->input_normalization, sizeof(p->input_normalization), "none");
    p->projection_weight = calloc((size_t)ISL_PROJECTION_DEPTH * num_z, sizeof(float));
    p->projection_bias = calloc(ISL_PROJECTION_DEPTH, sizeof(float));
    p->modules = calloc((size_t)p->arch.num_modules, sizeof(*p->modules));
    p->num_heads = num_label_heads + (with_autoencoder ? 1 : 0);
    p->heads = calloc((size_t)(p->num_heads ? p->num_heads : 1), sizeof(*p->heads));
    if (!p->projection_weight || !p->projection_bias || !p->modules || !p->heads)
        goto fail;
    for (int i = 0; i < p->arch.num_modules; i++) {
        const isl_module_arch *a = &p->arch.modules[i];
        isl_module_params *m = &p->modules[i];
        m->expand_weight = calloc(expand_weight_count(a), sizeof(float));
        m->reduce_weight = calloc(reduce_weight_count(a), sizeof(float));
        if (!m->expand_weight || !m->reduce_weight || bn_alloc(&m->bn1, a->in_ch) ||
            bn_alloc(&m->bn2, a->e_ch))
            goto fail;
    }
    for (int h = 0; h < p->num_heads; h++) {
        isl_head_params *hp = &p->heads[h];
        const char *name = h < num_label_heads ? head_names[h] : ISL_AUTOENCODER_NAME;
        if (!name || !name[0] || strlen(name) >= sizeof(hp->name))
            goto fail;
        snprintf(hp->name, sizeof(hp->name), "%s", name);
        hp->out_ch = h < num_label_heads ? ISL_NUM_CLASSES : num_z * ISL_NUM_CLASSES;
        hp->weight = calloc((size_t)hp->out_ch * 2 * p->arch.trunk_ch, sizeof(float));
        hp->bias = calloc((size_t)hp->out_ch, sizeof(float));
        if (!hp->weight || !hp->bias || bn_alloc(&hp->bn, p->arch.trunk_ch))
            goto fail;
    }
    return 0;
fail:
    isl_params_free(p);
    return -1;
}

void isl_params_free(isl_params *p)
{
    if (!p)
        return;
    if (p->modules) {
        for (int i = 0; i < p->arch.num_modules; i++) {
            bn_free(&p->modules[i].bn1);
            bn_free(&p->modules[i].bn2);
            free(p->modules[i].expand_weight);
            free(p->modules[i].reduce_weight);
        }
    }
    if (p->heads) {
        for (int h = 0; h < p->num_heads; h++) {
            bn_free(&p->heads[h].bn);
            free(p->heads[h].weight);
            free(p->heads[h].bias);
        }
    }
    free(p->modules);
    free(p->heads);
    free(p->projection_weight);
    free(p->projection_bias);
    isl_arch_free(&p->arch);
    memset(p, 0, sizeof(*p));
}

void isl_bn_fold(const isl_bn_params *bn, int c, float *scale, float *shift)
{
    double s = bn->gamma[c] / sqrt((double)bn->var[c] + ISL_BN_EPSILON);
    *scale = (float)s;
    *shift = (float)(bn->beta[c] - bn->mean[c] * s);
}

static double uniform01(uint64_t *state)
{
    return ((double)(isl_splitmix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static void fill_normal(float *w, size_t n, double sd, uint64_t *state)
{
    for (size_t i = 0; i < n; i += 2) {
        double u1 = uniform01(state), u2 = uniform01(state);
        double r = sqrt(-2.0 * log(u1)) * sd;
        w[i] = (float)(r * cos(2.0 * M_PI * u2));
        if (i + 1 < n)
            w[i + 1] = (float)(r * sin(2.0 * M_PI * u2));
    }
}

void isl_params_init_random(isl_params *p, uint64_t seed)
{
    uint64_t state = seed;
    const isl_arch *a = &p->arch;
    /* He-normal: sd = sqrt(2 / fan_in). */
    fill_normal(p->projection_weight, (size_t)ISL_PROJECTION_DEPTH * a->num_z,
                sqrt(2.0 / a->num_z), &state);
    for (int i = 0; i < a->num_modules; i++) {
        const isl_module_arch *m = &a->modules[i];
        double fan_in = m->kind == ISL_MODULE_UP ? 2.0 * m->in_ch * 4 /* ~k*k/stride^2 taps */
                                                 : 2.0 * m->in_ch * m->kernel * m->kernel;
        fill_normal(p->modules[i].expand_weight, expand_weight_count(m), sqrt(2.0 / fan_in),
                    &state);
        fill_normal(p->modules[i].reduce_weight, reduce_weight_count(m),
                    sqrt(2.0 / (2.0 * m->e_ch)), &state);
    }
    for (int h = 0; h < p->num_heads; h++)
        isl_params_init_head(&p->heads[h], a->trunk_ch, &state);
}

void isl_params_init_head(isl_head_params *hp, int trunk_ch, uint64_t *state)
{
    /* Small head weights start the predicted distributions near uniform. */
    fill_normal(hp->weight, (size_t)hp->out_ch * 2 * trunk_ch, 0.1 * sqrt(1.0 / (2.0 * trunk_ch)),
                state);
}

static void bn_copy(isl_bn_params *dst, const isl_bn_params *src)
{
    const size_t n = sizeof(float) * (size_t)src->channels;
    memcpy(dst->gamma, src->gamma, n);
    memcpy(dst->beta, src->beta, n);
    memcpy(dst->mean, src->mean, n);
    memcpy(dst->var, src->var, n);
}

void isl_params_copy_trunk(isl_params *dst, const isl_params *src)
{
    const isl_arch *a = &src->arch;
    memcpy(dst->projection_weight, src->projection_weight,
           sizeof(float) * ISL_PROJECTION_DEPTH * (size_t)a->num_z);
    memcpy(dst->projection_bias, src->projection_bias, sizeof(float) * ISL_PROJECTION_DEPTH);
    for (int i = 0; i < a->num_modules; i++) {
        bn_copy(&dst->modules[i].bn1, &src->modules[i].bn1);
        bn_copy(&dst->modules[i].bn2, &src->modules[i].bn2);
        memcpy(dst->modules[i].expand_weight, src->modules[i].expand_weight,
               sizeof(float) * expand_weight_count(&a->modules[i]));
        memcpy(dst->modules[i].reduce_weight, src->modules[i].reduce_weight,
               sizeof(float) * reduce_weight_count(&a->modules[i]));
    }
}

void isl_params_copy_head(isl_head_params *dst, const isl_head_params *src, int trunk_ch)
{
    bn_copy(&dst->bn, &src->bn);
    memcpy(dst->weight, src->weight, sizeof(float) * (size_t)src->out_ch * 2 * trunk_ch);
    memcpy(dst->bias, src->bias, sizeof(float) * (size_t)src->out_ch);
}

/* Projection and modules. */
static long long trunk_count(const isl_arch *a)
{
    long long n = (long long)ISL_PROJECTION_DEPTH * a->num_z + ISL_PROJECTION_DEPTH;
    for (int i = 0; i < a->num_modules; i++)
        n += isl_arch_module_parameters(&a->modules[i]);
    return n;
}

/* Batch norm, weight and bias of a head with out_ch outputs. */
static long long head_count(const isl_arch *a, int out_ch)
{
    return 4LL * a->trunk_ch + (long long)out_ch * (2 * a->trunk_ch + 1);
}

long long isl_params_count(const isl_params *p)
{
    long long n = trunk_count(&p->arch);
    for (int h = 0; h < p->num_heads; h++)
        n += head_count(&p->arch, p->heads[h].out_ch);
    return n;
}

long long isl_params_count_for(int base_depth, int num_z, int num_label_heads,
                               int with_autoencoder)
{
    isl_arch a;
    if (isl_arch_build(&a, base_depth, num_z) != 0)
        return -1;
    long long n = trunk_count(&a) + num_label_heads * head_count(&a, ISL_NUM_CLASSES) +
                  (with_autoencoder ? head_count(&a, num_z * ISL_NUM_CLASSES) : 0);
    isl_arch_free(&a);
    return n;
}

static int visit_bn(isl_bn_params *bn, const char *prefix, isl_params_visit_fn fn, void *user)
{
    static const char *names[4] = {"gamma", "beta", "mean", "var"};
    float *data[4] = {bn->gamma, bn->beta, bn->mean, bn->var};
    int64_t dims[1] = {bn->channels};
    char path[400]; /* prefix (< 320) + "/gamma" */
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof(path), "%s/%s", prefix, names[i]);
        int rc = fn(user, path, 1, dims, data[i]);
        if (rc)
            return rc;
    }
    return 0;
}

int isl_params_visit(isl_params *p, isl_params_visit_fn fn, void *user)
{
    const isl_arch *a = &p->arch;
    char path[320];
    int rc;
    int64_t pw[4] = {ISL_PROJECTION_DEPTH, a->num_z, 1, 1}, pb[1] = {ISL_PROJECTION_DEPTH};
    if ((rc = fn(user, "/projection/weight", 4, pw, p->projection_weight)) ||
        (rc = fn(user, "/projection/bias", 1, pb, p->projection_bias)))
        return rc;
    for (int i = 0; i < a->num_modules; i++) {
        const isl_module_arch *m = &a->modules[i];
        isl_module_params *mp = &p->modules[i];
        int64_t ew[4] = {m->expand_ch, 2 * m->in_ch, m->kernel, m->kernel};
        if (m->kind == ISL_MODULE_UP) {
            ew[0] = 2 * m->in_ch;
            ew[1] = m->expand_ch;
        }
        int64_t rw[4] = {m->reduce_ch, 2 * m->e_ch, 1, 1};
        snprintf(path, sizeof(path), "/modules/%03d/bn1", i);
        if ((rc = visit_bn(&mp->bn1, path, fn, user)))
            return rc;
        snprintf(path, sizeof(path), "/modules/%03d/expand/weight", i);
        if ((rc = fn(user, path, 4, ew, mp->expand_weight)))
            return rc;
        snprintf(path, sizeof(path), "/modules/%03d/bn2", i);
        if ((rc = visit_bn(&mp->bn2, path, fn, user)))
            return rc;
        snprintf(path, sizeof(path), "/modules/%03d/reduce/weight", i);
        if ((rc = fn(user, path, 4, rw, mp->reduce_weight)))
            return rc;
    }
    for (int h = 0; h < p->num_heads; h++) {
        isl_head_params *hp = &p->heads[h];
        int64_t hw[4] = {hp->out_ch, 2 * a->trunk_ch, 1, 1}, hb[1] = {hp->out_ch};
        snprintf(path, sizeof(path), "/heads/%s/bn", hp->name);
        if ((rc = visit_bn(&hp->bn, path, fn, user)))
            return rc;
        snprintf(path, sizeof(path), "/heads/%s/weight", hp->name);
        if ((rc = fn(user, path, 4, hw, hp->weight)))
            return rc;
        snprintf(path, sizeof(path), "/heads/%s/bias", hp->name);
        if ((rc = fn(user, path, 1, hb, hp->bias)))
            return rc;
    }
    return 0;
}
