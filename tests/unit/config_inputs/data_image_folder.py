"""Inputs for conf/data/image_folder.yaml in tests/unit/test_config.py: a tiny folder of class
sub-folders with RGB PNGs, one JPEG and one grayscale PNG (converted, as data.modes allows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def overrides(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(rng.normal(60 + 60 * c, 30, (12, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    Image.fromarray(np.full((12, 10, 3), 100, np.uint8)).save(root / "class0" / "photo.jpg", quality=90)
    Image.fromarray(np.full((9, 9), 200, np.uint8), mode="L").save(root / "class1" / "gray.png")
    return [f"data.root={root}", "data.batch_size=8", "data.num_workers=0"]
