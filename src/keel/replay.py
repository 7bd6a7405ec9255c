"""``keel replay RUN_DIR``: run a recorded run again from its record and compare the metrics.

The run is started again with ``train.py`` and the run's own command-line overrides (from
``run.json``, else ``.hydra/overrides.yaml``), in the directory it was started from, into a
new run directory (default ``RUN_DIR/replays/<time>``). The final metrics of both are then
compared one by one: exit 0 when every one is within ``--tolerance`` (absolute), 1 when any
differs or is missing, 2 when the replay could not be made (no record, unfinished run,
training failed). The report also says whether the data fingerprint, the code (git commit)
and the resolved config are the same as the run's, which is where a difference comes from.

Wired into the ``keel`` command by :func:`add_replay_parser` (``keel.cli``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.errors import KeelError
from keel.provenance import git_info
from keel.run.record import read_record as read_manifest
from keel.run.record import run_status
from keel.run.resume import RESUME_KEYS, config_differences, override_key

EXIT_MATCH, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
DEFAULT_TOLERANCE = 1e-6
# Where and how the run was continued, not what it computed: a replay starts from scratch.
_DROPPED_KEYS = (*RESUME_KEYS, "hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")


class ReplayError(KeelError):
    """The run cannot be replayed: no record, not finished, no overrides, training failed."""


@dataclass
class MetricDiff:
    name: str
    original: float | None
    replay: float | None

    @property
    def diff(self) -> float:
        a, b = self.original, self.replay
        if a is None or b is None:
            return math.inf
        if math.isnan(a) and math.isnan(b):
            return 0.0
        if a == b:  # equal infinities
            return 0.0
        return abs(a - b)


@dataclass
class Comparison:
    tolerance: float
    metrics: list[MetricDiff] = field(default_factory=list)

    @property
    def failing(self) -> list[MetricDiff]:
        return [m for m in self.metrics if not self.diff_ok(m)]

    def diff_ok(self, m: MetricDiff) -> bool:
        d = m.diff
        return not math.isnan(d) and d <= self.tolerance

    @property
    def ok(self) -> bool:
        return bool(self.metrics) and not self.failing

    @property
    def max_diff(self) -> float:
        return max((m.diff for m in self.metrics), default=0.0)


def compare_metrics(original: dict[str, float], replay: dict[str, float], tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Every metric of either side, compared by absolute difference (NaN equals NaN; missing fails)."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ReplayError(f"--tolerance={tolerance}: expected a number >= 0")
    out = Comparison(tolerance)
    for name in sorted(set(original) | set(replay)):
        a, b = original.get(name), replay.get(name)
        out.metrics.append(MetricDiff(name, None if a is None else float(a), None if b is None else float(b)))
    return out


@dataclass
class ReplayPlan:
    run_dir: Path
    new_dir: Path
    cwd: Path
    command: list[str]
    original_metrics: dict[str, float]
    manifest: dict[str, Any] | None


def _quote(value: str) -> str:
    """A Hydra override value: bare when safe, else single-quoted."""
    if re.fullmatch(r"[\w./\-+:~@]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def replay_overrides(overrides: list[str], run_dir: Path) -> list[str]:
    """The run's overrides without those that continued it (ckpt_path=auto, run_dir, Hydra dirs).

    An explicit ``ckpt_path`` outside the run's directory (the run started from another
    run's checkpoint) is kept: the replay must start from it too.
    """
    kept = []
    for o in overrides:
        key = override_key(o)
        if key == "ckpt_path":
            value = o.split("=", 1)[1].strip("'\"") if "=" in o else ""
            if value in ("", "null", "auto"):
                continue
            path = Path(value)
            if path.is_absolute() and path.resolve().is_relative_to(run_dir.resolve()):
                continue
            kept.append(o)
            continue
        if key in _DROPPED_KEYS:
            continue
        kept.append(o)
    return kept


def _logging_pins(record: dict | None, overrides: list[str]) -> list[str]:
    """Overrides that make the replay log what the run logged where a default has changed since.

    Runs recorded before ``model.train_metrics`` existed logged all six training metrics; the
    default is now loss and acc. The replay is pinned to the training metrics the run recorded,
    so that a logging default does not read as a difference.
    """
    model = ((record or {}).get("config") or {}).get("model")
    if not isinstance(model, dict) or "train_metrics" in model:
        return []
    if any(override_key(o) == "model.train_metrics" for o in overrides):
        return []
    from keel.tasks import get_task

    recorded = set((record or {}).get("metrics") or {})
    task = get_task(((record or {}).get("config") or {}).get("task") or "classification")
    train = [m for m in task.metrics if f"train/{m}" in recorded]
    return [f"++model.train_metrics=[{','.join(train)}]"] if train else []


def plan_replay(run_dir: str | Path, new_dir: str | Path | None = None, python: str | None = None) -> ReplayPlan:
    """Read the run's record and build the command that replays it.

    Raises:
        ReplayError: no run there, the run did not finish, or its command line is unknown.
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ReplayError(f"{run_dir}: no such run directory")
    status, record = run_status(run_dir)
    if status is None:
        raise ReplayError(f"{run_dir}: no run.json or metrics.json: not a keel run directory")
    if status != "finished":
        raise ReplayError(f"{run_dir}: the run did not finish (status {status!r}): there are no final metrics to "
                          "compare. Fix: finish it first (python train.py ckpt_path=auto run_dir=...)")
    manifest = read_manifest(run_dir)
    overrides = (manifest or {}).get("overrides")
    if overrides is None:
        hydra_overrides = run_dir / ".hydra" / "overrides.yaml"
        if hydra_overrides.is_file():
            import yaml

            overrides = yaml.safe_load(hydra_overrides.read_text()) or []
    if overrides is None:
        raise ReplayError(f"{run_dir}: its record holds no command-line overrides (was it started by train.py?): "
                          "cannot start it again")
    command = (manifest or {}).get("command") or ["train.py"]
    cwd = Path((manifest or {}).get("cwd") or Path.cwd())
    script = Path(command[0])
    if script.suffix != ".py":
        raise ReplayError(f"{run_dir}: it was started by {command[0]!r}, not by a train.py script: cannot start it again")
    script = script if script.is_absolute() else cwd / script
    if not script.is_file():
        raise ReplayError(f"{script}: the run's entry script is gone (the run was started in {cwd})")
    new_dir = Path(new_dir).resolve() if new_dir else run_dir / "replays" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if (new_dir / "run.json").exists() or (new_dir / "metrics.json").exists():
        raise ReplayError(f"{new_dir}: already holds a run. Fix: --output-dir NEW_DIR")
    args = [*replay_overrides(list(overrides), run_dir), *_logging_pins(record, overrides),
            f"run_dir={_quote(str(new_dir))}"]
    return ReplayPlan(
        run_dir=run_dir,
        new_dir=new_dir,
        cwd=cwd,
        command=[python or sys.executable, str(script), *args],
        original_metrics=dict((record or {}).get("metrics") or {}),
        manifest=manifest,
    )


def _run_train(command: list[str], cwd: Path, log_path: Path) -> int:
    """Run the replay, its console output going to ``log_path``; return the exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as out:
        return subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _context_lines(plan: ReplayPlan, replayed: dict[str, Any] | None) -> list[str]:
    """Data, code and config of the replay next to the run's: where a difference would come from."""
    lines = []
    old = plan.manifest or {}
    new = replayed or {}
    old_data, new_data = (old.get("data") or {}).get("sha256"), (new.get("data") or {}).get("sha256")
    if old_data and new_data:
        lines.append(f"  data      : {'same as the run' if old_data == new_data else 'CHANGED since the run'} "
                     f"(sha256 {new_data[:12]}" + ("" if old_data == new_data else f", was {old_data[:12]}") + ")")
    old_git = old.get("git") or {}
    now = new.get("git") or git_info(plan.cwd)
    if old_git.get("commit"):
        same = old_git.get("commit") == now.get("commit")
        text = f"  code      : {'same commit' if same else 'OTHER commit'} {str(now.get('commit'))[:12]}"
        if not same:
            text += f" (the run: {old_git['commit'][:12]})"
        dirty = [w for w, g in (("the run's", old_git), ("this", now)) if g.get("dirty")]
        if dirty:
            text += f"; uncommitted changes in {' and '.join(dirty)} tree (the run's diff is in its run.json)"
        lines.append(text)
    if old.get("config") and new.get("config"):
        diffs = config_differences(old["config"], new["config"], ignore=(*RESUME_KEYS, "paths"),
                                   replace={str(plan.run_dir): "<run>", str(plan.new_dir): "<run>"})
        if diffs:
            shown = "; ".join(diffs[:8]) + (f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else "")
            lines.append(f"  config    : DIFFERS from the run's: {shown}")
        else:
            lines.append("  config    : same resolved config")
    return lines


def replay(run_dir: str | Path, tolerance: float = DEFAULT_TOLERANCE, new_dir: str | Path | None = None,
           python: str | None = None) -> tuple[int, str]:
    """Replay the run in ``run_dir``; return (exit status, report text). Raises ReplayError."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ReplayError(f"--tolerance={tolerance}: expected a number >= 0")
    plan = plan_replay(run_dir, new_dir, python)
    shown = " ".join(shlex.quote(a) for a in ["python", *plan.command[1:]])
    lines = [f"keel replay: {plan.run_dir}", f"  command   : (cd {shlex.quote(str(plan.cwd))} && {shown})"]
    log_path = plan.new_dir / "replay.log"
    started = time.time()
    code = _run_train(plan.command, plan.cwd, log_path)
    if code != 0:
        raise ReplayError(f"the replay failed (exit status {code}); its output: {log_path}\n{_tail(log_path)}")
    metrics_file = plan.new_dir / "metrics.json"
    if not metrics_file.is_file():
        raise ReplayError(f"the replay wrote no {metrics_file}; its output: {log_path}\n{_tail(log_path)}")
    replay_metrics = json.loads(metrics_file.read_text(encoding="utf-8")).get("metrics", {})
    lines.append(f"  replay    : {plan.new_dir} ({time.time() - started:.1f} s; output {log_path})")
    lines += _context_lines(plan, read_manifest(plan.new_dir))
    cmp = compare_metrics(plan.original_metrics, replay_metrics, tolerance)
    if cmp.ok:
        lines.append(f"  metrics   : {len(cmp.metrics)} compared, max |diff| {cmp.max_diff:.3g} (tolerance {tolerance:g})")
        lines.append("  result    : MATCH")
        return EXIT_MATCH, "\n".join(lines)
    lines.append(f"  metrics   : {len(cmp.failing)} of {len(cmp.metrics)} differ beyond tolerance {tolerance:g}:")
    width = max(len(m.name) for m in cmp.failing)
    for m in cmp.failing:
        a = "missing" if m.original is None else f"{m.original:.6g}"
        b = "missing" if m.replay is None else f"{m.replay:.6g}"
        lines.append(f"      {m.name:<{width}}  {a} -> {b}  |diff| {m.diff:.3g}")
    lines.append("  result    : DIFFERENT")
    return EXIT_DIFFERENT, "\n".join(lines)


def run_replay(args: argparse.Namespace) -> int:
    """``keel replay`` handler: print the report; exit 0 match, 1 different, 2 error."""
    try:
        code, report = replay(args.run_dir, tolerance=args.tolerance, new_dir=args.output_dir)
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    print(report, flush=True)
    return code


def add_replay_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``replay`` to the ``keel`` command's subparsers (``keel.cli``)."""
    p = subparsers.add_parser(
        "replay",
        help="re-run a run from its run.json into a new directory; exit 1 when the metrics differ",
        description=(__doc__ or "").split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("run_dir", help="the run directory (holds run.json)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest allowed |original - replay| per metric (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--output-dir", help="where the replay runs (default: RUN_DIR/replays/<time>)")
    p.set_defaults(func=run_replay)
    return p


__all__ = ["Comparison", "ReplayError", "add_replay_parser", "compare_metrics", "plan_replay", "replay",
           "replay_overrides", "run_replay"]
