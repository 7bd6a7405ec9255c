"""Stop an Optuna trial early: report the monitored validation metric each epoch, prune when
the study's pruner says so."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning as L

from keel.errors import KeelError

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    """Report ``monitor`` to trial ``trial_number`` of a stored study after every validation
    epoch (step = epoch) and raise ``optuna.TrialPruned`` when its pruner prunes.

    The ``keel_optuna`` sweeper adds this callback to each job it launches
    (``callbacks.optuna_pruning``); the trial is rebuilt from the storage, so it works in the
    sweeper's process and in any other (joblib workers, SLURM jobs) that reaches the storage.
    The exception leaves ``Trainer.fit`` and ``train()``: the job ends at once and the sweeper
    records the trial PRUNED. Only rank 0 talks to the study; the decision is broadcast so
    every DDP rank stops together.

    Args:
        storage: the study's storage URL (e.g. ``sqlite:////abs/path/study.db``).
        study_name: the study's name in that storage.
        trial_number: the trial this job runs (``Trial.number``).
        monitor: the logged metric to report, e.g. ``val/acc_best``; it must move in the
            study's direction (a loss for a minimized study, an accuracy for a maximized one).
        pruner: ``{type: median|percentile|threshold|successive_halving|hyperband|none, ...}``
            (:func:`keel.sweep.study.build_pruner`); pruners are not stored with the study.

    Raises:
        KeelError: ``monitor`` was not logged by the validation epoch.
        optuna.TrialPruned: the pruner stopped this trial.
    """

    def __init__(self, storage: str, study_name: str, trial_number: int, monitor: str,
                 pruner: Mapping[str, Any]) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_number = int(trial_number)
        self.monitor = monitor
        self.pruner = _plain(pruner)
        self._trial: Any = None
        self.reports: list[tuple[int, float]] = []

    def _load_trial(self) -> Any:
        import optuna

        from keel.sweep.study import build_pruner, open_storage

        storage = open_storage(self.storage)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=build_pruner(self.pruner))
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
        return optuna.trial.Trial(study, trial_id)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._trial is None:
            self._trial = self._load_trial()

    def report(self, value: float, epoch: int) -> bool:
        """Report ``value`` at step ``epoch``; True when the trial should stop (rank 0 only)."""
        self._trial.report(value, epoch)
        self.reports.append((epoch, value))
        return bool(self._trial.should_prune())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before
        # the module logs its epoch metrics (val/acc_best), so callback_metrics would be stale.
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        prune, value = False, None
        if trainer.is_global_zero:
            if self.monitor not in trainer.callback_metrics:
                raise KeelError(
                    f"callbacks.optuna_pruning.monitor={self.monitor!r} was not logged at validation end. "
                    f"Logged: {', '.join(sorted(trainer.callback_metrics)) or 'nothing'}. "
                    "Fix: hydra.sweeper.pruning_metric=<one of them>"
                )
            value = float(trainer.callback_metrics[self.monitor])
            # NaN: Optuna ignores the report; a diverged run is pruned here instead of trained on.
            prune = (not math.isfinite(value)) or self.report(value, epoch)
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            import optuna

            msg = f"trial {self.trial_number} pruned at epoch {epoch} ({self.monitor}={value})"
            log.info("optuna: %s", msg)
            raise optuna.TrialPruned(msg)


def _plain(node: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {"type": "none"})
