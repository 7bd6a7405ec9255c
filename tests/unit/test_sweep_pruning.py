"""OptunaPruning: reports the monitored metric to its stored trial and prunes when the pruner says so."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import torch

from keel.callbacks.optuna_pruning import OptunaPruning
from keel.errors import KeelError


def _trainer(epoch: int, metrics: dict[str, float], sanity: bool = False) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, sanity_checking=sanity, is_global_zero=True,
                           callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
                           strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))


@pytest.fixture
def stored_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask()
    return storage, study, trial


def test_reports_each_epoch_and_prunes_past_warmup(stored_trial):
    storage, study, trial = stored_trial
    cb = OptunaPruning(storage, "s", trial.number, "val/acc_best",
                       {"type": "threshold", "lower": 0.5, "n_warmup_steps": 1})
    cb.on_fit_start(_trainer(0, {}), None)
    cb.on_validation_end(_trainer(0, {"val/acc_best": 0.9}, sanity=True), None)  # sanity check: not reported
    cb.on_validation_end(_trainer(0, {"val/acc_best": 0.2}), None)  # below the threshold, but warming up
    with pytest.raises(optuna.TrialPruned, match=r"trial 0 pruned at epoch 1 \(val/acc_best=0.3"):
        cb.on_validation_end(_trainer(1, {"val/acc_best": 0.3}), None)
    stored = study.trials[trial.number]
    assert stored.intermediate_values == pytest.approx({0: 0.2, 1: 0.3})
    assert stored.state == optuna.trial.TrialState.RUNNING  # the sweeper tells PRUNED, not the job


def test_good_values_are_not_pruned(stored_trial):
    storage, study, trial = stored_trial
    cb = OptunaPruning(storage, "s", trial.number, "val/acc", {"type": "threshold", "lower": 0.5})
    cb.on_fit_start(_trainer(0, {}), None)
    for epoch, v in enumerate([0.6, 0.7, 0.8]):
        cb.on_validation_end(_trainer(epoch, {"val/acc": v}), None)
    assert cb.reports == [(0, pytest.approx(0.6)), (1, pytest.approx(0.7)), (2, pytest.approx(0.8))]


def test_a_diverged_run_is_pruned(stored_trial):
    storage, _, trial = stored_trial
    cb = OptunaPruning(storage, "s", trial.number, "val/acc", {"type": "none"})
    cb.on_fit_start(_trainer(0, {}), None)
    with pytest.raises(optuna.TrialPruned, match="val/acc=nan"):
        cb.on_validation_end(_trainer(0, {"val/acc": float("nan")}), None)


def test_missing_monitor_names_what_was_logged(stored_trial):
    storage, _, trial = stored_trial
    cb = OptunaPruning(storage, "s", trial.number, "val/accuracy", {"type": "median"})
    cb.on_fit_start(_trainer(0, {}), None)
    with pytest.raises(KeelError, match=r"monitor='val/accuracy' was not logged .* Logged: val/acc, val/loss"):
        cb.on_validation_end(_trainer(0, {"val/acc": 0.5, "val/loss": 1.0}), None)


def test_median_pruner_prunes_a_trial_below_the_median(tmp_path):
    """The pruner is rebuilt in the job from its spec (pruners are not stored with a study)."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="m", direction="maximize")
    for v in (0.8, 0.9):
        t = study.ask()
        t.report(v, 0)
        study.tell(t, v)
    trial = study.ask()
    cb = OptunaPruning(storage, "m", trial.number, "val/acc", {"type": "median", "n_startup_trials": 2})
    cb.on_fit_start(_trainer(0, {}), None)
    with pytest.raises(optuna.TrialPruned):
        cb.on_validation_end(_trainer(0, {"val/acc": 0.1}), None)
