#!/usr/bin/python3
"""Prints the comparator network of lib/preprocess/median.c: the median of 25 values.

Batcher's odd-even merge sort on 32 wires, restricted to 25 (wires 25..31 would hold
+infinity, so every comparator touching them is a no-op), pruned backwards to the
comparators that reach output 12 (the median); a comparator of which only one output is
needed keeps only its min (1) or max (2), 0 keeps both. Then checks the network on all
2^25 inputs of zeros and ones (by the 0-1 principle, it then selects the median of any 25
values) and prints the C table.

    scripts/gen-median-network.py
"""
import numpy as np

N, MEDIAN = 25, 12


def merge(lo, hi, r):
    step = r * 2
    if step < hi - lo:
        yield from merge(lo, hi, step)
        yield from merge(lo + r, hi, step)
        yield from ((i, i + r) for i in range(lo + r, hi - r, step))
    else:
        yield (lo, lo + r)


def sort(lo, hi):
    if hi - lo >= 1:
        mid = lo + (hi - lo) // 2
        yield from sort(lo, mid)
        yield from sort(mid + 1, hi)
        yield from merge(lo, hi, 1)


def network():
    need, kept = {MEDIAN}, []
    for i, j in reversed([(i, j) for i, j in sort(0, 31) if j < N]):
        if i in need or j in need:
            kept.append((i, j, 0 if i in need and j in need else 1 if i in need else 2))
            need |= {i, j}
    return kept[::-1]


def check(net):
    """All 2^25 zero-one inputs, 64 per machine word."""
    patterns = np.arange(1 << N, dtype=np.uint32)
    wires = [np.packbits(((patterns >> w) & 1).astype(np.uint8)).view(np.uint64)
             for w in range(N)]
    for i, j, kind in net:
        a, b = wires[i], wires[j]
        if kind != 2:
            wires[i] = a & b
        if kind != 1:
            wires[j] = a | b
    ones = sum(((patterns >> w) & 1).astype(np.uint8) for w in range(N))
    want = np.packbits((ones > MEDIAN).astype(np.uint8)).view(np.uint64)
    assert np.array_equal(wires[MEDIAN], want), "the network does not select the median"


def main():
    net = network()
    check(net)
    items = ["{%d, %d, %d}" % c for c in net]
    lines, line = [], "   "
    for it in items:
        if len(line) + len(it) + 2 > 96:
            lines.append(line.rstrip())
            line = "   "
        line += " " + it + ","
    lines.append(line.rstrip())
    print(f"/* {len(net)} comparators, checked on all 2^25 zero-one inputs */")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
