"""Streamed tables (data.streaming=true): sharding exactly once, shuffle, resume, contract per row
group, statistics from the stream, bad input, CSV conversion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from keel.data import ContractViolationError, TableDataModule
from keel.data.drift import reference_stats
from keel.data.streaming import StreamingError, StreamingTableDataModule, SplitRule, assign_groups, row_uniform
from keel.data.table_io import csv_to_parquet
from keel.errors import KeelError

CONTRACT = {
    "kind": "table",
    "name": "rows",
    "target": "y",
    "classes": [0, 1],
    "columns": {
        "rid": {"dtype": "int64", "nullable": False, "min": 0, "max": 10_000_000},
        "a": {"dtype": "float64", "nullable": False, "min": -10, "max": 10},
        "b": {"dtype": "float64", "nullable": True, "min": -10, "max": 10},
        "c": {"dtype": "category", "nullable": False, "categories": ["p", "q", "r"]},
    },
}


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n).clip(-9, 9)
    b = rng.normal(size=n).clip(-9, 9)
    b[rng.choice(n, n // 20, replace=False)] = np.nan
    return pd.DataFrame({"rid": np.arange(n), "a": a, "b": b, "c": rng.choice(["p", "q", "r"], n),
                         "y": (a + rng.normal(scale=0.5, size=n) > 0).astype(int)})


def _file(tmp_path, n: int = 6000, group: int = 500, df: pd.DataFrame | None = None, name: str = "t.parquet"):
    df = _frame(n) if df is None else df
    p = tmp_path / name
    df.to_parquet(p, row_group_size=group, index=False)
    return p


def _dm(path, **kw) -> StreamingTableDataModule:
    args = dict(path=str(path), target="y", contract=CONTRACT, batch_size=64, streaming=True,
                stream={"holdout_rows": 100_000, "shuffle_rows": 512, "sample_rows": 400,
                        "cache_dir": str(path.parent / "cache")})
    stream = kw.pop("stream", {})
    args.update(kw)
    args["stream"] = {**args["stream"], **stream}
    dm = TableDataModule(**args)
    dm.setup()
    return dm


def _ids(loader) -> np.ndarray:
    return np.concatenate([x[:, 0].numpy() for x, _ in loader]).astype(np.int64)


def _train_ids(dm) -> np.ndarray:
    codes = dm.rule.codes(np.arange(dm.table.rows))
    return np.flatnonzero(codes == 0)


def test_delegates_and_refuses():
    with pytest.raises(KeelError, match="on_device"):
        TableDataModule(path="x.parquet", target="y", streaming=True, on_device=True)
    from keel.data import BreastCancerDataModule

    with pytest.raises(KeelError, match="embedded table"):
        BreastCancerDataModule(streaming=True)
    assert type(TableDataModule(path="x.parquet", target="y")).__name__ == "TableDataModule"


def test_split_rule_is_seeded_and_capped():
    rows = np.arange(200_000)
    a = SplitRule(len(rows), 0.15, 0.15, 100_000, 0).codes(rows)
    assert np.array_equal(a, SplitRule(len(rows), 0.15, 0.15, 100_000, 0).codes(rows))
    assert not np.array_equal(a, SplitRule(len(rows), 0.15, 0.15, 100_000, 1).codes(rows))
    assert abs((a == 1).mean() - 0.15) < 0.005 and abs((a == 2).mean() - 0.15) < 0.005
    capped = SplitRule(len(rows), 0.15, 0.15, 10_000, 0).codes(rows)
    assert 9_000 < (capped == 2).sum() <= 10_000  # the cap less 4 standard deviations of the count
    u = row_uniform(rows, 3)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


def test_each_train_row_once_over_two_ranks_and_two_workers(tmp_path):
    dm = _dm(_file(tmp_path, n=6500, group=500), num_workers=2)  # 13 row groups: uneven shares
    seen = np.concatenate([_ids(dm.train_loader(rank, 2, shuffle=True, pad=False)) for rank in range(2)])
    want = _train_ids(dm)
    assert len(seen) == len(want) and np.array_equal(np.sort(seen), want)
    # the shuffle reaches across row groups, and a new epoch draws a new order
    loader = dm.train_loader(0, 1, shuffle=True, pad=False)
    first = _ids(loader)
    assert np.abs(np.diff(first[:64] // 500)).sum() > 0
    loader.sampler.set_epoch(1)
    second = _ids(loader)
    assert not np.array_equal(first, second) and np.array_equal(np.sort(first), np.sort(second))


def test_ddp_training_pads_to_equal_length(tmp_path):
    dm = _dm(_file(tmp_path, n=6500, group=500))
    loaders = [dm.train_loader(rank, 2) for rank in range(2)]
    batches = [list(ld) for ld in loaders]
    assert len(batches[0]) == len(batches[1]) == len(loaders[0]) == len(loaders[1])
    seen = np.concatenate([x[:, 0].numpy() for b in batches for x, _ in b]).astype(np.int64)
    assert set(seen.tolist()) == set(_train_ids(dm).tolist())  # every row, repeats only as padding


def test_eval_loaders_split_rows_once_across_ranks(tmp_path):
    dm = _dm(_file(tmp_path, n=3000))
    x_val, _ = dm.split_arrays("val")
    got = []
    for rank in range(2):
        dm.trainer = None
        dm._rank_world = lambda rank=rank: (rank, 2)
        got.append(_ids(dm.val_dataloader()))
    assert np.array_equal(np.sort(np.concatenate(got)), np.sort(x_val[:, 0].astype(np.int64)))


def test_resume_mid_epoch_continues_with_the_same_batches(tmp_path):
    dm = _dm(_file(tmp_path, n=4000, group=300))
    full = dm.train_loader()
    full.sampler.set_epoch(2)
    whole = [x[:, 0].numpy().copy() for x, _ in full]
    interrupted = dm.train_loader()
    interrupted.sampler.set_epoch(2)
    it = iter(interrupted)
    head = [next(it)[0][:, 0].numpy().copy() for _ in range(7)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches_done": 7}
    resumed = dm.train_loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    tail = [x[:, 0].numpy().copy() for x, _ in resumed]
    assert len(head) + len(tail) == len(whole)
    assert all(np.array_equal(a, b) for a, b in zip(head + tail, whole))
    assert resumed.state_dict()["batches_done"] == len(whole)  # the epoch finished: next one is whole
    resumed.sampler.set_epoch(3)
    assert len(list(resumed)) == len(whole)


def test_preprocessing_and_reference_are_exact(tmp_path):
    dm = _dm(_file(tmp_path, n=5000, group=400))
    x, y = dm.split_arrays("train")
    assert len(x) == dm.split_sizes()["train"] == len(_train_ids(dm))
    num = x[:, :3].astype(np.float64)
    mean = np.nanmean(num, axis=0)
    std = np.sqrt(np.nansum((num - mean) ** 2, axis=0) / (np.sum(~np.isnan(num), axis=0) - 1))
    np.testing.assert_allclose(dm.preprocessing["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(dm.preprocessing["std"], std, rtol=1e-10)
    assert dm.class_counts("train") == np.bincount(y, minlength=2).tolist()
    raw = _frame(5000).loc[_train_ids(dm), "a"].to_numpy()  # drift statistics are of the raw float64 values
    full = reference_stats({"a": raw}, {"a": "numeric"}, bins=10)["features"]["a"]
    got = dm.reference["features"]["a"]
    for key in ("count", "missing", "min", "max"):
        assert got[key] == full[key]
    assert got["mean"] == pytest.approx(full["mean"], rel=1e-9) and got["std"] == pytest.approx(full["std"], rel=1e-9)
    assert sum(got["counts"]) == got["count"] and len(got["counts"]) == len(got["edges"]) + 1
    counts = np.bincount(np.searchsorted(np.asarray(got["edges"]), raw, side="left"),
                         minlength=len(got["edges"]) + 1)
    assert counts.tolist() == got["counts"]  # exact counts in the sample's edges
    assert dm.reference["features"]["c"]["count"] == len(x)
    assert dm.drift["splits"]["val"]["leakage"]["count"] == 0  # rid makes every row distinct
    assert dm.drift["streaming"]["counts"].startswith("exact")


def test_split_arrays_limit_is_always_the_same_rows(tmp_path):
    dm = _dm(_file(tmp_path, n=4000, group=300), stream={"sample_rows": 100})
    a, _ = dm.split_arrays("train", limit=50)
    b, _ = dm.split_arrays("train", limit=300)  # beyond the sample: one pass, same order
    assert np.array_equal(a, b[:50], equal_nan=True) and len(b) == 300
    c, _ = dm.split_arrays("train", limit=50)
    assert np.array_equal(a, c, equal_nan=True)
    from keel.export.build import split_sample

    assert len(split_sample(dm, "train", 20)[0]) == 20
    xt, yt = dm.split_arrays("test", limit=10)
    assert len(xt) == len(yt) == 10


def test_contract_violation_names_the_file_and_row_group(tmp_path):
    df = _frame(3000)
    df.loc[1234, "a"] = 50.0  # row group 2 (500 rows a group), outside [-10, 10]
    path = _file(tmp_path, df=df)
    with pytest.raises(ContractViolationError, match=r"t\.parquet, row group 2 of 6 \(rows 1000\.\.1499\)") as e:
        _dm(path)
    assert "range on a" in str(e.value) and "row 1234: 50.0" in str(e.value)
    assert "data.on_violation=drop" in str(e.value)


def test_drop_counts_per_rule_and_streams_clean_rows(tmp_path):
    df = _frame(3000)
    bad = [10, 600, 2999]
    df.loc[bad, "a"] = 50.0
    df.loc[[1500], "c"] = "zzz"
    dm = _dm(_file(tmp_path, df=df), on_violation="drop")
    assert dm.dropped["total"] == 4
    report = dm.data_report()
    by_rule = {}
    for s in report["dropped"]["splits"].values():
        for k, v in s["by_rule"].items():
            by_rule[k] = by_rule.get(k, 0) + v
    assert by_rule == {"range on a": 3, "categories on c": 1}
    seen = set(_ids(dm.train_loader(shuffle=False, pad=False)).tolist())
    seen |= set(dm.split_arrays("val")[0][:, 0].astype(int).tolist()) | set(dm.split_arrays("test")[0][:, 0].astype(int).tolist())
    assert seen == set(range(3000)) - set(bad) - {1500}
    assert sum(dm.split_sizes().values()) == 2996


def test_schema_mismatch_is_one_clear_message(tmp_path):
    df = _frame(1000).drop(columns=["b"])
    df["a"] = df["a"].astype(str)
    with pytest.raises(StreamingError, match="schema does not match") as e:
        _dm(_file(tmp_path, df=df))
    msg = str(e.value)
    assert "missing columns ['b']" in msg and "column 'a' is large_string in the file; the contract expects float64" in msg
    assert "Fix:" in msg and "t.parquet" in msg


def test_unreadable_row_group_and_a_file_changed_mid_run(tmp_path):
    path = _file(tmp_path, n=3000)
    dm = _dm(path)
    loader = dm.train_loader(shuffle=False, pad=False)
    it = iter(loader)
    next(it)
    _frame(3000, seed=1).to_parquet(path, row_group_size=500, index=False)
    with pytest.raises(StreamingError, match=r"row group \d+ of 6 .*changed while the run was reading it"):
        list(it)
    assert loader.state_dict()["batches_done"] < len(loader)  # a partial epoch is not a finished one
    path2 = _file(tmp_path, n=3000, name="u.parquet")
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path2).metadata.row_group(3).column(1)
    raw = bytearray(path2.read_bytes())
    start = md.data_page_offset
    raw[start : start + 64] = b"\xff" * 64
    path2.write_bytes(bytes(raw))
    with pytest.raises(StreamingError, match=r"u\.parquet, row group 3 of 6 .*cannot be decoded.*Fix: rewrite"):
        _dm(path2)


def test_inferred_contract_and_regression(tmp_path):
    df = _frame(3000)
    df["y"] = df["a"] * 3 + 0.5
    dm = TableDataModule(path=str(_file(tmp_path, df=df)), target="y", streaming=True, batch_size=128,
                         stream={"cache_dir": str(tmp_path / "c")})
    dm.setup()
    assert dm.contract.task == "regression"
    assert dm.contract.to_dict()["columns"]["c"]["categories"] == ["p", "q", "r"]
    stats = dm.target_stats()
    _, y = dm.split_arrays("train")
    assert stats["rows"] == len(y) and stats["mean"] == pytest.approx(float(y.astype(np.float64).mean()), rel=1e-9)
    assert "target" in dm.drift["splits"]["val"]


def test_csv_is_converted_once_and_widened(tmp_path):
    df = _frame(3000)
    df["rid"] = df["rid"].astype(float)
    df.loc[2500, "rid"] = 2500.5  # whole numbers first, then a fraction: int64 widens to float64
    csv = tmp_path / "t.csv"
    df.to_csv(csv, index=False)
    out, made = csv_to_parquet(csv, tmp_path / "cache", row_group_rows=700, block_size=4096)
    assert made and out.suffix == ".parquet"
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(out)
    assert pf.metadata.num_rows == 3000 and pf.metadata.row_group(0).num_rows == 700
    assert str(pf.schema_arrow.field("rid").type) == "double"
    assert csv_to_parquet(csv, tmp_path / "cache", row_group_rows=700) == (out, False)


def test_assign_groups_balances_rows():
    shares = assign_groups(np.array([10, 10, 10, 10, 5]), 2)
    assert sorted(g for s in shares for g in s) == [0, 1, 2, 3, 4]
    loads = [sum([10, 10, 10, 10, 5][g] for g in s) for s in shares]
    assert max(loads) - min(loads) <= 10
