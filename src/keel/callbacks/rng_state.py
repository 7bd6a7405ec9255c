"""Random number generator state in every checkpoint, so a resumed run draws what the
uninterrupted one would have drawn (dropout masks, augmentations, DataLoader base seeds)."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger("keel")


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and, when initialized, CUDA generator states.

    Plain data and tensors only: a checkpoint holding it loads with ``torch.load(weights_only=True)``
    (NumPy's state tuple becomes a dict with an int64 tensor of keys).
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the generators from :func:`capture_rng_state` output (missing parts are left as they are)."""
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].numpy() if isinstance(n["keys"], torch.Tensor) else np.asarray(n["keys"])
        np.random.set_state((n["kind"], keys.astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda])
        else:
            log.warning("checkpoint holds %d CUDA generator states, this machine has %d GPUs: CUDA RNG not restored",
                        len(cuda), torch.cuda.device_count())


def _recreate_train_iterator(trainer: L.Trainer) -> bool:
    """Create the epoch's train iterator again, from the generators as they are now.

    Creating a DataLoader iterator draws its base seed from the global torch generator.
    An uninterrupted run creates each epoch's iterator at that epoch's start; a resumed run's
    first epoch uses the iterator Lightning created while setting up (before any state
    could be restored), so its draw came from the wrong place in the stream. Lightning
    re-creates the iterator itself except on the first epoch of a run and on a resume.
    Returns False when this Lightning version's loop lacks the expected attribute.
    """
    loop = trainer.fit_loop
    if trainer.current_epoch > 0 and not loop.is_resuming and not loop.epoch_loop.restarting:
        return True  # Lightning's epoch loop calls iter() itself, after this hook
    fetcher = getattr(loop, "_data_fetcher", None)
    if fetcher is None:
        return False
    iter(fetcher)
    return True


class RngState(L.Callback):
    """Stores the RNG states in each checkpoint and restores them when training resumes from one.

    The state is taken when the checkpoint is written (``state_dict``, called by Lightning while
    it assembles the checkpoint: with keel's epoch-end checkpoints, after everything the epoch
    drew). It is put back at the start of the first resumed epoch (``on_train_epoch_start``;
    for a checkpoint written inside an epoch, at ``on_train_start``), not at load time: between loading and that point Lightning still builds the train
    iterator, runs the model summary and the logger's graph trace, which may draw numbers
    (the sanity check runs under its own isolated RNG). The epoch's train iterator is then
    created again from the restored state, as the uninterrupted run creates it at that point.

    Added by ``keel.fit`` to every run (not a config option).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed inside an epoch: Lightning calls no on_train_epoch_start for the rest of that
        # epoch, and its iterator (made during setup, like the uninterrupted run's at the
        # epoch's start) already drew its seed. The next draws are the next batch's.
        if self._pending is not None and getattr(trainer.fit_loop, "restarted_mid_epoch", False):
            restore_rng_state(self._pending)
            self._pending = None
            log.info("resumed inside an epoch: python/numpy/torch random generator states restored")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        restore_rng_state(self._pending)
        self._pending = None
        if _recreate_train_iterator(trainer):
            log.info("resumed: python/numpy/torch random generator states restored from the checkpoint")
        else:
            log.warning("resumed: random generator states restored, but the train iterator of this epoch was made "
                        "before (unknown Lightning loop layout): the first resumed epoch may draw other numbers "
                        "than an uninterrupted run")


__all__ = ["RngState", "capture_rng_state", "restore_rng_state"]
