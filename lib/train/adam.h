/* Adam (Kingma and Ba 2014), as the paper trains: learning rate 1e-4, dropped to 1e-5
 * late in training, betas 0.9 / 0.999, epsilon 1e-8. The update is PyTorch's
 * (torch.optim.Adam without weight decay):
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   w -= lr / (1 - b1^k) * m / (sqrt(v) / sqrt(1 - b2^k) + eps)
 * The optimizer state is the two moments per parameter and, for the bias correction, k,
 * the number of updates the parameter has had: a head left out of a step (no known pixel of
 * its label) takes no update and does not count it, as torch.optim.Adam skips a parameter
 * without gradient; the learning-rate schedule follows the trainer's step count. */
#ifndef ISL_ADAM_H
#define ISL_ADAM_H

#include <stddef.h>
#include <stdint.h>

typedef struct isl_adam_config {
    double learning_rate;   /* 1e-4 */
    double late_rate;       /* 1e-5 */
    int64_t drop_step;      /* steps from this one on (1-based) use late_rate; 0 = never */
    double beta1, beta2;    /* 0.9, 0.999 */
    double epsilon;         /* 1e-8 */
    double weight_decay;    /* 0: none (AdamW's decoupled decay, Loshchilov and Hutter 2019) */
} isl_adam_config;

void isl_adam_defaults(isl_adam_config *c);

/* The learning rate of step t (1-based). */
double isl_adam_rate(const isl_adam_config *c, int64_t t);

/* The k-th update (1-based) of n parameters w with gradient g and moments m, v, at the
 * trainer's step t (1-based; it sets the learning rate); decays: whether the weight decay
 * applies to w (convolution weights, not biases or batch-norm scales). */
void isl_adam_update(const isl_adam_config *c, int64_t t, int64_t k, float *w, const float *g,
                     float *m, float *v, size_t n, int decays);

#endif
