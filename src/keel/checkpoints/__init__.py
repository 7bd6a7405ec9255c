"""Checkpoints: ``read`` (safe, one load per file) and ``write`` (atomic, a Lightning CheckpointIO).

Exports resolve lazily: reading needs torch only when a file is loaded, writing imports Lightning.
"""

from keel._lazy import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, _EXPORTS)
