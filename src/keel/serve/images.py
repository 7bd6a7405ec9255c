"""Image files -> model input, with Pillow and numpy only (no torch): the one decoding path of
``data=image_folder`` (training, export parity, calibration) and of ``keel predict`` on image files.

The model input of an image bundle is raw pixels: float32 ``(C, H, W)`` (channels first), values
in ``[0, 255]``; the per-channel standardization fitted on the train split is inside the ONNX
graph. A file becomes that input in three steps, the same everywhere:

1. :func:`open_image`: the file must be non-empty, PNG or JPEG, and fully decodable;
2. :func:`convert_mode`: its Pillow mode must be one of the accepted ``modes``; it is converted
   to ``L`` (1 channel) or ``RGB`` (3 channels), the contract's channels;
3. :func:`resize` to the contract's ``H x W`` (bilinear, aspect ratio not kept), then
   :func:`to_chw`.

Training augmentations (``keel.data.image_folder``) replace step 3 on the train split only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keel.errors import KeelError

# what a folder may hold (by name); the content is checked too (a .png that is a GIF is refused)
SUFFIXES = (".png", ".jpg", ".jpeg")
FORMATS = ("PNG", "JPEG")
# the modes a 1- or 3-channel contract takes without being told (data.modes)
DEFAULT_MODES = ("RGB", "L")
CHANNEL_MODES = {1: "L", 3: "RGB"}
# 8-bit modes Pillow converts to L / RGB (ITU-R 601-2 luma; L -> RGB replicates the channel; an
# alpha channel is dropped). 16-bit and float modes are not: their values are not 0-255.
CONVERTIBLE = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


@dataclass(frozen=True)
class ImageProblem:
    """Why one file is not a usable image: ``rule`` (``empty``, ``format``, ``decode``, ``mode``)
    and the detail (what was found, what was expected)."""

    path: str
    rule: str
    detail: str

    def describe(self) -> str:
        return f"{self.path}: {self.rule}: {self.detail}"


class ImageError(KeelError):
    """An image file cannot be used; the message names the file, what was expected and the fix."""

    def __init__(self, problem: ImageProblem | str, fix: str = "Fix: replace or remove the file") -> None:
        if isinstance(problem, str):
            # torch re-raises a worker's exception in the main process as type(e)(text), the text
            # holding the worker's traceback: keep its last line, the message itself
            lines = [ln for ln in problem.strip().splitlines() if ln.strip()]
            text = lines[-1].split("ImageError: ", 1)[-1] if lines else problem
            self.problem, self.fix = None, ""
            if "worker" in problem and ". Fix: " in text:
                text = text.replace(". Fix: ", " (read in a DataLoader worker). Fix: ", 1)
            super().__init__(text)
            return
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem.describe()}. {fix}")

    def __reduce__(self) -> tuple:  # rebuilt from its problem when sent from a DataLoader worker
        return (type(self), (self.problem, self.fix))


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a keel dependency
        raise KeelError("reading images needs Pillow. Fix: pip install pillow") from None
    return Image


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether the name ends like an image keel reads (``.png``, ``.jpg``, ``.jpeg``, any case)."""
    return str(path).lower().endswith(SUFFIXES)


def open_image(path: str | os.PathLike, modes: Sequence[str] = DEFAULT_MODES, decode: bool = True):
    """Open ``path`` as a Pillow image and check it: non-empty, PNG or JPEG by content, a mode
    in ``modes``; with ``decode`` the pixel data is read in full (a truncated or corrupt file fails
    here, not later). Without ``decode`` only the header is read (~40 us a file).

    Returns the image (``decode=False``: open on its file, the caller closes it; with ``decode``
    the pixels are in memory and the file is closed). Raises :class:`ImageError` naming the file and the problem.
    """
    Image = _pil()
    p = str(path)
    try:
        size = os.path.getsize(p)
    except OSError as e:
        raise ImageError(ImageProblem(p, "decode", f"cannot read the file ({e.strerror or e})")) from None
    if size == 0:
        raise ImageError(ImageProblem(p, "empty", "the file has 0 bytes, expected a PNG or JPEG image"))
    try:
        img = Image.open(p)
    except Exception as e:  # noqa: BLE001  Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageError(ImageProblem(p, "decode", f"not a readable image: {e}; expected PNG or JPEG")) from None
    try:
        if img.format not in FORMATS:
            raise ImageError(ImageProblem(p, "format", f"a {img.format} image; expected PNG or JPEG"),
                             "Fix: convert it to PNG (or JPEG), or remove it")
        if img.mode not in modes:
            raise ImageError(ImageProblem(p, "mode", f"Pillow mode {img.mode}; accepted: {', '.join(modes)}"),
                             f"Fix: convert the file, or accept the mode with data.modes=[{','.join([*modes, img.mode])}]")
        if decode:
            try:
                img.load()
            except Exception as e:  # noqa: BLE001  truncated / corrupt pixel data
                raise ImageError(ImageProblem(p, "decode", f"the pixel data does not decode: {e}")) from None
    except BaseException:
        img.close()
        raise
    return img  # once loaded, Pillow has closed the file itself (single-frame PNG/JPEG)


def convert_mode(img, channels: int):
    """``img`` in the contract's mode: ``L`` for 1 channel, ``RGB`` for 3."""
    want = CHANNEL_MODES.get(channels)
    if want is None:
        raise KeelError(f"images have 1 (grayscale) or 3 (RGB) channels, not {channels}. Fix: data.channels=3 or 1")
    if img.mode == want:
        return img
    return img.convert(want)


def resize(img, height: int, width: int):
    """``img`` at ``height x width`` (bilinear; the aspect ratio is not kept)."""
    if img.size == (width, height):
        return img
    return img.resize((width, height), resample=_pil().Resampling.BILINEAR)


def to_chw(img) -> np.ndarray:
    """A Pillow image (``L`` or ``RGB``) as float32 ``(C, H, W)`` in [0, 255]."""
    arr = np.asarray(img, dtype=np.float32)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


def load_image(path: str | os.PathLike, shape: Sequence[int], modes: Sequence[str] = DEFAULT_MODES) -> np.ndarray:
    """The model input of one file: float32 ``shape`` = ``(C, H, W)``, raw values in [0, 255].

    Raises :class:`ImageError` (see :func:`open_image`)."""
    c, h, w = (int(d) for d in shape)
    return to_chw(resize(convert_mode(open_image(path, modes), c), h, w))


def image_shape_problem(shape: Sequence[int]) -> str | None:
    """Why a contract's sample shape cannot be an image's (None when it is ``[1|3, H, W]``)."""
    if len(shape) != 3 or int(shape[0]) not in CHANNEL_MODES:
        return f"sample shape {list(shape)} is not an image's [C, H, W] with C = 1 (grayscale) or 3 (RGB)"
    return None


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (by name, sorted; hidden files left out)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and is_image_name(p.name))


@dataclass
class DecodedImages:
    """Files decoded for a model: ``x`` float32 ``(N, C, H, W)`` (a file that failed is zeros),
    ``files`` (their paths, in order) and ``problems`` (row -> what is wrong with that file)."""

    x: np.ndarray
    files: list[str]
    problems: dict[int, ImageProblem]


def load_images(paths: Iterable[str | os.PathLike], shape: Sequence[int], modes: Sequence[str] = DEFAULT_MODES,
                threads: int | None = None) -> DecodedImages:
    """Decode every file of ``paths`` (a thread pool: Pillow's decoders release the GIL); a file
    that fails does not stop the others: it is listed in ``problems`` (every one, not the first)."""
    from concurrent.futures import ThreadPoolExecutor

    files = [str(p) for p in paths]
    x = np.zeros((len(files), *(int(d) for d in shape)), dtype=np.float32)
    problems: dict[int, ImageProblem] = {}

    def one(i: int) -> None:
        try:
            x[i] = load_image(files[i], shape, modes)
        except ImageError as e:
            problems[i] = e.problem

    workers = threads or min(8, os.cpu_count() or 1)
    if workers > 1 and len(files) > 16:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(files))))
    else:
        for i in range(len(files)):
            one(i)
    return DecodedImages(x, files, dict(sorted(problems.items())))


def modes_problem(modes: Sequence[str]) -> str | None:
    """Why ``modes`` (data.modes) is not a list of convertible 8-bit Pillow modes (None: it is)."""
    bad = [m for m in modes if m not in CONVERTIBLE] if isinstance(modes, Sequence) and not isinstance(modes, str) else [modes]
    if bad or not modes:
        return (f"data.modes={list(modes) if not isinstance(modes, str) else modes!r}: expected a non-empty list of "
                f"8-bit Pillow modes from {', '.join(CONVERTIBLE)} (16-bit and float images are not 0-255). "
                "Fix: e.g. data.modes=[RGB,L]")
    return None


__all__ = ["CHANNEL_MODES", "CONVERTIBLE", "DEFAULT_MODES", "FORMATS", "SUFFIXES", "DecodedImages", "ImageError", "ImageProblem",
           "convert_mode", "image_shape_problem", "is_image_name", "list_images", "load_image", "load_images",
           "modes_problem", "open_image", "resize", "to_chw"]
