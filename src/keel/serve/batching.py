"""Dynamic micro-batching for ``keel serve``: requests that arrive together run as one model
call, and each caller gets back its own rows (asyncio + numpy; no torch).

Why: an ONNX Runtime call has a fixed cost (~50-100 us here for a small MLP) that a batch of
64 rows shares; under concurrent load, batching turns N calls into one.

The rule (adaptive): one worker task takes the first queued request and every request already
queued behind it (up to ``max_rows`` rows), and runs them as one call at once, unless other
requests are on their way in (the server announces each one with :meth:`MicroBatcher.incoming`
while it reads and checks the body): then it waits for them, at most ``window_s`` after it took
the first, and stops waiting as soon as none is on its way. So a lone request never waits;
requests that queue while a call runs (in a single worker thread: the event loop keeps accepting
requests meanwhile) form the next call without waiting; the window only bounds how long a call
waits for requests already being read. The model's outputs are split back by each request's row
count. A request that would overflow the batch waits for the next one; a single request with
more than ``max_rows`` rows runs alone, whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.errors import KeelError

Outputs = tuple[np.ndarray, ...]
log = logging.getLogger("keel.serve")


class BatcherClosed(KeelError):
    """The batcher is shutting down and takes no new requests."""


@dataclass(frozen=True)
class BatchStats:
    """One model call: ``rows`` and ``requests`` in it, ``seconds`` the call took (the model
    alone, without queueing)."""

    rows: int
    requests: int
    seconds: float


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future


def split_outputs(outputs: Sequence[np.ndarray], sizes: Sequence[int]) -> list[Outputs]:
    """Each request's share of a batch's ``outputs`` (every array's first axis), in order.

    Raises:
        KeelError: an output whose first axis is not the batch's row count.
    """
    total = int(sum(sizes))
    for o in outputs:
        if len(o) != total:
            raise KeelError(f"the model returned {len(o)} rows for a batch of {total}")
    bounds = np.cumsum([0, *sizes])
    return [tuple(o[a:b] for o in outputs) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


class MicroBatcher:
    """Merge concurrent requests into model calls of at most ``max_rows`` rows.

    Args:
        run: the model: float32 ``(N, ...)`` rows -> a tuple of output arrays with N rows each
            (called in one worker thread, one call at a time).
        window_s: the most a call waits for requests announced by :meth:`incoming` (seconds,
            >= 0; measured from when the worker took its first request). Requests already queued
            always join without waiting; with nothing announced nothing is waited for.
        max_rows: most rows per call, >= 1 (a larger single request runs alone).
        on_batch: called in the event loop after each call with its :class:`BatchStats`.

    Use inside a running event loop: ``await start()``, ``await submit(x)``, ``await close()``.
    """

    def __init__(self, run: Callable[[np.ndarray], Outputs], window_s: float = 0.002, max_rows: int = 64,
                 on_batch: Callable[[BatchStats], Any] | None = None) -> None:
        if not window_s >= 0:
            raise KeelError(f"batch window {window_s!r} s: expected a number >= 0, e.g. 0.002")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise KeelError(f"max batch {max_rows!r}: expected an integer >= 1, e.g. 64")
        self.run, self.window_s, self.max_rows, self.on_batch = run, float(window_s), max_rows, on_batch
        self._items: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None  # set on a submit, an announced request leaving, close
        self._incoming = 0
        self._carry: _Item | None = None
        self._worker: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    async def start(self) -> None:
        """Start the worker task (in the running loop)."""
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="keel-model")
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="keel-batcher")

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request on its way (its body being read and checked): a call about to run
        waits for it (at most the window) while inside. Leave before ``submit``."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            if self._wake is not None and not self._incoming:
                self._wake.set()

    async def submit(self, x: np.ndarray) -> Outputs:
        """The model's outputs for the rows of ``x`` (run in a batch with other requests).

        Raises:
            BatcherClosed: after :meth:`close` began.
            Exception: whatever the model raised for the batch holding these rows.
        """
        if self._closed or self._wake is None:
            raise BatcherClosed("the server is shutting down; no new predictions")
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(x, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Run every request already submitted, then stop the worker; later submits are refused."""
        if self._closed:
            return
        self._closed = True
        if self._wake is not None and self._worker is not None:
            self._wake.set()
            await self._worker
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def _first(self) -> _Item | None:
        """The next request (None: closed and nothing left)."""
        assert self._wake is not None
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        while not self._items:
            if self._closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()

    async def _next_batch(self) -> list[_Item]:
        """The next batch ([]: closed and nothing left)."""
        assert self._wake is not None
        first = await self._first()
        if first is None:
            return []
        loop = asyncio.get_running_loop()
        batch, rows = [first], len(first.x)
        deadline = None
        while rows < self.max_rows:
            if not self._items:
                if not self._incoming or self._closed or not self.window_s:
                    break  # nothing on its way: run now
                if deadline is None:
                    deadline = loop.time() + self.window_s
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            item = self._items[0]
            if rows + len(item.x) > self.max_rows:
                self._carry = self._items.popleft()  # first of the next batch
                break
            batch.append(self._items.popleft())
            rows += len(item.x)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                return
            live = [item for item in batch if not item.future.done()]  # a caller that left is not run
            if not live:
                continue
            sizes = [len(item.x) for item in live]
            start = time.perf_counter()
            try:
                x = live[0].x if len(live) == 1 else np.concatenate([item.x for item in live])
                outputs = await loop.run_in_executor(self._pool, self.run, x)
                parts = split_outputs(outputs, sizes)
            except Exception as e:  # noqa: BLE001  every caller of the batch gets the model's error
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            seconds = time.perf_counter() - start
            for item, part in zip(live, parts):
                if not item.future.done():
                    item.future.set_result(part)
            if self.on_batch is not None:
                try:
                    self.on_batch(BatchStats(int(sum(sizes)), len(live), seconds))
                except Exception:  # noqa: BLE001  bookkeeping must not stop the worker (the answers went out)
                    log.exception("keel serve: recording a batch failed")


__all__ = ["BatchStats", "BatcherClosed", "MicroBatcher", "split_outputs"]
