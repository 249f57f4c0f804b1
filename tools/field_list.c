/* --input-list of `isl predict`: a text file of input stacks, one path a line, and the
 * name of each field's output directory (the file name without its TIFF extension). */
#include "cli.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void cli_field_list_free(cli_field_list *l)
{
    for (int i = 0; i < l->count; i++) {
        free(l->paths[i]);
        free(l->names[i]);
    }
    free(l->paths);
    free(l->names);
    memset(l, 0, sizeof(*l));
}

/* STACK for .../STACK.tif, .tiff, .ome.tif or .ome.tiff (else the whole file name). */
static char *field_name(const char *path)
{
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    size_t n = strlen(base);
    static const char *tails[] = {".ome.tiff", ".ome.tif", ".tiff", ".tif"};
    for (size_t k = 0; k < sizeof(tails) / sizeof(tails[0]); k++) {
        size_t t = strlen(tails[k]);
        if (n > t && !strcasecmp(base + n - t, tails[k])) {
            n -= t;
            break;
        }
    }
    char *name = malloc(n + 1);
    if (name) {
        memcpy(name, base, n);
        name[n] = '\0';
    }
    return name;
}

static int add(cli_field_list *l, const char *path)
{
    if (l->count % 64 == 0) {
        char **p = realloc(l->paths, sizeof(char *) * (size_t)(l->count + 64));
        if (p)
            l->paths = p;
        char **n = realloc(l->names, sizeof(char *) * (size_t)(l->count + 64));
        if (n)
            l->names = n;
        if (!p || !n)
            return -1;
    }
    l->paths[l->count] = strdup(path);
    l->names[l->count] = field_name(path);
    l->count++;
    return l->paths[l->count - 1] && l->names[l->count - 1] ? 0 : -1;
}

int cli_field_list_read(const char *path, cli_field_list *l)
{
    memset(l, 0, sizeof(*l));
    FILE *f = fopen(path, "r");
    if (!f)
        return cli_runtime_error("--input-list: cannot open %s", path);
    char line[8192];
    int number = 0, rc = CLI_EXIT_OK;
    while (rc == CLI_EXIT_OK && fgets(line, sizeof(line), f)) {
        number++;
        size_t n = strlen(line);
        if (n == sizeof(line) - 1 && line[n - 1] != '\n')
            rc = cli_usage_error("--input-list: %s:%d: line too long", path, number);
        while (n > 0 && isspace((unsigned char)line[n - 1]))
            line[--n] = '\0';
        char *start = line;
        while (isspace((unsigned char)*start))
            start++;
        if (rc != CLI_EXIT_OK || *start == '\0' || *start == '#')
            continue;
        if (add(l, start) != 0)
            rc = cli_runtime_error("out of memory");
        const char *name = rc == CLI_EXIT_OK ? l->names[l->count - 1] : "x";
        if (rc == CLI_EXIT_OK && (!name[0] || !strcmp(name, ".") || !strcmp(name, "..")))
            rc = cli_usage_error("--input-list: %s:%d: '%s' names no file", path, number, start);
        for (int i = 0; rc == CLI_EXIT_OK && i < l->count - 1; i++)
            if (!strcmp(l->names[i], name))
                rc = cli_usage_error("--input-list: %s:%d: %s and %s would both write to "
                                     "DIR/%s/", path, number, l->paths[i], start, name);
    }
    if (rc == CLI_EXIT_OK && ferror(f))
        rc = cli_runtime_error("--input-list: cannot read %s", path);
    fclose(f);
    if (rc == CLI_EXIT_OK && l->count == 0)
        rc = cli_usage_error("--input-list: %s lists no input", path);
    if (rc != CLI_EXIT_OK)
        cli_field_list_free(l);
    return rc;
}
