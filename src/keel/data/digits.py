"""The 1,797 real 8x8 handwritten digits bundled inside scikit-learn (no download)."""

from __future__ import annotations

from typing import Any

import numpy as np

from keel.data.in_memory import InMemoryDataModule
from keel.data.windows import sequence_preprocessing
from keel.errors import KeelError

LAYOUTS = ("image", "sequence")


class DigitsDataModule(InMemoryDataModule):
    """``sklearn.datasets.load_digits``: float32 pixels in [0, 16], labels 0-9.

    Args:
        layout: ``image`` (default): samples ``(N, 1, 8, 8)`` for the CNN/ResNet/MLP, standardized
            per channel; ``sequence``: samples ``(N, 8, 8)`` read as 8 time steps (rows, top to
            bottom) of 8 features (the pixels of a row), standardized per feature (pixel column)
            over all rows and steps, for sequence models (``data=digits_seq``). The contract's
            ``shape`` must match the layout.
        *args, **kwargs: as :class:`InMemoryDataModule` (``task`` included: ``auto`` or
            ``classification`` with the digits contract).

    Raises:
        KeelError: an unknown ``layout``, or a contract shape that is not the layout's.
    """

    def __init__(self, *args: Any, layout: str = "image", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if layout not in LAYOUTS:
            raise KeelError(f"data.layout={layout!r}: expected one of {list(LAYOUTS)}. Fix: data.layout=image "
                            "(samples [1, 8, 8]) or data.layout=sequence (samples [8, 8]: 8 rows of 8 features)")
        self.layout = layout
        wanted = [1, 8, 8] if layout == "image" else [8, 8]
        if self.contract is not None and list(self.contract.shape) != wanted:
            raise KeelError(f"data.layout={layout} makes samples of shape {wanted}, but the contract's shape is "
                            f"{list(self.contract.shape)}. Fix: data.contract.shape={wanted} (or data=digits for "
                            "images, data=digits_seq for sequences)")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        shape = (-1, 1, 8, 8) if self.layout == "image" else (-1, 8, 8)
        return x.reshape(shape).astype(np.float32), y.astype(np.int64)

    def _fit_preprocessing(self, x_train: np.ndarray) -> dict[str, Any]:
        if self.layout == "sequence":
            return sequence_preprocessing(x_train)
        return super()._fit_preprocessing(x_train)

    @property
    def source(self) -> str:
        return "sklearn.datasets.load_digits"
