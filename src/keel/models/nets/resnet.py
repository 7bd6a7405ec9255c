"""Small residual convolutional net (CIFAR-style ResNet with BasicBlocks)."""

from collections.abc import Sequence

import torch
from torch import nn

from keel.models.nets._layers import activation as make_activation
from keel.models.nets._layers import check_image_input, check_norm

NORMS = ("batch", "none")


def _norm(norm: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


class BasicBlock(nn.Module):
    """``3x3 conv (stride) -> norm -> act -> 3x3 conv -> norm``, plus the shortcut, then act.

    The shortcut is the identity when the block keeps channels and resolution, else a
    ``1x1 conv (stride) -> norm`` projection.

    Shapes: ``(N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, activation: str) -> None:
        super().__init__()
        bias = norm == "none"  # a bias before batch norm is cancelled by its mean
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = _norm(norm, out_ch)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias)
        self.norm2 = _norm(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=bias), _norm(norm, out_ch))
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ``3x3 conv -> norm -> activation`` stem to ``width`` channels, then one stage per entry
    of ``blocks``: stage ``i`` has ``width * 2**i`` channels and ``blocks[i]`` BasicBlocks
    (two 3x3 convs with an identity shortcut, or a 1x1 projection where channels or
    resolution change), the first stage at stride 1 and each later one starting at stride 2;
    then global average pooling, dropout and a linear head. No data-dependent control flow,
    so it exports to ONNX like the CNN.

    Args:
        input_shape: ``[channels, height, width]`` of one sample.
        num_classes: number of output logits.
        width: channels of the stem and the first stage.
        blocks: BasicBlocks per stage (at least one stage, each >= 1).
        dropout: dropout probability before the head.
        norm: ``batch`` or ``none``.
        activation: ``relu``, ``gelu`` or ``silu``.

    Shapes: ``(N, C, H, W) -> (N, num_classes)`` logits; any ``H, W >= 1`` (each stage after
    the first halves them, rounding up).

    Raises:
        ValueError: ``input_shape`` is not ``[channels, height, width]``, an unknown ``norm``
            or ``activation``, or ``width``/``blocks`` below 1.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 32,
        blocks: Sequence[int] = (2, 2, 2),
        dropout: float = 0.0,
        norm: str = "batch",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_image_input(input_shape, "ResNet")
        check_norm(norm, NORMS)
        if int(width) < 1 or not blocks or any(int(b) < 1 for b in blocks):
            raise ValueError(f"width={width}, blocks={list(blocks)}: expected width >= 1 and at least one "
                             "stage, each with >= 1 block (e.g. blocks=[2, 2, 2])")
        in_ch = int(input_shape[0])
        width = int(width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=norm == "none"), _norm(norm, width), make_activation(activation)
        )
        stages: list[nn.Module] = []
        ch = width
        for i, count in enumerate(blocks):
            out_ch = width * 2**i
            layers = [BasicBlock(ch, out_ch, 1 if i == 0 else 2, norm, activation)]
            layers += [BasicBlock(out_ch, out_ch, 1, norm, activation) for _ in range(int(count) - 1)]
            stages.append(nn.Sequential(*layers))
            ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
