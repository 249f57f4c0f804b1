#include "layout.h"

#include <stdlib.h>
#include <string.h>

static int pad16(int c) { return (c + 15) / 16 * 16; }

static int chmap_alloc(isl_chmap *m, int count)
{
    m->count = count;
    m->padded = 0;
    m->pos = calloc((size_t)(count ? count : 1), sizeof(int));
    return m->pos ? 0 : -1;
}

static void chmap_free(isl_chmap *m)
{
    free(m->pos);
    memset(m, 0, sizeof(*m));
}

static int chmap_copy(isl_chmap *dst, const isl_chmap *src)
{
    if (chmap_alloc(dst, src->count))
        return -1;
    memcpy(dst->pos, src->pos, sizeof(int) * (size_t)src->count);
    dst->padded = src->padded;
    return 0;
}

/* Output map of an in/down module: x's positions, then free positions for the rest. */
static int out_map_grow(isl_chmap *out, const isl_chmap *x, int count)
{
    if (chmap_alloc(out, count))
        return -1;
    char *used = calloc((size_t)x->padded + 1, 1);
    if (!used)
        return -1;
    for (int c = 0; c < x->count; c++) {
        out->pos[c] = x->pos[c];
        used[x->pos[c]] = 1;
    }
    int next = 0, top = 0;
    for (int c = x->count; c < count; c++) {
        while (next < x->padded && used[next])
            next++;
        out->pos[c] = next++;
    }
    free(used);
    for (int c = 0; c < count; c++)
        if (out->pos[c] + 1 > top)
            top = out->pos[c] + 1;
    out->padded = pad16(top > x->padded ? top : x->padded);
    return 0;
}

/* Output map of an up module: x's positions for the first `count` channels. */
static int out_map_shrink(isl_chmap *out, const isl_chmap *x, int count)
{
    if (chmap_alloc(out, count))
        return -1;
    int top = 0;
    for (int c = 0; c < count; c++) {
        out->pos[c] = x->pos[c];
        if (out->pos[c] + 1 > top)
            top = out->pos[c] + 1;
    }
    out->padded = pad16(top);
    return 0;
}

static int bn_pad(isl_bn_padded *d, const isl_bn_params *s, const isl_chmap *m)
{
    d->padded = m->padded;
    d->scale = calloc((size_t)m->padded, sizeof(float));
    d->shift = calloc((size_t)m->padded, sizeof(float));
    if (!d->scale || !d->shift)
        return -1;
    for (int c = 0; c < m->count; c++)
        isl_bn_fold(s, c, &d->scale[m->pos[c]], &d->shift[m->pos[c]]);
    return 0;
}

static void bn_padded_free(isl_bn_padded *b)
{
    free(b->scale);
    free(b->shift);
    memset(b, 0, sizeof(*b));
}

/* Padded position of channel i of BNAct(t) = [relu(t), tanh(t)]. */
static int bnact_pos(const isl_chmap *t, int i)
{
    return i < t->count ? t->pos[i] : t->padded + t->pos[i - t->count];
}

static int module_layout(isl_module_layout *ml, const isl_module_arch *a,
                         const isl_module_params *mp, const isl_chmap *x)
{
    const int k = a->kernel, kk = k * k, E = a->expand_ch, C = a->in_ch;
    if (chmap_copy(&ml->x, x))
        return -1;
    ml->conv_padded = pad16(E);
    if (chmap_alloc(&ml->e, a->e_ch))
        return -1;
    for (int j = 0; j < E; j++)
        ml->e.pos[j] = j;
    ml->e.padded = ml->conv_padded;
    if (a->kind != ISL_MODULE_UP) {
        for (int c = 0; c < C; c++)
            ml->e.pos[E + c] = ml->conv_padded + x->pos[c];
        ml->e.padded += x->padded;
    }
    int grown = a->kind == ISL_MODULE_UP ? out_map_shrink(&ml->out, x, a->out_ch)
                                         : out_map_grow(&ml->out, x, a->out_ch);
    if (grown || bn_pad(&ml->bn1, &mp->bn1, &ml->x) || bn_pad(&ml->bn2, &mp->bn2, &ml->e))
        return -1;

    const size_t in2 = 2 * (size_t)x->padded;
    ml->expand_weight = calloc((size_t)ml->conv_padded * in2 * kk, sizeof(float));
    if (!ml->expand_weight)
        return -1;
    for (int o = 0; o < E; o++) {
        for (int i = 0; i < 2 * C; i++) {
            /* PyTorch: conv [E, 2C, k, k]; transposed conv [2C, E, k, k]. */
            const float *src = a->kind == ISL_MODULE_UP
                                   ? mp->expand_weight + ((size_t)i * E + o) * kk
                                   : mp->expand_weight + ((size_t)o * 2 * C + i) * kk;
            float *dst = ml->expand_weight + ((size_t)o * in2 + bnact_pos(x, i)) * kk;
            memcpy(dst, src, sizeof(float) * kk);
        }
    }
    const size_t e2 = 2 * (size_t)ml->e.padded;
    ml->reduce_weight = calloc((size_t)ml->out.padded * e2, sizeof(float));
    if (!ml->reduce_weight)
        return -1;
    /* Up modules keep only the first out_ch outputs of the reduce conv. */
    for (int o = 0; o < a->out_ch && o < a->reduce_ch; o++)
        for (int i = 0; i < 2 * a->e_ch; i++)
            ml->reduce_weight[(size_t)ml->out.pos[o] * e2 + bnact_pos(&ml->e, i)] =
                mp->reduce_weight[(size_t)o * 2 * a->e_ch + i];
    return 0;
}

static int head_layout(isl_head_layout *hl, const isl_head_params *hp, const isl_chmap *trunk)
{
    const size_t in2 = 2 * (size_t)trunk->padded;
    if (bn_pad(&hl->bn, &hp->bn, trunk))
        return -1;
    hl->weight = calloc((size_t)hp->out_ch * in2, sizeof(float));
    if (!hl->weight)
        return -1;
    for (int o = 0; o < hp->out_ch; o++)
        for (int i = 0; i < 2 * trunk->count; i++)
            hl->weight[(size_t)o * in2 + bnact_pos(trunk, i)] =
                hp->weight[(size_t)o * 2 * trunk->count + i];
    hl->bias = hp->bias;
    return 0;
}

int isl_layout_build(isl_layout *l, const isl_params *p)
{
    const isl_arch *a = &p->arch;
    isl_chmap proj = {0};
    memset(l, 0, sizeof(*l));
    l->num_modules = a->num_modules;
    l->modules = calloc((size_t)a->num_modules, sizeof(*l->modules));
    l->num_heads = p->num_heads;
    l->heads = calloc((size_t)(p->num_heads ? p->num_heads : 1), sizeof(*l->heads));
    if (!l->modules || !l->heads || chmap_alloc(&proj, ISL_PROJECTION_DEPTH))
        goto fail;
    for (int c = 0; c < ISL_PROJECTION_DEPTH; c++)
        proj.pos[c] = c;
    proj.padded = pad16(ISL_PROJECTION_DEPTH);

    int concat_channels = 0, concat_padded = 0;
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        const isl_chmap *x = &proj;
        for (int i = a->tower_first[s]; i < a->tower_first[s] + a->tower_count[s]; i++) {
            if (module_layout(&l->modules[i], &a->modules[i], &p->modules[i], x))
                goto fail;
            x = &l->modules[i].out;
        }
        l->concat_offset[s] = concat_padded;
        concat_padded += x->padded;
        concat_channels += x->count;
    }
    if (chmap_alloc(&l->concat, concat_channels))
        goto fail;
    l->concat.padded = concat_padded;
    for (int s = 0, c = 0; s < ISL_NUM_TOWERS; s++) {
        const isl_chmap *t = &l->modules[a->tower_first[s] + a->tower_count[s] - 1].out;
        for (int j = 0; j < t->count; j++)
            l->concat.pos[c++] = l->concat_offset[s] + t->pos[j];
    }
    const isl_chmap *x = &l->concat;
    for (int i = a->tower_first[ISL_UPPER_TOWER]; i < a->num_modules; i++) {
        if (module_layout(&l->modules[i], &a->modules[i], &p->modules[i], x))
            goto fail;
        x = &l->modules[i].out;
    }
    if (chmap_copy(&l->trunk, x))
        goto fail;
    for (int h = 0; h < p->num_heads; h++)
        if (head_layout(&l->heads[h], &p->heads[h], &l->trunk))
            goto fail;
    chmap_free(&proj);
    return 0;
fail:
    chmap_free(&proj);
    isl_layout_free(l);
    return -1;
}

void isl_layout_free(isl_layout *l)
{
    if (!l)
        return;
    for (int i = 0; l->modules && i < l->num_modules; i++) {
        isl_module_layout *ml = &l->modules[i];
        chmap_free(&ml->x);
        chmap_free(&ml->e);
        chmap_free(&ml->out);
        bn_padded_free(&ml->bn1);
        bn_padded_free(&ml->bn2);
        free(ml->expand_weight);
        free(ml->reduce_weight);
    }
    for (int h = 0; l->heads && h < l->num_heads; h++) {
        bn_padded_free(&l->heads[h].bn);
        free(l->heads[h].weight);
    }
    free(l->modules);
    free(l->heads);
    chmap_free(&l->concat);
    chmap_free(&l->trunk);
    memset(l, 0, sizeof(*l));
}
