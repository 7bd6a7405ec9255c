"""End-to-end cost of the default job ``python train.py``: wall time, peak memory, and each phase's share.

Usage: ``python bench/bench_e2e.py [--repeat N] [--quick] [OVERRIDE ...]``.

Runs go to a temporary directory (``paths.log_dir``) that is deleted at the end; nothing is
written to the tree. Extra arguments are Hydra overrides for every run (``model=cnn`` ...).

Each round runs two fresh processes, one after the other:

- plain: ``python train.py paths.log_dir=TMP`` exactly as a user runs it; wall time (spawn to
  exit) and peak resident memory (``ru_maxrss`` of that process, from ``os.wait4``).
- timed: the same job in a child that first installs timers, then runs ``train.py`` as
  ``__main__`` (``runpy``), so Hydra composes, validates and runs it as usual. keel is not
  changed: the timers wrap, from outside, ``InMemoryDataModule.setup`` (and, inside it, the data
  module's ``_check`` per split and ``_compute_drift``), ``lightning.pytorch.Trainer``'s ``fit``
  and ``test``, and the bundle step ``keel.fit.export_bundle`` that ``keel.fit.fit_test_export``
  calls after ``test`` has returned (rank 0), with, inside it, the export and quantization steps
  (``keel.callbacks.onnx_export.export_checkpoint``, ``keel.callbacks.quantize.add_int8``).
  Phases are the consecutive spans between those marks on the monotonic clock shared with the
  parent, so they add up to the wall time: start-up (interpreter, imports, Hydra compose, config
  and machine checks, run record; the child imports Lightning, keel.fit and keel's callbacks
  before the run to install the timers, which moves their import time here from later phases),
  data setup (load, split, contract checks, drift and leakage report), build (data reports,
  model, loggers, callbacks, Trainer, data reports to TensorBoard), fit (training and validation
  epochs), test (best checkpoint: from the end of fit to the start of the bundle step), ONNX
  export (graph, parity check, bundle: from the start of the bundle step to the start of int8),
  int8 quantization (with its accuracy check: to the end of the bundle step), finish (metrics
  record and summary) and exit (interpreter teardown). ``peak RSS`` is the child's own
  ``ru_maxrss`` when each phase ended: the phase where it jumps is the one that needs the memory.

Figures: median over the rounds (phases: median of each phase); the timed total beside the
plain one shows what the timers cost (about nothing; import order aside).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["debug=fast"]  # one epoch of 2 batches per stage; test, export and int8 as usual

# The timed child: argv[1] is where it writes its marks (JSON), argv[2:] the overrides.
CHILD = r"""
import time
T0 = time.perf_counter()
import gc, json, resource, runpy, sys

# The instrumentation imports Lightning before train.py runs; keel's job does its imports with
# automatic collection off (keel.gc_phases), so these do too (turned back on before train.py).
gc.disable()
marks, out = [], sys.argv[1]
inside = set()

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def wrap(owner, attr, name, within=None):
    fn = getattr(owner, attr)
    def timed(*args, **kwargs):
        if within is not None and within not in inside:
            return fn(*args, **kwargs)
        inside.add(name)
        start, rss = time.perf_counter(), rss_mb()
        try:
            return fn(*args, **kwargs)
        finally:
            inside.discard(name)
            marks.append((name, start, time.perf_counter(), rss, rss_mb()))
    setattr(owner, attr, timed)

import lightning.pytorch as pl
import keel.callbacks.onnx_export as onnx_export
import keel.callbacks.quantize as quantize
import keel.fit as fit
from keel.data.in_memory import InMemoryDataModule

setup = InMemoryDataModule.setup
def timed_setup(self, stage=None):
    cls = type(self)
    if "_bench_timed" not in cls.__dict__:  # the concrete class's own steps, overridden or not
        wrap(cls, "_check", "contract checks", within="setup")
        wrap(cls, "_compute_drift", "drift + leakage", within="setup")
        cls._bench_timed = True
    if self._data:  # Lightning calls setup per stage: only the first one works
        return setup(self, stage)
    inside.add("setup")
    start, rss = time.perf_counter(), rss_mb()
    try:
        return setup(self, stage)
    finally:
        inside.discard("setup")
        marks.append(("setup", start, time.perf_counter(), rss, rss_mb()))
InMemoryDataModule.setup = timed_setup
wrap(pl.Trainer, "fit", "fit")
wrap(pl.Trainer, "test", "test")
# the bundle step runs after Trainer.test returns (keel.fit.fit_test_export calls export_bundle,
# which calls OnnxExport.export -> export_checkpoint, then Quantize.quantize -> add_int8)
wrap(fit, "export_bundle", "bundle")
wrap(onnx_export, "export_checkpoint", "export", within="bundle")
wrap(quantize, "add_int8", "int8", within="bundle")

import keel.config as keel_config
exit_now = keel_config.exit_now
keel_config.exit_now = lambda code=0: None  # train.py ends with it: first write the marks, below
sys.argv = ["train.py", *sys.argv[2:]]
gc.enable()
code = 0
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit as e:
    code = e.code or 0
marks.append(("run", T0, time.perf_counter(), None, rss_mb()))
with open(out, "w") as f:
    json.dump({"t0": T0, "marks": marks, "code": code}, f)
if code == 0:
    exit_now(0)  # as train.py does after a finished run: no interpreter teardown
sys.exit(code)
"""

# (label, how it is computed from the marks); every row is a span between marks
PHASES = (
    "start-up (interpreter, imports, config)",
    "data setup (load, split, check, drift)",
    "  of which contract checks",
    "  of which drift + leakage report",
    "build (model, callbacks, Trainer)",
    "fit (train + validation epochs)",
    "test (best checkpoint)",
    "ONNX export (+ parity, bundle)",
    "int8 quantization (+ accuracy)",
    "finish (metrics, summary)",
    "exit (flush + os._exit)",
)


def machine() -> str:
    from importlib.metadata import version  # not the packages themselves: this process stays light

    return (f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cpus | "
            f"python {platform.python_version()} | torch {version('torch')} | lightning {version('lightning')} | "
            f"onnxruntime {version('onnxruntime')}")


def spawn(argv: list[str], log: Path) -> tuple[float, float, float]:
    """(perf_counter at spawn, at exit, peak RSS in MiB of the process) for a run whose output goes to ``log``."""
    with log.open("w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        end = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bench: {' '.join(argv)} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return start, end, usage.ru_maxrss / 1024  # KiB on Linux


def phases(result: dict, spawned: float, ended: float) -> dict[str, tuple[float, float | None]]:
    """{phase: (seconds, peak RSS MiB at its end or None)} from the child's marks."""
    marks: dict[str, list[tuple[float, float, float | None, float]]] = {}
    for name, start, end, rss_start, rss_end in result["marks"]:
        marks.setdefault(name, []).append((start, end, rss_start, rss_end))
    missing = {"setup", "fit", "test", "run"} - set(marks)
    if missing:
        raise RuntimeError(f"bench: the timed run did not pass through {sorted(missing)}")
    setup_start, setup_end, startup_rss, setup_rss = marks["setup"][0]
    fit_start, fit_end, build_rss, fit_rss = marks["fit"][0]
    _, test_end, _, test_rss = marks["test"][-1]
    _, run_end, _, run_rss = marks["run"][0]

    def total(name: str) -> float:
        return sum(m[1] - m[0] for m in marks.get(name, []))

    # The bundle step (keel.fit.export_bundle: ONNX export, then int8) runs after Trainer.test has
    # returned, on rank 0. Its phases are consecutive spans: test up to the bundle step's start
    # (Trainer.test and the metrics bookkeeping around it), ONNX export up to the int8 step's
    # start, int8 up to the bundle step's end. Without a bundle step (no export callbacks) both
    # are 0 and finish starts where test ended.
    bundle_start, bundle_end, test_rss, _ = marks["bundle"][0] if "bundle" in marks else (
        test_end, test_end, test_rss, None)
    int8_start = marks["int8"][0][0] if "int8" in marks else bundle_end

    def rss(name: str) -> float | None:
        return marks[name][-1][3] if name in marks else None
    return {
        PHASES[0]: (setup_start - spawned, startup_rss),
        PHASES[1]: (setup_end - setup_start, setup_rss),
        PHASES[2]: (total("contract checks"), None),
        PHASES[3]: (total("drift + leakage"), None),
        PHASES[4]: (fit_start - setup_end, build_rss),
        PHASES[5]: (fit_end - fit_start, fit_rss),
        PHASES[6]: (bundle_start - fit_end, test_rss),
        PHASES[7]: (int8_start - bundle_start, rss("export")),
        PHASES[8]: (bundle_end - int8_start, rss("int8")),
        PHASES[9]: (run_end - bundle_end, run_rss),
        PHASES[10]: (ended - run_end, None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="rounds (each: one plain and one timed run)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {' '.join(QUICK)}, 1 round")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        args.repeat, overrides = 1, [*QUICK, *overrides]
    if args.repeat < 1:
        parser.error("expected --repeat >= 1")

    print(machine())
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    plain: list[tuple[float, float]] = []
    timed: list[tuple[float, float]] = []
    rows: dict[str, list[float]] = {p: [] for p in PHASES}
    peaks: dict[str, list[float]] = {p: [] for p in PHASES}
    with tempfile.TemporaryDirectory(prefix="keel-bench-e2e-") as tmp:
        root = Path(tmp)
        for r in range(args.repeat):
            job = [f"paths.log_dir={root / f'plain{r}'}", *overrides]
            start, end, peak = spawn([sys.executable, "train.py", *job], root / f"plain{r}.log")
            plain.append((end - start, peak))
            marks_file = root / f"marks{r}.json"
            job = [f"paths.log_dir={root / f'timed{r}'}", *overrides]
            start, end, peak = spawn([sys.executable, "-c", CHILD, str(marks_file), *job], root / f"timed{r}.log")
            timed.append((end - start, peak))
            for phase, (seconds, rss) in phases(json.loads(marks_file.read_text()), start, end).items():
                rows[phase].append(seconds)
                if rss is not None:
                    peaks[phase].append(rss)
        summary = (root / "plain0.log").read_text()

    med = statistics.median
    wall, peak = med(w for w, _ in plain), med(p for _, p in plain)
    twall = med(w for w, _ in timed)
    job = "python train.py " + " ".join(overrides)
    print(f"\n[1] {job.strip()}: {args.repeat} round(s), median")
    print(f"  {'run':<44} {'wall s':>8} {'peak RSS MiB':>13}")
    print(f"  {'plain (as a user runs it)':<44} {wall:>8.2f} {peak:>13.0f}")
    print(f"  {'timed (phase marks, below)':<44} {twall:>8.2f} {med(p for _, p in timed):>13.0f}")
    print(f"\n[2] phases of the timed run (median of {args.repeat}; share of its wall time; peak RSS of the process "
          f"when the phase ended)")
    print(f"  {'phase':<44} {'s':>8} {'share':>7} {'peak RSS MiB':>13}")
    for phase in PHASES:
        seconds = med(rows[phase])
        rss = f"{med(peaks[phase]):.0f}" if peaks[phase] else ""
        print(f"  {phase:<44} {seconds:>8.2f} {seconds / twall:>7.1%} {rss:>13}")
    top = [p for p in PHASES if not p.startswith("  ")]
    print(f"  {'= sum (of-which rows left out)':<44} {sum(med(rows[p]) for p in top):>8.2f}")
    test_acc = next((line.split("test/acc=")[1].split()[0] for line in summary.splitlines() if "test/acc=" in line),
                    "?")
    print(f"\nheadline: {job.strip()}: {wall:.1f} s wall, peak RSS {peak:.0f} MiB; fit "
          f"{med(rows[PHASES[5]]) / twall:.0%}, start-up {med(rows[PHASES[0]]) / twall:.0%}, export + int8 "
          f"{(med(rows[PHASES[7]]) + med(rows[PHASES[8]])) / twall:.0%} of the time; test/acc {test_acc}")
    print(f"  total bench time {time.perf_counter() - started:.0f} s; load average (1 min) {load_start:.2f} at the "
          f"start, {os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
