"""Permutation feature importance of a task model on held-out rows (Captum's ``FeaturePermutation``).

A feature's importance is how much the task's metric gets worse when that feature's values are
shuffled across the rows, breaking its link with the target while keeping its distribution:
``baseline - permuted`` for a higher-is-better metric (acc), ``permuted - baseline`` for a
lower-is-better one (rmse), so bigger is more important either way. Each of ``repeats``
independent shuffles gives one value per feature; the report keeps their mean and spread.

The report is plain data (JSON-able): it goes into the bundle manifest and the server's ``/info``;
:func:`importance_chart` draws it for TensorBoard and :func:`importance_lines` for ``keel explain``.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from keel.tasks import get_task
from keel.tasks.base import SPLITS, Task

METHOD = "permutation"


def permutation_importance(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | np.ndarray | Sequence[Any],
    task: Task | str,
    feature_names: Sequence[str] | None = None,
    metric: str | None = None,
    repeats: int = 5,
    seed: int = 0,
    feature_mask: torch.Tensor | None = None,
    batch_rows: int | None = None,
    *,
    split: str = "test",
) -> dict[str, Any]:
    """Permutation importance of each input feature of ``model`` for ``task``'s ``metric``.

    The model is evaluated in eval mode (restored afterwards) without gradients; all ``N`` rows
    form the batch across which each feature is shuffled, so the caller bounds ``N`` (e.g.
    20,000). Costs ``1 + repeats * features`` evaluations of the model on ``N`` rows plus
    ``task.score`` on each.

    Args:
        model: exposes ``outputs(x) -> tuple[Tensor, ...]``, every output of the task from raw
            contract-conforming inputs (:class:`keel.models.TaskModule`).
        x: raw inputs ``(N, *shape)``, ``N >= 2``: ``(N, F)`` tables or flat tensors (each column a
            feature; table categories as their codes, missing values NaN: kept where they are),
            ``(N, T, F)`` sequences (default: one feature per last-dim channel over all steps).
            Higher ranks (images) need ``feature_mask``.
        y: targets of the ``N`` rows as ``task.score`` takes them (class indices or values).
        task: the task object or its name (``classification``, ``regression``).
        feature_names: one name per feature (default ``feature 0``, ``feature 1``...).
        metric: a metric of ``task.score`` (``acc``, ``f1``, ``rmse``...; a split prefix such as
            ``val/`` is dropped); default: the task's monitored metric (``acc``, ``rmse``).
        repeats: independent shuffles per feature (>= 1).
        seed: seeds the shuffles (a private ``torch.Generator``; global RNG state is untouched):
            the same seed gives the same numbers.
        feature_mask: integer ids ``0..K-1`` of shape ``x.shape[1:]`` (or ``(1, *x.shape[1:])``):
            elements with the same id are shuffled together as one feature.
        batch_rows: evaluate the model on at most this many rows at a time (memory); the shuffle
            and the metric still cover all ``N`` rows. None: one batch.
        split: the split the rows come from (recorded in the report).

    Returns:
        ``{"method": "permutation", "metric", "higher_is_better", "split", "rows", "repeats",
        "seed", "baseline", "features": [{"name", "mean", "std", "rank"}, ...]}``: features by
        mean importance, descending (rank 1 first); ``std`` is the sample std over repeats
        (ddof=1; 0.0 when ``repeats == 1``); every number a Python float or int, in the metric's
        units.

    Raises:
        ValueError: bad ``repeats``, ``metric``, ``feature_names``, ``feature_mask``,
            ``batch_rows``, input rank, row counts, or a metric that is not finite on these rows;
            each message names the value, what was expected and the fix.
    """
    task = get_task(task) if isinstance(task, str) else task
    metric, higher = _resolve_metric(task, metric)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r}: expected an integer >= 1 (independent shuffles per feature). "
                         "Fix: e.g. repeats=5")
    if batch_rows is not None and (isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1):
        raise ValueError(f"batch_rows={batch_rows!r}: expected an integer >= 1 or None (one batch). "
                         "Fix: e.g. batch_rows=4096")
    x = torch.as_tensor(x)
    y_np = _targets(y)
    if x.dim() < 2:
        raise ValueError(f"x of shape {tuple(x.shape)}: expected (rows, *sample_shape) with a sample of rank >= 1. "
                         "Fix: pass the rows as a 2-D (rows, features) tensor")
    rows = int(x.shape[0])
    if rows < 2:
        raise ValueError(f"x has {rows} row(s): permutation importance shuffles a feature across rows and needs "
                         "at least 2. Fix: pass more held-out rows (a few hundred or more)")
    if len(y_np) != rows:
        raise ValueError(f"y has {len(y_np)} values but x has {rows} rows: expected one target per row. "
                         "Fix: pass the targets of the same rows")
    mask, n_features = _feature_mask(x, feature_mask)
    names = _feature_names(feature_names, n_features)

    device = _device(model)
    x = x.to(device)
    mask = mask.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            forward = _metric_forward(model, task, metric, y_np, batch_rows)
            baseline = float(forward(x))
            if not np.isfinite(baseline):
                raise ValueError(f"metric={metric!r} is {baseline} on these {rows} rows (e.g. auroc with a class "
                                 "absent, r2 of a constant target): expected a finite value to compare with. "
                                 f"Fix: pass more rows or another metric, e.g. metric={task.monitor.split('/')[-1]!r}")
            values = _repeated_attributions(forward, x, mask, n_features, repeats, seed)
    finally:
        model.train(was_training)

    # Captum reports original - permuted; lower-is-better metrics flip so bigger = more important
    importance = values if higher else -values  # (repeats, features)
    means = importance.mean(axis=0)
    stds = importance.std(axis=0, ddof=1) if repeats > 1 else np.zeros(n_features)
    order = sorted(range(n_features), key=lambda j: -means[j])  # stable: ties keep input order
    features = [{"name": names[j], "mean": float(means[j]), "std": float(stds[j]), "rank": rank}
                for rank, j in enumerate(order, start=1)]
    return {"method": METHOD, "metric": metric, "higher_is_better": bool(higher), "split": str(split),
            "rows": rows, "repeats": repeats, "seed": int(seed), "baseline": baseline, "features": features}


def _resolve_metric(task: Task, metric: str | None) -> tuple[str, bool]:
    allowed = [m for m in task.metrics if m != "loss"]  # what task.score returns
    name = task.monitor if metric is None else metric
    prefix, _, leaf = str(name).rpartition("/")
    if prefix and prefix not in SPLITS:
        leaf = str(name)
    if leaf not in allowed:
        raise ValueError(f"metric={metric!r}: unknown for {task.name}; expected one of {', '.join(allowed)}. "
                         f"Fix: e.g. metric={task.monitor.split('/')[-1]!r} (or leave it out for the task's "
                         "monitored metric)")
    return leaf, bool(task.higher_is_better[leaf])


def _targets(y: Any) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        return y.detach().cpu().numpy()
    return np.asarray(y)


def _feature_mask(x: torch.Tensor, feature_mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """The mask as Captum takes it, ``(1, *sample_shape)`` of int64 ids, and the feature count."""
    sample = tuple(x.shape[1:])
    if feature_mask is None:
        if len(sample) == 1:
            return torch.arange(sample[0]).unsqueeze(0), sample[0]
        if len(sample) == 2:  # a sequence (T, F): one feature per channel, over every step
            return torch.arange(sample[1]).expand(sample).unsqueeze(0).clone(), sample[1]
        raise ValueError(f"x of sample shape {list(sample)} (rank {len(sample)}): permutation importance groups "
                         "features for tables (rank 1) and sequences (rank 2) only; images are explained by "
                         "keel.explain.images (saliency, Integrated Gradients, Grad-CAM). "
                         "Fix: use those, or pass feature_mask (integer ids 0..K-1 of the sample's shape) "
                         "to say which elements form one feature")
    mask = torch.as_tensor(feature_mask)
    if tuple(mask.shape) == (1, *sample):
        mask = mask[0]
    if tuple(mask.shape) != sample:
        raise ValueError(f"feature_mask of shape {list(mask.shape)}: expected the sample shape {list(sample)} "
                         f"(or [1, {', '.join(map(str, sample))}]). Fix: one integer feature id per element of a sample")
    if mask.dtype.is_floating_point or mask.dtype.is_complex or mask.dtype == torch.bool:
        raise ValueError(f"feature_mask of dtype {mask.dtype}: expected integer feature ids. "
                         "Fix: e.g. feature_mask.long()")
    ids = torch.unique(mask)
    n = int(ids.numel())
    if int(ids.min()) != 0 or int(ids.max()) != n - 1:
        raise ValueError(f"feature_mask ids {ids.tolist()[:10]}{'...' if n > 10 else ''}: expected every id of "
                         f"0..K-1 with no gaps. Fix: renumber, e.g. torch.unique(mask, return_inverse=True)[1]")
    return mask.long().unsqueeze(0), n


def _feature_names(feature_names: Sequence[str] | None, n: int) -> list[str]:
    if feature_names is None:
        return [f"feature {j}" for j in range(n)]
    names = [str(v) for v in feature_names]
    if len(names) != n:
        raise ValueError(f"feature_names has {len(names)} names but the input has {n} features: expected one name "
                         "per feature (table columns in the contract's order, or one per feature_mask id). "
                         "Fix: pass contract.feature_names, or leave it out for feature 0, feature 1, ...")
    return names


def _device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _metric_forward(model: Any, task: Task, metric: str, y: np.ndarray,
                    batch_rows: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward Captum calls: the whole batch -> the task's ``metric`` as one scalar tensor."""

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        step = batch_rows or inputs.shape[0]
        chunks = [model.outputs(inputs[i:i + step]) for i in range(0, inputs.shape[0], step)]
        outputs = tuple(torch.cat([c[k] for c in chunks]).float().cpu().numpy() for k in range(len(chunks[0])))
        # float64: Captum takes the attribution dtype from this value (differences of ~1/N)
        return torch.tensor(task.score(outputs, y, only=(metric,))[metric], dtype=torch.float64)

    return forward


def _repeated_attributions(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mask: torch.Tensor,
                           n_features: int, repeats: int, seed: int) -> np.ndarray:
    """``(repeats, features)`` of Captum's original - permuted metric, one shuffle per feature per repeat."""
    from captum.attr import FeaturePermutation

    generator = torch.Generator().manual_seed(int(seed))

    def shuffle(batch: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        # Captum's default (x[perm] * mask + x * ~mask) spreads a NaN of another column (a table's
        # missing value, imputed inside the model) into rows it does not belong to (NaN * 0 = NaN);
        # torch.where keeps every unshuffled element as it is. Own generator: reproducible, and the
        # global RNG is left alone. Never the identity, as in Captum's default.
        n = batch.shape[0]
        perm = torch.randperm(n, generator=generator)
        while bool((perm == torch.arange(n)).all()):
            perm = torch.randperm(n, generator=generator)
        return torch.where(feature, batch[perm.to(batch.device)], batch)

    explainer = FeaturePermutation(forward, perm_func=shuffle)
    flat_mask = mask.reshape(-1)
    first = [int((flat_mask == k).nonzero()[0]) for k in range(n_features)]  # one element of each feature
    out = np.empty((repeats, n_features))
    for r in range(repeats):
        # scalar forward: attributions (1, *sample_shape), every element of a feature holding its value
        attr = explainer.attribute(x, feature_mask=mask, perturbations_per_eval=1)
        out[r] = attr.reshape(-1)[first].double().cpu().numpy()
    return out


def _change(report: dict[str, Any]) -> str:
    return "drop" if report["higher_is_better"] else "rise"


def _shown(report: dict[str, Any], top: int) -> list[dict[str, Any]]:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top={top!r}: expected an integer >= 1 (how many features to show). Fix: e.g. top=20")
    return sorted(report["features"], key=lambda f: f["rank"])[:top]


def importance_chart(report: dict[str, Any], top: int = 20) -> np.ndarray:
    """A horizontal bar chart of the ``top`` features of a :func:`permutation_importance` report
    (rank 1 at the top, the std over repeats as error bars) as an ``(H, W, 3)`` uint8 RGB image
    (TensorBoard ``add_image(..., dataformats="HWC")``). Drawn on its own Agg canvas: global
    pyplot state is untouched.

    Raises:
        ValueError: ``top`` < 1.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = _shown(report, top)
    metric = report["metric"]
    fig = Figure(figsize=(7.0, 1.2 + 0.32 * max(len(shown), 1)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    positions = np.arange(len(shown))
    ax.barh(positions, [f["mean"] for f in shown], xerr=[f["std"] for f in shown], color="#4c72b0",
            ecolor="#222222", capsize=3)
    ax.set_yticks(positions, [f["name"] for f in shown])
    ax.invert_yaxis()
    ax.axvline(0.0, color="#888888", linewidth=0.8)
    ax.set_xlabel(f"{_change(report)} in {metric} when permuted")
    ax.set_ylabel("feature")
    ax.set_title(f"permutation importance: {report['split']} {metric} {report['baseline']:.4g} "
                 f"({report['rows']} rows, {report['repeats']} repeats)", fontsize=10)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def within_noise(feature: dict[str, Any], repeats: int) -> bool:
    """A feature whose importance is indistinguishable from none at ``repeats`` shuffles: its mean
    change is at most two standard errors (``2 * std / sqrt(repeats)``), or it does not make the
    metric worse (``mean <= 0``). The standard error, not the spread of single shuffles: with 20
    repeats a mean drop of 0.10 +- 0.06 is clearly real, though one shuffle may show none.
    One repeat has no spread: only ``mean <= 0`` counts as noise then."""
    if feature["mean"] <= 0:
        return True
    return repeats >= 2 and feature["mean"] <= 2 * feature["std"] / math.sqrt(repeats)


def importance_lines(report: dict[str, Any], top: int = 10) -> list[str]:
    """What ``keel explain`` prints of a :func:`permutation_importance` report: a header (metric,
    baseline, split, rows, repeats), one aligned ``  1. name   mean ± std`` line for each of the
    ``top`` features, and how many features are within noise (:func:`within_noise`).

    Raises:
        ValueError: ``top`` < 1.
    """
    shown = _shown(report, top)
    metric, total = report["metric"], len(report["features"])
    lines = [f"permutation importance: {_change(report)} in {metric} when a feature is shuffled; baseline "
             f"{metric} {report['baseline']:.4f} on {report['split']} ({report['rows']} rows, "
             f"{report['repeats']} repeats, seed {report['seed']})"
             + (f"; top {len(shown)} of {total} features" if len(shown) < total else "")]
    rank_w = len(str(max((f["rank"] for f in shown), default=1)))
    name_w = max((len(f["name"]) for f in shown), default=0)
    means = [f"{f['mean']:.4f}" for f in shown]
    mean_w = max((len(m) for m in means), default=0)
    lines += [f"  {f['rank']:>{rank_w}}. {f['name']:<{name_w}}  {m:>{mean_w}} ± {f['std']:.4f}"
              for f, m in zip(shown, means)]
    repeats = int(report["repeats"])
    noise = sum(within_noise(f, repeats) for f in report["features"])
    if repeats >= 2:
        lines.append(f"{noise} of {total} features change {metric} by less than 2 standard errors over "
                     f"{repeats} repeats (indistinguishable from no effect)")
    else:
        lines.append(f"{noise} of {total} features do not lower {metric} (1 repeat: no spread to tell noise "
                     "by; use 5 or more)")
    return lines


__all__ = ["importance_chart", "importance_lines", "permutation_importance", "within_noise"]
