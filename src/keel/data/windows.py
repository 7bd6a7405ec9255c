"""Fixed-length windows of a time series read from a CSV/Parquet file, split by time.

A sample is a sequence ``[window, features]`` (time steps, the feature columns at each step),
float32, under a :class:`keel.data.contract.TensorContract` of that shape; a batch is
``(N, window, features)``. The target of a window is either a column at its last step
(``target_at: end``: classification or regression) or the next value of a column after it
(``target_at: next``: regression, one step ahead).

Splitting by time, not at random: overlapping windows that share rows would put the same
values in train and test (leakage). The file's rows are cut into three consecutive blocks
(train first, then val, then test; ``val_fraction``/``test_fraction`` of the rows) and a window
belongs to a split only when every row it reads, its target row included, lies in that block;
windows that straddle a boundary are left out. This leaves a gap of about one window between
the splits' targets and no raw row in two splits. ``split_seed`` plays no part.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from keel.data.contract import CLASSIFICATION, REGRESSION, TensorContract
from keel.data.in_memory import SPLITS, InMemoryDataModule
from keel.errors import KeelError

log = logging.getLogger(__name__)

TARGET_AT = ("end", "next")


class WindowError(KeelError):
    """A windows configuration or series that cannot make windows (the message has the fix)."""


def sequence_preprocessing(x_train: np.ndarray) -> dict[str, Any]:
    """Per-feature standardization of sequences ``(N, T, F)``: one mean/std per feature (the last
    axis), over every sample and time step of the train split.

    A feature keeps one scale at every step: per-step statistics (what the image rule, per axis 0,
    would give for ``[T, F]``) would standardize each time step differently and tie the model to
    the window's length. ``Standardize`` lines a statistic of length ``F`` up with the last axis
    when ``sample_ndim`` is 1, which is therefore what this spec says.
    """
    xf = x_train.astype(np.float64).reshape(-1, x_train.shape[-1])
    std = xf.std(axis=0, ddof=1) if len(xf) > 1 else np.ones(x_train.shape[-1])
    return {
        "type": "standardize",
        "mean": xf.mean(axis=0).tolist(),
        "std": np.maximum(std, 1e-6).tolist(),
        "sample_ndim": 1,  # statistics on the last axis (features), shared by every time step
    }


def _positive_int(name: str, value: Any, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise WindowError(f"data.{name}={value!r}: expected a whole number >= 1 ({example}). Fix: data.{name}="
                          f"{'32' if name == 'window' else '1'}")
    return int(value)


class WindowsDataModule(InMemoryDataModule):
    """Windows of ``window`` consecutive rows, every ``stride`` rows, of a time-series table.

    Args:
        path: the CSV/Parquet file, one row per time step, oldest first (or see ``time_column``).
        target: the column to predict.
        window: time steps per sample (>= 1).
        stride: rows between the starts of consecutive windows (>= 1; 1: every row starts one).
        target_at: ``next``: the target's value in the row after the window (regression, one
            step ahead); ``end``: the target's value in the window's last row (a label or a
            number of that step; then the target column may not be a feature).
        features: the feature columns, in order; null: every column except ``time_column`` (and
            the target with ``target_at: end``). Every feature must be numeric.
        time_column: null (rows are in time order as in the file) or a column to sort by
            (numbers or dates pandas parses), left out of the features.
        format: ``auto`` (by suffix), ``csv`` or ``parquet``.
        contract: a tensor contract of shape ``[window, features]``; null infers one (ranges
            widened by ``infer_margin`` of each feature's span; classes from the target).
        task: ``auto`` (``next``: regression; ``end``: from the target column, as for tables),
            ``classification`` or ``regression``.
        infer_margin: see ``contract``.
        **kwargs: as :class:`InMemoryDataModule` (``val_fraction``/``test_fraction`` are the
            fractions of the file's rows in the val and test blocks).

    Raises:
        WindowError: ``window``/``stride`` below 1, an unknown ``target_at``; in :meth:`setup`,
            a missing or non-numeric column, a series shorter than one window, a split block
            too short for one window, a contract of another shape.
    """

    def __init__(self, path: str | None, target: str, window: int = 32, stride: int = 1, target_at: str = "next",
                 features: list[str] | None = None, time_column: str | None = None, format: str = "auto",
                 contract: Any = None, task: str = "auto", infer_margin: float = 0.1, **kwargs: Any) -> None:
        super().__init__(contract, task=task, **kwargs)
        self.window = _positive_int("window", window, "time steps per sample")
        self.stride = _positive_int("stride", stride, "rows between window starts")
        if target_at not in TARGET_AT:
            raise WindowError(f"data.target_at={target_at!r}: expected one of {list(TARGET_AT)} (next: the target's "
                              "value after the window; end: its value at the window's last step). Fix: "
                              "data.target_at=next")
        if not (isinstance(target, str) and target):
            raise WindowError(f"data.target={target!r}: expected the name of the column to predict. Fix: "
                              "data.target=<column>")
        if target_at == "next" and task == CLASSIFICATION:
            raise WindowError("data.target_at=next predicts the next value of a number (regression), but "
                              "task=classification. Fix: task=regression (or auto), or data.target_at=end with a "
                              "label column")
        self.path, self.target, self.target_at, self.format = path, target, target_at, format
        self.features = None if features is None else [str(f) for f in features]
        self.time_column = time_column
        self.infer_margin = float(infer_margin)
        self.feature_names: list[str] = []
        self.starts = np.zeros(0, dtype=np.int64)
        self.rows = 0
        self.baselines: dict[str, Any] = {}

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def span(self) -> int:
        """Rows one window reads, its target row included."""
        return self.window + (1 if self.target_at == "next" else 0)

    # ------------------------------------------------------------------ reading
    def read(self) -> Any:
        """The table, in time order (subclasses with generated series override this)."""
        from keel.data.table_io import read_table

        return read_table(self.path, self.format)

    def _columns(self, df: Any) -> list[str]:
        import pandas as pd

        columns = [str(c) for c in df.columns]
        needed = [self.target] + ([self.time_column] if self.time_column else []) + list(self.features or [])
        missing = [c for c in dict.fromkeys(needed) if c not in columns]
        if missing:
            which = ", ".join(f"{c!r}" for c in missing)
            raise WindowError(f"{self.source}: no column {which}; columns are {columns}. Fix: data.target=<the column "
                              "to predict>, data.features=[...] and data.time_column name columns of the file")
        if self.features is not None:
            feats = list(self.features)
        else:
            skip = {self.time_column} | ({self.target} if self.target_at == "end" else set())
            feats = [c for c in columns if c not in skip]
        if not feats:
            raise WindowError(f"{self.source}: no feature columns left (columns {columns}, target {self.target!r}). "
                              "Fix: data.features=[<numeric columns>], or data.target_at=next to use the target's "
                              "own past values")
        if self.target_at == "end" and self.target in feats:
            raise WindowError(f"data.features includes the target {self.target!r} with data.target_at=end: the "
                              "window's last step would hold the answer. Fix: leave it out of data.features, or "
                              "data.target_at=next (predict the value after the window)")
        if self.target_at == "next" and not pd.api.types.is_numeric_dtype(df[self.target]):
            raise WindowError(f"{self.source}: data.target={self.target!r} ({df[self.target].dtype}) is not numeric, "
                              "but data.target_at=next predicts its next value (a number). Fix: data.target=<a numeric "
                              "column>, or data.target_at=end for a label at the window's last step")
        bad = []
        for c in feats:
            s = df[c]
            if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
                first = s[pd.to_numeric(s, errors="coerce").isna() & s.notna()]
                example = f"; e.g. row {first.index[0]}: {str(first.iloc[0])[:40]!r}" if len(first) else ""
                bad.append(f"{c!r} ({s.dtype}{example})")
        if bad:
            raise WindowError(f"{self.source}: feature column{'s' if len(bad) > 1 else ''} {', '.join(bad)} "
                              "not numeric: a window holds numbers only. Fix: clean the column, or list the numeric "
                              "ones in data.features=[...] (a timestamp goes in data.time_column)")
        return feats

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Windows ``(M, window, F)`` float32 and their targets ``(M,)`` (window ``i`` reads rows
        ``starts[i] : starts[i] + window`` of the file, in time order)."""
        import pandas as pd

        df = self.read()
        feats = self._columns(df)
        if self.time_column:
            key = df[self.time_column]
            if not pd.api.types.is_numeric_dtype(key):
                key = pd.to_datetime(key, errors="coerce")
                if key.isna().any():
                    row = int(np.flatnonzero(key.isna().to_numpy())[0])
                    raise WindowError(f"{self.source}: data.time_column={self.time_column!r} holds a value that is "
                                      f"neither a number nor a date (row {row}: {df[self.time_column].iloc[row]!r}). "
                                      "Fix: clean the column, or data.time_column=null (file order)")
            df = df.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)
        n = len(df)
        if n < self.span:
            extra = " + 1 row for the next value (data.target_at=next)" if self.target_at == "next" else ""
            raise WindowError(f"{self.source}: {n} rows, shorter than one window (data.window={self.window}{extra}: "
                              f"{self.span} rows). Fix: data.window<={max(n - (self.span - self.window), 1)}, or a "
                              "longer series")
        values = df[feats].to_numpy(dtype=np.float64).astype(np.float32)
        self.feature_names, self.rows = feats, n
        self.starts = np.arange(0, n - self.span + 1, self.stride, dtype=np.int64)
        view = np.lib.stride_tricks.sliding_window_view(values, self.window, axis=0)  # (n - w + 1, F, w)
        x = np.ascontiguousarray(view[self.starts].transpose(0, 2, 1))
        target = df[self.target]
        step = self.starts + (self.window if self.target_at == "next" else self.window - 1)
        y = target.to_numpy()[step]
        if self.contract is not None and list(self.contract.shape) != [self.window, len(feats)]:
            raise WindowError(f"data.contract shape {list(self.contract.shape)} but the windows are "
                              f"[{self.window}, {len(feats)}] (data.window, features {feats}). Fix: "
                              f"data.contract.shape=[{self.window}, {len(feats)}], or data.contract=null (inferred)")
        return x, y

    # ------------------------------------------------------------------ contract
    def _target_task(self, labels: np.ndarray) -> str:
        if self.target_at == "next":
            return REGRESSION
        if self.requested_task != "auto":
            return self.requested_task
        from keel.tasks.infer import infer_task

        return infer_task(labels, self.target).task

    def _infer_contract(self, features: np.ndarray, labels: np.ndarray) -> TensorContract:
        task = self._target_task(labels)
        finite = features[np.isfinite(features)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = self.infer_margin * (hi - lo)
            rng: list[float] | None = [lo - pad, hi + pad]
        else:
            rng = None
        spec: dict[str, Any] = {"kind": "tensor", "name": f"{Path(str(self.path)).stem}_windows",
                                "shape": [self.window, len(self.feature_names)], "dtype": "float32", "range": rng,
                                "finite": True}
        if task == REGRESSION:
            # no target range: a forecast may leave the history's range (the inputs' range still guards)
            spec.update(task=REGRESSION, target_range=None)
        else:
            import pandas as pd

            values = pd.Series(labels).dropna()
            try:
                numbers = values.to_numpy(dtype=np.float64)
            except (TypeError, ValueError):
                numbers = None
            if numbers is None or not np.all(numbers == np.round(numbers)):
                example = values.iloc[0] if len(values) else None
                raise WindowError(f"data.target={self.target!r}: classes of a window must be whole numbers (a tensor "
                                  f"contract's labels), got e.g. {example!r}. Fix: map the labels to 0..k-1 in the "
                                  "file, or task=regression for a numeric target")
            spec["classes"] = sorted(int(v) for v in np.unique(numbers))
        return TensorContract.from_dict(spec)

    # ------------------------------------------------------------------ splits
    def _split(self, labels: Any) -> dict[str, np.ndarray]:
        n = self.rows
        n_test = int(round(self.test_fraction * n))
        n_val = int(round(self.val_fraction * n))
        bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test), "test": (n - n_test, n)}
        ends = self.starts + self.span  # exclusive
        parts = {}
        for name, (lo, hi) in bounds.items():
            parts[name] = np.flatnonzero((self.starts >= lo) & (ends <= hi)).astype(np.int64)
        empty = [f"{s} (rows {lo}-{hi - 1}, {hi - lo} rows)" for s, (lo, hi) in bounds.items() if parts[s].size == 0]
        if empty:
            raise WindowError(
                f"{self.source}: {n} rows split by time into train/val/test blocks; no whole window "
                f"({self.span} rows with its target) fits in {', '.join(empty)}. Fix: a smaller data.window, larger "
                "data.val_fraction/data.test_fraction, or a longer series"
            )
        left_out = len(self.starts) - sum(p.size for p in parts.values())
        log.info("data %s: %d windows of %d steps (stride %d) split by time: train rows 0-%d, val %d-%d, test %d-%d; "
                 "%d windows across a boundary left out (no row in two splits)", self.source, len(self.starts),
                 self.window, self.stride, bounds["train"][1] - 1, bounds["val"][0], bounds["val"][1] - 1,
                 bounds["test"][0], n - 1, left_out)
        return parts

    # ------------------------------------------------------------------ what the model needs
    def _fit_preprocessing(self, x_train: np.ndarray) -> dict[str, Any]:
        return sequence_preprocessing(x_train)

    def _drift_columns(self, features: Any, idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        # each feature's value at the window's last step: with stride 1 every row counts once,
        # and the columns carry the file's names (not x0..x{T*F})
        last = np.asarray(features[idx][:, -1, :], dtype=np.float64)
        cols = {name: last[:, j] for j, name in enumerate(self.feature_names)}
        return cols, {k: "numeric" for k in cols}

    def setup(self, stage: str | None = None) -> None:
        """As :meth:`InMemoryDataModule.setup`, then the naive baselines of each held-out split."""
        fresh = not self._data
        super().setup(stage)
        if fresh:
            self.baselines = self._baselines()
            for split in ("test",):
                text = ", ".join(f"{k} {v:.4g}" for k, v in self.baselines[split].items() if k != "rows")
                log.info("naive baselines on %s (%d windows): %s", split, self.baselines[split]["rows"], text)

    def _baselines(self) -> dict[str, Any]:
        """What a model must beat, on val and test: regression: rmse/mae of the train mean and, when
        the target is a feature and the target is the next value, of its last value in the window
        (persistence); classification: accuracy of the train split's most frequent class."""
        out: dict[str, Any] = {}
        y_train = self._data["train"].tensors[1].numpy()
        for split in ("val", "test"):
            x, y = (t.numpy() for t in self._data[split].tensors)
            row: dict[str, Any] = {"rows": int(len(y))}
            if self.regression:
                y = y.astype(np.float64)
                guesses = {"train_mean": np.full_like(y, float(y_train.mean()))}
                if self.target_at == "next" and self.target in self.feature_names:
                    guesses["last_value"] = x[:, -1, self.feature_names.index(self.target)].astype(np.float64)
                for name, pred in guesses.items():
                    row[f"{name}_rmse"] = float(np.sqrt(np.mean((pred - y) ** 2)))
                    row[f"{name}_mae"] = float(np.mean(np.abs(pred - y)))
            else:
                majority = int(np.bincount(y_train, minlength=self.contract.num_classes).argmax())
                row["majority_class_acc"] = float(np.mean(y == majority))
            out[split] = row
        return out

    def data_report(self) -> dict[str, Any]:
        """As :meth:`InMemoryDataModule.data_report`, plus the windows (length, stride, target,
        features, rows per split) and the naive baselines."""
        report = super().data_report()
        report["windows"] = {"window": self.window, "stride": self.stride, "target": self.target,
                             "target_at": self.target_at, "features": self.feature_names, "file_rows": self.rows,
                             "windows": int(len(self.starts)),
                             "splits": {s: int(len(self._data[s])) for s in SPLITS if s in self._data}}
        report["baselines"] = self.baselines
        return report


__all__ = ["TARGET_AT", "WindowError", "WindowsDataModule", "sequence_preprocessing"]
