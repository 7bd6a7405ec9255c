"""Image folders: PNG/JPEG files in one folder per class (or listed in a CSV of path,label),
decoded with Pillow in DataLoader workers; ``data=image_folder data.root=DIR``.

The model's input is raw pixels, float32 ``(C, H, W)`` in [0, 255] (``keel.serve.images``: the
same decoding serves ``keel predict`` on image files); the per-channel standardization fitted on
the train split is part of the model and its ONNX graph, as for ``data=mnist``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from keel.data.batches import IndexBatchSampler, ResumableLoader
from keel.data.contract import (
    ContractReport,
    ContractViolationError,
    TensorContract,
    Violation,
    contract_from_dict,
    load_contract_spec,
)
from keel.data.split import stratified_holdout, stratified_split
from keel.errors import KeelError
from keel.serve.images import (
    DEFAULT_MODES,
    ImageError,
    ImageProblem,
    convert_mode,
    image_shape_problem,
    is_image_name,
    load_images,
    modes_problem,
    open_image,
    resize,
    to_chw,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VERIFY = ("full", "header")
ON_VIOLATION = ("raise", "drop")
BAD_FILE_FIX = ("Fix: replace or remove these files, or leave them out with data.on_violation=drop (counted, and "
                "listed in <run>/data/contract_report.json)")


class ImageFolderError(KeelError):
    """The folder is missing, empty, laid out in a way keel does not read, or its CSV is malformed."""


@dataclass(frozen=True)
class Augment:
    """Train-split augmentations, each off at its default (val, test, export and serving never
    augment). Each sample's random draws come from ``(run seed, epoch, sample index)`` alone, so
    a batch is the same with any number of workers and when a run resumes mid-epoch.

    Args:
        crop_scale: ``[low, high]`` fraction of the image's area a random resized crop keeps
            (e.g. ``[0.6, 1.0]``), or None: no crop (the whole image is resized).
        crop_ratio: ``[low, high]`` aspect ratios (width / height) of that crop.
        hflip: probability of a horizontal flip.
        rotate: largest rotation in degrees (uniform in ``[-rotate, rotate]``; corners black).
        brightness, contrast, saturation: colour jitter: a factor uniform in ``[1 - v, 1 + v]``
            (saturation: 3-channel images only).
    """

    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    rotate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> Augment:
        """From ``data.augment``; :class:`KeelError` names every bad knob."""
        spec = dict(spec or {})
        problems = [f"data.augment.{k}: unknown knob (known: {', '.join(cls.__dataclass_fields__)})"
                    for k in spec if k not in cls.__dataclass_fields__]

        def pair(key: str, lo: float, hi: float) -> tuple[float, float] | None:
            v = spec.get(key)
            if v is None:
                return None
            ok = (isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
                  and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v)
                  and lo < float(v[0]) <= float(v[1]) <= hi)
            if not ok:
                problems.append(f"data.augment.{key}={v!r}: expected [low, high] with {lo:g} < low <= high <= {hi:g}")
                return None
            return float(v[0]), float(v[1])

        def number(key: str, lo: float, hi: float) -> float:
            v = spec.get(key, 0.0)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi):
                problems.append(f"data.augment.{key}={v!r}: expected a number in [{lo:g}, {hi:g}]")
                return 0.0
            return float(v)

        out = cls(
            crop_scale=pair("crop_scale", 0.0, 1.0),
            crop_ratio=pair("crop_ratio", 0.0, math.inf) if spec.get("crop_ratio") is not None else (3 / 4, 4 / 3),
            hflip=number("hflip", 0, 1), rotate=number("rotate", 0, 180), brightness=number("brightness", 0, 1),
            contrast=number("contrast", 0, 1), saturation=number("saturation", 0, 1),
        )
        if problems:
            raise KeelError("invalid data.augment: " + "; ".join(problems) + ". Fix: see conf/data/image_folder.yaml")
        return out

    @property
    def active(self) -> bool:
        return bool(self.crop_scale or self.hflip or self.rotate or self.brightness or self.contrast or self.saturation)

    def apply(self, img: Any, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """One augmented sample: ``img`` (a Pillow image in the contract's mode) -> float32 (C, H, W)."""
        from PIL import Image

        if self.crop_scale is not None:
            img = img.resize((width, height), resample=Image.Resampling.BILINEAR, box=self._crop_box(img.size, rng))
        else:
            img = resize(img, height, width)
        if self.rotate:
            img = img.rotate(float(rng.uniform(-self.rotate, self.rotate)), resample=Image.Resampling.BILINEAR)
        if self.hflip and rng.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = to_chw(img)
        if self.brightness:
            x *= rng.uniform(1 - self.brightness, 1 + self.brightness)
        if self.contrast:
            mean = float(_luma(x).mean())
            x = (x - mean) * rng.uniform(1 - self.contrast, 1 + self.contrast) + mean
        if self.saturation and x.shape[0] == 3:
            gray = _luma(x)[None]
            x = gray + (x - gray) * rng.uniform(1 - self.saturation, 1 + self.saturation)
        return np.clip(x, 0.0, 255.0, out=x).astype(np.float32, copy=False)

    def _crop_box(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        w, h = size
        lo, hi = self.crop_scale  # type: ignore[misc]
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):  # as torchvision's RandomResizedCrop: a few tries, then the whole image
            area = w * h * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(*log_ratio))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return x0, y0, x0 + cw, y0 + ch
        return 0, 0, w, h


def _luma(x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 1:
        return x[0]
    return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random draws of one training sample: from (run seed, epoch, sample index) alone."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class EpochBatchSampler(IndexBatchSampler):
    """:class:`IndexBatchSampler` whose batches carry their epoch: ``(epoch, indices)``, so a
    worker process (which keeps its own copy of the dataset) seeds augmentations by epoch."""

    def __iter__(self):  # type: ignore[override]
        epoch = self.epoch
        for idx in super().__iter__():
            yield epoch, idx


class ResumableImageLoader(ResumableLoader):
    """The image folder's training loader: :class:`keel.data.batches.ResumableLoader`, which
    resumes inside an epoch with worker processes too (first built here, now every keel loader's)."""


class ImageBatches(Dataset):
    """Map-style dataset of whole batches: ``dataset[(epoch, indices)]`` decodes those files
    (in the DataLoader worker that asks) into ``(x float32 (B, C, H, W), y int64 (B,))``.

    ``augment``: train-split augmentations (None or inactive: plain resize), seeded per sample
    by :func:`sample_rng`.
    """

    def __init__(self, files: Sequence[str], targets: np.ndarray, shape: Sequence[int], modes: Sequence[str],
                 augment: Augment | None = None, seed: int = 0) -> None:
        self.files, self.targets = list(files), torch.from_numpy(np.asarray(targets, dtype=np.int64))
        self.shape, self.modes = tuple(int(d) for d in shape), tuple(modes)
        self.augment = augment if augment is not None and augment.active else None
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, idx = key if isinstance(key, tuple) else (0, key)
        idx = torch.as_tensor(idx).reshape(-1)
        c, h, w = self.shape
        x = np.empty((len(idx), c, h, w), dtype=np.float32)
        for j, i in enumerate(idx.tolist()):
            try:
                img = convert_mode(open_image(self.files[i], self.modes), c)
            except ImageError as e:
                raise ImageError(e.problem, "Fix: replace or remove the file; data.verify=full (the default) finds "
                                 "such files before training starts") from None
            if self.augment is not None:
                x[j] = self.augment.apply(img, sample_rng(self.seed, epoch, i), h, w)
            else:
                x[j] = to_chw(resize(img, h, w))
        return torch.from_numpy(x), self.targets[idx]


def _class_value(names: Sequence[str]) -> dict[str, int]:
    """Folder (or CSV) class name -> the contract's integer class: the integer itself when every
    name is one (``0``..``9``), else the name's position in ``names``."""
    if all(_is_int_text(n) for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(names)}


def _is_int_text(s: str) -> bool:
    return s.strip().lstrip("-").isdigit()


def _sorted_names(names: Sequence[str]) -> list[str]:
    names = sorted(set(names))
    return sorted(names, key=int) if names and all(_is_int_text(n) for n in names) else names


class ImageFolderDataModule(L.LightningDataModule):
    """PNG/JPEG images under ``root``, read with Pillow.

    Layouts (checked in this order):

    - ``labels`` names a CSV file (relative to ``root``) with a header ``path,label``: paths
      relative to ``root`` (or absolute), one row per image;
    - ``root/train/<class>/...`` (and ``root/val/``, ``root/test/``, optional): these splits
      as given; a missing val or test split is held out from train (stratified, seeded);
    - ``root/<class>/...``: one folder per class (images in sub-folders count too); splits
      held out stratified by class, seeded by ``split_seed``.

    Every file is checked in :meth:`setup` (``verify``): empty, not PNG/JPEG, a Pillow mode not
    in ``modes``, pixel data that does not decode, a label outside the classes; each bad file is
    a contract violation naming its path (all of them). ``on_violation=drop`` leaves them out
    and counts them.

    Args:
        root: the folder.
        channels, height, width: the model's input ``(C, H, W)``: 3 (RGB) or 1 (grayscale);
            every image is converted to that mode and resized (bilinear, aspect not kept).
        classes: class names in logit order (folder names or CSV labels), or None: every class
            found, sorted (numerically when all are integers). Integer names are the contract's
            class values; other names get their position (0, 1, ...).
        contract: None (built from the above and the classes found) or a full tensor contract
            (mapping or YAML path, e.g. a run's ``data/contract.yaml``) to pin.
        labels: CSV file name in ``root``, or None (class folders).
        modes: Pillow modes accepted and converted (e.g. ``[RGB, L]``).
        verify: ``full``: decode every file once in setup (threads; finds truncated files) and
            take the per-channel mean/std and drift statistics from every image; ``header``: read
            only headers (~40 us a file), decode ``stats_sample`` train images (seeded) for the
            statistics; a file broken past its header then stops training with its path.
        stats_sample: images per split decoded for statistics with ``verify=header``.
        augment: :class:`Augment` knobs (train split only).
        batch_size, val_fraction, test_fraction, split_seed, seed, on_violation, class_weights,
        drift, task: as :class:`keel.data.InMemoryDataModule`.
        num_workers: DataLoader worker processes that decode (persistent); 0: the main process.
        pin_memory: ``auto`` (pinned when training on CUDA), true or false.

    Raises:
        KeelError: a bad knob (in the constructor).
        ImageFolderError: in :meth:`setup`, the folder, its layout or its CSV.
        ContractViolationError: in :meth:`setup`, bad files with ``on_violation=raise``.
    """

    def __init__(
        self,
        root: str,
        channels: int = 3,
        height: int = 32,
        width: int = 32,
        classes: Sequence[str] | None = None,
        contract: Mapping[str, Any] | str | None = None,
        labels: str | None = None,
        modes: Sequence[str] = DEFAULT_MODES,
        verify: str = "full",
        stats_sample: int = 2000,
        augment: Mapping[str, Any] | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool | str = "auto",
        on_violation: str = "raise",
        class_weights: Any = None,
        drift: Mapping[str, Any] | None = None,
        task: str = "auto",
        name: str = "image_folder",
    ) -> None:
        super().__init__()
        problems = []
        if on_violation not in ON_VIOLATION:
            problems.append(f"data.on_violation={on_violation!r}: expected one of {', '.join(ON_VIOLATION)}")
        if verify not in VERIFY:
            problems.append(f"data.verify={verify!r}: expected full (decode every file in setup) or header")
        if task not in ("auto", "classification"):
            problems.append(f"task={task!r}: image folders are a classification task. Fix: task=auto")
        modes = [str(m) for m in (modes or ())]
        if modes_problem(modes):
            problems.append(modes_problem(modes))
        if pin_memory not in (True, False, "auto"):
            problems.append(f"data.pin_memory={pin_memory!r}: expected auto, true or false")
        self.contract: TensorContract | None = None
        self._pinned = None
        if contract is not None:
            spec = load_contract_spec(contract)
            self._pinned = contract_from_dict(spec)
            if not isinstance(self._pinned, TensorContract) or image_shape_problem(self._pinned.shape):
                problems.append(f"data.contract: an image folder needs a tensor contract of shape [C, H, W] (C 1 or "
                                f"3), got {spec.get('kind', 'tensor')} {spec.get('shape')}")
            else:
                channels, height, width = self._pinned.shape
        shape_problem = image_shape_problem([channels, height, width]) if all(
            isinstance(v, int) and v > 0 for v in (channels, height, width)) else "channels, height, width must be integers >= 1"
        if shape_problem:
            problems.append(f"data.channels/height/width={channels}/{height}/{width}: {shape_problem}. Fix: e.g. "
                            "data.channels=3 data.height=32 data.width=32")
        if not (isinstance(stats_sample, int) and stats_sample >= 1):
            problems.append(f"data.stats_sample={stats_sample!r}: expected an integer >= 1")
        try:
            self.augment = Augment.from_dict(augment)
        except KeelError as e:
            problems.append(str(e))
        if problems:
            raise KeelError("invalid image_folder data config: " + "; ".join(problems))
        self.root = os.path.expanduser(str(root))
        self.shape = (int(channels), int(height), int(width))
        self.class_names_given = None if classes is None else [str(c) for c in classes]
        self.labels, self.modes, self.verify, self.stats_sample = labels, tuple(modes), verify, stats_sample
        self.batch_size, self.val_fraction, self.test_fraction = batch_size, val_fraction, test_fraction
        self.split_seed, self.seed = split_seed, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.on_violation, self.class_weights, self.name = on_violation, class_weights, name
        drift = dict(drift or {})
        self.drift_enabled = bool(drift.pop("enabled", True))
        from keel.data.drift import DriftThresholds

        self.drift_thresholds = DriftThresholds.from_dict(drift)
        self.reports: dict[str, ContractReport] = {}
        self.dropped: dict[str, Any] = {}
        self.drift: dict[str, Any] = {}
        self.reference: dict[str, Any] = {}
        self.layout = ""
        self.class_names: list[str] = []
        self._files: list[str] = []           # every listed file (absolute), the source rows
        self._parts: dict[str, np.ndarray] = {}  # split -> rows of _files (after drops)
        self._targets = np.zeros(0, dtype=np.int64)  # row -> class index in contract order
        self._preprocessing: dict[str, Any] = {}
        self.check_seconds = 0.0
        self.stats_images = 0  # train images the mean/std were computed on

    # ------------------------------------------------------------------ what keel reads
    @property
    def source(self) -> str:
        return self.root

    @property
    def task(self) -> str:
        return "classification"

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Per-channel standardization (mean/std of the train split's pixels, see ``verify``)."""
        if not self._preprocessing:
            raise RuntimeError("call setup() before reading preprocessing")
        return self._preprocessing

    @property
    def net_input_shape(self) -> list[int]:
        return list(self.shape)

    def files(self) -> list[Path]:
        """Every image file of the splits (after drops): what the run's data fingerprint hashes."""
        rows = np.concatenate([self._parts[s] for s in SPLITS]) if self._parts else np.zeros(0, dtype=np.int64)
        return [Path(self._files[i]) for i in np.sort(rows)]

    def split_sizes(self) -> dict[str, int]:
        return {s: int(len(self._parts[s])) for s in SPLITS} if self._parts else {}

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class of ``split``, in contract class order."""
        return np.bincount(self._targets[self._parts[split]], minlength=self.contract.num_classes).tolist()

    def split_files(self, split: str) -> list[str]:
        """The files of ``split``, in the order its loaders index them."""
        return [self._files[i] for i in self._parts[split]]

    def split_arrays(self, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decoded images of ``split`` (no augmentation): float32 ``(N, C, H, W)`` in [0, 255] and
        int64 class indices. ``limit``: at most that many, always the same ones (a seeded choice).

        Raises:
            ContractViolationError: a file fails to decode (possible with ``verify=header``).
        """
        if not self._parts:
            self.setup()
        rows = self._parts[split]
        if limit is not None and limit < len(rows):
            pick = np.sort(np.random.default_rng(self.split_seed).permutation(len(rows))[:limit])
            rows = rows[pick]
        decoded = load_images([self._files[i] for i in rows], self.shape, self.modes)
        if decoded.problems:
            bad = {int(rows[j]): p for j, p in decoded.problems.items()}
            raise ContractViolationError([self._report(split, len(self._parts[split]), bad, {})], self.source,
                                         fix=BAD_FILE_FIX)
        return decoded.x, self._targets[rows].copy()

    def data_report(self) -> dict[str, Any]:
        from keel.data.protocol import contract_data_report

        return contract_data_report(self, layout=self.layout, class_names=self.class_names, verify=self.verify,
                                    check_seconds=round(self.check_seconds, 3),
                                    preprocessing_images=self.stats_images)

    # ------------------------------------------------------------------ reading the folder
    def _scan(self) -> tuple[list[str], list[str], list[str], dict[int, ImageProblem]]:
        """``(files, raw labels, split hint per file ('' = to be split), problems by row)``:
        files that are not images by name are rows too, with their problem."""
        root = Path(self.root)
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise ImageFolderError(
                f"data.root={self.root!r} {what} (resolved: {root.resolve()}); expected a folder with one sub-folder "
                "of PNG/JPEG images per class, or train/ val/ test/ folders of those, or a CSV of path,label beside "
                "the images (data.labels). Fix: data.root=DIR")
        if self.labels:
            self.layout = f"csv {self.labels}"
            return self._scan_csv(root / self.labels)
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if "train" in subdirs and set(subdirs) <= set(SPLITS):
            self.layout = "split folders " + "/, ".join(s for s in SPLITS if s in subdirs) + "/"
            out: tuple[list, list, list, dict] = ([], [], [], {})
            for split in SPLITS:
                if split in subdirs:
                    self._scan_classes(root / split, split, out)
            return out
        self.layout = "class folders"
        out = ([], [], [], {})
        self._scan_classes(root, "", out)
        return out

    def _scan_classes(self, folder: Path, split: str, out: tuple[list, list, list, dict]) -> None:
        files, labels, hints, problems = out
        classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        where = f"{folder}" + (f" (split {split})" if split else "")
        if not classes:
            loose = sum(1 for p in folder.iterdir() if p.is_file() and is_image_name(p.name))
            raise ImageFolderError(
                f"{where} holds no class folders ({loose} images directly in it); expected one sub-folder of PNG/JPEG "
                f"images per class ({folder}/<class>/<image>.png). Fix: move the images into class folders, or list "
                "them in a CSV of path,label and set data.labels=<file.csv>")
        empty = []
        for cls_dir in classes:
            found = sorted(p for p in cls_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
            images = [p for p in found if is_image_name(p.name)]
            if not images:
                others = ", ".join(p.name for p in found[:5]) + (f", ... ({len(found)} files)" if len(found) > 5 else "")
                empty.append(f"{cls_dir} ({'holds ' + others if found else 'empty'})")
                continue
            for p in found:
                if not is_image_name(p.name):
                    problems[len(files)] = ImageProblem(
                        str(p), "format", f"not an image by name ({p.suffix or 'no suffix'}); expected .png, .jpg or .jpeg")
                files.append(str(p.resolve()))
                labels.append(cls_dir.name)
                hints.append(split)
        if empty:
            raise ImageFolderError(
                f"{len(empty)} class folder(s) under {where} hold no PNG/JPEG images: {'; '.join(empty)}. A class "
                "without images cannot be learned or tested. Fix: add images to each, or remove the folder(s)")

    def _scan_csv(self, path: Path) -> tuple[list[str], list[str], list[str], dict[int, ImageProblem]]:
        if not path.is_file():
            raise ImageFolderError(f"data.labels={self.labels!r}: no such file {path}; expected a CSV with a header "
                                   "path,label in data.root. Fix: data.labels=<file.csv> (relative to data.root), or "
                                   "data.labels=null for class folders")
        files, labels, hints, problems = [], [], [], {}
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["path", "label"]:
                raise ImageFolderError(f"{path}: expected a header row 'path,label', got {header!r}. Fix: make the "
                                       "first line path,label (image path relative to data.root, class name)")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise ImageFolderError(f"{path} line {line}: expected path,label, got {row!r}. Fix: one image "
                                           "path and its class per line")
                p = Path(row[0].strip())
                p = p if p.is_absolute() else Path(self.root) / p
                if not p.is_file():
                    problems[len(files)] = ImageProblem(str(p), "missing", f"listed on line {line} of {path.name} but "
                                                                          "not found")
                elif not is_image_name(p.name):
                    problems[len(files)] = ImageProblem(str(p), "format", f"not an image by name ({p.suffix}); "
                                                                         "expected .png, .jpg or .jpeg")
                files.append(str(p.resolve()))
                labels.append(row[1].strip())
                hints.append("")
        if not files:
            raise ImageFolderError(f"{path}: lists no images. Fix: one line path,label per image")
        return files, labels, hints, problems

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """List, split and check every file; fit the preprocessing; drift and leakage (once)."""
        if self._parts:
            return
        import time

        files, raw, hints, problems = self._scan()
        found = _sorted_names(raw)
        names = self.class_names_given or found
        values = _class_value(names)
        if self._pinned is not None:
            contract = self._pinned
        else:
            contract = TensorContract.from_dict({
                "kind": "tensor", "name": self.name, "shape": list(self.shape), "dtype": "float32",
                "range": [0.0, 255.0], "finite": True, "classes": sorted(set(values.values())),
            })
        if contract.num_classes < 2:
            raise ImageFolderError(f"{self.root}: {contract.num_classes} class found ({', '.join(names)}); a classifier "
                                   "needs at least 2. Fix: one folder (or CSV label) per class, 2 or more")
        self.contract, self.class_names = contract, names
        index = {c: i for i, c in enumerate(contract.classes)}
        unknown: dict[int, str] = {}
        targets = np.zeros(len(files), dtype=np.int64)
        for i, name in enumerate(raw):
            v = values.get(name)
            if v is None and _is_int_text(name) and all(_is_int_text(n) for n in names):
                v = int(name)
            if v is None or v not in index:
                unknown[i] = name
            else:
                targets[i] = index[v]
        self._files, self._targets = files, targets
        parts = self._split(raw, hints)
        started = time.perf_counter()
        stats = self._check_files(parts, problems)
        self.check_seconds = time.perf_counter() - started
        reports = {s: self._report(s, len(parts[s]), {i: problems[i] for i in parts[s] if i in problems},
                                   {i: unknown[i] for i in parts[s] if i in unknown}) for s in SPLITS}
        self.reports = reports
        if any(not r.ok for r in reports.values()):
            if self.on_violation == "raise":
                raise ContractViolationError(list(reports.values()), self.source, fix=BAD_FILE_FIX)
            parts = self._drop(parts, reports)
        for s in SPLITS:
            if not len(parts[s]):
                raise ImageFolderError(f"split {s!r} of {self.root} has no images ({self.layout}). Fix: more images "
                                       f"per class, or a larger data.{'val' if s == 'val' else 'test'}_fraction")
        self._parts = parts
        self._preprocessing = self._fit_preprocessing(stats, parts["train"])
        if self.drift_enabled:
            self._compute_drift(stats, parts, raw)
        log.info("data %s (%s, %d classes): %d images -> train %d, val %d, test %d; every file checked (%s, %.1f s)%s",
                 self.root, self.layout, contract.num_classes, len(files), *(len(parts[s]) for s in SPLITS),
                 "decoded" if self.verify == "full" else "headers", self.check_seconds,
                 f"; dropped {self.dropped['total']} file{'' if self.dropped['total'] == 1 else 's'}"
                 if self.dropped else "")

    def _split(self, raw: list[str], hints: list[str]) -> dict[str, np.ndarray]:
        strata = np.unique(np.asarray(raw, dtype=str), return_inverse=True)[1] if raw else np.zeros(0, dtype=np.int64)
        hint = np.asarray(hints, dtype=str)
        if not (hint != "").any():
            return stratified_split(strata, self.val_fraction, self.test_fraction, self.split_seed)
        parts = {s: np.flatnonzero(hint == s) for s in SPLITS}
        train = parts["train"]
        for s, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if not len(parts[s]):  # not given as a folder: held out from train
                keep, hold = stratified_holdout(strata[train], fraction, self.split_seed)
                parts[s], train = train[hold], train[keep]
        parts["train"] = train
        return parts

    def _check_files(self, parts: dict[str, np.ndarray], problems: dict[int, ImageProblem]) -> dict[str, Any]:
        """Check every file (header or full decode, see ``verify``); the decoded images' per-sample
        summaries, content hashes and the train split's per-channel sums. Adds to ``problems``."""
        from concurrent.futures import ThreadPoolExecutor

        c = self.shape[0]
        n = len(self._files)
        decode = np.zeros(n, dtype=bool)
        for s, rows in parts.items():
            rows = np.asarray([i for i in rows if i not in problems], dtype=np.int64)
            if self.verify == "full" or len(rows) <= self.stats_sample:
                decode[rows] = True
            else:  # a seeded sample of each split is decoded for the statistics
                decode[np.random.default_rng(self.split_seed).choice(rows, self.stats_sample, replace=False)] = True
        summaries = np.full((n, c, 4), np.nan)
        hashes = np.zeros((n, 4), dtype=np.uint64)
        sums = np.zeros((n, c, 2))  # per image: sum and sum of squares per channel

        def one(i: int) -> None:
            if i in problems:
                return
            try:
                if not decode[i]:
                    open_image(self._files[i], self.modes, decode=False).close()
                    return
                img = convert_mode(open_image(self._files[i], self.modes), c)
                x = to_chw(resize(img, self.shape[1], self.shape[2])).astype(np.float64).reshape(c, -1)
            except ImageError as e:
                problems[i] = e.problem
                return
            summaries[i] = np.stack([x.mean(1), x.std(1), x.min(1), x.max(1)], axis=1)
            sums[i, :, 0], sums[i, :, 1] = x.sum(1), (x * x).sum(1)
            hashes[i] = np.frombuffer(hashlib.sha256(x.astype(np.float32).tobytes()).digest(), dtype=np.uint64)

        threads = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(n)))
        decode &= np.array([i not in problems for i in range(n)], dtype=bool)
        return {"decoded": decode, "summaries": summaries, "hashes": hashes, "sums": sums}

    def _report(self, split: str, total: int, bad: Mapping[int, ImageProblem], unknown: Mapping[int, str]) -> ContractReport:
        root = Path(self.root).resolve()

        def rel(p: str) -> str:
            try:
                return str(Path(p).resolve().relative_to(root))
            except ValueError:
                return p

        out = [Violation(p.rule, rel(p.path), 1, total, detail=p.detail, rows=np.array([i], dtype=np.int64))
               for i, p in sorted(bad.items())]
        if unknown:
            rows = np.array(sorted(unknown), dtype=np.int64)
            names = sorted(set(unknown.values()))
            out.append(Violation("classes", "label", len(rows), total,
                                 tuple((int(i), rel(self._files[i])) for i in rows[:5]),
                                 f"labels {names} are not among the classes {self.class_names}", rows))
        return ContractReport(self.contract.name if self.contract else self.name, split, total, tuple(out))

    def _drop(self, parts: dict[str, np.ndarray], reports: dict[str, ContractReport]) -> dict[str, np.ndarray]:
        out, per_split, total = {}, {}, 0
        for s, rows in parts.items():
            failing = reports[s].failing_rows()
            out[s] = np.setdiff1d(rows, failing)
            if failing.size:
                per_split[s] = {"dropped": int(failing.size), "kept": int(out[s].size),
                                "files": [self._files[i] for i in failing.tolist()],
                                "by_rule": {r: sum(1 for v in reports[s].violations if v.rule == r)
                                            for r in sorted({v.rule for v in reports[s].violations})}}
                total += int(failing.size)
        self.dropped = {"total": total, "splits": per_split}
        rules = sorted({v.rule for r in reports.values() for v in r.violations})
        log.warning("data.on_violation=drop: left out %d file%s that break%s the contract (%s); listed in "
                    "data/contract_report.json", total, "" if total == 1 else "s", "s" if total == 1 else "",
                    ", ".join(rules))
        return out

    def _fit_preprocessing(self, stats: Mapping[str, Any], train: np.ndarray) -> dict[str, Any]:
        rows = train[stats["decoded"][train]]
        pixels = len(rows) * self.shape[1] * self.shape[2]
        s = stats["sums"][rows].sum(axis=0)  # (C, 2)
        mean = s[:, 0] / max(pixels, 1)
        var = (s[:, 1] - pixels * mean**2) / max(pixels - 1, 1)
        std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-6)
        self.stats_images = int(len(rows))
        return {"type": "standardize", "mean": mean.tolist(), "std": std.tolist(), "sample_ndim": 3}

    def _compute_drift(self, stats: Mapping[str, Any], parts: dict[str, np.ndarray], raw: list[str]) -> None:
        """Drift of the per-sample summaries (as ``keel.data.drift.tensor_drift_columns`` names them),
        label shift and exact duplicate images (leakage, by content hash) between train and val/test."""
        from keel.data.drift import drift_report

        def cols(rows: np.ndarray) -> dict[str, np.ndarray]:
            rows = rows[stats["decoded"][rows]]
            out = {}
            for ch in range(self.shape[0]):
                for k, stat in enumerate(("mean", "std", "min", "max")):
                    out[f"c{ch}.{stat}"] = stats["summaries"][rows, ch, k]
            return out

        def decoded(rows: np.ndarray) -> np.ndarray:
            return rows[stats["decoded"][rows]]

        labels = np.asarray([self.contract.classes[t] for t in self._targets])
        ref = cols(parts["train"])
        report = drift_report(
            ref, {k: "numeric" for k in ref}, {s: cols(parts[s]) for s in ("val", "test")},
            reference_labels=labels[parts["train"]], split_labels={s: labels[parts[s]] for s in ("val", "test")},
            classes=list(self.contract.classes), thresholds=self.drift_thresholds,
            reference_rows=stats["hashes"][decoded(parts["train"])],
            split_rows={s: stats["hashes"][decoded(parts[s])] for s in ("val", "test")},
        )
        bins = self.drift_thresholds.bins
        for split, r in report["splits"].items():
            n_ref, n_cur = len(decoded(parts["train"])), len(decoded(parts[split]))
            r["summary"]["psi_noise_floor"] = (bins - 1) * (1 / max(n_ref, 1) + 1 / max(n_cur, 1))
            leak = (r.get("leakage") or {}).get("count", 0)
            if r["summary"]["n_alert"] or leak:
                log.warning("drift train->%s: %d summary features alert, %d warn; %d images also in train (identical "
                            "pixels after resizing: leakage)", split, r["summary"]["n_alert"], r["summary"]["n_warn"], leak)
        self.drift, self.reference = report, report["reference"]

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _pin(self) -> bool:
        if self.pin_memory != "auto":
            return bool(self.pin_memory)
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self._parts:
            self.setup()
        if self.trainer is not None and self.trainer.overfit_batches:
            # Lightning swaps the loader's sampler for a per-row SequentialSampler, which whole-batch
            # index sampling cannot take (keel.fit adapts this for InMemoryDataModule only)
            n = self.trainer.overfit_batches
            raise KeelError(f"trainer.overfit_batches={n} (debug=overfit) does not work with data=image_folder yet. "
                            "Fix: a few batches an epoch with trainer.limit_train_batches=4 trainer.limit_val_batches=4 "
                            "(reshuffled each epoch), or debug=limit")
        rank, world = self._rank_world()
        rows = self._parts[split]
        sampler = EpochBatchSampler(len(rows), self.batch_size, shuffle=train, seed=self.seed, rank=rank,
                                    world_size=world, pad=train)
        dataset = ImageBatches([self._files[i] for i in rows], self._targets[rows], self.shape, self.modes,
                               self.augment if train else None, self.seed)
        loader_cls = ResumableImageLoader if train else DataLoader
        # Each loader draws its worker base seed from a generator of its own, not from torch's global
        # one: a persistent val loader is made once, during the sanity check (whose draws are
        # isolated) in a fresh run but at the first validation in a resumed one, and that one draw
        # would shift every later dropout mask (measured: a run resumed inside epoch 1 of 3 with 2
        # workers differed from the uninterrupted one in epoch 2). Augmentations never use it.
        generator = torch.Generator().manual_seed(int(self.seed) + SPLITS.index(split))
        return loader_cls(dataset, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          pin_memory=self._pin(), persistent_workers=self.num_workers > 0, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


__all__ = ["Augment", "EpochBatchSampler", "ImageBatches", "ImageFolderDataModule", "ImageFolderError",
           "ResumableImageLoader", "sample_rng"]
