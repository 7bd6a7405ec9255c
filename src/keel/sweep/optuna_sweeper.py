"""The ``keel_optuna`` Hydra sweeper over current Optuna (ask-and-tell; any Hydra launcher).

One command drives one study: ``python train.py -m hparams_search=optuna``. Each trial is one
Hydra job (its own directory ``<sweep dir>/<job number>``); the job's return value
(``keel.pipeline.train`` returns ``cfg.optimized_metric``) is told to the study. The objective
``auto`` (the default ``optimized_metric``) is the task's optimized metric (``val/acc_best``,
``val/rmse_best``), the task told from the composed sweep config as a job tells it
(:func:`keel.tasks.resolve.resolve_task`); :func:`resolve_objective` decides it. A job that
raises ``optuna.TrialPruned`` (the ``OptunaPruning`` callback this sweeper adds to each job)
is recorded PRUNED, any other failure FAIL, and the sweep goes on.

The study lives in ``storage`` (SQLite by default) under a name that does not depend on the
sweep directory, so the same command resumes it: ``n_trials`` is the number of finished trials
the study should hold, and trials left running by an interrupted sweep are recorded FAIL
(``interrupted``) and queued again with the same parameters.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from keel.errors import KeelError
from keel.sweep.search_space import SearchSpace, build_search_space, override_value
from keel.sweep.study import (
    SweepConfigError,
    absolute_storage,
    build_pruner,
    build_sampler,
    metric_direction,
    open_storage,
    resolve_direction,
)

log = logging.getLogger(__name__)

PRUNING_KEY = "callbacks.optuna_pruning"
PRUNING_TARGET = "keel.callbacks.optuna_pruning.OptunaPruning"
RESULTS_FILE = "optuna_study.yaml"
OWNER_ATTR = "keel_owner"
AUTO = "auto"  # keel.tasks.resolve.AUTO (that module is imported only when a metric is auto)


class SweepFailedError(KeelError):
    """More trials crashed than ``max_failure_rate`` allows; the sweep stopped (exit status 1)."""

    exit_code = 1


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive_elsewhere(owner: str | None) -> bool:
    """True when ``owner`` (host:pid) is another live process on this host (a sweep still running)."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished_count(study: Any) -> int:
    """Trials that count towards ``n_trials``: complete, pruned and failed, not the interrupted ones."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(1 for t in done if not t.user_attrs.get("interrupted"))


@dataclass(frozen=True)
class Objective:
    """What a study optimizes and what its trials report to the pruner, ``auto`` resolved.

    Attributes:
        metric: the optimized metric (what each job returns), e.g. ``val/rmse_best``.
        pruning_metric: the per-epoch value each trial reports to the pruner.
        task: the task that turned ``auto`` into ``metric`` (None: the metric was named).
        reason: how that task was told (``ResolvedTask.describe()``; empty when ``task`` is None).
    """

    metric: str
    pruning_metric: str
    task: str | None = None
    reason: str = ""


def _auto_problem(error: str) -> str:
    from keel.tasks import TASKS, get_task

    named = ", ".join(f"{get_task(t).optimized} ({t})" for t in TASKS)
    return (f"optimized_metric=auto: the study's objective is the task's optimized metric, and the task cannot be "
            f"told from the sweep's config: {error} Or name the objective: optimized_metric=<metric>, e.g. {named}")


def resolve_objective(metric: str, pruning_metric: str | None, config: Any) -> Objective:
    """The study's objective from the sweeper's ``metric`` (``${optimized_metric}``) and
    ``pruning_metric`` options: ``auto`` becomes the optimized metric of the task that
    ``config`` (the composed sweep config) resolves to; a null or ``auto`` ``pruning_metric``
    becomes the objective. The config is read only when a metric is ``auto``.

    Raises:
        SweepConfigError: the task cannot be told (a :class:`keel.tasks.TaskError`: an unknown
            task, one the contract contradicts, an ambiguous or missing target column, nothing
            to tell it from) or the data file to tell it from cannot be read; the message says why
            and names both fixes (the task, or the objective).
    """
    task = reason = None
    if metric == AUTO:
        from keel.tasks import TaskError, get_task
        from keel.tasks.resolve import resolve_task

        try:
            resolved = resolve_task(config)
        except TaskError as e:
            raise SweepConfigError(_auto_problem(str(e))) from None
        if resolved.source == "placeholder":  # no file to look at: every job would fail on it
            path = OmegaConf.select(config, "data.path", default=None, throw_on_missing=False)
            target = OmegaConf.select(config, "data.target", default=None, throw_on_missing=False)
            raise SweepConfigError(_auto_problem(
                f"the task is told from the target column data.target={target!r} of data.path={path!r}, which "
                "could not be read. Fix: check data.path and data.target, or name the task (e.g. task=regression)."))
        task, reason = resolved.name, resolved.describe()
        metric = get_task(task).optimized
    pruning = metric if pruning_metric in (None, AUTO) else pruning_metric
    return Objective(metric, pruning, task, reason or "")


def trial_task_problem(objective: Objective, job_config: Any) -> str | None:
    """Why a trial's composed config does not fit a study whose objective came from its task
    (a search space that changes ``data`` or ``task`` can make another task, whose value would
    not compare), or None. Only a study with an ``auto`` objective (``objective.task``) is
    checked; what the job itself would refuse (an unreadable file) is left to the job."""
    if objective.task is None or not isinstance(job_config, DictConfig):
        return None
    from keel.tasks import TaskError, get_task
    from keel.tasks.resolve import resolve_task

    try:
        resolved = resolve_task(job_config)
    except TaskError as e:
        return f"the task cannot be told: {e}"
    if resolved.source == "placeholder" or resolved.name == objective.task:
        return None
    return (f"this trial's config makes a {resolved.name} task ({resolved.describe()}) but the study optimizes "
            f"{objective.metric!r} of {objective.task}: one study cannot mix tasks. Fix: keep data and task fixed "
            "in the search space (sweep each task in its own study)")


def pruning_override(storage: str, study_name: str, number: int, monitor: str, pruner: Mapping[str, Any]) -> str:
    """The override that adds the pruning callback of trial ``number`` to a job."""
    node = {"_target_": PRUNING_TARGET, "storage": storage, "study_name": study_name, "trial_number": number,
            "monitor": monitor, "pruner": dict(pruner)}
    return f"++{PRUNING_KEY}={override_value(node)}"


class OptunaSweeperImpl:
    """See the module docstring; the options are those of ``KeelOptunaSweeperConf``."""

    def __init__(
        self,
        *,
        n_trials: int,
        n_jobs: int,
        direction: str,
        metric: str | None,
        study_name: str,
        storage: str | None,
        sampler: Mapping[str, Any],
        pruner: Mapping[str, Any],
        pruning_metric: str | None,
        max_failure_rate: float,
        params: Mapping[str, Any] | None,
    ) -> None:
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.direction = direction
        self.metric = metric
        self.study_name = study_name
        self.storage = storage
        self.sampler_spec = _plain(sampler)
        self.pruner_spec = _plain(pruner) or {"type": "none"}
        self.pruning_metric = pruning_metric
        self.max_failure_rate = max_failure_rate
        self.params = _plain(params) or {}
        self.config: DictConfig | None = None
        self.hydra_context: Any = None
        self.launcher: Any = None
        self.job_idx = 0

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.job_idx = 0

    # -- checks -------------------------------------------------------------------------------
    def _check_options(self) -> tuple[Objective, str]:
        """(the objective, the study's direction) from the options and the composed config.

        Raises:
            SweepConfigError: every bad option at once; then a task that cannot be told
                (``auto`` objective), a bad direction, a pruning metric that improves the other
                way, bad pruner options.
        """
        problems = []
        if not self.metric:
            problems.append("optimized_metric is null: a study needs an objective. "
                            "Fix: optimized_metric=auto (the task's optimized metric)")
        if not (isinstance(self.n_trials, int) and self.n_trials >= 1):
            problems.append(f"hydra.sweeper.n_trials={self.n_trials!r}: expected an integer >= 1")
        if not (isinstance(self.n_jobs, int) and self.n_jobs >= 1):
            problems.append(f"hydra.sweeper.n_jobs={self.n_jobs!r}: expected an integer >= 1")
        if not (isinstance(self.max_failure_rate, (int, float)) and 0.0 <= self.max_failure_rate <= 1.0):
            problems.append(f"hydra.sweeper.max_failure_rate={self.max_failure_rate!r}: expected a number in [0, 1]")
        if not self.study_name:
            problems.append("hydra.sweeper.study_name is empty. Fix: e.g. hydra.sweeper.study_name=digits_mlp")
        if problems:
            raise SweepConfigError("invalid sweeper options:\n" + "\n".join(f"  - {p}" for p in problems))
        objective = resolve_objective(self.metric, self.pruning_metric, self.config)
        direction = resolve_direction(self.direction, objective.metric)
        monitor = objective.pruning_metric
        if self.pruner_spec.get("type") != "none" and metric_direction(monitor) != direction:
            raise SweepConfigError(
                f"hydra.sweeper.pruning_metric={monitor!r} improves by {metric_direction(monitor).replace('ize', 'izing')}"
                f" but the study {direction}s {objective.metric!r}: the pruner would stop the best trials. "
                f"Fix: hydra.sweeper.pruning_metric={objective.metric}"
            )
        build_pruner(self.pruner_spec)  # bad pruner options fail here, not in every job
        return objective, direction

    # -- the sweep ----------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        assert self.config is not None and self.launcher is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # keel logs each trial itself
        objective, direction = self._check_options()
        if objective.task is not None:
            log.info("keel_optuna: optimized_metric=auto -> %s (%s)", objective.metric, objective.reason)
        space = build_search_space(self.params, arguments)
        sweep_dir = self._pin_sweep_dir()
        storage_url = absolute_storage(self.storage or f"sqlite:///{sweep_dir / 'optuna.db'}")
        storage = open_storage(storage_url)
        study = optuna.create_study(storage=storage, study_name=self.study_name, direction=direction,
                                    load_if_exists=True)
        self._ctx = {"storage": storage_url, "monitor": objective.pruning_metric, "sweep_dir": sweep_dir,
                     "direction": direction, "metric": objective.metric, "objective": objective}
        self._check_study(study, direction)
        requeued = self._recover_interrupted(study, storage)
        n_trials = self.n_trials
        if self.sampler_spec.get("type") == "grid":
            n_trials = min(n_trials, math.prod(len(v) for v in space.grid().values()))
        study.sampler = build_sampler(self.sampler_spec, grid=space.grid, seed_offset=len(study.trials))
        study.pruner = build_pruner(self.pruner_spec)

        done = finished_count(study)
        log.info("keel_optuna: study %r in %s (%s %s; %d finished trial(s)%s); target n_trials=%d; sweep dir %s",
                 self.study_name, storage_url, direction, objective.metric, done,
                 f", {requeued} interrupted trial(s) queued again" if requeued else "", n_trials, sweep_dir)
        if space.params:
            log.info("keel_optuna: searching %s", ", ".join(f"{n} ({p.kind})" for n, p in space.params.items()))
        else:
            log.warning("keel_optuna: empty search space: every trial runs the same config")
        self._write_results(study, n_trials)
        to_go = n_trials - done
        if to_go <= 0:
            log.info("keel_optuna: the study already has %d finished trial(s) (n_trials=%d): nothing to run. "
                     "Raise hydra.sweeper.n_trials to continue it, or pick a new hydra.sweeper.study_name.",
                     done, n_trials)
        launched = failed = 0
        returns = []
        while to_go > 0:
            batch = min(self.n_jobs, to_go)
            results, n_failed = self._run_batch(study, space, batch)
            returns.append(results)
            launched += batch
            failed += n_failed
            to_go -= batch
            self._write_results(study, n_trials)
            if failed / launched > self.max_failure_rate:
                raise SweepFailedError(
                    f"{failed} of {launched} trials crashed (max_failure_rate={self.max_failure_rate}); "
                    f"the sweep stopped. See the failed jobs' logs under {sweep_dir} and "
                    f"`keel sweep report {sweep_dir}`."
                )
        self._log_best(study)
        return returns

    def _pin_sweep_dir(self) -> Path:
        """Resolve the sweep dir once, here, and make every job use that literal path: jobs in
        other processes (joblib) would otherwise resolve ``${now:}_${keel.uid:}`` themselves."""
        cfg = self.config
        sweep_dir = str(cfg.hydra.sweep.dir)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.sweep.dir = sweep_dir
            cfg.hydra.overrides.hydra.append(f"hydra.sweep.dir={override_value(sweep_dir)}")
        path = Path(sweep_dir)
        path.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, path / "multirun.yaml")
        return path

    def _check_study(self, study: Any, direction: str) -> None:
        metric = self._ctx["metric"]
        stored_dir = study.direction.name.lower()
        if stored_dir != direction:
            raise SweepConfigError(
                f"study {self.study_name!r} in {self._ctx['storage']} {stored_dir}s, but this sweep {direction}s "
                f"{metric!r}. Fix: pick another hydra.sweeper.study_name, or the study's metric/direction"
            )
        stored_metric = study.user_attrs.get("optimized_metric")
        if stored_metric is None:
            study.set_user_attr("optimized_metric", metric)
        elif stored_metric != metric:
            raise SweepConfigError(
                f"study {self.study_name!r} optimizes {stored_metric!r}, this sweep {metric!r}: their values do "
                f"not compare. Fix: optimized_metric={stored_metric}, or another hydra.sweeper.study_name"
            )

    def _recover_interrupted(self, study: Any, storage: Any) -> int:
        """Record trials left RUNNING by a dead sweep as FAIL (interrupted) and queue their
        parameters again, so the resumed sweep re-runs them first."""
        from optuna.trial import TrialState

        study_id = storage.get_study_id_from_name(self.study_name)
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _alive_elsewhere(t.user_attrs.get(OWNER_ATTR)):
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            _tell(study, t.number, state=TrialState.FAIL)
            if t.params:
                study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number})
            log.warning("keel_optuna: trial %d was left running by an interrupted sweep: recorded FAIL "
                        "(interrupted) and queued again", t.number)
            n += 1
        return n

    def _run_batch(self, study: Any, space: SearchSpace, batch: int) -> tuple[list[Any], int]:
        import optuna
        from hydra.core.utils import JobStatus, configure_log

        ctx = self._ctx
        distributions = {name: p.distribution() for name, p in space.params.items()}
        trials, job_overrides, failed = [], [], 0
        for _ in range(batch):
            trial = study.ask(distributions)
            trial.set_user_attr(OWNER_ATTR, _owner())
            trial.set_user_attr("sweep_dir", str(ctx["sweep_dir"].resolve()))
            overrides = space.overrides(trial.params)
            if self.pruner_spec.get("type") != "none":
                overrides.append(pruning_override(ctx["storage"], self.study_name, trial.number, ctx["monitor"],
                                                  self.pruner_spec))
            problem = self._compose_problem(overrides)
            if problem is not None:  # never launched: the launcher would fail the whole batch
                self._tell_failed(study, trial, f"the job's config does not compose: {problem}", overrides)
                failed += 1
                continue
            trials.append(trial)
            job_overrides.append(overrides)
        if not trials:
            return [], failed
        for i, (trial, overrides) in enumerate(zip(trials, job_overrides)):
            trial.set_user_attr("job_num", self.job_idx + i)
            trial.set_user_attr("overrides", [o for o in overrides if PRUNING_KEY not in o])
            searched = [p.override(trial.params[n]) for n, p in space.params.items()]
            log.info("keel_optuna: trial %d (job %d): %s", trial.number, self.job_idx + i,
                     " ".join(searched) or "(fixed config)")
        results = self.launcher.launch(job_overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(results)
        # In-process jobs leave their own logging set up (file handler in the last job's dir).
        hydra_logging = OmegaConf.select(self.config, "hydra.hydra_logging")
        if hydra_logging is not None:
            configure_log(hydra_logging, OmegaConf.select(self.config, "hydra.verbose"))
        for trial, ret in zip(trials, results):
            job_dir = _job_dir(ret)
            if job_dir:
                trial.set_user_attr("job_dir", job_dir)
            if ret.status == JobStatus.COMPLETED:
                value = ret._return_value  # noqa: SLF001 - read without JobReturn's stderr noise
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    value = float("nan")
                if not math.isfinite(value):
                    self._tell_failed(study, trial, f"the job returned {ret._return_value!r}, not a finite number "
                                                    f"({ctx['metric']})", None)
                    failed += 1
                    continue
                _tell(study, trial, values=value)
                log.info("keel_optuna: trial %d COMPLETE: %s=%.6g", trial.number, ctx["metric"], value)
            elif isinstance(ret._return_value, optuna.TrialPruned):
                frozen = _tell(study, trial, state=optuna.trial.TrialState.PRUNED)
                log.info("keel_optuna: trial %d PRUNED at epoch %s (%s)", trial.number, frozen.last_step,
                         ret._return_value)
            else:
                err = ret._return_value
                self._tell_failed(study, trial, f"{type(err).__name__}: {err}", None)
                failed += 1
        return list(results), failed

    def _compose_problem(self, overrides: Sequence[str]) -> str | None:
        try:
            job_config = self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                                            sweep_overrides=list(overrides))
        except Exception as e:  # noqa: BLE001 - any composition error fails this trial only
            return f"{type(e).__name__}: {e}"
        return trial_task_problem(self._ctx["objective"], job_config)

    def _tell_failed(self, study: Any, trial: Any, error: str, overrides: Sequence[str] | None) -> None:
        from optuna.trial import TrialState

        if overrides is not None:
            trial.set_user_attr("overrides", [o for o in overrides if PRUNING_KEY not in o])
        trial.set_user_attr("error", error[-2000:])
        _tell(study, trial, state=TrialState.FAIL)
        log.warning("keel_optuna: trial %d FAIL: %s", trial.number, " ".join(error.split())[:500])

    def _log_best(self, study: Any) -> None:
        from optuna.trial import TrialState

        counts = _state_counts(study)
        summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("keel_optuna: no trial completed (%s)", summary or "no trials")
            return
        best = study.best_trial
        log.info("keel_optuna: best trial %d: %s=%.6g %s (%s)", best.number, self._ctx["metric"], best.value,
                 best.params, summary)
        log.info("keel_optuna: report: keel sweep report %s", self._ctx["sweep_dir"])

    def _write_results(self, study: Any, n_trials: int) -> None:
        """``<sweep dir>/optuna_study.yaml``: where the study is, its state and its best trial
        (what ``keel sweep report`` reads to tell pruned from failed jobs)."""
        from optuna.trial import TrialState

        ctx = self._ctx
        record: dict[str, Any] = {
            "study_name": self.study_name,
            "storage": ctx["storage"],
            "optimized_metric": ctx["metric"],
            "direction": ctx["direction"],
            "pruning_metric": ctx["monitor"],
            "n_trials": n_trials,
            "trials": {s.lower(): n for s, n in _state_counts(study).items()},
        }
        if ctx["objective"].task is not None:  # the task that made optimized_metric=auto this metric
            record["task"] = ctx["objective"].task
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            best = study.best_trial
            record["best"] = {"trial": best.number, "value": best.value, "params": dict(best.params),
                              "job_dir": best.user_attrs.get("job_dir"), "overrides": best.user_attrs.get("overrides")}
        OmegaConf.save(OmegaConf.create(record), ctx["sweep_dir"] / RESULTS_FILE)


def _tell(study: Any, trial: Any, values: float | None = None, state: Any = None) -> Any:
    """``study.tell``; the grid sampler's "grid exhausted" stop (meant for ``optimize``) is not
    an error here: the trial is stored before it is raised, and n_trials never exceeds the grid."""
    try:
        return study.tell(trial, values=values, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return study.get_trials(deepcopy=False)[trial if isinstance(trial, int) else trial.number]


def _state_counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
                                  TrialState.WAITING)}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def _job_dir(ret: Any) -> str | None:
    try:
        return str(Path(ret.hydra_cfg.hydra.runtime.output_dir).resolve())
    except Exception:  # noqa: BLE001 - a launcher that does not return the job's hydra config
        return None


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, Mapping) else node
