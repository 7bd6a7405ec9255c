"""Tables from local CSV or Parquet files, checked against a pandera table contract."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keel.data.contract import ContractReport
from keel.data.in_memory import InMemoryDataModule
from keel.data.table_contract import TableContract, infer_contract
from keel.data.table_io import FORMATS, TableReadError, read_table, table_drift_columns
from keel.errors import KeelError

__all__ = ["BreastCancerDataModule", "FORMATS", "TableDataModule", "TableReadError", "read_table", "table_drift_columns"]

class TableDataModule(InMemoryDataModule):
    """A labelled table from a local CSV/Parquet file: a class label or a numeric target to predict.

    Numeric columns go to the model as numbers (missing values imputed and standardized in
    the model), category columns as the index of their category (one-hot in the model):
    every statistic is fitted on the train split and stored in the model.

    Args:
        path: the CSV or Parquet file.
        target: the label (or regression target) column.
        format: ``auto`` (by suffix), ``csv`` or ``parquet``.
        streaming: False: read the whole table into memory (this class). True: construct a
            :class:`keel.data.streaming.StreamingTableDataModule` instead (row groups streamed
            from Parquet, a CSV converted once), with ``stream``'s options.
        stream: the streaming options (``holdout_rows``, ``shuffle_rows``, ``sample_rows``,
            ``row_group_rows``, ``cache_dir``); not used when ``streaming`` is False.
        contract: a table contract (``kind: table``); None infers one from the file.
        task: ``auto``, ``classification`` or ``regression``. Without a contract it decides
            what is inferred (``auto``: from the target column, refusing an ambiguous one); with
            one it must agree with the contract's task.
        **kwargs: as :class:`InMemoryDataModule`.
    """

    def __new__(cls, *args: Any, streaming: bool = False, stream: Mapping[str, Any] | None = None,
                **kwargs: Any) -> Any:
        # construct-or-delegate: `data.streaming=true` keeps `_target_: keel.data.TableDataModule` and gets the
        # streaming module (a LightningDataModule of its own, so __init__ below is not called for it)
        if streaming:
            if cls is not TableDataModule:
                raise KeelError(f"data.streaming=true: {cls.__name__} is an embedded table, it is read whole. "
                                "Fix: data.streaming=false")
            from keel.data.streaming import StreamingTableDataModule

            return StreamingTableDataModule(*args, **kwargs, **dict(stream or {}))
        return super().__new__(cls)

    def __init__(self, path: str | None, target: str, format: str = "auto", contract: Any = None,
                 task: str = "auto", infer_margin: float = 0.1, streaming: bool = False,
                 stream: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(contract, task=task, **kwargs)
        self.path, self.target, self.format = path, target, format
        self.infer_margin = float(infer_margin)
        if self.contract is not None and self.contract.target != target:
            raise KeelError(
                f"data.target={target!r} but the contract's target is {self.contract.target!r}. "
                f"Fix: data.target={self.contract.target}"
            )

    @property
    def source(self) -> str:
        return str(self.path)

    def read(self) -> pd.DataFrame:
        """The whole table (subclasses with embedded data override this)."""
        return read_table(self.path, self.format)

    def load(self) -> tuple[pd.DataFrame, pd.Series]:
        df = self.read()
        if self.target not in df.columns:
            raise TableReadError(
                f"{self.source}: no label column {self.target!r}; columns are {list(map(str, df.columns))}. "
                "Fix: data.target=<the label column>"
            )
        return df, df[self.target]

    def _infer_contract(self, features: pd.DataFrame, labels: pd.Series) -> TableContract:
        # Ranges widened by infer_margin x the observed span: new rows from the same source fall a
        # little outside what one file held (a held-out wine row at 0.98 under a train minimum of 1.1)
        return infer_contract(features.dropna(subset=[self.target]), self.target, Path(str(self.path)).stem,
                              margin=self.infer_margin, task=self.requested_task)

    def _check(self, features: pd.DataFrame, labels: pd.Series, idx: np.ndarray, split: str) -> ContractReport:
        return self.contract.check(features.iloc[idx], split)

    def _encode(self, features: pd.DataFrame, labels: pd.Series, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = features.iloc[idx]
        return self.contract.encode_features(part), self.contract.encode_labels(part[self.target])

    def _raw_labels(self, labels: pd.Series, idx: np.ndarray) -> np.ndarray:
        values = labels.iloc[idx]
        if all(isinstance(c, int) for c in self.contract.classes) and pd.api.types.is_numeric_dtype(values):
            return values.to_numpy(dtype=np.float64).astype(np.int64)
        return values.astype(str).to_numpy()

    def _fit_preprocessing(self, x_train: np.ndarray) -> dict[str, Any]:
        numeric = [j for j, c in enumerate(self.contract.columns) if c.numeric]
        categorical = [j for j, c in enumerate(self.contract.columns) if not c.numeric]
        num = x_train[:, numeric].astype(np.float64)
        with np.errstate(invalid="ignore"):
            counts = np.sum(~np.isnan(num), axis=0)
            mean = np.where(counts > 0, np.nansum(num, axis=0) / np.maximum(counts, 1), 0.0)
            var = np.where(counts > 1, np.nansum((num - mean) ** 2, axis=0) / np.maximum(counts - 1, 1), 1.0)
        std = np.maximum(np.sqrt(var), 1e-6)
        return {
            "type": "tabular",
            "columns": self.contract.feature_names,
            "numeric": numeric,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "fill": mean.tolist(),
            "nullable": [bool(self.contract.columns[j].nullable) for j in numeric],
            "categorical": categorical,
            "cardinalities": [len(self.contract.columns[j].categories or ()) for j in categorical],
        }

    def _drift_columns(self, features: pd.DataFrame, idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        return table_drift_columns(features.iloc[idx], self.contract)

    @property
    def net_input_shape(self) -> list[int]:
        return [self.contract.encoded_width()]


class BreastCancerDataModule(TableDataModule):
    """The Wisconsin breast-cancer table bundled inside scikit-learn (569 rows, 30 numeric
    features, label 0 = malignant (212 rows), 1 = benign (357 rows)); no download.

    Arguments as :class:`TableDataModule` (``task`` included: a classification).
    """

    def __init__(self, target: str = "target", **kwargs: Any):
        super().__init__(path=None, target=target, **kwargs)

    @property
    def source(self) -> str:
        return "sklearn.datasets.load_breast_cancer"

    def read(self) -> pd.DataFrame:
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame
        return frame.reset_index(drop=True)
