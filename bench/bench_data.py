"""Cost of data contracts and drift: a large synthetic table, and their share of an epoch on the embedded datasets.

Usage: ``python bench/bench_data.py [--rows N] [--cols C] [--repeat R] [--quick]``.

1. Synthetic table, N rows x C numeric columns (float64, every 5th column int64, ~1% NaN in
   the nullable ones) plus a label column: ``TableContract.check`` on the clean frame (its
   vectorized per-column tests decide) and on a copy with 1% of rows out of range (the pandera
   schema, lazy, collecting failure cases),
   ``TensorContract.check`` on the same values as a float32 ``(N, C)`` array, and drift
   (``reference_stats`` + ``compare`` + ``shared_rows``) between the two halves. Each step is
   the best of R runs; ``x baseline`` divides it by a plain numpy range test over the same
   float64 values, measured in this process (the machine is shared: ratios travel, seconds
   don't). The headline is ``check + drift`` (clean check + the three drift steps).
2. Embedded datasets (digits, breast cancer; configs composed from conf/ as ``train.py``
   does): seconds spent in the contract checks of every split and in the drift step of
   ``setup``, against one training epoch (train + validation) of the default model, measured
   after a warm-up epoch; best of 3 x R runs (short steps: one reading is mostly noise).
   ``check/epoch`` and ``drift/epoch`` are the share of an epoch.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keel.data.contract import TensorContract
from keel.data.drift import DriftThresholds, compare, reference_stats, shared_rows
from keel.data.in_memory import SPLITS
from keel.data.table_contract import TableContract

CONF = Path(__file__).resolve().parents[1] / "conf"
DATASETS = ("digits", "breast_cancer")
QUICK = {"rows": 20_000, "cols": 8, "repeat": 1}
EMBEDDED_REPEAT = 3  # part [2] takes the best of this many x --repeat runs


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def machine() -> str:
    import pandera
    import torch

    return (
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cpus | "
        f"python {platform.python_version()} | torch {torch.__version__} | numpy {np.__version__} | "
        f"pandas {pd.__version__} | pandera {pandera.__version__}"
    )


# --------------------------------------------------------------------------- 1. synthetic table


def make_table(rows: int, cols: int, seed: int) -> tuple[pd.DataFrame, TableContract, np.ndarray, np.ndarray]:
    """The frame, a contract it satisfies, the low/high bound per column, and the rows planted
    as duplicates (1% of the second half copied from the first: leakage for ``shared_rows``)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, cols))
    specs: dict[str, dict[str, Any]] = {}
    lo, hi = np.full(cols, -1e3), np.full(cols, 1e3)
    for j in range(cols):
        if j % 5 == 0:  # integer columns: never null
            values[:, j] = np.round(values[:, j] * 10)
            specs[f"f{j:02d}"] = {"dtype": "int64", "nullable": False, "min": -1000, "max": 1000}
        elif j % 3 == 0:  # nullable float columns, ~1% missing
            values[rng.random(rows) < 0.01, j] = np.nan
            specs[f"f{j:02d}"] = {"dtype": "float64", "nullable": True, "min": -1e3, "max": 1e3}
        else:
            specs[f"f{j:02d}"] = {"dtype": "float64", "nullable": False, "min": -1e3, "max": 1e3}
    half = rows // 2
    n_dup = (rows - half) // 100
    dup = half + rng.choice(rows - half, n_dup, replace=False)
    values[dup] = values[rng.choice(half, n_dup, replace=False)]
    labels = rng.integers(0, 3, rows)
    frame = {
        name: values[:, j].astype(np.int64) if spec["dtype"] == "int64" else values[:, j]
        for j, (name, spec) in enumerate(specs.items())
    }
    frame["label"] = labels
    df = pd.DataFrame(frame)
    contract = TableContract.from_dict({"name": "synthetic", "target": "label", "classes": [0, 1, 2], "columns": specs})
    return df, contract, lo, hi


def with_violations(df: pd.DataFrame, contract: TableContract, fraction: float, seed: int) -> tuple[pd.DataFrame, int]:
    """A copy of ``df`` where ``fraction`` of the rows have one float feature far out of range."""
    rng = np.random.default_rng(seed + 1)
    bad = df.copy()
    floats = [c.name for c in contract.columns if c.dtype == "float64"]
    rows = rng.choice(len(df), max(1, int(len(df) * fraction)), replace=False)
    which = rng.integers(0, len(floats), rows.size)
    for k, name in enumerate(floats):
        col = bad[name].to_numpy(copy=True)
        col[rows[which == k]] = 1e6
        bad[name] = col
    return bad, int(rows.size)


def bench_synthetic(rows: int, cols: int, repeat: int, seed: int) -> None:
    df, contract, lo, hi = make_table(rows, cols, seed)
    bad, planted = with_violations(df, contract, 0.01, seed)
    names = contract.feature_names
    values = df[names].to_numpy(dtype=np.float64)
    x32 = values.astype(np.float32)
    y = df["label"].to_numpy()
    tensor_contract = TensorContract.from_dict(
        {"name": "synthetic", "shape": [cols], "dtype": "float32", "range": [-1e3, 1e3], "finite": False,
         "classes": [0, 1, 2]}
    )
    half = rows // 2
    ref_cols = {n: values[:half, j] for j, n in enumerate(names)}
    cur_cols = {n: values[half:, j] for j, n in enumerate(names)}
    kinds = {n: "numeric" for n in names}
    thresholds = DriftThresholds()

    def baseline() -> bool:
        ok = ((values >= lo) & (values <= hi)) | np.isnan(values)
        return bool(ok.all())

    contract.check(df.head(1000), "warm-up")  # first call imports pandera
    t_base, _ = best_of(repeat, baseline)
    t_check, clean = best_of(repeat, lambda: contract.check(df, "all"))
    t_bad, dirty = best_of(repeat, lambda: contract.check(bad, "all"))
    t_tensor, tclean = best_of(repeat, lambda: tensor_contract.check(x32, y, "all"))
    t_stats, stats = best_of(repeat, lambda: reference_stats(ref_cols, kinds, bins=thresholds.bins))
    t_cmp, drift = best_of(repeat, lambda: compare(stats, cur_cols, thresholds))
    t_rows, leak = best_of(repeat, lambda: shared_rows(values[:half], values[half:]))

    print(f"\n[1] synthetic table: {rows:,} rows x {cols} numeric columns + label, best of {repeat}")
    print(f"  {'step':<40} {'rows':>11} {'seconds':>9} {'rows/s':>14} {'x baseline':>11}")
    steps = (
        ("baseline: numpy range test (float64)", rows, t_base),
        ("TableContract.check (clean: vectorized)", rows, t_check),
        ("TableContract.check (1% violate: pandera)", rows, t_bad),
        ("TensorContract.check (float32 array)", rows, t_tensor),
        ("drift: reference_stats (1st half)", half, t_stats),
        ("drift: compare (2nd half)", rows - half, t_cmp),
        ("drift: shared_rows (both halves)", rows, t_rows),
    )
    for step, n, seconds in steps:
        print(f"  {step:<40} {n:>11,} {seconds:>9.3f} {n / seconds:>14,.0f} {seconds / t_base:>11.1f}")
    t_drift = t_stats + t_cmp + t_rows
    total = t_check + t_drift
    for step, seconds in (("drift total", t_drift), ("check + drift (headline)", total)):
        print(f"  {step:<40} {rows:>11,} {seconds:>9.3f} {rows / seconds:>14,.0f} {seconds / t_base:>11.1f}")
    flagged = len(dirty.failing_rows())
    print(
        f"  checks: clean table ok={clean.ok}, tensor ok={tclean.ok}; violating table: {flagged:,} rows flagged "
        f"(planted {planted:,}); drift status {drift['status']}; shared rows {leak['count']:,} "
        f"(planted {(rows - half) // 100:,})"
    )
    print(f"  headline: check + drift on {rows:,} x {cols} = {total:.2f} s (issue target: a few seconds)")


# --------------------------------------------------------------------------- 2. embedded datasets


def compose(dataset: str, output_dir: str) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from keel.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=[f"data={dataset}"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir  # otherwise ${hydra:runtime.output_dir}: a Hydra app only
    return cfg


def timed_setup(cfg: Any) -> tuple[Any, float, float, float]:
    """A fresh DataModule, set up; seconds in its contract checks, its drift step and all of setup."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    spent = {"check": 0.0, "drift": 0.0}
    calls = {"check": 0, "drift": 0}

    def timer(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[key] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return wrapped

    # On the instance, not in src: _check runs contract.check on one split (called per split),
    # _compute_drift builds the drift columns and calls drift_report.
    dm._check = timer("check", dm._check)
    dm._compute_drift = timer("drift", dm._compute_drift)
    start = time.perf_counter()
    dm.setup("fit")
    elapsed = time.perf_counter() - start
    if calls["check"] != len(SPLITS) or calls["drift"] != 1:
        raise RuntimeError(
            f"bench: setup made {calls['check']} _check and {calls['drift']} _compute_drift calls, expected "
            f"{len(SPLITS)} and 1: InMemoryDataModule.setup changed; update timed_setup in bench/bench_data.py"
        )
    return dm, spent["check"], spent["drift"], elapsed


def fit_one_epoch(cfg: Any, dm: Any) -> float:
    from hydra.utils import instantiate

    from keel.fit import build_model

    model = build_model(cfg, dm)
    trainer = instantiate(
        cfg.trainer,
        max_epochs=1,
        min_epochs=1,
        devices=1,
        num_sanity_val_steps=0,  # one epoch exactly: train + validation, no sanity batches
        callbacks=[],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start


def bench_embedded(repeat: int) -> None:
    import lightning as L

    rows_out = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        for dataset in DATASETS:
            cfg = compose(dataset, tmp)
            timed_setup(cfg)  # warm-up: imports, sklearn's file cache
            t_check = t_drift = t_setup = float("inf")
            for _ in range(repeat):
                dm, c, d, s = timed_setup(cfg)
                t_check, t_drift, t_setup = min(t_check, c), min(t_drift, d), min(t_setup, s)
            L.seed_everything(cfg.seed, verbose=False)
            fit_one_epoch(cfg, dm)  # warm-up epoch
            t_epoch, _ = best_of(repeat, lambda: fit_one_epoch(cfg, dm))
            sizes = dm.split_sizes()
            rows_out.append((dataset, sizes, t_check, t_drift, t_setup, t_epoch))

    model = cfg.model.net._target_.rsplit(".", 1)[-1].lower()
    epochs = int(cfg.trainer.max_epochs)
    print(f"\n[2] embedded datasets: contract check and drift in setup vs one epoch of the default model "
          f"({model}), best of {repeat}")
    print(
        f"  {'dataset':<14} {'train/val/test':>15} {'check s':>8} {'drift s':>8} {'setup s':>8} {'epoch s':>8} "
        f"{'check/epoch':>12} {'drift/epoch':>12} {'(c+d)/run':>10} {'check rows/s':>13}"
    )
    for dataset, sizes, t_check, t_drift, t_setup, t_epoch in rows_out:
        split = f"{sizes['train']}/{sizes['val']}/{sizes['test']}"
        n = sum(sizes.values())
        print(
            f"  {dataset:<14} {split:>15} {t_check:>8.4f} {t_drift:>8.4f} {t_setup:>8.4f} {t_epoch:>8.3f} "
            f"{t_check / t_epoch:>12.2%} {t_drift / t_epoch:>12.2%} {(t_check + t_drift) / (epochs * t_epoch):>10.2%} "
            f"{n / t_check:>13,.0f}"
        )
    print(f"  setup runs once per run: (c+d)/run = (check + drift) / (trainer.max_epochs={epochs} x epoch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs of each step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['rows']:,} rows x {QUICK['cols']} columns, repeat {QUICK['repeat']}")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.cols, args.repeat = QUICK["rows"], QUICK["cols"], QUICK["repeat"]
    if args.rows < 2 or args.cols < 2 or args.repeat < 1:
        parser.error("expected --rows >= 2, --cols >= 2 (column 0 is an int, the rest mostly floats) and --repeat >= 1")

    # Keep the tables readable: Lightning's banner lines (its import sets their level, so after
    # it), keel's per-setup drift notes (the small embedded splits drift by sampling noise) and
    # a deprecation inside Lightning itself (also ignored in pyproject's pytest config).
    import lightning  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "keel"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )

    print(machine())
    bench_synthetic(args.rows, args.cols, args.repeat, args.seed)
    # An epoch of the embedded data takes ~0.1 s, so other load on the machine dominates a
    # single reading; these steps are cheap enough to take the best of more runs.
    bench_embedded(EMBEDDED_REPEAT * args.repeat)


if __name__ == "__main__":
    main()
