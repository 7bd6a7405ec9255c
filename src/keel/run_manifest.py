"""The run directory as a record: ``run.json`` (what ran, on what, how it ended) and resuming.

``<run dir>/run.json`` is written when a run starts (status ``running``), updated once the
data is loaded (its fingerprint) and rewritten when the run ends (``finished``, ``failed``
with the error, ``interrupted``, or ``pruned`` when a sweep's pruner stopped it). A run killed with SIGKILL stays ``running``: nothing
can write after that signal. Every write goes to a temporary file in the same directory,
is fsynced and renamed over the old one, so a reader sees the old record or the new one,
never half of one.

This module stays light (no torch, Lightning or data imports) so that ``ckpt_path=auto``
can skip a finished run and ``keel replay`` can read a record without them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from keel.errors import KeelError

log = logging.getLogger("keel")

MANIFEST_NAME = "run.json"
METRICS_NAME = "metrics.json"
SCHEMA_VERSION = 1
STATUSES = ("running", "finished", "failed", "interrupted", "pruned")
# `git diff HEAD` beyond this is cut (and marked): a run record, not a patch archive.
GIT_DIFF_CAP_BYTES = 1_000_000
PACKAGES = (
    "keel", "torch", "lightning", "torchmetrics", "hydra-core", "omegaconf", "numpy", "pandas", "pandera",
    "pyarrow", "scikit-learn", "tensorboard", "onnx", "onnxscript", "onnxruntime",
)
# Keys that say where and how a run is continued, not what it computes.
RESUME_KEYS = ("ckpt_path", "run_dir")


class RunStateError(KeelError):
    """A run directory cannot be used as asked (already holds another run, in use, unreadable record)."""


# ---------------------------------------------------------------------------- small helpers
def now_utc() -> str:
    """The current time as ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: str | Path, write: Any, mode: str = "w") -> None:
    """Call ``write(f)`` on a hidden temp file next to ``path``, fsync it, rename it over
    ``path`` and fsync the directory: readers (or a resume after SIGKILL) see the old file or
    the new one, never a torn one, and a leftover temp file is never taken for the real one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            from keel.errors import disk_full

            kept = (f"The previous {path.name} is intact." if path.exists()
                    else f"No {path.name} was written; the files beside it are untouched.")
            full = disk_full(e, str(path), kept)
            if full is not None:
                raise full from e
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda f: f.write(json.dumps(data, indent=2, allow_nan=True) + "\n"))


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so that a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_info(cwd: str | Path | None = None, diff_cap: int = GIT_DIFF_CAP_BYTES) -> dict[str, Any]:
    """Commit, dirtiness and ``git diff HEAD`` (cut at ``diff_cap`` bytes) of the tree at ``cwd``.

    Returns ``{"commit": None, ...}`` outside a git checkout or without git.
    """

    def git(*args: str) -> bytes | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff": None, "diff_bytes": 0, "diff_truncated": False, "untracked": []}
    status = (git("status", "--porcelain", "--untracked-files=normal") or b"").decode("utf-8", "replace")
    lines = [ln for ln in status.splitlines() if ln.strip()]
    untracked = [ln[3:] for ln in lines if ln.startswith("??")]
    diff = git("diff", "HEAD", "--no-color", "--no-ext-diff") or b""
    truncated = len(diff) > diff_cap
    return {
        "commit": commit.decode().strip(),
        "dirty": any(not ln.startswith("??") for ln in lines),
        "diff": diff[:diff_cap].decode("utf-8", "replace"),
        "diff_bytes": len(diff),
        "diff_truncated": truncated,
        "untracked": untracked[:100],
    }


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "pid": os.getpid(),
        "python_executable": sys.executable,
    }


# ---------------------------------------------------------------------------- data fingerprint
def data_files(datamodule: Any) -> list[Path]:
    """The files a data module reads (empty for embedded data).

    Known shapes: ``MNISTDataModule.files()`` (the four IDX files), ``TableDataModule.path``
    (one table; None for embedded tables such as breast cancer).
    """
    files = getattr(datamodule, "files", None)
    if callable(files):
        found = files()
        return sorted(Path(p) for p in (found.values() if isinstance(found, Mapping) else found))
    path = getattr(datamodule, "path", None)
    if isinstance(path, (str, os.PathLike)) and path:
        return [Path(path)]
    return []


def _arrays_sha256(datamodule: Any) -> str:
    import numpy as np

    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        for a in datamodule.split_arrays(split):
            a = np.ascontiguousarray(a)
            h.update(f"{split}:{a.dtype.str}:{list(a.shape)};".encode())
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def data_fingerprint(datamodule: Any) -> dict[str, Any]:
    """What identifies the data of a run, after ``datamodule.setup()``.

    Returns ``contract`` (the contract's fingerprint), ``kind`` (``files`` or ``arrays``) and
    ``sha256``: for file-based data the hash of the files' bytes (each listed under ``files``
    with its size), for embedded data the hash of the loaded split arrays (as the model sees
    them). Also ``source`` and ``split_sizes``.
    """
    contract = getattr(datamodule, "contract", None)
    out: dict[str, Any] = {
        "source": str(getattr(datamodule, "source", type(datamodule).__name__)),
        "contract": contract.fingerprint() if contract is not None else None,
    }
    sizes = getattr(datamodule, "split_sizes", None)
    if callable(sizes):
        out["split_sizes"] = sizes()
    files = data_files(datamodule)
    if files:
        per_file = {str(p.resolve()): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files}
        combined = hashlib.sha256("".join(f"{v['sha256']}\n" for v in per_file.values()).encode()).hexdigest()
        out.update(kind="files", sha256=combined, files=per_file)
    else:
        out.update(kind="arrays", sha256=_arrays_sha256(datamodule))
    return out


# ---------------------------------------------------------------------------- the record
def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """``<run_dir>/run.json`` as a dict, or None when there is none.

    Raises:
        RunStateError: the file exists but is not a JSON object.
    """
    path = Path(run_dir) / MANIFEST_NAME
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
    manifest = read_manifest(run_dir)
    if manifest is not None:
        return manifest.get("status"), manifest
    metrics = Path(run_dir) / METRICS_NAME
    if metrics.is_file():
        try:
            record = json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
        return "finished", {"status": "finished", "metrics": record.get("metrics", {}),
                            "objective": record.get("objective"), "optimized_metric": record.get("optimized_metric")}
    return None, None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class RunManifest:
    """Writes ``<run_dir>/run.json`` through a run's life. Only rank 0 creates one.

    A resumed run keeps its first ``started_at`` and appends one entry per start to
    ``attempts`` (``started_at``, ``ended_at``, ``status``, ``resumed_from``, ``pid``, ``command``).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_NAME
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
        previous = read_manifest(self.run_dir) or {}
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


# ---------------------------------------------------------------------------- resuming
def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``<run_dir>/checkpoints/*.ckpt``, or None.

    "Newest" is by modification time; "complete" means :func:`keel.checkpoint.load_checkpoint`
    reads it (weights-only, plain data). A truncated or corrupted file is skipped with a
    warning naming it and the next newest is tried.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    from keel.checkpoint import CheckpointError, load_checkpoint

    _remove_stale_temp_files(ckpt_dir)
    candidates = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)
    for path in candidates:
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            log.warning("ckpt_path=auto: skipping %s: %s", path, e)
            continue
        return path
    return None


def _remove_stale_temp_files(directory: Path) -> None:
    """Delete ``.<name>.<pid>.tmp`` files that :func:`write_atomic` left when its process was
    killed mid-write (never read as checkpoints; each can be as large as one)."""
    for tmp in directory.glob(".*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            log.info("removing %s: the temporary file of an interrupted checkpoint write", tmp)
            tmp.unlink(missing_ok=True)


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


__all__ = [
    "MANIFEST_NAME",
    "RunManifest",
    "RunStateError",
    "config_differences",
    "data_fingerprint",
    "find_resume_checkpoint",
    "git_info",
    "merge_overrides",
    "override_key",
    "read_manifest",
    "run_status",
    "write_json_atomic",
]
