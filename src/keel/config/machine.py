"""Check trainer settings against this machine before training starts.

torch is imported only when the answer needs it (a GPU-capable torch build and a GPU or
``auto`` accelerator): on CPU-only builds and for ``accelerator=cpu`` a refusal comes before
the ~2 s torch import, like the config checks.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from keel.config.validate import ConfigError
from keel.distributed import is_fsdp


@dataclass(frozen=True)
class Devices:
    """What this machine offers: CUDA GPUs (count), Apple MPS, and the torch build's name."""

    cuda: int
    mps: bool
    build: str


def torch_build_info() -> dict[str, Any] | None:
    """``torch/version.py``'s values (``__version__``, ``cuda``, ``hip``...) read without importing
    torch; None when the file cannot be found or read."""
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        return None
    try:
        tree = ast.parse((Path(locations[0]) / "version.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    values: dict[str, Any] = {}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and node.value is not None:
            try:
                values[target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values if "__version__" in values and "cuda" in values else None


def probe_devices(accelerator: str) -> Devices:
    """The devices ``accelerator`` could use, importing torch only when a GPU is possible."""
    info = torch_build_info()
    cpu_only = info is not None and not info.get("cuda") and not info.get("hip")
    if accelerator == "cpu" or (cpu_only and sys.platform != "darwin"):  # no GPU/MPS to look for
        build = f"torch {info['__version__']}, a CPU-only build" if info is not None else "torch"
        return Devices(0, False, build)
    import torch

    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    build = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ", a CPU-only build")
    return Devices(torch.cuda.device_count() if torch.cuda.is_available() else 0, mps, build)


def _count(devices: Any) -> int | None:
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    return None  # "auto" / -1: Lightning picks what exists


def check_machine(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for trainer settings this machine cannot run.

    Catches, with one message each: a GPU/MPS accelerator that is not there, more devices
    than the machine has, ``sync_batchnorm`` without GPUs, fp16 training on CPU, FSDP without
    CUDA GPUs.
    """
    t = cfg.trainer
    problems: list[str] = []
    accel = str(t.accelerator)
    devices = probe_devices(accel)
    has_cuda, has_mps, build = devices.cuda > 0, devices.mps, devices.build
    if accel in ("gpu", "cuda") and not has_cuda:
        problems.append(
            f"trainer.accelerator={accel}: no CUDA GPU is visible ({build}). "
            "Fix: trainer.accelerator=cpu (or auto), or install a CUDA build of torch (README: GPU install)."
        )
    if accel == "mps" and not has_mps:
        problems.append("trainer.accelerator=mps: Apple MPS is not available here. Fix: trainer.accelerator=cpu")
    on_gpu = accel in ("gpu", "cuda") or (accel == "auto" and has_cuda)
    on_cpu = accel == "cpu" or (accel == "auto" and not has_cuda and not has_mps)
    n = _count(t.devices)
    if n is not None:
        if on_gpu and has_cuda and n > devices.cuda:
            problems.append(
                f"trainer.devices={n}: only {devices.cuda} GPU(s) visible. Fix: trainer.devices={devices.cuda}"
            )
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if on_cpu and n > cores:
            problems.append(
                f"trainer.devices={n}: a CPU run starts one process per device and this machine has {cores} cores. "
                f"Fix: trainer.devices={cores} or fewer"
            )
    if t.get("sync_batchnorm") and not on_gpu:
        problems.append(
            "trainer.sync_batchnorm=true: SyncBatchNorm works only on GPUs (torch raises on CPU). "
            "Fix: trainer.sync_batchnorm=false, or run with trainer.accelerator=gpu"
        )
    if is_fsdp(t.get("strategy")) and not (on_gpu and has_cuda):
        problems.append(
            f"trainer.strategy=FSDP on trainer.accelerator={accel}: FSDP shards the model across CUDA GPUs and "
            f"torch's FSDP does not run on CPU ({build}). Fix: run trainer=fsdp where CUDA GPUs are visible "
            "(README: GPU install), or trainer=ddp on CPU (every process holds the whole model)"
        )
    if str(t.precision) in ("16-mixed", "16-true", "16") and on_cpu:
        problems.append(
            f"trainer.precision={t.precision}: float16 training is not supported on CPU. "
            "Fix: trainer.precision=bf16-mixed (or 32-true)"
        )
    if problems:
        raise ConfigError(problems)
