"""The end of a run as a person and a tool read it: ``metrics.json``, the HParams entry and one
summary printer (a finished run, a run that had already finished, a bundle built by export.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from keel.atomic import write_json_atomic
from keel.run.record import METRICS_NAME

LABEL_WIDTH = 14


def print_summary(title: str, rows: Iterable[tuple[str, str | None]]) -> None:
    """``keel: <title>`` and one aligned ``label : value`` line per row whose value is set."""
    lines = ["", f"keel: {title}"]
    lines += [f"  {label:<{LABEL_WIDTH}}: {value}" for label, value in rows if value]
    print("\n".join(lines), flush=True)


def metric_line(metrics: Mapping[str, float], prefix: str = "test/") -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(prefix))


def int8_note(quantization: Mapping[str, Any] | None) -> str:
    """``int8 kept (acc drop +0.0000, size x0.30)`` / ``int8 left out (...)`` from a bundle's
    quantization record (either task), or ``""``."""
    q = quantization or {}
    if not q:
        return ""
    metric = q.get("metric", "acc")
    if metric == "acc":
        change = f"acc drop {q['accuracy_drop']:+.4f}"
    else:
        change = f"{metric} {q['change']:+.2%}"
    if q["accepted"]:
        return f"int8 kept ({change}, size x{q['size_ratio']:.2f})"
    return f"int8 left out ({change}: over the budget)"


def bundle_line(bundle: Mapping[str, Any] | None) -> str | None:
    if not bundle:
        return None
    int8 = int8_note(bundle.get("quantization"))
    return f"{bundle['dir']} (parity max|diff| {bundle['parity']['max_abs_diff']:.1e}{'; ' + int8 if int8 else ''})"


def metrics_record(result: Any, resumed_from: str | None, seed: Any, wall_time_s: float) -> dict[str, Any]:
    """``metrics.json``: the final metrics, objective, checkpoints, the test split's record (the
    task's: confusion matrix and classes, or the residual summary), sizes, bundle, seed."""
    return {
        "task": result.task,
        "metrics": result.metrics,
        "optimized_metric": result.optimized_metric,
        "objective": result.objective,
        "best_checkpoint": result.best_checkpoint,
        "last_checkpoint": result.last_checkpoint,
        "epochs_trained": result.epochs_trained,
        "global_step": result.global_step,
        "resumed_from": resumed_from,
        "stopped_early": result.stopped_early,
        **result.test_record,
        "split_sizes": result.split_sizes,
        "contract_fingerprint": result.contract_fingerprint,
        "seed": seed,
        "world_size": result.world_size,
        "bundle": result.bundle,
        "wall_time_s": round(wall_time_s, 3),
    }


# Config keys every run's HParams entry (and MLflow params) carries, besides the group choices
# and whatever the command line overrode: what a person compares runs by.
CURATED_KEYS = ("task", "seed", "optimizer.lr", "optimizer.weight_decay", "data.batch_size", "trainer.max_epochs",
                "trainer.precision", "trainer.devices")
GROUPS = ("data", "model", "optimizer", "scheduler", "trainer")
# overrides that say where a run lives or how it resumes, not what it is
_NOT_PARAMS = ("run_dir", "ckpt_path", "paths.", "hydra.", "logger", "console_log")


def _select(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _param_value(v: Any) -> str | int | float | bool | None:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, default=str, sort_keys=True)[:250]


def curated_params(config: Mapping[str, Any], overrides: Sequence[str] | None = None,
                   choices: Mapping[str, str] | None = None) -> dict[str, str | int | float | bool]:
    """The parameters a run is compared by: the config group choices (``data``, ``model``, ...),
    :data:`CURATED_KEYS`, and every key the command line overrode, with its resolved value.

    Args:
        config: the run's resolved config (plain dict).
        overrides, choices: the job's overrides and group choices; default: Hydra's, when a
            Hydra job is running (none otherwise).

    Returns:
        flat ``{key: value}``, values str/int/float/bool (lists and dicts as JSON text); no None.
    """
    if overrides is None or choices is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            overrides = list(hc.overrides.task) if overrides is None else overrides
            choices = dict(hc.runtime.choices) if choices is None else choices
    overrides, choices = list(overrides or []), dict(choices or {})
    params: dict[str, Any] = {g: choices[g] for g in GROUPS if choices.get(g)}
    for key in CURATED_KEYS:
        params[key] = _param_value(_select(config, key))
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if any(key.startswith(p) for p in _NOT_PARAMS) or key in params:
            continue
        params[key] = _param_value(choices[key] if key in choices else _select(config, key))
    return {k: v for k, v in params.items() if v is not None}


def final_metric_tags(metrics: Mapping[str, float]) -> list[str]:
    """The metrics a run is judged by: every ``test/*`` and the ``val/*_best`` ones."""
    return sorted(k for k in metrics if k.startswith("test/") or (k.startswith("val/") and k.endswith("_best")))


def log_hparams(loggers: Sequence[Any], config: Mapping[str, Any], metrics: Mapping[str, float],
                output_dir: Path | None = None, bundle_dir: Path | None = None) -> None:
    """One HParams entry per run (TensorBoard's HParams tab): :func:`curated_params` against the
    final metrics (:func:`final_metric_tags`); MLflow runs get the same params, the final
    metrics and the run's files (keel.run.tracking). The full config is ``<run>/.hydra/config.yaml``."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    params = curated_params(config)
    tags = final_metric_tags(metrics)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            if callable(getattr(lg, "log_final_hparams", None)):
                lg.log_final_hparams(params, tags)
            else:  # Lightning's own logger: its log_hyperparams writes the metrics again, as hparams/*
                lg.log_hyperparams(params, metrics={f"hparams/{k.replace('/', '_')}": metrics[k] for k in tags})
            lg.finalize("success")  # flush and close: the process may end without interpreter teardown
        elif isinstance(lg, MLFlowLogger) and output_dir is not None:
            from keel.run.tracking import finish_mlflow_run

            finish_mlflow_run(lg, params=params, metrics={k: metrics[k] for k in tags}, output_dir=output_dir,
                              bundle_dir=bundle_dir)


def logger_rows(loggers: Sequence[Any]) -> list[tuple[str, str]]:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    rows = []
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            rows.append(("tensorboard", f"tensorboard --logdir {lg.root_dir}"))
        elif isinstance(lg, CSVLogger):
            rows.append(("csv metrics", f"{lg.log_dir}/metrics.csv"))
        elif isinstance(lg, MLFlowLogger):
            from keel.run.tracking import mlflow_rows

            rows += mlflow_rows([lg])
    return rows


def report_run(output_dir: Path, result: Any, config: Mapping[str, Any], resumed_from: str | None,
               wall_time_s: float) -> dict[str, Any]:
    """Rank 0 at the end of a run: ``metrics.json``, the HParams entry, the summary. Returns the record."""
    record = metrics_record(result, resumed_from, config.get("seed"), wall_time_s)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / METRICS_NAME, record)
    bundle_dir = Path(record["bundle"]["dir"]) if (record.get("bundle") or {}).get("dir") else None
    log_hparams(result.loggers, config, result.metrics, output_dir, bundle_dir)
    objective = (f"{record['optimized_metric']}={record['objective']:.4f}" if record["objective"] is not None
                 else None)
    print_summary("run finished", [
        ("run directory", str(output_dir)),
        ("resumed from", record["resumed_from"]),
        *logger_rows(result.loggers),
        ("best ckpt", record["best_checkpoint"]),
        ("last ckpt", record["last_checkpoint"]),
        ("bundle", bundle_line(record["bundle"])),
        ("test metrics", metric_line(record["metrics"]) or "none"),
        ("objective", objective),
        ("metrics file", str(output_dir / METRICS_NAME)),
    ])
    return record


def report_finished(output_dir: Path, record: Mapping[str, Any], optimized_metric: str | None,
                    objective: float | None) -> None:
    """The summary of a ``ckpt_path=auto`` run that had already finished (nothing trained)."""
    metrics = record.get("metrics") or {}
    print_summary("run already finished (ckpt_path=auto): nothing to train", [
        ("run directory", str(output_dir)),
        ("record", str(output_dir / "run.json")),
        ("metrics file", str(output_dir / METRICS_NAME)),
        ("test metrics", metric_line(metrics)),
        ("objective", f"{optimized_metric}={objective:.4f}" if objective is not None else None),
    ])


def report_bundle(bundle_dir: Path, manifest: Mapping[str, Any]) -> None:
    """The summary of ``python export.py``: parity, the fp32 metrics, int8, how to verify."""
    parity = manifest["parity"]
    agreement = (f", class agreement {parity['class_agreement']:.4f}" if "class_agreement" in parity else "")
    fp32 = manifest["metrics"]["fp32"]
    shown = "  ".join(f"{k.removeprefix('test_')} {v:.4f}" for k, v in fp32.items()
                      if k.startswith("test_") and k != "test_rows")
    q = manifest.get("quantization") or {}
    int8 = None
    if q:
        reason = "" if q["accepted"] else ": " + q.get("reason", "")
        int8 = int8_note(q) + reason
    print_summary("bundle written", [
        ("bundle", str(bundle_dir)),
        ("parity", f"max|diff| {parity['max_abs_diff']:.2e}{agreement} on {parity['rows']} held-out rows"),
        ("fp32", f"test {shown}"),
        ("int8", int8),
        ("verify", f"keel bundle verify {bundle_dir}"),
    ])


__all__ = ["CURATED_KEYS", "bundle_line", "curated_params", "final_metric_tags", "int8_note", "log_hparams", "metrics_record", "print_summary", "report_bundle",
           "report_finished", "report_run"]
