"""Resuming: the run's own overrides on top of the command line's, and one resume plan per run.

The plan (:func:`plan_resume`) is made once, after the run directory is locked: whether a
``ckpt_path=auto`` run already finished with this config (then nothing is trained), which
checkpoint training starts from (loaded once, as a :class:`~keel.checkpoints.CheckpointInfo`),
and whether that checkpoint is this run's own (then the run continues in place: TensorBoard
hides what the interrupted attempt logged after it). Everything downstream reads the plan.

Light: no torch until a checkpoint file is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.run.record import run_status

log = logging.getLogger("keel")

# Keys that say where and how a run is continued, not what it computes.
RESUME_KEYS = ("ckpt_path", "run_dir")
# What is logged or drawn does not change what was trained: a finished run stays finished.
NOT_TRAINING_KEYS = (*RESUME_KEYS, "paths", "callbacks.progress_bar", "model.train_metrics")


@dataclass(frozen=True)
class ResumePlan:
    """How this run starts.

    Attributes:
        auto: ``ckpt_path=auto`` (or a requeued submitit job): continue the run in its directory.
        finished: the directory holds a finished run of this config: train nothing.
        objective: that finished run's objective (``optimized_metric``).
        record: that run's record (run.json), for its summary.
        checkpoint: the checkpoint training starts from (None: from scratch).
        same_run: the checkpoint lies in this run's directory (a continued run).
    """

    auto: bool = False
    finished: bool = False
    objective: float | None = None
    record: dict[str, Any] | None = None
    checkpoint: Any = None
    same_run: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def ckpt_path(self) -> str | None:
        return None if self.checkpoint is None else str(self.checkpoint.path)

    @property
    def start_step(self) -> int | None:
        """The global step training starts from (None: from scratch)."""
        return None if self.checkpoint is None else self.checkpoint.global_step


def find_resume_checkpoint(run_dir: str | Path) -> Any:
    """The newest complete checkpoint in ``<run_dir>/checkpoints/*.ckpt`` as a
    :class:`~keel.checkpoints.CheckpointInfo`, or None.

    "Newest" is by modification time; "complete" means it reads (weights-only, plain data, a keel
    section). A truncated or corrupted file is skipped with a warning naming it and the next
    newest is tried. Each candidate is loaded once; the one returned is not loaded again by keel.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    from keel.atomic import remove_stale_temp_files
    from keel.checkpoints.read import CheckpointError, read_checkpoint

    remove_stale_temp_files(ckpt_dir)
    candidates = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)
    for path in candidates:
        try:
            return read_checkpoint(path)
        except CheckpointError as e:
            log.warning("ckpt_path=auto: skipping %s: %s", path, e)
    return None


def finished_run(config: Mapping[str, Any], optimized_metric: str | None, output_dir: Path) -> ResumePlan | None:
    """The plan of a ``ckpt_path=auto`` run whose directory holds a finished run of this same
    ``config`` (resolved), or None when there is none (or it finished with another config)."""
    status, record = run_status(output_dir)
    if status != "finished" or record is None:
        return None
    stored = record.get("config")
    if stored is not None:
        diffs = config_differences(stored, config, ignore=NOT_TRAINING_KEYS)
        if diffs:
            log.info("ckpt_path=auto: %s finished with another config (%s); continuing it from its newest checkpoint",
                     output_dir, "; ".join(diffs[:5]) + (f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else ""))
            return None
    metrics = record.get("metrics") or {}
    objective = metrics.get(optimized_metric) if optimized_metric else None
    return ResumePlan(auto=True, finished=True, objective=objective, record=record)


def plan_resume(config: Mapping[str, Any], output_dir: Path, auto: bool) -> ResumePlan:
    """The one resume plan of a run (see the module docstring).

    Args:
        config: the run's resolved config (plain data); its ``ckpt_path`` (a file) is read when
            ``auto`` is False.
        output_dir: the run directory.
        auto: continue the run in ``output_dir`` (``ckpt_path=auto``, a requeued job).

    Raises:
        CheckpointError: an explicit ``ckpt_path`` that is not a readable keel checkpoint.
    """
    if auto:
        done = finished_run(config, config.get("optimized_metric"), output_dir)
        if done is not None:
            return done
        info = find_resume_checkpoint(output_dir)
        if info is None:
            log.info("ckpt_path=auto: no complete checkpoint in %s/checkpoints: starting fresh", output_dir)
            return ResumePlan(auto=True)
        log.info("ckpt_path=auto: resuming %s from %s", output_dir, info.path)
        return ResumePlan(auto=True, checkpoint=info, same_run=True)
    ckpt = config.get("ckpt_path")
    if not ckpt:
        return ResumePlan()
    from keel.checkpoints.read import read_checkpoint

    info = read_checkpoint(ckpt)
    return ResumePlan(checkpoint=info, same_run=Path(ckpt).resolve().is_relative_to(output_dir.resolve()))


# ---------------------------------------------------------------------------- overrides
def override_key(override: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (parsed,) = OverridesParser.create().parse_overrides([override])
    key = parsed.key_or_group
    return f"{key}@{parsed.package}" if parsed.package else key


def merge_overrides(stored: Iterable[str], current: Iterable[str]) -> list[str]:
    """The run's stored command-line overrides with this command line's on top.

    An override of a key the run already set replaces it in place; new keys are appended.
    ``ckpt_path`` and ``run_dir`` come from this command line only.
    """
    current = list(current)
    cur_keys = {override_key(o): o for o in current}
    merged: list[str] = []
    for o in stored:
        key = override_key(o)
        if key in RESUME_KEYS and key not in cur_keys:
            continue
        merged.append(cur_keys.pop(key, o))
    merged += [o for k, o in cur_keys.items()]
    return merged


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def config_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = (), replace: Mapping[str, str] | None = None
) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two resolved configs.

    ``ignore``: key prefixes left out (``paths`` drops ``paths.*``). ``replace``: string
    substitutions applied to both sides first (e.g. the run directory -> ``<run_dir>``).
    """
    replace = dict(replace or {})

    def norm(v: Any) -> Any:
        if isinstance(v, str):
            for a in sorted(replace, key=len, reverse=True):  # a directory inside another one first
                v = v.replace(a, replace[a])
        return v

    ignore = tuple(ignore)
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        va, vb = norm(a.get(key, "<absent>")), norm(b.get(key, "<absent>"))
        if va != vb:
            out.append(f"{key}: {va!r} -> {vb!r}")
    return out


__all__ = ["NOT_TRAINING_KEYS", "RESUME_KEYS", "ResumePlan", "config_differences", "find_resume_checkpoint",
           "finished_run", "merge_overrides", "override_key", "plan_resume"]
