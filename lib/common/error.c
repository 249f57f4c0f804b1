#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ISL_ERROR_CAPACITY 1024

static _Thread_local char last_error[ISL_ERROR_CAPACITY];

const char *isl_status_string(isl_status status)
{
    switch (status) {
    case ISL_OK: return "ok";
    case ISL_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case ISL_ERROR_OUT_OF_MEMORY: return "out of memory";
    case ISL_ERROR_IO: return "input/output error";
    case ISL_ERROR_FORMAT: return "invalid file format";
    case ISL_ERROR_SHAPE: return "shape mismatch";
    case ISL_ERROR_VALUE: return "invalid value";
    case ISL_ERROR_UNSUPPORTED: return "unsupported";
    case ISL_ERROR_CANCELLED: return "cancelled";
    case ISL_ERROR_BACKEND: return "backend failure";
    case ISL_ERROR_INTERNAL: return "internal error";
    case ISL_ERROR_DAMAGED: return "damaged file";
    }
    return "unknown status";
}

const char *isl_last_error(void) { return last_error; }

isl_status isl_fail(isl_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return status;
}

void isl_error_prefix(const char *fmt, ...)
{
    char prefix[ISL_ERROR_CAPACITY], old[ISL_ERROR_CAPACITY];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof(old));
    snprintf(last_error, sizeof(last_error), "%.512s%.511s", prefix, old);
}

