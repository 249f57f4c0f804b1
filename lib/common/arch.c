#include "arch.h"

#include <stdlib.h>
#include <string.h>

const int isl_tower_start_size[ISL_NUM_TOWERS] = {72, 102, 146, 202, 250};

static int next_even(int v) { return (v % 2) ? v + 1 : v; }
static int max_int(int a, int b) { return a > b ? a : b; }
static int min_int(int a, int b) { return a < b ? a : b; }

void isl_arch_depths(int base, int size, int *expand, int *reduce)
{
    int r = (base + size - 1) / size; /* ceil(base / size) */
    /* E = next_even(ceil(211/39 * r)), in exact integer arithmetic. */
    int e = (211 * r + 38) / 39;
    *reduce = next_even(r);
    *expand = next_even(e);
}

static int size_after(isl_module_kind kind, int n)
{
    switch (kind) {
    case ISL_MODULE_IN: return n - 2;
    case ISL_MODULE_DOWN: return (n - 4) / 2 + 1;
    case ISL_MODULE_UP: return 2 * n + 2;
    }
    return -1;
}

/* Appends one module whose x has in_ch channels; returns its output channels. */
static int add_module(isl_arch *a, isl_module_kind kind, int tower, int in_ch, int size_in,
                      int depth_base, int depth_size, int crop_after)
{
    isl_module_arch *m = &a->modules[a->num_modules++];
    int e, r;
    isl_arch_depths(depth_base, depth_size, &e, &r);
    if (kind != ISL_MODULE_UP) {
        e = max_int(e, in_ch);
        r = max_int(r, in_ch);
    }
    m->kind = kind;
    m->tower = tower;
    m->in_ch = in_ch;
    m->expand_ch = e;
    m->reduce_ch = r;
    m->out_ch = kind == ISL_MODULE_UP ? min_int(r, in_ch) : max_int(r, in_ch);
    m->e_ch = kind == ISL_MODULE_UP ? e : e + in_ch;
    m->kernel = kind == ISL_MODULE_IN ? 3 : 4;
    m->crop_after = crop_after;
    m->size_in = size_in;
    m->size_out = size_after(kind, size_in);
    return m->out_ch;
}

int isl_arch_build(isl_arch *a, int base_depth, int num_z)
{
    memset(a, 0, sizeof(*a));
    if (base_depth < 5 || num_z < 1) /* up modules use depths(base - 4, .) */
        return -1;
    /* 18 modules per tower, 14 in the upper tower. */
    a->modules = calloc(ISL_NUM_TOWERS * 18 + ISL_UPPER_MODULES, sizeof(*a->modules));
    if (!a->modules)
        return -1;
    a->base_depth = base_depth;
    a->num_z = num_z;

    int concat_ch = 0;
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        int ch = ISL_PROJECTION_DEPTH, n = isl_tower_start_size[s];
        a->tower_first[s] = a->num_modules;
        for (int i = 0; i < s; i++) {
            int pair = size_after(ISL_MODULE_IN, size_after(ISL_MODULE_DOWN, n));
            ch = add_module(a, ISL_MODULE_DOWN, s, ch, n, base_depth, pair, 0);
            n = size_after(ISL_MODULE_DOWN, n);
            ch = add_module(a, ISL_MODULE_IN, s, ch, n, base_depth, pair, 0);
            n = pair;
        }
        for (int i = 0; i < 18 - 4 * s; i++) {
            ch = add_module(a, ISL_MODULE_IN, s, ch, n, base_depth, n - 2, 0);
            n -= 2;
        }
        for (int i = 0; i < s; i++) {
            int up = size_after(ISL_MODULE_UP, n) - 4, pair = up - 2;
            ch = add_module(a, ISL_MODULE_UP, s, ch, n, base_depth - 4, pair, 1);
            ch = add_module(a, ISL_MODULE_IN, s, ch, up, base_depth, pair, 0);
            n = pair;
        }
        a->tower_count[s] = a->num_modules - a->tower_first[s];
        a->tower_out_ch[s] = ch;
        concat_ch += ch;
    }
    int ch = concat_ch, n = 36;
    a->tower_first[ISL_UPPER_TOWER] = a->num_modules;
    for (int i = 0; i < ISL_UPPER_MODULES; i++) {
        ch = add_module(a, ISL_MODULE_IN, ISL_UPPER_TOWER, ch, n, base_depth, n - 2, 0);
        n -= 2;
    }
    a->tower_count[ISL_UPPER_TOWER] = ISL_UPPER_MODULES;
    a->trunk_ch = ch;
    return 0;
}

void isl_arch_free(isl_arch *a)
{
    if (!a)
        return;
    free(a->modules);
    memset(a, 0, sizeof(*a));
}

long long isl_arch_module_parameters(const isl_module_arch *m)
{
    long long k = m->kernel;
    long long bn1 = 4LL * m->in_ch, bn2 = 4LL * m->e_ch;
    long long expand = (long long)m->expand_ch * 2 * m->in_ch * k * k;
    long long reduce = (long long)m->reduce_ch * 2 * m->e_ch;
    return bn1 + expand + bn2 + reduce;
}

long long isl_arch_head_parameters(const isl_arch *a, int out_ch)
{
    return 4LL * a->trunk_ch + (long long)out_ch * 2 * a->trunk_ch + out_ch;
}

int isl_arch_output_side(int input_side)
{
    if (input_side < ISL_PATCH_INPUT || (input_side - ISL_PATCH_INPUT) % ISL_STRIDE)
        return -1;
    return input_side - (ISL_PATCH_INPUT - ISL_PATCH_OUTPUT);
}

static double module_macs(const isl_module_arch *m, int h, int w)
{
    const int k = m->kernel;
    double expand;
    if (m->kind == ISL_MODULE_UP)
        expand = (double)m->expand_ch * 2 * m->in_ch * k * k * h * w; /* per input pixel */
    else
        expand = (double)m->expand_ch * 2 * m->in_ch * k * k * size_after(m->kind, h) *
                 size_after(m->kind, w);
    double reduce = (double)m->reduce_ch * 2 * m->e_ch * size_after(m->kind, h) *
                    size_after(m->kind, w);
    return expand + reduce;
}

double isl_arch_macs(const isl_arch *a, int in_h, int in_w, int num_heads, const int *head_ch)
{
    double macs = (double)ISL_PROJECTION_DEPTH * a->num_z * in_h * in_w;
    for (int s = 0; s < ISL_NUM_TOWERS; s++) {
        int border = ISL_PATCH_INPUT - isl_tower_start_size[s];
        int h = in_h - border, w = in_w - border;
        for (int i = a->tower_first[s]; i < a->tower_first[s] + a->tower_count[s]; i++) {
            const isl_module_arch *m = &a->modules[i];
            macs += module_macs(m, h, w);
            h = size_after(m->kind, h) - (m->crop_after ? 4 : 0);
            w = size_after(m->kind, w) - (m->crop_after ? 4 : 0);
        }
    }
    int h = in_h - (ISL_PATCH_INPUT - 36), w = in_w - (ISL_PATCH_INPUT - 36);
    for (int i = a->tower_first[ISL_UPPER_TOWER]; i < a->num_modules; i++) {
        macs += module_macs(&a->modules[i], h, w);
        h -= 2;
        w -= 2;
    }
    for (int k = 0; k < num_heads; k++)
        macs += (double)head_ch[k] * 2 * a->trunk_ch * h * w;
    return macs;
}
