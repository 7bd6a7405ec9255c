"""Reading keel checkpoints: safely (plain data only, never unpickling code), and once.

``read_checkpoint`` gives what keel needs of a checkpoint file (its keel section, the net and
the step) from one ``torch.load``; everything that must look inside a checkpoint (the resume
plan, export) takes that summary instead of loading the file again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.errors import KeelError


class CheckpointError(KeelError):
    """A checkpoint is missing, unreadable, unsafe to load, or from another model/config."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong.

    Raises:
        CheckpointError: no such file; a truncated/corrupted file; a file that needs
            unpickling arbitrary Python objects (refused: loading it could run code).
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "Unsupported global" not in first:  # a damaged byte stream, not an object to refuse
            raise CheckpointError(f"{p}: not a readable checkpoint (truncated or corrupted?): {first}") from None
        raise CheckpointError(
            f"{p}: refused: the file holds pickled Python objects ({first}). keel loads checkpoints with "
            "weights_only=True so that opening a file never runs code from it. Fix: use a checkpoint written "
            "by keel, or re-save this one with plain data (tensors, dicts, lists, numbers, strings)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{p}: not a readable checkpoint (truncated or corrupted?): {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: not a Lightning checkpoint (a {type(ckpt).__name__}, expected a dict)")
    return ckpt


def keel_section(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``keel`` section (contract, preprocessing, reference, config) of a keel checkpoint."""
    section = ckpt.get("keel")
    if not isinstance(section, dict) or "contract" not in section or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{path}: not a keel checkpoint (no 'keel' section with the data contract). "
            "Fix: pass a checkpoint written by `python train.py` (<run dir>/checkpoints/*.ckpt)"
        )
    return section


@dataclass(frozen=True)
class CheckpointInfo:
    """What keel reads of a checkpoint file: its path, its global step, the net it was trained
    with (``hyper_parameters.net``) and its keel section (contract, preprocessing, config...)."""

    path: Path
    global_step: int
    net: dict[str, Any]
    section: dict[str, Any]


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """:func:`load_checkpoint` + :func:`keel_section`, kept as a :class:`CheckpointInfo` (the
    weights are not kept).

    Raises:
        CheckpointError: as :func:`load_checkpoint`, or not a keel checkpoint.
    """
    ckpt = load_checkpoint(path)
    section = keel_section(ckpt, path)
    return CheckpointInfo(Path(path), int(ckpt.get("global_step", 0)), dict(ckpt["hyper_parameters"].get("net", {})),
                          section)


def check_resumable(info: CheckpointInfo, net: dict[str, Any], contract: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint of another net or another data contract.

    Raises:
        CheckpointError: naming what differs and how to fix it.
    """
    path, section, old_net = info.path, info.section, info.net
    problems = []
    if old_net != net:
        diff = sorted(k for k in set(old_net) | set(net) if old_net.get(k) != net.get(k))
        problems.append(
            "it was trained with another net: " + ", ".join(f"{k}: {old_net.get(k)!r} -> {net.get(k)!r}" for k in diff)
        )
    if json.dumps(section["contract"]) != json.dumps(contract):  # order-sensitive: column order is input order
        problems.append(f"it was trained on data with contract {section['contract'].get('name')!r}, which differs "
                        f"from this run's {contract.get('name')!r}")
    if problems:
        raise CheckpointError(
            f"ckpt_path={str(path)!r} cannot be resumed by this run: " + "; ".join(problems)
            + ". Fix: run with the same model and data config as the checkpoint (see its run's .hydra/config.yaml), "
            "or drop ckpt_path to start fresh"
        )


__all__ = ["CheckpointError", "CheckpointInfo", "check_resumable", "keel_section", "load_checkpoint", "read_checkpoint"]
