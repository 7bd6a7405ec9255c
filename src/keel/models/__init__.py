"""Models: plain nets (``keel.models.nets``) and the LightningModule that trains them for a task.

Exports resolve lazily so that light modules (config checks) do not import torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {"TaskModule": "keel.models.module", "Classifier": "keel.models.module"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keel.models' has no attribute {name!r}")
