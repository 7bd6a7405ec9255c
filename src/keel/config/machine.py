"""Check trainer settings against this machine before training starts (imports torch)."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from keel.config.validate import ConfigError


def _count(devices: Any) -> int | None:
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    return None  # "auto" / -1: Lightning picks what exists


def check_machine(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for trainer settings this machine cannot run.

    Catches, with one message each: a GPU/MPS accelerator that is not there, more devices
    than the machine has, ``sync_batchnorm`` without GPUs, fp16 training on CPU.
    """
    import torch

    t = cfg.trainer
    problems: list[str] = []
    accel = str(t.accelerator)
    has_cuda = torch.cuda.is_available()
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    build = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ", a CPU-only build")
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
        if on_gpu and has_cuda and n > torch.cuda.device_count():
            problems.append(
                f"trainer.devices={n}: only {torch.cuda.device_count()} GPU(s) visible. "
                f"Fix: trainer.devices={torch.cuda.device_count()}"
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
    if str(t.precision) in ("16-mixed", "16-true", "16") and on_cpu:
        problems.append(
            f"trainer.precision={t.precision}: float16 training is not supported on CPU. "
            "Fix: trainer.precision=bf16-mixed (or 32-true)"
        )
    if problems:
        raise ConfigError(problems)
