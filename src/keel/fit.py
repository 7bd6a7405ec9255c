"""One run's work: data -> model -> Trainer -> fit -> test with the best checkpoint -> bundle.

:func:`fit_test_export` takes the frozen run config and the resume plan and returns a
:class:`FitResult`; nothing is handed over through attributes set on callbacks or modules. The
lifecycle around it (directory, lock, record, signals) is :mod:`keel.run.lifecycle`; what is
written and printed of the result is :mod:`keel.run.report`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from keel.errors import KeelError

log = logging.getLogger("keel")


@dataclass(frozen=True)
class FitResult:
    """What one run produced (plain data): metrics, checkpoints, the test record and the bundle."""

    task: str
    metrics: dict[str, float]
    optimized_metric: str | None
    objective: float | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    epochs_trained: int
    global_step: int
    stopped_early: bool
    test_record: dict[str, Any]
    split_sizes: dict[str, int]
    contract_fingerprint: str
    world_size: int
    is_global_zero: bool
    bundle: dict[str, Any] | None = None
    loggers: list[Any] = field(default_factory=list, repr=False)


def instantiate_group(
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


def build_model(cfg: DictConfig, datamodule: Any) -> Any:
    """Build the LightningModule from ``cfg.model`` and what the data fitted (plain data only).

    The task is the data contract's (``cfg.task``, when it names one, must agree). The net gets
    the contract's input shape and the task's output size where its constructor takes them and its
    config leaves them out or null (:func:`keel.models.net_args.net_arguments`).
    """
    from hydra.utils import get_class

    from keel.models.net_args import net_arguments
    from keel.tasks import get_task

    task = get_task(datamodule.contract.task)
    wanted = cfg.get("task", "auto")
    if wanted not in (None, "auto", task.name):
        raise KeelError(f"task={wanted} but the data's contract {datamodule.contract.name!r} is a {task.name} "
                        f"contract. Fix: task={task.name}")
    # Called directly (not hydra's instantiate, which would hand over DictConfigs): the module's
    # hyperparameters must be plain containers to load with torch.load(weights_only=True).
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    module_cls = get_class(model_cfg.pop("_target_"))
    model_cfg.pop("_recursive_", None)
    # the contract's input shape and the task's output size, where the constructor takes them
    # and the config leaves them out or null (known only after setup for an inferred contract)
    net = net_arguments(model_cfg["net"], datamodule.net_input_shape, task.output_size(datamodule.contract))
    model_cfg["net"] = task.prepare_net(net)  # norm: auto -> the task's
    model_cfg["loss"] = task.prepare_loss(model_cfg.get("loss") or {}, datamodule)
    return module_cls(
        **model_cfg,
        task=task.name,
        target=task.target_info(datamodule),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        preprocessing=datamodule.preprocessing,
        contract=datamodule.contract.to_dict(),
        reference=getattr(datamodule, "reference", None) or None,  # optional (keel.data.protocol)
    )


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud logging" not in record.getMessage()


def route_lightning_logs() -> None:
    """Send Lightning's messages through Hydra's handlers once (console filter + run log, see
    :mod:`keel.run.console`), not twice; silence the library warnings a run is known to raise."""
    from keel.run.console import quiet_known_warnings

    quiet_known_warnings()
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


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


def write_data_reports(output_dir: Path, datamodule: Any) -> None:
    """The run's data record: the contract used, every split's contract report (with what was
    dropped) and the drift/leakage report, under ``<run>/data/``."""
    import yaml

    from keel.atomic import write_json_atomic

    out = output_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    (out / "contract.yaml").write_text(yaml.safe_dump(datamodule.contract.to_dict(), sort_keys=False))
    # data_report() and drift are optional parts of the data-module protocol (keel.data.protocol)
    report = datamodule.data_report() if callable(getattr(datamodule, "data_report", None)) else {}
    write_json_atomic(out / "contract_report.json", report)
    drift = getattr(datamodule, "drift", None)
    if drift:
        write_json_atomic(out / "drift_report.json", drift)


def log_data_reports(loggers: list[Any], datamodule: Any) -> None:
    """Drift and leakage to TensorBoard, where many features read well: per split (``val``,
    ``test``) a Markdown table of the features (Text tab, ``<split>/drift``), a histogram of the
    features' PSI (``<split>/drift_feature_psi``) and three summary scalars under the split's own
    group (``<split>/drift_psi_max``, ``<split>/drift_features_alert``, ``<split>/drift_label_js``
    or ``<split>/drift_target_psi``); the data report (rows dropped, leakage) as text
    (``data/report``). No card per feature: the full report is ``<run>/data/drift_report.json``."""
    import numpy as np
    from lightning.pytorch.loggers import TensorBoardLogger

    from keel.loggers.tensorboard import drift_table, feature_statistics

    drift = getattr(datamodule, "drift", None)  # optional (keel.data.protocol)
    dropped = (getattr(datamodule, "dropped", None) or {}).get("total", 0)
    for lg in loggers:
        if not isinstance(lg, TensorBoardLogger):
            continue
        w = lg.experiment
        lines = [f"rows dropped by the contract (data.on_violation=drop): {dropped}"]
        for split, r in (drift or {}).get("splits", {}).items():
            summary = r["summary"]
            if summary.get("max_psi") is not None:
                w.add_scalar(f"{split}/drift_psi_max", summary["max_psi"], 0)
            w.add_scalar(f"{split}/drift_features_alert", summary["n_alert"], 0)
            if r.get("labels") and r["labels"].get("js") is not None:
                w.add_scalar(f"{split}/drift_label_js", r["labels"]["js"], 0)
            if r.get("target") and r["target"].get("psi") is not None:
                w.add_scalar(f"{split}/drift_target_psi", r["target"]["psi"], 0)
            values = feature_statistics(r)
            if values:
                w.add_histogram(f"{split}/drift_feature_psi", np.asarray(values), 0)
            w.add_text(f"{split}/drift", drift_table(split, r), 0)
            if r.get("leakage"):
                lines.append(f"{split}: {r['leakage']['count']} rows also in train")
        w.add_text("data/report", "  \n".join(lines), 0)


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items())}


@dataclass
class _RunCallbacks:
    """The run's Trainer callbacks and the bundle steps kept out of them."""

    callbacks: list[Any]
    exporter: Any  # OnnxExport or None: runs after testing, with the best checkpoint
    quantizer: Any  # Quantize or None
    checkpoint: Any  # the ModelCheckpoint or None
    latest: Any  # the writer of checkpoints/last.ckpt or None
    explainer: Any = None  # Explanations or None: a test-time hook whose importance report the bundle gets


def _run_callbacks(cfg: DictConfig, run_config: dict[str, Any], loggers: list[Any], output_dir: Path,
                   signals: Any) -> _RunCallbacks:
    """``cfg.callbacks`` plus what every run gets (NaN guard, RNG state, the run config in each
    checkpoint, preemption handling, the last-checkpoint writer); the bundle steps set apart."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from keel.callbacks import Explanations, NanGuard, OnnxExport, Quantize, RngState, RunConfigInCheckpoint
    from keel.run.lifecycle import resume_command

    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    # the bundle steps run after testing, called with the best checkpoint (their results are
    # fit_test_export's return value); they are not hooks of this run's Trainer
    exporter = next((c for c in callbacks if isinstance(c, OnnxExport)), None)
    quantizer = next((c for c in callbacks if isinstance(c, Quantize)), None)
    callbacks = [c for c in callbacks if not isinstance(c, (OnnxExport, Quantize))]
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        log.info("logger=none: skipping the LR monitor (it needs a logger)")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # Safety on every run, not options: stop at the first NaN/Inf; RNG state in each checkpoint
    # so that a resumed run continues the uninterrupted one's random streams; the run's config
    # in each checkpoint so that export rebuilds its data.
    callbacks += [NanGuard(), RngState(), RunConfigInCheckpoint(run_config)]
    ckpt_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if signals is not None:
        from keel.callbacks.preemption import Preemption

        ckpt_dir = Path(ckpt_cb.dirpath) if ckpt_cb is not None and ckpt_cb.dirpath else output_dir / "checkpoints"
        callbacks.append(Preemption(signals, ckpt_dir / "last.ckpt", resume_hint=resume_command(output_dir)))
    latest_cb = _latest_checkpoint_writer(ckpt_cb)
    if latest_cb is not None:
        callbacks.append(latest_cb)
    explainer = next((c for c in callbacks if isinstance(c, Explanations)), None)
    return _RunCallbacks(callbacks, exporter, quantizer, ckpt_cb, latest_cb, explainer)


def _tensorboard_run_name(root: Path, output_dir: Path, continued: bool) -> str:
    """``version: auto``: the run's readable name (keel.loggers.run_name); a continued run keeps
    the name its TensorBoard folder already has."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from keel.loggers import run_name

    existing = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if continued and len(existing) == 1:
        return existing[0]
    if not HydraConfig.initialized():
        return output_dir.name
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    job_num = None
    if hc.mode == RunMode.MULTIRUN:
        job_num = hc.job.num
        overrides = _swept_overrides(Path(hc.sweep.dir), overrides)
    return run_name(output_dir, overrides, dict(hc.runtime.choices), job_num)


def _swept_overrides(sweep_dir: Path, overrides: list[str]) -> list[str]:
    """A sweep job's overrides less those every job of the sweep shares (the command line's
    plain ``key=value`` ones, in the sweep's multirun.yaml): what tells its jobs apart."""
    import yaml

    try:
        shared = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return overrides
    # a value with sweep syntax (a,b / range() / choice() / interval()) varies between jobs
    constant = {o for o in shared or [] if not any(c in o.split("=", 1)[-1] for c in ",()")}
    return [o for o in overrides if o not in constant]


def _run_loggers(cfg: DictConfig, plan: Any, continued: bool, output_dir: Path) -> list[Any]:
    """``cfg.logger``; TensorBoard continues the same run on a resume in place."""
    from keel.distributed import is_fsdp

    def logger_kwargs(node: DictConfig) -> dict[str, Any]:
        # Continuing in the same TensorBoard run: hide what the interrupted attempt logged after
        # the checkpoint's step (SummaryWriter purge_step), so redone steps show once. Step N
        # itself is kept: callbacks log the finished epoch's values there (an epoch-start LR
        # logged at N by both attempts shows twice, with the same value). The graph is there already.
        if str(node.get("_target_", "")).endswith("MLFlowLogger"):
            # the store and experiment made once under a file lock (parallel sweep jobs, ranks);
            # a run continued in place continues its MLflow run
            from keel.run.tracking import prepare_mlflow_logger

            return prepare_mlflow_logger(node, continued=continued)
        if not str(node.get("_target_", "")).endswith("TensorBoardLogger"):
            return {}
        kwargs: dict[str, Any] = {}
        if node.get("version") == "auto":
            kwargs["version"] = _tensorboard_run_name(Path(str(node.save_dir)) / str(node.name), output_dir, continued)
        if continued:
            return {**kwargs, "purge_step": plan.start_step + 1, "log_graph": False}
        if is_fsdp(cfg.trainer.get("strategy")):  # torch.jit.trace (the Graphs tab) cannot trace FSDP units
            kwargs["log_graph"] = False
        return kwargs

    return instantiate_group(cfg.get("logger"), "logger", kwargs_for=logger_kwargs)


def _build_trainer(cfg: DictConfig, datamodule: Any, run: _RunCallbacks, loggers: list[Any]) -> Any:
    """The Trainer of ``cfg.trainer`` with the run's callbacks, loggers and atomic checkpoint IO."""
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    from keel.checkpoints.write import AtomicCheckpointIO
    from keel.distributed import cpu_threads_per_process

    trainer = instantiate(
        cfg.trainer,
        callbacks=run.callbacks,
        logger=loggers or False,
        enable_checkpointing=run.checkpoint is not None,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in run.callbacks),
        # the DataModule shards its own batches (keel.data.batches): no sampler replacement
        use_distributed_sampler=False,
        # last.ckpt must be whole after any kill: ckpt_path=auto resumes from it
        plugins=[*_trainer_plugins(cfg), AtomicCheckpointIO()],
        **_overfit_adapter(cfg, datamodule),
    )
    if trainer.num_devices * trainer.num_nodes > 1 and trainer.strategy.root_device.type == "cpu":
        # One process per device shares this node's cores: N processes x all cores threads thrash.
        threads = cpu_threads_per_process(trainer.num_devices)
        if threads is not None:
            torch.set_num_threads(threads)
    return trainer


def _fit_then_test(trainer: Any, model: Any, datamodule: Any, plan: Any, continued: bool,
                   run: _RunCallbacks) -> tuple[dict[str, Any], dict[str, Any], str, str | None, bool]:
    """Fit (from the plan's checkpoint), then test the best checkpoint (or the final weights).
    Returns (fit metrics, test metrics, best checkpoint path or "", last checkpoint path or None,
    stopped early)."""
    from keel import gc_phases

    with warnings.catch_warnings():
        if continued:
            # continuing this run in its own directory: its checkpoints are expected there
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(model, datamodule=datamodule, ckpt_path=plan.ckpt_path)
    if plan.start_step is not None and trainer.global_step == plan.start_step:
        # resumed after its last epoch (stopped while testing or exporting): fit trained and
        # logged nothing; validation gives back the val metrics (best-so-far is in the checkpoint)
        log.info("training had finished before the interruption: validating the restored weights")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    fit_metrics = dict(trainer.callback_metrics)
    # read before testing: testing the best checkpoint restores the callbacks' state as saved then
    stopped_early = bool(getattr(trainer.early_stopping_callback, "stopped_epoch", 0))
    ckpt_cb = run.checkpoint
    best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    # likewise: a best checkpoint from epoch 0 was saved before last.ckpt existed, and restores
    # the last-checkpoint writer's state from then (no path)
    last = (run.latest.best_model_path if run.latest is not None
            else getattr(ckpt_cb, "last_model_path", None)) or None
    # testing (and the export after it) imports and runs the ONNX exporter: its imports would
    # again set off full collections (keel.gc_phases); settled when the job has ended
    gc_phases.pause()
    if best and not trainer.fast_dev_run:
        trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
    else:
        log.info("no best checkpoint (callbacks without model_checkpoint): testing the final weights")
        trainer.test(model, datamodule=datamodule, verbose=False)
    return fit_metrics, dict(trainer.callback_metrics), best, last, stopped_early


def fit_test_export(cfg: DictConfig, plan: Any, output_dir: Path, note_data: Callable[[dict], None],
                    signals: Any = None) -> FitResult:
    """Set up the data, build the model and the Trainer, fit (from ``plan.checkpoint`` when
    there is one), test the best checkpoint and, on rank 0, export the bundle (the config's
    ``callbacks.onnx_export`` / ``callbacks.quantize`` steps).

    Args:
        cfg: the run's frozen config (task resolved).
        plan: the run's :class:`keel.run.resume.ResumePlan`.
        output_dir: the run directory.
        note_data: called (rank 0) with the data's fingerprint once the data is set up.
        signals: the run's :class:`keel.callbacks.preemption.StopSignals` (None: no preemption handling).

    Raises:
        CheckpointError: the plan's checkpoint is of another net or contract.
        KeelError: ``optimized_metric`` was not logged; the data or export failed their checks.
    """
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_only

    from keel import gc_phases
    from keel.checkpoints.read import check_resumable
    from keel.data.protocol import check_data_module
    from keel.distributed import hydra_ddp_relaunch
    from keel.provenance import data_fingerprint

    route_lightning_logs()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    check_data_module(datamodule, cfg.get("task"))  # what keel needs from it, all missing parts at once (keel.data.protocol)
    if rank_zero_only.rank == 0:
        write_data_reports(output_dir, datamodule)
        note_data(data_fingerprint(datamodule))
    model = build_model(cfg, datamodule)
    if plan.checkpoint is not None:
        check_resumable(plan.checkpoint, dict(model.hparams.net), datamodule.contract.to_dict())
    continued = plan.checkpoint is not None and plan.same_run  # this run, continued in its own directory

    loggers = _run_loggers(cfg, plan, continued, output_dir)
    run = _run_callbacks(cfg, run_config, loggers, output_dir, signals)
    trainer = _build_trainer(cfg, datamodule, run, loggers)
    if trainer.is_global_zero and not continued:  # a continued run logged them when it started
        log_data_reports(loggers, datamodule)

    # start-up is over: what exists now is never traversed by a collection again (keel.gc_phases)
    gc_phases.settle()
    with hydra_ddp_relaunch(str(output_dir)):
        fit_metrics, test_metrics, best, last, stopped_early = _fit_then_test(
            trainer, model, datamodule, plan, continued, run)

    metrics = _plain_metrics({**fit_metrics, **{k: v for k, v in test_metrics.items() if k.startswith("test/")}})
    if cfg.optimized_metric is not None and cfg.optimized_metric not in metrics:
        raise KeelError(
            f"optimized_metric={cfg.optimized_metric!r} was not logged by this run. "
            f"Logged: {', '.join(sorted(metrics))}"
        )
    bundle = None
    if trainer.is_global_zero and (run.exporter is not None or run.quantizer is not None):
        importance = None
        if run.explainer is not None and run.explainer.importance_path.is_file():
            importance = json.loads(run.explainer.importance_path.read_text())
        bundle = export_bundle(run.exporter, run.quantizer, best if not trainer.fast_dev_run else "", datamodule,
                               run_config, {k: v for k, v in metrics.items() if k.startswith("test/")},
                               importance=importance)
    return FitResult(
        task=model.task.name,
        metrics=metrics,
        optimized_metric=cfg.optimized_metric,
        objective=metrics[cfg.optimized_metric] if cfg.optimized_metric else None,
        best_checkpoint=best or None,
        last_checkpoint=last,
        epochs_trained=trainer.current_epoch,
        global_step=trainer.global_step,
        stopped_early=stopped_early,
        test_record=model.task.test_record(model.split_records.get("test"), datamodule.contract),
        split_sizes=datamodule.split_sizes(),
        contract_fingerprint=datamodule.contract.fingerprint(),
        world_size=trainer.world_size,
        is_global_zero=trainer.is_global_zero,
        bundle=bundle,
        loggers=loggers,
    )


def export_bundle(exporter: Any, quantizer: Any, ckpt_path: str, datamodule: Any, config: dict[str, Any],
                  test_metrics: dict[str, float], importance: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The run's bundle from its best checkpoint: ONNX export (parity-gated), then int8 (within the
    task's budget), then the test-time feature importance (``importance``) into its manifest. Returns the bundle's summary for the run record, or None when nothing was
    exported (no export step, or no best checkpoint)."""
    manifest = None
    if exporter is not None:
        if not ckpt_path:
            log.warning("onnx_export: no best checkpoint (checkpointing off): no bundle written")
            return None
        manifest = exporter.export(ckpt_path, datamodule, config=config, run_metrics=test_metrics)
    if quantizer is not None:
        manifest = quantizer.quantize(datamodule) or manifest
    if manifest is None:
        return None
    if importance is not None:
        from keel.explain.run import add_importance

        manifest = add_importance(exporter.bundle_dir if exporter is not None else quantizer.bundle_dir, importance)
    return {
        "dir": str(exporter.bundle_dir if exporter is not None else quantizer.bundle_dir),
        "task": manifest.get("task", "classification"),
        "models": manifest["models"],
        "parity": manifest["parity"],
        "metrics": {k: v for k, v in manifest["metrics"].items() if k != "training"},
        "quantization": manifest.get("quantization"),
    }


__all__ = ["FitResult", "build_model", "export_bundle", "fit_test_export", "instantiate_group", "log_data_reports",
           "route_lightning_logs", "write_data_reports"]
