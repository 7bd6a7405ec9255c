"""A run's lifecycle around the training: its directory, lock, refusal, record and signals.

:func:`run_config` makes the config a run executes (the run's stored overrides under
``ckpt_path=auto``, the directory it really writes, the task and its defaults) as a new object;
:func:`keel.pipeline.train` checks it and freezes it. :class:`Lifecycle` then holds the run
directory for the length of the run: it locks it, refuses a directory another run owns, makes
the one :class:`~keel.run.resume.ResumePlan`, checks the machine, writes ``run.json`` at the start
and at the end (finished, failed, interrupted, pruned), turns SIGTERM/SIGUSR1 into a resumable
stop, and explains failures whose raw message does not say what to do. No training logic here.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from keel.errors import KeelError
from keel.run.record import RunRecord, RunStateError, run_status
from keel.run.resume import ResumePlan, merge_overrides, plan_resume

log = logging.getLogger("keel")

# What a run directory holds when its command was refused before it ran: Hydra's record of the
# command, its (empty) log and keel's lock file.
REFUSED_RUN_FILES = frozenset({".hydra", "train.log", ".keel.lock"})
_RUN_LOCKS: dict[str, Any] = {}


class WorkerDiedError(KeelError):
    """A DataLoader worker process died (killed, out of memory, crashed in native code)."""


def is_launcher() -> bool:
    """True in the process that owns the run's record (global rank 0, or a lone process); False in
    Lightning's DDP children and in the other ranks of a torchrun or srun job (keel.distributed)."""
    from keel.distributed import is_rank_zero

    return is_rank_zero()


def resume_command(output_dir: Path) -> str:
    return f"`python train.py ckpt_path=auto run_dir={output_dir}`"


def _hydra_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# ---------------------------------------------------------------------------- the run's config
@dataclass(frozen=True)
class RunConfig:
    """The config a run executes and what :func:`run_config` learned making it."""

    cfg: DictConfig
    output_dir: Path
    auto: bool  # continue the run in output_dir (ckpt_path=auto, or a requeued submitit job)
    task_note: str = ""


def with_stored_overrides(cfg: DictConfig) -> DictConfig:
    """``ckpt_path=auto``: compose the run's own overrides (from its run.json) + this command line's.

    ``python train.py ckpt_path=auto run_dir=DIR`` then continues the run exactly as it was
    started; overrides given now replace the run's values of the same keys (e.g. more epochs).
    The run's ``.hydra/`` record and the Hydra config that a DDP relaunch reads are updated to
    the composed overrides. Outside a Hydra app, or for a new directory, ``cfg`` is returned as is.
    Every rank of a torchrun/srun job composes the same (each reads ``run.json``: the run directory
    must be on a filesystem they share); only rank 0 rewrites the record.
    """
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("ckpt_path") != "auto" or not HydraConfig.initialized():
        return cfg
    from keel.run.record import read_record

    prior = read_record(Path(cfg.paths.output_dir))
    if not prior or not prior.get("overrides"):
        return cfg
    hc = HydraConfig.get()
    current = list(hc.overrides.task)
    merged = merge_overrides(prior["overrides"], current)
    if merged == current:
        return cfg
    from hydra import compose
    from omegaconf import read_write

    log.info("ckpt_path=auto: continuing with the run's own overrides: %s", " ".join(merged))
    new = compose(config_name=hc.job.config_name, overrides=merged)
    with read_write(hc), open_dict(hc):
        hc.overrides.task = merged
    if hc.output_subdir and is_launcher():
        record = Path(hc.runtime.output_dir) / hc.output_subdir
        if record.is_dir():
            OmegaConf.save(new, record / "config.yaml")
            OmegaConf.save(OmegaConf.create(merged), record / "overrides.yaml")
    return new


def _requeued_job(cfg: DictConfig, output_dir: Path) -> bool:
    """Whether this is a submitit job started again in a run directory that already holds its run.

    On preemption or timeout, hydra-submitit-launcher requeues the job with the same overrides
    (``ckpt_path`` not among them), in the same job directory; keel's signal handler left a
    resumable ``last.ckpt`` there. Such a job continues its run as ``ckpt_path=auto`` would
    (a finished one is reported, not trained again) instead of being refused."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or cfg.ckpt_path not in (None, ""):
        return False
    status, _ = run_status(output_dir)
    if status is None:
        return False
    log.info("submitit started this job again in %s (run status %r): continuing it as with ckpt_path=auto",
             output_dir, status)
    return True


def run_config(cfg: DictConfig) -> RunConfig:
    """The config this run executes, as a new object (``cfg`` is not changed): the run's stored
    overrides under ``ckpt_path=auto``, ``run_dir`` set to the directory the run really writes
    (a sweep's job directory), and the task (``task=auto`` resolved) with its defaults filled in
    (:func:`keel.tasks.resolve.with_task`).

    Raises:
        ConfigError: the task cannot be told or contradicts the data (the run directory Hydra
            made for this command is discarded).
    """
    from keel.config.validate import ConfigError
    from keel.tasks import TaskError
    from keel.tasks.resolve import resolve_task, with_task

    base = with_stored_overrides(cfg)
    output_dir = Path(base.paths.output_dir)
    out = copy.deepcopy(base)
    with open_dict(out):
        if "run_dir" in out:
            out.run_dir = str(output_dir)  # the directory this run really writes (sweeps: the job's)
    auto = out.get("ckpt_path") == "auto" or _requeued_job(out, output_dir)
    try:
        task = resolve_task(out)
    except TaskError as e:
        discard_refused_run_dir(output_dir)
        raise ConfigError([str(e)]) from None
    note = task.describe() if task.source in ("inferred", "contract") else ""
    return RunConfig(with_task(out, task), output_dir, auto, note)


# ---------------------------------------------------------------------------- the directory
def lock_run_dir(output_dir: Path) -> None:
    """Hold an exclusive lock on ``<run dir>/.keel.lock`` for this run. Two commands started at
    the same moment on the same run directory cannot both pass the checks below.

    A POSIX record lock (``lockf``): the kernel drops it when the process ends, even on SIGKILL,
    so it never goes stale, and unlike ``flock`` it is not shared with forked children
    (DataLoader workers), which may outlive a failed run in the same process."""
    import fcntl

    key = str(output_dir.resolve())
    if key in _RUN_LOCKS:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    f = open(output_dir / ".keel.lock", "a+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunStateError(
            f"{output_dir} is in use: another process holds its lock ({output_dir / '.keel.lock'}). "
            "Fix: wait for it, stop it, or choose another run_dir"
        ) from None
    _RUN_LOCKS[key] = f


def unlock_run_dir(output_dir: Path) -> None:
    f = _RUN_LOCKS.pop(str(output_dir.resolve()), None)
    if f is not None:
        f.close()


def discard_refused_run_dir(output_dir: Path) -> None:
    """Remove the run directory Hydra made for a command that was refused before it ran (a config
    or machine problem, exit 2), so that typos do not leave empty runs behind. Only a directory
    holding nothing but ``REFUSED_RUN_FILES`` goes: a directory with a run in it stays, with its
    own record put back in ``.hydra/`` (Hydra rewrote it for the refused command). A sweep's job
    directory stays: it is the sweep's record of that job (``keel sweep report`` lists it)."""
    if not is_launcher() or _multirun():
        return
    try:
        names = {p.name for p in output_dir.iterdir()}
    except OSError:  # not there (the Compose API makes no run directory)
        return
    if names <= REFUSED_RUN_FILES:
        import shutil

        shutil.rmtree(output_dir, ignore_errors=True)
        return
    restore_hydra_record(run_status(output_dir)[1])


def restore_hydra_record(record: dict[str, Any] | None) -> None:
    """Put the run's own overrides and config back into ``.hydra/`` (Hydra rewrote them for the
    refused command before keel could look at the directory)."""
    from hydra.core.hydra_config import HydraConfig

    if not record or not HydraConfig.initialized() or record.get("overrides") is None:
        return
    hc = HydraConfig.get()
    if not hc.output_subdir:
        return
    subdir = Path(hc.runtime.output_dir) / hc.output_subdir
    OmegaConf.save(OmegaConf.create(list(record["overrides"])), subdir / "overrides.yaml")
    if record.get("config") is not None:
        OmegaConf.save(OmegaConf.create(record["config"]), subdir / "config.yaml")


def check_run_dir(output_dir: Path, auto: bool, ckpt_path: str | None) -> None:
    """Refuse a run directory another live process is writing, or one that already holds a run
    while this command neither continues it (ckpt_path=auto) nor resumes a checkpoint."""
    from keel.atomic import pid_alive

    status, record = run_status(output_dir)
    if status is None:
        return
    host = (record or {}).get("host") or {}
    pid = host.get("pid")
    if (status == "running" and isinstance(pid, int) and pid != os.getpid()
            and host.get("hostname") == socket.gethostname() and pid_alive(pid)):
        restore_hydra_record(record)
        raise RunStateError(
            f"{output_dir} is in use: process {pid} on this host is running it (run.json status 'running'). "
            "Fix: wait for it, stop it, or choose another run_dir"
        )
    if not auto and not ckpt_path:
        restore_hydra_record(record)
        raise RunStateError(
            f"run_dir={str(output_dir)!r} already holds a run (status {status!r}, started "
            f"{(record or {}).get('started_at', '?')}). Fix: add ckpt_path=auto to continue it (or to reuse its "
            "results when it finished), or choose another run_dir"
        )


# ---------------------------------------------------------------------------- the lifecycle
@dataclass
class Lifecycle:
    """One run, from its locked directory to its recorded end.

    ``enter()`` locks the directory (rank 0), refuses it when another run owns it, makes the
    resume plan and checks the machine; ``run(body)`` records the start and calls
    ``body(self)`` under the stop signals, recording how it ended. ``started`` is the run's
    start time (``time.time()``), for wall times.
    """

    cfg: DictConfig
    output_dir: Path
    auto: bool
    started: float = field(default_factory=time.time)
    launcher: bool = field(default_factory=is_launcher)
    plan: ResumePlan = field(default_factory=ResumePlan)
    record: RunRecord | None = None
    signals: Any = None

    def enter(self) -> ResumePlan:
        """Lock, check, plan; the machine check last. Raises RunStateError, ConfigError,
        CheckpointError (the lock is released on any of them)."""
        from keel.config.machine import check_machine
        from keel.config.validate import ConfigError

        config = OmegaConf.to_container(self.cfg, resolve=True)
        if self.launcher:
            lock_run_dir(self.output_dir)
        else:
            from keel.distributed import leave_run_log_to_rank_zero

            leave_run_log_to_rank_zero(self.output_dir)
        try:
            if self.launcher:
                explicit = None if self.auto else self.cfg.get("ckpt_path")
                check_run_dir(self.output_dir, self.auto, explicit)
            # every rank plans alike: a rank that trained alone would wait for the others forever
            self.plan = plan_resume(config, self.output_dir, self.auto)
            if self.plan.finished:
                unlock_run_dir(self.output_dir)  # nothing to write: the run's results are reported as they are
                return self.plan
            try:
                check_machine(self.cfg)
            except ConfigError:
                discard_refused_run_dir(self.output_dir)
                raise
        except BaseException:
            unlock_run_dir(self.output_dir)
            raise
        return self.plan

    def run(self, body: Callable[[Lifecycle], Any]) -> Any:
        """Record the start (rank 0), run ``body(self)`` under the stop signals, record the end."""
        from keel.callbacks.preemption import StopSignals

        try:
            if self.launcher:
                self.record = RunRecord(self.output_dir)
                self.record.start(config=OmegaConf.to_container(self.cfg, resolve=True), overrides=_hydra_overrides(),
                                  seed=self.cfg.seed, resumed_from=self.plan.ckpt_path)
            with StopSignals() as self.signals:  # SIGTERM / SIGUSR1: checkpoint, record "interrupted", exit 128+N
                return body(self)
        except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl+C and SIGTERM into SystemExit
            self._end("interrupted", error=e, message=_interruption(e))
            if isinstance(e, SystemExit) and not e.code:
                # Lightning's SIGTERM exit carries no status: a killed job must not look successful
                raise SystemExit(128 + signal.SIGTERM) from e
            raise
        except BaseException as e:
            if _is_pruned(e):  # an Optuna pruner stopped the trial: not a failure
                self._end("pruned", error=e)
                raise
            explained = explain_failure(e, self.output_dir)
            self._end("failed", error=explained or e)
            if explained is not None:
                raise explained from e
            raise
        finally:
            unlock_run_dir(self.output_dir)

    def finish(self, metrics: dict[str, float], optimized_metric: str | None, objective: float | None) -> None:
        """Record a finished run (rank 0)."""
        if self.record is not None:
            self.record.end("finished", wall_time_s=time.time() - self.started, metrics=metrics,
                            optimized_metric=optimized_metric, objective=objective)

    def note_data(self, fingerprint: dict[str, Any]) -> None:
        if self.record is not None:
            self.record.update(data=fingerprint)

    def _end(self, status: str, error: BaseException, message: str | None = None) -> None:
        if self.record is not None:
            self.record.end(status, wall_time_s=time.time() - self.started, error=error, message=message)


def _is_pruned(e: BaseException) -> bool:
    """``optuna.TrialPruned`` (raised by keel's OptunaPruning callback), without importing optuna."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(e, optuna.TrialPruned)


def _interruption(e: BaseException) -> str:
    from keel.callbacks.preemption import Interrupted

    if isinstance(e, Interrupted):
        return e.message
    if type(e).__name__ == "SIGTERMException":
        return "terminated by SIGTERM; continue it with ckpt_path=auto"
    if isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and e.code == 1):
        return "interrupted (Ctrl+C); continue it with ckpt_path=auto"
    return f"stopped ({type(e).__name__} {e}); continue it with ckpt_path=auto"


def explain_failure(e: BaseException, output_dir: Path) -> KeelError | None:
    """A user-facing error for failures whose raw message does not say what to do."""
    if _dataloader_worker_died(e):
        ckpts = sorted((output_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
        newest = str(ckpts[-1]) if ckpts else "none (no checkpoint written yet)"
        first = (str(e).strip().splitlines() or [repr(e)])[0]
        if not isinstance(e, RuntimeError):
            first = f"{type(e).__name__} ({first}) while receiving a batch from a worker"
        return WorkerDiedError(
            f"a DataLoader worker process died: {first}. Newest checkpoint: {newest}. A killed worker usually ran "
            "out of memory. Fix: lower data.num_workers (0 loads in the main process) or data.batch_size, then "
            f"continue with {resume_command(output_dir)}"
        )
    return None


def _dataloader_worker_died(e: BaseException) -> bool:
    """A DataLoader worker process died: torch says so ("DataLoader worker (pid ...) exited"), or
    the main process lost the connection over which the dead worker was handing over a batch."""
    if isinstance(e, RuntimeError) and "DataLoader worker" in str(e):
        return True
    if not isinstance(e, (ConnectionError, EOFError)):
        return False
    import traceback

    return any(f.filename.replace("\\", "/").endswith("torch/utils/data/dataloader.py")
               for f in traceback.extract_tb(e.__traceback__))


__all__ = ["Lifecycle", "REFUSED_RUN_FILES", "RunConfig", "WorkerDiedError", "check_run_dir",
           "discard_refused_run_dir", "explain_failure", "is_launcher", "lock_run_dir", "resume_command",
           "run_config", "unlock_run_dir", "with_stored_overrides"]
