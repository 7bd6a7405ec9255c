"""Serve a bundle with ONNX Runtime and numpy only: this package never imports torch or Lightning."""

from keel.serve.bundle import Bundle, load_bundle, verify_bundle

__all__ = ["Bundle", "load_bundle", "verify_bundle"]
