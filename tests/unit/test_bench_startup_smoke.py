"""bench_startup.py and bench_e2e.py stay runnable: a --quick run of each, and their own sums add up."""

from __future__ import annotations

import re

import pytest
from bench_helpers import run_bench

pytestmark = pytest.mark.integration  # each trains (startup: two one-epoch bundles; e2e: two debug=fast runs)




def test_bench_startup_quick() -> None:
    out = run_bench("bench_startup.py", "--quick")
    assert out.startswith("machine: ") and "| onnxruntime " in out.splitlines()[0]
    assert re.search(r"^\[1\] bundles: digits/mlp and breast_cancer/mlp, 1 epoch each", out, re.M)
    assert "[2] wall time of each command as a fresh process, 2 interleaved rounds" in out
    base = re.search(r"^\s+python -c pass \(baseline\)\s+([\d.]+)\s+([\d.]+)\s+1\.0$", out, re.M)
    assert base, out
    medians = {}
    for label, target in (("python train.py --cfg job", 1.0), ("python train.py --help", 1.0),
                          ("keel predict digits/mlp .npy", 0.5), ("keel predict breast_cancer .csv", 0.5)):
        m = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)\s+([\d.]+)\s+< ([\d.]+)\s+(met|over)\s+([\d.]+)$", out, re.M)
        assert m, f"no row for {label!r}:\n{out}"
        best, median, ratio = float(m[1]), float(m[2]), float(m[5])
        assert float(m[3]) == target and (m[4] == "met") == (median < target)
        assert 0 < best <= median and ratio == pytest.approx(median / float(base[2]), rel=0.05, abs=0.1)
        medians[label] = median
    assert "[3] costliest top-level imports of each command" in out
    # train.py imports Hydra first and torch not at all; predict imports onnxruntime
    cfg = re.search(r"^\s+python train.py --cfg job\s+(.*)$", out.split("[3]")[1], re.M)
    assert cfg and "hydra" in cfg[1] and "torch" not in cfg[1], out
    predict = re.search(r"^\s+keel predict digits/mlp .npy\s+(.*)$", out.split("[3]")[1], re.M)
    assert predict and "onnxruntime" in predict[1] and "torch" not in predict[1], out
    headline = re.search(r"^headline: start-up \(median\): (.*)$", out, re.M)
    assert headline and all(f"{label} {median:.3f} s" in headline[1] for label, median in medians.items())


def test_bench_e2e_quick() -> None:
    out = run_bench("bench_e2e.py", "--quick")
    assert out.startswith("machine: ") and "| torch " in out.splitlines()[0]
    assert "[1] python train.py debug=fast: 1 round(s), median" in out
    runs = {}
    for run in ("plain", "timed"):
        m = re.search(rf"^\s+{run} \([^)]*\)\s+([\d.]+)\s+(\d+)$", out, re.M)
        assert m, f"no {run} row:\n{out}"
        runs[run] = float(m[1])
        assert float(m[1]) > 0 and int(m[2]) > 100  # MiB: torch alone takes more
    phases = {}
    for m in re.finditer(r"^  (\S.*?|  of which .*?)\s+([\d.]+)\s+([\d.]+)%\s*(\d*)$", out.split("[2]")[1], re.M):
        phases[m[1].strip()] = (float(m[2]), float(m[3]), m[4])
    expected = ("start-up (interpreter, imports, config)", "data setup (load, split, check, drift)",
                "of which contract checks", "of which drift + leakage report", "build (model, callbacks, Trainer)",
                "fit (train + validation epochs)", "test (best checkpoint)", "ONNX export (+ parity, bundle)",
                "int8 quantization (+ accuracy)", "finish (metrics, summary)", "exit (flush + os._exit)")
    assert list(phases) == list(expected), out
    top = [p for p in expected if not p.startswith("of which")]
    # the phases are consecutive spans between the same marks: they add up to the timed run's wall
    total = re.search(r"^\s+= sum \(of-which rows left out\)\s+([\d.]+)$", out, re.M)
    assert total and float(total[1]) == pytest.approx(runs["timed"], abs=0.01 * len(top))
    assert sum(phases[p][1] for p in top) == pytest.approx(100, abs=0.1 * len(top))
    setup = phases["data setup (load, split, check, drift)"][0]
    assert phases["of which contract checks"][0] + phases["of which drift + leakage report"][0] <= setup + 0.01
    for p in ("fit (train + validation epochs)", "ONNX export (+ parity, bundle)", "int8 quantization (+ accuracy)"):
        assert phases[p][0] > 0 and phases[p][2], f"{p}: {phases[p]}"  # ran, with its peak RSS
    assert re.search(r"^headline: python train.py debug=fast: [\d.]+ s wall, peak RSS \d+ MiB; .*test/acc [\d.]+$",
                     out, re.M)
