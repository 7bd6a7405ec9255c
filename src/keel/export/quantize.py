"""Post-training int8 quantization of the ONNX model with ONNX Runtime (dynamic or static QDQ)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MODES = ("auto", "dynamic", "static")
# Dynamic quantization turns Conv into ConvInteger, which ONNX Runtime runs 5-10x slower than
# fp32 on CPU (bench/bench_inference.py); static QDQ runs convolutions faster than fp32.
CONV_OPS = {"Conv", "ConvTranspose"}


def resolve_mode(mode: str, fp32: Path) -> str:
    """``auto``: ``static`` for graphs with convolutions, ``dynamic`` otherwise."""
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
    ``quant_pre_process`` first.

    Raises:
        ValueError: an unknown mode, or static without calibration batches.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise ValueError(f"quantize.mode={mode!r}: expected one of {list(MODES)}")
    mode = resolve_mode(mode, fp32)
    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    try:
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
            return
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
    finally:
        pre.unlink(missing_ok=True)
