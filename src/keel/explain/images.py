"""Attribution maps for image inputs (Captum's saliency, Integrated Gradients, Grad-CAM) and the
overlays and grid drawn from them.

Inputs are raw contract-conforming tensors ``(N, C, H, W)`` (digits: ``[1, 8, 8]`` in 0..16; image
folders: ``[C, H, W]`` in 0..255); the model takes them as they are and returns logits
``(N, classes)`` (:class:`keel.models.TaskModule` standardizes inside). Every map is
``(N, H, W)`` float32 in [0, 1], normalized per image: 0 is no attribution, 1 the image's largest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from keel.drawing import text_box

METHODS = ("saliency", "integrated_gradients", "grad_cam")
BASELINES = ("zeros", "mean")
# column headers of explanation_grid (short: a tile is ~64 px wide)
HEADERS = {"input": "input", "saliency": "saliency", "integrated_gradients": "integ. grad.", "grad_cam": "Grad-CAM"}

# Skipped between the last convolution and its activation when picking the Grad-CAM layer.
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm, nn.LocalResponseNorm, nn.Identity)
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus,
)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _after_last_conv(seq: nn.Sequential, prefix: str) -> tuple[str, nn.Module] | None:
    """The activation that follows the last ``Conv2d`` child of ``seq`` (norms in between are
    skipped), or None when something else (pooling, another layer, the end) comes first."""
    children = list(seq.named_children())
    convs = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    for name, module in children[convs[-1] + 1 :]:
        if isinstance(module, _ACTIVATIONS):
            return _join(prefix, name), module
        if not isinstance(module, _NORMS):
            return None
    return None


def last_conv_layer(net: nn.Module) -> tuple[str, nn.Module] | None:
    """The layer Grad-CAM reads: the net's last convolutional block.

    - keel's :class:`~keel.models.nets.CNN`: the activation right after the last ``Conv2d`` of
      ``features`` (the map is post-activation, at the last convolution's resolution, before its
      max-pool);
    - keel's :class:`~keel.models.nets.ResNet`: the last ``BasicBlock`` of ``stages``;
    - any other net: the block holding the last ``nn.Conv2d`` in ``named_modules()`` order (the
      activation after it when its parent is an ``nn.Sequential``; the parent itself when that is
      a block module other than the net and a container; else the convolution itself).

    A keel CNN or ResNet nested in ``net`` (``TaskModule.net``) is recognised as well.

    Returns:
        ``(qualified name in net.named_modules(), module)``, or None when ``net`` has no
        ``nn.Conv2d`` (an MLP).
    """
    from keel.models.nets.cnn import CNN
    from keel.models.nets.resnet import ResNet

    modules = dict(net.named_modules())
    convs = [name for name, m in modules.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    last = convs[-1]
    parts = last.split(".") if last else []
    for k in range(len(parts) - 1, -1, -1):  # the innermost keel net that holds the last conv
        prefix = ".".join(parts[:k])
        owner = modules[prefix]
        if isinstance(owner, ResNet):
            stage, block = len(owner.stages) - 1, len(owner.stages[-1]) - 1
            return _join(prefix, f"stages.{stage}.{block}"), owner.stages[stage][block]
        if isinstance(owner, CNN):
            found = _after_last_conv(owner.features, _join(prefix, "features"))
            if found is not None:
                return found
            break
    if parts:
        parent_name = ".".join(parts[:-1])
        parent = modules[parent_name]
        if isinstance(parent, nn.Sequential):
            found = _after_last_conv(parent, parent_name)
            if found is not None:
                return found
        elif parent is not net and not isinstance(parent, (nn.ModuleList, nn.ModuleDict)):
            return parent_name, parent
    return last, modules[last]


def check_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """``methods`` as a tuple (a single name is one method).

    Raises:
        ValueError: an unknown name, with the allowed ones.
    """
    names = (methods,) if isinstance(methods, str) else tuple(methods)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"methods={list(names)}: unknown {', '.join(repr(m) for m in unknown)}; allowed: "
                         f"{', '.join(METHODS)}. Fix: pass a subset of them, e.g. methods=['saliency', 'grad_cam']")
    if not names:
        raise ValueError(f"methods=[]: expected at least one of {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))


_BASELINE_ERROR = ("ig_baseline={!r}: expected 'zeros', 'mean' or a tensor of the input's shape [C, H, W] or "
                   "[N, C, H, W] (raw input units)")


def _baseline(ig_baseline: str | torch.Tensor | np.ndarray, inputs: torch.Tensor) -> torch.Tensor:
    if isinstance(ig_baseline, str):
        if ig_baseline == "zeros":
            return torch.zeros_like(inputs)
        if ig_baseline == "mean":
            mean = inputs.detach().mean(dim=(0, 2, 3), keepdim=True)
            return mean.expand_as(inputs).clone()
        raise ValueError(_BASELINE_ERROR.format(ig_baseline))
    base = torch.as_tensor(ig_baseline, dtype=inputs.dtype).detach().to(inputs.device)
    if base.dim() == inputs.dim() - 1:
        base = base.unsqueeze(0)
    try:
        return base.expand_as(inputs).clone()
    except RuntimeError:
        raise ValueError(f"ig_baseline of shape {list(base.shape)} does not match the inputs "
                         f"{list(inputs.shape)}: expected [C, H, W] or [N, C, H, W]") from None


def _normalize(maps: torch.Tensor, outlier_perc: float) -> np.ndarray:
    """Non-negative maps ``(N, H, W)`` divided per image by their ``100 - outlier_perc``
    percentile (their max when that is 0), clipped to [0, 1]; non-finite values count as 0."""
    a = maps.detach().to(torch.float64).cpu().numpy()
    a = np.where(np.isfinite(a), np.abs(a), 0.0)
    flat = a.reshape(len(a), -1)
    top = flat.max(axis=1) if flat.shape[1] else np.zeros(len(a))
    if outlier_perc > 0 and flat.shape[1]:
        q = np.percentile(flat, 100.0 - outlier_perc, axis=1)
        top = np.where(q > 0, q, top)
    top = top.reshape(-1, *([1] * (a.ndim - 1)))
    out = np.divide(a, top, out=np.zeros_like(a), where=top > 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def image_attributions(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray | Sequence[int],
    methods: str | Sequence[str] = METHODS,
    layer: nn.Module | str | None = None,
    ig_steps: int = 32,
    ig_baseline: str | torch.Tensor | np.ndarray = "zeros",
    *,
    ig_batch_size: int = 256,
    outlier_perc: float = 2.0,
) -> dict[str, np.ndarray]:
    """Attribution maps of ``model``'s ``target`` logit for raw images ``x``, built on Captum.

    - ``saliency``: ``|d logit / d x|`` (Captum ``Saliency``), the max over channels (Simonyan et
      al.'s definition: a pixel is as salient as its most sensitive channel).
    - ``integrated_gradients``: Captum ``IntegratedGradients`` from ``ig_baseline`` in ``ig_steps``
      steps, summed over channels then made absolute (by completeness the channel sum is the
      pixel's net contribution to the logit; Captum's ``visualize_image_attr`` reduces the same way).
    - ``grad_cam``: Captum ``LayerGradCam`` on ``layer`` (default :func:`last_conv_layer` of
      ``model``), ReLU'd as Grad-CAM defines, upsampled bilinearly to ``H x W`` with
      ``LayerAttribution.interpolate``.

    Each map is normalized per image to [0, 1]: saliency and IG by their ``100 - outlier_perc``
    percentile (then clipped, as Captum's visualization does: a few extreme pixels would otherwise
    leave the rest black), Grad-CAM by its max.

    The model runs in eval mode (its mode is restored after), with gradients enabled even under
    ``torch.no_grad``/``inference_mode`` (Lightning's test loop); the parameters' ``.grad`` are left
    as they were (Captum differentiates with ``torch.autograd.grad``).

    Args:
        model: raw inputs ``(N, C, H, W)`` -> logits ``(N, classes)``.
        x: raw images ``(N, C, H, W)`` (moved to the model's device, as float32).
        target: class index per image ``(N,)`` (the predicted class, usually).
        methods: names from :data:`METHODS`.
        layer: Grad-CAM's layer (a module of ``model`` or its qualified name). None: the last
            convolutional block; when ``model`` has no convolution ``grad_cam`` is left out of the
            result (no error: the caller says so).
        ig_steps: Integrated Gradients' interpolation steps (>= 1).
        ig_baseline: ``zeros`` (a black image in raw units, IG's usual reference: keel's image
            ranges start at 0), ``mean`` (the batch's per-channel mean, i.e. ~0 after the model's
            standardization), or a tensor ``[C, H, W]``/``[N, C, H, W]`` in raw units.
        ig_batch_size: rows per forward pass of Integrated Gradients at most (examples are split
            into chunks of ``ig_batch_size // 2`` so Captum needs no warning to adjust it).
        outlier_perc: percent of the largest saliency/IG values clipped at 1 (0: divide by the max).

    Returns:
        ``{method: (N, H, W) float32 in [0, 1]}`` in :data:`METHODS` order.

    Raises:
        ValueError: an unknown method or baseline, ``x`` not ``(N, C, H, W)``, ``target`` of another
            length, ``ig_steps``/``ig_batch_size`` below 1/2, a Grad-CAM layer not in ``model`` or
            whose output is not ``(N, C, h, w)``.
    """
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    wanted = check_methods(methods)
    if int(ig_steps) < 1:
        raise ValueError(f"ig_steps={ig_steps}: expected >= 1 (e.g. 32)")
    if int(ig_batch_size) < 2:
        raise ValueError(f"ig_batch_size={ig_batch_size}: expected >= 2 (e.g. 256)")
    if not 0.0 <= float(outlier_perc) < 100.0:
        raise ValueError(f"outlier_perc={outlier_perc}: expected a percentage in [0, 100)")
    if isinstance(ig_baseline, str) and ig_baseline not in BASELINES:
        raise ValueError(_BASELINE_ERROR.format(ig_baseline))
    if isinstance(layer, str):
        try:
            layer = model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"layer={layer!r}: not a module of the model; pass a name from "
                             "model.named_modules() or the module itself") from None
    if "grad_cam" in wanted and layer is None:
        found = last_conv_layer(model)
        layer = found[1] if found is not None else None
        if layer is None:
            wanted = tuple(m for m in wanted if m != "grad_cam")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    result: dict[str, np.ndarray] = {}
    try:
        # Lightning tests under inference_mode; its tensors cannot enter autograd, hence the clones.
        with torch.inference_mode(False), torch.enable_grad():
            inputs = torch.as_tensor(x).detach().clone().to(device=device, dtype=torch.float32)
            if inputs.dim() != 4:
                raise ValueError(f"x of shape {list(inputs.shape)}: expected images (N, C, H, W)")
            n, _, h, w = inputs.shape
            tgt = torch.as_tensor(target).detach().clone().to(device=device, dtype=torch.long).reshape(-1)
            if len(tgt) != n:
                raise ValueError(f"target has {len(tgt)} entries for {n} images: expected one class index each")
            inputs.requires_grad_(True)  # explicit: Captum warns when it has to set it
            if "saliency" in wanted:
                sal = Saliency(model).attribute(inputs, target=tgt, abs=True)
                result["saliency"] = _normalize(sal.amax(dim=1), outlier_perc)
            if "integrated_gradients" in wanted:
                ig = IntegratedGradients(model)
                base = _baseline(ig_baseline, inputs)
                chunk = max(1, int(ig_batch_size) // 2)
                parts = []
                for s in range(0, n, chunk):
                    part = inputs[s : s + chunk].detach().requires_grad_(True)
                    parts.append(ig.attribute(part, baselines=base[s : s + chunk], target=tgt[s : s + chunk],
                                              n_steps=int(ig_steps), internal_batch_size=int(ig_batch_size)))
                attr = torch.cat(parts) if parts else torch.zeros_like(inputs)
                result["integrated_gradients"] = _normalize(attr.sum(dim=1).abs(), outlier_perc)
            if "grad_cam" in wanted:
                cam = LayerGradCam(model, layer).attribute(inputs, target=tgt, relu_attributions=True)
                if not isinstance(cam, torch.Tensor) or cam.dim() != 4:
                    shape = list(cam.shape) if isinstance(cam, torch.Tensor) else type(cam).__name__
                    raise ValueError(f"Grad-CAM layer {type(layer).__name__} gives attributions of shape {shape}: "
                                     "expected a feature map (N, C, h, w); pass a convolutional layer as layer=")
                up = LayerAttribution.interpolate(cam, (h, w), interpolate_mode="bilinear")
                result["grad_cam"] = _normalize(up.clamp_min(0).sum(dim=1), 0.0)
    finally:
        model.train(was_training)
        for p, g in grads:
            p.grad = g
    return {m: result[m] for m in METHODS if m in result}


def _unit_rgb(image: np.ndarray) -> np.ndarray:
    """Raw ``(C, H, W)`` -> ``(H, W, 3)`` float in [0, 1], scaled by the image's own min and max:
    one channel as grey, three as RGB, others by their mean."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"image of shape {list(img.shape)}: expected (C, H, W)")
    img = np.where(np.isfinite(img), img, 0.0)
    lo, hi = float(img.min()), float(img.max())
    unit = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if unit.shape[0] != 3:
        unit = np.repeat(unit.mean(axis=0, keepdims=True), 3, axis=0)
    return unit.transpose(1, 2, 0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """A map over its image: ``(1 - alpha) * image + alpha * cmap(heat)``.

    Args:
        image: raw ``(C, H, W)`` (scaled to [0, 1] by its own min and max; 1 channel shown as
            grey, 3 as RGB, other counts by their mean).
        heat: ``(H, W)`` in [0, 1] (clipped).
        alpha: weight of the heat map, in [0, 1].
        cmap: a matplotlib colormap name (``jet``, Grad-CAM's usual one: red is high).

    Returns:
        RGB ``(H, W, 3)`` uint8.

    Raises:
        ValueError: shapes that do not match, ``alpha`` outside [0, 1].
    """
    from matplotlib import colormaps

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={alpha}: expected a weight in [0, 1]")
    rgb = _unit_rgb(image)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat of shape {list(heat.shape)} for an image of {list(rgb.shape[:2])}: expected (H, W)")
    color = colormaps[cmap](np.clip(np.nan_to_num(heat), 0.0, 1.0))[..., :3]
    return np.rint(((1.0 - alpha) * rgb + alpha * color) * 255.0).astype(np.uint8)


def _pil() -> Any:
    """``(Image, ImageDraw, font)`` of Pillow, or None without it (the grid then has no text)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return None
    from keel.drawing import font

    return Image, ImageDraw, font(11)


def explanation_grid(
    images: np.ndarray | torch.Tensor,
    maps: Mapping[str, np.ndarray],
    titles: Sequence[str] | None = None,
    scale: int | None = None,
    *,
    min_side: int = 64,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> np.ndarray:
    """One row per image: the input, then its :func:`overlay` for each map (in :data:`METHODS`
    order, other keys after them, sorted), 2 px white separators; with Pillow, a header naming the
    columns and each row's title at its left.

    Args:
        images: raw ``(N, C, H, W)``.
        maps: ``{method: (N, H, W) in [0, 1]}`` (:func:`image_attributions`).
        titles: one per image (e.g. ``"true 3 / pred 3"``), or None.
        scale: nearest-neighbour enlargement of every tile; None: the smallest that makes the
            shorter side at least ``min_side`` pixels (8x8 digits: 8).
        min_side, alpha, cmap: see above and :func:`overlay`.

    Returns:
        RGB ``(H', W', 3)`` uint8 (TensorBoard's ``add_image(..., dataformats="HWC")``, a PNG).

    Raises:
        ValueError: no images, maps or titles whose count or shape does not match the images.
    """
    imgs = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float64)
    if imgs.ndim != 4 or len(imgs) == 0:
        raise ValueError(f"images of shape {list(imgs.shape)}: expected at least one image (N, C, H, W)")
    n, _, h, w = imgs.shape
    order = [m for m in METHODS if m in maps] + sorted(m for m in maps if m not in METHODS)
    for m in order:
        if np.shape(maps[m]) != (n, h, w):
            raise ValueError(f"maps[{m!r}] of shape {list(np.shape(maps[m]))}: expected {[n, h, w]} "
                             "(one map per image)")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images: expected one per image or None")
    s = int(scale) if scale is not None else max(1, math.ceil(min_side / min(h, w)))
    if s < 1:
        raise ValueError(f"scale={scale}: expected >= 1")
    th, tw = h * s, w * s
    columns = ["input"] + order
    gap = 2
    pil = _pil()
    header_h = title_w = 0
    col_w = [tw] * len(columns)
    if pil is not None:
        Image, ImageDraw, font = pil
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        header_h = text_box(probe, "Ag", font)[3] + 6
        col_w = [max(tw, text_box(probe, HEADERS.get(c, c), font)[2] + 4) for c in columns]
        if titles:
            title_w = max(text_box(probe, str(t), font)[2] for t in titles) + 6
    left = gap + title_w
    xs = [left + sum(col_w[:j]) + j * gap for j in range(len(columns))]
    width = xs[-1] + col_w[-1] + gap
    height = gap + header_h + n * (th + gap)
    grid = np.full((height, width, 3), 255, dtype=np.uint8)

    def enlarge(tile: np.ndarray) -> np.ndarray:
        return tile.repeat(s, axis=0).repeat(s, axis=1)

    for i in range(n):
        y0 = gap + header_h + i * (th + gap)
        tiles = [np.rint(_unit_rgb(imgs[i]) * 255.0).astype(np.uint8)]
        tiles += [overlay(imgs[i], np.asarray(maps[m][i]), alpha=alpha, cmap=cmap) for m in order]
        for j, tile in enumerate(tiles):
            x0 = xs[j] + (col_w[j] - tw) // 2
            grid[y0 : y0 + th, x0 : x0 + tw] = enlarge(tile)
    if pil is None:
        return grid
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    ink = (33, 33, 33)
    for j, c in enumerate(columns):
        text = HEADERS.get(c, c)
        lft, top, tw_text, _ = text_box(draw, text, font)
        draw.text((xs[j] + (col_w[j] - tw_text) // 2 - lft, gap + 2 - top), text, font=font, fill=ink)
    for i, t in enumerate(titles or []):
        lft, top, _, t_h = text_box(draw, str(t), font)
        y0 = gap + header_h + i * (th + gap) + (th - t_h) // 2
        draw.text((gap + 2 - lft, y0 - top), str(t), font=font, fill=ink)
    return np.asarray(canvas)


def pick_per_class(y: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` rows of each class of ``y``, drawn with ``seed``: classes in
    sorted order, each class's indices ascending.

    Raises:
        ValueError: ``y`` not one-dimensional, ``per_class`` below 1.
    """
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"y of shape {list(labels.shape)}: expected one label per row (N,)")
    if int(per_class) < 1:
        raise ValueError(f"per_class={per_class}: expected >= 1")
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picks.append(np.sort(rng.choice(rows, size=min(int(per_class), len(rows)), replace=False)))
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, dtype=np.int64)


__all__ = ["BASELINES", "METHODS", "check_methods", "explanation_grid", "image_attributions", "last_conv_layer",
           "overlay", "pick_per_class"]
