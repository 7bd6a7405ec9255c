"""keel.models.nets.ResNet: shapes, size, shortcuts, refusals and gradient flow (no training)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from keel.models.nets import ResNet
from keel.models.nets.resnet import BasicBlock


def params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_logits_for_cifar_sized_and_tiny_single_channel_images() -> None:
    torch.manual_seed(0)
    assert ResNet([3, 32, 32], 10).eval()(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    # 8x8 halves to 4 and 2 in the later stages; a 4th stage reaches 1x1
    assert ResNet([1, 8, 8], 7, width=8).eval()(torch.randn(5, 1, 8, 8)).shape == (5, 7)
    assert ResNet([1, 8, 8], 3, width=4, blocks=(1, 1, 1, 1)).eval()(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_parameter_counts() -> None:
    # stem 3->32, stages of 32/64/128 channels with two BasicBlocks each, 10-class head
    assert 0.6e6 < params(ResNet([3, 32, 32], 10)) < 0.8e6
    # the bench's model: one block per stage, four stages (32..256 channels)
    assert 1.0e6 < params(ResNet([3, 32, 32], 10, width=32, blocks=(1, 1, 1, 1))) < 5e6
    # no norm: convs carry biases instead of BatchNorm's weight and bias
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ResNet([3, 32, 32], 10, norm="none").modules())


def test_projection_shortcut_only_where_channels_or_resolution_change() -> None:
    net = ResNet([3, 32, 32], 10, width=16, blocks=(2, 2, 2))
    blocks = [b for b in net.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 6
    projected = [not isinstance(b.shortcut, nn.Identity) for b in blocks]
    # the first block of stage 1 keeps 16 channels at stride 1; stages 2 and 3 start with a projection
    assert projected == [False, False, True, False, True, False]
    conv = blocks[2].shortcut[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    assert (conv.in_channels, conv.out_channels) == (16, 32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": [64]}, r"input_shape=\[64\]: the ResNet expects \[channels, height, width\]"),
        ({"input_shape": [1, 8]}, r"input_shape=\[1, 8\].*model=mlp"),
        ({"norm": "layer"}, r"norm='layer': expected one of \['batch', 'none'\]"),
        ({"activation": "tanh"}, r"activation='tanh': expected one of"),
        ({"blocks": ()}, r"at least one stage"),
        ({"blocks": (2, 0)}, r"blocks=\[2, 0\]"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    args = {"input_shape": [3, 32, 32], "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        ResNet(**args)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_gradients_reach_every_parameter(norm: str) -> None:
    torch.manual_seed(0)
    net = ResNet([3, 16, 16], 4, width=8, blocks=(1, 2), norm=norm, activation="silu")
    loss = nn.functional.cross_entropy(net(torch.randn(6, 3, 16, 16)), torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
