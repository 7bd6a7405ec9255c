"""OmegaConf resolvers used by conf/: registered by train.py before Hydra composes.

They stay light (omegaconf only): composing a config must not import torch, pandas or data.
"""

from __future__ import annotations

import secrets
from typing import Any

from omegaconf import DictConfig, OmegaConf

from keel.distributed import is_rank_zero, rank_zero_value

# One id per process: every directory this process names with it is its own, and two
# processes started in the same second never share a run directory.
_PROCESS_UID = f"{secrets.token_hex(3)}"


def _uid() -> str:
    return _PROCESS_UID


def _rank_zero_only(value: Any, other: Any = None) -> Any:
    """``value`` in global rank 0 (or a lone process), ``other`` in the other ranks of a
    distributed job: e.g. only rank 0 writes Hydra's ``.hydra/`` record into the shared run directory."""
    return value if is_rank_zero() else other


def table_input_width(columns: Any) -> int:
    """Width of a table row after the model's preprocessing (``TabularPreprocess``): numeric
    columns 1 (+1 missing indicator when nullable), category columns ``categories + 1``."""
    width = 0
    for spec in columns.values():
        if spec.get("dtype") == "category":
            width += len(spec.get("categories") or ()) + 1
        else:
            width += 2 if spec.get("nullable", False) else 1
    return width


def _net_input(contract: DictConfig | None) -> list[int] | None:
    """The net's input shape from a data contract; None when the contract is inferred at setup."""
    if contract is None or isinstance(contract, str):  # inferred, or a YAML file read at setup
        return None
    if contract.get("kind", "tensor") == "table":
        return [table_input_width(contract.columns)]
    return list(contract.shape)


def _num_classes(contract: DictConfig | None) -> int | None:
    return None if contract is None or isinstance(contract, str) else len(contract.get("classes") or ())


def _num_outputs(contract: DictConfig | None) -> int | None:
    """The net's output width: the number of classes, or 1 for a regression contract; None when
    the contract is inferred at setup (then the data fills it in)."""
    if contract is None or isinstance(contract, str):
        return None
    return 1 if contract.get("task", "classification") == "regression" else len(contract.get("classes") or ())


def register_resolvers() -> None:
    """Register ``${len:..}``, ``${keel.uid:}``, ``${keel.net_input:..}``, ``${keel.num_classes:..}``, ``${keel.num_outputs:..}``,
    ``${keel.rank_zero_value:NAME,VALUE}`` (rank 0's VALUE on every torchrun rank, see
    keel.distributed.rank_zero_value) and ``${keel.rank_zero_only:VALUE[,OTHER]}``; safe to call
    more than once."""
    resolvers = {
        "len": lambda seq: len(seq),
        "keel.uid": _uid,
        "keel.rank_zero_value": rank_zero_value,
        "keel.rank_zero_only": _rank_zero_only,
        "keel.net_input": _net_input,
        "keel.num_classes": _num_classes,
        "keel.num_outputs": _num_outputs,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            # cached: a config resolves ${keel.uid:} once, so joblib workers that receive the
            # parent's config name the same sweep directory instead of one each
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "keel.uid")


__all__ = ["register_resolvers", "table_input_width"]
