"""Models: plain nets (``keel.models.nets``) and the LightningModule that trains them.

Exports resolve lazily so that light modules (config checks) can import
``keel.models.metric_names`` without importing torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {"Classifier": "keel.models.classifier"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keel.models' has no attribute {name!r}")
