"""The diabetes progression table bundled inside scikit-learn: the embedded regression dataset."""

from __future__ import annotations

from typing import Any

import pandas as pd

from keel.data.table import TableDataModule


class DiabetesDataModule(TableDataModule):
    """``sklearn.datasets.load_diabetes``: 442 patients, 10 float features (age, sex, bmi, bp,
    s1-s6; scikit-learn ships them mean-centred and scaled, each within about [-0.14, 0.21]) and
    the target, a quantitative measure of disease progression one year later (25 to 346).
    No download.

    Arguments as :class:`TableDataModule` (``task``: ``auto`` or ``regression`` with the
    diabetes contract).
    """

    def __init__(self, target: str = "target", **kwargs: Any):
        super().__init__(path=None, target=target, **kwargs)

    @property
    def source(self) -> str:
        return "sklearn.datasets.load_diabetes"

    def read(self) -> pd.DataFrame:
        from sklearn.datasets import load_diabetes

        frame = load_diabetes(as_frame=True).frame
        return frame.reset_index(drop=True)


__all__ = ["DiabetesDataModule"]
