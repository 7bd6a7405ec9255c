"""Shared fixtures: compose the real conf/ tree with overrides, in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from keel.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_cfg("model=cnn", ...)`` -> the train config, writing under ``tmp_path``, with
    the task resolved as a run resolves it (``task``, ``monitor`` and ``optimized_metric`` filled
    in from ``auto``; ``resolve=False`` keeps them as composed)."""
    register_resolvers()

    def _compose(*overrides: str, resolve: bool = True) -> DictConfig:
        from keel.tasks import TaskError
        from keel.tasks.resolve import resolve_task, with_task

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.log_dir = str(tmp_path / "logs")
        if resolve:
            try:
                cfg = with_task(cfg, resolve_task(cfg))
            except TaskError:
                pass  # the test looks at the refusal itself
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def _tensorboard_run(run_dir: Path) -> Path:
    """The one TensorBoard run of a keel run directory: ``<run>/tensorboard/<run name>``."""
    runs = [p for p in (Path(run_dir) / "tensorboard").iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one TensorBoard run under {run_dir}/tensorboard, got {runs}"
    return runs[0]


@pytest.fixture
def tensorboard_run() -> Callable[[Path], Path]:
    """``tensorboard_run(run_dir)``: the run's TensorBoard folder (keel.loggers.TensorBoardLogger)."""
    return _tensorboard_run
