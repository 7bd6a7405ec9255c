"""Profile summary: the step-time split and operator self times of a Chrome trace; debug=profile config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from keel.callbacks import ProfileSummary
from keel.callbacks.profile_summary import (
    OTHER,
    PRIORITY,
    format_summary,
    operator_self_times,
    split_phases,
    summarize_trace,
)

PL = "[pl][profile]"


def _x(name: str, ts: float, dur: float, cat: str = "user_annotation", tid: int = 1) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur}


def _two_steps() -> dict:
    """Two 100 us steps the way Lightning nests them: forward and backward run inside the
    optimizer step's closure."""
    events = [{"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}}]
    for base in (0.0, 100.0):
        events += [
            _x(f"ProfilerStep#{int(base // 100) + 1}", base, 100),
            _x(f"{PL}[_TrainingEpochLoop].train_dataloader_next", base, 10),
            _x(f"{PL}[LightningModule]Classifier.optimizer_step", base + 10, 80),
            _x(f"{PL}[Strategy]SingleDeviceStrategy.training_step", base + 15, 30),
            _x(f"{PL}[Strategy]SingleDeviceStrategy.backward", base + 50, 30),
            _x("aten::mm", base + 20, 12, cat="cpu_op"),
            _x("aten::addmm", base + 55, 20, cat="cpu_op"),
            _x("aten::mm", base + 60, 5, cat="cpu_op"),  # inside addmm
        ]
    events.append(_x(f"{PL}[Strategy]SingleDeviceStrategy.batch_to_device", 190, 5))
    events.append(_x(f"{PL}[_TrainingEpochLoop].train_dataloader_next", 195, 50))  # runs past the window
    return {"traceEvents": events}


def test_phases_partition_the_window_without_double_counting():
    s = summarize_trace(_two_steps())
    assert s.steps == 2 and s.window_us == 200
    assert s.phases_us == {
        "forward": 60.0,
        "backward": 60.0,
        "data loading": 10 + 10 + 5 + 5,  # the last range is clipped at the window's end
        "optimizer": (80 - 30 - 30) * 2.0,  # the optimizer step without its closure's forward/backward
        OTHER: 200 - 60 - 60 - 30 - 40.0,
    }
    assert sum(s.phases_pct.values()) == pytest.approx(100.0)


def test_steps_past_the_end_of_training_are_left_out():
    trace = _two_steps()
    # the window ran on into validation: a third profiled step ends with a validation step
    trace["traceEvents"] += [
        _x("ProfilerStep#3", 200, 50),
        _x(f"{PL}[Strategy]SingleDeviceStrategy.validation_step", 210, 30),
        _x("aten::mm", 215, 1000, cat="cpu_op"),
    ]
    s = summarize_trace(trace)
    assert s.steps == 2 and s.skipped_steps == 1 and s.window_us == 200
    assert s.operators[0] == {"name": "aten::mm", "calls": 4, "self_us": 34.0, "self_pct": pytest.approx(100 * 34 / 64)}
    text = format_summary(s, "x")
    assert "note    : 1 profiled step(s) were not training steps" in text


def test_trace_without_profiler_steps_is_one_window():
    events = [_x("aten::mm", 0, 10, cat="cpu_op"), _x(f"{PL}[Strategy]SingleDeviceStrategy.backward", 5, 20)]
    s = summarize_trace({"traceEvents": events})
    assert s.steps == 0 and s.window_us == 25 and s.phases_us["backward"] == 20


def test_split_phases_priority_and_clipping():
    out = split_phases([("optimizer", 0, 10), ("forward", 2, 4), ("forward", 3, 6), ("data loading", -5, 1)], 0, 12)
    assert out == {"forward": 4.0, "backward": 0.0, "data loading": 1.0, "optimizer": 5.0, OTHER: 2.0}
    assert set(out) == {*PRIORITY, OTHER}


def test_operator_self_time_subtracts_nested_ops_on_the_same_thread():
    events = [
        _x("a", 0, 50, cat="cpu_op"), _x("b", 10, 20, cat="cpu_op"), _x("c", 12, 5, cat="cpu_op"),
        _x("c", 35, 10, cat="cpu_op"),
        _x("a", 20, 100, cat="cpu_op", tid=2),  # other thread: not a child of the first "a"
        _x("ann", 0, 500),  # annotations are not operators
    ]
    assert operator_self_times(events) == {"a": (2, 20.0 + 100.0), "b": (1, 15.0), "c": (2, 15.0)}


def test_top_operators_by_self_time_with_shares():
    s = summarize_trace(_two_steps(), top_k=1)
    assert [op["name"] for op in s.operators] == ["aten::mm"]  # 2 x (12 + 5) = 34 us vs addmm 2 x 15
    (op,) = s.operators
    assert op["calls"] == 4 and op["self_us"] == 34.0 and op["self_pct"] == pytest.approx(100 * 34 / 64)


def test_formatted_summary_sections():
    text = format_summary(summarize_trace(_two_steps()), "x.pt.trace.json")
    assert "== step time split (host wall time) ==" in text
    assert "== top operators by self CPU time ==" in text
    assert "window  : 2 training steps, 0.20 ms of host time, 0.10 ms/step" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] in (["forward"], ["total"])}
    assert rows["forward"].split()[-2] == "30.0" and rows["total"].split()[-2] == "100.0"


def test_top_k_must_be_positive():
    with pytest.raises(ValueError, match="top_k=0"):
        ProfileSummary(top_k=0)


def test_debug_profile_builds_the_pytorch_profiler(compose_cfg):
    from lightning.pytorch.profilers import PyTorchProfiler

    cfg = compose_cfg("debug=profile")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.profiler, PyTorchProfiler)
    assert Path(trainer.profiler.dirpath) == Path(cfg.paths.output_dir) / "profiler"
    window = cfg.trainer.profiler.schedule
    assert cfg.trainer.limit_train_batches > window.warmup + window.active
    assert cfg.callbacks.profile_summary._target_ == "keel.callbacks.ProfileSummary"
