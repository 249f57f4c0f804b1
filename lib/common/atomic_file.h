/* Writing a file atomically: a temporary file beside the target (same file system), with
 * the mode the target would get, synced, then renamed over it. The one implementation of
 * the library (lib/io/h5_io.c) and the command-line program (tools/tiff_io.c), which
 * compiles this file into its own TIFF module. Failures return -1 with errno set; the
 * caller words the message (it knows what it was writing). */
#ifndef ISL_ATOMIC_FILE_H
#define ISL_ATOMIC_FILE_H

#include <stddef.h>

typedef struct isl_atomic_file {
    char *tmp; /* path of the temporary file (NULL once renamed or removed) */
    int fd;    /* open descriptor of it, -1 once closed */
} isl_atomic_file;

/* Creates path.tmp.XXXXXX with the mode of the file it will replace, or the mode a plain
 * create would give (0666 & ~umask). On failure f->tmp is NULL and f->fd -1. First removes
 * the stale temporary files of the same path a killed writer left: regular files of this
 * user named path.tmp.XXXXXX, unmodified for ISL_ATOMIC_STALE_SECONDS. */
#define ISL_ATOMIC_STALE_SECONDS (15 * 60)
int isl_atomic_open(isl_atomic_file *f, const char *path);

/* Writes all of data to f->fd (retrying short writes and EINTR). */
int isl_atomic_write_all(isl_atomic_file *f, const void *data, size_t size);

/* Syncs and closes the temporary file, then renames it over path. *step names what
 * failed ("sync", "close", "rename"); the temporary file is left for isl_atomic_discard. */
int isl_atomic_commit(isl_atomic_file *f, const char *path, const char **step);

/* Closes and removes the temporary file unless it was renamed; frees f->tmp. */
void isl_atomic_discard(isl_atomic_file *f);

/* Syncs the directory of path so that a rename survives a crash. File systems that
 * cannot sync directories (EINVAL) count as success. */
int isl_atomic_sync_dir(const char *path);

#endif
