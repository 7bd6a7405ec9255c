"""TensorBoard views beyond scalars: confusion-matrix images, PR curves, misclassified samples
(classification), predicted-vs-true scatters and residual histograms (regression), weight and
gradient histograms."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch

from keel.drawing import font as load_font
from keel.drawing import text_box

log = logging.getLogger(__name__)

# matplotlib's "Blues" at 0, 1/4, 1/2, 3/4, 1 (interpolated linearly in between)
_BLUES = np.array([[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]], dtype=np.float64)
GRID = (200, 200, 200)
WHITE = (255, 255, 255)
INK = (20, 20, 20)


def blues(values: np.ndarray) -> np.ndarray:
    """Colours of ``values`` in [0, 1] (clipped): ``(*values.shape, 3)`` uint8, light to dark blue."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_BLUES) - 1)
    lo = np.minimum(np.floor(v).astype(int), len(_BLUES) - 2)
    frac = (v - lo)[..., None]
    return np.rint(_BLUES[lo] * (1 - frac) + _BLUES[lo + 1] * frac).astype(np.uint8)


def row_shares(matrix: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows = true classes: the diagonal is the per-class recall);
    an empty row stays 0."""
    m = np.asarray(matrix, dtype=np.float64)
    totals = m.sum(axis=1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def confusion_heatmap(matrix: Sequence[Sequence[int]] | np.ndarray, cell: int) -> np.ndarray:
    """The cells of a confusion matrix as an RGB array ``(n * cell, n * cell, 3)`` uint8.

    Cell ``(i, j)`` (true class i, predicted class j) covers rows ``i*cell:(i+1)*cell`` and
    columns ``j*cell:(j+1)*cell``, coloured by :func:`blues` of its share of row i; its last
    pixel row and column are a grid line (:data:`GRID`).
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square and non-empty, got shape {m.shape}")
    if cell < 2:
        raise ValueError(f"cell={cell}: expected at least 2 pixels")
    img = np.repeat(np.repeat(blues(row_shares(m)), cell, axis=0), cell, axis=1)
    img[cell - 1 :: cell, :, :] = GRID
    img[:, cell - 1 :: cell, :] = GRID
    return img


def _pil() -> Any:
    """The ``PIL`` package with ``Image``/``ImageDraw``/``ImageFont`` loaded, or None (text is skipped)."""
    try:
        import PIL.Image
        import PIL.ImageDraw
        import PIL.ImageFont
    except ImportError:
        return None
    return PIL


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    return text_box(draw, text, font)[2:]


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    if _text_size(draw, text, font)[0] <= width:
        return text
    while text and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"


def _paste_text(
    canvas: Any, xy: tuple[int, int], text: str, font: Any, fill: tuple[int, int, int], rotate: bool
) -> None:
    """Text with its ink's top-left corner at ``xy``; ``rotate``: reads bottom to top."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(canvas)
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    if not rotate:
        probe.text((xy[0] - left, xy[1] - top), text, font=font, fill=fill)
        return
    tile = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(tile).text((-left, -top), text, font=font, fill=255)
    tile = tile.rotate(90, expand=True)
    canvas.paste(Image.new("RGB", tile.size, fill), xy, tile)


def render_confusion_matrix(
    matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], title: str = ""
) -> np.ndarray:
    """A confusion matrix as an RGB image ``(H, W, 3)`` uint8 for ``SummaryWriter.add_image``.

    Rows are true classes, columns predictions; colour is the share of the row
    (:func:`confusion_heatmap`), numbers are counts; axes are labelled with ``class_names``.
    Text needs Pillow (a TensorBoard dependency); without it the image is the bare heatmap.
    """
    m = np.asarray(matrix, dtype=np.int64)
    n = m.shape[0] if m.ndim == 2 else 0
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {m.shape} confusion matrix")
    cell = int(np.clip(480 // max(n, 1), 12, 48))
    heat = confusion_heatmap(m, cell)
    pil = _pil()
    if pil is None:
        return heat
    font = load_font(int(np.clip(cell // 3, 10, 14)))
    probe = pil.ImageDraw.Draw(pil.Image.new("RGB", (1, 1)))
    names = [_fit(probe, str(c), font, 96) for c in class_names]
    line = max(_text_size(probe, "Ag0", font)[1], 1)
    widths = [_text_size(probe, s, font)[0] for s in names]
    vertical = max(widths) > cell - 4
    pad = 6
    row_w = max(widths)
    col_h = max(widths) if vertical else line
    left = pad + line + pad + row_w + pad
    top = pad + (line + pad if title else 0) + line + pad + col_h + pad
    width = max(left + n * cell + pad, pad + _text_size(probe, title, font)[0] + pad)
    canvas = pil.Image.new("RGB", (width, top + n * cell + pad), WHITE)
    canvas.paste(pil.Image.fromarray(heat), (left, top))
    y = pad
    if title:
        _paste_text(canvas, (pad, y), title, font, INK, rotate=False)
        y += line + pad
    label_w = _text_size(probe, "predicted", font)[0]
    _paste_text(canvas, (left + (n * cell - label_w) // 2, y), "predicted", font, INK, rotate=False)
    y += line + pad
    for j, (name, w) in enumerate(zip(names, widths)):
        if vertical:
            _paste_text(canvas, (left + j * cell + (cell - line) // 2, y + col_h - w), name, font, INK, rotate=True)
        else:
            _paste_text(canvas, (left + j * cell + (cell - w) // 2, y), name, font, INK, rotate=False)
    for i, (name, w) in enumerate(zip(names, widths)):
        _paste_text(canvas, (left - pad - w, top + i * cell + (cell - line) // 2), name, font, INK, rotate=False)
    true_w = _text_size(probe, "true", font)[0]
    _paste_text(canvas, (pad, top + (n * cell - true_w) // 2), "true", font, INK, rotate=True)
    if cell >= 24:
        shares = row_shares(m)
        for i in range(n):
            for j in range(n):
                text = str(int(m[i, j]))
                tw, th = _text_size(probe, text, font)
                if tw <= cell - 4:
                    fill = WHITE if shares[i, j] > 0.5 else INK
                    _paste_text(canvas, (left + j * cell + (cell - 1 - tw) // 2, top + i * cell + (cell - 1 - th) // 2),
                                text, font, fill, rotate=False)
    return np.asarray(canvas)


def to_unit_range(x: np.ndarray, value_range: Sequence[float] | None) -> np.ndarray:
    """Samples ``(N, C, H, W)`` scaled to [0, 1]: by the contract's ``[low, high]``, else per sample
    by its own min and max."""
    x = np.asarray(x, dtype=np.float64)
    if value_range is not None and value_range[1] > value_range[0]:
        lo, hi = float(value_range[0]), float(value_range[1])
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    axes = tuple(range(1, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - lo
    return np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)


def render_samples(
    images: np.ndarray, captions: Sequence[str], value_range: Sequence[float] | None = None, min_side: int = 64
) -> np.ndarray:
    """Image samples ``(N, C, H, W)`` in a grid, each enlarged (nearest neighbour) to at least
    ``min_side`` pixels and captioned beneath: RGB ``(H, W, 3)`` uint8. One channel is shown as
    grey, three as RGB, others by their first channel."""
    x = to_unit_range(images, value_range)
    n, c, h, w = x.shape
    if len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} images")
    rgb = np.repeat(x[:, :1], 3, axis=1) if c != 3 else x
    scale = max(1, -(-min_side // min(h, w)))
    tiles = (np.rint(rgb * 255).astype(np.uint8).repeat(scale, axis=2).repeat(scale, axis=3)).transpose(0, 2, 3, 1)
    th, tw = h * scale, w * scale
    pil = _pil()
    cap_h = 0
    if pil is not None:
        probe = pil.ImageDraw.Draw(pil.Image.new("RGB", (1, 1)))
        font = load_font(11)
        cap_h = _text_size(probe, "Ag0", font)[1] + 6
        tw = max([tw] + [_text_size(probe, s, font)[0] + 4 for s in captions])
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, int(np.ceil(n / cols)))
    gap = 4
    grid = np.full((rows * (th + cap_h + gap) + gap, cols * (tw + gap) + gap, 3), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        y0, x0 = gap + r * (th + cap_h + gap), gap + q * (tw + gap) + (tw - w * scale) // 2
        grid[y0 : y0 + th, x0 : x0 + w * scale] = tiles[k]
    if pil is None:
        return grid
    canvas = pil.Image.fromarray(grid)
    for k, text in enumerate(captions):
        r, q = divmod(k, cols)
        tx = gap + q * (tw + gap) + (tw - _text_size(probe, text, font)[0]) // 2
        _paste_text(canvas, (tx, gap + r * (th + cap_h + gap) + th + 3), text, font, INK, rotate=False)
    return np.asarray(canvas)


# the y = x reference line of the predicted-vs-true scatter (matplotlib's "tab:red")
DIAGONAL = (214, 39, 40)


def axis_range(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """The one ``(low, high)`` of both axes of the scatter: min and max over the finite values of
    ``pred`` and ``true`` together, widened by 0.5 each side when they are all equal; ``(0, 1)``
    when there are none."""
    v = np.concatenate([np.ravel(pred), np.ravel(true)]).astype(np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    return (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)


def to_pixels(values: np.ndarray, lo: float, hi: float, size: int) -> np.ndarray:
    """Positions of ``values`` on an axis of ``size`` pixels spanning ``[lo, hi]``: nearest pixel,
    0 at ``lo``, ``size - 1`` at ``hi`` (clipped)."""
    scaled = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo) * (size - 1)
    return np.clip(np.rint(scaled), 0, size - 1).astype(np.int64)


def finite_pairs(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``true`` as flat float64 arrays, without the rows where either is not finite."""
    pred, true = np.ravel(pred).astype(np.float64), np.ravel(true).astype(np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.size} predictions for {true.size} true values")
    ok = np.isfinite(pred) & np.isfinite(true)
    return pred[ok], true[ok]


def scatter_pred_vs_true(pred: np.ndarray, true: np.ndarray, size: int = 320, dot: int = 0) -> np.ndarray:
    """Predicted against true values as an RGB image ``(size, size, 3)`` uint8: true along x
    (left to right), predicted along y (bottom to top), both over :func:`axis_range`.

    The y = x diagonal (pixels ``(size - 1 - k, k)``) is :data:`DIAGONAL`; every pixel holding a
    point is coloured by :func:`blues` of its count (a single point at 0.5, the fullest pixel at
    1.0, log scale between), drawn over the diagonal; the rest is white. ``dot > 0`` paints each
    point as a square of ``2 * dot + 1`` pixels (each pixel shaded by the fullest point on it).
    Rows with a non-finite value are left out.
    """
    if size < 2:
        raise ValueError(f"size={size}: expected at least 2 pixels")
    pred, true = finite_pairs(pred, true)
    lo, hi = axis_range(pred, true)
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    k = np.arange(size)
    img[size - 1 - k, k] = DIAGONAL
    if pred.size:
        counts = np.zeros((size, size), dtype=np.int64)
        np.add.at(counts, (size - 1 - to_pixels(pred, lo, hi, size), to_pixels(true, lo, hi, size)), 1)
        if dot > 0:
            padded = np.pad(counts, dot)
            counts = np.max([padded[dy: dy + size, dx: dx + size]
                             for dy in range(2 * dot + 1) for dx in range(2 * dot + 1)], axis=0)
        hit = counts > 0
        shade = 0.5 + 0.5 * np.log1p(counts[hit]) / np.log1p(counts.max()) if counts.max() > 1 else 1.0
        img[hit] = blues(shade)
    return img


def render_pred_vs_true(
    pred: np.ndarray, true: np.ndarray, title: str = "", size: int = 320, dot: int = 1
) -> np.ndarray:
    """:func:`scatter_pred_vs_true` framed, with the axis range at its ends, axis names and a
    title: RGB ``(H, W, 3)`` uint8 for ``SummaryWriter.add_image``. Without Pillow the image is
    the bare scatter."""
    plot = scatter_pred_vs_true(pred, true, size, dot)
    pil = _pil()
    if pil is None:
        return plot
    lo, hi = axis_range(*finite_pairs(pred, true))
    font = load_font(12)
    probe = pil.ImageDraw.Draw(pil.Image.new("RGB", (1, 1)))
    line = max(_text_size(probe, "Ag0", font)[1], 1)
    ticks = [f"{lo:.4g}", f"{hi:.4g}"]
    tick_w = max(_text_size(probe, t, font)[0] for t in ticks)
    pad = 6
    left = pad + line + pad + tick_w + pad
    top = pad + (line + pad if title else 0)
    bottom = top + size + 1 + pad + line + pad + line + pad
    width = max(left + size + 1 + pad + tick_w // 2, pad + _text_size(probe, title, font)[0] + pad)
    canvas = pil.Image.new("RGB", (width, bottom), WHITE)
    framed = np.full((size + 2, size + 2, 3), GRID, dtype=np.uint8)
    framed[1:-1, 1:-1] = plot
    canvas.paste(pil.Image.fromarray(framed), (left - 1, top - 1))
    if title:
        _paste_text(canvas, (pad, pad), title, font, INK, rotate=False)
    # y axis: high at the top, low at the bottom; x axis: low at the left, high at the right
    for text, y in ((ticks[1], top), (ticks[0], top + size - line)):
        _paste_text(canvas, (left - pad - _text_size(probe, text, font)[0], y), text, font, INK, rotate=False)
    y = top + size + 1 + pad
    _paste_text(canvas, (left, y), ticks[0], font, INK, rotate=False)
    _paste_text(canvas, (left + size - _text_size(probe, ticks[1], font)[0], y), ticks[1], font, INK, rotate=False)
    label_w = _text_size(probe, "true", font)[0]
    _paste_text(canvas, (left + (size - label_w) // 2, y + line + pad), "true", font, INK, rotate=False)
    label_w = _text_size(probe, "predicted", font)[0]
    _paste_text(canvas, (pad, top + (size - label_w) // 2), "predicted", font, INK, rotate=True)
    return np.asarray(canvas)


def subsample(n: int, at_most: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``at_most`` of ``n`` rows, in order: all of them, or a seeded random
    choice without replacement (the same rows every call)."""
    if n <= at_most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=at_most, replace=False))


def residual_table(summary: dict[str, Any]) -> str:
    """A residual summary (``keel.models.epoch_regression.residual_summary``) as a Markdown table."""
    cells = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in summary.values()]
    return ("| " + " | ".join(map(str, summary)) + " |\n|" + "---|" * len(summary) + "\n| "
            + " | ".join(cells) + " |")


def _gather_rows(pl_module: L.LightningModule, t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (``(n_rank, ...)``, sizes may differ) over all processes, in rank order.
    A collective: every process must call it."""
    if pl_module.trainer.world_size == 1:
        return t
    sizes = pl_module.all_gather(torch.tensor([t.shape[0]], device=t.device)).view(-1).tolist()
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    gathered = pl_module.all_gather(padded)
    return torch.cat([gathered[i, :s] for i, s in enumerate(sizes)])


class TensorBoardViews(L.Callback):
    """TensorBoard images, PR curves and histograms (only with a TensorBoardLogger; rank 0 writes).

    What a split shows comes from what the module's task recorded of it
    (``TaskModule.split_records``) and what the task outputs, never from the task's name:

    - ``val/confusion_matrix``: an image after every validation epoch (``test/confusion_matrix``
      after test), from the module's ``confusion`` dict (classification).
    - ``val/pred_vs_true``: a predicted-vs-true scatter image after every validation epoch
      (``test/pred_vs_true`` after test) of at most ``scatter_max_points`` rows (a seeded
      sample), with the y = x diagonal; ``val/residuals`` (``test/residuals``): a histogram of
      ``pred - true`` and the split's residual summary as a text table (regression: the record's
      ``pred``, ``true`` and ``residuals``).
    - ``test/pr_curve/<class>``: one precision-recall curve per class (PR Curves tab), from the
      softmax of one extra forward pass over the test batches (at most ``pr_max_samples`` rows
      per process are kept); only for a task that outputs class probabilities.
    - ``test/misclassified``: up to ``misclassified`` wrong test predictions of image data
      (contract shape ``[C, H, W]``) with their true and predicted class, as one image, and the
      same list as text; only for a task that outputs class probabilities.
    - ``weights/<param>``, ``grads/<param>`` histograms (``histograms: true``) at the first
      optimizer step of every ``histogram_every_n_epochs``-th epoch (gradients as the optimizer
      receives them).

    Under DDP the test rows of every process are gathered (a collective on every rank).

    Args:
        confusion_matrix: log the confusion-matrix images.
        confusion_max_classes: no image above this many classes (unreadable).
        pr_curves: log PR curves; ``pr_max_classes`` caps how many classes get one.
        pr_max_samples: test rows kept per process for the PR curves (memory bound).
        misclassified: how many misclassified test images to show (0: none).
        histograms: log weight and gradient histograms.
        histogram_every_n_epochs: epochs between histograms.
        pred_vs_true: log the regression scatter, residual histogram and summary.
        scatter_max_points: rows drawn in the scatter at most (the histogram takes every kept row).
    """

    def __init__(
        self,
        confusion_matrix: bool = True,
        confusion_max_classes: int = 50,
        pr_curves: bool = True,
        pr_max_classes: int = 32,
        pr_max_samples: int = 10000,
        misclassified: int = 16,
        histograms: bool = False,
        histogram_every_n_epochs: int = 1,
        pred_vs_true: bool = True,
        scatter_max_points: int = 4000,
    ) -> None:
        limits = (("confusion_max_classes", confusion_max_classes, 1), ("pr_max_classes", pr_max_classes, 1),
                  ("pr_max_samples", pr_max_samples, 1), ("misclassified", misclassified, 0),
                  ("histogram_every_n_epochs", histogram_every_n_epochs, 1),
                  ("scatter_max_points", scatter_max_points, 1))
        for name, value, low in limits:
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
        self.confusion_matrix = confusion_matrix
        self.confusion_max_classes = confusion_max_classes
        self.pr_curves = pr_curves
        self.pr_max_classes = pr_max_classes
        self.pr_max_samples = pr_max_samples
        self.misclassified = misclassified
        self.histograms = histograms
        self.histogram_every_n_epochs = histogram_every_n_epochs
        self.pred_vs_true = pred_vs_true
        self.scatter_max_points = scatter_max_points
        self._logger: Any = None
        self._histogram_epoch = -1
        self._reset_test()

    # ------------------------------------------------------------------ what the run offers
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _writer(self, trainer: L.Trainer) -> Any:
        return self._logger.experiment if self._logger is not None and trainer.is_global_zero else None

    @staticmethod
    def _contract(trainer: L.Trainer) -> Any:
        return getattr(getattr(trainer, "datamodule", None), "contract", None)

    @staticmethod
    def _classifies(pl_module: L.LightningModule) -> bool:
        """Whether the module's task outputs class probabilities (PR curves, mistakes); a module
        without a task is taken for a classifier."""
        task = getattr(pl_module, "task", None)
        return task is None or "probabilities" in tuple(getattr(task, "outputs", ()))

    @staticmethod
    def _record(pl_module: L.LightningModule, split: str) -> dict[str, Any]:
        """What the module's task kept of ``split`` at its last epoch end ({} when nothing)."""
        return dict((getattr(pl_module, "split_records", None) or {}).get(split) or {})

    def _class_names(self, trainer: L.Trainer, n: int) -> list[str]:
        from keel.data.protocol import class_names

        names = class_names(getattr(trainer, "datamodule", None))
        return names if len(names) == n else [str(i) for i in range(n)]

    def _image_shape(self, trainer: L.Trainer) -> tuple[int, ...] | None:
        shape = tuple(getattr(self._contract(trainer), "shape", ()) or ())
        return shape if len(shape) == 3 else None

    # ------------------------------------------------------------------ confusion matrices
    def _log_confusion(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, title: str) -> None:
        writer = self._writer(trainer)
        matrix = (getattr(pl_module, "confusion", None) or {}).get(split)
        if writer is None or not self.confusion_matrix or matrix is None:
            return
        n = len(matrix)
        if n > self.confusion_max_classes:
            log.info("tensorboard_views: %d classes > confusion_max_classes=%d: no confusion-matrix image",
                     n, self.confusion_max_classes)
            return
        image = render_confusion_matrix(matrix, self._class_names(trainer, n), title)
        writer.add_image(f"{split}/confusion_matrix", image, trainer.global_step, dataformats="HWC")

    # ------------------------------------------------------------------ regression: pred vs true
    def _log_regression(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, title: str) -> None:
        writer = self._writer(trainer)
        record = self._record(pl_module, split)
        if writer is None or not self.pred_vs_true or not record:
            return
        step = trainer.global_step
        pred, true = record.get("pred"), record.get("true")
        if pred is not None and true is not None:
            pred, true = finite_pairs(np.asarray(pred), np.asarray(true))
            if pred.size:
                keep = subsample(pred.size, self.scatter_max_points)
                shown = f"{keep.size} of {pred.size} rows" if keep.size < pred.size else f"{pred.size} rows"
                image = render_pred_vs_true(pred[keep], true[keep], f"{title}: predicted vs true, {shown}")
                writer.add_image(f"{split}/pred_vs_true", image, step, dataformats="HWC")
                writer.add_histogram(f"{split}/residuals", pred - true, step)
        summary = record.get("residuals")
        if summary and summary.get("rows"):
            writer.add_text(f"{split}/residuals", residual_table(summary), step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the module's on_validation_epoch_end, which stores split_records["val"]
        if not trainer.sanity_checking:
            title = f"validation, epoch {trainer.current_epoch}"
            self._log_confusion(trainer, pl_module, "val", title)
            self._log_regression(trainer, pl_module, "val", title)

    # ------------------------------------------------------------------ test: PR curves, mistakes
    def _reset_test(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._pr_rows = 0
        self._wrong: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._wrong_rows = 0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset_test()

    def _wants_forward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        # decided from config, task and data alone, so that every DDP rank takes the same path
        images = self.misclassified > 0 and self._image_shape(trainer) is not None
        return self._logger is not None and self._classifies(pl_module) and (self.pr_curves or images)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._wants_forward(trainer, pl_module):
            return
        x, y = batch[0], batch[1]
        precision = trainer.precision_plugin
        with torch.no_grad(), precision.forward_context():
            probs = pl_module(precision.convert_input(x)).float().softmax(dim=1)
        if self.pr_curves and self._pr_rows < self.pr_max_samples:
            keep = min(len(y), self.pr_max_samples - self._pr_rows)
            self._probs.append(probs[:keep])
            self._labels.append(y[:keep])
            self._pr_rows += keep
        if self._image_shape(trainer) is not None and self._wrong_rows < self.misclassified:
            pred = probs.argmax(dim=1)
            idx = (pred != y).nonzero().view(-1)[: self.misclassified - self._wrong_rows]
            self._wrong.append((x[idx].float(), y[idx], pred[idx]))
            self._wrong_rows += int(idx.numel())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_confusion(trainer, pl_module, "test", "test")
        self._log_regression(trainer, pl_module, "test", "test")
        if self._wants_forward(trainer, pl_module):
            if self.pr_curves:
                self._log_pr_curves(trainer, pl_module)
            if self.misclassified > 0 and self._image_shape(trainer) is not None:
                self._log_misclassified(trainer, pl_module)
        self._reset_test()

    def _log_pr_curves(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        n_classes = self._n_classes(trainer, pl_module)
        probs = torch.cat(self._probs) if self._probs else torch.zeros(0, n_classes, device=device)
        labels = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.long, device=device)
        probs, labels = _gather_rows(pl_module, probs), _gather_rows(pl_module, labels)
        writer = self._writer(trainer)
        if writer is None or not len(labels):
            return
        probs, labels = probs.cpu().numpy(), labels.cpu().numpy()
        names = self._class_names(trainer, probs.shape[1])
        for c in range(min(probs.shape[1], self.pr_max_classes)):
            writer.add_pr_curve(f"test/pr_curve/{names[c]}", labels == c, probs[:, c], trainer.global_step)

    def _log_misclassified(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        if self._wrong:
            parts = [torch.cat(p) for p in zip(*self._wrong)]
        else:
            shape = self._image_shape(trainer) or ()
            parts = [torch.zeros(0, *shape, device=device), torch.zeros(0, dtype=torch.long, device=device),
                     torch.zeros(0, dtype=torch.long, device=device)]
        x, y, pred = (_gather_rows(pl_module, p)[: self.misclassified] for p in parts)
        writer = self._writer(trainer)
        if writer is None or not len(y):
            return
        names = self._class_names(trainer, self._n_classes(trainer, pl_module))
        pairs = list(zip(y.tolist(), pred.tolist()))
        captions = [f"true {names[t]} / pred {names[p]}" for t, p in pairs]
        image = render_samples(x.cpu().numpy(), captions, getattr(self._contract(trainer), "range", None))
        writer.add_image("test/misclassified", image, trainer.global_step, dataformats="HWC")
        rows = "\n".join(f"| {k} | {names[t]} | {names[p]} |" for k, (t, p) in enumerate(pairs))
        writer.add_text("test/misclassified", "| # | true | predicted |\n|---|---|---|\n" + rows, trainer.global_step)

    def _n_classes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        contract = self._contract(trainer)
        # without a datamodule (trainer.test(model, dataloaders=...)): the module's stored contract
        stored = dict(getattr(pl_module, "hparams", None) or {}).get("contract") or {}
        n = (getattr(contract, "num_classes", None) or len(stored.get("classes") or ())
             or getattr(pl_module, "num_classes", None))
        if not n:
            raise RuntimeError("tensorboard_views: cannot tell the number of classes (no data contract)")
        return int(n)

    # ------------------------------------------------------------------ histograms
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        writer = self._writer(trainer)
        epoch = trainer.current_epoch
        if (writer is None or not self.histograms or epoch % self.histogram_every_n_epochs
                or self._histogram_epoch == epoch):
            return
        self._histogram_epoch = epoch
        for name, p in pl_module.named_parameters():
            writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), trainer.global_step)
            if p.grad is not None:
                writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), trainer.global_step)
