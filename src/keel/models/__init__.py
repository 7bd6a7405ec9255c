"""Models: plain nets (``keel.models.nets``) and the LightningModule that trains them for a task.

Exports resolve lazily so that light modules (config checks) do not import torch.
"""

from keel._lazy import lazy_getattr

_EXPORTS = {"TaskModule": "keel.models.module", "Classifier": "keel.models.module"}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
