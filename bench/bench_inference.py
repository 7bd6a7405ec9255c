"""Inference cost of a keel bundle: ONNX Runtime vs PyTorch eager, int8 vs fp32, `keel predict` cold start.

Usage: ``python bench/bench_inference.py [--epochs N] [--repeat R] [--quick]``.

Everything happens in a temporary directory that is deleted at the end; nothing is written to
the tree.

1. Bundles: ``keel.pipeline.train`` (in-process, config composed from ``conf/`` as ``train.py``
   does) trains digits with ``model=mlp`` and ``model=cnn`` and breast_cancer with ``model=mlp``
   for N epochs; the default callbacks export ``model.onnx`` and add the dynamic int8 model.
   ``add_int8`` then writes a static (QDQ, calibrated) int8 model into a copy of each bundle.
   Both int8 variants are kept whatever their accuracy (budget lifted to 1.0) so that both can
   be measured; the ``budget`` column says whether ``quantize.max_accuracy_drop`` from
   ``conf/`` would have kept them. Sizes are file bytes; accuracies are recomputed on the test
   split (and checked against the manifests).
2. Latency: PyTorch eager (``torch.inference_mode``, the exported ``InferenceModel`` in eval
   mode) vs ONNX Runtime fp32 / int8 dynamic / int8 static (``keel.export.runtime.session``),
   at batch 1 and 64, with 1 thread (``torch.set_num_threads(1)``, ORT ``intra_op_num_threads=1``)
   and with each library's default. Each figure is the median of R rounds x C calls after
   warm-up; a round times eager, then each ORT variant on fresh sessions (rotating which goes
   first), so load on the shared machine hits all four alike and no idle, spinning ORT thread
   pool competes with torch's threads. ``ort/eager`` and ``int8/fp32`` are ratios of those medians.
3. ``keel predict`` cold start: wall time of the whole process ``python -m keel.cli predict
   BUNDLE INPUT`` (subprocess, 64 test rows) for the digits mlp bundle (.npy) and the
   breast_cancer bundle (.csv), best and median of 2 x R runs, against ``python -c pass`` (bare
   interpreter start) measured alongside. Then where the time goes: a child process runs
   predict's steps in order with a timer around each (imports first, one package per line, so
   each is that package's own cost), plus interpreter start and exit, median of the same
   number of runs; and one ``-X importtime`` run of the real command gives the first-import
   cost of numpy and onnxruntime (and of pandas, pyarrow and pandera, which it imports only for
   the table files keel.serve.table leaves to them: not for these CSV rows).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONF = Path(__file__).resolve().parents[1] / "conf"
# (name, dataset, model): the three bundles measured
RUNS = (("digits/mlp", "digits", "mlp"), ("digits/cnn", "digits", "cnn"), ("breast_cancer/mlp", "breast_cancer", "mlp"))
CALLS = 40  # timed calls per variant per round (after warm-up)
WARMUP = 5
QUICK = {"epochs": 1, "repeat": 1, "calls": 10}
PREDICT_ROWS = 64
COLD_AIM_S = 0.5  # the aim for `keel predict` cold start on this machine
SIZE_AIM = 0.35  # int8 / fp32 file size, for models whose weights dominate the file


def machine() -> str:
    import onnx
    import onnxruntime
    import pandas
    import pandera
    import torch

    return (
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cpus | "
        f"python {platform.python_version()} | torch {torch.__version__} | onnxruntime {onnxruntime.__version__} | "
        f"onnx {onnx.__version__} | numpy {np.__version__} | pandas {pandas.__version__} | "
        f"pandera {pandera.__version__}"
    )


# --------------------------------------------------------------------------- 1. bundles


@dataclass
class Trained:
    """One trained run: its bundles (fp32 + dynamic int8, and the static int8 copy), data and eager model."""

    name: str
    dataset: str
    cfg: Any
    dynamic: Path  # bundle whose model.int8.onnx is the dynamic one
    static: Path  # copy whose model.int8.onnx is the static one
    datamodule: Any
    model: Any  # keel.export.onnx.InferenceModel of the checkpoint the bundle came from
    train_s: float
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)


def compose(dataset: str, model: str, output_dir: Path, epochs: int) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from keel.config import register_resolvers

    register_resolvers()
    overrides = [
        f"data={dataset}",
        f"model={model}",
        f"paths.output_dir={output_dir}",  # otherwise ${hydra:runtime.output_dir}: a Hydra app only
        f"paths.log_dir={output_dir.parent}",
        "logger=none",
        "callbacks.progress_bar.refresh_rate=0",
        f"trainer.max_epochs={epochs}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def quantize_options(cfg: Any, mode: str) -> Any:
    """conf/callbacks/quantize.yaml's options with ``mode``; the budget lifted so the model is kept."""
    from omegaconf import OmegaConf

    from keel.export.build import QuantizeOptions

    opts = {k: v for k, v in OmegaConf.to_container(cfg.callbacks.quantize, resolve=True).items()
            if k not in ("_target_", "bundle_dir")}
    return QuantizeOptions(**{**opts, "mode": mode, "max_accuracy_drop": 1.0})


def quantized_copy(src: Path, dst: Path, cfg: Any, datamodule: Any, mode: str) -> Path:
    from keel.export.build import add_int8

    shutil.copytree(src, dst)
    add_int8(dst, datamodule, quantize_options(cfg, mode))
    return dst


def train_bundles(root: Path, epochs: int) -> list[Trained]:
    from hydra.utils import instantiate

    from keel.export.bundle import read_manifest
    from keel.export.onnx import inference_model
    from keel.models import Classifier
    from keel.pipeline import train

    out = []
    for name, dataset, model in RUNS:
        run_dir = root / name.replace("/", "_")
        cfg = compose(dataset, model, run_dir, epochs)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the run summary: not part of the tables
            train(cfg)
        datamodule = instantiate(cfg.data)
        datamodule.setup()
        bundle = run_dir / "bundle"
        manifest = read_manifest(bundle)
        if manifest["models"].get("int8") and manifest["quantization"]["mode"] == "dynamic":
            dynamic = bundle  # what the run ships: `keel predict --int8` serves this one
        else:  # left out over the budget (or conf says static): make one to measure anyway
            dynamic = quantized_copy(bundle, run_dir / "bundle-dynamic", cfg, datamodule, "dynamic")
        static = quantized_copy(bundle, run_dir / "bundle-static", cfg, datamodule, "static")
        train_s = time.perf_counter() - start
        classifier = Classifier.load_from_checkpoint(
            manifest["source"]["checkpoint"], map_location="cpu", weights_only=True
        )
        t = Trained(name, dataset, cfg, dynamic, static, datamodule, inference_model(classifier), train_s)
        t.manifests = {"dynamic": read_manifest(dynamic), "static": read_manifest(static)}
        out.append(t)
    return out


def report_bundles(runs: list[Trained], epochs: int) -> dict[str, Any]:
    import torch

    from keel.export.runtime import session
    from keel.tasks import get_task

    print(f"\n[1] bundles: {epochs} epochs each (train + export + dynamic int8 in train(); static int8 by add_int8 "
          f"into a copy), {sum(r.train_s for r in runs):.1f} s in all")
    print(f"  {'model':<18} {'params':>8} {'fp32 bytes':>11} {'weights%':>9} {'dyn bytes':>10} {'dyn/fp32':>9} "
          f"{'static bytes':>13} {'static/fp32':>12}")
    summary: dict[str, Any] = {"size": {}, "acc_ok": True, "eager_ok": True}
    acc_rows = []
    for r in runs:
        fp32 = r.dynamic / "model.onnx"
        dyn, static = r.dynamic / "model.int8.onnx", r.static / "model.int8.onnx"
        b32, bdyn, bsta = (p.stat().st_size for p in (fp32, dyn, static))
        params = sum(p.numel() for p in r.model.parameters())
        tensors = params + sum(b.numel() for b in r.model.buffers())
        print(f"  {r.name:<18} {params:>8,} {b32:>11,} {4 * tensors / b32:>9.0%} {bdyn:>10,} {bdyn / b32:>9.2f} "
              f"{bsta:>13,} {bsta / b32:>12.2f}")
        summary["size"][r.name] = (bdyn / b32, bsta / b32)

        x, y = r.datamodule.split_arrays("test")
        with torch.inference_mode():
            eager = float((r.model(torch.from_numpy(x))[0].argmax(1).numpy() == y).mean())
        # (accuracy, rows) of each ONNX model: the task's test metrics, as export and add_int8 compute them
        task = get_task(r.manifests["dynamic"].get("task", "classification"))
        (acc32, rows), (accd, _), (accs, _) = (
            (m["test_acc"], m["test_rows"]) for m in (task.evaluate(session(p), x, y) for p in (fp32, dyn, static)))
        qd, qs = r.manifests["dynamic"]["quantization"], r.manifests["static"]["quantization"]
        summary["acc_ok"] &= (abs(acc32 - r.manifests["dynamic"]["metrics"]["fp32"]["test_acc"]) < 1e-9
                              and abs(accd - qd["test_acc_int8"]) < 1e-9 and abs(accs - qs["test_acc_int8"]) < 1e-9)
        # the parity gate allows no class disagreement on its rows; allow one row over the whole split
        summary["eager_ok"] &= abs(eager - acc32) <= 1.0 / rows + 1e-12
        budget = float(r.cfg.callbacks.quantize.max_accuracy_drop)
        keep = ["kept" if acc32 - a <= budget + 1e-12 else "out" for a in (accd, accs)]
        acc_rows.append((r.name, rows, eager, acc32, accd, accs, budget, keep))

    print("\n  accuracy on the test split (int8 change in accuracy points vs ORT fp32)")
    print(f"  {'model':<18} {'rows':>5} {'eager':>7} {'fp32':>7} {'dynamic':>7} {'Δ pts':>6} {'static':>7} "
          f"{'Δ pts':>6}  {'budget':>6} {'dyn/static':>11}")
    for name, rows, eager, acc32, accd, accs, budget, keep in acc_rows:
        print(f"  {name:<18} {rows:>5} {eager:>7.4f} {acc32:>7.4f} {accd:>7.4f} {100 * (accd - acc32):>+6.2f} "
              f"{accs:>7.4f} {100 * (accs - acc32):>+6.2f}  {100 * budget:>4.1f}pt {'/'.join(keep):>11}")
    print(f"  checks: recomputed accuracies match the manifests: {'yes' if summary['acc_ok'] else 'NO'}; "
          f"eager and ORT fp32 agree: {'yes' if summary['eager_ok'] else 'NO'}")
    return summary


# --------------------------------------------------------------------------- 2. latency


def timed(fn: Callable[[], Any], calls: int) -> list[float]:
    """Seconds of each of ``calls`` calls of ``fn``, after ``WARMUP`` untimed ones."""
    for _ in range(WARMUP):
        fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def batch_of(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) < n:
        x = np.concatenate([x] * (n // len(x) + 1))
    return np.ascontiguousarray(x[:n], dtype=np.float32)


def ort_round(paths: dict[str, Path], threads: int, x: np.ndarray, calls: int, first: int) -> dict[str, list[float]]:
    """One round of every ONNX Runtime variant on fresh sessions (gone when this returns),
    starting with variant number ``first``."""
    from keel.export.runtime import session

    sessions = {k: session(p, threads=threads) for k, p in paths.items()}
    keys = list(sessions)
    out = {}
    for k in keys[first % len(keys):] + keys[: first % len(keys)]:
        sess = sessions[k]
        feed = {sess.get_inputs()[0].name: x}
        out[k] = timed(lambda: sess.run(None, feed), calls)
    return out


def bench_latency(runs: list[Trained], rounds: int, calls: int, default_threads: int) -> dict[str, Any]:
    import torch

    settings = ((1, 1, "1"), (default_threads, 0, f"{default_threads}/auto"))  # (torch threads, ORT threads, label)
    print(f"\n[2] latency, ms per call: median of {rounds} rounds x {calls} calls (after {WARMUP} warm-up calls each); "
          f"a round times eager, then each ORT variant")
    print(f"  threads: 1 = torch.set_num_threads(1) and ORT intra_op_num_threads=1; {default_threads}/auto = torch's "
          f"default ({default_threads}) and ORT's (intra_op_num_threads=0: one per physical core)")
    print(f"  {'model':<18} {'threads':>7} {'batch':>5} {'eager':>8} {'ort fp32':>9} {'ort/eager':>10} "
          f"{'int8 dyn':>9} {'dyn/fp32':>9} {'int8 st':>8} {'st/fp32':>8}")
    results: dict[Any, dict[str, float]] = {}
    for r in runs:
        x_test, _ = r.datamodule.split_arrays("test")
        paths = {"fp32": r.dynamic / "model.onnx", "dyn": r.dynamic / "model.int8.onnx",
                 "static": r.static / "model.int8.onnx"}
        for torch_threads, ort_threads, label in settings:
            torch.set_num_threads(torch_threads)
            for batch in (1, 64):
                x = batch_of(x_test, batch)
                xt = torch.from_numpy(x)

                def eager() -> Any:
                    with torch.inference_mode():
                        return r.model(xt)

                times: dict[str, list[float]] = {"eager": [], "fp32": [], "dyn": [], "static": []}
                for i in range(rounds):
                    # Eager runs while no ORT session exists: an idle ORT thread pool keeps
                    # spinning, and on a few busy cores that stalls torch's threads (an artefact
                    # of timing both in one process, not what serving sees).
                    times["eager"] += timed(eager, calls)
                    for k, v in ort_round(paths, ort_threads, x, calls, i).items():
                        times[k] += v
                ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                results[(r.name, label, batch)] = ms
                print(f"  {r.name:<18} {label:>7} {batch:>5} {ms['eager']:>8.3f} {ms['fp32']:>9.3f} "
                      f"{ms['fp32'] / ms['eager']:>10.2f} {ms['dyn']:>9.3f} {ms['dyn'] / ms['fp32']:>9.2f} "
                      f"{ms['static']:>8.3f} {ms['static'] / ms['fp32']:>8.2f}")
    torch.set_num_threads(default_threads)
    return results


# --------------------------------------------------------------------------- 3. keel predict cold start

# Runs predict's steps in the order `keel predict` takes them, a timer around each; the heavy
# imports come first, one at a time, so each line is that package's own import cost (what it
# pulls in that the lines above did not). perf_counter is CLOCK_MONOTONIC, shared by all
# processes on Linux, so the parent also gets interpreter start (spawn -> first line) and exit.
CHILD = r"""
import time
marks = [time.perf_counter()]
steps = []
def mark(name):
    marks.append(time.perf_counter()); steps.append((name, marks[-1] - marks[-2]))
import sys
bundle_dir, path = sys.argv[1], sys.argv[2]
import numpy; mark("import numpy")
import onnxruntime; mark("import onnxruntime")
import keel.cli, keel.serve.bundle, keel.export.runtime
mark("import keel modules")
bundle = keel.serve.bundle.load_bundle(bundle_dir); mark("load bundle (manifest + sha256)")
data = bundle.read(path, "auto"); mark("read input (CSV: keel.serve.table, no pandas)")
x = bundle.encode(data, path); mark("contract check + encode")
sess = bundle.session; mark("ORT session creation")
_, probs = keel.export.runtime.run(sess, x); mark("run model")
import json
print(json.dumps({"first": marks[0], "last": marks[-1], "steps": steps, "rows": int(len(probs))}))
"""
WATCH = ("numpy", "onnxruntime", "pandas", "pyarrow", "pandera", "scipy", "yaml")  # first-import cost, -X importtime


def wall(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(perf_counter before the spawn, after the exit, the finished process)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    end = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"bench: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return start, end, proc


def first_imports(stderr: str) -> dict[str, float]:
    """Cumulative ms of the first import of each ``WATCH`` package in an ``-X importtime`` log
    (what importing it cost there, wherever in the tree it was first imported)."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        name = name.strip()
        if name in WATCH and name not in out:
            out[name] = int(cumulative) / 1e3
    return out


def bench_cold_start(runs: list[Trained], root: Path, n: int) -> dict[str, Any]:
    by_name = {r.name: r for r in runs}
    cases = []  # (label, bundle dir, input file)
    tensor = by_name["digits/mlp"]
    x, _ = tensor.datamodule.split_arrays("test")
    np.save(root / "digits.npy", np.ascontiguousarray(x[:PREDICT_ROWS]))
    cases.append(("digits/mlp (tensor)", tensor.dynamic, root / "digits.npy"))
    table = by_name["breast_cancer/mlp"]
    x, _ = table.datamodule.split_arrays("test")
    table.datamodule.contract.decode_features(x[:PREDICT_ROWS]).to_csv(root / "breast_cancer.csv", index=False)
    cases.append(("breast_cancer/mlp (table)", table.dynamic, root / "breast_cancer.csv"))
    labels = [label for label, _, _ in cases]

    py = [sys.executable]
    base: list[float] = []
    walls: dict[str, list[float]] = {label: [] for label in labels}
    parts: dict[str, dict[str, list[float]]] = {label: {} for label in labels}
    for _ in range(n):  # every command once per pass: load on the machine hits them alike
        start, end, _ = wall([*py, "-c", "pass"], root)
        base.append(end - start)
        for label, bundle, inp in cases:
            start, end, proc = wall([*py, "-m", "keel.cli", "predict", str(bundle), str(inp)], root)
            lines = [ln for ln in proc.stdout.splitlines() if ln[:1].isdigit()]
            if len(lines) != PREDICT_ROWS:
                raise RuntimeError(f"bench: keel predict printed {len(lines)} rows for {PREDICT_ROWS} inputs")
            walls[label].append(end - start)
            start, end, proc = wall([*py, "-c", CHILD, str(bundle), str(inp)], root)
            result = json.loads(proc.stdout.splitlines()[-1])
            if result["rows"] != PREDICT_ROWS:
                raise RuntimeError(f"bench: the timed child predicted {result['rows']} rows for {PREDICT_ROWS} inputs")
            # `keel predict` itself ends with os._exit after a successful run (keel.cli.console_main)
            timeline = [("interpreter start (spawn -> 1st line)", result["first"] - start), *result["steps"],
                        ("exit (teardown; predict skips it)", end - result["last"]), ("= child process wall", end - start)]
            for step, seconds in timeline:
                parts[label].setdefault(step, []).append(seconds)
    imports = {}
    for label, bundle, inp in cases:
        _, _, proc = wall([*py, "-X", "importtime", "-m", "keel.cli", "predict", str(bundle), str(inp)], root)
        imports[label] = first_imports(proc.stderr)

    med_base = statistics.median(base)
    print(f"\n[3] keel predict cold start: `python -m keel.cli predict BUNDLE INPUT` ({PREDICT_ROWS} test rows, fp32), "
          f"subprocess wall time, {n} runs")
    print(f"  {'command':<32} {'best s':>7} {'median s':>9} {f'aim {COLD_AIM_S} s':>9} {'x python -c pass':>17}")
    print(f"  {'python -c pass (baseline)':<32} {min(base):>7.3f} {med_base:>9.3f} {'':>9} {1.0:>17.1f}")
    summary: dict[str, Any] = {}
    for label, _, inp in cases:
        w = walls[label]
        med = statistics.median(w)
        summary[label] = (min(w), med)
        print(f"  {label + ' ' + inp.suffix:<32} {min(w):>7.3f} {med:>9.3f} {'met' if med < COLD_AIM_S else 'over':>9} "
              f"{med / med_base:>17.1f}")

    print(f"\n  where the time goes: predict's steps, each timed, in a child process (median of {n} runs, ms; % of "
          f"the child's wall)")
    print(f"  {'step':<40}" + "".join(f" {label:>26} {'%':>4}" for label in labels))
    order = max((list(parts[label]) for label in labels), key=len)  # the table case has every step
    for step in order:
        cells = ""
        for label in labels:
            if step in parts[label]:
                ms = statistics.median(parts[label][step]) * 1e3
                share = ms / (statistics.median(parts[label]["= child process wall"]) * 1e3)
                cells += f" {ms:>26.1f} {share:>4.0%}"
            else:
                cells += f" {'-':>26} {'':>4}"
        print(f"  {step:<40}{cells}")
    print(f"  {'(keel predict wall, from the table above)':<40}"
          + "".join(f" {summary[label][1] * 1e3:>26.1f} {'':>4}" for label in labels))
    for label in labels:
        found = ", ".join(f"{name} {ms:.0f}" for name, ms in imports[label].items())
        print(f"  -X importtime of the real command, {label}: first import of (cumulative ms, 1 run): {found}")
    return summary


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each model (enough for a sane one)")
    parser.add_argument("--repeat", type=int, default=5,
                        help=f"latency: rounds of {CALLS} calls per variant; cold start: 2 x this many runs")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['epochs']} epoch, repeat {QUICK['repeat']}, {QUICK['calls']} calls")
    args = parser.parse_args()
    calls = CALLS
    if args.quick:
        args.epochs, args.repeat, calls = QUICK["epochs"], QUICK["repeat"], QUICK["calls"]
    if args.epochs < 1 or args.repeat < 1:
        parser.error("expected --epochs >= 1 and --repeat >= 1")

    import torch

    default_threads = torch.get_num_threads()  # before anything changes it
    # Keep the tables readable: Lightning's banners and model summary (its import sets their
    # level, so after it), keel's per-run notes (drift of the small splits, int8 kept), the
    # quantizer's hints, and a deprecation inside Lightning (also ignored in pyproject).
    import lightning  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "keel", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )

    print(machine())
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keel-bench-inference-") as tmp:
        root = Path(tmp)
        runs = train_bundles(root, args.epochs)
        sizes = report_bundles(runs, args.epochs)
        latency = bench_latency(runs, args.repeat, calls, default_threads)
        cold = bench_cold_start(runs, root, 2 * args.repeat)

    worst = max(max(s) for s in sizes["size"].values())
    print("\nheadline:")
    print("  int8/fp32 size: " + ", ".join(f"{k} dyn {d:.3f} static {s:.3f}" for k, (d, s) in sizes["size"].items())
          + f" (aim <= {SIZE_AIM}: {'met' if worst <= SIZE_AIM else 'not met'})")
    for label in ("1", f"{default_threads}/auto"):
        parts = []
        for batch in (1, 64):
            cells = [ms for (_, lab, b), ms in latency.items() if lab == label and b == batch]
            ort = [c["fp32"] / c["eager"] for c in cells]
            dyn = [c["dyn"] / c["fp32"] for c in cells]
            sta = [c["static"] / c["fp32"] for c in cells]
            parts.append(f"batch {batch}: ort/eager {min(ort):.2f}-{max(ort):.2f}, "
                         f"dyn/fp32 {min(dyn):.2f}-{max(dyn):.2f}, static/fp32 {min(sta):.2f}-{max(sta):.2f}")
        print(f"  latency ratios over the 3 models, {label} thread(s): " + "; ".join(parts))
    print("  keel predict cold start (median): " + ", ".join(f"{k} {med:.3f} s" for k, (_, med) in cold.items())
          + f" (aim < {COLD_AIM_S} s)")
    print(f"  total bench time {time.perf_counter() - started:.0f} s; load average (1 min) {load_start:.2f} at the "
          f"start, {os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} cpus (other load skews the multi-thread "
          f"rows most)")


if __name__ == "__main__":
    main()
