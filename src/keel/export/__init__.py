"""Checkpoint -> ONNX (+ int8) bundle. Exports resolve lazily (the bundle module stays torch-free)."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ExportOptions": "keel.export.build",
    "QuantizeOptions": "keel.export.build",
    "export_checkpoint": "keel.export.build",
    "add_int8": "keel.export.build",
    "ExportError": "keel.export.onnx",
    "BundleError": "keel.export.bundle",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keel.export' has no attribute {name!r}")
