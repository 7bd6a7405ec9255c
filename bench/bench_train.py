"""Training throughput: keel's loop vs a hand-written PyTorch loop, DataLoader settings, torch.compile.

Usage: ``python bench/bench_train.py [--epochs N] [--rows R] [--rounds K] [--threads T]
[--image-rows I] [--table-rows T2] [--real-epochs E] [--accelerator cpu|gpu]
[--parts real,loop,loader,compile] [--quick]``.

Everything happens in one process, in a temporary directory that is deleted at the end. Configs
are composed from ``conf/`` as ``train.py`` composes them, and keel's side is built from the
objects ``keel.fit`` builds: the DataModule (``instantiate(cfg.data)``), the LightningModule
(``keel.fit.build_model``) and a ``Trainer`` from ``cfg.trainer`` with the callbacks of
``callbacks=training`` (progress bar, throughput, TensorBoard views) plus the two that
``keel.fit`` adds to every run (NaN guard, RNG state), ``logger=none``. Left out, because they are
not per-step work and need validation: the checkpoint, early-stopping, LR-monitor and per-epoch
summary callbacks and the validation loop itself (``limit_val_batches=0``). An epoch is timed from one
``on_train_epoch_start`` to the next (or to ``on_train_end``): every step, the epoch-end metric
computation, the scheduler and the loader's start. Samples/s are training rows per second.

0. Realistic cases (the workloads keel is judged on; target keel/hand >= 0.97): ``model=resnet``
   (1.23M parameters) on I synthetic 3x32x32 images in [0, 255], 10 classes (a bench-local
   ``InMemoryDataModule`` whose ``load()`` draws them; contract as ``data=digits`` with shape
   [3, 32, 32]; batch 128), and ``model=mlp model.net.hidden=[1024,1024]`` (1.1M parameters) on a
   synthetic table of T2 rows (``data=csv``, Parquet; batch 256). Each epoch is a fixed number of
   steps (``trainer.limit_train_batches``; the hand loop stops after as many batches) so that the
   ResNet's ~1 s CPU steps fit in minutes; the loops take turns epoch by epoch as in [1] (keel,
   the tutorial loop, ``hand*``), the median of E epochs after 1 warm-up. ``ms/step`` is the
   median epoch over its steps. keel/hand there is what a user of keel pays for the framework.
1. keel vs hand on toy cases (informational: keel/hand ~1.0 in the median is accepted here):
   ``model=mlp`` and ``model=cnn`` on the embedded digits (``data=digits``) and
   ``model=mlp`` on a synthetic table of R rows (``data=csv``, a Parquet file written to the
   temporary directory). The hand-written loop is the one the PyTorch tutorials teach: a
   ``DataLoader`` over a ``TensorDataset`` of the same train split (``shuffle=True``, per-row
   ``__getitem__`` + collate), the same architecture (the net and its input preprocessing,
   freshly initialised), ``torch.optim.Adam`` with the config's learning rate, cross-entropy,
   the same batch size, in the same process (same thread count). The two alternate epoch by
   epoch: a callback runs one hand epoch just before each keel epoch, so load on the shared
   machine hits both alike. After one warm-up epoch each, the median over N epochs (N/2 for the
   table, whose epochs are ~50x longer). ``+us/step`` is what keel adds to each step (epoch-end
   work spread over the steps): the difference of the two median epochs, per step. keel's side
   runs what ``train.py`` runs, so it draws whole batches by tensor indexing, steps the
   optimizer its config resolves to (``optimizer.fused=auto``: torch's fused kernel) and, on the
   CPU, keeps conv weights in channels-last layout (``model.channels_last=auto``); the tutorial
   loop does none of these. A third loop, ``hand*``, is the hand loop with keel's three choices
   (taking its turn each epoch too): keel against it shows the framework's own cost.
   ``floor/hand``: a bare LightningModule (the same net, cross-entropy, keel's optimizer and
   data path; no metrics, callbacks, logging or progress bar) in Lightning's Trainer, in a second
   fit that takes turns with the tutorial loop the same way: the most a module run by Lightning's
   loop can reach. ``keel/floor`` is keel's cost above it.
2. DataLoader settings on digits (``model=mlp``): keel's default train loader (whole-batch tensor
   indexing, no workers) against ``data.num_workers=2`` (persistent workers, as keel sets
   them), 2 workers that are not persistent (a new pair each epoch), the per-row
   ``__getitem__`` + collate loader (no workers, and 2 persistent workers) and, with an
   accelerator, ``data.pin_memory=true``. One fit trains through the settings in turn, one
   epoch each, so neighbouring epochs see the same load; after each setting's warm-up epoch,
   the median of N epochs. ``loader only`` iterates each train loader alone, in turn likewise.
3. ``model.compile=true`` vs eager (digits, mlp and cnn): K rounds of fits alternating eager and
   compiled (N/K epochs each after a warm-up epoch), the same two modules throughout (a compiled
   module stays compiled between fits). Compile time is the compiled model's first epoch minus
   its median epoch, from empty Inductor/Triton caches (a first run); it includes the
   recompilation for the last, smaller batch of the epoch.

Both loops use ``--threads`` torch threads (default: torch's, one per core). On a machine shared
with other work, 2 threads on 2 busy cores can stall for whole scheduler slices at every
parallel region: compare ratios, and use ``--threads 1`` when the machine is busy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONF = Path(__file__).resolve().parents[1] / "conf"
# (name, dataset, model) of part [1]; "table" is the synthetic file
CASES = (("digits/mlp", "digits", "mlp"), ("digits/cnn", "digits", "cnn"), ("table/mlp", "table", "mlp"))
TABLE_NUMERIC, TABLE_CATEGORIES, TABLE_CLASSES = 16, ("a", "b", "c", "d", "e"), 4
QUICK = {"epochs": 2, "rows": 3_000, "parts": ("real", "loop", "loader"), "image_rows": 600, "table_rows": 3_000,
         "real_epochs": 2}
# part [0]: (name, dataset, model, batch, steps per timed epoch); "images" and "bigtable" are synthetic
REAL_CASES = (("images/resnet", "images", "resnet", 128, 10), ("table/mlp-1024", "bigtable", "mlp", 256, 150))
REAL_STEPS_QUICK = 3
IMAGE_SHAPE, IMAGE_CLASSES = (3, 32, 32), 10
REAL_TARGET = 0.97  # the aim for keel/hand on the realistic cases
TABLE_EPOCH_DIVISOR = 2  # part [1] times --epochs / 2 epochs of the table (a median of 10 by default)
COMPILE_MODELS = ("mlp", "cnn")
# trainer.accelerator of every config (--accelerator); "auto" would put keel on a GPU and the hand loop not
ACCELERATOR = ["cpu"]


def machine() -> str:
    import lightning
    import torch
    import torchmetrics

    gpu = f" | gpu {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cpus{gpu} | "
        f"python {platform.python_version()} | torch {torch.__version__} | lightning {lightning.__version__} | "
        f"torchmetrics {torchmetrics.__version__} | numpy {np.__version__} | torch threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}) | both loops train on: {ACCELERATOR[0]}"
    )


# --------------------------------------------------------------------------- configs, data


def write_table(path: Path, rows: int, seed: int = 0) -> Path:
    """A synthetic classification table: ``TABLE_NUMERIC`` float columns, two category
    columns and a 4-class ``label`` that depends on both (so the model has something to learn)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, TABLE_NUMERIC))
    cats = rng.integers(0, len(TABLE_CATEGORIES), size=(rows, 2))
    # the label: a linear score of 4 numeric columns, shifted by the first category column
    shift = np.eye(TABLE_CLASSES, len(TABLE_CATEGORIES))[:, cats[:, 0]].T
    score = x[:, :4] @ rng.normal(size=(4, TABLE_CLASSES)) + shift
    df = pd.DataFrame(x, columns=[f"x{i}" for i in range(TABLE_NUMERIC)])
    for j in range(2):
        df[f"c{j}"] = np.asarray(TABLE_CATEGORIES)[cats[:, j]]
    df["label"] = score.argmax(axis=1)
    df.to_parquet(path, index=False)
    return path


def compose(dataset: str, model: str, root: Path, table: Path | None, extra: Sequence[str] = ()) -> Any:
    """The training config as ``python train.py data=... model=... logger=none callbacks=training``
    composes it, minus the checkpoint, early-stopping, LR-monitor and epoch-summary callbacks (they
    act on validation, which the bench does not run), on one device of ``ACCELERATOR``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from keel.config import register_resolvers

    register_resolvers()
    data = ["data=csv", f"data.path={table}", "data.target=label"] if dataset == "table" else [f"data={dataset}"]
    overrides = [
        *data,
        f"model={model}",
        "logger=none",
        "callbacks=training",
        "~callbacks.model_checkpoint",
        "~callbacks.early_stopping",
        "~callbacks.lr_monitor",
        "~callbacks.epoch_summary",
        f"paths.output_dir={root / 'run'}",  # otherwise ${hydra:runtime.output_dir}: a Hydra app only
        f"paths.log_dir={root}",
        f"trainer.accelerator={ACCELERATOR[0]}",
        "trainer.devices=1",
        *extra,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def datamodule(cfg: Any) -> Any:
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm


# --------------------------------------------------------------------------- timing


def sync() -> None:
    """Wait for queued GPU work, so that a clock reading covers it (a no-op on CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def epoch_clock(*before_epoch: Callable[[], float]) -> Any:
    """A callback that records each training epoch's wall time (``seconds``), from one
    ``on_train_epoch_start`` to the next or to ``on_train_end``; with ``before_epoch`` callables,
    it first runs each of them (other loops' epochs, outside the clock) and records what the
    i-th returns in ``other[i]``."""
    import lightning as L

    class EpochClock(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.other: list[list[float]] = [[] for _ in before_epoch]
            self._start: float | None = None

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            sync()
            now = time.perf_counter()
            if self._start is not None:
                self.seconds.append(now - self._start)
            for run, record in zip(before_epoch, self.other):
                record.append(run())
            self._start = time.perf_counter()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            sync()
            if self._start is not None:
                self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    return EpochClock()


def fit(cfg: Any, dm: Any, model: Any, epochs: int, clock: Any, **trainer_kwargs: Any) -> None:
    """``trainer.fit`` for ``epochs`` epochs with the Trainer ``keel.fit`` builds (its
    callbacks, NaN guard and RNG state, the atomic checkpoint IO), no validation, ``clock`` first
    in the callback list (so its epoch start comes before the others')."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    from keel.callbacks import NanGuard, RngState
    from keel.checkpoints.write import AtomicCheckpointIO

    callbacks = [instantiate(node) for node in cfg.callbacks.values()] + [NanGuard(), RngState()]
    trainer = instantiate(
        cfg.trainer,
        callbacks=[clock, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        max_epochs=epochs,
        min_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the progress bar: drawn (its cost counts), not shown
        trainer.fit(model, datamodule=dm)


def steady(seconds: list[float], warmup: int = 1) -> list[float]:
    return seconds[warmup:]


def rate(rows: int, seconds: list[float]) -> float:
    return rows / statistics.median(seconds)


# --------------------------------------------------------------------------- 1. keel vs hand


class HandLoop:
    """The training loop the PyTorch tutorials teach, on the same rows, architecture and batch size.

    ``epoch()`` trains one epoch and returns its wall time. With ``fast=True``, the same loop
    over keel's data path, optimizer and layout: whole batches drawn by tensor indexing (keel's
    ``IndexBatchSampler``, shuffled, through a plain ``DataLoader``), the optimizer
    implementation keel's config resolves to (``keel.optim.build_optimizer``: torch's fused
    kernel under ``optimizer.fused=auto``) and
    conv weights in channels-last layout where ``model.channels_last=auto`` puts them. The
    gap between keel and this loop is what the framework itself (Lightning's loop, keel's module
    and callbacks) costs per step.
    """

    def __init__(self, cfg: Any, dm: Any, fast: bool = False, steps: int | None = None) -> None:
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        from keel.data import IndexBatchSampler
        from keel.fit import build_model
        from keel.models.channels_last import apply_channels_last
        from keel.optim import build_optimizer

        fresh = build_model(cfg, dm)  # the same net and preprocessing, new weights
        self.device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
        self.model = nn.Sequential(fresh.preprocess, fresh.net).to(self.device)
        x, y = (torch.from_numpy(a) for a in dm.split_arrays("train"))
        self.rows = len(y)
        batch = int(cfg.data.batch_size)
        if fast:  # keel's layout choice for conv weights (model.channels_last=auto)
            apply_channels_last(fresh.net, cfg.model.get("channels_last", "auto"), self.device.type, 1)
            self.optimizer = build_optimizer(cfg.optimizer, [{"params": list(self.model.parameters())}])
            sampler = IndexBatchSampler(len(y), batch, shuffle=True, seed=0)
            self.loader = DataLoader(TensorDataset(x, y), sampler=sampler, batch_size=None)  # keel's batch path
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(cfg.optimizer.lr))
            self.loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
        self.steps = steps  # batches per epoch (None: the whole split), as trainer.limit_train_batches

    def epoch(self) -> float:
        import torch.nn.functional as F

        start = time.perf_counter()
        self.model.train()
        for i, (x, y) in enumerate(self.loader):
            if self.steps is not None and i == self.steps:
                break
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
        sync()
        return time.perf_counter() - start


@dataclass
class LoopResult:
    name: str
    rows: int
    batch: int
    steps: int
    keel: list[float] = field(default_factory=list)  # seconds per steady epoch
    hand: list[float] = field(default_factory=list)
    fast: list[float] = field(default_factory=list)  # the hand loop over keel's data path and optimizer
    setup_s: float = 0.0
    floor: list[float] = field(default_factory=list)  # a bare LightningModule in Lightning's loop
    floor_hand: list[float] = field(default_factory=list)  # the hand loop's epochs beside it


def case_epochs(dataset: str, epochs: int) -> int:
    """Timed epochs of a part [1] case: the table's epochs are ~50x longer than digits'."""
    return max(1, epochs // TABLE_EPOCH_DIVISOR) if dataset == "table" else epochs


def floor_module(cfg: Any, dm: Any) -> Any:
    """The least a LightningModule can be: the same net and preprocessing (fresh weights, keel's
    layout), cross-entropy, keel's optimizer; no metrics, no logging, no hooks."""
    import lightning as L
    import torch.nn.functional as F

    from keel.fit import build_model
    from keel.models.channels_last import apply_channels_last
    from keel.optim import build_optimizer

    class Floor(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            fresh = build_model(cfg, dm)
            self.preprocess, self.net = fresh.preprocess, fresh.net
            device = "cuda" if cfg.trainer.accelerator == "gpu" else "cpu"
            apply_channels_last(self.net, cfg.model.get("channels_last", "auto"), device, 1)  # as hand* has it

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return F.cross_entropy(self.net(self.preprocess(x)), y)

        def configure_optimizers(self) -> Any:
            return build_optimizer(cfg.optimizer, [{"params": list(self.parameters())}])

    return Floor()


def fit_floor(cfg: Any, dm: Any, epochs: int, clock: Any) -> None:
    """``floor_module`` in the Trainer of ``cfg.trainer`` and nothing else: no callbacks but
    ``clock``, no logger, progress bar, checkpointing or validation."""
    from hydra.utils import instantiate

    model = floor_module(cfg, dm)
    trainer = instantiate(cfg.trainer, callbacks=[clock], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, use_distributed_sampler=False, max_epochs=epochs, min_epochs=1,
                          limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=dm.train_dataloader())  # the DataModule's val loader: not wanted


def bench_loop(root: Path, table: Path, epochs: int) -> list[LoopResult]:
    from keel.fit import build_model

    out = []
    for name, dataset, model_name in CASES:
        cfg = compose(dataset, model_name, root, table)
        start = time.perf_counter()
        dm = datamodule(cfg)
        setup_s = time.perf_counter() - start
        hand, fast = HandLoop(cfg, dm), HandLoop(cfg, dm, fast=True)
        clock = epoch_clock(hand.epoch, fast.epoch)
        fit(cfg, dm, build_model(cfg, dm), 1 + case_epochs(dataset, epochs), clock)
        batch = int(cfg.data.batch_size)
        res = LoopResult(name, hand.rows, batch, -(-hand.rows // batch), steady(clock.seconds),
                         steady(clock.other[0]), steady(clock.other[1]), setup_s)
        # Lightning's own floor, taking turns with the tutorial loop likewise (a second fit)
        floor_clock = epoch_clock(hand.epoch)
        fit_floor(cfg, dm, 1 + case_epochs(dataset, epochs), floor_clock)
        res.floor, res.floor_hand = steady(floor_clock.seconds), steady(floor_clock.other[0])
        out.append(res)
    return out


def report_loop(results: list[LoopResult], epochs: int, rows: int) -> dict[str, float]:
    print(f"\n[1] training throughput, samples/s: keel (Trainer + callbacks=training, logger=none) vs the hand-written "
          f"loop (DataLoader over a TensorDataset, Adam, cross-entropy); median of {epochs} epochs (the table: "
          f"{case_epochs('table', epochs)}) after 1 warm-up, the loops taking turns epoch by epoch")
    print(f"  table/mlp: synthetic table of {rows:,} rows ({TABLE_NUMERIC} numeric + 2 category columns, "
          f"{TABLE_CLASSES} classes), data=csv (Parquet); the train split is what both loops train on")
    print(f"  {'case':<11} {'train rows':>10} {'batch':>5} {'steps':>5} {'keel':>9} {'hand':>9} {'keel/hand':>9} "
          f"{'+us/step':>8} {'epoch ratios min-max':>21} {'hand*':>9} {'keel/hand*':>10} {'+us/step':>8} "
          f"{'floor/hand':>10} {'keel/floor':>10} {'setup s':>8}")
    ratios: dict[str, float] = {}
    for r in results:
        keel, hand, fast = rate(r.rows, r.keel), rate(r.rows, r.hand), rate(r.rows, r.fast)
        per_epoch = [h / k for k, h in zip(r.keel, r.hand)]
        ratios[r.name] = keel / hand
        extra_us = (statistics.median(r.keel) - statistics.median(r.hand)) / r.steps * 1e6
        fast_us = (statistics.median(r.keel) - statistics.median(r.fast)) / r.steps * 1e6
        # the floor ran in its own fit, beside its own hand epochs: compare each to its neighbour
        floor_hand = rate(r.rows, r.floor) / rate(r.rows, r.floor_hand)
        print(f"  {r.name:<11} {r.rows:>10,} {r.batch:>5} {r.steps:>5} {keel:>9,.0f} {hand:>9,.0f} {keel / hand:>9.2f} "
              f"{extra_us:>+8.0f} {min(per_epoch):>10.2f} - {max(per_epoch):<8.2f} {fast:>9,.0f} {keel / fast:>10.2f} "
              f"{fast_us:>+8.0f} {floor_hand:>10.2f} {keel / hand / floor_hand:>10.2f} {r.setup_s:>8.2f}")
    print("  keel and hand: training rows per second (median epoch); +us/step: keel's median epoch minus hand's, per "
          "step; epoch ratios: hand epoch time / keel epoch time of each adjacent pair; setup s: DataModule.setup "
          "(read, split, contract checks, drift), not in the figures")
    print("  hand*: the same hand loop over keel's data path and optimizer (whole-batch tensor indexing, the "
          "optimizer implementation optimizer.fused=auto resolves to, conv weights channels-last as "
          "model.channels_last=auto puts them): keel/hand* and its +us/step are what "
          "Lightning's loop, keel's module (epoch metrics) and its callbacks cost on top")
    print("  floor/hand: a bare LightningModule (the same net, cross-entropy, keel's optimizer and data path, no metrics, "
          "callbacks, logging or progress bar) in Lightning's Trainer vs the tutorial loop, in a "
          "second fit taking turns with it: the most any module run by Lightning's loop can reach. keel/floor = "
          "(keel/hand) / (floor/hand): what keel's module and callbacks cost above that floor")
    return ratios


# --------------------------------------------------------------------------- 0. realistic cases


def synthetic_images(cfg: Any, rows: int) -> Any:
    """The DataModule of ``cfg.data`` (``data=digits`` with the image overrides of ``compose_real``)
    whose ``load()`` draws ``rows`` synthetic 3x32x32 images: each class a smooth random colour
    template (4x4 blocks of 8x8 pixels), plus pixel noise, in [0, 255]; learnable, not trivial."""
    from omegaconf import OmegaConf

    from keel.data.in_memory import InMemoryDataModule

    class SyntheticImages(InMemoryDataModule):
        def load(self) -> tuple[np.ndarray, np.ndarray]:
            rng = np.random.default_rng(0)
            c, h, w = IMAGE_SHAPE
            templates = np.kron(rng.normal(size=(IMAGE_CLASSES, c, h // 8, w // 8)), np.ones((1, 1, 8, 8)))
            y = rng.integers(0, IMAGE_CLASSES, size=rows)
            x = 127.5 + 40.0 * templates[y] + rng.normal(scale=40.0, size=(rows, c, h, w))
            return np.clip(x, 0.0, 255.0).astype(np.float32), y.astype(np.int64)

        @property
        def source(self) -> str:
            return f"bench_train synthetic images ({rows:,})"

    kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    kwargs.pop("_target_")
    dm = SyntheticImages(**kwargs)
    dm.setup("fit")
    return dm


def compose_real(dataset: str, model: str, batch: int, root: Path, table: Path | None) -> Any:
    image = ["data.contract.shape=[3,32,32]", "data.contract.range=[0.0,255.0]", "data.contract.name=synthetic_images"]
    extra = [f"data.batch_size={batch}", "data.drift.enabled=false"]  # drift: setup only, not timed
    if dataset == "images":
        return compose("digits", model, root, None, [*image, *extra])
    return compose("table", model, root, table, [*extra, "model.net.hidden=[1024,1024]"])


@dataclass
class RealResult:
    name: str
    params: int
    rows: int
    batch: int
    steps: int
    keel: list[float]
    hand: list[float]
    fast: list[float]


def bench_real(root: Path, image_rows: int, table_rows: int, epochs: int, quick: bool) -> list[RealResult]:
    from keel.fit import build_model

    table = write_table(root / "table-real.parquet", table_rows, seed=1)
    out = []
    for name, dataset, model_name, batch, steps in REAL_CASES:
        steps = REAL_STEPS_QUICK if quick else steps
        cfg = compose_real(dataset, model_name, batch, root, table)
        dm = synthetic_images(cfg, image_rows) if dataset == "images" else datamodule(cfg)
        model = build_model(cfg, dm)
        hand, fast = HandLoop(cfg, dm, steps=steps), HandLoop(cfg, dm, fast=True, steps=steps)
        clock = epoch_clock(hand.epoch, fast.epoch)
        fit(cfg, dm, model, 1 + epochs, clock, limit_train_batches=steps)
        out.append(RealResult(name, sum(p.numel() for p in model.net.parameters()), hand.rows, batch, steps,
                              steady(clock.seconds), steady(clock.other[0]), steady(clock.other[1])))
    return out


def report_real(results: list[RealResult], epochs: int, image_rows: int, table_rows: int) -> dict[str, float]:
    print(f"\n[0] realistic cases, keel vs the hand-written loop: ms per training step (median epoch / its steps), "
          f"median of {epochs} epochs after 1 warm-up, the loops taking turns epoch by epoch")
    print(f"  images/resnet: {image_rows:,} synthetic 3x32x32 images, 10 classes, model=resnet; table/mlp-1024: "
          f"synthetic table of {table_rows:,} rows, data=csv (Parquet), model=mlp model.net.hidden=[1024,1024]")
    print(f"  {'case':<14} {'params':>9} {'train rows':>10} {'batch':>5} {'steps':>5} {'keel ms':>9} {'hand ms':>9} "
          f"{'keel/hand':>9} {'epoch ratios min-max':>21} {'hand* ms':>9} {'keel/hand*':>10}")
    ratios: dict[str, float] = {}
    for r in results:
        keel, hand, fast = (statistics.median(t) / r.steps * 1e3 for t in (r.keel, r.hand, r.fast))
        per_epoch = [h / k for k, h in zip(r.keel, r.hand)]
        ratios[r.name] = hand / keel  # samples/s keel / samples/s hand
        print(f"  {r.name:<14} {r.params:>9,} {r.rows:>10,} {r.batch:>5} {r.steps:>5} {keel:>9.2f} {hand:>9.2f} "
              f"{hand / keel:>9.2f} {min(per_epoch):>10.2f} - {max(per_epoch):<8.2f} {fast:>9.2f} {fast / keel:>10.2f}")
    print("  keel/hand: samples/s of keel over the tutorial loop's (hand ms / keel ms); hand*: the hand loop over "
          "keel's data path, optimizer and layout, as in [1]")
    return ratios


# --------------------------------------------------------------------------- 2. DataLoader settings


def train_tensors(dm: Any) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    x, y = (torch.from_numpy(a) for a in dm.split_arrays("train"))
    return TensorDataset(x, y)


def index_loader(dm: Any, workers: int, persistent: bool) -> Any:
    """keel's kind of train loader (whole-batch index sampler) with other worker settings."""
    from torch.utils.data import DataLoader

    from keel.data import IndexBatchSampler

    data = train_tensors(dm)
    sampler = IndexBatchSampler(len(data), dm.batch_size, shuffle=True, seed=dm.seed, pad=True)
    return DataLoader(data, sampler=sampler, batch_size=None, num_workers=workers, persistent_workers=persistent)


def per_row_loader(dm: Any, workers: int) -> Any:
    """The tutorial loader: per-row ``__getitem__`` + default collate."""
    from torch.utils.data import DataLoader

    return DataLoader(train_tensors(dm), batch_size=dm.batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)


def own_loader(root: Path, *overrides: str) -> Callable[[Any], Any]:
    """The train loader of a DataModule composed with ``overrides``: keel's own code path."""
    def make(_dm: Any) -> Any:
        return datamodule(compose("digits", "mlp", root, None, overrides)).train_dataloader()

    return make


def loader_settings(root: Path) -> list[tuple[str, Callable[[Any], Any]]]:
    """(label, dm -> train loader); the first is keel's default, the baseline of the ratios."""
    import torch

    settings = [
        ("keel default: index batches, 0 workers", lambda dm: dm.train_dataloader()),
        ("index batches, 2 workers (persistent)", own_loader(root, "data.num_workers=2")),
        ("index batches, 2 workers, not persistent", lambda dm: index_loader(dm, 2, False)),
        ("per-row getitem + collate, 0 workers", lambda dm: per_row_loader(dm, 0)),
        ("per-row getitem + collate, 2 workers", lambda dm: per_row_loader(dm, 2)),
    ]
    if torch.cuda.is_available():  # pinned memory speeds host-to-device copies; without an accelerator torch warns
        settings.insert(1, ("index batches, pin_memory=true", own_loader(root, "data.pin_memory=true")))
    return settings


def bench_loader(root: Path, epochs: int) -> tuple[list[tuple[str, float, float]], int]:
    """Train samples/s and loader-only samples/s of each setting, medians; the train rows.

    One fit trains through every setting in turn, one epoch each (Lightning asks for the train
    loader again every epoch: ``reload_dataloaders_every_n_epochs=1``), so neighbouring epochs
    compare the settings under the same load. Each setting's first epoch is its warm-up.
    """
    from keel.fit import build_model

    cfg = compose("digits", "mlp", root, None)
    dm = datamodule(cfg)
    settings = loader_settings(root)
    loaders = [make(dm) for _, make in settings]
    used: list[int] = []

    def rotating() -> Any:
        used.append(len(used) % len(loaders))
        return loaders[used[-1]]

    dm.train_dataloader = rotating  # on the instance: what Lightning calls at each epoch's start
    clock = epoch_clock()
    fit(cfg, dm, build_model(cfg, dm), len(loaders) * (1 + epochs), clock, reload_dataloaders_every_n_epochs=1)
    if len(used) != len(clock.seconds):
        raise RuntimeError(f"bench: {len(used)} train loaders for {len(clock.seconds)} epochs: Lightning no longer "
                           "reloads the loader every epoch; update bench_loader")
    train_s: list[list[float]] = [[] for _ in loaders]
    for i, seconds in zip(used, clock.seconds):
        train_s[i].append(seconds)
    loader_s: list[list[float]] = [[] for _ in loaders]
    for _ in range(1 + epochs):  # one pass of each setting in turn; the first round warms up
        for i, loader in enumerate(loaders):
            start = time.perf_counter()
            for _batch in loader:
                pass
            loader_s[i].append(time.perf_counter() - start)
    rows = len(dm.split_arrays("train")[1])
    return [(label, rate(rows, steady(t)), rate(rows, steady(s)))
            for (label, _), t, s in zip(settings, train_s, loader_s)], rows


def report_loader(results: list[tuple[str, float, float]], rows: int, epochs: int) -> str:
    print(f"\n[2] DataLoader settings, digits mlp through keel's Trainer ({rows:,} train rows, batch 64): one fit, the "
          f"settings taking turns epoch by epoch, median of {epochs} epochs each after 1 warm-up; loader only: the "
          f"train loader alone, median of {epochs} passes each, taking turns likewise")
    print(f"  {'setting':<42} {'train samples/s':>15} {'x default':>9} {'loader only':>12} {'x default':>9}")
    _, base_train, base_loader = results[0]
    for label, train, loader in results:
        print(f"  {label:<42} {train:>15,.0f} {train / base_train:>9.2f} {loader:>12,.0f} {loader / base_loader:>9.2f}")
    print("  not persistent: the 2 workers start again every epoch; every row's loader reloads each epoch "
          "(its cost is in every setting alike)")
    return "DataLoader settings, train samples/s x keel's default: " + ", ".join(
        f"{label.split(':')[0]} {train / base_train:.2f}" for label, train, _ in results[1:])


# --------------------------------------------------------------------------- 3. torch.compile


def bench_compile(root: Path, epochs: int, rounds: int) -> list[tuple[str, float, float, float, float]]:
    """(model, eager samples/s, compiled samples/s, compile s, eager first-epoch extra s) per model."""
    from keel.fit import build_model

    # A cold compile, as on a first run: Inductor's and Triton's on-disk caches start empty here
    # (a second run of the same model on the same machine reuses them and compiles much faster).
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor-cache")
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton-cache")

    per_round = max(1, epochs // rounds)
    out = []
    for model_name in COMPILE_MODELS:
        runs = {}
        for compiled in (False, True):
            cfg = compose("digits", model_name, root, None, (f"model.compile={str(compiled).lower()}",))
            dm = datamodule(cfg)
            runs[compiled] = (cfg, dm, build_model(cfg, dm), [], [])  # (..., all epochs, steady epochs)
        for _ in range(rounds):
            for compiled in (False, True):
                cfg, dm, model, first, seconds = runs[compiled]
                clock = epoch_clock()
                fit(cfg, dm, model, 1 + per_round, clock)
                first.append(clock.seconds[0])
                seconds += steady(clock.seconds)
        rows = len(runs[False][1].split_arrays("train")[1])
        eager_s, compiled_s = statistics.median(runs[False][4]), statistics.median(runs[True][4])
        compile_s = runs[True][3][0] - compiled_s
        eager_first = runs[False][3][0] - eager_s
        out.append((model_name, rows / eager_s, rows / compiled_s, compile_s, eager_first))
    return out


def report_compile(results: list[tuple[str, float, float, float, float]], epochs: int, rounds: int) -> str:
    print(f"\n[3] model.compile=true vs eager, digits, keel's Trainer: median epoch of {rounds} rounds x "
          f"{max(1, epochs // rounds)} epochs (after 1 warm-up each), eager and compiled fits alternating")
    print(f"  {'model':<6} {'eager samples/s':>15} {'compiled':>9} {'compiled/eager':>14} {'compile s':>9} "
          f"{'eager 1st-epoch extra s':>23}")
    for name, eager, compiled, compile_s, eager_first in results:
        print(f"  {name:<6} {eager:>15,.0f} {compiled:>9,.0f} {compiled / eager:>14.2f} {compile_s:>9.1f} "
              f"{eager_first:>23.2f}")
    print("  compile s: the compiled model's first epoch minus its median epoch: a cold compile (empty Inductor cache; "
          "the first model also pays Inductor's start-up), plus a recompile for the epoch's last, smaller batch")
    return "compiled/eager samples/s: " + ", ".join(f"{name} {compiled / eager:.2f} (compile {compile_s:.1f} s)"
                                                   for name, eager, compiled, compile_s, _ in results)


# --------------------------------------------------------------------------- main


def quiet() -> None:
    """Keep the tables readable: Lightning's banners and hints, keel's per-run notes (drift of
    small splits, inferred contract), a deprecation inside Lightning (also ignored in pyproject)."""
    import lightning  # noqa: F401  (its import sets its loggers' levels: lower them after it)
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    for name in ("lightning.pytorch", "lightning.fabric", "keel", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=PossibleUserWarning)  # "few workers", "small logging interval"
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs per case (after warm-up)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic table (part [1])")
    parser.add_argument("--image-rows", type=int, default=20_000, help="synthetic images of part [0]")
    parser.add_argument("--table-rows", type=int, default=200_000, help="rows of the synthetic table of part [0]")
    parser.add_argument("--real-epochs", type=int, default=4, help="timed epochs of part [0] (after warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of alternating eager/compiled fits (part [3])")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads of both loops (0: torch's default, one per core)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                        help="where both loops train (trainer.accelerator; the hand loop moves each batch there)")
    parser.add_argument("--parts", default="real,loop,loader,compile",
                        help="comma-separated: real ([0]), loop ([1]), loader ([2]), compile ([3])")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['epochs']} epochs, {QUICK['rows']:,} rows, parts "
                             f"{','.join(QUICK['parts'])}")
    args = parser.parse_args()
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if args.quick:
        args.epochs, args.rows, parts, args.rounds = QUICK["epochs"], QUICK["rows"], QUICK["parts"], 1
        args.image_rows, args.table_rows, args.real_epochs = QUICK["image_rows"], QUICK["table_rows"], QUICK["real_epochs"]
    unknown = set(parts) - {"real", "loop", "loader", "compile"}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; expected any of real, loop, loader, compile")
    if (args.epochs < 1 or args.rows < 100 or args.rounds < 1 or args.threads < 0 or args.real_epochs < 1
            or args.image_rows < 100 or args.table_rows < 100):
        parser.error("expected --epochs >= 1, --rows >= 100, --rounds >= 1, --threads >= 0, --real-epochs >= 1, "
                     "--image-rows >= 100 and --table-rows >= 100")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    ACCELERATOR[0] = args.accelerator
    quiet()
    print(machine())
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    headline = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-train-") as tmp:
        root = Path(tmp)
        if "real" in parts:
            real = report_real(bench_real(root, args.image_rows, args.table_rows, args.real_epochs, args.quick),
                               args.real_epochs, args.image_rows, args.table_rows)
            worst = min(real.values())
            headline.append("realistic keel/hand samples/s: " + ", ".join(
                f"{k} {math.floor(v * 100) / 100:.2f}" for k, v in real.items())
                + f" (target >= {REAL_TARGET}: {'met' if worst >= REAL_TARGET else 'not met'})")
        if "loop" in parts:
            table = write_table(root / "table.parquet", args.rows)
            ratios = report_loop(bench_loop(root, table, args.epochs), args.epochs, args.rows)
            # rounded down: a ratio shown as 1.00 is at least 1.0 (0.998 shows as 0.99)
            headline.append("toy keel/hand samples/s (no target; ~1.0 accepted): " + ", ".join(
                f"{k} {math.floor(v * 100) / 100:.2f}" for k, v in ratios.items()))
        if "loader" in parts:
            headline.append(report_loader(*bench_loader(root, args.epochs), args.epochs))
        if "compile" in parts:
            headline.append(report_compile(bench_compile(root, args.epochs, args.rounds), args.epochs, args.rounds))
    print("\nheadline:")
    for line in headline:
        print(f"  {line}")
    print(f"  total bench time {time.perf_counter() - started:.0f} s; load average (1 min) {load_start:.2f} at the "
          f"start, {os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
