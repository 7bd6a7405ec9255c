"""Add an int8 model to the run's bundle when it stays within the accuracy budget."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from keel.export.build import QuantizeOptions, add_int8

log = logging.getLogger(__name__)


class Quantize(L.Callback):
    """After the export callback, quantize ``bundle_dir/model.onnx`` with ONNX Runtime
    (:func:`keel.export.build.add_int8`, rank 0 only). Must come after ``OnnxExport`` in the
    callback list.

    Args:
        bundle_dir: the bundle written by ``OnnxExport``.
        **options: :class:`keel.export.build.QuantizeOptions` fields (mode, budget...).
    """

    def __init__(self, bundle_dir: str, **options: Any) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.options = QuantizeOptions(**options)
        self.manifest: dict[str, Any] | None = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        if not (self.bundle_dir / "manifest.json").is_file():
            log.warning("quantize: no bundle at %s (is onnx_export before quantize?): skipped", self.bundle_dir)
            return
        self.manifest = add_int8(self.bundle_dir, trainer.datamodule, self.options)
