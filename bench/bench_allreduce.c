/* The communication of one data-parallel training step alone (docs/scaling.md): one sum of
 * the gradients (FLOATS float32) and SMALL sums of a few per-channel doubles (the batch
 * norms' and the step's bookkeeping), as isl_train_step calls the allreduce hook, timed
 * over REPEAT steps with blocking MPI_Allreduce on MPI_COMM_WORLD; then the gradients
 * again in buckets of BUCKET_MB as `isl train --bucket-mb` sends them: one
 * MPI_Iallreduce per bucket (testing the earlier ones at each start), all waited for at
 * the end. Without compute between the starts this is the buckets' overhead, not their
 * overlap with the backward pass.
 *
 *   mpirun -np N build/bench/bench_allreduce [FLOATS [SMALL [DOUBLES [REPEAT [BUCKET_MB]]]]]
 *
 * Defaults: 8,673,464 floats (the paper's network, 3 labels), 424 small sums of 512
 * doubles, 10 steps, buckets of 4 MB. Prints rank 0's mean milliseconds per step for each part. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static long arg(int argc, char **argv, int i, long fallback)
{
    return argc > i ? strtol(argv[i], NULL, 10) : fallback;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const long floats = arg(argc, argv, 1, 8673464), small = arg(argc, argv, 2, 424);
    const long doubles = arg(argc, argv, 3, 512), repeat = arg(argc, argv, 4, 10);
    float *g = calloc((size_t)floats, sizeof(float));
    double *d = calloc((size_t)doubles, sizeof(double));
    if (!g || !d || floats > 1L << 30 || doubles > 1L << 20) {
        fprintf(stderr, "bench_allreduce: bad sizes or out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const double bucket_mb = argc > 5 ? strtod(argv[5], NULL) : 4.0;
    const long per_bucket = bucket_mb > 0 ? (long)(bucket_mb * 1e6 / 4) : floats;
    const long buckets = (floats + per_bucket - 1) / per_bucket;
    MPI_Request *req = calloc((size_t)buckets + 1, sizeof(MPI_Request));
    if (!req || per_bucket < 1 || per_bucket > 1L << 30)
        MPI_Abort(MPI_COMM_WORLD, 2);
    double t_grad = 0, t_small = 0, t_buckets = 0;
    for (long r = -1; r < repeat; r++) { /* r = -1: warm-up */
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (long k = 0; k < small; k++)
            MPI_Allreduce(MPI_IN_PLACE, d, (int)doubles, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        double t1 = MPI_Wtime();
        MPI_Allreduce(MPI_IN_PLACE, g, (int)floats, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double t2 = MPI_Wtime();
        MPI_Barrier(MPI_COMM_WORLD);
        double t3 = MPI_Wtime();
        for (long b = 0; b < buckets; b++) {
            int flag;
            if (b > 0)
                MPI_Testall((int)b, req, &flag, MPI_STATUSES_IGNORE);
            long first = b * per_bucket, n = floats - first < per_bucket ? floats - first
                                                                         : per_bucket;
            MPI_Iallreduce(MPI_IN_PLACE, g + first, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                           &req[b]);
        }
        MPI_Waitall((int)buckets, req, MPI_STATUSES_IGNORE);
        double t4 = MPI_Wtime();
        if (r >= 0) {
            t_small += t1 - t0;
            t_grad += t2 - t1;
            t_buckets += t4 - t3;
        }
    }
    if (rank == 0)
        printf("ranks %d: gradients %.1f MB: %.2f ms/step; %ld sums of %ld doubles: %.2f ms/step "
               "(%.1f us each)\n",
               size, floats * 4.0 / 1e6, 1e3 * t_grad / repeat, small, doubles,
               1e3 * t_small / repeat, 1e6 * t_small / repeat / (small ? small : 1));
    if (rank == 0)
        printf("ranks %d: gradients in %ld buckets of %.2f MB (MPI_Iallreduce, then wait): "
               "%.2f ms/step\n", size, buckets, per_bucket * 4.0 / 1e6,
               1e3 * t_buckets / repeat);
    free(req);
    free(g);
    free(d);
    MPI_Finalize();
    return 0;
}
