"""Name -> layer factories shared by the nets (typed choices, clear errors)."""

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name``; ValueError names the allowed values."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation={name!r}: expected one of {sorted(ACTIVATIONS)}") from None
