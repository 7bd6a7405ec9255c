"""Export a checkpoint to a verified ONNX bundle: the bundle step of a run, and a test-end callback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from keel.export.build import ExportOptions, export_checkpoint

log = logging.getLogger(__name__)


class OnnxExport(L.Callback):
    """Exports a checkpoint to ``bundle_dir`` through :func:`keel.export.build.export_checkpoint`.

    keel's training runs call :meth:`export` with the best checkpoint after testing (the result
    is the run's bundle record). In a Trainer of your own, as a callback, it does the same at
    ``on_test_end`` (rank 0 only), with the Trainer's best checkpoint.

    Args:
        bundle_dir: where the bundle goes (``<run dir>/bundle``).
        **options: :class:`keel.export.build.ExportOptions` fields (opset, parity tolerance...).
    """

    def __init__(self, bundle_dir: str, **options: Any) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.options = ExportOptions(**options)

    def export(self, ckpt_path: str | Path, datamodule: Any, config: dict[str, Any] | None = None,
               run_metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """Write the bundle of ``ckpt_path`` (parity-checked on ``datamodule``'s test split);
        returns its manifest."""
        return export_checkpoint(ckpt_path, self.bundle_dir, datamodule, self.options, config=config,
                                 run_metrics=run_metrics)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not ckpt:
            log.warning("onnx_export: no best checkpoint (checkpointing off): no bundle written")
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self.export(ckpt, trainer.datamodule, run_metrics=metrics)


__all__ = ["OnnxExport"]
