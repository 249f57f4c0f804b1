#include "adam.h"

#include <math.h>

void isl_adam_defaults(isl_adam_config *c)
{
    c->learning_rate = 1e-4;
    c->late_rate = 1e-5;
    c->drop_step = 0;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->epsilon = 1e-8;
    c->weight_decay = 0;
}

double isl_adam_rate(const isl_adam_config *c, int64_t t)
{
    return c->drop_step > 0 && t >= c->drop_step ? c->late_rate : c->learning_rate;
}

void isl_adam_update(const isl_adam_config *c, int64_t t, int64_t k, float *w, const float *g,
                     float *m, float *v, size_t n, int decays)
{
    const double rate = isl_adam_rate(c, t);
    const float keep = (float)(1 - rate * (decays ? c->weight_decay : 0));
    const float b1 = (float)c->beta1, b2 = (float)c->beta2;
    const float step = (float)(rate / (1 - pow(c->beta1, (double)k)));
    const float root2 = (float)sqrt(1 - pow(c->beta2, (double)k));
    const float eps = (float)c->epsilon;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        w[i] = w[i] * keep - step * m[i] / (sqrtf(v[i]) / root2 + eps);
    }
}
