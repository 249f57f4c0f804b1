/* Two-sample Kolmogorov-Smirnov test (two-sided), following scipy.stats.ks_2samp. */
#include "eval_check.h"

#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* P(max_t |F_a - F_b| >= d) for samples of sizes m, n without ties, counting lattice
 * paths from (0, 0) to (m, n): f(i, j) is the probability that a uniformly random path to
 * (i, j) stayed strictly inside |i n - j m| < h (in units of 1 / lcm scaled by gcd), so
 * f(i, j) = f(i-1, j) i / (i + j) + f(i, j-1) j / (i + j): no overflow at any size. */
static double exact_p(int64_t m, int64_t n, double d)
{
    int64_t a = m, b = n;
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    int64_t g = a, mg = m / g, ng = n / g;
    /* |i/m - j/n| * lcm = |i ng - j mg| with lcm = m n / g. */
    double lcm = (double)mg * (double)n;
    double h = floor(d * lcm + 0.5);
    if (h <= 0)
        return 1.0;
    double *f = malloc((size_t)(n + 1) * sizeof *f);
    if (!f)
        return NAN;
    for (int64_t j = 0; j <= n; j++)
        f[j] = (double)(j * mg) < h ? 1.0 : 0.0;
    for (int64_t i = 1; i <= m; i++) {
        f[0] = (double)(i * ng) < h ? f[0] : 0.0;
        for (int64_t j = 1; j <= n; j++) {
            double dist = fabs((double)(i * ng) - (double)(j * mg));
            f[j] = dist < h ? (f[j] * (double)i + f[j - 1] * (double)j) / (double)(i + j) : 0.0;
        }
    }
    double inside = f[n];
    free(f);
    double p = 1.0 - inside;
    return p < 0 ? 0 : p > 1 ? 1 : p;
}

/* Kolmogorov's limiting distribution Q(x) = 2 sum (-1)^(k-1) exp(-2 k^2 x^2). */
static double kolmogorov_q(double x)
{
    if (x < 0.2)
        return 1.0;
    double s = 0;
    for (int k = 1; k <= 100; k++) {
        double term = exp(-2.0 * k * k * x * x);
        s += (k % 2 ? 2.0 : -2.0) * term;
        if (term < 1e-17)
            break;
    }
    return s < 0 ? 0 : s > 1 ? 1 : s;
}

isl_status isl_eval_ks_2samp(const double *a, int64_t na, const double *b, int64_t nb,
                             double *statistic, double *p_value)
{
    if (!a || !b || !statistic || !p_value)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "isl_eval_ks_2samp: an argument is NULL");
    if (na < 1 || nb < 1)
        return isl_fail(ISL_ERROR_SHAPE, "isl_eval_ks_2samp: empty sample (sizes %lld, %lld)",
                        (long long)na, (long long)nb);
    for (int64_t i = 0; i < na + nb; i++)
        if (isnan(i < na ? a[i] : b[i - na]))
            return isl_fail(ISL_ERROR_VALUE, "isl_eval_ks_2samp: sample %c has a NaN",
                            i < na ? 'a' : 'b');
    double *sa = malloc((size_t)(na + nb) * sizeof *sa);
    if (!sa)
        return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "isl_eval_ks_2samp: out of memory");
    double *sb = sa + na;
    memcpy(sa, a, (size_t)na * sizeof *sa);
    memcpy(sb, b, (size_t)nb * sizeof *sb);
    qsort(sa, (size_t)na, sizeof *sa, cmp_double);
    qsort(sb, (size_t)nb, sizeof *sb, cmp_double);
    /* D over the pooled values: step past every copy of the next value in both samples. */
    int64_t i = 0, j = 0;
    double d = 0;
    while (i < na && j < nb) {
        double v = sa[i] < sb[j] ? sa[i] : sb[j];
        while (i < na && sa[i] == v)
            i++;
        while (j < nb && sb[j] == v)
            j++;
        double diff = fabs((double)i / (double)na - (double)j / (double)nb);
        if (diff > d)
            d = diff;
    }
    free(sa);
    *statistic = d;
    double mn = (double)na * (double)nb;
    if (mn <= 1e8) {
        *p_value = exact_p(na > nb ? na : nb, na > nb ? nb : na, d);
        if (isnan(*p_value))
            return isl_fail(ISL_ERROR_OUT_OF_MEMORY, "isl_eval_ks_2samp: out of memory");
    } else {
        *p_value = kolmogorov_q(sqrt(mn / ((double)na + (double)nb)) * d);
    }
    return ISL_OK;
}
