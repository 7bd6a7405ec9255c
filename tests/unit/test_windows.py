"""Windows of a time series (keel.data.windows) and digits as sequences: shapes, targets, the time
split, per-feature standardization, naive baselines and every refusal with its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from keel.data.digits import DigitsDataModule
from keel.data.windows import WindowError, WindowsDataModule, sequence_preprocessing
from keel.errors import KeelError
from keel.models.nets import build_preprocess


def _series(tmp_path: Path, n: int = 200, **extra) -> Path:
    t = np.arange(n, dtype=np.float64)
    df = pd.DataFrame({"value": t * 0.5, "other": 1000.0 + t, **extra})
    path = tmp_path / "s.csv"
    df.to_csv(path, index=False)
    return path


def _dm(path: Path, **kwargs) -> WindowsDataModule:
    args = {"target": "value", "window": 10, "stride": 1, "val_fraction": 0.2, "test_fraction": 0.2,
            "batch_size": 16, **kwargs}
    return WindowsDataModule(str(path), **args)


def test_next_value_windows_hold_the_rows_before_their_target(tmp_path):
    dm = _dm(_series(tmp_path), stride=3)
    x, y = dm.load()
    assert x.shape == (len(dm.starts), 10, 2) and x.dtype == np.float32
    assert dm.feature_names == ["value", "other"]
    np.testing.assert_array_equal(dm.starts[:3], [0, 3, 6])
    np.testing.assert_allclose(x[1, :, 0], 0.5 * np.arange(3, 13))  # rows 3..12
    np.testing.assert_allclose(y[1], 0.5 * 13)  # the row after the window
    assert dm.starts[-1] + 11 <= 200


def test_end_target_is_the_windows_last_row_and_not_a_feature(tmp_path):
    path = _series(tmp_path, label=np.arange(200) % 3)
    dm = _dm(path, target="label", target_at="end")
    dm.setup()
    assert dm.feature_names == ["value", "other"]  # the label is left out of the inputs
    x, y = dm.split_arrays("train")
    np.testing.assert_array_equal(y, (x[:, -1, 0] * 2).astype(int) % 3)
    assert dm.task == "classification" and list(dm.contract.classes) == [0, 1, 2]
    assert "majority_class_acc" in dm.baselines["test"]


def test_split_is_by_time_with_no_row_in_two_splits(tmp_path):
    dm = _dm(_series(tmp_path))
    dm.setup()
    span = {s: (dm.split_arrays(s)[0][:, :, 0] * 2) for s in ("train", "val", "test")}  # row numbers read
    targets = {s: dm.split_arrays(s)[1] * 2 for s in ("train", "val", "test")}
    rows = {s: set(span[s].ravel().astype(int)) | set(targets[s].astype(int)) for s in span}
    assert max(rows["train"]) < min(rows["val"]) and max(rows["val"]) < min(rows["test"])
    assert not (rows["train"] & rows["val"]) and not (rows["val"] & rows["test"])
    assert max(rows["train"]) == 119 and min(rows["val"]) == 120 and max(rows["test"]) == 199  # blocks 60/20/20 %
    assert dm.data_report()["windows"]["windows"] == len(dm.starts) > sum(dm.split_sizes().values())


def test_sequences_are_standardized_per_feature_inside_the_model(tmp_path):
    dm = _dm(_series(tmp_path))
    dm.setup()
    spec = dm.preprocessing
    assert spec["sample_ndim"] == 1 and len(spec["mean"]) == 2  # one statistic per feature, not per time step
    x = torch.from_numpy(dm.split_arrays("train")[0])
    z = build_preprocess(spec)(x).numpy().reshape(-1, 2)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1.0, atol=1e-4)
    assert sequence_preprocessing(np.ones((1, 1, 2), np.float32))["std"] == [1.0, 1.0]  # one value: no spread


def test_naive_baselines_are_the_last_value_and_the_train_mean(tmp_path):
    dm = _dm(_series(tmp_path))
    dm.setup()
    x, y = dm.split_arrays("test")
    base = dm.baselines["test"]
    assert base["rows"] == len(y)
    assert base["last_value_rmse"] == pytest.approx(0.5)  # the series climbs 0.5 a row
    train_mean = dm.split_arrays("train")[1].astype(np.float64).mean()
    assert base["train_mean_rmse"] == pytest.approx(np.sqrt(np.mean((y - train_mean) ** 2)), rel=1e-5)
    assert dm.data_report()["baselines"]["val"]["rows"] == dm.split_sizes()["val"]


def test_inferred_contract_has_the_window_shape_and_a_widened_range(tmp_path):
    dm = _dm(_series(tmp_path), infer_margin=0.1)
    dm.setup()
    c = dm.contract
    assert list(c.shape) == [10, 2] and c.task == "regression" and c.dtype == "float32"
    lo, hi = c.range
    # the last row (199) is only a target: the inputs reach row 198
    assert lo == pytest.approx(0 - 0.1 * 1198) and hi == pytest.approx(1198 + 0.1 * 1198)


def test_time_column_orders_the_rows_and_is_not_a_feature(tmp_path):
    t = np.arange(100)
    df = pd.DataFrame({"when": pd.date_range("2024-01-01", periods=100, freq="D").astype(str), "value": t * 1.0})
    df.iloc[::-1].to_csv(tmp_path / "r.csv", index=False)  # newest first in the file
    dm = _dm(tmp_path / "r.csv", time_column="when", window=5)
    x, y = dm.load()
    assert dm.feature_names == ["value"]
    np.testing.assert_allclose(x[0, :, 0], [0, 1, 2, 3, 4]) and np.testing.assert_allclose(y[0], 5)


def test_digits_as_sequences_are_8_rows_of_8_features():
    contract = {"kind": "tensor", "name": "digits_seq", "shape": [8, 8], "dtype": "float32", "range": [0.0, 16.0],
                "classes": list(range(10))}
    dm = DigitsDataModule(contract=contract, layout="sequence")
    dm.setup()
    x, _ = dm.split_arrays("train")
    assert x.shape[1:] == (8, 8)
    images = DigitsDataModule(contract={**contract, "shape": [1, 8, 8]})
    images.setup()
    np.testing.assert_array_equal(images.split_arrays("train")[0][:, 0], x)  # same rows, same split
    assert dm.preprocessing["sample_ndim"] == 1 and len(dm.preprocessing["mean"]) == 8
    with pytest.raises(KeelError, match=r"data.layout=sequence makes samples of shape \[8, 8\], but the contract's "
                                        r"shape is \[1, 8, 8\]. Fix: data.contract.shape=\[8, 8\]"):
        DigitsDataModule(contract={**contract, "shape": [1, 8, 8]}, layout="sequence")
    with pytest.raises(KeelError, match=r"data.layout='rows': expected one of \['image', 'sequence'\]"):
        DigitsDataModule(contract=contract, layout="rows")


# ---------------------------------------------------------------- refusals, each with its fix
@pytest.mark.parametrize("key,value", [("window", 0), ("window", -3), ("stride", 0), ("window", 2.5)])
def test_window_and_stride_must_be_whole_numbers_of_at_least_one(tmp_path, key, value):
    with pytest.raises(WindowError, match=rf"data.{key}={value!r}: expected a whole number >= 1.*Fix: data.{key}="):
        _dm(_series(tmp_path), **{key: value})


def test_a_series_shorter_than_one_window_is_refused(tmp_path):
    dm = _dm(_series(tmp_path, n=10), window=10)
    with pytest.raises(WindowError, match=r"s.csv: 10 rows, shorter than one window \(data.window=10 \+ 1 row for "
                                          r"the next value.*11 rows\). Fix: data.window<=9, or a longer series"):
        dm.setup()


def test_a_non_numeric_feature_is_named_with_an_example(tmp_path):
    path = _series(tmp_path, station=["a"] * 200)
    with pytest.raises(WindowError, match=r"feature column 'station' \(\w+; e.g. row 0: 'a'\) not numeric.*"
                                          r"Fix: clean the column, or list the numeric ones in data.features"):
        _dm(path).setup()


def test_a_missing_target_or_feature_column_is_named(tmp_path):
    path = _series(tmp_path)
    with pytest.raises(WindowError, match=r"no column 'price'; columns are \['value', 'other'\]. Fix: data.target="):
        _dm(path, target="price").setup()
    with pytest.raises(WindowError, match=r"no column 'temp'"):
        _dm(path, features=["value", "temp"]).setup()


def test_the_target_as_a_feature_at_the_windows_end_is_refused(tmp_path):
    with pytest.raises(WindowError, match=r"includes the target 'value' with data.target_at=end.*Fix: leave it out"):
        _dm(_series(tmp_path), target_at="end", features=["value", "other"]).setup()


def test_bad_target_at_and_next_value_classification_are_refused(tmp_path):
    path = _series(tmp_path)
    with pytest.raises(WindowError, match=r"data.target_at='last': expected one of \['end', 'next'\]"):
        _dm(path, target_at="last")
    with pytest.raises(WindowError, match=r"target_at=next predicts the next value.*Fix: task=regression"):
        _dm(path, task="classification")


def test_a_block_too_short_for_a_window_is_refused(tmp_path):
    with pytest.raises(WindowError, match=r"no whole window \(41 rows with its target\) fits in val \(rows 160-179, "
                                          r"20 rows\), test.*Fix: a smaller data.window"):
        _dm(_series(tmp_path), window=40, val_fraction=0.1, test_fraction=0.1).setup()


def test_a_contract_of_another_shape_is_refused(tmp_path):
    contract = {"kind": "tensor", "name": "s", "shape": [5, 2], "dtype": "float32", "task": "regression"}
    with pytest.raises(WindowError, match=r"data.contract shape \[5, 2\] but the windows are \[10, 2\].*"
                                          r"Fix: data.contract.shape=\[10, 2\]"):
        _dm(_series(tmp_path), contract=contract).setup()


def test_next_value_targets_are_regression_even_for_a_whole_number_series():
    from omegaconf import OmegaConf

    from keel.tasks.resolve import resolve_task

    cfg = OmegaConf.create({"task": "auto", "data": {"target_at": "next", "path": None, "target": "count"}})
    found = resolve_task(cfg)
    assert found.name == "regression" and "data.target_at=next" in found.describe()
