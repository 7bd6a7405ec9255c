"""Scaling of `python train.py`: one process vs DDP on 2 CPU processes, and wall time vs dataset size.

Usage: ``python bench/bench_scaling.py [--sizes 10000,100000,1000000] [--ddp-rows N] [--epochs E]
[--repeat R] [--quick]``.

Every figure comes from whole ``python train.py`` processes (subprocesses of this script) on
synthetic tables (``bench_train.write_table``) written as Parquet files to a temporary directory
that is deleted at the end: ``data=csv data.target=label model=mlp callbacks=training
logger=csv trainer.accelerator=cpu`` (training callbacks without export; the CSV logger keeps
the ``perf/*`` figures of keel's throughput callback in ``<run>/csv/metrics.csv``),
``trainer.max_epochs=E`` (default 2: the first epoch warms up, the second is timed), early
stopping off.

1. ``trainer.devices=1`` vs ``trainer.devices=2`` (Lightning's DDP, gloo, two processes that
   share this machine's cores; keel picks each process's thread count) on the same table of
   ``--ddp-rows`` rows, R runs each, alternating. ``samples/s`` is ``train/samples_per_s``
   (training rows of the whole job per second, validation excluded) of the median epoch after
   the first, median over the runs; ``wall s`` is the whole command (start-up, setup, training,
   validation, test); ``run s`` is the run's own ``wall_time_s`` (metrics.json).
2. Wall time vs rows: ``trainer.devices=1`` on tables of each ``--sizes`` row count, R runs
   each in rounds that alternate the order (the size of part [1] reuses its devices=1 runs);
   medians. Training should grow linearly with rows: ``epoch s/row`` (train epoch time per
   training row) divided by that of the smallest table stays near 1. The whole command adds
   fixed costs (interpreter, imports, setup, test, each epoch's start) that the larger tables
   amortize: ``wall/row vs first`` falls below 1, and ``marginal s/1k rows`` (wall added per
   1,000 more rows, between consecutive sizes) stays about constant when the growth is linear.

Each process uses keel's thread choice (2 threads for one process here, 1 for each of 2). On a
2-core machine shared with other work, a 2-thread process can stall for whole scheduler slices:
one such run shows up as a collapsed samples/s; the medians over R runs absorb one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_train import write_table  # the same synthetic table (this directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"sizes": (2_000, 6_000), "ddp_rows": 2_000, "epochs": 2, "repeat": 1}
TIMEOUT_S = 900


def machine() -> str:
    import lightning
    import torch

    return (
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cpus | "
        f"python {platform.python_version()} | torch {torch.__version__} | lightning {lightning.__version__} | "
        f"torch threads {torch.get_num_threads()} (a single process's default)"
    )


@dataclass
class Run:
    rows: int
    wall_s: float  # the whole command
    run_s: float  # metrics.json wall_time_s: train() from config check to the record
    samples_per_s: float  # median epoch after the first
    train_rows: int
    world_size: int


def train(table: Path, rows: int, devices: int, epochs: int, run_dir: Path) -> Run:
    """One ``python train.py`` process (plus its DDP child); its figures from the run directory."""
    cmd = [
        sys.executable, "train.py", "data=csv", f"data.path={table}", "data.target=label", "model=mlp",
        "callbacks=training", "~callbacks.early_stopping", "logger=csv", "trainer.accelerator=cpu",
        f"trainer.devices={devices}",
        f"trainer.max_epochs={epochs}", f"run_dir={run_dir}", f"paths.log_dir={run_dir.parent}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bench: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    record = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rates = [float(r["train/samples_per_s"]) for r in csv.DictReader(f) if r.get("train/samples_per_s")]
    if len(rates) != epochs:
        raise RuntimeError(f"bench: {run_dir}/csv/metrics.csv holds {len(rates)} train/samples_per_s rows for "
                           f"{epochs} epochs")
    steady = rates[1:] or rates
    return Run(rows, wall, float(record["wall_time_s"]), statistics.median(steady),
               int(record["split_sizes"]["train"]), int(record["world_size"]))


def bench_devices(root: Path, rows: int, epochs: int, repeat: int) -> dict[int, list[Run]]:
    table = write_table(root / f"ddp_{rows}.parquet", rows)
    runs: dict[int, list[Run]] = {1: [], 2: []}
    for i in range(repeat):
        for devices in ((1, 2) if i % 2 == 0 else (2, 1)):  # alternate which goes first
            runs[devices].append(train(table, rows, devices, epochs, root / f"ddp_d{devices}_r{i}"))
    return runs


def report_devices(runs: dict[int, list[Run]], rows: int, epochs: int, repeat: int) -> float:
    one = runs[1][0]
    print(f"\n[1] trainer.devices=1 vs 2 (DDP, gloo, CPU): {rows:,} rows ({one.train_rows:,} train), {epochs} epochs, "
          f"median of {repeat} run(s) each, alternating")
    print(f"  {'devices':>7} {'world':>5} {'samples/s':>10} {'x devices=1':>11} {'wall s':>7} {'run s':>7} "
          f"{'start-up s':>10}")
    base = statistics.median(r.samples_per_s for r in runs[1])
    for devices, rs in runs.items():
        sps = statistics.median(r.samples_per_s for r in rs)
        wall = statistics.median(r.wall_s for r in rs)
        run = statistics.median(r.run_s for r in rs)
        print(f"  {devices:>7} {rs[0].world_size:>5} {sps:>10,.0f} {sps / base:>11.2f} {wall:>7.1f} {run:>7.1f} "
              f"{wall - run:>10.1f}")
    print(f"  samples/s: train/samples_per_s of the median epoch after the first (the whole job, validation "
          f"excluded); start-up s: wall s - run s (interpreter, imports, Hydra composition; devices=2 also starts "
          f"its child process inside run s). Threads per process: keel's choice ({os.cpu_count()} cores / devices)")
    return statistics.median(r.samples_per_s for r in runs[2]) / base


def bench_sizes(root: Path, sizes: list[int], epochs: int, repeat: int, done: list[Run]) -> dict[int, list[Run]]:
    """``repeat`` devices=1 runs per size, in rounds that alternate the order of the sizes; the
    devices=1 runs of part [1] (``done``) count for their size."""
    runs = {rows: [r for r in done if r.rows == rows] for rows in sizes}
    tables: dict[int, Path] = {}
    for i in range(repeat):
        for rows in (sizes if i % 2 == 0 else sizes[::-1]):
            if len(runs[rows]) > i:
                continue
            if rows not in tables:
                tables[rows] = write_table(root / f"size_{rows}.parquet", rows)
            runs[rows].append(train(tables[rows], rows, 1, epochs, root / f"size_{rows}_r{i}"))
    return runs


def report_sizes(runs: dict[int, list[Run]], epochs: int, repeat: int) -> list[float]:
    print(f"\n[2] wall time vs rows: trainer.devices=1, {epochs} epochs, median of {repeat} run(s) per size (the "
          f"size of part [1] reuses its devices=1 runs)")
    print(f"  {'rows':>10} {'train rows':>10} {'wall s':>8} {'run s':>8} {'epoch s':>8} {'samples/s':>10} "
          f"{'epoch s/row vs first':>20} {'wall/row vs first':>17} {'marginal s/1k rows':>18}")
    rows_sizes = sorted(runs)
    wall = {n: statistics.median(r.wall_s for r in runs[n]) for n in rows_sizes}
    sps = {n: statistics.median(r.samples_per_s for r in runs[n]) for n in rows_sizes}
    first = rows_sizes[0]
    ratios = []
    for i, n in enumerate(rows_sizes):
        train_rows = runs[n][0].train_rows
        epoch = train_rows / sps[n]
        per_row = sps[first] / sps[n]  # (epoch / train row) relative to the first size's
        ratios.append(per_row)
        wall_ratio = (wall[n] / n) / (wall[first] / first)
        marginal = "" if i == 0 else f"{(wall[n] - wall[rows_sizes[i - 1]]) / (n - rows_sizes[i - 1]) * 1e3:.3f}"
        run = statistics.median(r.run_s for r in runs[n])
        print(f"  {n:>10,} {train_rows:>10,} {wall[n]:>8.1f} {run:>8.1f} {epoch:>8.2f} {sps[n]:>10,.0f} "
              f"{per_row:>20.2f} {wall_ratio:>17.3f} {marginal:>18}")
    print("  epoch s: train rows / samples/s (median epoch after the first, validation excluded); linear growth keeps "
          "'epoch s/row vs first' near 1")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated row counts (part [2])")
    parser.add_argument("--ddp-rows", type=int, default=100_000, help="rows of the devices=1 vs 2 table (part [1])")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every run (the first is not timed)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each devices setting and of each size")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: sizes {','.join(map(str, QUICK['sizes']))}, {QUICK['ddp_rows']:,} DDP rows, "
                             f"{QUICK['epochs']} epochs, 1 run")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes={args.sizes!r}: expected comma-separated integers, e.g. 10000,100000")
    if args.quick:
        sizes, args.ddp_rows, args.epochs, args.repeat = list(QUICK["sizes"]), QUICK["ddp_rows"], QUICK["epochs"], 1
    if not sizes or min(sizes) < 500 or args.ddp_rows < 500 or args.epochs < 2 or args.repeat < 1:
        parser.error("expected sizes and --ddp-rows >= 500 (every split needs rows), --epochs >= 2, --repeat >= 1")
    if (os.cpu_count() or 1) < 2:
        parser.error("trainer.devices=2 needs at least 2 CPU cores")

    print(machine())
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keel-bench-scaling-") as tmp:
        root = Path(tmp)
        ddp = bench_devices(root, args.ddp_rows, args.epochs, args.repeat)
        speedup = report_devices(ddp, args.ddp_rows, args.epochs, args.repeat)
        ratios = report_sizes(bench_sizes(root, sorted(sizes), args.epochs, args.repeat, ddp[1]), args.epochs,
                              args.repeat)
    print("\nheadline:")
    print(f"  devices=2 / devices=1 samples/s: {speedup:.2f} on {os.cpu_count()} cpus")
    print("  epoch time per row vs the smallest table: " + ", ".join(f"{s:,} rows {r:.2f}" for s, r in
                                                                      zip(sorted(sizes), ratios)))
    print(f"  total bench time {time.perf_counter() - started:.0f} s; load average (1 min) {load_start:.2f} at the "
          f"start, {os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
