"""Name -> layer factories and argument checks shared by the nets (typed choices, clear errors)."""

from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name``; ValueError names the allowed values."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation={name!r}: expected one of {sorted(ACTIVATIONS)}") from None


def check_norm(norm: str, allowed: Sequence[str]) -> None:
    """ValueError naming ``allowed`` when ``norm`` is not one of them."""
    if norm not in allowed:
        raise ValueError(f"norm={norm!r}: expected one of {list(allowed)}")


def check_image_input(input_shape: Sequence[int], net: str) -> None:
    """ValueError unless ``input_shape`` is ``[channels, height, width]`` (``net``: the net's name)."""
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape={list(input_shape)}: the {net} expects [channels, height, width]; "
            "use model=mlp for flat (tabular) features"
        )
