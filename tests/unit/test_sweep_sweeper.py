"""The keel_optuna sweeper with a stand-in launcher: states told to the study, resume, interrupted
trials, failure budget, and the checks that refuse a study it cannot continue."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from keel.callbacks.optuna_pruning import OptunaPruning
from keel.errors import KeelError
from keel.sweep.optuna_sweeper import OptunaSweeperImpl, SweepFailedError, finished_count
from keel.sweep.study import SweepConfigError

TS = optuna.trial.TrialState


class FakeLoader:
    """Composition fails for the overrides a test names (as a bad group option would)."""

    def __init__(self, bad: str | None = None):
        self.bad = bad

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> None:
        if self.bad and self.bad in sweep_overrides:
            raise ValueError(f"Could not load {self.bad}")


class FakeLauncher:
    """Runs ``job(values, pruning)`` for each job in-process and wraps the outcome as Hydra does."""

    def __init__(self, sweep_dir: Path, job):
        self.sweep_dir, self.job, self.batches = sweep_dir, job, []

    def launch(self, job_overrides, initial_job_idx):
        self.batches.append([list(o) for o in job_overrides])
        out = []
        for i, overrides in enumerate(job_overrides):
            values, pruning = {}, None
            for o in OverridesParser.create().parse_overrides(list(overrides)):
                if o.get_key_element().endswith("callbacks.optuna_pruning"):
                    pruning = o.value()
                else:
                    values[o.get_key_element()] = o.value()
            job_dir = self.sweep_dir / str(initial_job_idx + i)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                            hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}}))
            try:
                ret.return_value = self.job(values, pruning)
            except Exception as e:  # what hydra.core.utils.run_job does
                ret.return_value = e
                ret.status = JobStatus.FAILED
            out.append(ret)
        return out


def _sweeper(tmp_path: Path, job, *, sweep: str = "sweep", bad: str | None = None, **options: Any):
    defaults = {"n_trials": 4, "n_jobs": 1, "direction": "auto", "metric": "val/acc_best", "study_name": "s",
                "storage": f"sqlite:///{tmp_path / 'study.db'}", "sampler": {"type": "tpe", "seed": 0},
                "pruner": {"type": "none"}, "pruning_metric": None, "max_failure_rate": 1.0,
                "params": {"x": {"type": "categorical", "choices": [1, 2, 3, 4]}}}
    impl = OptunaSweeperImpl(**{**defaults, **options})
    sweep_dir = tmp_path / sweep
    impl.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"hydra": []}}})
    impl.hydra_context = type("Ctx", (), {"config_loader": FakeLoader(bad)})()
    impl.launcher = FakeLauncher(sweep_dir, job)
    return impl


def _study(tmp_path: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")


def test_each_outcome_is_told_and_the_sweep_goes_on(tmp_path):
    def job(values, pruning):
        x = values["x"]
        if x == 2:  # what OptunaPruning does in a real job: report, then raise
            cb = OptunaPruning(**{k: v for k, v in pruning.items() if k != "_target_"})
            cb._trial = cb._load_trial()
            cb.report(0.05, 0)
            raise optuna.TrialPruned("pruned at epoch 0")
        if x == 3:
            raise KeelError("data.batch_size=0: expected an integer >= 1")
        if x == 4:
            return float("nan")
        return 0.75

    impl = _sweeper(tmp_path, job, sampler={"type": "grid", "seed": 0}, n_trials=10,
                    pruner={"type": "median", "n_startup_trials": 0})
    impl.sweep(["trainer.max_epochs=2"])
    trials = {t.params["x"]: t for t in _study(tmp_path).trials}
    assert len(trials) == 4  # n_trials capped at the grid's size
    assert trials[1].state == TS.COMPLETE and trials[1].value == 0.75
    assert trials[2].state == TS.PRUNED and trials[2].value == pytest.approx(0.05)  # last reported value
    assert trials[3].state == TS.FAIL and "KeelError: data.batch_size=0" in trials[3].user_attrs["error"]
    assert trials[4].state == TS.FAIL and "not a finite number" in trials[4].user_attrs["error"]
    sweep_dir = tmp_path / "sweep"
    for t in trials.values():
        job_num = t.user_attrs["job_num"]
        assert t.user_attrs["job_dir"] == str((sweep_dir / str(job_num)).resolve())
        assert t.user_attrs["overrides"] == ["trainer.max_epochs=2", f"x={t.params['x']}"]
    # each job got its trial's identity; the command line's fixed override comes first
    (first,) = impl.launcher.batches[0]
    assert first[0] == "trainer.max_epochs=2" and first[2].startswith("++callbacks.optuna_pruning={_target_:")
    record = OmegaConf.load(sweep_dir / "optuna_study.yaml")
    assert record.best.value == 0.75 and record.best.params == {"x": 1} and record.direction == "maximize"
    assert dict(record.trials) == {"complete": 1, "pruned": 1, "fail": 2, "running": 0, "waiting": 0}
    assert (sweep_dir / "multirun.yaml").is_file()
    # every job (in any process) writes under this one literal sweep dir
    assert impl.config.hydra.overrides.hydra[-1] == f"hydra.sweep.dir={sweep_dir}".replace(":", "\\:")


def test_a_trial_whose_config_does_not_compose_fails_alone(tmp_path):
    impl = _sweeper(tmp_path, lambda v, p: 0.5, bad="x=3", sampler={"type": "grid", "seed": 1})
    impl.sweep([])
    trials = {t.params["x"]: t for t in _study(tmp_path).trials}
    assert trials[3].state == TS.FAIL and "Could not load x=3" in trials[3].user_attrs["error"]
    assert "job_num" not in trials[3].user_attrs  # never launched
    assert sum(t.state == TS.COMPLETE for t in trials.values()) == 3
    assert sum(len(b) for b in impl.launcher.batches) == 3


def test_resume_runs_only_the_missing_trials_and_leaves_the_others_untouched(tmp_path):
    params = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    _sweeper(tmp_path, lambda v, p: v["x"], n_trials=2, params=params, sweep="a").sweep([])
    before = [(t.number, t.params, t.value, t.datetime_complete) for t in _study(tmp_path).trials]
    again = _sweeper(tmp_path, lambda v, p: v["x"], n_trials=3, params=params, sweep="b")
    again.sweep([])
    after = _study(tmp_path).trials
    assert len(after) == 3 and [(t.number, t.params, t.value, t.datetime_complete) for t in after[:2]] == before
    assert [len(b) for b in again.launcher.batches] == [1] and after[2].user_attrs["job_num"] == 0
    done = _sweeper(tmp_path, lambda v, p: v["x"], n_trials=3, params=params, sweep="c")
    done.sweep([])
    assert done.launcher.batches == [] and len(_study(tmp_path).trials) == 3


def test_an_interrupted_trial_is_recorded_and_run_again(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s", direction="maximize")
    dist = {"x": optuna.distributions.CategoricalDistribution([1, 2, 3, 4])}
    dead = study.ask(dist)  # left RUNNING by a sweep that died (another host: cannot be checked)
    dead.set_user_attr("keel_owner", "elsewhere:123")
    live = study.ask(dist)  # RUNNING under a live sweep on this host: not touched
    live.set_user_attr("keel_owner", f"{socket.gethostname()}:1")
    impl = _sweeper(tmp_path, lambda v, p: 0.5, n_trials=2)
    impl.sweep([])
    trials = _study(tmp_path).trials
    assert trials[dead.number].state == TS.FAIL and trials[dead.number].user_attrs["interrupted"] is True
    assert trials[live.number].state == TS.RUNNING
    rerun = trials[2]
    assert rerun.params == dead.params and rerun.user_attrs["requeued_from"] == dead.number
    assert rerun.state == TS.COMPLETE
    # the interrupted trial does not count towards n_trials: two trials ran, the rerun and a new one
    assert sum(len(b) for b in impl.launcher.batches) == 2 and len(trials) == 4
    assert finished_count(_study(tmp_path)) == 2


def test_too_many_crashes_stop_the_sweep(tmp_path):
    def job(values, pruning):
        raise RuntimeError("boom")

    impl = _sweeper(tmp_path, job, max_failure_rate=0.5)
    with pytest.raises(SweepFailedError, match=r"1 of 1 trials crashed \(max_failure_rate=0.5\)") as e:
        impl.sweep([])
    assert e.value.exit_code == 1 and len(_study(tmp_path).trials) == 1


def test_refuses_a_study_it_cannot_continue(tmp_path):
    _sweeper(tmp_path, lambda v, p: 0.5, n_trials=1).sweep([])
    with pytest.raises(SweepConfigError, match="study 's' in .* maximizes, but this sweep minimizes 'val/loss_best'"):
        _sweeper(tmp_path, lambda v, p: 0.5, metric="val/loss_best").sweep([])
    with pytest.raises(SweepConfigError, match="study 's' optimizes 'val/acc_best', this sweep 'val/f1_best'"):
        _sweeper(tmp_path, lambda v, p: 0.5, metric="val/f1_best").sweep([])


def test_bad_options_are_refused_before_any_trial(tmp_path):
    with pytest.raises(SweepConfigError, match="optimized_metric is null"):
        _sweeper(tmp_path, lambda v, p: 0.5, metric=None).sweep([])
    with pytest.raises(SweepConfigError, match="pruning_metric='val/loss' improves by minimizing but the study"
                                               " maximizes 'val/acc_best'"):
        _sweeper(tmp_path, lambda v, p: 0.5, pruner={"type": "median"}, pruning_metric="val/loss").sweep([])
    with pytest.raises(SweepConfigError, match="n_trials=0: expected an integer >= 1"):
        _sweeper(tmp_path, lambda v, p: 0.5, n_trials=0).sweep([])
    assert not (tmp_path / "study.db").exists()
