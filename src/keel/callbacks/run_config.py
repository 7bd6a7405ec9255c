"""The run's resolved config in every checkpoint, so that a checkpoint alone rebuilds its data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L


class RunConfigInCheckpoint(L.Callback):
    """Adds ``config`` (the run's resolved config, plain data) to the ``keel`` section of every
    checkpoint; ``export.py`` rebuilds the data for parity checks from it. Added by keel to every
    run (not a config option); the config comes in as an argument, never set on the module.

    Args:
        config: the resolved config (dicts, lists, numbers, strings).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("keel", {})["config"] = self.config


__all__ = ["RunConfigInCheckpoint"]
