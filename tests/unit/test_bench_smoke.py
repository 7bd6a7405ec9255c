"""bench/ stays runnable: each benchmark runs on small sizes and its sanity figures hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_bench_data_quick() -> None:
    out = run_bench("bench_data.py", "--quick")
    assert out.startswith("machine: ")
    for lib in ("torch", "numpy", "pandas", "pandera"):
        assert f"| {lib} " in out.splitlines()[0]
    assert "[1] synthetic table: 20,000 rows x 8 numeric columns + label, best of 1" in out
    header = re.search(r"^\s+step\s+rows\s+seconds\s+rows/s\s+x baseline$", out, re.M)
    assert header, out
    steps = {
        "baseline: numpy range test (float64)": 20_000,
        "TableContract.check (pandera, clean)": 20_000,
        "TableContract.check (1% rows violate)": 20_000,
        "TensorContract.check (float32 array)": 20_000,
        "drift: reference_stats (1st half)": 10_000,
        "drift: compare (2nd half)": 10_000,
        "drift: shared_rows (both halves)": 20_000,
        "drift total": 20_000,
        "check + drift (headline)": 20_000,
    }
    for step, rows in steps.items():
        m = re.search(rf"^\s+{re.escape(step)}\s+([\d,]+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)$", out, re.M)
        assert m, f"no row for {step!r}:\n{out}"
        assert _number(m[1]) == rows
        assert _number(m[3]) > 0  # rows/s
    # The bench's own sanity figures: planted violations and duplicates are all found.
    assert "clean table ok=True, tensor ok=True" in out
    assert "violating table: 200 rows flagged (planted 200)" in out
    assert "shared rows 100 (planted 100)" in out
    assert re.search(r"headline: check \+ drift on 20,000 x 8 = [\d.]+ s", out)

    assert "[2] embedded datasets" in out
    header = r"^\s+dataset\s+train/val/test\s+check s\s+drift s\s+setup s\s+epoch s\s+check/epoch\s+drift/epoch"
    assert re.search(header, out, re.M), out
    for dataset, splits in (("digits", "1259/269/269"), ("breast_cancer", "343/113/113")):
        m = re.search(rf"^\s+{dataset}\s+{splits}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)%",
                      out, re.M)
        assert m, f"no row for {dataset}:\n{out}"
        check, drift, setup, epoch = (float(m[i]) for i in range(1, 5))
        # check and drift are parts of setup (printed rounded to 0.1 ms)
        assert 0 < check + drift <= setup + 1e-4 and epoch > 0


def test_bench_drift_small() -> None:
    out = run_bench("bench_drift.py", "--rows", "20000", "--cols", "8", "--repeat", "1")
    assert out.startswith("machine: ")
    assert "data: 20,000 rows x 8 numeric columns (float64), best of 1" in out
    for step, rows in (("reference_stats", 20_000), ("compare", 20_000), ("shared_rows (ref + other)", 40_000)):
        m = re.search(rf"^\s+{re.escape(step)}\s+([\d.]+) s\s+([\d,]+) rows/s$", out, re.M)
        assert m, f"no rows/s line for {step!r}:\n{out}"
        seconds, rate = float(m[1]), _number(m[2])
        # rows/s is rows / seconds, up to the rounding of the printed seconds (3 decimals)
        assert rate > 0 and abs(rate * seconds - rows) <= rate * 0.0005 + 1
    assert re.search(r"^\s+total\s+[\d.]+ s$", out, re.M)
    assert "shared rows 200 (planted 200)" in out
