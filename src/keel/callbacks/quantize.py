"""Add an int8 model to a bundle when it stays within the task's budget: a bundle step and a callback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from keel.export.build import QuantizeOptions, add_int8

log = logging.getLogger(__name__)


class Quantize(L.Callback):
    """Quantizes ``bundle_dir/model.onnx`` with ONNX Runtime (:func:`keel.export.build.add_int8`).

    keel's training runs call :meth:`quantize` after the export step. As a callback in a
    Trainer of your own it does the same at ``on_test_end`` (rank 0; after ``OnnxExport`` in the
    callback list).

    Args:
        bundle_dir: the bundle written by ``OnnxExport``.
        **options: :class:`keel.export.build.QuantizeOptions` fields (mode, budgets...).
    """

    def __init__(self, bundle_dir: str, **options: Any) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.options = QuantizeOptions(**options)

    def quantize(self, datamodule: Any) -> dict[str, Any] | None:
        """Add the int8 model (or record why it was left out); returns the new manifest, or
        None when there is no bundle to quantize."""
        if not (self.bundle_dir / "manifest.json").is_file():
            log.warning("quantize: no bundle at %s (is onnx_export before quantize?): skipped", self.bundle_dir)
            return None
        return add_int8(self.bundle_dir, datamodule, self.options)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        self.quantize(trainer.datamodule)


__all__ = ["Quantize"]
