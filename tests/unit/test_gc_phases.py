"""keel.gc_phases: collection off while a job starts, frozen start-up heap while it trains, and the
process's collector as it was once the job is over (however it ends)."""

from __future__ import annotations

import gc

import pytest

from keel import gc_phases


@pytest.fixture(autouse=True)
def _collector_restored():
    was_on = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if was_on else gc.disable)()


def test_a_job_pauses_settles_and_restores():
    gc.enable()
    gc.unfreeze()
    with gc_phases.job():
        assert not gc.isenabled()  # start-up: no automatic collections
        keep = [[] for _ in range(100)]  # objects alive at the settle
        gc_phases.settle()
        assert gc.isenabled() and gc.get_freeze_count() >= len(keep)
        gc_phases.pause()  # testing/export ahead
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_the_collector_comes_back_when_the_job_fails():
    gc.enable()
    with pytest.raises(RuntimeError, match="boom"), gc_phases.job():
        gc_phases.settle()
        gc_phases.pause()
        raise RuntimeError("boom")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_outside_a_job_nothing_changes():
    gc.enable()
    gc.unfreeze()
    gc_phases.pause()
    assert gc.isenabled()
    gc_phases.settle()
    assert gc.get_freeze_count() == 0


def test_a_collector_the_user_turned_off_stays_off():
    gc.disable()
    with gc_phases.job():
        gc_phases.settle()
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_nested_jobs_are_one():
    gc.enable()
    with gc_phases.job():
        with gc_phases.job():
            pass
        assert not gc.isenabled()  # the inner one did not end the outer
        gc_phases.settle()
    assert gc.isenabled() and gc.get_freeze_count() == 0
