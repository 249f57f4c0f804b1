#include "model.h"

#include "error.h"
#include "model_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ISL_MAX_MACS_HEADS 1024 /* as many as a model file may have */

void isl_model_config_init(isl_model_config *c)
{
    if (!c)
        return;
    memset(c, 0, sizeof(*c));
    c->struct_size = sizeof(*c);
    c->base_depth = 400;
    c->num_z = 13;
    c->input_normalization = "none";
}

static isl_status check_head_name(const char *name, int index, const char *const *names)
{
    if (!name || !name[0])
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "head %d has an empty name", index);
    if (strlen(name) >= ISL_MAX_NAME)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "head name '%s' is longer than %d characters",
                        name, ISL_MAX_NAME - 1);
    if (strchr(name, '/') || strchr(name, ','))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "head name '%s' contains '/' or ','", name);
    if (!strcmp(name, ISL_AUTOENCODER_NAME))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "'%s' is reserved for the autoencoder head",
                        name);
    for (int j = 0; j < index; j++)
        if (!strcmp(names[j], name))
            return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "head '%s' is listed twice", name);
    return ISL_OK;
}

isl_status isl_model_from_params(isl_params *p, isl_model **out)
{
    isl_model *m = calloc(1, sizeof(*m));
    if (!m) {
        isl_params_free(p);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    m->params = *p;
    memset(p, 0, sizeof(*p));
    if (pthread_mutex_init(&m->cache_lock, NULL) != 0) {
        isl_params_free(&m->params);
        free(m);
        return isl_fail(ISL_ERROR_INTERNAL, "cannot create a mutex");
    }
    if (isl_layout_build(&m->layout, &m->params) != 0) {
        isl_model_free(m);
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory laying out the model");
    }
    if (dnnl_engine_create(&m->engine, dnnl_cpu, 0) != dnnl_success) {
        isl_model_free(m);
        return isl_fail(ISL_ERROR_BACKEND, "oneDNN: cannot create a CPU engine");
    }
    *out = m;
    return ISL_OK;
}

isl_status isl_model_create(const isl_model_config *c, isl_model **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_create: out is NULL");
    *out = NULL;
    if (!c || c->struct_size < offsetof(isl_model_config, input_normalization) + sizeof(char *))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_model_create: config is NULL or not initialised with isl_model_config_init");
    if (c->base_depth < 5 || c->base_depth > 4096)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "base depth %d is outside 5..4096 (up modules use base - 4)",
                        c->base_depth);
    if (c->num_z < 1 || c->num_z > 1024)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "num_z %d is outside 1..1024", c->num_z);
    if (c->num_heads < 0 || c->num_heads > 256 || (c->num_heads && !c->head_names))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "invalid head list (%d heads)", c->num_heads);
    for (int i = 0; i < c->num_heads; i++)
        ISL_CHECK(check_head_name(c->head_names[i], i, c->head_names));
    const char *norm = c->input_normalization ? c->input_normalization : "none";
    if (strcmp(norm, "none") && strcmp(norm, "global"))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "input normalization '%s' is not \"none\" or \"global\"", norm);
    isl_params p;
    if (isl_params_alloc(&p, c->base_depth, c->num_z, c->num_heads, c->head_names, 1) != 0)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory creating a model");
    snprintf(p.input_normalization, sizeof(p.input_normalization), "%s", norm);
    isl_params_init_random(&p, c->seed);
    return isl_model_from_params(&p, out);
}

/* The new label heads of isl_model_add_heads: checked names, then a params copy with
 * them inserted before the autoencoder. */
static isl_status check_new_heads(const isl_params *p, int count, const char *const *names)
{
    const int has_ae =
        p->num_heads > 0 && !strcmp(p->heads[p->num_heads - 1].name, ISL_AUTOENCODER_NAME);
    const int labels = p->num_heads - has_ae;
    if (count < 1 || !names)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_model_add_heads: need at least one head name (count %d)", count);
    if (count > 256 - labels)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "isl_model_add_heads: %d + %d label heads exceed 256", labels, count);
    for (int i = 0; i < count; i++) {
        ISL_CHECK(check_head_name(names[i], i, names));
        for (int h = 0; h < labels; h++)
            if (!strcmp(p->heads[h].name, names[i]))
                return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "the model already has a head '%s'",
                                names[i]);
    }
    return ISL_OK;
}

isl_status isl_model_add_heads(const isl_model *m, int count, const char *const *names,
                               uint64_t seed, isl_model **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_add_heads: out is NULL");
    *out = NULL;
    if (!m)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_add_heads: model is NULL");
    const isl_params *src = &m->params;
    ISL_CHECK(check_new_heads(src, count, names));
    const int has_ae =
        src->num_heads > 0 && !strcmp(src->heads[src->num_heads - 1].name, ISL_AUTOENCODER_NAME);
    const int old = src->num_heads - has_ae, labels = old + count;
    const char **all = malloc(sizeof(*all) * (size_t)labels);
    if (!all)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory");
    for (int h = 0; h < labels; h++)
        all[h] = h < old ? src->heads[h].name : names[h - old];
    isl_params p;
    int rc = isl_params_alloc(&p, src->arch.base_depth, src->arch.num_z, labels, all, has_ae);
    free(all);
    if (rc != 0)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "out of memory adding heads to a model");
    memcpy(p.input_normalization, src->input_normalization, sizeof(p.input_normalization));
    p.pixel_size_um = src->pixel_size_um;
    const int trunk_ch = src->arch.trunk_ch;
    isl_params_copy_trunk(&p, src);
    for (int h = 0; h < old; h++)
        isl_params_copy_head(&p.heads[h], &src->heads[h], trunk_ch);
    if (has_ae)
        isl_params_copy_head(&p.heads[labels], &src->heads[old], trunk_ch);
    uint64_t state = seed;
    for (int h = old; h < labels; h++) {
        isl_head_params *hp = &p.heads[h];
        isl_params_init_head(hp, trunk_ch, &state);
        /* Every head normalizes the same trunk output, so the population statistics of
         * an existing head are the new head's too (gamma and beta start at 1 and 0). */
        if (src->num_heads > 0) {
            const isl_bn_params *ref = &src->heads[0].bn;
            memcpy(hp->bn.mean, ref->mean, sizeof(float) * (size_t)trunk_ch);
            memcpy(hp->bn.var, ref->var, sizeof(float) * (size_t)trunk_ch);
        }
    }
    return isl_model_from_params(&p, out);
}

isl_status isl_model_load(const char *path, isl_model **out)
{
    if (!out)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_load: out is NULL");
    *out = NULL;
    if (!path)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_load: path is NULL");
    isl_params p;
    ISL_CHECK(isl_model_read_h5(path, &p));
    return isl_model_from_params(&p, out);
}

isl_status isl_model_save(const isl_model *m, const char *path)
{
    if (!m || !path)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_model_save: model or path is NULL");
    return isl_model_write_h5(path, &m->params);
}

void isl_model_free(isl_model *m)
{
    if (!m)
        return;
    for (int i = 0; i < ISL_PLAN_CACHE_SIZE; i++) {
        isl_exec_free(m->cache[i].idle);
        isl_plan_free(m->cache[i].plan);
    }
    if (m->engine)
        dnnl_engine_destroy(m->engine);
    isl_layout_free(&m->layout);
    isl_params_free(&m->params);
    pthread_mutex_destroy(&m->cache_lock);
    free(m);
}

int isl_model_base_depth(const isl_model *m) { return m ? m->params.arch.base_depth : 0; }
int isl_model_num_z(const isl_model *m) { return m ? m->params.arch.num_z : 0; }
int isl_model_num_heads(const isl_model *m) { return m ? m->params.num_heads : 0; }
int isl_model_format_version(void) { return ISL_MODEL_FORMAT_VERSION; }

const char *isl_model_head_name(const isl_model *m, int head)
{
    if (!m || head < 0 || head >= m->params.num_heads)
        return NULL;
    return m->params.heads[head].name;
}

int isl_model_head_index(const isl_model *m, const char *name)
{
    if (!m || !name)
        return -1;
    for (int h = 0; h < m->params.num_heads; h++)
        if (!strcmp(m->params.heads[h].name, name))
            return h;
    return -1;
}

int isl_model_head_channels(const isl_model *m, int head)
{
    if (!m || head < 0 || head >= m->params.num_heads)
        return 0;
    return m->params.heads[head].out_ch;
}

int64_t isl_model_parameter_count(const isl_model *m)
{
    return m ? (int64_t)isl_params_count(&m->params) : 0;
}

const char *isl_model_input_normalization(const isl_model *m)
{
    return m ? m->params.input_normalization : NULL;
}

double isl_model_pixel_size(const isl_model *m)
{
    return m ? m->params.pixel_size_um : 0;
}

isl_status isl_model_set_pixel_size(isl_model *m, double micrometres)
{
    if (!m)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "model is NULL");
    if (!isl_pixel_size_valid(micrometres))
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT,
                        "pixel size %g um is not in (0, %g] (0 clears it)", micrometres,
                        ISL_MAX_PIXEL_SIZE_UM);
    m->params.pixel_size_um = micrometres;
    return ISL_OK;
}

const char *isl_model_checksum(const isl_model *m)
{
    return m ? m->params.checksum : NULL;
}

double isl_model_macs(const isl_model *m, int height, int width, int count, const int *heads)
{
    int channels[ISL_MAX_MACS_HEADS];
    if (!m || count < 0 || count > ISL_MAX_MACS_HEADS || (count > 0 && !heads) ||
        isl_arch_output_side(height) < 0 || isl_arch_output_side(width) < 0)
        return -1.0;
    for (int i = 0; i < count; i++) {
        if (heads[i] < 0 || heads[i] >= m->params.num_heads)
            return -1.0;
        channels[i] = m->params.heads[heads[i]].out_ch;
    }
    return isl_arch_macs(&m->params.arch, height, width, count, channels);
}

/* ------------------------------------------------------------------------------------ */
/* Plan cache                                                                           */
/* ------------------------------------------------------------------------------------ */

isl_status isl_model_acquire(const isl_model *cm, int in_h, int in_w, isl_precision precision,
                             isl_plan **plan, isl_exec **exec)
{
    /* The cache is logically const: it only memoizes what the parameters determine. */
    isl_model *m = (isl_model *)cm;
    isl_plan_entry *hit = NULL;
    *plan = NULL;
    *exec = NULL;
    pthread_mutex_lock(&m->cache_lock);
    for (int i = 0; i < ISL_PLAN_CACHE_SIZE; i++) {
        isl_plan_entry *e = &m->cache[i];
        if (e->plan && e->in_h == in_h && e->in_w == in_w && e->precision == precision) {
            hit = e;
            break;
        }
    }
    if (hit) {
        hit->refs++;
        hit->last_used = ++m->clock;
        *plan = hit->plan;
        *exec = hit->idle;
        hit->idle = NULL;
    }
    pthread_mutex_unlock(&m->cache_lock);

    if (!hit) {
        /* Built outside the lock: other shapes keep predicting meanwhile. */
        isl_plan *p;
        ISL_CHECK(isl_plan_create(&m->params, &m->layout, m->engine, in_h, in_w, precision, &p));
        pthread_mutex_lock(&m->cache_lock);
        isl_plan_entry *slot = NULL;
        for (int i = 0; i < ISL_PLAN_CACHE_SIZE; i++) {
            isl_plan_entry *e = &m->cache[i];
            if (!e->plan) {
                slot = e;
                break;
            }
            if (e->refs == 0 && (!slot || e->last_used < slot->last_used))
                slot = e;
        }
        isl_plan *old_plan = NULL;
        isl_exec *old_exec = NULL;
        if (slot) {
            old_plan = slot->plan;
            old_exec = slot->idle;
            slot->plan = p;
            slot->idle = NULL;
            slot->in_h = in_h;
            slot->in_w = in_w;
            slot->precision = precision;
            slot->refs = 1;
            slot->last_used = ++m->clock;
        }
        pthread_mutex_unlock(&m->cache_lock);
        isl_exec_free(old_exec);
        isl_plan_free(old_plan);
        /* Every slot busy: the caller owns an uncached plan, freed on release. */
        *plan = p;
    }
    if (!*exec) {
        isl_status s = isl_exec_create(*plan, exec);
        if (s != ISL_OK) {
            isl_model_release(cm, *plan, NULL);
            *plan = NULL;
            return s;
        }
    }
    return ISL_OK;
}

void isl_model_release(const isl_model *cm, isl_plan *plan, isl_exec *exec)
{
    isl_model *m = (isl_model *)cm;
    isl_plan_entry *entry = NULL;
    if (!plan)
        return;
    pthread_mutex_lock(&m->cache_lock);
    for (int i = 0; i < ISL_PLAN_CACHE_SIZE; i++)
        if (m->cache[i].plan == plan)
            entry = &m->cache[i];
    if (entry) {
        entry->refs--;
        if (!entry->idle) {
            entry->idle = exec;
            exec = NULL;
        }
    }
    pthread_mutex_unlock(&m->cache_lock);
    isl_exec_free(exec);
    if (!entry)
        isl_plan_free(plan);
}
