"""Checkpoint -> verified bundle: the one code path behind export.py and the export callbacks.

Both steps read and write files only (a checkpoint, a DataModule's splits, the bundle
directory), never a live Trainer, and write through :func:`keel.export.bundle.staged`, so a
failure or a kill leaves the previous bundle as it was and never a half-written one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keel.checkpoints.read import keel_section, load_checkpoint
from keel.export.bundle import staged, write_manifest
from keel.export.onnx import ExportError, export_onnx, inference_model
from keel.export.quantize import float32_ops, quantize_onnx, resolve_mode
from keel.export.runtime import latency, run, session
from keel.provenance import git_info, package_versions
from keel.tasks import get_task

log = logging.getLogger(__name__)

FP32, INT8 = "model.onnx", "model.int8.onnx"
PACKAGES = ("keel", "torch", "lightning", "onnx", "onnxruntime", "onnxscript", "numpy", "pandas", "pandera",
            "hydra-core", "torchmetrics")


@dataclass(frozen=True)
class ExportOptions:
    """ONNX export and parity gate.

    ``atol``/``rtol``: every output must satisfy ``|onnx - torch| <= atol * scale + rtol *
    |torch|`` (scale: 1 for logits, the train target's std for a regression prediction);
    ``min_agreement``: classification: fraction of rows whose predicted class must agree (1.0: all).
    """

    opset: int = 18
    parity_batches: int = 4
    batch_size: int = 64
    atol: float = 1e-4
    rtol: float = 1e-3
    min_agreement: float = 1.0
    samples: int = 8


@dataclass(frozen=True)
class QuantizeOptions:
    """int8 quantization and its budget on the task's metric: classification
    ``max_accuracy_drop`` (in accuracy points / 100), regression ``max_rmse_increase`` (a
    fraction of the fp32 model's test rmse)."""

    mode: str = "auto"
    calibration_batches: int = 8
    batch_size: int = 64
    max_accuracy_drop: float = 0.01
    max_rmse_increase: float = 0.01
    per_channel: bool = True
    seed: int = 0



def split_sample(datamodule: Any, split: str, limit: int) -> tuple[Any, Any]:
    """``datamodule.split_arrays(split)``, at most ``limit`` rows when the module can bound it
    (a ``limit`` keyword: data that does not fit in memory, decoded images); else the whole split."""
    import inspect

    try:
        takes_limit = "limit" in inspect.signature(datamodule.split_arrays).parameters
    except (TypeError, ValueError):
        takes_limit = False
    if takes_limit:
        return datamodule.split_arrays(split, limit=limit)
    return datamodule.split_arrays(split)

def _latency_ms(sess: Any, x: np.ndarray) -> dict[str, float]:
    return {"batch1_ms": latency(sess, x, 1) * 1e3, "batch64_ms": latency(sess, x, 64) * 1e3}


def rebuild_module(ckpt: dict[str, Any]) -> Any:
    """The TaskModule of a loaded checkpoint, from its hyperparameters and weights (the file is
    not read again)."""
    from keel.models import TaskModule

    module = TaskModule(**ckpt["hyper_parameters"])
    module.on_load_checkpoint(ckpt)  # maps the state of checkpoints from before the task seam
    module.load_state_dict(ckpt["state_dict"])
    return module


def _save_samples(tmp: Path, names: tuple[str, ...], outputs: tuple[np.ndarray, ...], suffix: str = "") -> dict:
    files = {}
    for name, value in zip(names, outputs):
        np.save(tmp / "samples" / f"{name}{'.' + suffix if suffix else ''}.npy", value)
        files[f"{name}_{suffix}" if suffix else name] = f"samples/{name}{'.' + suffix if suffix else ''}.npy"
    return files


def export_checkpoint(
    ckpt: str | Path | dict[str, Any],
    bundle_dir: str | Path,
    datamodule: Any,
    options: ExportOptions = ExportOptions(),
    config: dict[str, Any] | None = None,
    run_metrics: dict[str, float] | None = None,
    ckpt_path: str | Path | None = None,
) -> dict[str, Any]:
    """Export a checkpoint to ``bundle_dir/model.onnx``, gate it on the task's parity rule with
    the PyTorch model over real held-out batches, evaluate it on the test split with the task's
    metrics and write the bundle.

    ``ckpt``: a checkpoint file, or one already loaded with
    :func:`keel.checkpoints.read.load_checkpoint` (then ``ckpt_path`` names its file), so that a
    run reads each checkpoint file once.

    Returns the manifest. Raises:
        CheckpointError: the checkpoint is missing, unsafe or not keel's.
        ExportError: export/checker failure, or parity beyond tolerance (no bundle written).
    """
    if not isinstance(ckpt, dict):
        ckpt_path = ckpt
        ckpt = load_checkpoint(ckpt)
    ckpt_path = Path(ckpt_path) if ckpt_path is not None else Path("<checkpoint>")
    section = keel_section(ckpt, ckpt_path)
    datamodule.setup()
    contract = datamodule.contract.to_dict()
    if json.dumps(contract) != json.dumps(section["contract"]):  # order-sensitive (column order = input order)
        raise ExportError(
            f"{ckpt_path}: trained on contract {section['contract'].get('name')!r}, but the data given for parity "
            f"checks has contract {contract.get('name')!r}. Fix: export with the data the checkpoint was trained on"
        )
    module = rebuild_module(ckpt)
    task = module.task
    target = section.get("target")
    model = inference_model(module)
    x_test, y_test = datamodule.split_arrays("test")
    parity_rows = x_test[: options.parity_batches * options.batch_size]

    git = git_info() or {}
    with staged(Path(bundle_dir)) as tmp:
        io = export_onnx(model, torch.from_numpy(x_test[: min(2, len(x_test))].copy()), tmp / FP32, options.opset,
                         task.outputs)
        sess = session(tmp / FP32)
        with torch.no_grad():
            ref = tuple(t.numpy() for t in model(torch.from_numpy(parity_rows)))
        parity = task.parity(ref, run(sess, parity_rows), options, target)
        if not parity["ok"]:
            raise ExportError(f"ONNX parity check failed on {parity['rows']} held-out rows: "
                              f"{task.parity_failure(parity)}. No bundle was written")
        fp32_metrics = task.evaluate(sess, x_test, y_test)
        (tmp / "samples").mkdir()
        xs = np.ascontiguousarray(x_test[: options.samples])
        np.save(tmp / "samples" / "input.npy", xs)
        sample_files = {"input": "samples/input.npy", **_save_samples(tmp, task.outputs, run(sess, xs))}
        if hasattr(datamodule.contract, "decode_features"):
            datamodule.contract.decode_features(xs).to_csv(tmp / "samples" / "input.csv", index=False)
            sample_files["input_table"] = "samples/input.csv"
        manifest = {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "task": task.name,
            "models": {"fp32": FP32, "int8": None},
            "io": io,
            **task.manifest_fields(datamodule.contract, target),
            "preprocessing": section["preprocessing"],
            "data": {"contract": contract, "reference": section.get("reference") or None},
            "metrics": {"training": run_metrics or {}, "fp32": fp32_metrics},
            "parity": parity,
            "latency": {"fp32": _latency_ms(sess, x_test)},
            "quantization": None,
            "samples": sample_files,
            "config": config if config is not None else section.get("config"),
            "source": {"checkpoint": str(ckpt_path.resolve()) if ckpt_path.name != "<checkpoint>" else None,
                       "git": {k: git[k] for k in ("commit", "dirty") if k in git}},
            "packages": package_versions(PACKAGES),
            "export_options": asdict(options),
        }
        manifest = write_manifest(tmp, manifest)
    log.info("bundle %s: model.onnx (%s), parity max|diff| %.2e, test %s", bundle_dir, task.name,
             parity["max_abs_diff"], ", ".join(f"{k.removeprefix('test_')} {v:.4g}" for k, v in fp32_metrics.items()
                                                if k != "test_rows"))
    return manifest


def add_int8(bundle_dir: str | Path, datamodule: Any, options: QuantizeOptions = QuantizeOptions()) -> dict[str, Any]:
    """Quantize the bundle's fp32 model to int8, evaluate both on the test split and keep the
    int8 model only within the task's budget (``max_accuracy_drop`` or ``max_rmse_increase``);
    update the manifest (sizes, latencies, metric change, decision). Returns the new manifest.

    Raises:
        BundleError: the bundle is missing or its files do not match its manifest.
    """
    from keel.export.bundle import read_intact

    bundle_dir = Path(bundle_dir)
    manifest = read_intact(bundle_dir, "quantize")
    datamodule.setup()
    x_test, y_test = datamodule.split_arrays("test")
    wanted = options.calibration_batches * options.batch_size
    x_train, _ = split_sample(datamodule, "train", 4 * wanted)
    rng = np.random.default_rng(options.seed)
    pick = rng.permutation(len(x_train))[:wanted]
    calibration = [x_train[pick[i : i + options.batch_size]] for i in range(0, len(pick), options.batch_size)]

    task = get_task(manifest.get("task", "classification"))
    with staged(bundle_dir, copy_existing=True) as tmp:
        mode = resolve_mode(options.mode, tmp / FP32)
        quantize_onnx(tmp / FP32, tmp / INT8, mode, calibration, options.per_channel)
        s32, s8 = session(tmp / FP32), session(tmp / INT8)
        m32, m8 = task.evaluate(s32, x_test, y_test), task.evaluate(s8, x_test, y_test)
        decision = task.int8_decision(m32, m8, options)
        size32, size8 = (tmp / FP32).stat().st_size, (tmp / INT8).stat().st_size
        lat8 = _latency_ms(s8, x_test)
        quant = {
            "mode": mode,
            "mode_requested": options.mode,
            "per_channel": options.per_channel,
            "calibration_rows": int(len(pick)) if mode == "static" else 0,
            **decision,
            "bytes_fp32": size32,
            "bytes_int8": size8,
            "size_ratio": size8 / size32,
            "latency_ratio_batch1": lat8["batch1_ms"] / manifest["latency"]["fp32"]["batch1_ms"],
            "latency_ratio_batch64": lat8["batch64_ms"] / manifest["latency"]["fp32"]["batch64_ms"],
            # ops ONNX Runtime left in float32, each with why (a GRU: no int8 kernel); {} for none
            "float32_ops": float32_ops(tmp / INT8),
        }
        if decision["accepted"]:
            xs = np.load(tmp / manifest["samples"]["input"])
            manifest["samples"].update(_save_samples(tmp, task.outputs, run(s8, xs), "int8"))
            manifest["models"]["int8"] = INT8
            manifest["metrics"]["int8"] = m8
            manifest["latency"]["int8"] = lat8
            log.info("int8 model kept: %s %.4g -> %.4g (budget %g), size x%.2f", decision["metric"],
                     decision["fp32"], decision["int8"], decision["budget"], size8 / size32)
        else:
            (tmp / INT8).unlink()
            log.warning("%s", decision["reason"])
        manifest["quantization"] = quant
        manifest.pop("files", None)
        manifest = write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("format", "format_version")})
    return manifest
