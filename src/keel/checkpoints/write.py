"""Writing checkpoints so that a kill cannot tear them: temp file in the same directory, fsync, rename.

Lightning 2.6's ``TorchCheckpointIO`` serializes to memory and writes through an fsspec
transaction. For local paths fsspec writes into ``tempfile.mkstemp()`` (the system temp
directory) and commits with ``shutil.move``: a rename only when that directory is on the
same filesystem as the run; otherwise (a tmpfs ``/tmp``, a separate data disk) a *copy* into
the final name, which a SIGKILL or power loss can leave half-written, and nothing is fsynced.
Resuming with ``ckpt_path=auto`` relies on ``last.ckpt`` being whole, hence this plugin: a
temp file beside the target (same filesystem, so ``os.replace`` is atomic), flushed and
fsynced before the rename, and the directory fsynced after it. A ``ModelCheckpoint``
subclass would cover only the checkpoints that callback writes, and only where the config
names that subclass; a CheckpointIO plugin covers every ``trainer.save_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from keel.atomic import write_atomic


def _is_local(path: str | Path) -> bool:
    protocol = get_filesystem(str(path)).protocol
    protocols = protocol if isinstance(protocol, (tuple, list)) else (protocol,)
    return any(p in ("file", "local") for p in protocols)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable (remote paths: Lightning's own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        write_atomic(path, lambda f: torch.save(checkpoint, f), mode="wb")


__all__ = ["AtomicCheckpointIO"]
