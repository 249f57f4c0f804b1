/* Command-line parsing: options of a table, strict numbers, comma-separated lists. */
#include "cli.h"

#include <ctype.h>
#include <math.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void cli_args_init(cli_args *a, int argc, char **argv, const char *command)
{
    a->argc = argc;
    a->argv = argv;
    a->next = 1;
    a->only_positional = 0;
    a->command = command;
}

int cli_wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            return 0;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return 1;
    }
    return 0;
}

static const cli_option *find_long(const cli_option *opts, const char *name, size_t len)
{
    for (const cli_option *o = opts; o->name; o++)
        if (strlen(o->name) == len && !strncmp(o->name, name, len))
            return o;
    return NULL;
}

static const cli_option *find_short(const cli_option *opts, char c)
{
    for (const cli_option *o = opts; o->name; o++)
        if (o->short_name && o->short_name == c)
            return o;
    return NULL;
}

int cli_args_next(cli_args *a, const cli_option *opts, int *id, const char **value)
{
    *id = -1;
    *value = NULL;
    if (a->next >= a->argc)
        return CLI_ARG_END;
    const char *arg = a->argv[a->next++];
    if (!a->only_positional && !strcmp(arg, "--")) {
        a->only_positional = 1;
        return cli_args_next(a, opts, id, value);
    }
    if (a->only_positional || arg[0] != '-' || arg[1] == '\0') {
        *value = arg;
        return CLI_ARG_POSITIONAL;
    }

    const cli_option *o;
    const char *inline_value = NULL;
    if (arg[1] == '-') {
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        o = find_long(opts, name, len);
        if (eq)
            inline_value = eq + 1;
    } else {
        o = arg[2] == '\0' ? find_short(opts, arg[1]) : NULL;
    }
    if (!o) {
        cli_usage_error("unknown option '%s' for 'isl %s' (see 'isl %s --help')", arg, a->command,
                        a->command);
        return CLI_ARG_ERROR;
    }
    *id = o->id;
    if (!o->takes_value) {
        if (inline_value) {
            cli_usage_error("option '--%s' takes no value", o->name);
            return CLI_ARG_ERROR;
        }
        return CLI_ARG_OPTION;
    }
    if (inline_value) {
        *value = inline_value;
        return CLI_ARG_OPTION;
    }
    /* A following "--option" is not taken as a value: it means the value was forgotten. */
    if (a->next >= a->argc || !strncmp(a->argv[a->next], "--", 2)) {
        cli_usage_error("option '%s' needs a value", arg);
        return CLI_ARG_ERROR;
    }
    *value = a->argv[a->next++];
    return CLI_ARG_OPTION;
}

int cli_parse_int(const char *option, const char *text, long long min, long long max,
                  long long *out)
{
    const char *p = text;
    if (*p == '+' || *p == '-')
        p++;
    if (!isdigit((unsigned char)*p)) {
        cli_usage_error("%s: '%s' is not an integer", option, text);
        return -1;
    }
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end != '\0') {
        cli_usage_error("%s: '%s' is not an integer", option, text);
        return -1;
    }
    if (errno == ERANGE || v < min || v > max) {
        cli_usage_error("%s: %s is out of range (%lld..%lld)", option, text, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_double(const char *option, const char *text, double min, double max,
                     double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v)) {
        cli_usage_error("%s: '%s' is not a number", option, text);
        return -1;
    }
    if (v < min || v > max) {
        cli_usage_error("%s: %s is out of range (%g..%g)", option, text, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_u64(const char *option, const char *text, uint64_t *out)
{
    /* strtoull accepts "-1" (wrapping) and leading spaces: require digits only. */
    if (!isdigit((unsigned char)text[0])) {
        cli_usage_error("%s: '%s' is not a non-negative integer", option, text);
        return -1;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (*end != '\0') {
        cli_usage_error("%s: '%s' is not a non-negative integer", option, text);
        return -1;
    }
    if (errno == ERANGE) {
        cli_usage_error("%s: %s is out of range (0..18446744073709551615)", option, text);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

int cli_split_list(const char *option, const char *text, cli_list *out)
{
    out->buffer = NULL;
    out->items = NULL;
    out->count = 0;
    size_t len = strlen(text);
    int count = 1;
    for (size_t i = 0; i < len; i++)
        count += text[i] == ',';
    out->buffer = malloc(len + 1);
    out->items = malloc(sizeof(char *) * (size_t)count);
    if (!out->buffer || !out->items) {
        cli_list_free(out);
        return cli_runtime_error("out of memory");
    }
    memcpy(out->buffer, text, len + 1);
    char *item = out->buffer;
    for (int k = 0; k < count; k++) {
        char *comma = strchr(item, ',');
        if (comma)
            *comma = '\0';
        if (*item == '\0') {
            cli_list_free(out);
            return cli_usage_error("%s: empty name in list '%s'", option, text);
        }
        out->items[out->count++] = item;
        item = comma ? comma + 1 : item;
    }
    return 0;
}

void cli_list_free(cli_list *l)
{
    free(l->buffer);
    free(l->items);
    l->buffer = NULL;
    l->items = NULL;
    l->count = 0;
}

/* Strict "X,Y" with non-negative integers. */
static int parse_offset(const char *text, int *x0, int *y0)
{
    char *end;
    if (text[0] < '0' || text[0] > '9')
        return -1;
    long x = strtol(text, &end, 10);
    if (*end != ',' || end[1] < '0' || end[1] > '9')
        return -1;
    long y = strtol(end + 1, &end, 10);
    if (*end != '\0' || x > (1 << 20) || y > (1 << 20))
        return -1;
    *x0 = (int)x;
    *y0 = (int)y;
    return 0;
}

/* NAME=FILE, and for targets an optional ":X0,Y0" after FILE. A suffix after the last ':'
 * made only of digits, ',', '+' and '-' is an offset and must be valid; any other ':'
 * belongs to the file name. */
int cli_parse_named_file(const char *option, const char *text, int allow_offset, char **label,
                         char **file, int *x0, int *y0)
{
    const char *eq = strchr(text, '=');
    if (!eq || eq == text || eq[1] == '\0')
        return cli_usage_error("%s: '%s' is not NAME=FILE", option, text);
    const char *path = eq + 1, *end = path + strlen(path);
    *x0 = *y0 = 0;
    const char *colon = allow_offset ? strrchr(path, ':') : NULL;
    if (colon && colon[1] && strspn(colon + 1, "0123456789,+-") == strlen(colon + 1)) {
        if (parse_offset(colon + 1, x0, y0) != 0)
            return cli_usage_error("%s: '%s': the offset must be X0,Y0 (non-negative integers)",
                                   option, text);
        end = colon;
    }
    if (end == path)
        return cli_usage_error("%s: '%s' has no file name", option, text);
    *label = strndup(text, (size_t)(eq - text));
    *file = strndup(path, (size_t)(end - path));
    if (!*label || !*file)
        return cli_runtime_error("out of memory");
    return CLI_EXIT_OK;
}
