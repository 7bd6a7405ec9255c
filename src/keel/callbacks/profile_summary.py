"""Write ``<profiler dir>/summary.txt`` (and ``summary.json``) from the PyTorch profiler's training trace."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

# Lightning wraps each of these actions in ``record_function("[pl][profile]" + action)``; a phase is
# every range whose name ends with one of its suffixes ("[Strategy]DDPStrategy.training_step" ...).
PHASES: dict[str, tuple[str, ...]] = {
    "data loading": (".train_dataloader_next", ".batch_to_device"),
    "forward": (".training_step",),
    "backward": (".backward",),
    "optimizer": (".optimizer_step",),
}
# Where ranges overlap, time goes to the first phase in this order: Lightning runs forward and
# backward inside the optimizer step's closure, so "optimizer" is the update (plus zero_grad and
# clipping) without them.
PRIORITY = ("forward", "backward", "data loading", "optimizer")
OTHER = "other"
_PL = "[pl][profile]"


@dataclass
class TraceSummary:
    """What one profiled window spent its time on.

    Attributes:
        steps: ProfilerStep ranges in the window (training steps recorded).
        window_us: host wall time of the window, microseconds.
        phases_us: ``{phase: microseconds}`` for :data:`PRIORITY` phases and ``other``; sums to
            ``window_us``.
        operators: ``[{"name", "calls", "self_us", "self_pct"}]``, by self CPU time, largest first;
            ``self_pct`` is the share of all operators' self CPU time in the window.
        skipped_steps: profiled steps left out because they were not training steps (the
            window outlasted training).
    """

    steps: int
    window_us: float
    phases_us: dict[str, float]
    operators: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0

    @property
    def phases_pct(self) -> dict[str, float]:
        total = self.window_us or 1.0
        return {k: 100.0 * v / total for k, v in self.phases_us.items()}


def _phase_of(name: str) -> str | None:
    if not name.startswith(_PL):
        return None
    for phase, suffixes in PHASES.items():
        if name.endswith(suffixes):
            return phase
    return None


def _complete_events(trace: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e and "ts" in e]


_STAGE_STEPS = (".training_step", ".validation_step", ".test_step", ".predict_step")


def _step_spans(events: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], int]:
    """The training steps of the window as ``(start, end)`` spans, and how many profiled steps
    were left out.

    A ``ProfilerStep#N`` range is one training step when it holds the end of Lightning's
    ``training_step`` range and no other stage's step (the profiler steps at the end of each
    ``*_step``; a window that outlasts training goes on into validation). Without any
    ``ProfilerStep`` ranges the whole trace is one span (0 steps).
    """
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    steps.sort(key=lambda e: float(e["ts"]))
    if not steps:
        span = [e for e in events if e.get("cat") in ("cpu_op", "user_annotation")]
        if not span:
            return [], 0
        return [(min(float(e["ts"]) for e in span), max(float(e["ts"]) + float(e["dur"]) for e in span))], 0
    ends: dict[str, list[float]] = {k: [] for k in _STAGE_STEPS}
    for e in events:
        name = str(e.get("name", ""))
        if name.startswith(_PL) and name.endswith(_STAGE_STEPS):
            ends[next(k for k in _STAGE_STEPS if name.endswith(k))].append(float(e["ts"]) + float(e["dur"]))
    if not ends[".training_step"]:  # not a Lightning training trace: every step counts
        return [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in steps], 0

    def holds(kind: str, b: float, e: float) -> bool:
        return any(b < t <= e + 1.0 for t in ends[kind])  # 1 us: the step range closes just after

    spans = []
    for e in steps:
        b, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        if holds(".training_step", b, end) and not any(holds(k, b, end) for k in _STAGE_STEPS[1:]):
            spans.append((b, end))
    return spans, len(steps) - len(spans)


def split_phases(intervals: Iterable[tuple[str, float, float]], start: float, end: float) -> dict[str, float]:
    """Partition ``[start, end]`` among phases: each instant goes to the highest-priority phase
    (:data:`PRIORITY`) whose interval covers it, else to ``other``.

    Args:
        intervals: ``(phase, begin, end)`` in any time unit; clipped to the window.

    Returns:
        ``{phase: duration}`` for every phase and ``other``; the values sum to ``end - start``.
    """
    points: list[tuple[float, int, str]] = []
    for phase, b, e in intervals:
        b, e = max(b, start), min(e, end)
        if e > b:
            points += [(b, 1, phase), (e, -1, phase)]
    points.sort(key=lambda p: (p[0], p[1]))
    out = {p: 0.0 for p in (*PRIORITY, OTHER)}
    depth = {p: 0 for p in PRIORITY}
    t = start
    for when, delta, phase in points:
        if when > t:
            top = next((p for p in PRIORITY if depth[p] > 0), OTHER)
            out[top] += when - t
            t = when
        depth[phase] += delta
    if end > t:
        out[OTHER] += end - t
    return out


def operator_self_times(events: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """``{operator name: (calls, self time)}`` of the trace's ``cpu_op`` events: each op's
    duration minus that of the ops nested directly inside it on the same thread."""
    by_thread: dict[Any, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("cat") == "cpu_op":
            by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    out: dict[str, tuple[int, float]] = {}
    for ops in by_thread.values():
        ops.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack: list[list[Any]] = []  # [end, name, self]

        def close(item: list[Any]) -> None:
            calls, total = out.get(item[1], (0, 0.0))
            out[item[1]] = (calls + 1, total + max(item[2], 0.0))

        for e in ops:
            ts, dur = float(e["ts"]), float(e["dur"])
            while stack and stack[-1][0] <= ts:
                close(stack.pop())
            if stack:
                stack[-1][2] -= dur
            stack.append([ts + dur, str(e["name"]), dur])
        while stack:
            close(stack.pop())
    return out


def summarize_trace(trace: Mapping[str, Any], top_k: int = 20) -> TraceSummary:
    """Summarize a Chrome trace written by ``torch.profiler`` under Lightning's PyTorchProfiler.

    The window is the training steps' ``ProfilerStep#N`` ranges (see :func:`_step_spans`);
    phases come from Lightning's ``[pl][profile]`` ranges (:data:`PHASES`), operators from the
    ``cpu_op`` events that start inside the window.
    """
    events = _complete_events(trace)
    spans, skipped = _step_spans(events)
    intervals = []
    for e in events:
        phase = _phase_of(str(e.get("name", "")))
        if phase is not None:
            intervals.append((phase, float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    phases = {p: 0.0 for p in (*PRIORITY, OTHER)}
    for start, end in spans:
        for phase, t in split_phases(intervals, start, end).items():
            phases[phase] += t
    inside = [e for e in events if any(b <= float(e["ts"]) < end for b, end in spans)]
    ops = operator_self_times(inside)
    total_self = sum(t for _, t in ops.values()) or 1.0
    ranked = sorted(ops.items(), key=lambda kv: kv[1][1], reverse=True)[:top_k]
    operators = [
        {"name": name, "calls": calls, "self_us": t, "self_pct": 100.0 * t / total_self}
        for name, (calls, t) in ranked
    ]
    has_steps = any(str(e.get("name", "")).startswith("ProfilerStep#") for e in events)
    return TraceSummary(steps=len(spans) if has_steps else 0, window_us=sum(end - b for b, end in spans),
                        phases_us=phases, operators=operators, skipped_steps=skipped)


def format_summary(summary: TraceSummary, trace_name: str) -> str:
    """The text of ``summary.txt``: the window, the step-time split and the top operators."""
    ms = summary.window_us / 1000.0
    per_step = ms / summary.steps if summary.steps else float("nan")
    lines: list[str] = [
        "keel profile summary",
        f"trace   : {trace_name}",
        "          (open it in https://ui.perfetto.dev or chrome://tracing)",
        f"window  : {summary.steps} training steps, {ms:.2f} ms of host time, {per_step:.2f} ms/step",
    ]
    if summary.skipped_steps:
        lines += [
            f"note    : {summary.skipped_steps} profiled step(s) were not training steps (the window outlasted",
            "          training) and are left out. For a full window raise trainer.limit_train_batches",
            "          (per process) or lower trainer.profiler.schedule.active.",
        ]
    lines += [
        "",
        "== step time split (host wall time) ==",
        f"{'phase':<14}{'ms':>10}{'%':>8}{'ms/step':>10}",
    ]
    pct = summary.phases_pct
    for phase in (*PRIORITY, OTHER):
        t = summary.phases_us[phase] / 1000.0
        lines.append(f"{phase:<14}{t:>10.2f}{pct[phase]:>8.1f}{t / max(summary.steps, 1):>10.3f}")
    lines.append(f"{'total':<14}{ms:>10.2f}{sum(pct.values()):>8.1f}{per_step:>10.3f}")
    lines += [
        "",
        "data loading = next batch + transfer to the device; forward = training_step (loss, metric",
        "updates); backward = loss.backward(); optimizer = optimizer step without the forward and",
        "backward it runs (zero_grad, clipping, the update); other = hooks, callbacks, logging.",
        "On GPU kernels run asynchronously: their time shows where the host waits (see the trace).",
        "",
        "== top operators by self CPU time ==",
        f"{'self ms':>10}{'self %':>8}{'calls':>8}  operator",
    ]
    for op in summary.operators:
        lines.append(f"{op['self_us'] / 1000.0:>10.3f}{op['self_pct']:>8.1f}{op['calls']:>8}  {op['name']}")
    return "\n".join(lines) + "\n"


def _is_training_trace(trace: Mapping[str, Any]) -> bool:
    return any(
        str(e.get("name", "")).startswith(_PL) and str(e.get("name", "")).endswith(".training_step")
        for e in trace.get("traceEvents", [])
    )


class ProfileSummary(L.Callback):
    """After training, summarize the trace that ``trainer.profiler`` (a Lightning
    :class:`~lightning.pytorch.profilers.PyTorchProfiler` with a ``dirpath``) wrote, into
    ``<dirpath>/summary.txt`` and ``summary.json`` (rank 0 only).

    The profiler saves a trace when its schedule's active window ends; when training ends
    before that, the trace is written as the fit stage closes and the summary follows at the
    start of the next stage (the test).

    Args:
        top_k: operators listed by self CPU time.
    """

    def __init__(self, top_k: int = 20) -> None:
        if top_k < 1:
            raise ValueError(f"top_k={top_k}: expected an integer >= 1")
        self.top_k = top_k
        self.summary_path: Path | None = None
        self._started = 0.0
        self._pending = False

    def _profiler_dir(self, trainer: L.Trainer) -> Path | None:
        from lightning.pytorch.profilers import PyTorchProfiler

        profiler = trainer.profiler
        if not isinstance(profiler, PyTorchProfiler) or not profiler.dirpath:
            return None
        return Path(profiler.dirpath)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._started = time.time()
            if self._profiler_dir(trainer) is None:
                log.warning("profile_summary: trainer.profiler is not a PyTorchProfiler with a dirpath: no summary")
        elif self._pending:
            self._write(trainer, final=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, final=False)

    def _write(self, trainer: L.Trainer, final: bool) -> None:
        self._pending = False
        directory = self._profiler_dir(trainer)
        if directory is None or not trainer.is_global_zero:
            return
        trace_path, trace = self._find_trace(directory, trainer.global_rank)
        if trace is None:
            if final:
                log.warning(
                    "profile_summary: no training trace in %s: the profiler's window (skip_first + wait + warmup "
                    "+ active steps) did not fit in the training run. Fix: raise trainer.limit_train_batches or "
                    "lower trainer.profiler.schedule.active", directory,
                )
            else:
                self._pending = True
            return
        summary = summarize_trace(trace, self.top_k)
        if summary.skipped_steps:
            log.warning(
                "profile_summary: the profiler's window outlasted training: %d of its steps were not training "
                "steps and are left out of %s. Raise trainer.limit_train_batches or lower "
                "trainer.profiler.schedule.active", summary.skipped_steps, directory / "summary.txt",
            )
        (directory / "summary.txt").write_text(format_summary(summary, trace_path.name))
        record = {
            "trace": trace_path.name,
            "steps": summary.steps,
            "skipped_steps": summary.skipped_steps,
            "window_ms": summary.window_us / 1000.0,
            "phases_ms": {k: v / 1000.0 for k, v in summary.phases_us.items()},
            "phases_pct": summary.phases_pct,
            "top_operators": [
                {"name": o["name"], "calls": o["calls"], "self_ms": o["self_us"] / 1000.0, "self_pct": o["self_pct"]}
                for o in summary.operators
            ],
        }
        (directory / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
        self.summary_path = directory / "summary.txt"
        log.info("profile: %s (trace %s)", self.summary_path, trace_path.name)

    def _find_trace(self, directory: Path, rank: int) -> tuple[Path, Any] | tuple[None, None]:
        candidates = [p for p in directory.glob("*.pt.trace.json") if p.stat().st_mtime >= self._started - 1]
        for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                trace = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            info = trace.get("distributedInfo") or {}
            if info.get("rank", rank) != rank or not _is_training_trace(trace):
                continue
            return path, trace
        return None, None
