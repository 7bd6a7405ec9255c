"""conf/hparams_search/optuna.yaml: composes, instantiates the keel_optuna sweeper, and each trial's
overrides (search space + pruning callback) compose into a job config keel can run."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import OmegaConf

from keel.callbacks.optuna_pruning import OptunaPruning
from keel.config import register_resolvers, validate_config
from keel.fit import instantiate_group
from keel.sweep import build_search_space
from keel.sweep.optuna_sweeper import pruning_override, resolve_objective
from keel.sweep.study import build_pruner, build_sampler
from keel.tasks.resolve import resolve_task, with_task

CONF = Path(__file__).resolve().parents[2] / "conf"


def _hparams_search() -> str:
    """`hparams_search=optuna` once conf/train.yaml lists the group; until then appended (`+`)."""
    defaults = yaml.safe_load((CONF / "train.yaml").read_text())["defaults"]
    listed = any(isinstance(d, dict) and "hparams_search" in d for d in defaults)
    return "hparams_search=optuna" if listed else "+hparams_search=optuna"


@pytest.fixture
def optuna_cfg(tmp_path):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[_hparams_search(), f"paths.log_dir={tmp_path}"],
                      return_hydra_config=True)
    yield cfg
    GlobalHydra.instance().clear()


def test_the_plugin_is_registered():
    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "KeelOptunaSweeper" in names


def test_optuna_config_instantiates_the_sweeper(optuna_cfg, tmp_path):
    sw = optuna_cfg.hydra.sweeper
    assert optuna_cfg.hydra.runtime.choices["hydra/sweeper"] == "keel_optuna"
    assert sw.metric == optuna_cfg.optimized_metric  # what the study optimizes = what train returns
    # auto (the run default) or named: digits' study optimizes val/acc_best
    assert resolve_objective(sw.metric, sw.pruning_metric, optuna_cfg).metric == "val/acc_best"
    assert sw.study_name == "train-digits-mlp"
    # outside the timestamped sweep dir, so the same command finds the study again
    assert sw.storage == f"sqlite:///{tmp_path}/train/optuna/train-digits-mlp.db"
    sweeper = instantiate(sw)
    assert type(sweeper).__name__ == "KeelOptunaSweeper"
    impl = sweeper.sweeper
    assert impl.n_trials == 20 and impl.n_jobs == 1 and impl.pruner_spec["type"] == "median"
    assert isinstance(build_sampler(impl.sampler_spec), optuna.samplers.TPESampler)
    assert isinstance(build_pruner(impl.pruner_spec), optuna.pruners.MedianPruner)
    # trials train only: the export/int8 callbacks are left to the winner's rerun
    assert optuna_cfg.hydra.runtime.choices.callbacks == "training"
    assert {"model_checkpoint", "early_stopping"} <= set(optuna_cfg.callbacks)
    assert not {"onnx_export", "quantize"} & set(optuna_cfg.callbacks)


def test_a_trial_of_the_default_space_composes_and_gets_its_pruning_callback(optuna_cfg, tmp_path):
    impl = instantiate(optuna_cfg.hydra.sweeper).sweeper
    space = build_search_space(impl.params, [])
    assert set(space.params) == {"optimizer.lr", "optimizer.weight_decay", "model.net.hidden", "model.net.dropout"}
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")
    trial = study.ask({n: p.distribution() for n, p in space.params.items()})
    overrides = [*space.overrides(trial.params),
                 pruning_override(f"sqlite:///{tmp_path / 's.db'}", "s", trial.number, "val/acc_best", impl.pruner_spec)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        job = compose(config_name="train", overrides=[_hparams_search(), f"paths.log_dir={tmp_path}", *overrides])
    OmegaConf.update(job, "paths.output_dir", str(tmp_path / "job"), force_add=True)
    job = with_task(job, resolve_task(job))  # as the job runs it: the task's defaults filled in
    validate_config(job)
    assert job.optimizer.lr == pytest.approx(trial.params["optimizer.lr"])
    assert str(list(job.model.net.hidden)).replace(" ", "") == trial.params["model.net.hidden"]
    callbacks = instantiate_group(job.callbacks, "callbacks")
    (pruning,) = [c for c in callbacks if isinstance(c, OptunaPruning)]
    assert (pruning.storage, pruning.study_name, pruning.trial_number, pruning.monitor) == (
        f"sqlite:///{tmp_path / 's.db'}", "s", trial.number, "val/acc_best")
    assert pruning.pruner == dict(impl.pruner_spec)
    assert pruning._load_trial().number == trial.number
