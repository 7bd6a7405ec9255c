"""Small VGG-style convolutional net with global average pooling."""

from collections.abc import Sequence

import torch
from torch import nn

from keel.models.nets._layers import activation as make_activation
from keel.models.nets._layers import check_image_input, check_norm


class CNN(nn.Module):
    """Stages of two ``3x3 conv -> norm -> activation`` layers, each followed by a 2x2 max-pool
    while the feature map is at least 4 pixels wide; then global average pooling, dropout
    and a linear head.

    Args:
        input_shape: ``[channels, height, width]`` of one sample.
        num_classes: number of outputs (the classes' logits, or 1 for regression).
        channels: output channels of each stage.
        dropout: dropout probability before the head.
        norm: ``batch`` or ``none``.
        activation: ``relu``, ``gelu`` or ``silu``.

    Shapes: ``(N, C, H, W) -> (N, num_classes)`` logits.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.2,
        norm: str = "batch",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_image_input(input_shape, "CNN")
        check_norm(norm, ("batch", "none"))
        in_ch, height, width = (int(d) for d in input_shape)
        layers: list[nn.Module] = []
        size = min(height, width)
        for out_ch in channels:
            for _ in range(2):
                layers.append(nn.Conv2d(in_ch, int(out_ch), 3, padding=1, bias=norm == "none"))
                if norm == "batch":
                    layers.append(nn.BatchNorm2d(int(out_ch)))
                layers.append(make_activation(activation))
                in_ch = int(out_ch)
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
