"""bench_train.py and bench_scaling.py stay runnable: each runs on tiny sizes and prints its tables.

No timing is asserted (the machines are shared): only that every row is there, with positive
figures, the sizes the bench was asked for, and ratios that agree with the figures beside them.
Both import Lightning and train (bench_scaling starts `python train.py` processes, DDP among
them), hence the integration marker.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import number, run_bench

ROOT = Path(__file__).resolve().parents[2]
NUM = r"([\d,]+(?:\.\d+)?)"






@pytest.mark.integration  # imports Lightning and trains ~50 short epochs (~30-60 s)
def test_bench_train_quick() -> None:
    # one thread: the smoke run's duration stays predictable on a busy machine
    out = run_bench("bench_train.py", "--quick", "--threads", "1")
    first = out.splitlines()[0]
    assert first.startswith("machine: ") and "| torch " in first and "| lightning " in first
    assert "torch threads 1 " in first and "both loops train on: cpu" in first

    assert "[1] training throughput, samples/s" in out
    assert "hand*: the same hand loop over keel's data path and optimizer" in out
    assert "floor/hand: a bare LightningModule" in out
    assert "synthetic table of 3,000 rows" in out
    ratios = {}
    for case, batch in (("digits/mlp", 64), ("digits/cnn", 64), ("table/mlp", 128)):
        m = re.search(rf"^\s+{re.escape(case)}\s+{NUM}\s+(\d+)\s+(\d+)\s+{NUM}\s+{NUM}\s+([\d.]+)\s+([+-]\d+)\s+"
                      rf"([\d.]+) - ([\d.]+)\s+{NUM}\s+([\d.]+)\s+([+-]\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
        assert m, f"no row for {case}:\n{out}"
        rows, steps, keel, hand, ratio = number(m[1]), int(m[3]), number(m[4]), number(m[5]), float(m[6])
        assert int(m[2]) == batch and steps == math.ceil(rows / batch)
        assert keel > 0 and hand > 0
        assert ratio == pytest.approx(keel / hand, rel=0.01, abs=0.006)  # printed rounded
        assert float(m[8]) <= float(m[9])
        fast = number(m[10])  # hand*: the hand loop over keel's data path and optimizer
        assert fast > 0 and float(m[11]) == pytest.approx(keel / fast, rel=0.01, abs=0.006)
        floor_hand, keel_floor = float(m[13]), float(m[14])  # Lightning's floor vs the tutorial loop; keel vs floor
        assert floor_hand > 0 and keel_floor == pytest.approx(ratio / floor_hand, rel=0.02, abs=0.01)
        ratios[case] = ratio
    assert re.search(r"^\s+digits/mlp\s+1,259\s", out, re.M)  # the embedded split, always the same
    table_rows = number(re.search(rf"^\s+table/mlp\s+{NUM}", out, re.M)[1])
    assert 0.6 * 3000 < table_rows < 0.8 * 3000  # the train split of the 3,000-row table

    assert "[2] DataLoader settings" in out
    labels = ("keel default: index batches, 0 workers", "index batches, 2 workers (persistent)",
              "index batches, 2 workers, not persistent", "per-row getitem + collate, 0 workers",
              "per-row getitem + collate, 2 workers")
    for i, label in enumerate(labels):
        m = re.search(rf"^\s+{re.escape(label)}\s+{NUM}\s+([\d.]+)\s+{NUM}\s+([\d.]+)$", out, re.M)
        assert m, f"no row for {label!r}:\n{out}"
        assert number(m[1]) > 0 and number(m[3]) > 0
        if i == 0:
            assert m[2] == "1.00" and m[4] == "1.00"  # the baseline of the ratios
    assert "pin_memory" not in out  # no accelerator here: the row is left out
    assert "[3]" not in out  # --quick leaves torch.compile out

    m = re.search(r"toy keel/hand samples/s \(no target; ~1.0 accepted\): digits/mlp ([\d.]+), digits/cnn ([\d.]+), "
                  r"table/mlp ([\d.]+)$", out, re.M)
    assert m, out
    # the headline rounds down (1.00 only for >= 1.0), the table to nearest: within 0.01
    assert [float(m[i]) for i in (1, 2, 3)] == pytest.approx(list(ratios.values()), abs=0.011)

    # [0] the realistic cases, at the --quick sizes (600 images, a 3,000-row table, 3 steps an epoch)
    assert "[0] realistic cases, keel vs the hand-written loop" in out
    assert "images/resnet: 600 synthetic 3x32x32 images" in out and "synthetic table of 3,000 rows" in out
    real = {}
    for case, params, batch in (("images/resnet", "1,228,970", 128), ("table/mlp-1024", "1,085,444", 256)):
        m = re.search(rf"^\s+{re.escape(case)}\s+{params}\s+{NUM}\s+{batch}\s+3\s+{NUM}\s+{NUM}\s+([\d.]+)\s+"
                      rf"([\d.]+) - ([\d.]+)\s+{NUM}\s+([\d.]+)$", out, re.M)
        assert m, f"no row for {case}:\n{out}"
        keel_ms, hand_ms, ratio = float(m[2]), float(m[3]), float(m[4])
        assert keel_ms > 0 and hand_ms > 0 and ratio == pytest.approx(hand_ms / keel_ms, rel=0.01, abs=0.006)
        assert float(m[5]) <= float(m[6]) and float(m[8]) == pytest.approx(float(m[7]) / keel_ms, rel=0.01, abs=0.006)
        real[case] = ratio
    m = re.search(r"realistic keel/hand samples/s: images/resnet ([\d.]+), table/mlp-1024 ([\d.]+) "
                  r"\(target >= 0.97: (met|not met)\)", out)
    assert m, out
    assert [float(m[1]), float(m[2])] == pytest.approx(list(real.values()), abs=0.011)
    assert (m[3] == "met") == (min(float(m[1]), float(m[2])) >= 0.97)


def test_bench_train_refuses_an_unknown_part() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_train.py"), "--parts", "loop,speed"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--parts: unknown ['speed']; expected any of real, loop, loader, compile" in proc.stderr


@pytest.mark.integration  # starts 3 `python train.py` processes, one of them DDP on 2 CPU processes (~30-60 s)
def test_bench_scaling_quick() -> None:
    out = run_bench("bench_scaling.py", "--quick")
    assert out.startswith("machine: ")

    m = re.search(r"\[1\] trainer.devices=1 vs 2 \(DDP, gloo, CPU\): 2,000 rows \(([\d,]+) train\), 2 epochs", out)
    assert m, out
    train_rows = number(m[1])
    assert 0.6 * 2000 < train_rows < 0.8 * 2000
    rates = {}
    for devices in (1, 2):
        m = re.search(rf"^\s+{devices}\s+{devices}\s+{NUM}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)$", out, re.M)
        assert m, f"no row for devices={devices} (world size {devices}):\n{out}"
        sps, wall, run = number(m[1]), float(m[3]), float(m[4])
        assert sps > 0 and 0 < run <= wall
        rates[devices] = (sps, float(m[2]))
    assert rates[1][1] == 1.00
    assert rates[2][1] == pytest.approx(rates[2][0] / rates[1][0], rel=0.01, abs=0.006)

    assert "[2] wall time vs rows: trainer.devices=1, 2 epochs" in out
    previous_wall = 0.0
    for i, rows in enumerate((2000, 6000)):
        m = re.search(rf"^\s+{rows:,}\s+{NUM}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+{NUM}\s+([\d.]+)\s+([\d.]+)\s*(\S*)$",
                      out, re.M)
        assert m, f"no row for {rows:,} rows:\n{out}"
        assert 0.6 * rows < number(m[1]) < 0.8 * rows
        wall, run, epoch, sps = float(m[2]), float(m[3]), float(m[4]), number(m[5])
        assert 0 < run <= wall and epoch > 0 and sps > 0
        if i == 0:
            assert m[6] == "1.00" and m[7] == "1.000" and m[8] == ""  # the reference row
        else:
            # from the walls as printed (rounded to 0.1 s)
            assert float(m[8]) == pytest.approx((wall - previous_wall) / (rows - 2000) * 1e3, abs=0.03)
        previous_wall = wall
    assert re.search(r"devices=2 / devices=1 samples/s: [\d.]+ on \d+ cpus", out)
    assert re.search(r"epoch time per row vs the smallest table: 2,000 rows 1.00, 6,000 rows [\d.]+", out)
