"""Callbacks at run boundaries: ONNX export and int8 quantization of the best checkpoint."""

from keel.callbacks.onnx_export import OnnxExport
from keel.callbacks.quantize import Quantize

__all__ = ["OnnxExport", "Quantize"]
