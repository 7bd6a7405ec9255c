"""OmegaConf resolvers used by conf/: registered by train.py before Hydra composes."""

import secrets

from omegaconf import OmegaConf

# One id per process: every directory this process names with it is its own, and two
# processes started in the same second never share a run directory.
_PROCESS_UID = f"{secrets.token_hex(3)}"


def _uid() -> str:
    return _PROCESS_UID


def register_resolvers() -> None:
    """Register ``${len:...}`` and ``${keel.uid:}``; safe to call more than once."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))
    if not OmegaConf.has_resolver("keel.uid"):
        OmegaConf.register_new_resolver("keel.uid", _uid)


__all__ = ["register_resolvers"]
