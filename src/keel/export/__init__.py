"""Checkpoint -> ONNX (+ int8) bundle. Exports resolve lazily (the bundle module stays torch-free)."""

from keel._lazy import lazy_getattr

_EXPORTS = {
    "ExportOptions": "keel.export.build",
    "QuantizeOptions": "keel.export.build",
    "export_checkpoint": "keel.export.build",
    "add_int8": "keel.export.build",
    "ExportError": "keel.export.onnx",
    "BundleError": "keel.export.bundle",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
