/* File-system helpers: mkdir -p (undoable), path joining, file sizes. */
#include "cli.h"

#include "atomic_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int record_dir(cli_dirs *created, const char *path)
{
    char **grown = realloc(created->paths, sizeof(char *) * (size_t)(created->count + 1));
    if (!grown)
        return -1;
    created->paths = grown;
    if (!(created->paths[created->count] = strdup(path)))
        return -1;
    created->count++;
    return 0;
}

/* Makes one directory level; EEXIST is fine if it is a directory. */
static int make_one(const char *path, cli_dirs *created)
{
    if (mkdir(path, 0777) == 0) {
        if (record_dir(created, path) != 0) {
            rmdir(path);
            return cli_runtime_error("out of memory");
        }
        return 0;
    }
    int err = errno;
    struct stat st;
    if (err == EEXIST && stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return 0;
        return cli_runtime_error("%s exists and is not a directory", path);
    }
    return cli_runtime_error("cannot create directory %s: %s", path, strerror(err));
}

int cli_mkdir_p(const char *path, cli_dirs *created)
{
    created->paths = NULL;
    created->count = 0;
    if (!path[0])
        return cli_runtime_error("the output directory name is empty");
    char *copy = strdup(path);
    if (!copy)
        return cli_runtime_error("out of memory");
    int rc = 0;
    /* Each prefix ending before a '/' (skipping the root's), then the whole path. */
    for (char *p = copy + 1; rc == 0 && *p; p++) {
        if (*p != '/' || p[-1] == '/')
            continue;
        *p = '\0';
        rc = make_one(copy, created);
        *p = '/';
    }
    if (rc == 0)
        rc = make_one(copy, created);
    free(copy);
    if (rc != 0)
        cli_remove_created_dirs(created);
    return rc;
}

void cli_remove_created_dirs(cli_dirs *created)
{
    for (int i = created->count - 1; i >= 0; i--)
        (void)rmdir(created->paths[i]); /* fails harmlessly if not empty */
    cli_dirs_free(created);
}

void cli_dirs_free(cli_dirs *created)
{
    for (int i = 0; i < created->count; i++)
        free(created->paths[i]);
    free(created->paths);
    created->paths = NULL;
    created->count = 0;
}

char *cli_path_join(const char *dir, const char *name)
{
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    int slash = !(dlen == 1 && dir[0] == '/');
    size_t nlen = strlen(name);
    char *out = malloc(dlen + (size_t)slash + nlen + 1);
    if (!out)
        return NULL;
    memcpy(out, dir, dlen);
    if (slash)
        out[dlen] = '/';
    memcpy(out + dlen + slash, name, nlen + 1);
    return out;
}

int64_t cli_file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    return (int64_t)st.st_size;
}

int cli_write_file_atomic_quiet(const char *path, const void *data, size_t size, char *error,
                                size_t error_size)
{
    isl_atomic_file f;
    const char *step = "write";
    if (isl_atomic_open(&f, path) != 0) {
        snprintf(error, error_size, "%s: cannot create a temporary file beside it: %s", path,
                 strerror(errno));
        return -1;
    }
    if (isl_atomic_write_all(&f, data, size) != 0 || isl_atomic_commit(&f, path, &step) != 0) {
        snprintf(error, error_size, "%s: cannot %s %s: %s", path, step, f.tmp, strerror(errno));
        isl_atomic_discard(&f);
        return -1;
    }
    if (isl_atomic_sync_dir(path) != 0) {
        snprintf(error, error_size, "%s: written, but syncing its directory failed: %s", path,
                 strerror(errno));
        return -1;
    }
    return 0;
}

int cli_write_file_atomic(const char *path, const void *data, size_t size)
{
    char error[1024];
    if (cli_write_file_atomic_quiet(path, data, size, error, sizeof(error)) != 0)
        return cli_runtime_error("%s", error);
    return 0;
}
