/* Thread-local error messages (see isl_last_error in isl.h). */
#ifndef ISL_ERROR_H
#define ISL_ERROR_H

#include "isl.h"

/* Records a formatted message for the calling thread and returns status, so that
 * failures read: return isl_fail(ISL_ERROR_IO, "cannot open %s", path); */
isl_status isl_fail(isl_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes the calling thread's current message with context ("model.h5: " + message). */
void isl_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define ISL_CHECK(expr)                      \
    do {                                     \
        isl_status isl_check_s_ = (expr);    \
        if (isl_check_s_ != ISL_OK)          \
            return isl_check_s_;             \
    } while (0)

#endif
