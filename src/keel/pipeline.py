"""``train(cfg)``: validate -> data -> model -> fit -> test with the best checkpoint -> record.

Heavy imports (torch, Lightning, data) happen inside the functions, after the config has
been checked, so composing or printing a config stays instant.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from keel.config.validate import ConfigError, validate_config
from keel.errors import KeelError

log = logging.getLogger("keel")


def _instantiate_group(
    group: DictConfig | None, what: str, kwargs_for: Callable[[DictConfig], dict[str, Any]] | None = None
) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (None/empty: []).

    ``kwargs_for(node)``: extra constructor arguments for an entry (e.g. a resumed run's TensorBoard purge step).
    """
    from hydra.utils import instantiate

    if not group:
        return []
    out = []
    for name, node in group.items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise KeelError(f"{what}.{name} has no _target_: each entry of `{what}` must be a config with a _target_")
        out.append(instantiate(node, **(kwargs_for(node) if kwargs_for else {})))
    return out


def _class_weights(cfg: DictConfig, counts: list[int]) -> list[float] | None:
    weights = cfg.model.loss.class_weights
    if weights is None:
        return None
    if weights == "balanced":
        total, k = sum(counts), len(counts)
        return [total / (k * max(c, 1)) for c in counts]
    return [float(w) for w in weights]


def build_model(cfg: DictConfig, datamodule: Any) -> Any:
    """Build the LightningModule from ``cfg.model`` and what the data fitted (plain data only)."""
    from hydra.utils import get_class

    # Called directly (not hydra's instantiate, which would hand over DictConfigs): the module's
    # hyperparameters must be plain containers to load with torch.load(weights_only=True).
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    module_cls = get_class(model_cfg.pop("_target_"))
    model_cfg.pop("_recursive_", None)
    net = model_cfg["net"]
    # null in the config: known only after setup (a contract inferred from the file)
    if net.get("input_shape", "") is None:
        net["input_shape"] = datamodule.net_input_shape
    if net.get("num_classes", "") is None:
        net["num_classes"] = datamodule.contract.num_classes
    model_cfg["loss"]["class_weights"] = _class_weights(cfg, datamodule.class_counts("train"))
    return module_cls(
        **model_cfg,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        preprocessing=datamodule.preprocessing,
        contract=datamodule.contract.to_dict(),
        reference=datamodule.reference or None,
    )


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud logging" not in record.getMessage()


def _route_lightning_logs() -> None:
    """Send Lightning's messages through Hydra's handlers once (console + run log), not twice."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items())}


def _is_launcher() -> bool:
    """True in the process that owns the run's record (global rank 0, or a lone process); False in
    Lightning's DDP children and in the other ranks of a torchrun or srun job (keel.distributed)."""
    from keel.distributed import is_rank_zero

    return is_rank_zero()


_RUN_LOCKS: dict[str, Any] = {}


def _lock_run_dir(output_dir: Path) -> None:
    """Hold an exclusive lock on ``<run dir>/.keel.lock`` for this run. Two commands started at
    the same moment on the same run directory cannot both pass the checks below.

    A POSIX record lock (``lockf``): the kernel drops it when the process ends, even on SIGKILL,
    so it never goes stale, and unlike ``flock`` it is not shared with forked children
    (DataLoader workers), which may outlive a failed run in the same process."""
    import fcntl

    from keel.run_manifest import RunStateError

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


# What a run directory holds when its command was refused before it ran: Hydra's record of the
# command, its (empty) log and keel's lock file.
_REFUSED_RUN_FILES = frozenset({".hydra", "train.log", ".keel.lock"})


def _discard_refused_run_dir(output_dir: Path) -> None:
    """Remove the run directory Hydra made for a command that was refused before it ran (a config
    or machine problem, exit 2), so that typos do not leave empty runs behind. Only a directory
    holding nothing but ``_REFUSED_RUN_FILES`` goes: a directory with a run in it stays, with its
    own record put back in ``.hydra/`` (Hydra rewrote it for the refused command). A sweep's job
    directory stays: it is the sweep's record of that job (``keel sweep report`` lists it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not _is_launcher() or (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return
    try:
        names = {p.name for p in output_dir.iterdir()}
    except OSError:  # not there (the Compose API makes no run directory)
        return
    if names <= _REFUSED_RUN_FILES:
        import shutil

        shutil.rmtree(output_dir, ignore_errors=True)
        return
    from keel.run_manifest import run_status

    _restore_hydra_record(run_status(output_dir)[1])


def _unlock_run_dir(output_dir: Path) -> None:
    f = _RUN_LOCKS.pop(str(output_dir.resolve()), None)
    if f is not None:
        f.close()


def _check_run_dir(output_dir: Path, auto: bool, ckpt_path: str | None) -> None:
    """Refuse a run directory another live process is writing, or one that already holds a run
    while this command neither continues it (ckpt_path=auto) nor resumes a checkpoint."""
    from keel.run_manifest import RunStateError, pid_alive, run_status

    status, record = run_status(output_dir)
    if status is None:
        return
    host = (record or {}).get("host") or {}
    pid = host.get("pid")
    if (status == "running" and isinstance(pid, int) and pid != os.getpid()
            and host.get("hostname") == socket.gethostname() and pid_alive(pid)):
        _restore_hydra_record(record)
        raise RunStateError(
            f"{output_dir} is in use: process {pid} on this host is running it (run.json status 'running'). "
            "Fix: wait for it, stop it, or choose another run_dir"
        )
    if not auto and not ckpt_path:
        _restore_hydra_record(record)
        raise RunStateError(
            f"run_dir={str(output_dir)!r} already holds a run (status {status!r}, started "
            f"{(record or {}).get('started_at', '?')}). Fix: add ckpt_path=auto to continue it (or to reuse its "
            "results when it finished), or choose another run_dir"
        )


def _restore_hydra_record(record: dict[str, Any] | None) -> None:
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


def _finished_result(cfg: DictConfig, output_dir: Path, announce: bool = True) -> tuple[bool, float | None]:
    """(True, objective) when ``output_dir`` holds a finished run of this same config; ``announce``
    prints its summary (rank 0 only)."""
    from keel.run_manifest import RESUME_KEYS, config_differences, run_status

    status, record = run_status(output_dir)
    if status != "finished" or record is None:
        return False, None
    stored = record.get("config")
    if stored is not None:
        current = OmegaConf.to_container(cfg, resolve=True)
        # what is logged or drawn does not change what was trained: a finished run stays finished
        diffs = config_differences(stored, current, ignore=(*RESUME_KEYS, "paths", "callbacks.progress_bar",
                                                            "model.train_metrics"))
        if diffs:
            log.info("ckpt_path=auto: %s finished with another config (%s); continuing it from its newest checkpoint",
                     output_dir, "; ".join(diffs[:5]) + (f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else ""))
            return False, None
    metrics = record.get("metrics") or {}
    objective = metrics.get(cfg.optimized_metric) if cfg.optimized_metric else None
    if not announce:
        return True, objective
    lines = ["", "keel: run already finished (ckpt_path=auto): nothing to train", f"  run directory : {output_dir}",
             f"  record        : {output_dir / 'run.json'}", f"  metrics file  : {output_dir / 'metrics.json'}"]
    test = {k: v for k, v in sorted(metrics.items()) if k.startswith("test/")}
    if test:
        lines.append("  test metrics  : " + "  ".join(f"{k}={v:.4f}" for k, v in test.items()))
    if objective is not None:
        lines.append(f"  objective     : {cfg.optimized_metric}={objective:.4f}")
    print("\n".join(lines), flush=True)
    return True, objective


def _auto_resume(output_dir: Path) -> str | None:
    from keel.run_manifest import find_resume_checkpoint

    ckpt = find_resume_checkpoint(output_dir)
    if ckpt is None:
        log.info("ckpt_path=auto: no complete checkpoint in %s/checkpoints: starting fresh", output_dir)
        return None
    log.info("ckpt_path=auto: resuming %s from %s", output_dir, ckpt)
    return str(ckpt)


def _requeued_job(cfg: DictConfig, output_dir: Path) -> bool:
    """Whether this is a submitit job started again in a run directory that already holds its run.

    On preemption or timeout, hydra-submitit-launcher requeues the job with the same overrides
    (``ckpt_path`` not among them), in the same job directory; keel's signal handler left a
    resumable ``last.ckpt`` there. Such a job continues its run as ``ckpt_path=auto`` would
    (a finished one is reported, not trained again) instead of being refused."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or cfg.ckpt_path not in (None, ""):
        return False
    from keel.run_manifest import run_status

    status, _ = run_status(output_dir)
    if status is None:
        return False
    log.info("submitit started this job again in %s (run status %r): continuing it as with ckpt_path=auto",
             output_dir, status)
    return True


def _task_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def train(cfg: DictConfig) -> float | None:
    """Run one training job; return ``cfg.optimized_metric`` (for sweepers), or None.

    ``ckpt_path=auto`` continues the run in ``paths.output_dir`` (``run_dir``) from its newest
    complete checkpoint, starts fresh when it has none, and trains nothing when that run
    already finished with this config (its objective is returned). The run's record,
    ``<run dir>/run.json``, is written at the start and at the end (see keel.run_manifest).

    Raises:
        ConfigError: the config or this machine cannot run it (nothing was trained).
        ContractViolationError: a data split breaks the contract (nothing was trained).
        RunStateError: the run directory holds another run, or is in use.
        NonFiniteError: the loss or a gradient became NaN/Inf (training stopped at that step).
    """
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    if "run_dir" in cfg:
        cfg.run_dir = str(output_dir)  # the directory this run really writes (sweeps: the job's)
    auto = cfg.ckpt_path == "auto" or _requeued_job(cfg, output_dir)
    if auto:
        cfg.ckpt_path = None  # checked as "no checkpoint", resolved below
    try:
        validate_config(cfg)
    except ConfigError:
        _discard_refused_run_dir(output_dir)
        raise
    launcher = _is_launcher()
    if launcher:
        _lock_run_dir(output_dir)
        try:
            _check_run_dir(output_dir, auto, cfg.ckpt_path)
        except BaseException:
            _unlock_run_dir(output_dir)
            raise
    else:
        from keel.distributed import leave_run_log_to_rank_zero

        leave_run_log_to_rank_zero(output_dir)
    if auto:
        # every rank decides alike: a rank that trained alone would wait for the others forever
        done, objective = _finished_result(cfg, output_dir, announce=launcher)
        if done:
            _unlock_run_dir(output_dir)
            return objective
        cfg.ckpt_path = _auto_resume(output_dir)

    from keel.config.machine import check_machine

    try:
        check_machine(cfg)
    except ConfigError:
        _unlock_run_dir(output_dir)
        _discard_refused_run_dir(output_dir)
        raise

    manifest = None
    if launcher:
        from keel.run_manifest import RunManifest

        manifest = RunManifest(output_dir)
        manifest.start(config=OmegaConf.to_container(cfg, resolve=True), overrides=_task_overrides(), seed=cfg.seed,
                       resumed_from=cfg.ckpt_path)
    from keel.callbacks.preemption import StopSignals

    try:
        with StopSignals() as signals:  # SIGTERM / SIGUSR1: checkpoint, record "interrupted", exit 128+N
            return _fit_and_record(cfg, output_dir, started, manifest, signals)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl+C and SIGTERM into SystemExit
        if manifest is not None:
            manifest.end("interrupted", wall_time_s=time.time() - started, error=e, message=_interruption(e))
        if isinstance(e, SystemExit) and not e.code:
            # Lightning's SIGTERM exit carries no status: a killed job must not look successful
            raise SystemExit(128 + signal.SIGTERM) from e
        raise
    except BaseException as e:
        if _is_pruned(e):  # an Optuna pruner stopped the trial: not a failure
            if manifest is not None:
                manifest.end("pruned", wall_time_s=time.time() - started, error=e)
            raise
        explained = _explain_failure(e, output_dir)
        if manifest is not None:
            manifest.end("failed", wall_time_s=time.time() - started, error=explained or e)
        if explained is not None:
            raise explained from e
        raise
    finally:
        _unlock_run_dir(output_dir)


def _is_pruned(e: BaseException) -> bool:
    """``optuna.TrialPruned`` (raised by keel's OptunaPruning callback), without importing optuna."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(e, optuna.TrialPruned)


class WorkerDiedError(KeelError):
    """A DataLoader worker process died (killed, out of memory, crashed in native code)."""


def _explain_failure(e: BaseException, output_dir: Path) -> KeelError | None:
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
            f"continue with {_resume_command(output_dir)}"
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


def _checkpoint_step(path: str) -> int:
    from keel.checkpoint import load_checkpoint

    return int(load_checkpoint(path).get("global_step", -1))


def _resume_command(output_dir: Path) -> str:
    return f"`python train.py ckpt_path=auto run_dir={output_dir}`"


def _interruption(e: BaseException) -> str:
    from keel.callbacks.preemption import Interrupted

    if isinstance(e, Interrupted):
        return e.message
    if type(e).__name__ == "SIGTERMException":
        return "terminated by SIGTERM; continue it with ckpt_path=auto"
    if isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and e.code == 1):
        return "interrupted (Ctrl+C); continue it with ckpt_path=auto"
    return f"stopped ({type(e).__name__} {e}); continue it with ckpt_path=auto"


def _overfit_adapter(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """Trainer arguments that make ``trainer.overfit_batches`` work with keel's in-memory data.

    Lightning implements overfitting by swapping the loader's sampler for a per-row
    ``SequentialSampler``, which breaks keel's whole-batch ``IndexBatchSampler`` (batches of
    one row, no batch axis). Here the sampler stays; its per-epoch shuffle is switched off so
    that every epoch sees the same first N batches, and Lightning gets the equivalent limits.
    """
    from keel.data.in_memory import InMemoryDataModule

    n = cfg.trainer.get("overfit_batches") or 0
    if not n or not isinstance(datamodule, InMemoryDataModule):
        return {}
    shuffled = datamodule.train_dataloader

    def same_batches_every_epoch() -> Any:
        loader = shuffled()
        loader.sampler.shuffle = False
        return loader

    datamodule.train_dataloader = same_batches_every_epoch
    log.info("trainer.overfit_batches=%s: training on the same %s train batches every epoch (no shuffle)", n, n)
    return {"overfit_batches": 0.0, "limit_train_batches": n, "limit_val_batches": n}


def _latest_checkpoint_writer(ckpt_cb: Any) -> Any:
    """A checkpoint callback that writes ``last.ckpt`` at the end of *every* epoch.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it also
    wrote a top-k checkpoint at that step, i.e. when the monitored metric improved: after a
    plateau, ``last.ckpt`` is many epochs old and ``ckpt_path=auto`` would redo them all. When
    the run's checkpoint callback asks for a last checkpoint, this one takes that job over
    (same directory, same name, every epoch) and the original keeps the best top-k files.
    Returns None when the run keeps no last checkpoint.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    if ckpt_cb is None or not ckpt_cb.save_last:
        return None
    if ckpt_cb.save_last == "link":  # a link to the newest top-k file: keep Lightning's behaviour
        return None
    ckpt_cb.save_last = False
    return ModelCheckpoint(dirpath=ckpt_cb.dirpath, filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, monitor=None,
                           save_top_k=1, every_n_epochs=1, enable_version_counter=False)


def _trainer_plugins(cfg: DictConfig) -> list[Any]:
    """Plugins the trainer config itself names (``+trainer.plugins=[...]``), instantiated."""
    from hydra.utils import instantiate

    plugins = cfg.trainer.get("plugins")
    if not plugins:
        return []
    return list(instantiate(plugins)) if isinstance(plugins, ListConfig) else [instantiate(plugins)]


def _fit_and_record(cfg: DictConfig, output_dir: Path, started: float, manifest: Any,
                    signals: Any = None) -> float | None:
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar

    from keel import gc_phases
    from keel.callbacks import NanGuard, RngState
    from keel.checkpoint_io import AtomicCheckpointIO
    from keel.distributed import cpu_threads_per_process, hydra_ddp_relaunch, is_fsdp
    from keel.hook_dispatch import NoProfiler, lean_dispatch
    from keel.run_manifest import data_fingerprint, write_json_atomic

    _route_lightning_logs()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    from lightning.pytorch.utilities import rank_zero_only

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    if rank_zero_only.rank == 0:
        _write_data_reports(output_dir, datamodule)
    if manifest is not None:
        manifest.update(data=data_fingerprint(datamodule))
    model = build_model(cfg, datamodule)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    model.run_config = run_config
    resume_step = None  # set when continuing this run in its own directory
    if cfg.ckpt_path:
        from keel.checkpoint import check_resumable, load_checkpoint

        check_resumable(cfg.ckpt_path, dict(model.hparams.net), datamodule.contract.to_dict())
        if Path(cfg.ckpt_path).resolve().is_relative_to(output_dir.resolve()):
            resume_step = int(load_checkpoint(cfg.ckpt_path).get("global_step", 0))

    def logger_kwargs(node: DictConfig) -> dict[str, Any]:
        # Continuing in the same TensorBoard run: hide what the interrupted attempt logged after
        # the checkpoint's step (SummaryWriter purge_step), so redone steps show once. Step N
        # itself is kept: callbacks log the finished epoch's values there (an epoch-start LR
        # logged at N by both attempts shows twice, with the same value). The graph is there already.
        if not str(node.get("_target_", "")).endswith("TensorBoardLogger"):
            return {}
        if resume_step is not None:
            return {"purge_step": resume_step + 1, "log_graph": False}
        if is_fsdp(cfg.trainer.get("strategy")):  # torch.jit.trace (the Graphs tab) cannot trace FSDP units
            return {"log_graph": False}
        return {}

    loggers = _instantiate_group(cfg.get("logger"), "logger", kwargs_for=logger_kwargs)
    callbacks = _instantiate_group(cfg.get("callbacks"), "callbacks")
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        log.info("logger=none: skipping the LR monitor (it needs a logger)")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # Safety on every run, not options: stop at the first NaN/Inf; RNG state in each checkpoint
    # so that a resumed run continues the uninterrupted one's random streams.
    callbacks += [NanGuard(), RngState()]
    ckpt_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if signals is not None:
        from keel.callbacks.preemption import Preemption

        ckpt_dir = Path(ckpt_cb.dirpath) if ckpt_cb is not None and ckpt_cb.dirpath else output_dir / "checkpoints"
        callbacks.append(Preemption(signals, ckpt_dir / "last.ckpt", resume_hint=_resume_command(output_dir)))
    latest_cb = _latest_checkpoint_writer(ckpt_cb)
    if latest_cb is not None:
        callbacks.append(latest_cb)
    from keel.callbacks import OnnxExport, Quantize

    exporter = next((c for c in callbacks if isinstance(c, OnnxExport)), None)
    quantizer = next((c for c in callbacks if isinstance(c, Quantize)), None)
    if exporter is not None:
        exporter.config = run_config

    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=ckpt_cb is not None,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        # the DataModule shards its own batches (keel.data.batches): no sampler replacement
        use_distributed_sampler=False,
        # last.ckpt must be whole after any kill: ckpt_path=auto resumes from it
        plugins=[*_trainer_plugins(cfg), AtomicCheckpointIO()],
        **_overfit_adapter(cfg, datamodule),
        **({} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()}),
    )
    # no per-step calls to hooks that only Lightning's empty defaults implement
    lean_dispatch(trainer, model)
    if trainer.num_devices * trainer.num_nodes > 1 and trainer.strategy.root_device.type == "cpu":
        # One process per device shares this node's cores: N processes x all cores threads thrash.
        threads = cpu_threads_per_process(trainer.num_devices)
        if threads is not None:
            torch.set_num_threads(threads)

    if trainer.is_global_zero and resume_step is None:  # a continued run logged them when it started
        _log_data_reports(loggers, datamodule)

    # start-up is over: what exists now is never traversed by a collection again (keel.gc_phases)
    gc_phases.settle()
    with hydra_ddp_relaunch(str(output_dir)):
        with warnings.catch_warnings():
            if resume_step is not None:
                # continuing this run in its own directory: its checkpoints are expected there
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        start_step = resume_step if resume_step is not None else _checkpoint_step(cfg.ckpt_path) if cfg.ckpt_path else None
        if start_step is not None and trainer.global_step == start_step:
            # resumed after its last epoch (stopped while testing or exporting): fit trained and
            # logged nothing; validation gives back the val metrics (best-so-far is in the checkpoint)
            log.info("training had finished before the interruption: validating the restored weights")
            trainer.validate(model, datamodule=datamodule, verbose=False)
        fit_metrics = dict(trainer.callback_metrics)
        # read before testing: testing the best checkpoint restores the callbacks' state as saved then
        stopped_early = bool(getattr(trainer.early_stopping_callback, "stopped_epoch", 0))
        best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
        fast = bool(trainer.fast_dev_run)
        # testing imports and runs the ONNX exporter (callbacks onnx_export, quantize): its imports
        # would again set off full collections (keel.gc_phases); settled when the job has ended
        gc_phases.pause()
        if best and not fast:
            trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        else:
            log.info("no best checkpoint (callbacks without model_checkpoint): testing the final weights")
            trainer.test(model, datamodule=datamodule, verbose=False)
        test_metrics = dict(trainer.callback_metrics)

    metrics = _plain_metrics({**fit_metrics, **{k: v for k, v in test_metrics.items() if k.startswith("test/")}})
    if cfg.optimized_metric is not None and cfg.optimized_metric not in metrics:
        raise KeelError(
            f"optimized_metric={cfg.optimized_metric!r} was not logged by this run. "
            f"Logged: {', '.join(sorted(metrics))}"
        )
    objective = metrics[cfg.optimized_metric] if cfg.optimized_metric else None
    if trainer.is_global_zero:
        record = {
            "metrics": metrics,
            "optimized_metric": cfg.optimized_metric,
            "objective": objective,
            "best_checkpoint": best or None,
            "last_checkpoint": (latest_cb.best_model_path if latest_cb is not None
                                else getattr(ckpt_cb, "last_model_path", None)) or None,
            "epochs_trained": trainer.current_epoch,
            "global_step": trainer.global_step,
            "resumed_from": cfg.ckpt_path,
            "stopped_early": stopped_early,
            "confusion_matrix": model.confusion.get("test"),
            "classes": list(datamodule.contract.classes),
            "split_sizes": datamodule.split_sizes(),
            "contract_fingerprint": datamodule.contract.fingerprint(),
            "seed": cfg.seed,
            "world_size": trainer.world_size,
            "bundle": _bundle_record(exporter, quantizer),
            "wall_time_s": round(time.time() - started, 3),
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "metrics.json", record)
        _log_hparams(cfg, loggers, metrics)
        if manifest is not None:
            manifest.end("finished", wall_time_s=time.time() - started, metrics=metrics,
                         optimized_metric=cfg.optimized_metric, objective=objective)
        _print_summary(output_dir, loggers, record)
    return objective


def _write_data_reports(output_dir: Path, datamodule: Any) -> None:
    """The run's data record: the contract used, every split's contract report (with what was
    dropped) and the drift/leakage report, under ``<run>/data/``."""
    import yaml

    out = output_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    (out / "contract.yaml").write_text(yaml.safe_dump(datamodule.contract.to_dict(), sort_keys=False))
    from keel.run_manifest import write_json_atomic

    write_json_atomic(out / "contract_report.json", datamodule.data_report())
    if datamodule.drift:
        write_json_atomic(out / "drift_report.json", datamodule.drift)


def _log_data_reports(loggers: list[Any], datamodule: Any, max_features: int = 64) -> None:
    """Drift and leakage to TensorBoard: per split summaries, label shift, leakage counts and
    per-feature PSI/JS (raw values, not only alerts) for up to ``max_features`` features."""
    from lightning.pytorch.loggers import TensorBoardLogger

    drift = datamodule.drift
    for lg in loggers:
        if not isinstance(lg, TensorBoardLogger) or not drift:
            continue
        w = lg.experiment
        for split, r in drift["splits"].items():
            summary = r["summary"]
            w.add_scalar(f"drift/{split}/psi_max", summary["max_psi"], 0)
            w.add_scalar(f"drift/{split}/psi_mean", summary["mean_psi"], 0)
            w.add_scalar(f"drift/{split}/features_warn", summary["n_warn"], 0)
            w.add_scalar(f"drift/{split}/features_alert", summary["n_alert"], 0)
            if "labels" in r:
                w.add_scalar(f"drift/{split}/label_js", r["labels"]["js"], 0)
            if "leakage" in r:
                w.add_scalar(f"drift/{split}/leaked_rows", r["leakage"]["count"], 0)
            for name, f in list(r["features"].items())[:max_features]:
                value = f["psi"] if f["kind"] == "numeric" else f["js"]
                w.add_scalar(f"drift_features/{split}/{name}", value, 0)
        dropped = datamodule.dropped.get("total", 0) if datamodule.dropped else 0
        w.add_scalar("data/dropped_rows", dropped, 0)


def _bundle_record(exporter: Any, quantizer: Any) -> dict[str, Any] | None:
    manifest = (quantizer.manifest if quantizer is not None else None) or (exporter.manifest if exporter else None)
    if manifest is None:
        return None
    return {
        "dir": str(exporter.bundle_dir),
        "models": manifest["models"],
        "parity": manifest["parity"],
        "metrics": {k: v for k, v in manifest["metrics"].items() if k != "training"},
        "quantization": manifest.get("quantization"),
    }


def _log_hparams(cfg: DictConfig, loggers: list[Any], metrics: dict[str, float]) -> None:
    """Write one HParams entry per run with its final metrics (TensorBoard's HParams tab)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    params = OmegaConf.to_container(cfg, resolve=True)
    params.pop("paths", None)
    hp_metrics = {f"hparams/{k.replace('/', '_')}": v for k, v in metrics.items() if k.split("/")[0] in ("val", "test")}
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(params, metrics=hp_metrics)
            lg.finalize("success")  # flush and close: the process may end without interpreter teardown


def _print_summary(output_dir: Path, loggers: list[Any], record: dict[str, Any]) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    lines = ["", "keel: run finished", f"  run directory : {output_dir}"]
    if record.get("resumed_from"):
        lines.append(f"  resumed from  : {record['resumed_from']}")
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lines.append(f"  tensorboard   : tensorboard --logdir {lg.log_dir}")
        elif isinstance(lg, CSVLogger):
            lines.append(f"  csv metrics   : {lg.log_dir}/metrics.csv")
    if record["best_checkpoint"]:
        lines.append(f"  best ckpt     : {record['best_checkpoint']}")
    if record["last_checkpoint"]:
        lines.append(f"  last ckpt     : {record['last_checkpoint']}")
    bundle = record.get("bundle")
    if bundle:
        q = bundle.get("quantization") or {}
        int8 = ""
        if q:
            int8 = (f"; int8 kept (acc drop {q['accuracy_drop']:+.4f}, size x{q['size_ratio']:.2f})" if q["accepted"]
                    else "; int8 left out (over the accuracy budget)")
        lines.append(f"  bundle        : {bundle['dir']} (parity max|diff| {bundle['parity']['max_abs_diff']:.1e}{int8})")
    test = {k: v for k, v in record["metrics"].items() if k.startswith("test/")}
    lines.append("  test metrics  : " + "  ".join(f"{k}={v:.4f}" for k, v in test.items()))
    if record["objective"] is not None:
        lines.append(f"  objective     : {record['optimized_metric']}={record['objective']:.4f}")
    lines.append(f"  metrics file  : {output_dir / 'metrics.json'}")
    print("\n".join(lines), flush=True)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Build the bundle of ``cfg.ckpt_path`` (the export.py job); return the manifest.

    The data for parity checks, int8 calibration and evaluation is rebuilt from the config
    stored in the checkpoint, so a checkpoint is all this needs.

    Raises:
        CheckpointError: missing/unsafe/foreign checkpoint. ExportError: export or parity failure.
    """
    from hydra.utils import instantiate

    from keel.checkpoint import CheckpointError, keel_section, load_checkpoint
    from keel.export.build import ExportOptions, QuantizeOptions, add_int8, export_checkpoint

    _route_lightning_logs()
    ckpt_path = Path(cfg.ckpt_path)
    section = keel_section(load_checkpoint(ckpt_path), ckpt_path)
    config = section.get("config")
    if not config or "data" not in config:
        raise CheckpointError(f"{ckpt_path}: holds no run config (written by an older keel?); cannot rebuild its data")
    bundle_dir = Path(cfg.bundle_dir) if cfg.bundle_dir else ckpt_path.resolve().parent.parent / "bundle"

    def options(node: DictConfig) -> dict[str, Any]:
        return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ("_target_", "bundle_dir")}

    datamodule = instantiate(OmegaConf.create(config["data"]))
    manifest = export_checkpoint(ckpt_path, bundle_dir, datamodule, ExportOptions(**options(cfg.callbacks.onnx_export)),
                                 config=config)
    if cfg.quantize_int8:
        manifest = add_int8(bundle_dir, datamodule, QuantizeOptions(**options(cfg.callbacks.quantize)))
    q = manifest.get("quantization") or {}
    lines = ["", "keel: bundle written", f"  bundle        : {bundle_dir}",
             f"  parity        : max|diff| {manifest['parity']['max_abs_diff']:.2e}, class agreement "
             f"{manifest['parity']['class_agreement']:.4f} on {manifest['parity']['rows']} held-out rows",
             f"  fp32          : test acc {manifest['metrics']['fp32']['test_acc']:.4f}"]
    if q:
        lines.append(f"  int8          : test acc {q['test_acc_int8']:.4f} (drop {q['accuracy_drop']:+.4f}), size "
                     f"x{q['size_ratio']:.2f}, {'kept' if q['accepted'] else 'left out: ' + q['reason']}")
    lines.append(f"  verify        : keel bundle verify {bundle_dir}")
    print("\n".join(lines), flush=True)
    return manifest


def export_main(cfg: DictConfig) -> None:
    """Hydra task function of export.py: user mistakes print one message and exit 2."""
    from keel import gc_phases

    try:
        with gc_phases.job():  # mostly imports (torch, the ONNX exporter): no full collections
            export(cfg)
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


def _with_stored_overrides(cfg: DictConfig) -> DictConfig:
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
    from keel.run_manifest import merge_overrides, read_manifest

    prior = read_manifest(Path(cfg.paths.output_dir))
    if not prior or not prior.get("overrides"):
        return cfg
    hc = HydraConfig.get()
    current = list(hc.overrides.task)
    merged = merge_overrides(prior["overrides"], current)
    if merged == current:
        return cfg
    from hydra import compose
    from omegaconf import open_dict, read_write

    log.info("ckpt_path=auto: continuing with the run's own overrides: %s", " ".join(merged))
    new = compose(config_name=hc.job.config_name, overrides=merged)
    with read_write(hc), open_dict(hc):
        hc.overrides.task = merged
    if hc.output_subdir and _is_launcher():
        record = Path(hc.runtime.output_dir) / hc.output_subdir
        if record.is_dir():
            OmegaConf.save(new, record / "config.yaml")
            OmegaConf.save(OmegaConf.create(merged), record / "overrides.yaml")
    return new


def main(cfg: DictConfig) -> float | None:
    """Hydra task function: user mistakes print one message and exit 2 (single runs).

    In a multirun the error is re-raised so the sweeper records the job as failed.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from keel import gc_phases

    try:
        with gc_phases.job():  # no full collections while imports build the heap (settled before fit)
            return train(_with_stored_overrides(cfg))
    except KeelError as e:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if multirun:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
