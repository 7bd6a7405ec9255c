"""Start-up time of keel's commands: ``train.py --cfg job``, ``train.py --help``, ``keel predict``.

Usage: ``python bench/bench_startup.py [--repeat N] [--quick]``.

Everything happens in a temporary directory that is deleted at the end; nothing is written to
the tree.

1. Bundles: ``keel.pipeline.train`` (in-process, config composed from ``conf/`` by
   ``bench_inference.compose``, as ``train.py`` does) trains digits with ``model=mlp`` and
   breast_cancer with ``model=mlp`` for one epoch; the default callbacks export the bundles. The
   inputs are 64 rows of each dataset (sklearn's copy): an ``.npy`` array and a ``.csv`` table.
2. Wall time of each command as a fresh process (stdout and stderr captured), N rounds; each
   round runs every command once, starting one further along the list each time, with
   ``python -c pass`` (bare interpreter start: the floor) among them, so load on the shared
   machine hits all alike. Best and median per command, against the targets of the issue
   (``--cfg job`` and ``--help`` < 1.0 s, ``keel predict`` < 0.5 s) and as a multiple of the
   baseline. ``keel predict`` is the console script next to this Python (``python -m keel.cli``
   without one).
3. Where the time goes: one ``-X importtime`` run of each command, its costliest top-level
   imports (cumulative ms; -X importtime inflates them, compare them with each other).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = 64  # rows predicted per `keel predict` call
QUICK = {"repeat": 2}
TOP_IMPORTS = 5


def machine() -> str:
    import numpy
    import onnxruntime

    return (f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cpus | "
            f"python {platform.python_version()} | numpy {numpy.__version__} | onnxruntime {onnxruntime.__version__}")


def keel_command() -> list[str]:
    script = Path(sys.executable).parent / "keel"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "keel.cli"]


def make_bundles(root: Path) -> dict[str, tuple[Path, Path]]:
    """{"tensor" | "table": (bundle dir, input file)}: one-epoch bundles and 64 rows to predict."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer, load_digits

    from bench_inference import compose  # bench/ is on sys.path: this script runs from there
    from keel.pipeline import train

    for dataset in ("digits", "breast_cancer"):
        with contextlib.redirect_stdout(io.StringIO()):  # the run summary: not part of the table
            train(compose(dataset, "mlp", root / dataset, epochs=1))
    np.save(root / "digits.npy", load_digits().data[:ROWS].reshape(-1, 1, 8, 8).astype(np.float32))
    load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).iloc[:ROWS].to_csv(
        root / "breast_cancer.csv", index=False)
    return {"tensor": (root / "digits" / "bundle", root / "digits.npy"),
            "table": (root / "breast_cancer" / "bundle", root / "breast_cancer.csv")}


def commands(bundles: dict[str, tuple[Path, Path]]) -> list[tuple[str, list[str], float | None]]:
    """(label, argv, target seconds or None for the baseline)."""
    py, keel = [sys.executable], keel_command()
    (tb, tx), (sb, sx) = bundles["tensor"], bundles["table"]
    return [
        ("python -c pass (baseline)", [*py, "-c", "pass"], None),
        ("python train.py --cfg job", [*py, "train.py", "--cfg", "job"], 1.0),
        ("python train.py --help", [*py, "train.py", "--help"], 1.0),
        ("keel predict digits/mlp .npy", [*keel, "predict", str(tb), str(tx)], 0.5),
        ("keel predict breast_cancer .csv", [*keel, "predict", str(sb), str(sx)], 0.5),
    ]


def check_output(label: str, out: str) -> None:
    """The command did its job (a timing of a failing command would be worthless)."""
    if "--cfg job" in label:
        ok = "model:" in out and "trainer:" in out
    elif "--help" in label:
        ok = "== Config groups" in out
    elif "predict" in label:
        ok = sum(line[:1].isdigit() for line in out.splitlines()) == ROWS
    else:
        ok = True
    if not ok:
        raise RuntimeError(f"bench: `{label}` did not print what it should:\n{out[-2000:]}")


def run(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bench: {' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds, proc


def top_imports(stderr: str, n: int = TOP_IMPORTS) -> list[tuple[str, float]]:
    """The ``n`` costliest top-level imports (cumulative ms) in an ``-X importtime`` log."""
    found = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        if not name.startswith("  "):  # one space after the bar: imported by the program itself
            found.append((name.strip(), int(cumulative) / 1e3))
    return sorted(found, key=lambda item: -item[1])[:n]


def bench(cmds: list[tuple[str, list[str], float | None]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {label: [] for label, _, _ in cmds}
    for r in range(rounds):
        for label, argv, _ in cmds[r % len(cmds):] + cmds[: r % len(cmds)]:
            seconds, proc = run(argv)
            check_output(label, proc.stdout)
            times[label].append(seconds)
    return times


def report(cmds: list[tuple[str, list[str], float | None]], times: dict[str, list[float]], rounds: int) -> None:
    base = statistics.median(times[cmds[0][0]])
    print(f"\n[2] wall time of each command as a fresh process, {rounds} interleaved rounds "
          f"(predict: {ROWS} rows, fp32; keel = {' '.join(keel_command())})")
    print(f"  {'command':<34} {'best s':>7} {'median s':>9} {'target':>8} {'met':>5} {'x baseline':>11}")
    for label, _, target in cmds:
        w = times[label]
        med = statistics.median(w)
        met = "" if target is None else ("met" if med < target else "over")
        tgt = "" if target is None else f"< {target:.1f}"
        print(f"  {label:<34} {min(w):>7.3f} {med:>9.3f} {tgt:>8} {met:>5} {med / base:>11.1f}")


def imports(cmds: list[tuple[str, list[str], float | None]]) -> None:
    print("\n[3] costliest top-level imports of each command (one -X importtime run, cumulative ms)")
    for label, argv, target in cmds:
        if target is None:
            continue
        # the console script is a Python file: run it by this interpreter with the flag
        _, proc = run([sys.executable, "-X", "importtime", *(argv[1:] if argv[0] == sys.executable else argv)])
        found = ", ".join(f"{name} {ms:.0f}" for name, ms in top_imports(proc.stderr))
        print(f"  {label:<34} {found}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="rounds: every command runs once per round")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK['repeat']} rounds")
    args = parser.parse_args()
    if args.quick:
        args.repeat = QUICK["repeat"]
    if args.repeat < 1:
        parser.error("expected --repeat >= 1")

    # Keep the output to the tables: Lightning's banners (its import sets their level, so after
    # it), keel's per-run notes, and a deprecation inside Lightning (also ignored in pyproject).
    import lightning  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "keel"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)

    print(machine())
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keel-bench-startup-") as tmp:
        t = time.perf_counter()
        bundles = make_bundles(Path(tmp))
        print(f"\n[1] bundles: digits/mlp and breast_cancer/mlp, 1 epoch each, {time.perf_counter() - t:.1f} s")
        cmds = commands(bundles)
        times = bench(cmds, args.repeat)
        report(cmds, times, args.repeat)
        imports(cmds)

    print("\nheadline: start-up (median): " + ", ".join(
        f"{label} {statistics.median(times[label]):.3f} s (< {target:.1f}: "
        f"{'met' if statistics.median(times[label]) < target else 'over'})"
        for label, _, target in cmds if target is not None))
    print(f"  baseline python -c pass {statistics.median(times[cmds[0][0]]):.3f} s; total bench time "
          f"{time.perf_counter() - started:.0f} s; load average (1 min) {load_start:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
