"""MNIST-format datasets (MNIST, Fashion-MNIST, EMNIST, KMNIST) read from the four IDX files."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from keel.data.idx import read_idx
from keel.data.in_memory import InMemoryDataModule
from keel.errors import KeelError

log = logging.getLogger(__name__)

# part -> canonical file name; any prefix is allowed (fashion-, emnist-digits-, ...), and
# Kaggle's mirror writes a dot before idx (train-images.idx3-ubyte).
PARTS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_PATTERNS = {
    part: re.compile(r"^(?P<prefix>.*?)" + re.escape(name).replace(r"\-idx", r"[-.]idx") + r"(?P<gz>\.gz)?$")
    for part, name in PARTS.items()
}
_EXPECTED = ", ".join(f"{n}[.gz]" for n in PARTS.values())


class MNISTDataError(KeelError):
    """The MNIST folder is missing, incomplete, ambiguous or holds inconsistent files."""


class MNISTDataModule(InMemoryDataModule):
    """The four MNIST-format IDX files in ``root``: images ``(N, 1, H, W)`` float32 with raw
    0-255 values (the model standardizes), labels int64; train rows first, then t10k rows.

    File names may carry a prefix and a ``.gz`` suffix (``emnist-digits-train-images-idx3-ubyte.gz``);
    all four files must share one prefix. When a file exists both plain and gzipped, the
    plain one is read. EMNIST images are stored transposed; they are returned as stored.

    Args:
        root: the folder holding the four files.
        prefix: which set to read when ``root`` holds several (e.g. ``emnist-digits-``);
            None: the folder must hold exactly one complete set.
        **kwargs: as :class:`InMemoryDataModule` (``task`` included: it must agree with the
            contract, a classification for the MNIST sets).

    Raises:
        MNISTDataError: in :meth:`load`: no such folder, missing or ambiguous files, files
            that are not MNIST images/labels, image and label counts that differ.
        IDXFormatError: in :meth:`load`, a file that is not valid IDX.
    """

    def __init__(self, root: str, prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = os.path.expanduser(str(root))
        self.prefix = prefix
        self._counts: tuple[int, int] | None = None  # (train rows, t10k rows), known after load

    @property
    def source(self) -> str:
        return self.root

    def files(self) -> dict[str, Path]:
        """The path of each part (``train_images``, ``train_labels``, ``test_images``, ``test_labels``)."""
        root = Path(self.root)
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "does not exist"
            raise MNISTDataError(
                f"data.root={self.root!r} {what} (resolved: {root.resolve()}); expected a folder holding"
                f" {_EXPECTED}. Fix: data.root=DIR, the folder with the 4 files (absolute, or relative to"
                f" {Path.cwd()})"
            )
        sets: dict[str, dict[str, list[Path]]] = {}  # prefix -> part -> candidates
        for f in sorted(root.iterdir()):
            for part, pattern in _PATTERNS.items():
                m = pattern.match(f.name)
                if m and f.is_file():
                    sets.setdefault(m["prefix"], {}).setdefault(part, []).append(f)
        found_prefixes = sorted(sets)
        if self.prefix is not None:
            sets = {k: v for k, v in sets.items() if k == self.prefix}
        complete = {k: v for k, v in sets.items() if len(v) == len(PARTS)}
        if len(complete) > 1:
            listing = "; ".join(
                f"prefix {k!r}: " + ", ".join(p.name for ps in v.values() for p in ps) for k, v in complete.items()
            )
            raise MNISTDataError(
                f"data.root={self.root!r} holds {len(complete)} complete MNIST-format sets, which is ambiguous:"
                f" {listing}. Fix: data.prefix=<one of {sorted(complete)}>, or data.root=DIR pointing at a"
                " folder with a single set of the 4 files"
            )
        if not complete:
            raise MNISTDataError(self._missing_message(root, sets, found_prefixes))
        (prefix, found), = complete.items()
        out = {}
        for part in PARTS:
            # X and X.gz side by side (gunzip -k): the plain one reads faster
            cands = sorted(found[part], key=lambda p: p.name.endswith(".gz"))
            if len(cands) > 1 and not (len(cands) == 2 and cands[1].name == cands[0].name + ".gz"):
                raise MNISTDataError(
                    f"data.root={self.root!r}: several files match {PARTS[part]}[.gz] with prefix {prefix!r}:"
                    f" {', '.join(p.name for p in cands)}. Fix: keep one of them, or point data.root at a"
                    " folder with a single set of the 4 files"
                )
            out[part] = cands[0]
        return out

    def _missing_message(self, root: Path, sets: dict[str, dict[str, list[Path]]], prefixes: list[str]) -> str:
        which = f" with prefix {self.prefix!r}" if self.prefix is not None else ""
        lines = [f"data.root={self.root!r} does not hold the 4 MNIST-format files{which}: expected {_EXPECTED}"]
        lines.append(" (any common prefix such as fashion- or emnist-digits- is accepted).")
        for prefix, parts in sets.items():
            have = ", ".join(p.name for ps in parts.values() for p in ps)
            lack = ", ".join(PARTS[p] for p in PARTS if p not in parts)
            lines.append(f" Found {have}; missing {lack}{f' (prefix {prefix!r})' if prefix else ''}.")
        if not sets:
            names = sorted(f.name for f in root.iterdir())
            shown = ", ".join(names[:10]) + (f", ... ({len(names)} entries)" if len(names) > 10 else "")
            lines.append(f" The folder holds: {shown or 'nothing'}.")
        train_images = _PATTERNS["train_images"]
        nested = sorted({str(f.parent) for pat in ("*/*", "*/*/*") for f in root.glob(pat) if train_images.match(f.name)})
        if nested:  # e.g. torchvision's <root>/MNIST/raw
            lines.append(f" Sub-folders with MNIST-format files: {', '.join(nested)}.")
        lines.append(" Fix: data.root=DIR, the folder with the 4 files")
        if self.prefix is not None:
            lines.append(f" (and data.prefix, or data.prefix=null to accept any prefix; found prefixes: {prefixes})")
        return "".join(lines)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Read the 4 files: ``x`` (N, 1, H, W) float32 in [0, 255], ``y`` (N,) int64, train then t10k."""
        paths = self.files()
        arrays = {part: read_idx(p) for part, p in paths.items()}
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
            if images.ndim != 3 or images.dtype != np.uint8:
                raise MNISTDataError(
                    f"{ipath}: expected 3-D uint8 images (N, H, W), got {images.dtype} of shape {list(images.shape)}."
                    " Fix: is this an MNIST images file (*-images-idx3-ubyte)? Re-download or re-extract it"
                )
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise MNISTDataError(
                    f"{lpath}: expected 1-D integer labels (N,), got {labels.dtype} of shape {list(labels.shape)}."
                    " Fix: is this an MNIST labels file (*-labels-idx1-ubyte)? Re-download or re-extract it"
                )
            if len(images) != len(labels):
                raise MNISTDataError(
                    f"{ipath.name} holds {len(images)} images but {lpath.name} holds {len(labels)} labels"
                    f" (in {self.root}). Fix: the two files come from different sets or one is cut short;"
                    " re-download or re-extract both"
                )
        train, test = arrays["train_images"], arrays["test_images"]
        if train.shape[1:] != test.shape[1:]:
            raise MNISTDataError(
                f"{paths['train_images'].name} holds {list(train.shape[1:])} images but {paths['test_images'].name}"
                f" holds {list(test.shape[1:])} (in {self.root}). Fix: both must come from the same dataset;"
                " re-download or re-extract them"
            )
        n_train, n_test = len(train), len(test)
        # One float32 allocation, filled in place: no uint8 concatenation in between.
        x = np.empty((n_train + n_test, 1, *train.shape[1:]), dtype=np.float32)
        x[:n_train, 0] = train
        x[n_train:, 0] = test
        y = np.concatenate([arrays["train_labels"], arrays["test_labels"]]).astype(np.int64)
        self._counts = (n_train, n_test)
        names = sorted(p.name for p in paths.values())
        log.info("mnist %s: %d train + %d t10k rows from %s", self.root, n_train, n_test, names)
        return x, y

    def test_rows(self) -> np.ndarray:
        """Row indices (into :meth:`load`'s arrays) of the official t10k test set, int64, sorted."""
        if self._counts is None:  # only the small label files are read
            paths = self.files()
            self._counts = (len(read_idx(paths["train_labels"])), len(read_idx(paths["test_labels"])))
        n_train, n_test = self._counts
        return np.arange(n_train, n_train + n_test, dtype=np.int64)


__all__ = ["MNISTDataError", "MNISTDataModule"]
