"""One explanation pass over a split: what the test-time callback and ``keel explain`` share.

The input's kind decides what is explained (:func:`input_kind`):

- images (a tensor contract of shape ``[C, H, W]``): saliency, Integrated Gradients and Grad-CAM
  maps of a few test images per class (:mod:`keel.explain.images`), drawn as one grid of overlays;
- tables (a table contract, or a tensor of shape ``[F]`` or a sequence ``[T, F]``): permutation
  feature importance on the split for the task's metric, with its spread over repeats
  (:mod:`keel.explain.importance`).

:func:`explain_split` returns an :class:`Explanation` (plain data and arrays) and writes its files
when given a directory: ``explanations.png`` and ``images/<n>_<true>_<method>.png`` for images,
``importance.json`` and ``importance.png`` for tables.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

IMPORTANCE_FILE = "importance.json"
METHODS = ("saliency", "integrated_gradients", "grad_cam")


@dataclass(frozen=True)
class ExplainOptions:
    """What an explanation pass computes (``conf/callbacks/explain.yaml``; ``keel explain`` flags).

    Attributes:
        images: image data: test images explained, spread evenly over the classes.
        methods: image data: attribution methods, from :data:`METHODS`.
        ig_steps: Integrated Gradients' interpolation steps.
        importance: table data: compute permutation feature importance.
        repeats: permutations per feature (their spread is reported).
        max_rows: rows of the split used at most (a seeded sample of bigger splits).
        seed: seeds the image choice and the permutations.
        split: the split explained.
    """

    images: int = 20
    methods: Sequence[str] = METHODS
    ig_steps: int = 32
    importance: bool = True
    repeats: int = 5
    max_rows: int = 20000
    seed: int = 0
    split: str = "test"

    def problems(self) -> list[str]:
        out = []
        if not self.methods:
            out.append(f"methods=[]: expected at least one of {', '.join(METHODS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            out.append(f"methods={list(self.methods)!r}: unknown {', '.join(map(repr, unknown))}; expected some of "
                       f"{', '.join(METHODS)}")
        for name, low in (("images", 0), ("ig_steps", 1), ("repeats", 1), ("max_rows", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                out.append(f"{name}={value!r}: expected an integer >= {low}")
        if self.split not in ("train", "val", "test"):
            out.append(f"split={self.split!r}: expected train, val or test")
        return out

    def check(self) -> ExplainOptions:
        problems = self.problems()
        if problems:
            raise ValueError("explain options: " + "; ".join(problems))
        return self


@dataclass
class Explanation:
    """What one pass produced. ``grid``: the image overlays (HWC uint8) or None; ``importance``:
    the permutation-importance report (the bundle manifest's ``importance``) or None; ``chart``:
    its bar chart (HWC uint8); ``files``: what was written; ``note``: why something was skipped."""

    kind: str
    grid: np.ndarray | None = None
    importance: dict[str, Any] | None = None
    chart: np.ndarray | None = None
    files: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    images: int = 0
    note: str = ""


def input_kind(contract: Any) -> str:
    """``image`` (a tensor of shape [C, H, W]), ``table`` (table contracts, [F] tensors and
    [T, F] sequences) or ``other``."""
    if getattr(contract, "kind", None) == "table" or hasattr(contract, "columns"):
        return "table"
    shape = tuple(getattr(contract, "shape", ()))
    if len(shape) == 3:
        return "image"
    if len(shape) in (1, 2):
        return "table"
    return "other"


def feature_names(contract: Any) -> list[str]:
    """The names permutation importance reports: a table's columns, ``x[i]`` of a flat tensor,
    ``channel j`` of a sequence (each channel is permuted across all its time steps)."""
    names = getattr(contract, "feature_names", None)
    if names:
        return list(names)
    shape = tuple(contract.shape)
    if len(shape) == 1:
        return [f"x[{i}]" for i in range(shape[0])]
    return [f"channel {j}" for j in range(shape[-1])]


def _sample(x: Any, y: Any, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if len(x) > limit:
        keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
        x, y = x[keep], y[keep]
    return x, y


def _png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(rgb).save(tmp, format="PNG")
    tmp.replace(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _per_example(module: Any) -> Any:
    """A regression module whose ``(N,)`` prediction is ``(N, 1)``: the attribution target is column 0."""
    import torch

    class PerExample(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.module(x)
            return out.unsqueeze(1) if out.ndim == 1 else out

    return PerExample()


def explain_split(module: Any, datamodule: Any, options: ExplainOptions = ExplainOptions(),
                  out_dir: str | Path | None = None) -> Explanation:
    """Explain ``module`` (a :class:`keel.models.TaskModule`, or any module with ``task`` and
    ``outputs``) on ``datamodule``'s ``options.split``; write the files into ``out_dir`` if given.

    The module is put in eval mode on its current device and left there; nothing is trained.
    Gradients are on inside, whatever the caller's context (Lightning's test loop runs its hooks
    under ``torch.inference_mode``, where Captum's gradient methods cannot work).
    """
    import torch

    options.check()
    with torch.inference_mode(False), torch.enable_grad():
        return _explain_split(module, datamodule, options, out_dir)


def _explain_split(module: Any, datamodule: Any, options: ExplainOptions, out_dir: str | Path | None) -> Explanation:
    import torch

    from keel.export.build import split_sample

    contract = datamodule.contract
    kind = input_kind(contract)
    out = Path(out_dir) if out_dir is not None else None
    module.eval()
    device = next(iter(module.parameters())).device
    if kind == "image":
        if options.images == 0:
            return Explanation(kind, note="images=0: no image explained")
        x, y = split_sample(datamodule, options.split, max(options.images * 50, 1000))
        x, y = _sample(x, y, max(options.images * 50, 1000), options.seed)
        from keel.data.protocol import class_names

        return _explain_images(module, x, y, class_names(datamodule), options, out, device)
    if kind == "table":
        if not options.importance:
            return Explanation(kind, note="importance off")
        x, y = split_sample(datamodule, options.split, options.max_rows)
        x, y = _sample(x, y, options.max_rows, options.seed)
        if len(x) < 2:
            return Explanation(kind, note=f"the {options.split} split has {len(x)} row(s): nothing to permute")
        from keel.explain.importance import importance_chart, permutation_importance

        xt = torch.as_tensor(x, dtype=torch.float32, device=device)
        report = permutation_importance(module, xt, y, module.task, feature_names=feature_names(contract),
                                        repeats=options.repeats, seed=options.seed, split=options.split)
        chart = importance_chart(report)
        result = Explanation(kind, importance=report, chart=chart)
        if out is not None:
            write_json(out / IMPORTANCE_FILE, report)
            _png(out / "importance.png", chart)
            result.files += [str(out / IMPORTANCE_FILE), str(out / "importance.png")]
        return result
    return Explanation(kind, note=f"inputs of shape {list(getattr(contract, 'shape', []))}: neither an image "
                                  "[C, H, W] nor a table; nothing explained")


def _explain_images(module: Any, x: np.ndarray, y: np.ndarray, names: list[str], options: ExplainOptions,
                    out: Path | None, device: Any) -> Explanation:
    import torch

    from keel.explain.images import explanation_grid, image_attributions, last_conv_layer, overlay, pick_per_class

    classifies = "probabilities" in tuple(module.task.outputs)
    if classifies:
        n_classes = max(len(names), int(y.max()) + 1 if len(y) else 1)
        pick = pick_per_class(y, max(1, math.ceil(options.images / n_classes)), seed=options.seed)
        # round-robin over the classes, so that a small --images still covers many of them
        by_class: dict[int, list[int]] = {}
        for i in pick:
            by_class.setdefault(int(y[i]), []).append(int(i))
        order = [idx for rank in range(max(map(len, by_class.values()), default=0))
                 for c in sorted(by_class) for idx in by_class[c][rank:rank + 1]]
        pick = np.asarray(order[: options.images], dtype=np.int64)
    else:
        pick = np.random.default_rng(options.seed).permutation(len(x))[: options.images]
    xs = torch.as_tensor(x[pick], dtype=torch.float32, device=device)
    with torch.no_grad():
        out_t = module(xs)
    if classifies:
        pred = out_t.argmax(dim=1)
        forward, target = module, pred
    else:
        pred = out_t
        forward, target = _per_example(module), torch.zeros(len(xs), dtype=torch.long, device=device)
    methods = list(options.methods)
    layer = last_conv_layer(module.net) if "grad_cam" in methods else None
    note = ""
    if "grad_cam" in methods and layer is None:
        note = "grad_cam: the net has no convolution; saliency and Integrated Gradients only"
        log.info("explain: %s", note)
        methods = [m for m in methods if m != "grad_cam"]
    elif layer is not None:
        log.info("explain: Grad-CAM on %s (the last convolutional block)", f"net.{layer[0]}")
    maps = image_attributions(forward, xs, target, methods=tuple(methods),
                              layer=layer[1] if layer is not None else None, ig_steps=options.ig_steps)
    images = x[pick]

    def label(v: Any) -> str:
        i = int(v)
        return names[i] if 0 <= i < len(names) else str(i)

    if classifies:
        titles = [f"true {label(t)} / pred {label(p)}" for t, p in zip(y[pick], pred.cpu().numpy())]
    else:
        titles = [f"true {float(t):.3g} / pred {float(p):.3g}" for t, p in zip(y[pick], pred.cpu().numpy())]
    grid = explanation_grid(images, maps, titles=titles)
    result = Explanation("image", grid=grid, methods=list(maps), images=len(images), note=note)
    if out is not None:
        _png(out / "explanations.png", grid)
        # the maps as numbers, for whoever wants more than pictures: one (N, H, W) array per method
        predicted = pred.detach().cpu().numpy()
        tmp = out / ".maps.tmp.npz"
        np.savez_compressed(tmp, inputs=images, true=y[pick], predicted=predicted, rows=pick, **maps)
        tmp.replace(out / "maps.npz")
        result.files += [str(out / "explanations.png"), str(out / "maps.npz")]
        for old in (out / "images").glob("*.png") if (out / "images").is_dir() else ():
            old.unlink()  # a rerun with fewer images leaves no stale ones
        for n, (img, t) in enumerate(zip(images, y[pick])):
            for method, m in maps.items():
                path = out / "images" / f"{n:03d}_{_safe(label(t) if classifies else f'{float(t):.3g}')}_{method}.png"
                _png(path, _upscale(overlay(img, m[n])))
                result.files.append(str(path))
    return result


def _upscale(rgb: np.ndarray, at_least: int = 128) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor, so that an 8x8 overlay is viewable."""
    factor = max(1, math.ceil(at_least / max(1, min(rgb.shape[:2]))))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40] or "_"


def add_importance(bundle_dir: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write ``report`` into the bundle manifest's ``importance`` (staged, then swapped in: a
    crash leaves the previous bundle); returns the new manifest.

    Raises:
        BundleError: the bundle is missing or its files do not match its manifest.
    """
    from keel.export.bundle import read_intact, staged, write_manifest

    bundle_dir = Path(bundle_dir)
    manifest = read_intact(bundle_dir, "add feature importance to")
    manifest["importance"] = dict(report)  # the report as written: every feature, sorted
    with staged(bundle_dir, copy_existing=True) as tmp:
        manifest.pop("files", None)
        manifest = write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("format", "format_version")})
    return manifest


__all__ = ["ExplainOptions", "Explanation", "IMPORTANCE_FILE", "METHODS", "add_importance", "explain_split",
           "feature_names", "input_kind", "write_json"]
