"""Explanations of the tested model at test time: attribution maps for images, permutation feature
importance for tables (Captum; :mod:`keel.explain`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from keel.explain.run import ExplainOptions, Explanation, explain_split

log = logging.getLogger(__name__)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class Explanations(L.Callback):
    """At the end of testing (rank 0), explain the tested model on the test split.

    - Image data: a grid of saliency, Integrated Gradients and Grad-CAM overlays (Grad-CAM on the
      net's last convolutional block) for ``images`` test images spread over the classes,
      logged to TensorBoard as ``test/explanations`` and written to ``<output_dir>/``.
    - Table data: permutation feature importance for the task's metric, with its spread over
      ``repeats``: ``<output_dir>/importance.json``, a bar chart (``test/feature_importance`` in
      TensorBoard's Images tab, and ``importance.png``), the top features printed; keel's
      training runs then write it into the bundle manifest (``importance``), which ``keel
      serve``'s ``/info`` lists.

    keel runs test the best checkpoint, so what is explained is the model that is exported.

    Args:
        output_dir: where the files go (``<run dir>/explain``).
        in_sweeps: also explain each job of a sweep (``python train.py -m``); off by default.
        top: features printed.
        **options: :class:`keel.explain.run.ExplainOptions` fields.
    """

    def __init__(self, output_dir: str, in_sweeps: bool = False, top: int = 5, **options: Any) -> None:
        if "methods" in options and options["methods"] is not None:
            options["methods"] = tuple(options["methods"])
        self.output_dir = Path(output_dir)
        self.in_sweeps = bool(in_sweeps)
        self.top = int(top)
        self.options = ExplainOptions(**options).check()

    @property
    def importance_path(self) -> Path:
        from keel.explain.run import IMPORTANCE_FILE

        return self.output_dir / IMPORTANCE_FILE

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if _in_sweep() and not self.in_sweeps:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or getattr(datamodule, "contract", None) is None or not hasattr(pl_module, "task"):
            log.warning("explain: needs a keel data module (a contract) and a keel TaskModule: skipped")
            return
        if self.importance_path.exists():  # a stale report of an earlier attempt never reaches the bundle
            self.importance_path.unlink()
        was_training = pl_module.training
        result = explain_split(pl_module, datamodule, self.options, self.output_dir)
        pl_module.train(was_training)
        self._log(trainer, result)

    def _log(self, trainer: L.Trainer, result: Explanation) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        from keel.explain.importance import importance_lines

        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        step = trainer.global_step
        if result.grid is not None:
            if writer is not None:
                writer.add_image("test/explanations", result.grid, step, dataformats="HWC")
            log.info("explain: %s maps of %d test images -> %s", ", ".join(result.methods),
                     result.images, self.output_dir / "explanations.png")
        if result.importance is not None:
            if writer is not None and result.chart is not None:
                writer.add_image("test/feature_importance", result.chart, step, dataformats="HWC")
            lines = importance_lines(result.importance, top=self.top)
            log.info("explain: permutation feature importance -> %s\n%s", self.importance_path, "\n".join(lines))
        if result.note and result.grid is None and result.importance is None:
            log.info("explain: %s", result.note)


__all__ = ["Explanations"]
