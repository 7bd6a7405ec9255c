"""keel.serve.batching: concurrent requests share model calls, and each caller gets its own rows."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from keel.errors import KeelError
from keel.serve.batching import BatcherClosed, MicroBatcher, split_outputs


class FakeModel:
    """Row i -> (i's value * 2, its sum): tells every row's answer apart; records each call's rows."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        self.calls.append(len(x))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model failed")
        return x * 2, x.sum(axis=1)


def _rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, axis=1)


async def _burst(batcher: MicroBatcher, sizes: list[int]) -> list[tuple[np.ndarray, ...]]:
    await batcher.start()
    starts = np.cumsum([0, *sizes[:-1]]) * 10
    try:
        return await asyncio.gather(*(batcher.submit(_rows(int(s), n)) for s, n in zip(starts, sizes)))
    finally:
        await batcher.close()


def test_requests_within_the_window_share_one_call_and_get_their_own_rows():
    model, stats = FakeModel(), []
    sizes = [1, 3, 2, 5, 1]
    batcher = MicroBatcher(model, window_s=0.05, max_rows=64, on_batch=stats.append)
    got = asyncio.run(_burst(batcher, sizes))
    assert model.calls == [sum(sizes)]
    assert [(s.rows, s.requests) for s in stats] == [(12, 5)] and stats[0].seconds >= 0
    starts = np.cumsum([0, *sizes[:-1]]) * 10
    for (doubled, total), s, n in zip(got, starts, sizes):
        x = _rows(int(s), n)
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(total, x.sum(axis=1))


def test_max_rows_caps_a_call_and_a_large_request_runs_alone_whole():
    model = FakeModel()
    batcher = MicroBatcher(model, window_s=0.05, max_rows=4)
    got = asyncio.run(_burst(batcher, [2, 2, 3, 10, 1]))
    # 2+2 fill a call; 3 does not fit beside them; 10 > max runs alone; 1 joins no one after it
    assert model.calls == [4, 3, 10, 1]
    assert [len(g[0]) for g in got] == [2, 2, 3, 10, 1]
    np.testing.assert_array_equal(got[3][0], _rows(70, 10) * 2)


def test_a_lone_request_runs_at_once_without_waiting_the_window():
    model = FakeModel()

    async def one() -> float:
        batcher = MicroBatcher(model, window_s=0.5, max_rows=64)
        await batcher.start()
        t = time.perf_counter()
        got = await batcher.submit(_rows(7, 1))
        elapsed = time.perf_counter() - t
        await batcher.close()
        np.testing.assert_array_equal(got[0], _rows(7, 1) * 2)
        return elapsed

    elapsed = asyncio.run(one())
    assert elapsed < 0.25 and model.calls == [1]  # nothing else on its way: no wait for the 0.5 s window


def test_a_call_waits_for_announced_requests_and_shares_with_them():
    model = FakeModel()

    async def go() -> tuple[float, list]:
        batcher = MicroBatcher(model, window_s=2.0, max_rows=64)
        await batcher.start()

        async def announced(start: int, n: int, delay: float) -> tuple:
            with batcher.incoming():  # the server reading and checking a body
                await asyncio.sleep(delay)
            return await batcher.submit(_rows(start, n))

        t = time.perf_counter()
        got = await asyncio.gather(batcher.submit(_rows(0, 1)), announced(10, 2, 0.05), announced(20, 3, 0.1))
        elapsed = time.perf_counter() - t
        await batcher.close()
        return elapsed, got

    elapsed, got = asyncio.run(go())
    assert model.calls == [6]  # the first waited for the two on their way, then ran all at once
    assert elapsed < 1.0  # not the 2 s window: it stopped waiting when none was left on its way
    for (doubled, total), (s, n) in zip(got, [(0, 1), (10, 2), (20, 3)]):
        np.testing.assert_array_equal(doubled, _rows(s, n) * 2)
        np.testing.assert_array_equal(total, _rows(s, n).sum(axis=1))


def test_the_window_bounds_the_wait_for_a_slow_announced_request():
    model = FakeModel()

    async def go() -> float:
        batcher = MicroBatcher(model, window_s=0.03, max_rows=64)
        await batcher.start()
        release = asyncio.Event()

        async def slow() -> tuple:
            with batcher.incoming():
                await release.wait()
            return await batcher.submit(_rows(5, 1))

        other = asyncio.ensure_future(slow())
        await asyncio.sleep(0)
        t = time.perf_counter()
        await batcher.submit(_rows(0, 1))
        elapsed = time.perf_counter() - t
        release.set()
        await other
        await batcher.close()
        return elapsed

    elapsed = asyncio.run(go())
    assert 0.025 <= elapsed < 0.5 and model.calls == [1, 1]


def test_window_zero_still_merges_what_is_already_queued():
    model = FakeModel()
    asyncio.run(_burst(MicroBatcher(model, window_s=0.0, max_rows=64), [1, 1, 1]))
    assert model.calls == [3]  # all three were queued before the worker looked


def test_requests_arriving_during_a_call_form_the_next_batch():
    model = FakeModel(delay=0.1)

    async def go() -> None:
        batcher = MicroBatcher(model, window_s=0.0, max_rows=64)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(_rows(0, 1)))
        await asyncio.sleep(0.03)  # the first call is running
        later = [asyncio.ensure_future(batcher.submit(_rows(10 * i, 2))) for i in range(1, 4)]
        await asyncio.gather(first, *later)
        await batcher.close()

    asyncio.run(go())
    assert model.calls == [1, 6]


def test_a_model_error_reaches_every_caller_of_the_batch_and_the_batcher_goes_on():
    model = FakeModel(fail=True)

    async def go() -> list:
        batcher = MicroBatcher(model, window_s=0.02, max_rows=64)
        await batcher.start()
        got = await asyncio.gather(batcher.submit(_rows(0, 1)), batcher.submit(_rows(1, 1)), return_exceptions=True)
        model.fail = False
        after = await batcher.submit(_rows(5, 1))
        await batcher.close()
        return [*got, after]

    a, b, after = asyncio.run(go())
    assert isinstance(a, RuntimeError) and isinstance(b, RuntimeError) and str(a) == "model failed"
    np.testing.assert_array_equal(after[0], _rows(5, 1) * 2)


def test_close_answers_what_was_queued_then_refuses_new_requests():
    model = FakeModel(delay=0.05)

    async def go() -> tuple:
        batcher = MicroBatcher(model, window_s=0.01, max_rows=2)
        await batcher.start()
        queued = [asyncio.ensure_future(batcher.submit(_rows(i, 1))) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        with pytest.raises(BatcherClosed, match="shutting down"):
            await batcher.submit(_rows(0, 1))
        return tuple(await asyncio.gather(*queued))

    got = asyncio.run(go())
    assert len(got) == 5 and sum(model.calls) == 5 and max(model.calls) <= 2


def test_a_caller_that_left_is_not_run():
    model = FakeModel()

    async def go() -> None:
        batcher = MicroBatcher(model, window_s=0.05, max_rows=64)
        await batcher.start()
        gone = asyncio.ensure_future(batcher.submit(_rows(0, 4)))
        await asyncio.sleep(0)
        gone.cancel()
        await batcher.submit(_rows(10, 1))
        await batcher.close()

    asyncio.run(go())
    assert model.calls == [1]


def test_split_outputs_and_bad_settings():
    parts = split_outputs((np.arange(6), np.arange(6) * 10), [1, 0, 5])
    assert [p[0].tolist() for p in parts] == [[0], [], [1, 2, 3, 4, 5]] and parts[2][1].tolist() == [10, 20, 30, 40, 50]
    with pytest.raises(KeelError, match="returned 5 rows for a batch of 6"):
        split_outputs((np.arange(5),), [3, 3])
    with pytest.raises(KeelError, match="max batch 0: expected an integer >= 1"):
        MicroBatcher(FakeModel(), max_rows=0)
    with pytest.raises(KeelError, match="batch window -1"):
        MicroBatcher(FakeModel(), window_s=-1)
