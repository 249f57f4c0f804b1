#!/usr/bin/env python3
"""The scaling model of docs/scaling.md: time per data-parallel training step on N nodes
from the compute time per step (measured), the gradient bytes per step and the small
batch-norm sums per step (counted by `isl train` under mpirun), and the network.

  gradients:  ring allreduce, 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency
  small sums: recursive doubling, calls * 2 ceil(log2 N) * (latency + bytes / bandwidth)

Flat (`isl train --bucket-mb 0`): the gradient sum starts after the backward pass, no
overlap. Buckets (`--bucket-mb 4`, the default): the sum of each bucket starts when the
backward pass has produced it, so it runs during the rest of the pass; what shows is
the part that does not fit in the backward pass (BACKWARD_SHARE of the compute) and at
least the last bucket's sum:

  exposed = max(t_grad - BACKWARD_SHARE * compute, t_grad * BUCKET_BYTES / GRAD_BYTES)

This assumes the network moves buckets while the cores compute (an RDMA network, or
MPI progress driven by the batch-norm sums that the backward pass makes every layer);
the small sums are latency-bound and stay on the critical path either way.

  bench/scaling_model.py [COMPUTE_S [GRAD_BYTES [CALLS [CALL_BYTES [BUCKET_BYTES]]]]]
"""
import math
import sys

compute = float(sys.argv[1]) if len(sys.argv) > 1 else 2.35       # s per step, per node
grad = float(sys.argv[2]) if len(sys.argv) > 2 else 34.69e6        # bytes per step
calls = int(sys.argv[3]) if len(sys.argv) > 3 else 422             # small sums per step
call_bytes = float(sys.argv[4]) if len(sys.argv) > 4 else 880      # bytes per small sum
bucket = float(sys.argv[5]) if len(sys.argv) > 5 else 4e6          # bytes per bucket
BACKWARD_SHARE = 0.6  # of a step's compute: 2/3 of the FLOPs (bench/bench_train.c), less loss etc.
networks = (("10 Gbit/s Ethernet (TCP), latency 25 us", 10e9 / 8, 25e-6),
            ("100 Gbit/s InfiniBand/RoCE, latency 2 us", 100e9 / 8, 2e-6))

print(f"compute {compute:.2f} s/step/node, gradients {grad / 1e6:.1f} MB, "
      f"{calls} small sums of {call_bytes:.0f} B")
for name, bandwidth, latency in networks:
    print(f"\n{name}")
    print("| nodes | gradients (ms) | exposed with buckets (ms) | small sums (ms) | "
          "step flat (s) | efficiency flat | step buckets (s) | efficiency buckets | "
          "speed-up buckets |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in (8, 16, 32, 64):
        t_grad = 2 * (n - 1) / n * grad / bandwidth + 2 * (n - 1) * latency
        t_exposed = max(t_grad - BACKWARD_SHARE * compute, t_grad * min(1, bucket / grad))
        t_small = calls * 2 * math.ceil(math.log2(n)) * (latency + call_bytes / bandwidth)
        flat = compute + t_grad + t_small
        buckets = compute + t_exposed + t_small
        print(f"| {n} | {1e3 * t_grad:.1f} | {1e3 * t_exposed:.1f} | {1e3 * t_small:.1f} | "
              f"{flat:.3f} | {100 * compute / flat:.1f}% | {buckets:.3f} | "
              f"{100 * compute / buckets:.1f}% | {n * compute / buckets:.1f} |")
