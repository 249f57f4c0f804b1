/* Regression replay of a fuzz harness, built in every build (any compiler, no libFuzzer):
 * feeds each file named on the command line, or each file in each directory named, to the
 * harness's LLVMFuzzerTestOneInput (zstd's tests/fuzz/regression_driver.c does the same).
 * A crash, sanitizer report or abort fails the test; so does a missing path, or an empty
 * directory right after --nonempty (the seed corpus must not vanish unnoticed). Names
 * starting with '.' (such as .gitkeep) and README files are skipped. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads path into an exact-size buffer (so that ASan sees reads past the input's end)
 * and runs the harness on it. */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    uint8_t *data = size >= 0 ? malloc(size ? (size_t)size : 1) : NULL;
    int ok = data && fseek(f, 0, SEEK_SET) == 0 && fread(data, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    if (!ok) {
        fprintf(stderr, "replay: %s: cannot read\n", path);
        free(data);
        return -1;
    }
    LLVMFuzzerTestOneInput(data, (size_t)size);
    free(data);
    return 0;
}

static int skipped(const char *name)
{
    return name[0] == '.' || strncmp(name, "README", 6) == 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Replays path (a file, or the files of a directory); returns the count or -1. */
static long replay_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return replay_file(path) == 0 ? 1 : -1;
    struct dirent **names;
    int n = scandir(path, &names, NULL, by_name);
    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    long count = 0;
    for (int i = 0; i < n; i++) {
        char file[4096];
        if (count >= 0 && !skipped(names[i]->d_name) &&
            snprintf(file, sizeof(file), "%s/%s", path, names[i]->d_name) < (int)sizeof(file))
            count = replay_file(file) == 0 ? count + 1 : -1;
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv)
{
    int nonempty = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--nonempty") == 0) {
            nonempty = 1;
            continue;
        }
        long n = replay_path(argv[i]);
        if (n < 0)
            return EXIT_FAILURE;
        printf("replay: %ld input%s from %s\n", n, n == 1 ? "" : "s", argv[i]);
        if (n == 0 && nonempty) {
            fprintf(stderr, "replay: %s: no inputs\n", argv[i]);
            return EXIT_FAILURE;
        }
        nonempty = 0;
    }
    return EXIT_SUCCESS;
}
