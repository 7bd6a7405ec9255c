"""File writes that a kill or a power loss cannot tear: temp file beside the target, fsync, rename.

Light (standard library only): the run record, the bundle writer and the checkpoint plugin use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("keel")


def write_atomic(path: str | Path, write: Any, mode: str = "w") -> None:
    """Call ``write(f)`` on a hidden temp file next to ``path``, fsync it, rename it over
    ``path`` and fsync the directory: readers (or a resume after SIGKILL) see the old file or
    the new one, never a torn one, and a leftover temp file is never taken for the real one.

    Raises:
        DiskFullError: the disk filled up (the message says what is intact).
        OSError: any other write failure (the temp file is removed).
    """
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


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def remove_stale_temp_files(directory: Path) -> None:
    """Delete ``.<name>.<pid>.tmp`` files that :func:`write_atomic` left when its process was
    killed mid-write (never read as the real files; each can be as large as a checkpoint)."""
    for tmp in directory.glob(".*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)):
            log.info("removing %s: the temporary file of an interrupted write", tmp)
            tmp.unlink(missing_ok=True)


__all__ = ["fsync_dir", "pid_alive", "remove_stale_temp_files", "sha256_file", "write_atomic", "write_json_atomic"]
