"""TensorBoard views: confusion-matrix and sample images (pixels, shapes), histogram cadence."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from keel.callbacks import TensorBoardViews
from keel.callbacks import tensorboard_views as tv
from keel.callbacks.tensorboard_views import (
    GRID,
    blues,
    confusion_heatmap,
    render_confusion_matrix,
    render_samples,
    row_shares,
    to_unit_range,
)

LIGHTEST, DARKEST = (247, 251, 255), (8, 48, 107)


def test_blues_endpoints_and_middle():
    assert tuple(blues(0.0)) == LIGHTEST
    assert tuple(blues(1.0)) == DARKEST
    assert tuple(blues(0.5)) == (107, 174, 214)
    assert tuple(blues(2.0)) == DARKEST and tuple(blues(-1.0)) == LIGHTEST  # clipped
    assert blues(np.zeros((2, 3))).shape == (2, 3, 3)


def test_row_shares_are_per_true_class_and_empty_rows_stay_zero():
    shares = row_shares([[3, 1], [0, 0]])
    np.testing.assert_allclose(shares, [[0.75, 0.25], [0.0, 0.0]])


def test_heatmap_cells_have_the_colour_of_their_row_share():
    cell = 10
    img = confusion_heatmap([[3, 1], [0, 0]], cell)
    assert img.shape == (20, 20, 3) and img.dtype == np.uint8
    centre = cell // 2
    assert tuple(img[centre, centre]) == tuple(blues(0.75))            # true 0, pred 0
    assert tuple(img[centre, cell + centre]) == tuple(blues(0.25))     # true 0, pred 1
    assert tuple(img[cell + centre, centre]) == LIGHTEST               # empty row
    assert tuple(img[cell - 1, centre]) == GRID and tuple(img[centre, cell - 1]) == GRID


def test_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match="square and non-empty"):
        confusion_heatmap([[1, 2, 3], [4, 5, 6]], 10)
    with pytest.raises(ValueError, match="cell=1"):
        confusion_heatmap([[1]], 1)


def test_rendered_matrix_holds_the_heatmap_and_labels():
    m = np.array([[5, 0, 0], [1, 4, 0], [0, 2, 3]])
    names = ["cat", "dog", "a very long class name"]
    cell = 48  # 480 // 3 clipped to 48
    img = render_confusion_matrix(m, names, "validation, epoch 0")
    heat = confusion_heatmap(m, cell)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] > heat.shape[0] and img.shape[1] > heat.shape[1]
    # cell (0, 0) is the only one at share 1.0: its top-left corner is the heatmap's origin
    ys, xs = np.nonzero(np.all(img == DARKEST, axis=2))
    y0, x0 = ys.min(), xs[ys == ys.min()].min()
    for i in range(3):
        for j in range(3):  # corners stay free of the centred counts
            assert tuple(img[y0 + i * cell + 1, x0 + j * cell + 1]) == tuple(heat[i * cell + 1, j * cell + 1])
    # labels and title: dark ink left of and above the cells
    ink = np.all(img < 100, axis=2)
    assert ink[y0:, :x0].any() and ink[:y0, x0:].any()
    # counts: white text on the darkest cell, dark text on a light one
    dark_cell = img[y0: y0 + cell - 1, x0: x0 + cell - 1]
    assert np.all(dark_cell == 255, axis=2).any()
    light_cell = img[y0: y0 + cell - 1, x0 + cell: x0 + 2 * cell - 1]  # true 0, pred 1: count 0
    assert np.all(light_cell < 100, axis=2).any()


def test_rendered_matrix_without_pillow_is_the_bare_heatmap(monkeypatch):
    monkeypatch.setattr(tv, "_pil", lambda: None)
    m = [[2, 1], [0, 3]]
    np.testing.assert_array_equal(render_confusion_matrix(m, ["a", "b"]), confusion_heatmap(m, 48))


def test_rendered_matrix_needs_one_name_per_class():
    with pytest.raises(ValueError, match="2 class names"):
        render_confusion_matrix([[1, 0, 0], [0, 1, 0], [0, 0, 1]], ["a", "b"])


def test_to_unit_range_by_contract_range_or_per_sample():
    x = np.array([[[[0.0, 8.0], [16.0, 20.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])
    np.testing.assert_allclose(to_unit_range(x, (0.0, 16.0))[0, 0], [[0.0, 0.5], [1.0, 1.0]])
    per_sample = to_unit_range(x, None)
    np.testing.assert_allclose(per_sample[0, 0], [[0.0, 0.4], [0.8, 1.0]])
    np.testing.assert_allclose(per_sample[1], 0.0)  # constant image: no division by zero


def test_samples_grid_enlarges_each_image(monkeypatch):
    monkeypatch.setattr(tv, "_pil", lambda: None)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, size=(3, 1, 8, 8))
    grid = render_samples(images, ["a", "b", "c"], (0.0, 16.0))
    # 2 x 2 grid of 64 px tiles (8 px scaled x8), 4 px gaps
    assert grid.shape == (2 * (64 + 4) + 4, 2 * (64 + 4) + 4, 3)
    expected = np.rint(to_unit_range(images, (0, 16))[0, 0] * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    np.testing.assert_array_equal(grid[4:68, 4:68, 0], expected)
    np.testing.assert_array_equal(grid[4:68, 4:68, 0], grid[4:68, 4:68, 2])  # grey
    assert np.all(grid[72:, 72:] == 255)  # the 4th cell is empty


def test_samples_grid_captions_each_tile():
    images = np.zeros((2, 3, 8, 8))  # black RGB tiles
    grid = render_samples(images, ["true 1 / pred 7", "true 2 / pred 3"], None)
    assert grid.shape[0] > 64 + 8  # room for a caption line
    caption_band = grid[4 + 64: 4 + 64 + 12]
    assert np.all(caption_band < 100, axis=2).any()
    with pytest.raises(ValueError, match="1 captions for 2 images"):
        render_samples(images, ["x"], None)


class _Writer:
    def __init__(self) -> None:
        self.histograms: list[tuple[str, int]] = []

    def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.histograms.append((tag, step))


def test_histograms_every_n_epochs_once_per_epoch_rank_zero_only():
    writer = _Writer()
    cb = TensorBoardViews(histograms=True, histogram_every_n_epochs=2)
    cb._logger = SimpleNamespace(experiment=writer)
    module = nn.Linear(3, 2)
    module(torch.ones(1, 3)).sum().backward()
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=0, global_step=0)
    for epoch, step in [(0, 0), (0, 1), (1, 2), (2, 3), (2, 4)]:
        trainer.current_epoch, trainer.global_step = epoch, step
        cb.on_before_optimizer_step(trainer, module, None)
    tags = {"weights/weight", "weights/bias", "grads/weight", "grads/bias"}
    assert {t for t, _ in writer.histograms} == tags
    assert sorted({s for _, s in writer.histograms}) == [0, 3]  # first step of epochs 0 and 2
    assert len(writer.histograms) == 8

    other = _Writer()
    cb = TensorBoardViews(histograms=True)
    cb._logger = SimpleNamespace(experiment=other)
    cb.on_before_optimizer_step(SimpleNamespace(is_global_zero=False, current_epoch=0, global_step=0), module, None)
    off = TensorBoardViews(histograms=False)
    off._logger = SimpleNamespace(experiment=other)
    off.on_before_optimizer_step(SimpleNamespace(is_global_zero=True, current_epoch=0, global_step=0), module, None)
    assert other.histograms == []


def test_views_reject_bad_settings():
    with pytest.raises(ValueError, match="pr_max_samples=0"):
        TensorBoardViews(pr_max_samples=0)
    with pytest.raises(ValueError, match="misclassified=-1"):
        TensorBoardViews(misclassified=-1)
