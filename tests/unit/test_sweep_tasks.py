"""Sweeps of either task: directions from the task's metric names, ``optimized_metric=auto``
resolved by the sweeper from the composed config, and the report's columns per task."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from keel.sweep.optuna_sweeper import Objective, OptunaSweeperImpl, resolve_objective, trial_task_problem
from keel.sweep.report import TASK_METRICS, build_report, default_metrics, format_terminal
from keel.sweep.study import SweepConfigError, metric_direction, resolve_direction
from keel.tasks import TASKS

HPARAMS = "hparams_search=optuna"
CONF = Path(__file__).resolve().parents[2] / "conf"


# -- directions ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("metric", "direction"), [
    ("val/rmse_best", "minimize"), ("val/rmse", "minimize"), ("test/rmse", "minimize"), ("test/mae", "minimize"),
    ("val/mae_best", "minimize"), ("val/r2_best", "maximize"), ("test/r2", "maximize"),
    ("val/loss_best", "minimize"), ("test/loss", "minimize"),  # losses of either task, as before
    ("val/acc_best", "maximize"), ("val/f1_best", "maximize"), ("test/auroc", "maximize"),
    ("val/my_loss", "minimize"), ("val/custom_score", "maximize"),  # names no task logs: as before
])
def test_metric_direction_follows_the_task_that_logs_the_metric(metric, direction):
    assert metric_direction(metric) == direction
    assert resolve_direction("auto", metric) == direction


def test_an_explicit_direction_still_wins():
    assert resolve_direction("maximize", "val/rmse_best") == "maximize"
    with pytest.raises(SweepConfigError, match="direction='down': expected auto, maximize or minimize"):
        resolve_direction("down", "val/rmse_best")


# -- optimized_metric=auto in the sweeper --------------------------------------------------------
def _csv(tmp_path: Path, target: Any, name: str = "t.csv") -> Path:
    rng = np.random.default_rng(0)
    rows = ["a,b,y", *(f"{rng.normal():.4f},{rng.normal():.4f},{t}" for t in target)]
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def compose_cfg(compose_cfg):
    """The sweeper sees the config as composed (task and metrics still ``auto``): it resolves them."""
    return functools.partial(compose_cfg, resolve=False)


@pytest.fixture
def regression_csv(tmp_path) -> Path:
    """A float target: regression when task=auto."""
    return _csv(tmp_path, [f"{v:.3f}" for v in np.random.default_rng(1).normal(150, 40, size=60)])


@pytest.fixture
def regression_cfg(compose_cfg, regression_csv) -> DictConfig:
    # optimized_metric=auto: the run default once conf/train.yaml has it (given here until then)
    return compose_cfg(HPARAMS, "data=csv", f"data.path={regression_csv}", "data.target=y", "optimized_metric=auto")


def test_hparams_search_leaves_the_run_default_objective(compose_cfg):
    """optuna.yaml names no metric: the sweep optimizes the run's optimized_metric (auto by default)."""
    assert "optimized_metric" not in yaml.safe_load((CONF / "hparams_search" / "optuna.yaml").read_text())
    assert compose_cfg(HPARAMS).optimized_metric == compose_cfg().optimized_metric


def test_auto_is_the_regression_tasks_optimized_metric(regression_cfg):
    objective = resolve_objective("auto", None, regression_cfg)
    assert (objective.metric, objective.pruning_metric, objective.task) == ("val/rmse_best", "val/rmse_best",
                                                                            "regression")
    assert objective.reason.startswith("task: regression (inferred: target 'y' holds non-integer numbers")
    # a pruning metric of auto is the objective too; a named one is kept
    assert resolve_objective("auto", "auto", regression_cfg).pruning_metric == "val/rmse_best"
    assert resolve_objective("auto", "val/rmse", regression_cfg).pruning_metric == "val/rmse"


def test_auto_is_rmse_for_the_bundled_regression_data(compose_cfg):
    """data=diabetes: its contract declares the regression task; no file is read."""
    if not (CONF / "data" / "diabetes.yaml").exists():
        pytest.skip("conf/data/diabetes.yaml not there yet")
    cfg = compose_cfg(HPARAMS, "data=diabetes", "optimized_metric=auto")
    objective = resolve_objective("auto", None, cfg)
    assert (objective.metric, objective.task) == ("val/rmse_best", "regression")
    assert objective.reason == "task: regression (declared by the data contract 'diabetes')"
    objective, direction = _impl(cfg, pruner={"type": "median"})._check_options()
    assert (objective.metric, direction) == ("val/rmse_best", "minimize")
    # a named objective is kept, whatever the task
    assert resolve_objective("val/r2_best", None, cfg).metric == "val/r2_best"


def test_auto_is_the_classification_tasks_optimized_metric(compose_cfg, tmp_path):
    objective = resolve_objective("auto", None, compose_cfg(HPARAMS, "optimized_metric=auto"))  # digits' contract
    assert (objective.metric, objective.task) == ("val/acc_best", "classification")
    assert "declared by the data contract" in objective.reason
    labels = _csv(tmp_path, ["cat", "dog"] * 30, name="labels.csv")
    cfg = compose_cfg(HPARAMS, "data=csv", f"data.path={labels}", "data.target=y", "optimized_metric=auto")
    assert resolve_objective("auto", None, cfg).metric == "val/acc_best"


def test_a_named_metric_is_kept_and_the_config_not_read():
    objective = resolve_objective("val/r2_best", None, None)
    assert objective == Objective("val/r2_best", "val/r2_best", None, "")


def test_the_sweeper_minimizes_rmse_for_a_regression_config(regression_cfg):
    impl = _impl(regression_cfg, pruner={"type": "median"})
    objective, direction = impl._check_options()
    assert (objective.metric, direction, objective.pruning_metric) == ("val/rmse_best", "minimize", "val/rmse_best")
    # a pruning metric that improves the other way is refused against the resolved objective
    with pytest.raises(SweepConfigError, match="pruning_metric='val/r2_best' improves by maximizing but the study "
                                               "minimizes 'val/rmse_best'"):
        _impl(regression_cfg, pruner={"type": "median"}, pruning_metric="val/r2_best")._check_options()


def test_a_regression_sweep_records_the_resolved_metric(regression_cfg, tmp_path):
    values = {1: 30.0, 2: 12.5, 3: 20.0}
    impl = _impl(regression_cfg, job=lambda overrides: values[int(overrides[0].split("=")[1])],
                 pruner={"type": "median", "n_startup_trials": 5}, sampler={"type": "grid", "seed": 0})
    impl.sweep([])
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["optimized_metric"] == "val/rmse_best"
    assert study.best_value == 12.5 and study.best_params == {"x": 2}
    record = OmegaConf.load(tmp_path / "sweep" / "optuna_study.yaml")
    assert (record.optimized_metric, record.direction, record.pruning_metric, record.task) == (
        "val/rmse_best", "minimize", "val/rmse_best", "regression")
    assert record.best.value == 12.5
    # each job's pruning callback follows the resolved metric, never "auto"
    pruning = [o for batch in impl.launcher.batches for job in batch for o in job if "optuna_pruning" in o]
    assert len(pruning) == 3 and all("monitor:val/rmse_best" in o for o in pruning)
    # the same command again: the stored metric is the resolved one, so the study resumes
    again = _impl(regression_cfg, job=lambda overrides: 1.0, sweep="sweep2", n_trials=3,
                  sampler={"type": "grid", "seed": 0})
    again.sweep([])
    assert again.launcher.batches == []


def test_a_study_of_the_other_task_is_refused(regression_cfg, compose_cfg, tmp_path):
    _impl(compose_cfg(HPARAMS, "optimized_metric=auto"), job=lambda o: 0.9, n_trials=1).sweep([])  # digits
    with pytest.raises(SweepConfigError, match="study 's' in .* maximizes, but this sweep minimizes 'val/rmse_best'"):
        _impl(regression_cfg, job=lambda o: 1.0, sweep="sweep2").sweep([])


def test_a_task_error_becomes_one_sweep_config_error(compose_cfg, tmp_path):
    cfg = compose_cfg(HPARAMS, "task=regression", "optimized_metric=auto")  # digits' contract says classification
    with pytest.raises(SweepConfigError, match=r"optimized_metric=auto: .*task cannot be told from the sweep's "
                                               r"config: task=regression but the data contract 'digits' declares a "
                                               r"classification target.*Fix: task=classification.*"
                                               r"optimized_metric=<metric>, e.g. val/acc_best \(classification\), "
                                               r"val/rmse_best \(regression\)"):
        resolve_objective("auto", None, cfg)
    ambiguous = _csv(tmp_path, [i % 20 for i in range(60)], name="ambiguous.csv")
    cfg = compose_cfg(HPARAMS, "data=csv", f"data.path={ambiguous}", "data.target=y", "optimized_metric=auto")
    with pytest.raises(SweepConfigError, match=r"data.target='y' holds 20 distinct whole numbers .* will not guess"):
        _impl(cfg)._check_options()
    missing = compose_cfg(HPARAMS, "data=csv", f"data.path={tmp_path / 'nope.csv'}", "data.target=y",
                          "optimized_metric=auto")
    with pytest.raises(SweepConfigError, match=r"data.target='y' of data.path=.*nope.csv', which could not be read"):
        resolve_objective("auto", None, missing)
    assert not (tmp_path / "study.db").exists()


def test_the_plugin_exits_2_with_the_message(compose_cfg, capsys):
    from hydra_plugins.keel_optuna_sweeper.keel_optuna_sweeper import KeelOptunaSweeper

    plugin = KeelOptunaSweeper(**_options())
    plugin.sweeper.config = compose_cfg(HPARAMS, "task=regression", "optimized_metric=auto")
    plugin.sweeper.launcher = object()
    with pytest.raises(SystemExit) as e:
        plugin.sweep([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: optimized_metric=auto: ") and "Traceback" not in err
    assert "declares a classification target" in err


def test_a_trial_of_another_task_is_refused_before_it_runs(regression_cfg, compose_cfg):
    objective = Objective("val/rmse_best", "val/rmse_best", "regression", "task: regression")
    assert trial_task_problem(objective, regression_cfg) is None
    problem = trial_task_problem(objective, compose_cfg(HPARAMS, "optimized_metric=auto"))
    assert problem is not None and problem.startswith("this trial's config makes a classification task")
    assert "the study optimizes 'val/rmse_best' of regression: one study cannot mix tasks" in problem
    # a named objective: the job returns what it is told, nothing to compare
    assert trial_task_problem(Objective("val/rmse_best", "val/rmse_best"), compose_cfg(HPARAMS)) is None


class _Loader:
    """The sweep config of a trial: ``master`` as composed (a fake: overrides are not applied)."""

    def __init__(self, job_config: Any = None):
        self.job_config = job_config

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        return self.job_config


class _Launcher:
    def __init__(self, sweep_dir: Path, job):
        self.sweep_dir, self.job, self.batches = sweep_dir, job, []

    def launch(self, job_overrides, initial_job_idx):
        self.batches.append([list(o) for o in job_overrides])
        out = []
        for i, overrides in enumerate(job_overrides):
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, hydra_cfg=OmegaConf.create(
                {"hydra": {"runtime": {"output_dir": str(self.sweep_dir / str(initial_job_idx + i))}}}))
            ret.return_value = self.job(overrides)
            out.append(ret)
        return out


def _options(**options: Any) -> dict[str, Any]:
    defaults = {"n_trials": 3, "n_jobs": 1, "direction": "auto", "metric": "auto", "study_name": "s",
                "storage": None, "sampler": {"type": "tpe", "seed": 0}, "pruner": {"type": "none"},
                "pruning_metric": None, "max_failure_rate": 1.0,
                "params": {"x": {"type": "categorical", "choices": [1, 2, 3]}}}
    return {**defaults, **options}


def _impl(cfg: DictConfig, job=None, sweep: str = "sweep", **options: Any) -> OptunaSweeperImpl:
    """The sweeper with ``cfg`` as Hydra's composed config (plus the hydra keys it reads)."""
    tmp = Path(cfg.paths.log_dir).parent
    impl = OptunaSweeperImpl(**_options(storage=f"sqlite:///{tmp / 'study.db'}", **options))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.hydra = {"sweep": {"dir": str(tmp / sweep)}, "overrides": {"hydra": []}}
    impl.config = cfg
    impl.hydra_context = type("Ctx", (), {"config_loader": _Loader(cfg)})()
    impl.launcher = _Launcher(tmp / sweep, job or (lambda overrides: 0.5))
    return impl


# -- keel sweep report ---------------------------------------------------------------------------
def _job(sweep: Path, num: int, overrides: list[str], metrics: dict[str, float], metric: str,
         task: str | None) -> None:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / "train.log").write_text("[2026-11-22 10:00:00,000][keel][INFO] - data: 442 rows\n")
    record = {"metrics": metrics, "objective": metrics[metric], "optimized_metric": metric, "wall_time_s": 5.0}
    if task is not None:
        record["task"] = task
    (d / "metrics.json").write_text(json.dumps(record))


def _regression_metrics(rmse: float) -> dict[str, float]:
    return {"val/rmse_best": rmse, "val/mae_best": rmse * 0.8, "val/r2_best": 1 - rmse / 100,
            "val/loss_best": (rmse / 60) ** 2, "test/rmse": rmse + 1, "test/mae": rmse * 0.8 + 1,
            "test/r2": 1 - (rmse + 1) / 100, "test/loss": ((rmse + 1) / 60) ** 2}


@pytest.fixture
def regression_sweep(tmp_path) -> Path:
    """Three finished regression jobs, no study record: the order comes from the metric's name."""
    sweep = tmp_path / "multiruns" / "2026-11-22_10-00-00_abcdef"
    sweep.mkdir(parents=True)
    for num, (lr, rmse) in enumerate([(0.001, 58.2), (0.01, 51.7), (0.0001, 63.9)]):
        _job(sweep, num, ["hparams_search=optuna", "data=csv", f"optimizer.lr={lr}"], _regression_metrics(rmse),
             "val/rmse_best", "regression")
    return sweep


def test_a_regression_sweep_is_sorted_ascending_with_the_regression_columns(regression_sweep):
    r = build_report([regression_sweep])
    assert r.metric == "val/rmse_best"
    assert (r.direction, r.direction_source) == ("minimize", "the metric's name")
    assert [(row.job, row.objective) for row in r.rows] == [("1", 51.7), ("0", 58.2), ("2", 63.9)]
    assert [row.task for row in r.rows] == ["regression"] * 3
    assert r.columns == ["test/rmse", "test/r2", "val/loss_best"]  # the objective has its own column
    text = format_terminal(r)
    header = next(ln for ln in text.splitlines() if ln.startswith("#"))
    assert header.split()[:7] == ["#", "job", "status", "val/rmse_best", "test/rmse", "test/r2", "val/loss_best"]
    row1 = next(ln for ln in text.splitlines() if ln.startswith("1 "))
    assert row1.split()[:6] == ["1", "1", "complete", "51.7000", "52.7000", "0.4730"]
    assert "sorted by val/rmse_best, minimize (from the metric's name)" in text
    assert r.best_command() == "python train.py data=csv optimizer.lr=0.01"


def test_a_regression_study_record_gives_the_direction(regression_sweep):
    (regression_sweep / "optuna_study.yaml").write_text(yaml.safe_dump(
        {"study_name": "s", "storage": "sqlite:////nowhere/s.db", "optimized_metric": "val/rmse_best",
         "direction": "minimize", "task": "regression"}))
    r = build_report([regression_sweep])
    assert r.direction_source == "the study record" and [row.job for row in r.rows] == ["1", "0", "2"]


def test_jobs_without_a_task_key_are_classification_and_a_mixed_sweep_shows_the_union(tmp_path):
    sweep = tmp_path / "mixed"
    sweep.mkdir()
    classification = {"val/acc_best": 0.9, "val/loss_best": 0.3, "test/acc": 0.88, "test/loss": 0.35}
    _job(sweep, 0, ["optimizer.lr=0.1"], classification, "val/acc_best", None)  # written before regression
    only_old = build_report([sweep])
    assert only_old.rows[0].task == "classification"
    assert only_old.columns == ["test/acc", "test/loss", "val/loss_best"]
    _job(sweep, 1, ["optimizer.lr=0.2"], _regression_metrics(50.0), "val/rmse_best", "regression")
    mixed = build_report([sweep])
    assert default_metrics(mixed.rows) == ["test/acc", "test/loss", "val/acc_best", "val/loss_best", "test/rmse",
                                           "test/r2", "val/rmse_best"]
    assert mixed.metric == "val/acc_best"  # the first job's objective, as before
    assert mixed.columns == ["test/acc", "test/loss", "val/loss_best", "test/rmse", "test/r2", "val/rmse_best"]
    # --metric still chooses the columns
    assert build_report([sweep], metrics=["test/mae"]).columns == ["test/mae"]


def test_every_task_has_report_columns():
    assert set(TASK_METRICS) == set(TASKS)
    assert default_metrics([]) == list(TASK_METRICS["classification"])
