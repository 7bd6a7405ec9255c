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

from keel.checkpoint import keel_section, load_checkpoint
from keel.export.bundle import check_files, read_manifest, staged, write_manifest
from keel.export.onnx import ExportError, export_onnx, inference_model
from keel.export.quantize import quantize_onnx, resolve_mode
from keel.export.runtime import accuracy, latency, run, session
from keel.run_manifest import git_info, package_versions

log = logging.getLogger(__name__)

FP32, INT8 = "model.onnx", "model.int8.onnx"
PACKAGES = ("keel", "torch", "lightning", "onnx", "onnxruntime", "onnxscript", "numpy", "pandas", "pandera",
            "hydra-core", "torchmetrics")


@dataclass(frozen=True)
class ExportOptions:
    """ONNX export and parity gate.

    ``atol``/``rtol``: every logit must satisfy ``|onnx - torch| <= atol + rtol * |torch|``;
    ``min_agreement``: fraction of rows whose predicted class must agree (1.0: all).
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
    """int8 quantization and its accuracy budget (``max_accuracy_drop``: in accuracy points / 100)."""

    mode: str = "auto"
    calibration_batches: int = 8
    batch_size: int = 64
    max_accuracy_drop: float = 0.01
    per_channel: bool = True
    seed: int = 0


def _parity(model: torch.nn.Module, sess: Any, x: np.ndarray, opts: ExportOptions) -> dict[str, Any]:
    with torch.no_grad():
        ref_logits, ref_probs = (t.numpy() for t in model(torch.from_numpy(x)))
    logits, probs = run(sess, x)
    diff = np.abs(logits - ref_logits)
    rel = diff / np.maximum(np.abs(ref_logits), 1e-6)
    within = diff <= opts.atol + opts.rtol * np.abs(ref_logits)
    agree = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    ok = bool(within.all()) and agree >= opts.min_agreement
    return {
        "rows": int(len(x)),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(rel.max()),
        "max_abs_diff_probabilities": float(np.abs(probs - ref_probs).max()),
        "class_agreement": agree,
        "atol": opts.atol,
        "rtol": opts.rtol,
        "min_agreement": opts.min_agreement,
        "ok": ok,
    }


def _batches(x: np.ndarray, y: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _latency_ms(sess: Any, x: np.ndarray) -> dict[str, float]:
    return {"batch1_ms": latency(sess, x, 1) * 1e3, "batch64_ms": latency(sess, x, 64) * 1e3}


def export_checkpoint(
    ckpt_path: str | Path,
    bundle_dir: str | Path,
    datamodule: Any,
    options: ExportOptions = ExportOptions(),
    config: dict[str, Any] | None = None,
    run_metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Export the checkpoint to ``bundle_dir/model.onnx``, gate it on parity with the PyTorch
    model over real held-out batches, evaluate it on the test split and write the bundle.

    Returns the manifest. Raises:
        CheckpointError: the checkpoint is missing, unsafe or not keel's.
        ExportError: export/checker failure, or parity beyond tolerance (no bundle written).
    """
    from keel.models import Classifier

    ckpt = load_checkpoint(ckpt_path)
    section = keel_section(ckpt, ckpt_path)
    datamodule.setup()
    contract = datamodule.contract.to_dict()
    if json.dumps(contract) != json.dumps(section["contract"]):  # order-sensitive (column order = input order)
        raise ExportError(
            f"{ckpt_path}: trained on contract {section['contract'].get('name')!r}, but the data given for parity "
            f"checks has contract {contract.get('name')!r}. Fix: export with the data the checkpoint was trained on"
        )
    classifier = Classifier.load_from_checkpoint(str(ckpt_path), map_location="cpu", weights_only=True)
    model = inference_model(classifier)
    x_test, y_test = datamodule.split_arrays("test")
    parity_rows = x_test[: options.parity_batches * options.batch_size]

    git = git_info() or {}
    with staged(Path(bundle_dir)) as tmp:
        io = export_onnx(model, torch.from_numpy(x_test[: min(2, len(x_test))].copy()), tmp / FP32, options.opset)
        sess = session(tmp / FP32)
        parity = _parity(model, sess, parity_rows, options)
        if not parity["ok"]:
            raise ExportError(
                f"ONNX parity check failed on {parity['rows']} held-out rows: max |diff| {parity['max_abs_diff']:.3g}"
                f" (allowed {options.atol:g} + {options.rtol:g}*|logit|), class agreement "
                f"{parity['class_agreement']:.4f} (required {options.min_agreement}). No bundle was written"
            )
        acc, rows = accuracy(sess, _batches(x_test, y_test, 1024))
        samples = tmp / "samples"
        samples.mkdir()
        xs = np.ascontiguousarray(x_test[: options.samples])
        logits, probs = run(sess, xs)
        np.save(samples / "input.npy", xs)
        np.save(samples / "logits.npy", logits)
        np.save(samples / "probabilities.npy", probs)
        sample_files = {"input": "samples/input.npy", "logits": "samples/logits.npy",
                        "probabilities": "samples/probabilities.npy"}
        if hasattr(datamodule.contract, "decode_features"):
            datamodule.contract.decode_features(xs).to_csv(samples / "input.csv", index=False)
            sample_files["input_table"] = "samples/input.csv"
        manifest = {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "models": {"fp32": FP32, "int8": None},
            "io": io,
            "classes": list(datamodule.contract.classes),
            "class_names": datamodule.contract.class_names,
            "preprocessing": section["preprocessing"],
            "data": {"contract": contract, "reference": section.get("reference") or None},
            "metrics": {
                "training": run_metrics or {},
                "fp32": {"test_acc": acc, "test_rows": rows},
            },
            "parity": parity,
            "latency": {"fp32": _latency_ms(sess, x_test)},
            "quantization": None,
            "samples": sample_files,
            "config": config if config is not None else section.get("config"),
            "source": {"checkpoint": str(Path(ckpt_path).resolve()),
                       "git": {k: git[k] for k in ("commit", "dirty") if k in git}},
            "packages": package_versions(PACKAGES),
            "export_options": asdict(options),
        }
        manifest = write_manifest(tmp, manifest)
    log.info(
        "bundle %s: model.onnx, parity max|diff| %.2e, agreement %.4f, test acc %.4f",
        bundle_dir, parity["max_abs_diff"], parity["class_agreement"], acc,
    )
    return manifest


def add_int8(bundle_dir: str | Path, datamodule: Any, options: QuantizeOptions = QuantizeOptions()) -> dict[str, Any]:
    """Quantize the bundle's fp32 model to int8, evaluate both on the test split and keep the
    int8 model only within ``options.max_accuracy_drop``; update the manifest (sizes,
    latencies, accuracy change, decision). Returns the new manifest.

    Raises:
        BundleError: the bundle is missing or its files do not match its manifest.
    """
    from keel.export.bundle import BundleError

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    problems = check_files(bundle_dir, manifest)
    if problems:
        raise BundleError(f"{bundle_dir}: cannot quantize a bundle that fails its checks: {'; '.join(problems)}")
    datamodule.setup()
    x_test, y_test = datamodule.split_arrays("test")
    x_train, _ = datamodule.split_arrays("train")
    rng = np.random.default_rng(options.seed)
    pick = rng.permutation(len(x_train))[: options.calibration_batches * options.batch_size]
    calibration = [x_train[pick[i : i + options.batch_size]] for i in range(0, len(pick), options.batch_size)]

    with staged(bundle_dir, copy_existing=True) as tmp:
        mode = resolve_mode(options.mode, tmp / FP32)
        quantize_onnx(tmp / FP32, tmp / INT8, mode, calibration, options.per_channel)
        s32, s8 = session(tmp / FP32), session(tmp / INT8)
        batches = _batches(x_test, y_test, 1024)
        acc32, rows = accuracy(s32, batches)
        acc8, _ = accuracy(s8, batches)
        drop = acc32 - acc8
        size32, size8 = (tmp / FP32).stat().st_size, (tmp / INT8).stat().st_size
        accepted = drop <= options.max_accuracy_drop + 1e-12
        lat8 = _latency_ms(s8, x_test)
        quant = {
            "mode": mode,
            "mode_requested": options.mode,
            "per_channel": options.per_channel,
            "calibration_rows": int(len(pick)) if mode == "static" else 0,
            "test_acc_fp32": acc32,
            "test_acc_int8": acc8,
            "accuracy_drop": drop,
            "max_accuracy_drop": options.max_accuracy_drop,
            "bytes_fp32": size32,
            "bytes_int8": size8,
            "size_ratio": size8 / size32,
            "latency_ratio_batch1": lat8["batch1_ms"] / manifest["latency"]["fp32"]["batch1_ms"],
            "latency_ratio_batch64": lat8["batch64_ms"] / manifest["latency"]["fp32"]["batch64_ms"],
            "accepted": accepted,
        }
        if accepted:
            xs = np.load(tmp / manifest["samples"]["input"])
            logits, probs = run(s8, xs)
            np.save(tmp / "samples" / "logits.int8.npy", logits)
            np.save(tmp / "samples" / "probabilities.int8.npy", probs)
            manifest["samples"]["probabilities_int8"] = "samples/probabilities.int8.npy"
            manifest["samples"]["logits_int8"] = "samples/logits.int8.npy"
            manifest["models"]["int8"] = INT8
            manifest["metrics"]["int8"] = {"test_acc": acc8, "test_rows": rows}
            manifest["latency"]["int8"] = lat8
            log.info("int8 model kept: accuracy %.4f -> %.4f (drop %.4f <= %.4f), size x%.2f",
                     acc32, acc8, drop, options.max_accuracy_drop, size8 / size32)
        else:
            (tmp / INT8).unlink()
            quant["reason"] = (
                f"int8 accuracy {acc8:.4f} vs fp32 {acc32:.4f}: a drop of {drop:.4f} exceeds the budget "
                f"quantize.max_accuracy_drop={options.max_accuracy_drop}; model.int8.onnx left out of the bundle"
            )
            log.warning("%s", quant["reason"])
        manifest["quantization"] = quant
        manifest.pop("files", None)
        manifest = write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("format", "format_version")})
    return manifest
