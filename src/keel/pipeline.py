"""The two jobs, thin: ``train(cfg)`` (train.py) and ``export(cfg)`` (export.py).

``train``: the run's config (task resolved) -> checked and frozen -> the lifecycle (lock, resume
plan, record, signals; :mod:`keel.run.lifecycle`) around the fit/test/export sequence
(:mod:`keel.fit`) -> the report (:mod:`keel.run.report`). Heavy imports (torch, Lightning, data)
happen inside, after the config has been checked, so composing or printing a config stays instant.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from keel.config.validate import ConfigError, validate_config
from keel.errors import KeelError


def _validate_with_targets(cfg: DictConfig) -> None:
    """:func:`validate_config`, plus the problems of the user's classes: the net's and the data
    module's ``_target_`` imports and its constructor takes the keys given
    (``keel.models.net_args``), all in one ConfigError, before a run directory is made or the
    data loads."""
    from keel.models.net_args import net_problems

    try:
        validate_config(cfg)
        problems: list[str] = []
    except ConfigError as e:
        problems = list(e.problems)
    for path, injected in (("model.net", None), ("data", ())):
        try:
            node = OmegaConf.to_container(OmegaConf.select(cfg, path), resolve=True)
        except Exception:  # noqa: BLE001  an unresolved value: reported by validate_config above
            continue
        if not isinstance(node, dict):
            continue
        # Not twice for a key already reported; and a config refused anyway with keel's own class
        # is refused without importing it (torch): its keys are validate_config's rules.
        keel_class = str(node.get("_target_", "")).startswith("keel.")
        if any(p.startswith(path) for p in problems) or (problems and keel_class):
            continue
        problems += net_problems(node, path) if injected is None else net_problems(node, path, injected)
    if problems:
        raise ConfigError(problems)


def train(cfg: DictConfig) -> float | None:
    """Run one training job; return ``optimized_metric`` (for sweepers), or None.

    ``ckpt_path=auto`` continues the run in ``paths.output_dir`` (``run_dir``) from its newest
    complete checkpoint, starts fresh when it has none, and trains nothing when that run
    already finished with this config (its objective is returned). The run's record,
    ``<run dir>/run.json``, is written at the start and at the end (keel.run.record). ``cfg``
    is not changed: the run executes a resolved, frozen copy.

    Raises:
        ConfigError: the config or this machine cannot run it (nothing was trained).
        ContractViolationError: a data split breaks the contract (nothing was trained).
        RunStateError: the run directory holds another run, or is in use.
        NonFiniteError: the loss or a gradient became NaN/Inf (training stopped at that step).
    """
    from keel.run.lifecycle import Lifecycle, discard_refused_run_dir, run_config

    started = time.time()
    run = run_config(cfg)
    try:
        _validate_with_targets(run.cfg)
    except ConfigError:
        discard_refused_run_dir(run.output_dir)
        raise
    frozen = run.cfg
    OmegaConf.set_readonly(frozen, True)
    lifecycle = Lifecycle(frozen, run.output_dir, run.auto, started=started)
    plan = lifecycle.enter()
    if plan.finished:
        if lifecycle.launcher:
            from keel.run.report import report_finished

            report_finished(run.output_dir, plan.record or {}, frozen.optimized_metric, plan.objective)
        return plan.objective
    if run.task_note:
        import logging

        logging.getLogger("keel").info("%s", run.task_note)

    def body(life: Lifecycle) -> float | None:
        from keel.fit import fit_test_export

        result = fit_test_export(frozen, plan, run.output_dir, life.note_data, life.signals)
        if result.is_global_zero:
            from keel.run.report import report_run

            config = OmegaConf.to_container(frozen, resolve=True)
            report_run(run.output_dir, result, config, plan.ckpt_path, time.time() - started)
            life.finish(result.metrics, result.optimized_metric, result.objective)
        return result.objective

    return lifecycle.run(body)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Build the bundle of ``cfg.ckpt_path`` (the export.py job); return the manifest.

    The data for parity checks, int8 calibration and evaluation is rebuilt from the config
    stored in the checkpoint, so a checkpoint is all this needs.

    Raises:
        CheckpointError: missing/unsafe/foreign checkpoint. ExportError: export or parity failure.
    """
    from hydra.utils import instantiate

    from keel.checkpoints.read import CheckpointError, keel_section, load_checkpoint
    from keel.export.build import ExportOptions, QuantizeOptions, add_int8, export_checkpoint
    from keel.fit import route_lightning_logs
    from keel.run.report import report_bundle

    route_lightning_logs()
    ckpt_path = Path(cfg.ckpt_path)
    ckpt = load_checkpoint(ckpt_path)  # read once: the same dict gives the config and the weights
    config = keel_section(ckpt, ckpt_path).get("config")
    if not config or "data" not in config:
        raise CheckpointError(f"{ckpt_path}: holds no run config (written by an older keel?); cannot rebuild its data")
    bundle_dir = Path(cfg.bundle_dir) if cfg.bundle_dir else ckpt_path.resolve().parent.parent / "bundle"

    def options(node: DictConfig) -> dict[str, Any]:
        return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in ("_target_", "bundle_dir")}

    datamodule = instantiate(OmegaConf.create(config["data"]))
    manifest = export_checkpoint(ckpt, bundle_dir, datamodule, ExportOptions(**options(cfg.callbacks.onnx_export)),
                                 config=config, ckpt_path=ckpt_path)
    if cfg.quantize_int8:
        manifest = add_int8(bundle_dir, datamodule, QuantizeOptions(**options(cfg.callbacks.quantize)))
    report_bundle(bundle_dir, manifest)
    return manifest


def _exit_on_user_error(job: Any, cfg: DictConfig, reraise_in_multirun: bool) -> Any:
    """Run ``job(cfg)`` inside a GC job phase; a user's mistake prints one message and exits
    with its status (2), or is re-raised in a multirun so the sweeper records the job as failed."""
    from keel import gc_phases

    try:
        with gc_phases.job():  # no full collections while imports build the heap (settled before fit)
            return job(cfg)
    except KeelError as e:
        if reraise_in_multirun:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


def main(cfg: DictConfig) -> float | None:
    """Hydra task function of train.py (see :func:`_exit_on_user_error`)."""
    return _exit_on_user_error(train, cfg, reraise_in_multirun=True)


def export_main(cfg: DictConfig) -> None:
    """Hydra task function of export.py: user mistakes print one message and exit 2."""
    _exit_on_user_error(export, cfg, reraise_in_multirun=False)


def eval_main(cfg: DictConfig) -> None:
    """Hydra task function of eval.py (:func:`keel.evaluate.evaluate_checkpoint`): user mistakes
    print one message and exit 2."""
    from keel.evaluate import evaluate_checkpoint

    _exit_on_user_error(evaluate_checkpoint, cfg, reraise_in_multirun=False)


__all__ = ["eval_main", "export", "export_main", "main", "train"]
