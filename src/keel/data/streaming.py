"""Tables larger than memory: Parquet row groups streamed through the contract (``data.streaming=true``).

Design (README "Tables larger than memory"):

- Split: a row's split is a seeded hash of its global row index (splitmix64 of row + seed,
  uniform in [0, 1)): below the test share it is test, then val, else train. Every process
  agrees from the row count alone (Parquet metadata), without reading anything, and the same
  file and seed always give the same split. Not stratified: at the sizes streaming is for, a
  uniform sample holds every class in proportion.
- val/test are held in memory, each capped at ``holdout_rows`` (the hash share is
  ``min(fraction, holdout_rows / rows)``): export parity, int8 evaluation, drift against train
  and the test metrics need the held-out arrays whole, and beyond ~100k rows a held-out metric
  gains nothing (its standard error at 100k rows is ~0.15 accuracy points) while each
  validation would cost more. Train is never held: it streams.
- Units: the Parquet row groups. For DDP, each rank gets a fixed set of row groups (balanced
  by train rows, the same every epoch, so every epoch has the same number of steps); inside a
  rank, a map-style DataLoader over the rank's row groups hands each one to exactly one
  worker. The union over ranks and workers is every row group once: each train row of an
  epoch is seen exactly once. Training under DDP pads a shorter rank with repeats of its first
  batch up to the longest rank's batch count (DDP needs equal step counts), as the in-memory
  path pads; evaluation never pads.
- Shuffle: a seeded row-group order per epoch (seed, epoch, rank), then a bounded shuffle
  buffer (``shuffle_rows``) in the main process that mixes rows across row groups.
- Resume: the training loader is stateful (``state_dict``: epoch, batches handed out), stored
  in every checkpoint by Lightning. The stream is a function of (seed, epoch, rank), so a run
  resumed mid-epoch replays that epoch's stream and skips exactly the batches already trained on.
- Contract: checked on every row group as it streams (pandera/vectorized, as in memory), in
  setup's pass and in every epoch. ``raise`` stops at the first failing row group with its
  report, naming the file and row group; ``drop`` drops the failing rows and counts them per
  rule, keeping the first examples.
- Statistics: one streaming pass gives the preprocessing (mean/std of the encoded numeric
  columns, exact: Chan's merge of batch moments), class counts or target statistics, the drift
  reference's counts, missing, mean, std, min, max and category counts (exact) and a seeded
  uniform sample of ``sample_rows`` train rows (the bottom-k of a second row hash). The numeric
  drift bin edges are that sample's quantiles; a second pass counts the full train split into
  those bins exactly and finds held-out rows that also occur in train (leakage); only with
  ``drift.enabled``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from keel.data.batches import IndexBatchSampler
from keel.data.contract import ContractReport, ContractViolationError, Violation, contract_from_dict, load_contract_spec
from keel.data.table_io import TableReadError, csv_to_parquet, table_drift_columns, table_format
from keel.errors import KeelError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_CODE = {"train": 0, "val": 1, "test": 2}
_MASK = (1 << 64) - 1
MAX_EXAMPLES = 5
# row ids kept per split in the drop report (the count is always exact)
MAX_DROPPED_IDS = 1000
# above this many rows per row group a worker holds a large decoded group: say so
LARGE_GROUP_ROWS = 1 << 20


class StreamingError(TableReadError):
    """A streamed table cannot be read as the contract says: its schema, or a row group."""


# ---------------------------------------------------------------------------------- row hash


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (wrapping uint64 arithmetic): a bijection with good avalanche."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_uniform(rows: np.ndarray, seed: int, salt: int = 1) -> np.ndarray:
    """A uniform number in [0, 1) per global row index, a pure function of (row, seed, salt)."""
    key = np.uint64((int(seed) * 0x9E3779B97F4A7C15 + int(salt) * 0xD1B54A32D192ED03 + 1) & _MASK)
    h = _mix(np.asarray(rows, dtype=np.int64).astype(np.uint64) + key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class SplitRule:
    """Which split each global row index belongs to (see the module docstring).

    ``test`` and ``val`` are the hash shares: ``min(fraction, cap / rows)``, with ``cap``
    ``holdout_rows`` less 4 standard deviations of the binomial count, so a held-out split stays
    below ``holdout_rows`` (it exceeds it with probability ~3e-5).
    """

    def __init__(self, rows: int, val_fraction: float, test_fraction: float, holdout_rows: int, seed: int):
        cap = max(holdout_rows - 4 * math.sqrt(holdout_rows), 1) / max(rows, 1)
        self.test, self.val, self.seed = min(test_fraction, cap), min(val_fraction, cap), int(seed)

    def codes(self, rows: np.ndarray) -> np.ndarray:
        u = row_uniform(rows, self.seed, 1)
        out = np.zeros(u.shape, dtype=np.int8)
        out[u < self.test] = 2
        out[(u >= self.test) & (u < self.test + self.val)] = 1
        return out


# ---------------------------------------------------------------------------------- the file


class ParquetTable:
    """One Parquet file read by row group; ``source`` is what messages name (the user's file)."""

    def __init__(self, path: str | Path, source: str | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path, self.source = Path(path), source or str(path)
        try:
            pf = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StreamingError(f"{self.source}: not a readable Parquet file ({first}). Fix: check the file "
                                 "(data.streaming=true reads Parquet, or a CSV it converts once)") from None
        md = pf.metadata
        self.schema = pf.schema_arrow
        self.group_rows = np.array([md.row_group(i).num_rows for i in range(md.num_row_groups)], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.group_rows)[:-1]]).astype(np.int64)
        self.rows = int(self.group_rows.sum())
        st = self.path.stat()
        self.stamp = (st.st_size, st.st_mtime_ns)
        self._pf: Any = None
        if self.rows == 0:
            raise StreamingError(f"{self.source}: the file has a schema but no rows. Fix: point data.path at a file "
                                 "with data")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pf": None}  # each worker opens its own handle

    @property
    def groups(self) -> int:
        return len(self.group_rows)

    def where(self, g: int) -> str:
        a = int(self.starts[g])
        return (f"{self.source}, row group {g} of {self.groups} (rows {a}..{a + int(self.group_rows[g]) - 1}"
                + (f"; Parquet copy {self.path}" if str(self.path) != self.source else "") + ")")

    def read(self, g: int) -> Any:
        """Row group ``g`` as a DataFrame indexed by global row number.

        Raises:
            StreamingError: the file changed since setup, or the row group cannot be decoded.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        st = self.path.stat()
        if (st.st_size, st.st_mtime_ns) != self.stamp:
            raise StreamingError(f"{self.where(g)}: the file changed while the run was reading it. Fix: do not "
                                 "rewrite a table during a run; start the run again on the finished file")
        try:
            if self._pf is None:
                self._pf = pq.ParquetFile(self.path)
            df = self._pf.read_row_group(g).to_pandas()
        except (OSError, pa.ArrowException) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StreamingError(f"{self.where(g)}: cannot be decoded ({type(e).__name__}: {first}). Expected a "
                                 "readable row group of the file's schema. Fix: rewrite the file (e.g. "
                                 "pandas.read_parquet then to_parquet), or restore it from its source") from None
        df.index = np.arange(self.starts[g], self.starts[g] + len(df), dtype=np.int64)
        return df


def schema_problems(schema: Any, contract: Any) -> list[str]:
    """What in a Parquet schema contradicts a table contract: missing/extra columns, a numeric
    contract column stored as text or binary, a regression target that is not a number."""
    import pyarrow as pa

    names = list(schema.names)
    declared = contract.feature_names + [contract.target]
    problems = []
    missing = [n for n in declared if n not in names]
    extra = [n for n in names if n not in declared]
    if missing:
        problems.append(f"missing columns {missing} (the contract requires them)")
    if extra:
        problems.append(f"extra columns {extra} (not in the contract)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"duplicate columns {dup}")

    def numeric(t: Any) -> bool:
        if pa.types.is_dictionary(t):
            t = t.value_type
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)

    for c in contract.columns:
        if c.numeric and c.name in names and not numeric(schema.field(c.name).type):
            problems.append(f"column {c.name!r} is {schema.field(c.name).type} in the file; the contract expects "
                            f"{c.dtype}")
    if contract.task == "regression" and contract.target in names and not numeric(schema.field(contract.target).type):
        problems.append(f"target {contract.target!r} is {schema.field(contract.target).type} in the file; a "
                        "regression target must be a number")
    return problems


# ---------------------------------------------------------------------------------- reading


def _identity(item: Any) -> Any:
    return item


class UnitReader(Dataset):
    """Map-style dataset over row groups: ``reader[(group, mode)]`` reads one row group, splits
    it by the hash rule, checks each wanted split against the contract and encodes it.

    ``mode``: ``train`` (training batches), ``all`` (setup's pass: every split, with drift
    columns), ``bins`` (train encoded rows and drift columns: setup's second pass). Returns a
    dict; a contract violation under ``raise`` (or one that cannot be dropped) comes back as
    ``{"error": report}`` for the main process to raise (a worker's exception loses its type).
    """

    def __init__(self, table: ParquetTable, contract: Any, rule: SplitRule, on_violation: str, drift: bool) -> None:
        self.table, self.contract, self.rule = table, contract, rule
        self.on_violation, self.drift = on_violation, drift
        self.regression = contract.task == "regression"

    def __len__(self) -> int:
        return self.table.groups

    def __getitem__(self, key: tuple[int, str]) -> dict[str, Any]:
        g, mode = key
        df = self.table.read(g)
        codes = self.rule.codes(df.index.to_numpy())
        wanted = SPLITS if mode == "all" else ("train",)
        out: dict[str, Any] = {"group": g, "rows": len(df), "splits": {}}
        for split in wanted:
            part = df[codes == _CODE[split]]
            report = ContractReport(self.contract.name, split, len(part), ())
            if len(part):
                report = self.contract.check(part, split)
            dropped = 0
            if not report.ok:
                if self.on_violation == "raise" or not report.droppable:
                    return {"group": g, "error": report, "split": split}
                failing = report.failing_rows()
                part = part.drop(index=failing)
                dropped = int(failing.size)
            x = self.contract.encode_features(part)
            y = self.contract.encode_labels(part[self.contract.target])
            y = np.require(y, dtype=np.float32 if self.regression else np.int64, requirements=["C", "W"])
            entry: dict[str, Any] = {"x": x, "y": y, "ids": part.index.to_numpy(), "report": report,
                                     "dropped": dropped}
            if mode in ("all", "bins") and self.drift:
                entry["drift"] = table_drift_columns(part, self.contract)[0]
            out["splits"][split] = entry
        return out


def _raise_on_error(item: dict[str, Any], table: ParquetTable) -> None:
    if "error" in item:
        report = item["error"]
        raise ContractViolationError(
            [report], table.where(item["group"]),
            fix=("Fix: clean that row group, set data.on_violation=drop to drop failing rows, or correct the "
                 "contract (data.contract) if the data is right")
            if report.droppable else
            "Fix: rewrite the file with the contract's columns and types, or correct the contract (data.contract)",
        )


_WARM: set[int] = set()


def _warm_up(reader: UnitReader) -> None:
    """Validate two rows once in this process before forking workers: pandera's first validation
    imports and registers its backends (1.4-3.9 s in each fresh worker on 2 busy cores, measured),
    and forked workers inherit what the parent has done."""
    if id(reader.contract) in _WARM:
        return
    part = reader.table.read(0).head(2)
    reader.contract.check(part, "warm-up")
    _WARM.add(id(reader.contract))


def iterate_units(reader: UnitReader, groups: list[int], mode: str, num_workers: int) -> Iterator[dict[str, Any]]:
    """Each row group of ``groups`` read by ``reader`` (in that order; ``num_workers`` processes)."""
    if num_workers == 0:
        for g in groups:
            item = reader[(g, mode)]
            _raise_on_error(item, reader.table)
            yield item
        return
    _warm_up(reader)
    loader = DataLoader(reader, sampler=[(g, mode) for g in groups], batch_size=None, num_workers=num_workers,
                        collate_fn=_identity, prefetch_factor=2)
    for item in loader:
        _raise_on_error(item, reader.table)
        yield item


def assign_groups(train_rows: np.ndarray, world: int) -> list[list[int]]:
    """Row groups per rank, balanced by train rows (largest first to the least loaded rank);
    the same every epoch. Each rank's list is in file order."""
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for g in sorted(range(len(train_rows)), key=lambda i: (-int(train_rows[i]), i)):
        r = min(range(world), key=lambda k: (load[k], k))
        out[r].append(g)
        load[r] += int(train_rows[g])
    return [sorted(x) for x in out]


class _EpochSampler:
    """What Lightning calls ``set_epoch`` on (``loader.sampler``)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class StreamingLoader:
    """The training batches of one rank: its row groups in a seeded order per epoch, through
    a bounded shuffle buffer, in batches of ``batch_size`` rows; stateful for mid-epoch resume.

    Args:
        reader: the row-group reader.
        groups: this rank's row groups.
        rows: train rows per row group of the whole file (after drops: setup's pass).
        batch_size: rows per batch.
        shuffle: seeded row-group order and the shuffle buffer; False: file order, no buffer.
        seed: the run seed (with the epoch and the rank, seeds each epoch's stream).
        rank: this process's rank (seeds its stream).
        pad_to: batches every epoch must have (DDP training: the longest rank's count); a
            shorter stream repeats its first batch. None: no padding.
        shuffle_rows: the buffer's size in rows.
        num_workers: reading processes.
    """

    def __init__(self, reader: UnitReader, groups: list[int], rows: np.ndarray, batch_size: int, shuffle: bool,
                 seed: int, rank: int = 0, pad_to: int | None = None, shuffle_rows: int = 65536,
                 num_workers: int = 0) -> None:
        self.reader, self.groups, self.batch_size = reader, list(groups), int(batch_size)
        self.rows = int(sum(int(rows[g]) for g in groups))
        self.shuffle, self.seed, self.rank = shuffle, int(seed), int(rank)
        self.pad_to, self.shuffle_rows, self.num_workers = pad_to, max(int(shuffle_rows), self.batch_size), num_workers
        self.sampler = _EpochSampler()
        self.served = 0
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        own = math.ceil(self.rows / self.batch_size)
        return max(own, self.pad_to or 0)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches_done": int(self.served)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        done = int(state.get("batches_done", 0))
        if 0 < done < len(self):
            self._resume = (int(state["epoch"]), done)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, skip = self.sampler.epoch, 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None
        self.served = skip
        return self._counted(self._batches(epoch), skip)

    def _counted(self, batches: Iterator[tuple[np.ndarray, np.ndarray]], skip: int) -> Iterator[Any]:
        first = None
        n = 0
        for x, y in batches:
            if first is None:
                first = (x, y)
            n += 1
            if n <= skip:
                continue  # the resumed epoch's batches already trained on: replayed, not handed out
            self.served += 1
            yield torch.from_numpy(x), torch.from_numpy(y)
        if self.pad_to and n < self.pad_to:
            if first is None:
                raise KeelError(f"rank {self.rank} has no training rows to pad its epoch with. Fix: write the "
                                "Parquet file with more, smaller row groups (at least one per process)")
            for _ in range(self.pad_to - max(n, skip)):
                self.served += 1
                yield torch.from_numpy(first[0].copy()), torch.from_numpy(first[1].copy())

    def _batches(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        b = self.batch_size
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        order = [self.groups[i] for i in rng.permutation(len(self.groups))] if self.shuffle else self.groups
        bx: list[np.ndarray] = []
        by: list[np.ndarray] = []
        held = 0
        for item in iterate_units(self.reader, order, "train", self.num_workers):
            part = item["splits"]["train"]
            if not len(part["y"]):
                continue
            bx.append(part["x"])
            by.append(part["y"])
            held += len(part["y"])
            if not self.shuffle:
                if held >= b:
                    x, y = np.concatenate(bx), np.concatenate(by)
                    k = (held // b) * b
                    for s in range(0, k, b):
                        yield x[s : s + b], y[s : s + b]
                    bx, by, held = [x[k:]], [y[k:]], held - k
            elif held >= self.shuffle_rows + b:
                x, y = np.concatenate(bx), np.concatenate(by)
                perm = rng.permutation(held)
                k = ((held - self.shuffle_rows // 2) // b) * b  # keep half the buffer to mix with what comes
                for s in range(0, k, b):
                    idx = perm[s : s + b]
                    yield x[idx], y[idx]
                rest = perm[k:]
                bx, by, held = [x[rest]], [y[rest]], len(rest)
        if held:
            x, y = np.concatenate(bx), np.concatenate(by)
            if self.shuffle:
                perm = rng.permutation(held)
                x, y = x[perm], y[perm]
            for s in range(0, held, b):
                yield np.ascontiguousarray(x[s : s + b]), np.ascontiguousarray(y[s : s + b])


# ---------------------------------------------------------------------------------- statistics


class _Moments:
    """Count, mean and sum of squared deviations per column, NaN left out (Chan's merge)."""

    def __init__(self, k: int) -> None:
        self.n = np.zeros(k, dtype=np.float64)
        self.mean = np.zeros(k, dtype=np.float64)
        self.m2 = np.zeros(k, dtype=np.float64)
        self.lo = np.full(k, np.inf)
        self.hi = np.full(k, -np.inf)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if not len(x):
            return
        ok = ~np.isnan(x)
        nb = ok.sum(axis=0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mb = np.where(nb > 0, np.where(ok, x, 0.0).sum(axis=0) / np.maximum(nb, 1), 0.0)
            m2b = np.where(ok, (x - mb) ** 2, 0.0).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        safe = np.maximum(n, 1)
        self.mean = self.mean + delta * nb / safe
        self.m2 = self.m2 + m2b + delta * delta * self.n * nb / safe
        self.n = n
        with np.errstate(invalid="ignore"):
            self.lo = np.fmin(self.lo, np.nanmin(np.where(ok, x, np.inf), axis=0))
            self.hi = np.fmax(self.hi, np.nanmax(np.where(ok, x, -np.inf), axis=0))


class _Tally:
    """Contract violations of one split over a stream: failing rows per rule, first examples."""

    def __init__(self, contract: str, split: str) -> None:
        self.contract, self.split, self.rows = contract, split, 0
        self.by: dict[tuple[str, str], dict[str, Any]] = {}
        self.dropped, self.ids = 0, []

    def add(self, report: ContractReport, dropped: int) -> None:
        self.rows += report.rows
        self.dropped += dropped
        for v in report.violations:
            t = self.by.setdefault((v.rule, v.feature), {"failing": 0, "examples": [], "detail": v.detail})
            t["failing"] += v.failing
            t["examples"] = (t["examples"] + list(v.examples))[:MAX_EXAMPLES]
        if dropped and len(self.ids) < MAX_DROPPED_IDS:
            self.ids += report.failing_rows()[: MAX_DROPPED_IDS - len(self.ids)].tolist()

    def report(self) -> ContractReport:
        return ContractReport(self.contract, self.split, self.rows, tuple(
            Violation(rule, feature, t["failing"], self.rows, tuple(t["examples"]), t["detail"])
            for (rule, feature), t in self.by.items()))


class _BottomK:
    """The ``k`` train rows with the smallest second row hash: a seeded uniform sample, the same
    whatever order row groups arrive in; its first ``n`` rows (by hash) are the bottom-n."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seed = int(k), int(seed)
        self.h = np.empty(0)
        self.parts: dict[str, Any] = {}

    def add(self, ids: np.ndarray, **columns: Any) -> None:
        if not len(ids) or not self.k:
            return
        h = row_uniform(ids, self.seed, 2)
        if len(self.h) >= self.k:
            keep = h < self.h.max()
            if not keep.any():
                return
            h = h[keep]
            columns = {n: _take(v, keep) for n, v in columns.items()}
        allh = np.concatenate([self.h, h])
        merged = {n: _cat(self.parts.get(n), v) for n, v in columns.items()}
        if len(allh) > self.k:
            top = np.argpartition(allh, self.k - 1)[: self.k]
            allh = allh[top]
            merged = {n: _take(v, top) for n, v in merged.items()}
        self.h, self.parts = allh, merged

    def ordered(self) -> dict[str, Any]:
        order = np.argsort(self.h, kind="stable")
        return {n: _take(v, order) for n, v in self.parts.items()}


def _take(v: Any, idx: np.ndarray) -> Any:
    if isinstance(v, dict):
        return {k: a[idx] for k, a in v.items()}
    return v[idx]


def _cat(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if isinstance(b, dict):
        return {k: np.concatenate([a[k], b[k]]) for k in b}
    return np.concatenate([a, b])


# ---------------------------------------------------------------------------------- data module


class StreamingTableDataModule(L.LightningDataModule):
    """A labelled table read in row groups from Parquet (a CSV converted once), for tables larger
    than memory: satisfies :class:`keel.data.protocol.KeelDataModule` (module docstring: design).

    Args (as :class:`keel.data.TableDataModule`, plus):
        holdout_rows: cap on the val and on the test rows (held in memory).
        shuffle_rows: the training shuffle buffer, in rows.
        sample_rows: train rows kept as a seeded sample (drift bin edges; ``split_arrays("train",
            limit=n)`` for n up to this reads no file).
        row_group_rows: row group size of the Parquet copy of a CSV.
        cache_dir: where the Parquet copy of a CSV goes (named by the CSV's sha256).

    Raises:
        KeelError: options streaming cannot honour (``on_device``), bad values.
    """

    def __init__(self, path: str | None, target: str, format: str = "auto", contract: Any = None,
                 task: str = "auto", infer_margin: float = 0.1, batch_size: int = 64, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, split_seed: int = 0, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False, on_device: bool = False, on_violation: str = "raise",
                 class_weights: Any = None, drift: Mapping[str, Any] | None = None, holdout_rows: int = 100_000,
                 shuffle_rows: int = 65_536, sample_rows: int = 50_000, row_group_rows: int = 65_536,
                 cache_dir: str = "outputs/cache/tables") -> None:
        super().__init__()
        from keel.data.drift import DriftThresholds
        from keel.data.in_memory import ON_VIOLATION, TASK_CHOICES

        if path is None:
            raise KeelError("data.streaming=true reads a file: this table is embedded (no data.path). "
                            "Fix: data.streaming=false")
        if on_violation not in ON_VIOLATION:
            raise KeelError(f"data.on_violation={on_violation!r}: expected one of {list(ON_VIOLATION)}")
        if task not in TASK_CHOICES:
            raise KeelError(f"task={task!r}: expected one of {', '.join(TASK_CHOICES)}. Fix: e.g. task=auto")
        if on_device:
            raise KeelError("data.on_device=true with data.streaming=true: streamed rows are read batch by batch, "
                            "they cannot live in device memory. Fix: data.on_device=false (or data.streaming=false "
                            "for a table that fits)")
        self.path, self.target, self.format = path, target, format
        self.requested_task, self.infer_margin = task, float(infer_margin)
        self.contract = None if contract is None else contract_from_dict(load_contract_spec(contract))
        if self.contract is not None:
            self._check_task(self.contract)
            if self.contract.target != target:
                raise KeelError(f"data.target={target!r} but the contract's target is {self.contract.target!r}. "
                                f"Fix: data.target={self.contract.target}")
        self.batch_size, self.val_fraction, self.test_fraction = int(batch_size), val_fraction, test_fraction
        self.split_seed, self.seed, self.num_workers, self.pin_memory = split_seed, seed, int(num_workers), pin_memory
        self.on_violation, self.class_weights = on_violation, class_weights
        drift = dict(drift or {})
        self.drift_enabled = bool(drift.pop("enabled", True))
        self.drift_thresholds = DriftThresholds.from_dict(drift)
        self.holdout_rows, self.shuffle_rows = int(holdout_rows), int(shuffle_rows)
        self.sample_rows, self.row_group_rows, self.cache_dir = int(sample_rows), int(row_group_rows), cache_dir
        self.reports: dict[str, ContractReport] = {}
        self.dropped: dict[str, Any] = {}
        self.drift: dict[str, Any] = {}
        self.reference: dict[str, Any] = {}
        self._preprocessing: dict[str, Any] = {}
        self._holdout: dict[str, TensorDataset] = {}
        self.table: ParquetTable | None = None

    # ------------------------------------------------------------------ shared with the in-memory module
    def _check_task(self, contract: Any) -> None:
        task = self.requested_task
        if task != "auto" and task != contract.task:
            raise KeelError(f"data contract {contract.name!r} declares a {contract.task} target but task={task}. "
                            f"Fix: task={contract.task} (or task=auto), or give a {task} contract")

    @property
    def task(self) -> str:
        return self.contract.task if self.contract is not None else self.requested_task

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def source(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ setup
    def _parquet(self) -> Path:
        fmt = table_format(self.path, self.format)
        if fmt == "parquet":
            return Path(self.path)
        out, made = csv_to_parquet(self.path, self.cache_dir, self.row_group_rows)
        log.info("data.streaming: %s %s Parquet copy %s (row groups of %d rows; reused while the CSV's sha256 is "
                 "unchanged)", self.path, "converted once to the" if made else "read from its", out,
                 self.row_group_rows)
        return out

    def setup(self, stage: str | None = None) -> None:
        """Reads the file's metadata, infers a contract if none is given (one pass), checks the
        schema, then one pass for the contract reports, statistics, sample and held-out rows, and
        (drift enabled) one for the drift bins and leakage. Later calls are no-ops."""
        if self.table is not None:
            return
        table = ParquetTable(self._parquet(), self.source)
        if table.group_rows.max() > LARGE_GROUP_ROWS:
            log.warning("data.streaming: %s has row groups of up to %d rows; each reading process holds one decoded "
                        "row group. Smaller groups (e.g. 65536 rows) keep memory lower", self.source,
                        table.group_rows.max())
        if self.contract is None:
            self.contract = self._infer_contract(table)
            self._check_task(self.contract)
            log.warning("data: no contract given; inferred one from %s (one streaming pass). Pin it with "
                        "`keel contract infer` and data.contract (a copy is in the run's data/contract.yaml)",
                        self.source)
        problems = schema_problems(table.schema, self.contract)
        if problems:
            raise StreamingError(
                f"{self.source}: the Parquet schema does not match data contract {self.contract.name!r}:\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "\nFix: write the file with the contract's columns and types, or give the contract that describes "
                "it (data.contract; `keel contract infer FILE --target COLUMN` writes one)")
        self.rule = SplitRule(table.rows, self.val_fraction, self.test_fraction, self.holdout_rows, self.split_seed)
        self._reader = UnitReader(table, self.contract, self.rule, self.on_violation, self.drift_enabled)
        self._first_pass(table)
        if self.drift_enabled:
            self._drift_pass(table)
        self.table = table
        log.info(
            "data %s (streamed): %d rows in %d row groups -> train %d, val %d, test %d (val/test held in memory, at "
            "most %d each); contract %r checked on every row group%s", self.source, table.rows, table.groups,
            *(self.split_sizes()[s] for s in SPLITS), self.holdout_rows, self.contract.name,
            f"; dropped {self.dropped['total']} rows" if self.dropped else "",
        )

    def _first_pass(self, table: ParquetTable) -> None:
        contract = self.contract
        numeric = [j for j, c in enumerate(contract.columns) if c.numeric]
        moments = _Moments(len(numeric))
        tallies = {s: _Tally(contract.name, s) for s in SPLITS}
        train_rows = np.zeros(table.groups, dtype=np.int64)
        class_counts = np.zeros(max(contract.num_classes, 1), dtype=np.int64)
        target = _Moments(1)
        sample = _BottomK(self.sample_rows, self.split_seed)
        hold: dict[str, dict[str, list]] = {s: {"x": [], "y": [], "drift": []} for s in ("val", "test")}
        ref = None
        if self.drift_enabled:
            from keel.data.drift import StreamingReference

            kinds = {c.name: "numeric" if c.numeric else "categorical" for c in contract.columns}
            ref = StreamingReference(kinds, self.drift_thresholds.bins)
            self._target_ref = StreamingReference({"target": "numeric"}, self.drift_thresholds.bins) \
                if self.regression else None
        for item in iterate_units(self._reader, list(range(table.groups)), "all", self.num_workers):
            for split, part in item["splits"].items():
                tallies[split].add(part["report"], part["dropped"])
            tr = item["splits"]["train"]
            train_rows[item["group"]] = len(tr["y"])
            moments.add(tr["x"][:, numeric])
            if self.regression:
                target.add(tr["y"])
                if self._target_ref is not None:
                    self._target_ref.add({"target": tr["y"].astype(np.float64)})
            else:
                class_counts += np.bincount(tr["y"], minlength=len(class_counts))
            extra = {"drift": tr["drift"]} if ref is not None else {}
            sample.add(tr["ids"], x=tr["x"], y=tr["y"], **extra)
            if ref is not None:
                ref.add(tr["drift"])
            for s in ("val", "test"):
                part = item["splits"][s]
                hold[s]["x"].append(part["x"])
                hold[s]["y"].append(part["y"])
                if ref is not None:
                    hold[s]["drift"].append(part["drift"])
        self.reports = {s: t.report() for s, t in tallies.items()}
        total = sum(t.dropped for t in tallies.values())
        if total:
            self.dropped = {"total": total, "splits": {
                s: {"dropped": t.dropped, "kept": t.rows - t.dropped,
                    "by_rule": {f"{r} on {f}": v["failing"] for (r, f), v in t.by.items()},
                    "rows": t.ids, "rows_listed": len(t.ids)}
                for s, t in tallies.items() if t.dropped}}
            for s, t in tallies.items():
                if t.dropped:
                    log.warning("data.on_violation=drop: dropped %d of %d rows of split %r (%s)", t.dropped, t.rows, s,
                                "; ".join(f"{r} on {f}: {v['failing']}" for (r, f), v in t.by.items()))
        self._train_rows = train_rows
        for s in ("val", "test"):
            x = np.concatenate(hold[s]["x"]) if hold[s]["x"] else np.empty((0, len(contract.columns)), np.float32)
            y = np.concatenate(hold[s]["y"]) if hold[s]["y"] else np.empty(0)
            y = np.require(y, dtype=np.float32 if self.regression else np.int64, requirements=["C", "W"])
            self._holdout[s] = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
            if ref is not None:
                parts = hold[s]["drift"]
                self._holdout_drift = getattr(self, "_holdout_drift", {})
                self._holdout_drift[s] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        empty = [s for s, n in self.split_sizes_raw(train_rows).items() if n == 0]
        if empty:
            raise KeelError(f"data.streaming: split(s) {empty} of {self.source} have no rows "
                            f"({table.rows} rows; val/test shares {self.rule.val:.3g}/{self.rule.test:.3g}). Fix: a "
                            "larger file, larger data.val_fraction/test_fraction, or data.on_violation=raise to see "
                            "what was dropped")
        self._sample = sample.ordered()
        self._class_counts = class_counts.tolist()
        self._target_moments = target
        std = np.maximum(np.sqrt(np.where(moments.n > 1, moments.m2 / np.maximum(moments.n - 1, 1), 1.0)), 1e-6)
        mean = np.where(moments.n > 0, moments.mean, 0.0)
        categorical = [j for j, c in enumerate(contract.columns) if not c.numeric]
        self._preprocessing = {
            "type": "tabular",
            "columns": contract.feature_names,
            "numeric": numeric,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "fill": mean.tolist(),
            "nullable": [bool(contract.columns[j].nullable) for j in numeric],
            "categorical": categorical,
            "cardinalities": [len(contract.columns[j].categories or ()) for j in categorical],
        }
        self._stream_ref = ref

    def split_sizes_raw(self, train_rows: np.ndarray) -> dict[str, int]:
        return {"train": int(train_rows.sum()), **{s: len(self._holdout[s]) for s in ("val", "test")}}

    def _drift_pass(self, table: ParquetTable) -> None:
        from keel.data.drift import (
            _worst,
            compare,
            label_shift_counts,
            shared_row_mask,
            target_drift,
        )

        ref, tref, th = self._stream_ref, self._target_ref, self.drift_thresholds
        ref.set_edges(self._sample["drift"])
        if tref is not None:
            tref.set_edges({"target": self._sample["y"].astype(np.float64)})
        found = {s: np.zeros(len(self._holdout[s]), dtype=bool) for s in ("val", "test")}
        hold_x = {s: self._holdout[s].tensors[0].numpy() for s in ("val", "test")}
        for item in iterate_units(self._reader, list(range(table.groups)), "bins", self.num_workers):
            tr = item["splits"]["train"]
            ref.add_bins(tr["drift"])
            if tref is not None:
                tref.add_bins({"target": tr["y"].astype(np.float64)})
            for s in found:
                if len(tr["x"]) and len(hold_x[s]):
                    found[s] |= shared_row_mask(tr["x"], hold_x[s])
        stats = ref.result()
        target_ref = tref.result()["features"]["target"] if tref is not None else None
        classes = list(self.contract.classes)
        n_train = int(self._train_rows.sum())
        out = {}
        for s in ("val", "test"):
            y = self._holdout[s].tensors[1].numpy()
            drift = compare(stats, self._holdout_drift[s], th)
            labels = None
            if not self.regression:
                labels = label_shift_counts(self._class_counts + [0], np.asarray(classes, dtype=object)[y], classes, th)
            leak = int(found[s].sum())
            leakage = {"count": leak, "fraction": leak / len(y) if len(y) else 0.0, "rows": len(y),
                       "examples": [int(i) for i in np.flatnonzero(found[s])[:MAX_EXAMPLES].tolist()]}
            status = [drift["status"]] + ([labels["status"]] if labels is not None else [])
            entry: dict[str, Any] = {"features": drift["features"], "summary": drift["summary"], "labels": labels}
            if target_ref is not None:
                entry["target"] = target_drift(target_ref, y.astype(np.float64), th)
                status.append(entry["target"]["status"])
            if leak:
                status.append("warn")
            entry["summary"]["psi_noise_floor"] = (th.bins - 1) * (1 / max(n_train, 1) + 1 / max(len(y), 1))
            out[s] = {**entry, "leakage": leakage, "status": _worst(status)}
            summary = entry["summary"]
            if summary["n_alert"] or leak or (target_ref is not None and entry["target"]["status"] == "alert"):
                log.warning("drift train->%s: %d features alert, %d warn (noise PSI ~%.3g); %d rows also in train "
                            "(leakage)", s, summary["n_alert"], summary["n_warn"], summary["psi_noise_floor"], leak)
        report = {"thresholds": th.to_dict(), "reference": stats, "splits": out,
                  "status": _worst([r["status"] for r in out.values()]),
                  "streaming": {"bin_edges": f"quantiles of a seeded sample of {len(self._sample['y'])} train rows",
                                "counts": "exact (every train row)"}}
        if target_ref is not None:
            report["target_reference"] = target_ref
        self.drift, self.reference = report, stats

    def _infer_contract(self, table: ParquetTable) -> Any:
        """A contract from one pass over the file: what :func:`keel.data.table_contract.infer_contract`
        infers from a whole table (dtypes, nullability, ranges widened by ``infer_margin``,
        categories, classes or the target's range), from per-row-group summaries."""
        import pandas as pd
        import pyarrow as pa

        from keel.data.contract import ContractError
        from keel.data.table_contract import TableContract, _numeric_view
        from keel.tasks.infer import MIN_VALUES_NUMBER, infer_task

        if self.target not in table.schema.names:
            raise TableReadError(f"{self.source}: no label column {self.target!r}; columns are {table.schema.names}. "
                                 "Fix: data.target=<the label column>")
        max_categories = 50
        kinds: dict[str, str] = {}
        for f in table.schema:
            t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            if pa.types.is_boolean(t):
                kinds[f.name] = "bool"
            elif pa.types.is_integer(t):
                kinds[f.name] = "int"
            elif pa.types.is_floating(t) or pa.types.is_null(t):
                kinds[f.name] = "float"
            else:
                kinds[f.name] = "text"
        acc: dict[str, dict[str, Any]] = {n: {"null": False, "lo": None, "hi": None, "values": set(), "whole": True}
                                          for n in kinds}
        for g in range(table.groups):
            df = table.read(g)
            for name, kind in kinds.items():
                s, a = df[name], acc[name]
                a["null"] |= bool(s.isna().any())
                if kind == "text" or (name == self.target and kind == "bool"):
                    if len(a["values"]) <= max(max_categories, 1000):
                        a["values"] |= {str(v) for v in s.dropna().unique()}
                    continue
                v = _numeric_view(s).to_numpy(dtype=np.float64)
                v = v[~np.isnan(v)]
                if not v.size:
                    continue
                lo, hi = float(v.min()), float(v.max())
                a["lo"] = lo if a["lo"] is None else min(a["lo"], lo)
                a["hi"] = hi if a["hi"] is None else max(a["hi"], hi)
                if name == self.target:
                    fin = v[np.isfinite(v)]
                    a["whole"] &= bool(np.all(fin == np.round(fin)))
                    if len(a["values"]) <= MIN_VALUES_NUMBER + 1:
                        a["values"] |= set(np.unique(fin).tolist())
        t, tk = acc[self.target], kinds[self.target]
        task = self.requested_task
        if task == "auto":
            if tk in ("text", "bool"):
                sample = pd.Series(sorted(t["values"]), dtype=object)
            elif not t["whole"]:
                sample = pd.Series([0.5, 1.5])
            else:
                sample = pd.Series(sorted(t["values"]), dtype=np.float64)
            found = infer_task(sample, self.target)
            log.info("task=auto: %s (%s; from the distinct target values of a streaming pass)", found.task, found.reason)
            task = found.task
        cols: dict[str, Any] = {}
        m = self.infer_margin
        for name, kind in kinds.items():
            if name == self.target:
                continue
            a = acc[name]
            if kind == "bool":
                cols[name] = {"dtype": "bool", "nullable": a["null"], "min": 0, "max": 1}
            elif kind in ("int", "float"):
                dtype = "int64" if kind == "int" and not a["null"] else "float64"
                lo, hi = a["lo"], a["hi"]
                if lo is not None:
                    pad = (hi - lo) * m
                    lo, hi = lo - pad, hi + pad
                    if dtype == "int64" and m == 0:
                        lo, hi = int(lo), int(hi)
                cols[name] = {"dtype": dtype, "nullable": a["null"], "min": lo, "max": hi}
            else:
                if len(a["values"]) > max_categories:
                    raise ContractError(f"column {name!r} of {self.source} has more than {max_categories} distinct "
                                        "text values: drop it, encode it, or pin a contract (data.contract)")
                cols[name] = {"dtype": "category", "nullable": a["null"], "categories": sorted(a["values"])}
        name = Path(self.source).name.split(".")[0]
        if task == "regression":
            rng = None
            if t["lo"] is not None:
                pad = (t["hi"] - t["lo"]) * m
                rng = [t["lo"] - pad, t["hi"] + pad]
            return TableContract.from_dict({"kind": "table", "name": name, "task": "regression", "target": self.target,
                                            "target_range": rng, "columns": cols})
        if tk in ("int", "float") and t["whole"]:
            classes: list[Any] = sorted(int(v) for v in t["values"])
        else:
            classes = sorted(str(v) for v in t["values"])
        return TableContract.from_dict({"kind": "table", "name": name, "target": self.target, "classes": classes,
                                        "columns": cols})

    # ------------------------------------------------------------------ what the model needs
    @property
    def preprocessing(self) -> dict[str, Any]:
        if not self._preprocessing:
            raise RuntimeError("call setup() before reading preprocessing")
        return self._preprocessing

    @property
    def net_input_shape(self) -> list[int]:
        return [self.contract.encoded_width()]

    def split_sizes(self) -> dict[str, int]:
        return self.split_sizes_raw(self._train_rows)

    def class_counts(self, split: str = "train") -> list[int]:
        if self.regression:
            raise KeelError(f"class_counts: rows per class are a classification statistic, but data contract "
                            f"{self.contract.name!r} has a regression target. Fix: use target_stats() for regression")
        if split == "train":
            return list(self._class_counts)
        return torch.bincount(self._holdout[split].tensors[1], minlength=self.contract.num_classes).tolist()

    def target_stats(self, split: str = "train") -> dict[str, float | int]:
        """As :meth:`keel.data.InMemoryDataModule.target_stats`; the train split's from the stream (exact)."""
        if self.table is None:
            self.setup()
        if not self.regression:
            raise KeelError(f"target_stats: mean/std of the target are a regression statistic, but data contract "
                            f"{self.contract.name!r} has class labels. Fix: use class_counts() for classification")
        if split != "train":
            y = self._holdout[split].tensors[1].numpy().astype(np.float64)
            return {"mean": float(y.mean()), "std": max(float(np.std(y, ddof=1)) if y.size > 1 else 1.0, 1e-12),
                    "min": float(y.min()), "max": float(y.max()), "rows": int(y.size)}
        t = self._target_moments
        n = int(t.n[0])
        std = math.sqrt(t.m2[0] / (n - 1)) if n > 1 else 1.0
        return {"mean": float(t.mean[0]), "std": max(std, 1e-12), "min": float(t.lo[0]), "max": float(t.hi[0]),
                "rows": n}

    def split_arrays(self, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encoded features and targets of a split, at most ``limit`` rows, always the same ones:
        val/test the held-out arrays' first rows; train the rows with the smallest second row
        hash (a seeded uniform sample: from memory up to ``sample_rows``, else one pass).
        ``limit=None`` on train reads the whole train split into memory (logged)."""
        if self.table is None:
            self.setup()
        if split != "train":
            x, y = self._holdout[split].tensors
            return x.numpy()[:limit], y.numpy()[:limit]
        if limit is not None and limit <= len(self._sample["y"]):
            return self._sample["x"][:limit], self._sample["y"][:limit]
        if limit is None:
            log.warning("split_arrays('train') without a limit reads all %d streamed train rows into memory",
                        int(self._train_rows.sum()))
        keep = _BottomK(limit if limit is not None else int(self._train_rows.sum()), self.split_seed)
        for item in iterate_units(self._reader, list(range(self.table.groups)), "train", self.num_workers):
            tr = item["splits"]["train"]
            keep.add(tr["ids"], x=tr["x"], y=tr["y"])
        got = keep.ordered()
        return got["x"], got["y"]

    def data_report(self) -> dict[str, Any]:
        from keel.data.protocol import contract_data_report

        return contract_data_report(
            self,
            streaming={"parquet": str(self.table.path), "row_groups": self.table.groups, "rows": self.table.rows,
                       "split": {"rule": "seeded hash of the global row index", "seed": self.split_seed,
                                 "val_share": self.rule.val, "test_share": self.rule.test,
                                 "holdout_rows": self.holdout_rows}},
        )

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_loader(self, rank: int = 0, world: int = 1, shuffle: bool = True, pad: bool = True) -> StreamingLoader:
        """This rank's training loader (:class:`StreamingLoader`); ``rank``/``world`` as DDP's."""
        if self.table is None:
            self.setup()
        shares = assign_groups(self._train_rows, world)
        if world > 1 and any(not g for g in shares):
            raise KeelError(f"data.streaming: {self.source} has {self.table.groups} row groups for {world} processes: "
                            "some would have nothing to read. Fix: write the Parquet file with smaller row groups "
                            "(at least one per process; data.stream.row_group_rows for a CSV)")
        pad_to = None
        if pad and world > 1:
            pad_to = max(math.ceil(sum(int(self._train_rows[g]) for g in s) / self.batch_size) for s in shares)
        loader = StreamingLoader(self._reader, shares[rank], self._train_rows, self.batch_size, shuffle, self.seed,
                                 rank, pad_to, self.shuffle_rows, self.num_workers)
        if world > 1:
            log.info("rank %d of %d: %d of %d row groups, %d train rows in %d batches%s", rank, world, len(shares[rank]),
                     self.table.groups, loader.rows, len(loader), ", padded to equal length" if pad_to else "")
        return loader

    def train_dataloader(self) -> StreamingLoader:
        return self.train_loader(*self._rank_world())

    def _eval_loader(self, split: str) -> DataLoader:
        if self.table is None:
            self.setup()
        rank, world = self._rank_world()
        sampler = IndexBatchSampler(len(self._holdout[split]), self.batch_size, shuffle=False, seed=self.seed,
                                    rank=rank, world_size=world, pad=False)
        return DataLoader(self._holdout[split], sampler=sampler, batch_size=None, num_workers=0,
                          pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


__all__ = ["ParquetTable", "SplitRule", "StreamingError", "StreamingLoader", "StreamingTableDataModule", "UnitReader",
           "assign_groups", "row_uniform", "schema_problems"]
