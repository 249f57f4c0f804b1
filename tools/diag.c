/* One-line diagnostics on stderr and number formatting. */
#include "cli.h"
#include "tiff_io.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void print_error(const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    /* Exactly one line: fold any newline of a nested message into a space. */
    for (char *c = msg; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    fprintf(stderr, "isl: error: %s\n", msg);
    fflush(stderr);
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    print_error(fmt, ap);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_runtime_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    print_error(fmt, ap);
    va_end(ap);
    return CLI_EXIT_RUNTIME;
}

int cli_library_error(isl_status status)
{
    const char *msg = isl_last_error();
    return cli_runtime_error("%s", msg[0] ? msg : isl_status_string(status));
}

int cli_tiff_error(isl_status status)
{
    const char *msg = isl_tiff_last_error();
    return cli_runtime_error("%s", msg[0] ? msg : isl_status_string(status));
}

const char *cli_thousands(int64_t v, char *buf, size_t size)
{
    char digits[32];
    uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    int n = snprintf(digits, sizeof(digits), "%llu", (unsigned long long)mag);
    char tmp[48];
    size_t k = 0;
    if (v < 0)
        tmp[k++] = '-';
    for (int i = 0; i < n; i++) {
        if (i > 0 && (n - i) % 3 == 0)
            tmp[k++] = ',';
        tmp[k++] = digits[i];
    }
    tmp[k] = '\0';
    snprintf(buf, size, "%s", tmp);
    return buf;
}
