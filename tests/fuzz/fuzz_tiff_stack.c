/* libFuzzer harness: the TIFF stack reader (tools/tiff_io.c, isl_tiff_read_stack) on
 * arbitrary bytes. The reader takes a path; the bytes go to an in-memory file (memfd)
 * opened through /proc/self/fd, so no disk I/O per input and the reader's own open,
 * stat and header checks run unchanged. */
#define _GNU_SOURCE
#include "tiff_io.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz-tiff", MFD_CLOEXEC);
        if (fd < 0) {
            perror("fuzz_tiff_stack: memfd_create");
            abort();
        }
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size > 0 && pwrite(fd, data, size, 0) != (ssize_t)size)) {
        perror("fuzz_tiff_stack: writing the memfd");
        abort();
    }
    isl_tiff_stack stack;
    if (isl_tiff_read_stack(path, 0, &stack) == ISL_OK) {
        /* Touch every sample: a stack that claims more than was filled shows up here. */
        size_t n = (size_t)stack.num_z * stack.height * stack.width;
        volatile double sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += isl_tiff_stack_scaled(&stack, i);
        (void)sum;
        isl_tiff_stack_free(&stack);
    }
    return 0;
}
