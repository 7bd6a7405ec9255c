"""TensorBoard views: confusion-matrix, sample and predicted-vs-true images (pixels, shapes), the
tags each task logs, histogram cadence."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from keel.callbacks import TensorBoardViews
from keel.callbacks import tensorboard_views as tv
from keel.callbacks.tensorboard_views import (
    DIAGONAL,
    GRID,
    axis_range,
    blues,
    confusion_heatmap,
    render_confusion_matrix,
    render_pred_vs_true,
    render_samples,
    residual_table,
    row_shares,
    scatter_pred_vs_true,
    subsample,
    to_pixels,
    to_unit_range,
)
from keel.models.module import TaskModule
from keel.tasks import get_task

LIGHTEST, DARKEST = (247, 251, 255), (8, 48, 107)
WHITE = (255, 255, 255)


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


def test_axis_range_spans_both_arrays_and_widens_a_constant():
    assert axis_range(np.array([1.0, 5.0]), np.array([-2.0, 3.0])) == (-2.0, 5.0)
    assert axis_range(np.array([2.0, np.nan]), np.array([2.0, np.inf])) == (1.5, 2.5)
    assert axis_range(np.array([]), np.array([])) == (0.0, 1.0)
    np.testing.assert_array_equal(to_pixels(np.array([0.0, 5.0, 10.0, 11.0]), 0.0, 10.0, 101), [0, 50, 100, 100])


def test_scatter_draws_the_diagonal_and_each_point_where_it_belongs():
    size = 101
    # range 0..10 from both arrays: true 5 -> column 50, pred 2.5 -> 25 px up from the bottom
    img = scatter_pred_vs_true(np.array([0.0, 2.5, 10.0, np.nan]), np.array([0.0, 5.0, 10.0, 3.0]), size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert tuple(img[75, 50]) == tuple(blues(1.0))       # the known point
    assert tuple(img[100, 0]) == tuple(blues(1.0))       # (0, 0): bottom left, over the diagonal
    assert tuple(img[0, 100]) == tuple(blues(1.0))       # (10, 10): top right
    diagonal = [tuple(img[size - 1 - k, k]) for k in range(1, size - 1)]
    assert set(diagonal) == {DIAGONAL}
    painted = ~np.all(img == 255, axis=2)
    painted[np.arange(size)[::-1], np.arange(size)] = False
    assert painted.sum() == 1 and painted[75, 50]  # nothing else but the point (the NaN row is left out)


def test_scatter_shades_fuller_pixels_darker():
    img = scatter_pred_vs_true(np.array([0.0, 0.0, 0.0, 1.0, 4.0]), np.array([4.0, 4.0, 4.0, 2.0, 0.0]), 5)
    assert tuple(img[4, 4]) == tuple(blues(1.0))  # three points: the fullest pixel
    single = tuple(img[3, 2])                     # pred 1 -> row 3, true 2 -> column 2
    assert single == tuple(blues(0.5 + 0.5 * np.log1p(1) / np.log1p(3)))
    dots = scatter_pred_vs_true(np.array([0.0, 0.0, 0.0, 1.0, 4.0]), np.array([4.0, 4.0, 4.0, 2.0, 0.0]), 5, dot=1)
    assert np.all(dots[2:5, 1:4] != 255, axis=2).all()          # the single point's 3 x 3 square
    assert tuple(dots[3, 3]) == tuple(blues(1.0))               # shared with the fullest pixel's square
    assert tuple(dots[0, 3]) == WHITE and tuple(dots[1, 4]) == WHITE  # top right: away from every point
    assert tuple(dots[0, 4]) == DIAGONAL
    with pytest.raises(ValueError, match="2 predictions for 3"):
        scatter_pred_vs_true(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="size=1"):
        scatter_pred_vs_true(np.zeros(2), np.zeros(2), 1)


def test_rendered_scatter_holds_the_plot_and_labels(monkeypatch):
    rng = np.random.default_rng(0)
    true = rng.normal(size=500)
    pred = true + rng.normal(scale=0.3, size=500)
    img = render_pred_vs_true(pred, true, "test: predicted vs true", size=200)
    plot = scatter_pred_vs_true(pred, true, 200, dot=1)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    # the plot is pasted whole, framed by a grid line: find where its first row sits
    rows = np.lib.stride_tricks.sliding_window_view(img, (1, 200, 3)).reshape(img.shape[0], -1, 200, 3)
    hits = [(y, x) for y, x in zip(*np.nonzero(np.all(rows == plot[0], axis=(2, 3))))
            if np.array_equal(img[y: y + 200, x: x + 200], plot)]
    assert len(hits) == 1
    y0, x0 = hits[0]
    assert tuple(img[y0 - 1, x0]) == GRID and tuple(img[y0 + 200, x0 + 199]) == GRID
    ink = np.all(img < 100, axis=2)
    assert ink[:y0 - 1].any()                                  # the title
    assert ink[y0: y0 + 200, : x0 - 1].any() and ink[y0 + 201:, :].any()  # y labels left, x labels below
    monkeypatch.setattr(tv, "_pil", lambda: None)
    np.testing.assert_array_equal(render_pred_vs_true(pred, true, "t", size=200), plot)


def test_subsample_is_bounded_seeded_and_ordered():
    np.testing.assert_array_equal(subsample(5, 10), np.arange(5))
    a, b = subsample(10_000, 300), subsample(10_000, 300)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 300 and len(set(a.tolist())) == 300 and np.all(np.diff(a) > 0)
    assert not np.array_equal(subsample(10_000, 300, seed=1), a)


def test_residual_table_is_one_markdown_row():
    text = residual_table({"rows": 3, "mean": 0.5, "rmse": 1.25})
    assert text.splitlines() == ["| rows | mean | rmse |", "|---|---|---|", "| 3 | 0.5 | 1.25 |"]


class _Writer:
    def __init__(self) -> None:
        self.histograms: list[tuple[str, int]] = []
        self.images: dict[str, np.ndarray] = {}
        self.texts: dict[str, str] = {}
        self.pr_curves: list[str] = []
        self.values: dict[str, np.ndarray] = {}

    def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.histograms.append((tag, step))
        self.values[tag] = np.asarray(values)

    def add_image(self, tag: str, image: np.ndarray, step: int, dataformats: str = "CHW") -> None:
        assert dataformats == "HWC" and image.ndim == 3 and image.shape[2] == 3
        self.images[tag] = image

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.texts[tag] = text

    def add_pr_curve(self, tag: str, labels: np.ndarray, predictions: np.ndarray, step: int) -> None:
        self.pr_curves.append(tag)


class _Module(nn.Module):
    """What the views read of keel's TaskModule: ``task``, ``split_records``, ``confusion``,
    ``hparams.contract``, ``device``, ``trainer``, and the forward pass."""

    def __init__(self, task: str, trainer: SimpleNamespace, split_records: dict | None = None) -> None:
        super().__init__()
        self.task = get_task(task)
        self.split_records = split_records or {}
        self.net = nn.Linear(2 * 4 * 4, 3)
        self.hparams = {"contract": {"classes": [0, 1, 2]}}
        self.trainer = trainer

    confusion = TaskModule.confusion  # the real property, over this module's split_records

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task.name != "classification":
            raise AssertionError("a regression test pass needs no extra forward")
        return self.net(x.flatten(1))


def _trainer(contract: object = None) -> SimpleNamespace:
    from lightning.pytorch.plugins.precision import Precision

    return SimpleNamespace(is_global_zero=True, current_epoch=3, global_step=7, sanity_checking=False, world_size=1,
                           precision_plugin=Precision(), datamodule=SimpleNamespace(contract=contract))


def _views(writer: _Writer, **kw) -> TensorBoardViews:
    cb = TensorBoardViews(**kw)
    cb._logger = SimpleNamespace(experiment=writer)
    return cb


def _regression_record(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    true = torch.tensor(rng.normal(100.0, 20.0, size=n), dtype=torch.float32)
    pred = true + torch.tensor(rng.normal(0.0, 5.0, size=n), dtype=torch.float32)
    return get_task("regression").split_record({"pred": pred, "true": true})


def _run_test_epoch(cb: TensorBoardViews, trainer: SimpleNamespace, module: _Module, batches: int = 2) -> None:
    cb.on_test_epoch_start(trainer, module)
    gen = torch.Generator().manual_seed(0)
    for i in range(batches):
        x, y = torch.rand(8, 2, 4, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        cb.on_test_batch_end(trainer, module, None, (x, y), i)
    cb.on_test_end(trainer, module)


def test_regression_views_log_scatter_residual_histogram_and_summary():
    writer = _Writer()
    trainer = _trainer(SimpleNamespace(shape=(2, 4, 4), range=None, num_classes=None, class_names=None))
    records = {"val": _regression_record(300), "test": _regression_record(10_000, seed=1)}
    module = _Module("regression", trainer, records)
    cb = _views(writer, scatter_max_points=1000)
    cb.on_validation_end(trainer, module)
    _run_test_epoch(cb, trainer, module)  # no extra forward pass (the module would raise)
    assert set(writer.images) == {"val/pred_vs_true", "test/pred_vs_true"}
    assert {t for t, _ in writer.histograms} == {"val/residuals", "test/residuals"}
    assert set(writer.texts) == {"val/residuals", "test/residuals"}  # no misclassified text, no PR curves
    assert writer.pr_curves == []
    rec = records["test"]
    np.testing.assert_allclose(writer.values["test/residuals"], rec["pred"] - rec["true"], rtol=1e-6)
    assert "| rows | mean | std | mae | rmse |" in writer.texts["test/residuals"]
    assert "| 10000 |" in writer.texts["test/residuals"]
    # the scatter draws the seeded sample (1000 rows), the same one every time
    again = _Writer()
    _views(again, scatter_max_points=1000).on_test_end(trainer, module)
    np.testing.assert_array_equal(again.images["test/pred_vs_true"], writer.images["test/pred_vs_true"])


def test_regression_sanity_check_and_switches_log_nothing():
    writer = _Writer()
    trainer = _trainer()
    module = _Module("regression", trainer, {"val": _regression_record(50)})
    trainer.sanity_checking = True
    _views(writer).on_validation_end(trainer, module)
    trainer.sanity_checking = False
    _views(writer, pred_vs_true=False).on_validation_end(trainer, module)
    off = TensorBoardViews()  # no TensorBoardLogger
    off.on_validation_end(trainer, module)
    trainer.is_global_zero = False
    _views(writer).on_validation_end(trainer, module)
    assert not writer.images and not writer.histograms and not writer.texts


def test_missing_or_partial_records_do_not_crash():
    writer = _Writer()
    trainer = _trainer()
    for task in ("regression", "classification"):
        module = _Module(task, trainer, {})
        cb = _views(writer, pr_curves=False)
        cb.on_validation_end(trainer, module)
        cb.on_test_end(trainer, module)
    bare = nn.Linear(2, 2)  # no task, no split_records, no confusion
    _views(writer, pr_curves=False).on_validation_end(trainer, bare)
    assert not writer.images and not writer.histograms and not writer.texts
    # only the summary; predictions that are all NaN; no rows at all
    summary_only = {"residuals": {"rows": 2, "mean": 0.1}}
    nan_rows = {"pred": np.full(3, np.nan), "true": np.zeros(3), "residuals": {"rows": 3, "mean": float("nan")}}
    empty = get_task("regression").split_record({"pred": torch.zeros(0), "true": torch.zeros(0)})
    _views(writer).on_validation_end(trainer, _Module("regression", trainer, {"val": summary_only}))
    _views(writer).on_test_end(trainer, _Module("regression", trainer, {"test": nan_rows}))
    _views(writer).on_test_end(trainer, _Module("regression", trainer, {"test": empty}))
    assert set(writer.texts) == {"val/residuals", "test/residuals"}
    assert not writer.images and not writer.histograms


def test_classification_tags_are_unchanged():
    writer = _Writer()
    contract = SimpleNamespace(shape=(2, 4, 4), range=(0.0, 1.0), num_classes=3, class_names=["a", "b", "c"])
    trainer = _trainer(contract)
    matrix = [[3, 1, 0], [0, 2, 2], [1, 0, 3]]
    module = _Module("classification", trainer, {"val": {"confusion_matrix": matrix},
                                                  "test": {"confusion_matrix": matrix}})
    cb = _views(writer)
    cb.on_validation_end(trainer, module)
    _run_test_epoch(cb, trainer, module)
    assert set(writer.images) == {"val/confusion_matrix", "test/confusion_matrix", "test/misclassified"}
    assert writer.pr_curves == ["test/pr_curve/a", "test/pr_curve/b", "test/pr_curve/c"]
    assert set(writer.texts) == {"test/misclassified"}
    assert writer.histograms == []
    np.testing.assert_array_equal(writer.images["test/confusion_matrix"],
                                  render_confusion_matrix(matrix, ["a", "b", "c"], "test"))


def test_classification_without_a_datamodule_counts_classes_from_the_module():
    writer = _Writer()
    trainer = _trainer()
    trainer.datamodule = None
    module = _Module("classification", trainer, {"test": {"confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}})
    _run_test_epoch(_views(writer), trainer, module)
    assert writer.pr_curves == ["test/pr_curve/0", "test/pr_curve/1", "test/pr_curve/2"]
    assert set(writer.images) == {"test/confusion_matrix"}  # no contract shape: no misclassified images


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
