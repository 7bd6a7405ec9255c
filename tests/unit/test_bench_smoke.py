"""bench/ stays runnable: each benchmark runs on small sizes and its sanity figures hold."""

from __future__ import annotations

import re

import pytest
from bench_helpers import number, run_bench







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
        "TableContract.check (clean: vectorized)": 20_000,
        "TableContract.check (1% violate: pandera)": 20_000,
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
        assert number(m[1]) == rows
        assert number(m[3]) > 0  # rows/s
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
        seconds, rate = float(m[1]), number(m[2])
        # rows/s is rows / seconds, up to the rounding of the printed seconds (3 decimals)
        assert rate > 0 and abs(rate * seconds - rows) <= rate * 0.0005 + 1
    assert re.search(r"^\s+total\s+[\d.]+ s$", out, re.M)
    assert "shared rows 200 (planted 200)" in out


@pytest.mark.integration  # trains and exports three small models (~40-70 s)
def test_bench_inference_quick() -> None:
    out = run_bench("bench_inference.py", "--quick")
    assert out.startswith("machine: ")
    for lib in ("torch", "onnxruntime"):
        assert f"| {lib} " in out.splitlines()[0]
    models = ("digits/mlp", "digits/cnn", "breast_cancer/mlp")

    assert "[1] bundles: 1 epochs each" in out
    for model in models:
        size = r"\s+([\d,]+)\s+([\d,]+)\s+(\d+)%\s+([\d,]+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)$"
        m = re.search(rf"^\s+{re.escape(model)}{size}", out, re.M)
        assert m, f"no size row for {model}:\n{out}"
        params, b32, bdyn, bsta = (number(m[i]) for i in (1, 2, 4, 6))
        # int8 weights: about a quarter of the fp32 bytes, plus scales and graph; weights dominate these files
        assert params > 10_000 and int(m[3]) >= 80
        assert float(m[5]) == pytest.approx(bdyn / b32, abs=0.006) and float(m[5]) < 0.5
        assert float(m[7]) == pytest.approx(bsta / b32, abs=0.006) and float(m[7]) < 0.5
        m = re.search(rf"^\s+{re.escape(model)}\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)\s+([\d.]+)\s+"
                      rf"([+-][\d.]+)\s+[\d.]+pt\s+(kept|out)/(kept|out)$", out, re.M)
        assert m, f"no accuracy row for {model}:\n{out}"
        rows = int(m[1])
        eager, fp32, dyn, static = (float(m[i]) for i in (2, 3, 4, 6))
        assert rows == {"breast_cancer/mlp": 113}.get(model, 269)
        assert all(0 <= a <= 1 for a in (eager, fp32, dyn, static))
        assert abs(eager - fp32) <= 1 / rows + 1e-4  # the export's parity gate
        assert float(m[5]) == pytest.approx(100 * (dyn - fp32), abs=0.02)
        assert float(m[7]) == pytest.approx(100 * (static - fp32), abs=0.02)
    assert "checks: recomputed accuracies match the manifests: yes; eager and ORT fp32 agree: yes" in out

    assert "[2] latency, ms per call: median of 1 rounds x 10 calls" in out
    rows = re.findall(r"^\s+(\S+)\s+(1|\d+/auto)\s+(1|64)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                      r"([\d.]+)\s+([\d.]+)$", out, re.M)
    assert sorted((r[0], r[2]) for r in rows) == sorted((m, b) for m in models for b in ("1", "64") for _ in range(2))
    for row in rows:
        eager, fp32, ort_eager, dyn, dyn_fp32, static, st_fp32 = map(float, row[3:])
        assert min(eager, fp32, dyn, static) > 0
        # ratios of the unrounded medians vs those printed with 3 decimals
        for ratio, num, den in ((ort_eager, fp32, eager), (dyn_fp32, dyn, fp32), (st_fp32, static, fp32)):
            assert ratio == pytest.approx(num / den, rel=0.1, abs=0.02), row

    assert "[3] keel predict cold start" in out
    m = re.search(r"^\s+python -c pass \(baseline\)\s+([\d.]+)\s+([\d.]+)\s+1\.0$", out, re.M)
    assert m, out
    base = float(m[2])
    for label in ("digits/mlp \\(tensor\\) \\.npy", "breast_cancer/mlp \\(table\\) \\.csv"):
        m = re.search(rf"^\s+{label}\s+([\d.]+)\s+([\d.]+)\s+(met|over)\s+([\d.]+)$", out, re.M)
        assert m, f"no cold-start row for {label}:\n{out}"
        best, median = float(m[1]), float(m[2])
        assert base < best <= median and (m[3] == "met") == (median < 0.5)
    child = re.search(r"^\s+= child process wall\s+([\d.]+)\s+100%\s+([\d.]+)\s+100%$", out, re.M)
    assert child, out
    # neither path imports pandas or pandera: a plain CSV is read and checked by keel.serve.table
    tensor = re.search(r"-X importtime of the real command, digits/mlp \(tensor\): (.*)$", out, re.M)
    table = re.search(r"-X importtime of the real command, breast_cancer/mlp \(table\): (.*)$", out, re.M)
    assert tensor and table, out
    assert "numpy" in tensor[1] and "onnxruntime" in tensor[1] and "pandas" not in tensor[1]
    assert "onnxruntime" in table[1] and "pandas" not in table[1] and "pandera" not in table[1]
    assert re.search(r"keel predict cold start \(median\): digits/mlp \(tensor\) [\d.]+ s, breast_cancer/mlp "
                     r"\(table\) [\d.]+ s", out)
