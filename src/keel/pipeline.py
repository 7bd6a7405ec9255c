"""``train(cfg)``: validate -> data -> model -> fit -> test with the best checkpoint -> record.

Heavy imports (torch, Lightning, data) happen inside the functions, after the config has
been checked, so composing or printing a config stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from keel.config.validate import validate_config
from keel.errors import KeelError

log = logging.getLogger("keel")


def _instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (None/empty: [])."""
    from hydra.utils import instantiate

    if not group:
        return []
    out = []
    for name, node in group.items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise KeelError(f"{what}.{name} has no _target_: each entry of `{what}` must be a config with a _target_")
        out.append(instantiate(node))
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


def train(cfg: DictConfig) -> float | None:
    """Run one training job; return ``cfg.optimized_metric`` (for sweepers), or None.

    Raises:
        ConfigError: the config or this machine cannot run it (nothing was trained).
        ContractViolationError: a data split breaks the contract (nothing was trained).
    """
    started = time.time()
    validate_config(cfg)

    from keel.config.machine import check_machine

    check_machine(cfg)

    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar

    from keel.distributed import hydra_ddp_relaunch

    _route_lightning_logs()
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    from lightning.pytorch.utilities import rank_zero_only

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    if rank_zero_only.rank == 0:
        _write_data_reports(output_dir, datamodule)
    model = build_model(cfg, datamodule)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    model.run_config = run_config
    if cfg.ckpt_path:
        from keel.checkpoint import check_resumable

        check_resumable(cfg.ckpt_path, dict(model.hparams.net), datamodule.contract.to_dict())

    loggers = _instantiate_group(cfg.get("logger"), "logger")
    callbacks = _instantiate_group(cfg.get("callbacks"), "callbacks")
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        log.info("logger=none: skipping the LR monitor (it needs a logger)")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    ckpt_cb = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
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
    )
    if trainer.num_devices * trainer.num_nodes > 1 and trainer.strategy.root_device.type == "cpu":
        # One process per device shares the cores: N processes x all cores threads thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))

    if trainer.is_global_zero:
        _log_data_reports(loggers, datamodule)

    with hydra_ddp_relaunch(str(output_dir)):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        fit_metrics = dict(trainer.callback_metrics)
        best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
        fast = bool(trainer.fast_dev_run)
        if best and not fast:
            trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        else:
            log.info("no best checkpoint (callbacks without model_checkpoint): testing the final weights")
            trainer.test(model, datamodule=datamodule, verbose=False)
        test_metrics = dict(trainer.callback_metrics)

    metrics = _plain_metrics({**fit_metrics, **{k: v for k, v in test_metrics.items() if k.startswith("test/")}})
    if trainer.is_global_zero:
        record = {
            "metrics": metrics,
            "optimized_metric": cfg.optimized_metric,
            "objective": metrics.get(cfg.optimized_metric) if cfg.optimized_metric else None,
            "best_checkpoint": best or None,
            "last_checkpoint": getattr(ckpt_cb, "last_model_path", None) or None,
            "epochs_trained": trainer.current_epoch,
            "global_step": trainer.global_step,
            "resumed_from": cfg.ckpt_path,
            "stopped_early": bool(getattr(trainer.early_stopping_callback, "stopped_epoch", 0)),
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
        _write_json(output_dir / "metrics.json", record)
        _log_hparams(cfg, loggers, metrics)
        _print_summary(output_dir, loggers, record)
    if cfg.optimized_metric is None:
        return None
    if cfg.optimized_metric not in metrics:
        raise KeelError(
            f"optimized_metric={cfg.optimized_metric!r} was not logged by this run. "
            f"Logged: {', '.join(sorted(metrics))}"
        )
    return metrics[cfg.optimized_metric]


def _write_data_reports(output_dir: Path, datamodule: Any) -> None:
    """The run's data record: the contract used, every split's contract report (with what was
    dropped) and the drift/leakage report, under ``<run>/data/``."""
    import yaml

    out = output_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    (out / "contract.yaml").write_text(yaml.safe_dump(datamodule.contract.to_dict(), sort_keys=False))
    _write_json(out / "contract_report.json", datamodule.data_report())
    if datamodule.drift:
        _write_json(out / "drift_report.json", datamodule.drift)


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


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _log_hparams(cfg: DictConfig, loggers: list[Any], metrics: dict[str, float]) -> None:
    """Write one HParams entry per run with its final metrics (TensorBoard's HParams tab)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    params = OmegaConf.to_container(cfg, resolve=True)
    params.pop("paths", None)
    hp_metrics = {f"hparams/{k.replace('/', '_')}": v for k, v in metrics.items() if k.split("/")[0] in ("val", "test")}
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(params, metrics=hp_metrics)
            lg.save()


def _print_summary(output_dir: Path, loggers: list[Any], record: dict[str, Any]) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    lines = ["", "keel: run finished", f"  run directory : {output_dir}"]
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
    try:
        export(cfg)
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


def main(cfg: DictConfig) -> float | None:
    """Hydra task function: user mistakes print one message and exit 2 (single runs).

    In a multirun the error is re-raised so the sweeper records the job as failed.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return train(cfg)
    except KeelError as e:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if multirun:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
