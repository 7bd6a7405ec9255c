"""Serve a bundle with ONNX Runtime and numpy only: this package never imports torch or Lightning.

``keel predict`` imports ``keel.serve.bundle``; the HTTP server's modules (``server``, ``batching``,
``metrics``, ``requests``) resolve lazily, so predicting a file imports no asyncio, Starlette or
prometheus-client.
"""

from keel._lazy import lazy_getattr
from keel.serve.bundle import Bundle, load_bundle, verify_bundle

_EXPORTS = {
    "MicroBatcher": "keel.serve.batching",
    "BatchStats": "keel.serve.batching",
    "BatcherClosed": "keel.serve.batching",
    "DriftWindow": "keel.serve.metrics",
    "ServeMetrics": "keel.serve.metrics",
    "RequestError": "keel.serve.requests",
    "ServeOptions": "keel.serve.server",
    "create_app": "keel.serve.server",
    "serve": "keel.serve.server",
}

__all__ = ["Bundle", "load_bundle", "verify_bundle", *_EXPORTS]

__getattr__ = lazy_getattr(__name__, _EXPORTS)
