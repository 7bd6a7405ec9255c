"""Multilayer perceptron over the flattened input."""

from math import prod
from collections.abc import Sequence

import torch
from torch import nn

from keel.models.nets._layers import activation as make_activation
from keel.models.nets._layers import check_norm


class MLP(nn.Module):
    """``Linear -> norm -> activation -> dropout`` blocks, then a linear head.

    Args:
        input_shape: shape of one sample (any rank; it is flattened), e.g. ``[1, 8, 8]``.
        num_classes: number of outputs (the classes' logits, or 1 for regression).
        hidden: widths of the hidden layers.
        dropout: dropout probability after each hidden block.
        norm: ``batch``, ``layer`` or ``none``.
        activation: ``relu``, ``gelu`` or ``silu``.

    Shapes: ``(N, *input_shape) -> (N, num_classes)`` logits.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.1,
        norm: str = "batch",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_norm(norm, ("batch", "layer", "none"))
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: expected >= 1 (the classes, or 1 for regression)")
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(int(d) for d in input_shape)
        for h in hidden:
            layers.append(nn.Linear(width, int(h), bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(int(h)))
            elif norm == "layer":
                layers.append(nn.LayerNorm(int(h)))
            layers += [make_activation(activation), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
