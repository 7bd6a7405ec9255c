"""Post-training int8 quantization of the ONNX model with ONNX Runtime (dynamic or static QDQ)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODES = ("auto", "dynamic", "static")
# Dynamic quantization turns Conv into ConvInteger, which ONNX Runtime runs 5-10x slower than
# fp32 on CPU (bench/bench_inference.py); static QDQ runs convolutions faster than fp32.
CONV_OPS = {"Conv", "ConvTranspose"}
# Recurrent ops ONNX Runtime's quantizer leaves in float32 (onnxruntime 1.2x, measured on keel's
# exported GRU/LSTM graphs): dynamic mode turns LSTM into DynamicQuantizeLSTM (int8 weights) but
# has no rule for GRU or RNN; static QDQ has no rule for any of them. The int8 model still runs
# (the layers around them are int8) and is judged on the task's budget like any other; what stayed
# float32 and why is written into the int8 file (:func:`float32_ops`).
FLOAT32_REASONS = {
    "GRU": "ONNX Runtime has no int8 GRU kernel (quantize_dynamic/quantize_static leave GRU in float32): only "
           "the layers around it are int8. Fix: model.net.cell=lstm for an int8 recurrent layer",
    "RNN": "ONNX Runtime has no int8 RNN kernel: it stays float32",
    "LSTM": "static (QDQ) quantization has no LSTM rule: the LSTM stays float32. Fix: quantize.mode=dynamic "
            "(DynamicQuantizeLSTM)",
}
FLOAT32_OPS_KEY = "keel.int8.float32_ops"


def resolve_mode(mode: str, fp32: Path) -> str:
    """``auto``: ``static`` for graphs with convolutions, ``dynamic`` otherwise (recurrent graphs
    included: only dynamic mode has an int8 LSTM)."""
    if mode != "auto":
        return mode
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    return "static" if any(n.op_type in CONV_OPS for n in graph.node) else "dynamic"


def quantize_onnx(
    fp32: Path, out: Path, mode: str, calibration: list[np.ndarray] | None = None, per_channel: bool = True
) -> None:
    """Write an int8 model of ``fp32`` to ``out``.

    ``dynamic``: int8 weights, activations quantized on the fly. ``static``: int8 weights and
    activations in QDQ format, activation ranges calibrated on ``calibration`` batches (raw
    inputs, as the model receives them). ``auto``: see :func:`resolve_mode`. All run
    ``quant_pre_process`` first. Recurrent ops the quantizer leaves in float32 are named, with
    the reason, in the int8 file's metadata (:func:`float32_ops`).

    Raises:
        ValueError: an unknown mode, or static without calibration batches.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise ValueError(f"quantize.mode={mode!r}: expected one of {list(MODES)}")
    mode = resolve_mode(mode, fp32)
    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    try:
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
        else:
            _quantize_static(pre, out, calibration, per_channel)
    finally:
        pre.unlink(missing_ok=True)
    _note_float32_ops(out)


def _quantize_static(pre: Path, out: Path, calibration: list[np.ndarray] | None, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("static quantization needs calibration batches (quantize.calibration_batches >= 1)")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self._it, None)
            return None if batch is None else {"input": np.ascontiguousarray(batch, dtype=np.float32)}

    quantize_static(
        str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
    )


def _note_float32_ops(out: Path) -> None:
    """Write which ops stayed float32, and why, into the int8 model's metadata (only when some did)."""
    import onnx

    model = onnx.load(str(out))
    left = sorted({n.op_type for n in model.graph.node if n.op_type in FLOAT32_REASONS})
    if not left:
        return
    notes = {op: FLOAT32_REASONS[op] for op in left}
    for op, why in notes.items():
        log.warning("int8: %s stays float32: %s", op, why)
    entry = model.metadata_props.add()
    entry.key, entry.value = FLOAT32_OPS_KEY, json.dumps(notes)
    onnx.save(model, str(out))


def float32_ops(int8: Path) -> dict[str, str]:
    """The ops of an int8 model written by :func:`quantize_onnx` that ONNX Runtime left in float32,
    each with the reason (``{}``: everything it could quantize was quantized)."""
    import onnx

    model = onnx.load(str(int8), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == FLOAT32_OPS_KEY:
            return dict(json.loads(entry.value))
    return {}
