"""The run's record, ``<run dir>/run.json``: what ran, on what, and how it ended.

Written when a run starts (status ``running``), updated once the data is loaded (its
fingerprint) and rewritten when the run ends (``finished``, ``failed`` with the error,
``interrupted``, or ``pruned`` when a sweep's pruner stopped it). A run killed with SIGKILL stays
``running``: nothing can write after that signal. Every write is atomic (:mod:`keel.atomic`): a
reader sees the old record or the new one, never half of one.

Light (no torch, Lightning or data imports), so that ``ckpt_path=auto`` can skip a finished run
and ``keel replay`` can read a record without them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from keel.atomic import write_json_atomic
from keel.errors import KeelError
from keel.provenance import git_info, host_info, package_versions

log = logging.getLogger("keel")

RECORD_NAME = "run.json"
METRICS_NAME = "metrics.json"
SCHEMA_VERSION = 1
STATUSES = ("running", "finished", "failed", "interrupted", "pruned")


class RunStateError(KeelError):
    """A run directory cannot be used as asked (already holds another run, in use, unreadable record)."""


def now_utc() -> str:
    """The current time as ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``<run_dir>/run.json`` as a dict, or None when there is none.

    Raises:
        RunStateError: the file exists but is not a JSON object.
    """
    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunStateError(f"{path}: unreadable run record ({e}). Fix: move it away to start this directory anew") from None
    if not isinstance(data, dict):
        raise RunStateError(f"{path}: not a run record (a JSON {type(data).__name__})")
    return data


def run_status(run_dir: str | Path) -> tuple[str | None, dict[str, Any] | None]:
    """(status, record) of the run in ``run_dir``: from run.json, else ``finished`` when an older
    keel left only metrics.json (written only at the end of a successful run); (None, None) when empty."""
    record = read_record(run_dir)
    if record is not None:
        return record.get("status"), record
    metrics = Path(run_dir) / METRICS_NAME
    if metrics.is_file():
        try:
            data = json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
        return "finished", {"status": "finished", "metrics": data.get("metrics", {}),
                            "objective": data.get("objective"), "optimized_metric": data.get("optimized_metric")}
    return None, None


class RunRecord:
    """Writes ``<run_dir>/run.json`` through a run's life. Only rank 0 creates one.

    A resumed run keeps its first ``started_at`` and appends one entry per start to
    ``attempts`` (``started_at``, ``ended_at``, ``status``, ``resumed_from``, ``pid``, ``command``).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RECORD_NAME
        self.data: dict[str, Any] = {}

    def start(
        self,
        *,
        config: dict[str, Any],
        overrides: list[str] | None,
        seed: Any,
        resumed_from: str | None,
        argv: list[str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        previous = read_record(self.run_dir) or {}
        attempts = list(previous.get("attempts", []))
        for a in attempts:
            if a.get("status") == "running":  # that process died without a word (SIGKILL, power loss)
                a["status"] = "killed"
        argv = list(sys.argv if argv is None else argv)
        started = now_utc()
        attempts.append({"started_at": started, "ended_at": None, "status": "running", "resumed_from": resumed_from,
                         "pid": os.getpid(), "command": argv})
        cwd = str(Path.cwd() if cwd is None else cwd)
        self.data = {
            "schema": SCHEMA_VERSION,
            "status": "running",
            "run_dir": str(self.run_dir.resolve()),
            "started_at": previous.get("started_at", started),
            "ended_at": None,
            "wall_time_s": None,
            "command": argv,
            "cwd": cwd,
            "overrides": overrides,
            "seed": seed,
            "resumed_from": resumed_from,
            "config": config,
            "git": git_info(cwd),
            "packages": package_versions(),
            "host": host_info(),
            "data": previous.get("data"),
            "metrics": None,
            "optimized_metric": None,
            "objective": None,
            "error": None,
            "attempts": attempts,
        }
        self._write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self._write()

    def end(
        self,
        status: str,
        *,
        wall_time_s: float,
        metrics: dict[str, float] | None = None,
        optimized_metric: str | None = None,
        objective: float | None = None,
        error: BaseException | None = None,
        message: str | None = None,
    ) -> None:
        """Record how the run ended: ``finished`` (with metrics), ``failed`` (with the error),
        ``interrupted`` or ``pruned`` (a sweep's pruner stopped it). ``message`` replaces the
        error's own text."""
        if status not in STATUSES:
            raise ValueError(f"status={status!r}: expected one of {STATUSES}")
        ended = now_utc()
        self.data.update(status=status, ended_at=ended, wall_time_s=round(wall_time_s, 3))
        if metrics is not None:
            self.data.update(metrics=metrics, optimized_metric=optimized_metric, objective=objective)
        if error is not None:
            self.data["error"] = {"type": type(error).__name__, "message": message or str(error) or repr(error)}
        if self.data.get("attempts"):
            self.data["attempts"][-1].update(ended_at=ended, status=status)
        if error is None:
            self._write()
            return
        from keel.errors import DiskFullError

        try:
            self._write()
        except (OSError, DiskFullError) as e:  # e.g. the disk that failed the run is full: report the run's error, not this one
            log.warning("could not record the run's end in %s: %s", self.path, e)

    def _write(self) -> None:
        write_json_atomic(self.path, self.data)


__all__ = ["METRICS_NAME", "RECORD_NAME", "RunRecord", "RunStateError", "STATUSES", "now_utc", "read_record",
           "run_status"]
