/* Argument checks shared by the evaluation functions. */
#ifndef ISL_EVAL_CHECK_H
#define ISL_EVAL_CHECK_H

#include "error.h"

#include <math.h>
#include <stdint.h>

/* Non-NULL arrays, count >= 1 and every selected pixel finite in both images (b may be
 * NULL). `fn` names the caller in messages. */
static inline isl_status isl_eval_check_pixels(const char *fn, const float *a, const float *b,
                                               const uint8_t *mask, int64_t count)
{
    if (!a)
        return isl_fail(ISL_ERROR_INVALID_ARGUMENT, "%s: image is NULL", fn);
    if (count < 1)
        return isl_fail(ISL_ERROR_SHAPE, "%s: no pixels (count %lld)", fn, (long long)count);
    for (int64_t i = 0; i < count; i++) {
        if (mask && !mask[i])
            continue;
        if (!isfinite(a[i]) || (b && !isfinite(b[i])))
            return isl_fail(ISL_ERROR_VALUE, "%s: pixel %lld is %s", fn, (long long)i,
                            isnan(isfinite(a[i]) ? b[i] : a[i]) ? "NaN" : "infinite");
    }
    return ISL_OK;
}

#endif
