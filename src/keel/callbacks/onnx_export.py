"""Export the best checkpoint to a verified ONNX bundle when the run's test ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from keel.export.build import ExportOptions, export_checkpoint

log = logging.getLogger(__name__)


class OnnxExport(L.Callback):
    """After ``trainer.test``, export the best checkpoint (or, without checkpointing, nothing)
    to ``bundle_dir`` through :func:`keel.export.build.export_checkpoint` (rank 0 only).

    Args:
        bundle_dir: where the bundle goes (``<run dir>/bundle``).
        **options: :class:`keel.export.build.ExportOptions` fields (opset, parity tolerance...).

    The manifest records the run's test metrics; ``self.manifest`` holds it afterwards.
    """

    def __init__(self, bundle_dir: str, **options: Any) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.options = ExportOptions(**options)
        self.manifest: dict[str, Any] | None = None
        self.config: dict[str, Any] | None = None  # the run's resolved config, set by the pipeline

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not ckpt:
            log.warning("onnx_export: no best checkpoint (checkpointing off): no bundle written")
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self.manifest = export_checkpoint(
            ckpt, self.bundle_dir, trainer.datamodule, self.options, config=self.config, run_metrics=metrics
        )
