"""Checkpoints: ``read`` (safe, one load per file) and ``write`` (atomic, a Lightning CheckpointIO).

Exports resolve lazily: reading needs torch only when a file is loaded, writing imports Lightning.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CheckpointError": "keel.checkpoints.read",
    "CheckpointInfo": "keel.checkpoints.read",
    "check_resumable": "keel.checkpoints.read",
    "keel_section": "keel.checkpoints.read",
    "load_checkpoint": "keel.checkpoints.read",
    "read_checkpoint": "keel.checkpoints.read",
    "AtomicCheckpointIO": "keel.checkpoints.write",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keel.checkpoints' has no attribute {name!r}")
