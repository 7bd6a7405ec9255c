"""Streamed tables vs the in-memory path: peak RSS and rows/s for one epoch, by table size.

    python bench/bench_streaming.py                  # 1M, 4M, 16M rows x 20 columns (minutes)
    python bench/bench_streaming.py --rows 1000000   # one size

Each (size, path) is measured in a fresh subprocess (peak RSS is the child's ru_maxrss): data
module setup (contract check, statistics, drift) and one training epoch of batches, no model.
The in-memory path runs where it fits (--max-memory-rows, default 4M). Targets (issue 20): peak
RSS at 16M rows within 1.2x of 1M rows; epoch throughput within 0.8x of in-memory at 1M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FEATURES = 19  # + the label: 20 columns
GROUP = 65_536


def make_file(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    w = rng.normal(size=FEATURES)
    schema = pa.schema([(f"x{i}", pa.float64()) for i in range(FEATURES)] + [("y", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, GROUP):
            n = min(GROUP, rows - start)
            x = rng.normal(size=(n, FEATURES))
            y = (x @ w + rng.normal(size=n) > 0).astype(np.int64)
            cols = {f"x{i}": x[:, i] for i in range(FEATURES)}
            writer.write_table(pa.table({**cols, "y": y}, schema=schema), row_group_size=GROUP)


CONTRACT = {"kind": "table", "name": "bench", "target": "y", "classes": [0, 1],
            "columns": {f"x{i}": {"dtype": "float64", "nullable": False, "min": -100.0, "max": 100.0}
                        for i in range(FEATURES)}}


def child(path: str, streaming: bool, batch_size: int, workers: int, cache: str) -> dict:
    import resource

    from keel.data import TableDataModule

    t0 = time.perf_counter()
    dm = TableDataModule(path=path, target="y", contract=CONTRACT, batch_size=batch_size, streaming=streaming,
                         num_workers=workers if streaming else 0, stream={"cache_dir": cache})
    dm.setup()
    t1 = time.perf_counter()
    rows = 0
    for x, _ in dm.train_dataloader():
        rows += len(x)
    t2 = time.perf_counter()
    return {"setup_s": t1 - t0, "epoch_s": t2 - t1, "train_rows": rows,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(path: Path, streaming: bool, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--streaming", str(int(streaming)),
           "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--cache", args.cache]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 4_000_000, 16_000_000])
    ap.add_argument("--max-memory-rows", type=int, default=4_000_000, help="largest size the in-memory path runs")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=1, help="reading worker processes of the streamed path")
    ap.add_argument("--dir", default=None, help="where the Parquet files go (default: a temporary folder)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "keel-bench-cache"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--streaming", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, bool(args.streaming), args.batch_size, args.workers, args.cache)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = []
        for rows in args.rows:
            path = Path(tmp) / f"t{rows}.parquet"
            make_file(path, rows)
            s = measure(path, True, args)
            m = measure(path, False, args) if rows <= args.max_memory_rows else None
            results.append((rows, s, m, path.stat().st_size))
            path.unlink()
    print(f"{'rows':>11} {'MB':>6} | {'streamed: setup s':>17} {'epoch rows/s':>13} {'peak RSS MB':>11} | "
          f"{'in-memory: setup s':>18} {'epoch rows/s':>13} {'peak RSS MB':>11}")
    for rows, s, m, size in results:
        def cells(r: dict | None) -> str:
            if r is None:
                return f"{'(does not fit: skipped)':>45}"
            if "error" in r:
                return f"{r['error'][:45]:>45}"
            return f"{r['setup_s']:>17.1f} {r['train_rows'] / r['epoch_s']:>13,.0f} {r['peak_rss_mb']:>11,.0f}"
        print(f"{rows:>11,} {size / 1e6:>6.0f} | {cells(s)} | {cells(m)}")
    ok = [(rows, s, m) for rows, s, m, _ in results if "error" not in s]
    if len(ok) >= 2:
        base, top = ok[0], ok[-1]
        print(f"peak RSS streamed {top[0]:,} rows / {base[0]:,} rows: "
              f"{top[1]['peak_rss_mb'] / base[1]['peak_rss_mb']:.2f}x (target <= 1.2x)")
    for rows, s, m in ok:
        if m and "error" not in m:
            thr = (s["train_rows"] / s["epoch_s"]) / (m["train_rows"] / m["epoch_s"])
            e2e = ((s["train_rows"] / (s["setup_s"] + s["epoch_s"]))
                   / (m["train_rows"] / (m["setup_s"] + m["epoch_s"])))
            print(f"{rows:,} rows: streamed / in-memory epoch rows/s {thr:.2f}x (target >= 0.8x); "
                  f"setup + one epoch {e2e:.2f}x; peak RSS {s['peak_rss_mb'] / m['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
