"""The 1,797 real 8x8 handwritten digits bundled inside scikit-learn (no download)."""

from __future__ import annotations

import numpy as np

from keel.data.in_memory import InMemoryDataModule


class DigitsDataModule(InMemoryDataModule):
    """``sklearn.datasets.load_digits``: images ``(N, 1, 8, 8)`` float32 in [0, 16], labels 0-9.

    Arguments as :class:`InMemoryDataModule` (``task`` included: ``auto`` or
    ``classification`` with the digits contract).
    """

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return x.reshape(-1, 1, 8, 8).astype(np.float32), y.astype(np.int64)

    @property
    def source(self) -> str:
        return "sklearn.datasets.load_digits"
