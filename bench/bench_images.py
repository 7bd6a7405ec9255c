"""Decoding throughput of ``data=image_folder``: train-loader images per second with 0 and 2
DataLoader workers, and the ratio, in one process.

Usage: ``python bench/bench_images.py [--size 32] [--per-class 180] [--epochs 2] [--augment]
[--root DIR] [--keep]``.

It builds a folder from scikit-learn's bundled digits (8x8, 0-16) upscaled to ``--size`` pixels
and coloured (a random foreground and background colour per image; 1 in 8 saved as JPEG, the
rest PNG), ``--per-class`` images per class (the real digits, cycled with a 1-pixel shift
when more are asked for), in a temporary folder (``--root``: there instead; ``--keep``: left
on disk, e.g. for ``python train.py data=image_folder data.root=...``). Then for each worker
count it sets up ``ImageFolderDataModule`` once and times ``--epochs`` full passes over the
train loader (every epoch after the first: the first pays the worker start-up, reported apart),
with the augmentations of ``--augment`` (random resized crop, rotation, brightness/contrast) or
none: [1] the loader alone (decoding), [2] the loader plus a ``model=cnn`` training step on each
batch (where workers decode while the model trains). Prints the machine, images/s at 0 and 2
workers, and ``2 workers / 0 workers`` for each.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def build_folder(root: Path, size: int = 32, per_class: int = 180, seed: int = 0, jpeg_every: int = 8,
                 corrupt: bool = False, grayscale: bool = False) -> int:
    """Write ``root/<digit>/<i>.png|jpg``: coloured, upscaled sklearn digits. ``corrupt``: one more
    file in class 3 that is a PNG cut short; ``grayscale``: one more grayscale PNG in class 1.
    Returns the number of files written."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    count = 0
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        images = digits.images[digits.target == c]
        for i in range(per_class):
            ink = images[i % len(images)] / 16.0
            if i >= len(images):  # more than the real ones: shifted copies
                ink = np.roll(ink, (i // len(images)) % 3 - 1, axis=1)
            small = Image.fromarray((ink * 255).astype(np.uint8), mode="L").resize((size, size),
                                                                                  Image.Resampling.BILINEAR)
            a = np.asarray(small, dtype=np.float32)[..., None] / 255.0
            fg, bg = rng.uniform(120, 255, 3), rng.uniform(0, 90, 3)
            rgb = np.clip(bg * (1 - a) + fg * a + rng.normal(0, 6, a.shape[:2] + (3,)), 0, 255).astype(np.uint8)
            img = Image.fromarray(rgb, mode="RGB")
            if jpeg_every and i % jpeg_every == jpeg_every - 1:
                img.save(root / str(c) / f"{i}.jpg", quality=92)
            else:
                img.save(root / str(c) / f"{i}.png")
            count += 1
    if grayscale:
        Image.fromarray((digits.images[digits.target == 1][0] * 15).astype(np.uint8), mode="L").resize(
            (size, size)).save(root / "1" / "gray.png")
        count += 1
    if corrupt:
        ok = root / "3" / "0.png"
        (root / "3" / "broken.png").write_bytes(ok.read_bytes()[: max(60, ok.stat().st_size // 2)])
        count += 1
    return count


def _train_step(size: int):
    """A CNN step on each batch (forward, backward, SGD): keel's model=cnn net, channels [32, 64]."""
    import torch

    from keel.models.nets import CNN

    net = CNN(input_shape=[3, size, size], num_classes=10, channels=[32, 64])
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def step(x, y):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def images_per_second(root: Path, size: int, workers: int, epochs: int, augment: dict,
                      train: bool = False) -> tuple[float, float, int]:
    """(images/s of the epochs after the first, seconds of the first, images per epoch); ``train``:
    with a CNN training step on every batch (decoding in workers overlaps it)."""
    from keel.data.image_folder import ImageFolderDataModule

    dm = ImageFolderDataModule(root=str(root), height=size, width=size, batch_size=64, num_workers=workers,
                               pin_memory=False, augment=augment, drift={"enabled": False})
    dm.setup()
    loader = dm.train_dataloader()
    n = dm.split_sizes()["train"]
    step = _train_step(size) if train else (lambda x, y: None)
    times = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        seen = 0
        for x, y in loader:
            step(x, y)
            seen += len(y)
        times.append(time.perf_counter() - start)
        assert seen == n, (seen, n)
    later = times[1:] or times
    return n * len(later) / sum(later), times[0], n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32, help="image height and width (pixels)")
    parser.add_argument("--per-class", type=int, default=180, help="images per digit class")
    parser.add_argument("--epochs", type=int, default=3, help="passes per worker count (the first is warm-up)")
    parser.add_argument("--augment", action="store_true", help="random resized crop, rotation, colour jitter")
    parser.add_argument("--root", help="build the folder here instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="leave the folder on disk")
    args = parser.parse_args()

    import PIL
    import torch

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__}, pillow {PIL.__version__}, load average {os.getloadavg()[0]:.1f} "
          "(other processes share these cores: compare ratios)")
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="keel-bench-images-"))
    try:
        start = time.perf_counter()
        n = build_folder(root, args.size, args.per_class)
        print(f"folder: {root}: {n} images ({args.size}x{args.size} RGB, 1 in 8 JPEG), built in "
              f"{time.perf_counter() - start:.1f} s")
        augment = ({"crop_scale": [0.7, 1.0], "rotate": 10.0, "brightness": 0.2, "contrast": 0.2}
                   if args.augment else {})
        print(f"augmentations: {augment or 'none'}; batch 64; {args.epochs} epochs each, the first is warm-up")
        for train in (False, True):
            print("[2] loader + a model=cnn training step per batch" if train else "[1] loader alone (decode only)")
            results = {}
            for workers in (0, 2):
                ips, first, per_epoch = images_per_second(root, args.size, workers, args.epochs, augment, train)
                results[workers] = ips
                print(f"  num_workers={workers}: {ips:8.0f} images/s  (first epoch {first:.2f} s incl. worker "
                      f"start-up; {per_epoch} train images an epoch)")
            print(f"  2 workers / 0 workers: {results[2] / results[0]:.2f}x")
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
