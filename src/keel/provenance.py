"""Where a run came from: the code (git), the package versions, the host and the data's fingerprint.

Light (no torch, Lightning or data imports): the run record and ``keel replay`` read it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from keel.atomic import sha256_file

# `git diff HEAD` beyond this is cut (and marked): a run record, not a patch archive.
GIT_DIFF_CAP_BYTES = 1_000_000
PACKAGES = (
    "keel", "torch", "lightning", "torchmetrics", "hydra-core", "omegaconf", "numpy", "pandas", "pandera",
    "pyarrow", "scikit-learn", "tensorboard", "onnx", "onnxscript", "onnxruntime",
)


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


__all__ = ["GIT_DIFF_CAP_BYTES", "PACKAGES", "data_fingerprint", "data_files", "git_info", "host_info",
           "package_versions"]
