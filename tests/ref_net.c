#include "ref_net.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

ref_t ref_new(int c, int h, int w)
{
    ref_t t = {c, h, w, calloc((size_t)c * h * w, sizeof(double))};
    return t;
}

void ref_free(ref_t *t)
{
    free(t->v);
    t->v = NULL;
}

ref_t ref_conv(const ref_t *x, const float *w, const float *bias, int out_c, int k, int stride)
{
    int oh = (x->h - k) / stride + 1, ow = (x->w - k) / stride + 1;
    ref_t y = ref_new(out_c, oh, ow);
    for (int o = 0; o < out_c; o++)
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++) {
                double s = bias ? bias[o] : 0.0;
                for (int c = 0; c < x->c; c++)
                    for (int a = 0; a < k; a++)
                        for (int b = 0; b < k; b++)
                            s += w[(((size_t)o * x->c + c) * k + a) * k + b] *
                                 *ref_at(x, c, i * stride + a, j * stride + b);
                *ref_at(&y, o, i, j) = s;
            }
    return y;
}

ref_t ref_conv_transpose(const ref_t *x, const float *w, int out_c, int k, int stride)
{
    ref_t y = ref_new(out_c, (x->h - 1) * stride + k, (x->w - 1) * stride + k);
    for (int c = 0; c < x->c; c++)
        for (int i = 0; i < x->h; i++)
            for (int j = 0; j < x->w; j++)
                for (int o = 0; o < out_c; o++)
                    for (int a = 0; a < k; a++)
                        for (int b = 0; b < k; b++)
                            *ref_at(&y, o, i * stride + a, j * stride + b) +=
                                w[(((size_t)c * out_c + o) * k + a) * k + b] * *ref_at(x, c, i, j);
    return y;
}

static ref_t pool(const ref_t *x, int k, int stride, int is_max)
{
    ref_t y = ref_new(x->c, (x->h - k) / stride + 1, (x->w - k) / stride + 1);
    for (int c = 0; c < x->c; c++)
        for (int i = 0; i < y.h; i++)
            for (int j = 0; j < y.w; j++) {
                double acc = is_max ? -INFINITY : 0.0;
                for (int a = 0; a < k; a++)
                    for (int b = 0; b < k; b++) {
                        double v = *ref_at(x, c, i * stride + a, j * stride + b);
                        acc = is_max ? fmax(acc, v) : acc + v;
                    }
                *ref_at(&y, c, i, j) = is_max ? acc : acc / (k * k);
            }
    return y;
}

ref_t ref_maxpool(const ref_t *x, int k, int stride) { return pool(x, k, stride, 1); }
ref_t ref_avgpool(const ref_t *x, int k, int stride) { return pool(x, k, stride, 0); }

ref_t ref_crop(const ref_t *x, int h, int w)
{
    ref_t y = ref_new(x->c, h, w);
    int oy = (x->h - h) / 2, ox = (x->w - w) / 2;
    for (int c = 0; c < x->c; c++)
        for (int i = 0; i < h; i++)
            for (int j = 0; j < w; j++)
                *ref_at(&y, c, i, j) = *ref_at(x, c, i + oy, j + ox);
    return y;
}

ref_t ref_upsample_edge(const ref_t *x)
{
    ref_t up = ref_new(x->c, 2 * x->h, 2 * x->w);
    for (int c = 0; c < x->c; c++)
        for (int i = 0; i < up.h; i++)
            for (int j = 0; j < up.w; j++)
                *ref_at(&up, c, i, j) = *ref_at(x, c, i / 2, j / 2);
    ref_t y = ref_new(x->c, up.h + 2, up.w + 2);
    for (int c = 0; c < x->c; c++)
        for (int i = 0; i < y.h; i++)
            for (int j = 0; j < y.w; j++) {
                int si = i - 1 < 0 ? 0 : (i - 1 >= up.h ? up.h - 1 : i - 1);
                int sj = j - 1 < 0 ? 0 : (j - 1 >= up.w ? up.w - 1 : j - 1);
                *ref_at(&y, c, i, j) = *ref_at(&up, c, si, sj);
            }
    ref_free(&up);
    return y;
}

ref_t ref_bnact(const ref_t *x, const isl_bn_params *bn)
{
    ref_t y = ref_new(2 * x->c, x->h, x->w);
    for (int c = 0; c < x->c; c++)
        for (int i = 0; i < x->h; i++)
            for (int j = 0; j < x->w; j++) {
                double v = bn->gamma[c] * (*ref_at(x, c, i, j) - bn->mean[c]) /
                               sqrt((double)bn->var[c] + 1e-3) +
                           bn->beta[c];
                *ref_at(&y, c, i, j) = v > 0 ? v : 0;
                *ref_at(&y, x->c + c, i, j) = tanh(v);
            }
    return y;
}

ref_t ref_concat(const ref_t *a, const ref_t *b)
{
    ref_t y = ref_new(a->c + b->c, a->h, a->w);
    memcpy(y.v, a->v, sizeof(double) * (size_t)a->c * a->h * a->w);
    memcpy(y.v + (size_t)a->c * a->h * a->w, b->v, sizeof(double) * (size_t)b->c * b->h * b->w);
    return y;
}

ref_t ref_module(const ref_t *x, char kind, const isl_module_params *mp, int expand_ch,
                 int reduce_ch)
{
    ref_t act = ref_bnact(x, &mp->bn1), e, p;
    if (kind == 'u') {
        e = ref_conv_transpose(&act, mp->expand_weight, expand_ch, 4, 2);
    } else {
        int k = kind == 'i' ? 3 : 4, stride = kind == 'i' ? 1 : 2;
        ref_t conv = ref_conv(&act, mp->expand_weight, NULL, expand_ch, k, stride);
        ref_t mp_x = ref_maxpool(x, k, stride);
        e = ref_concat(&conv, &mp_x);
        ref_free(&conv);
        ref_free(&mp_x);
    }
    ref_free(&act);
    act = ref_bnact(&e, &mp->bn2);
    ref_t r = ref_conv(&act, mp->reduce_weight, NULL, reduce_ch, 1, 1);
    ref_free(&act);
    ref_free(&e);
    if (kind == 'i') {
        p = ref_crop(x, x->h - 2, x->w - 2);
    } else if (kind == 'd') {
        ref_t c = ref_crop(x, x->h - 2, x->w - 2);
        p = ref_avgpool(&c, 2, 2);
        ref_free(&c);
    } else {
        p = ref_upsample_edge(x);
    }
    /* in/down: zero-pad the shallower; up: keep the channels both have. */
    int out_c = kind == 'u' ? (r.c < p.c ? r.c : p.c) : (r.c > p.c ? r.c : p.c);
    ref_t y = ref_new(out_c, r.h, r.w);
    for (int c = 0; c < out_c; c++)
        for (int i = 0; i < r.h; i++)
            for (int j = 0; j < r.w; j++)
                *ref_at(&y, c, i, j) = (c < r.c ? *ref_at(&r, c, i, j) : 0.0) +
                                       (c < p.c ? *ref_at(&p, c, i, j) : 0.0);
    ref_free(&r);
    ref_free(&p);
    return y;
}

static char kind_char(isl_module_kind k)
{
    return k == ISL_MODULE_IN ? 'i' : (k == ISL_MODULE_DOWN ? 'd' : 'u');
}

void ref_network(const isl_params *p, const ref_t *input, ref_t *out)
{
    static const int start[5] = {72, 102, 146, 202, 250};
    const int grow_h = input->h - 250, grow_w = input->w - 250;
    ref_t proj = ref_conv(input, p->projection_weight, p->projection_bias, 16, 1, 1);
    ref_t cat = {0, 0, 0, NULL};
    int i = 0;
    for (int s = 0; s < 5; s++) {
        ref_t x = ref_crop(&proj, start[s] + grow_h, start[s] + grow_w);
        for (int n = 0; n < 18; n++, i++) {
            const isl_module_arch *a = &p->arch.modules[i];
            char kind = kind_char(a->kind);
            int e = kind == 'u' ? p->modules[i].bn2.channels
                                : p->modules[i].bn2.channels - p->modules[i].bn1.channels;
            ref_t y = ref_module(&x, kind, &p->modules[i], e, a->reduce_ch);
            ref_free(&x);
            x = y;
            if (kind == 'u') {
                y = ref_crop(&x, x.h - 4, x.w - 4);
                ref_free(&x);
                x = y;
            }
        }
        if (cat.v) {
            ref_t c2 = ref_concat(&cat, &x);
            ref_free(&cat);
            ref_free(&x);
            cat = c2;
        } else {
            cat = x;
        }
    }
    ref_free(&proj);
    ref_t x = cat;
    for (int n = 0; n < 14; n++, i++) {
        int e = p->modules[i].bn2.channels - p->modules[i].bn1.channels;
        ref_t y = ref_module(&x, 'i', &p->modules[i], e, p->arch.modules[i].reduce_ch);
        ref_free(&x);
        x = y;
    }
    for (int h = 0; h < p->num_heads; h++) {
        ref_t act = ref_bnact(&x, &p->heads[h].bn);
        out[h] = ref_conv(&act, p->heads[h].weight, p->heads[h].bias, p->heads[h].out_ch, 1, 1);
        ref_free(&act);
    }
    ref_free(&x);
}
