"""Dynamic micro-batching for ``keel serve``: requests that arrive within a short window run as
one model call, and each caller gets back its own rows (asyncio + numpy; no torch).

Why: an ONNX Runtime call has a fixed cost (~50-100 us here for a small MLP) that a batch of
64 rows shares; under concurrent load, batching turns N calls into one. The window bounds the
latency it adds to a lone request.

How: :meth:`MicroBatcher.submit` queues ``(x, future)``; one worker task takes the first queued
request, then keeps taking requests until the batch holds ``max_rows`` rows or ``window_s`` has
passed since that first one, concatenates their rows, runs the model in a single worker thread
(the event loop keeps accepting requests meanwhile) and splits the outputs back by each
request's row count. A request that would overflow the batch waits for the next one; a single
request with more than ``max_rows`` rows runs alone, whole. Requests that arrive while a batch
runs form the next batch at once (no extra wait when the queue already fills it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
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
        window_s: how long the first request of a batch waits for others (seconds, >= 0;
            0: only requests already queued join it).
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
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._carry: _Item | None = None
        self._worker: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    async def start(self) -> None:
        """Start the worker task (in the running loop)."""
        self._queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="keel-model")
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="keel-batcher")

    async def submit(self, x: np.ndarray) -> Outputs:
        """The model's outputs for the rows of ``x`` (run in a batch with other requests).

        Raises:
            BatcherClosed: after :meth:`close` began.
            Exception: whatever the model raised for the batch holding these rows.
        """
        if self._closed or self._queue is None:
            raise BatcherClosed("the server is shutting down; no new predictions")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(x, future))
        return await future

    async def close(self) -> None:
        """Run every request already submitted, then stop the worker; later submits are refused."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None and self._worker is not None:
            self._queue.put_nowait(None)
            await self._worker
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def _next_batch(self) -> tuple[list[_Item], bool]:
        """(the next batch, whether the close marker was reached)."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        if first is None:
            return [], True
        batch, rows = [first], len(first.x)
        deadline = loop.time() + self.window_s
        while rows < self.max_rows:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            if rows + len(item.x) > self.max_rows:
                self._carry = item  # first of the next batch
                break
            batch.append(item)
            rows += len(item.x)
        return batch, False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        done = False
        while not done or self._carry is not None:
            if done:  # the close marker came after a carried request: run it alone
                batch, self._carry = [self._carry], None
            else:
                batch, done = await self._next_batch()
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
