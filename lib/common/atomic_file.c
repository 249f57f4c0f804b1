#define _GNU_SOURCE /* mkostemp */

#include "atomic_file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* mkstemp creates mode 0600; give the file what a plain create would (0666 & ~umask), or
 * the mode of the file it replaces. The umask is read from /proc, because umask() can
 * only be read by changing it, which races with other threads. */
static mode_t target_mode(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode))
        return sb.st_mode & 07777;
    mode_t mode = 0644;
    FILE *f = fopen("/proc/self/status", "re");
    if (!f)
        return mode;
    char line[128];
    unsigned mask;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "Umask: %o", &mask) == 1) {
            mode = 0666 & ~(mode_t)mask;
            break;
        }
    fclose(f);
    return mode;
}

/* 1 if name is base + ".tmp." + the six characters mkstemp puts in (glibc: A-Z a-z 0-9). */
static int is_temp_of(const char *name, const char *base, size_t base_len)
{
    static const char middle[] = ".tmp.";
    if (strncmp(name, base, base_len) != 0 || strncmp(name + base_len, middle, 5) != 0)
        return 0;
    const char *x = name + base_len + 5;
    for (int i = 0; i < 6; i++)
        if (!((x[i] >= 'A' && x[i] <= 'Z') || (x[i] >= 'a' && x[i] <= 'z') ||
              (x[i] >= '0' && x[i] <= '9')))
            return 0;
    return x[6] == '\0';
}

/* Removes the temporary files that writers killed before their rename (SIGKILL, power
 * loss) left beside path: regular files of this user named path.tmp.XXXXXX and not
 * modified for ISL_ATOMIC_STALE_SECONDS. A live writer's file is younger: it is created
 * and written in one go (its mtime moves with every write), then synced and renamed.
 * Best effort: a failure here never fails the write. */
static void remove_stale_temps(const char *path)
{
    char dir[PATH_MAX] = ".";
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    if (slash) { /* "/name" lives in "/" */
        size_t dir_len = slash == path ? 1 : (size_t)(slash - path);
        if (dir_len >= sizeof(dir))
            return;
        memcpy(dir, path, dir_len);
        dir[dir_len] = '\0';
    }
    if (!*base)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    size_t base_len = strlen(base);
    time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat sb;
        if (is_temp_of(e->d_name, base, base_len) &&
            fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISREG(sb.st_mode) && sb.st_uid == geteuid() &&
            now - sb.st_mtime > ISL_ATOMIC_STALE_SECONDS)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

int isl_atomic_open(isl_atomic_file *f, const char *path)
{
    static const char suffix[] = ".tmp.XXXXXX";
    size_t len = strlen(path);
    f->fd = -1;
    f->tmp = malloc(len + sizeof(suffix));
    if (!f->tmp) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(f->tmp, path, len);
    memcpy(f->tmp + len, suffix, sizeof(suffix));
    mode_t mode = target_mode(path);
    remove_stale_temps(path);
    f->fd = mkostemp(f->tmp, O_CLOEXEC);
    if (f->fd >= 0 && fchmod(f->fd, mode) == 0)
        return 0;
    int saved = errno;
    isl_atomic_discard(f);
    errno = saved;
    return -1;
}

int isl_atomic_write_all(isl_atomic_file *f, const void *data, size_t size)
{
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(f->fd, p, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return -1;
        }
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

int isl_atomic_commit(isl_atomic_file *f, const char *path, const char **step)
{
    if (fsync(f->fd) != 0) {
        *step = "sync";
        return -1;
    }
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0) {
        *step = "close";
        return -1;
    }
    if (rename(f->tmp, path) != 0) {
        *step = "rename";
        return -1;
    }
    free(f->tmp); /* renamed: nothing left to remove */
    f->tmp = NULL;
    return 0;
}

void isl_atomic_discard(isl_atomic_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (f->tmp)
        unlink(f->tmp);
    free(f->tmp);
    f->tmp = NULL;
}

int isl_atomic_sync_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return -1;
    char *slash = strrchr(dir, '/');
    const char *name = dir;
    if (!slash)
        name = ".";
    else if (slash == dir)
        name = "/";
    else
        *slash = '\0';
    int fd = open(name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = fd < 0 ? -1 : fsync(fd);
    if (rc != 0 && errno == EINVAL)
        rc = 0;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    free(dir);
    errno = saved;
    return rc;
}
