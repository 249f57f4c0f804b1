#!/usr/bin/env python3
"""The scaling model of docs/scaling.md: time per data-parallel training step on N nodes
from the compute time per step (measured), the gradient bytes per step and the small
batch-norm sums per step (counted by `isl train` under mpirun), and the network.

  gradients:  ring allreduce, 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency
  small sums: recursive doubling, calls * 2 ceil(log2 N) * (latency + bytes / bandwidth)

No overlap of communication with computation is assumed (isl does not overlap).

  bench/scaling_model.py [COMPUTE_S [GRAD_BYTES [CALLS [CALL_BYTES]]]]
"""
import math
import sys

compute = float(sys.argv[1]) if len(sys.argv) > 1 else 2.35       # s per step, per node
grad = float(sys.argv[2]) if len(sys.argv) > 2 else 34.69e6        # bytes per step
calls = int(sys.argv[3]) if len(sys.argv) > 3 else 422             # small sums per step
call_bytes = float(sys.argv[4]) if len(sys.argv) > 4 else 880      # bytes per small sum
networks = (("10 Gbit/s Ethernet (TCP), latency 25 us", 10e9 / 8, 25e-6),
            ("100 Gbit/s InfiniBand/RoCE, latency 2 us", 100e9 / 8, 2e-6))

print(f"compute {compute:.2f} s/step/node, gradients {grad / 1e6:.1f} MB, "
      f"{calls} small sums of {call_bytes:.0f} B")
for name, bandwidth, latency in networks:
    print(f"\n{name}")
    print("| nodes | gradients (ms) | small sums (ms) | step (s) | efficiency | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (8, 16, 32, 64):
        t_grad = 2 * (n - 1) / n * grad / bandwidth + 2 * (n - 1) * latency
        t_small = calls * 2 * math.ceil(math.log2(n)) * (latency + call_bytes / bandwidth)
        step = compute + t_grad + t_small
        eff = compute / step
        print(f"| {n} | {1e3 * t_grad:.1f} | {1e3 * t_small:.1f} | {step:.3f} | "
              f"{100 * eff:.1f}% | {n * eff:.1f} |")
