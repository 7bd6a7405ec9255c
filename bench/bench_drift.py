"""Throughput of keel.data.drift on synthetic tabular data: reference stats, compare, shared rows.

Usage: ``python bench/bench_drift.py [--rows N] [--cols C] [--repeat R]``. Prints the best of
R runs of each step, rows per second, the total, and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from keel.data.drift import DriftThresholds, compare, reference_stats, shared_rows


def make_data(rows: int, cols: int, seed: int) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Reference and current columns (float64, some NaN, a shifted third of the features,
    a few integer-valued ones) and their 2-D row arrays with 1% of rows planted as duplicates."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((rows, cols))
    cur = rng.standard_normal((rows, cols))
    cur[:, : cols // 3] += 0.5  # drift in a third of the features (PSI ~0.2: warn, far beyond noise)
    for j in range(0, cols, 5):  # integer-valued (discrete) columns
        ref[:, j] = np.round(ref[:, j] * 3)
        cur[:, j] = np.round(cur[:, j] * 3)
    ref[rng.random((rows, cols)) < 0.01] = np.nan
    cur[rng.random((rows, cols)) < 0.01] = np.nan
    n_dup = rows // 100
    cur[rng.choice(rows, n_dup, replace=False)] = ref[rng.choice(rows, n_dup, replace=False)]
    ref_cols = {f"f{j:02d}": ref[:, j] for j in range(cols)}
    cur_cols = {f"f{j:02d}": cur[:, j] for j in range(cols)}
    return ref_cols, cur_cols, ref, cur


def best_of(repeat: int, fn):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ref_cols, cur_cols, ref_rows, cur_rows = make_data(args.rows, args.cols, args.seed)
    kinds = {name: "numeric" for name in ref_cols}
    thresholds = DriftThresholds()

    t_stats, stats = best_of(args.repeat, lambda: reference_stats(ref_cols, kinds, bins=thresholds.bins))
    t_cmp, result = best_of(args.repeat, lambda: compare(stats, cur_cols, thresholds))
    t_rows, leak = best_of(args.repeat, lambda: shared_rows(ref_rows, cur_rows))

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} cpus | python {platform.python_version()} | numpy {np.__version__}")
    print(f"data: {args.rows:,} rows x {args.cols} numeric columns (float64), best of {args.repeat}")
    total = 0.0
    for step, seconds, rows in (
        ("reference_stats", t_stats, args.rows),
        ("compare", t_cmp, args.rows),
        ("shared_rows (ref + other)", t_rows, 2 * args.rows),
    ):
        total += seconds
        print(f"  {step:<26} {seconds:8.3f} s  {rows / seconds:>14,.0f} rows/s")
    print(f"  {'total':<26} {total:8.3f} s")
    s = result["summary"]
    print(f"check: status {result['status']}, {s['n_alert']} alert / {s['n_warn']} warn, "
          f"{s['n_significant']} beyond sampling noise (of {args.cols // 3} shifted), "
          f"max psi {s['max_psi']:.4f}; shared rows {leak['count']:,} (planted {args.rows // 100:,})")


if __name__ == "__main__":
    main()
