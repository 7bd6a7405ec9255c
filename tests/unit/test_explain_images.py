"""Image explanations (keel.explain.images): map shapes and ranges for keel's nets, the Grad-CAM
layer choice, a trained net's maps pointing at the pixels that decide its class, overlays, the grid
and the per-class pick."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from keel.explain import images as ei
from keel.explain.images import (
    METHODS,
    explanation_grid,
    image_attributions,
    last_conv_layer,
    overlay,
    pick_per_class,
)
from keel.models.module import TaskModule
from keel.models.nets import CNN, MLP, ResNet
from keel.models.nets.resnet import BasicBlock


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these nets are tiny, and on 2 shared cores two threads made training
    ~10x slower (14 s instead of 1 s); it also fixes the reduction order, so the trained net does
    not depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def task_module(net: dict[str, Any], shape: list[int], high: float, classes: int) -> TaskModule:
    """A real TaskModule as keel builds it, with its standardization for inputs in [0, high]."""
    c = shape[0]
    return TaskModule(
        net={**net, "input_shape": shape, "num_classes": classes},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        scheduler={"scheduler": None, "interval": "epoch", "frequency": 1, "monitor": None, "warmup": 0,
                   "warmup_start_factor": 0.1},
        preprocessing={"type": "standardize", "mean": [high / 2] * c, "std": [high / 4] * c,
                       "sample_ndim": len(shape)},
        loss={"label_smoothing": 0.0, "class_weights": None},
        contract={"kind": "tensor", "name": "t", "shape": shape, "dtype": "float32", "range": [0.0, high],
                  "finite": True, "classes": list(range(classes))},
    )


CNN_NET = {"_target_": "keel.models.nets.CNN", "channels": [4, 8], "dropout": 0.0}
RESNET_NET = {"_target_": "keel.models.nets.ResNet", "width": 4, "blocks": [1, 2]}
MLP_NET = {"_target_": "keel.models.nets.MLP", "hidden": [16]}


def check_maps(maps: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    for name, m in maps.items():
        assert m.shape == shape, name
        assert m.dtype == np.float32, name
        assert np.isfinite(m).all(), name
        assert m.min() >= 0.0 and m.max() <= 1.0, name
        # normalized per image: each image's largest value is 1 (a live net has some gradient)
        np.testing.assert_allclose(m.reshape(len(m), -1).max(axis=1), 1.0, err_msg=name)


@pytest.mark.parametrize(("net", "shape", "high"), [
    (CNN_NET, [1, 8, 8], 16.0),          # digits
    (RESNET_NET, [3, 12, 10], 255.0),    # an image folder, not square
])
def test_maps_of_conv_nets_have_the_image_shape_in_unit_range(net, shape, high):
    torch.manual_seed(0)
    module = task_module(net, shape, high, classes=3)
    x = torch.rand(5, *shape) * high
    target = torch.tensor([0, 1, 2, 1, 0])
    maps = image_attributions(module, x, target, ig_steps=8)
    assert list(maps) == list(METHODS)
    check_maps(maps, (5, shape[1], shape[2]))


def test_mlp_has_no_grad_cam_and_the_other_maps():
    torch.manual_seed(0)
    module = task_module(MLP_NET, [1, 8, 8], 16.0, classes=3)
    maps = image_attributions(module, torch.rand(4, 1, 8, 8) * 16, torch.tensor([0, 1, 2, 0]), ig_steps=8)
    assert list(maps) == ["saliency", "integrated_gradients"]
    check_maps(maps, (4, 8, 8))


def test_attributions_leave_mode_and_grads_as_they_were_even_under_inference_mode():
    torch.manual_seed(0)
    module = task_module(CNN_NET, [1, 8, 8], 16.0, classes=3)
    module.train()
    first = next(module.parameters())
    first.grad = torch.full_like(first, 7.0)
    with torch.inference_mode():  # Lightning's test loop; its batches are inference tensors
        x = torch.rand(3, 1, 8, 8) * 16
        target = module(x).argmax(dim=1)
        maps = image_attributions(module, x, target, ig_steps=4)
    assert module.training
    assert torch.equal(first.grad, torch.full_like(first, 7.0))
    assert all(p.grad is None for p in list(module.parameters())[1:])
    check_maps(maps, (3, 8, 8))


def test_grad_cam_layer_by_name_and_a_layer_without_a_feature_map_is_refused():
    torch.manual_seed(0)
    module = task_module(CNN_NET, [1, 8, 8], 16.0, classes=3)
    x, target = torch.rand(2, 1, 8, 8) * 16, torch.tensor([0, 1])
    by_name = image_attributions(module, x, target, methods=["grad_cam"], layer="net.features.2")
    by_module = image_attributions(module, x, target, methods=["grad_cam"], layer=module.net.features[2])
    np.testing.assert_array_equal(by_name["grad_cam"], by_module["grad_cam"])
    with pytest.raises(ValueError, match=r"Linear gives attributions of shape \[2, 1\]: expected a feature map"):
        image_attributions(module, x, target, methods=["grad_cam"], layer=module.net.head[3])
    with pytest.raises(ValueError, match="layer='net.nope': not a module of the model"):
        image_attributions(module, x, target, methods=["grad_cam"], layer="net.nope")


def test_unknown_method_names_the_value_the_allowed_ones_and_the_fix():
    module = task_module(CNN_NET, [1, 8, 8], 16.0, classes=3)
    with pytest.raises(ValueError, match=r"unknown 'lime'; allowed: saliency, integrated_gradients, grad_cam\. "
                                         r"Fix: pass a subset of them"):
        image_attributions(module, torch.rand(1, 1, 8, 8), torch.tensor([0]), methods=["saliency", "lime"])


def test_bad_inputs_are_refused_with_what_is_expected():
    module = task_module(CNN_NET, [1, 8, 8], 16.0, classes=3)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="ig_baseline='black': expected 'zeros', 'mean' or a tensor"):
        image_attributions(module, x, torch.tensor([0, 1]), ig_baseline="black")
    with pytest.raises(ValueError, match=r"target has 1 entries for 2 images"):
        image_attributions(module, x, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"x of shape \[1, 8, 8\]: expected images \(N, C, H, W\)"):
        image_attributions(module, x[0], torch.tensor([0]))


def test_integrated_gradients_baselines_and_bounded_batches():
    torch.manual_seed(0)
    module = task_module(CNN_NET, [1, 8, 8], 16.0, classes=3)
    x, target = torch.rand(5, 1, 8, 8) * 16, torch.tensor([0, 1, 2, 1, 0])
    ig = ["integrated_gradients"]
    # from the input itself there is no path: every attribution is 0
    same = image_attributions(module, x, target, methods=ig, ig_baseline=x.clone(), ig_steps=4)
    assert not same["integrated_gradients"].any()
    zeros = image_attributions(module, x, target, methods=ig, ig_steps=4)["integrated_gradients"]
    mean = image_attributions(module, x, target, methods=ig, ig_steps=4, ig_baseline="mean")["integrated_gradients"]
    one = image_attributions(module, x, target, methods=ig, ig_steps=4,
                             ig_baseline=torch.zeros(1, 8, 8))["integrated_gradients"]
    np.testing.assert_array_equal(one, zeros)  # a [C, H, W] baseline is broadcast over the batch
    assert not np.allclose(mean, zeros)
    # chunks of 2 images with 4 rows per forward: the same maps as one batch
    small = image_attributions(module, x, target, methods=ig, ig_steps=4, ig_batch_size=4)["integrated_gradients"]
    np.testing.assert_allclose(small, zeros, atol=1e-5)


class Blocky(nn.Module):
    """A user's net with its convolutions inside a custom block class."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x))

    def __init__(self) -> None:
        super().__init__()
        self.block = self.Block()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).mean(dim=(2, 3)))


class Flat(nn.Module):
    """A user's net with its convolutions as direct attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3)))


def test_last_conv_layer_of_keel_nets_user_nets_and_an_mlp():
    cnn = CNN([1, 8, 8], 3, channels=[4, 8])
    name, module = last_conv_layer(cnn)
    index = int(name.split(".")[1])
    assert name.startswith("features.") and isinstance(module, nn.ReLU)
    # right after the last conv (and its norm), before the max-pool
    assert isinstance(cnn.features[index - 2], nn.Conv2d) and isinstance(cnn.features[index - 1], nn.BatchNorm2d)
    assert not any(isinstance(m, nn.Conv2d) for m in cnn.features[index:])
    assert isinstance(cnn.features[index + 1], nn.MaxPool2d)
    # without norm layers: the activation follows the conv directly
    bare = CNN([1, 8, 8], 3, channels=[4], norm="none", activation="gelu")
    assert last_conv_layer(bare) == ("features.3", bare.features[3])

    resnet = ResNet([3, 16, 16], 3, width=4, blocks=[1, 2])
    name, module = last_conv_layer(resnet)
    assert name == "stages.1.1" and module is resnet.stages[1][1] and isinstance(module, BasicBlock)
    # the stage's first block ends with its projection shortcut's conv: still the last block
    one = ResNet([3, 16, 16], 3, width=4, blocks=[1, 1])
    assert last_conv_layer(one) == ("stages.1.0", one.stages[1][0])

    module = task_module(CNN_NET, [1, 8, 8], 16.0, classes=3)
    assert last_conv_layer(module) == (f"net.{last_conv_layer(module.net)[0]}", last_conv_layer(module.net)[1])

    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4), nn.SiLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert last_conv_layer(seq) == ("4", seq[4])
    blocky = Blocky()
    assert last_conv_layer(blocky) == ("block", blocky.block)
    flat = Flat()
    assert last_conv_layer(flat) == ("conv2", flat.conv2)

    assert last_conv_layer(MLP([1, 8, 8], 3)) is None


# ---- a trained net's maps point at what decides its class --------------------------------------

SIDE, PATCH = 20, 4  # 20x20 images: the last conv's receptive field spills ~5 px beyond the patch,
# which stays inside the 10x10 quadrant (on 16x16 images Grad-CAM's top-left share fell to ~0.5)


def corner_images(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 1 iff the top-left 4x4 corner is bright. Everywhere: noise in [0, 0.3]; in each of the
    three other quadrants, with probability 0.7, a bright 4x4 distractor at a random place (often
    at a border or a corner), whatever the class."""
    x = rng.uniform(0.0, 0.3, size=(n, 1, SIDE, SIDE)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    x[y == 1, 0, :PATCH, :PATCH] += rng.uniform(0.7, 1.0, size=(int(y.sum()), 1, 1)).astype(np.float32)
    half = SIDE // 2
    for qy, qx in ((0, 1), (1, 0), (1, 1)):
        for i in np.flatnonzero(rng.random(n) < 0.7):
            r0 = qy * half + rng.integers(0, half - PATCH + 1)
            c0 = qx * half + rng.integers(0, half - PATCH + 1)
            x[i, 0, r0 : r0 + PATCH, c0 : c0 + PATCH] += rng.uniform(0.7, 1.0)
    return torch.from_numpy(x), torch.from_numpy(y)


def quadrant_shares(maps: np.ndarray) -> np.ndarray:
    """Each map's mass in its (top-left, top-right, bottom-left, bottom-right) quadrant ``(N, 4)``."""
    h = SIDE // 2
    quads = [maps[:, :h, :h], maps[:, :h, h:], maps[:, h:, :h], maps[:, h:, h:]]
    mass = np.stack([q.sum(axis=(1, 2)) for q in quads], axis=1)
    return mass / mass.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def corner_model() -> tuple[TaskModule, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = corner_images(800, rng)
    x_test, y_test = corner_images(300, rng)
    module = task_module({**CNN_NET, "channels": [8, 16]}, [1, SIDE, SIDE], 1.3, classes=2)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    module.train()
    for _ in range(5):
        order = torch.randperm(len(x_train))
        for start in range(0, len(x_train), 64):
            rows = order[start : start + 64]
            loss = nn.functional.cross_entropy(module(x_train[rows]), y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    module.eval()
    return module, x_test, y_test


def points_top_left(shares: np.ndarray, mass: float) -> bool:
    """Maps whose mean top-left share exceeds ``mass``, whose bottom-right (opposite) share is under
    0.6 of it, and whose largest quadrant is the top-left one on 90% of the images."""
    top_left, opposite = shares[:, 0].mean(), shares[:, 3].mean()
    return bool(top_left > mass and opposite < 0.6 * top_left and (shares.argmax(axis=1) == 0).mean() >= 0.9)


def test_grad_cam_and_saliency_of_a_trained_net_point_at_the_deciding_corner(corner_model):
    module, x_test, y_test = corner_model
    with torch.no_grad():
        pred = module(x_test).argmax(dim=1)
    accuracy = float((pred == y_test).float().mean())
    assert accuracy > 0.9  # measured 1.000: the net found the corner among the distractors
    ones = x_test[y_test == 1][:32]
    maps = image_attributions(module, ones, torch.ones(len(ones), dtype=torch.long), ig_steps=16)
    cam, sal = quadrant_shares(maps["grad_cam"]), quadrant_shares(maps["saliency"])
    # the checks tell maps apart: a uniform map (0.25 each), the input's own brightness (~0.29
    # top-left: the distractors) and Grad-CAM turned to the opposite corner all fail them
    assert not points_top_left(quadrant_shares(np.ones_like(maps["grad_cam"])), 0.33)
    assert not points_top_left(quadrant_shares(ones[:, 0].numpy()), 0.33)
    assert not points_top_left(quadrant_shares(maps["grad_cam"][:, ::-1, ::-1]), 0.33)
    # Grad-CAM (seed 0; seeds 0-7 gave 0.86-0.93 top-left, 0.01-0.04 bottom-right):
    # measured 0.89 top-left, 0.04 bottom-right
    assert points_top_left(cam, 0.6)
    assert cam[:, 3].mean() < 0.15
    # saliency is noisier (every noise pixel has some gradient): measured 0.41 top-left, 0.17
    # bottom-right, top-left the largest quadrant on every image (seeds 0-7: 0.41-0.53)
    assert points_top_left(sal, 0.33)
    # Integrated Gradients (zero baseline): measured 0.64 top-left, 0.10 bottom-right
    assert points_top_left(quadrant_shares(maps["integrated_gradients"]), 0.4)


# ---- overlay, grid, pick ---------------------------------------------------------------------


def test_overlay_blends_the_min_max_scaled_image_with_the_colormap():
    from matplotlib import colormaps

    rng = np.random.default_rng(0)
    gray = rng.uniform(0, 16, size=(1, 8, 8))
    heat = rng.uniform(0, 1, size=(8, 8))
    out = overlay(gray, heat)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    unit = (gray[0] - gray.min()) / (gray.max() - gray.min())
    np.testing.assert_array_equal(overlay(gray, heat, alpha=0.0), np.rint(np.repeat(unit[..., None], 3, 2) * 255))
    np.testing.assert_array_equal(overlay(gray, heat, alpha=1.0), np.rint(colormaps["jet"](heat)[..., :3] * 255))
    rgb = rng.uniform(0, 255, size=(3, 6, 5))
    assert overlay(rgb, np.zeros((6, 5))).shape == (6, 5, 3)
    np.testing.assert_array_equal(overlay(rgb, np.zeros((6, 5)), alpha=0.0)[..., 0],
                                  np.rint((rgb[0] - rgb.min()) / (rgb.max() - rgb.min()) * 255))
    five = rng.uniform(0, 1, size=(5, 4, 4))
    grey = overlay(five, np.zeros((4, 4)), alpha=0.0)
    assert (grey[..., 0] == grey[..., 2]).all()  # other channel counts: their mean, as grey
    with pytest.raises(ValueError, match=r"heat of shape \[4, 4\] for an image of \[8, 8\]"):
        overlay(gray, np.zeros((4, 4)))


def test_explanation_grid_layout_order_and_text(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, size=(2, 1, 8, 8))
    maps = {m: rng.uniform(0, 1, size=(2, 8, 8)).astype(np.float32) for m in reversed(METHODS)}
    with_text = explanation_grid(images, maps, titles=["true 3 / pred 3", "true 5 / pred 8"])
    assert with_text.dtype == np.uint8 and with_text.ndim == 3 and with_text.shape[2] == 3
    # 8x8 digits are enlarged 8x: two 64 px rows (plus a header), four >= 64 px columns (plus titles)
    assert with_text.shape[0] > 2 * 64 and with_text.shape[1] > 4 * 64

    monkeypatch.setattr(ei, "_pil", lambda: None)  # no Pillow: tiles only, an exact layout
    grid = explanation_grid(images, maps, titles=["a", "b"])
    assert grid.shape == (2 + 2 * (64 + 2), 2 + 4 * (64 + 2), 3)
    assert with_text.shape[0] > grid.shape[0] and with_text.shape[1] > grid.shape[1]

    def tile(row: int, col: int) -> np.ndarray:
        y0, x0 = 2 + row * 66, 2 + col * 66
        return grid[y0 : y0 + 64, x0 : x0 + 64]

    def enlarged(a: np.ndarray) -> np.ndarray:
        return a.repeat(8, axis=0).repeat(8, axis=1)

    unit = (images[1, 0] - images[1].min()) / (images[1].max() - images[1].min())
    np.testing.assert_array_equal(tile(1, 0), enlarged(np.rint(np.repeat(unit[..., None], 3, 2) * 255)))
    for col, method in enumerate(METHODS, start=1):  # METHODS order, whatever the dict's order
        np.testing.assert_array_equal(tile(1, col), enlarged(overlay(images[1], maps[method][1])))
    assert (grid[:2] == 255).all() and (grid[:, 66:68] == 255).all()  # white separators
    assert explanation_grid(images, maps, scale=2).shape == (2 + 2 * 18, 2 + 4 * 18, 3)

    with pytest.raises(ValueError, match=r"maps\['grad_cam'\] of shape \[2, 4, 4\]: expected \[2, 8, 8\]"):
        explanation_grid(images, {**maps, "grad_cam": np.zeros((2, 4, 4))})
    with pytest.raises(ValueError, match="1 titles for 2 images"):
        explanation_grid(images, maps, titles=["a"])


def test_pick_per_class_is_seeded_capped_and_in_class_order():
    y = np.array([2, 0, 1, 2, 2, 0, 1, 2, 0, 0, 2])
    pick = pick_per_class(y, 3, seed=0)
    assert pick.dtype == np.int64
    assert list(y[pick]) == [0, 0, 0, 1, 1, 2, 2, 2]  # classes sorted; class 1 has only 2 rows
    assert len(set(pick.tolist())) == len(pick)
    np.testing.assert_array_equal(pick, pick_per_class(y, 3, seed=0))
    draws = {tuple(pick_per_class(y, 2, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed decides which rows
    with pytest.raises(ValueError, match="per_class=0: expected >= 1"):
        pick_per_class(y, 0)
