"""Bundle directories: manifest with sha256 of every file, written atomically.

numpy/stdlib only (``keel.serve`` reads bundles with this module and must not import torch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from keel.errors import KeelError

MANIFEST = "manifest.json"
FORMAT = "keel-bundle"
FORMAT_VERSION = 1


class BundleError(KeelError):
    """A bundle is missing, incomplete, tampered with, or unsafe."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_member(root: Path, name: str) -> Path:
    """``root / name`` for a manifest entry, refusing absolute paths and any path that leaves ``root``.

    Raises:
        BundleError: the entry points outside the bundle directory.
    """
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name or ":" in name:
        raise BundleError(f"{root}: manifest entry {name!r} points outside the bundle directory (refused)")
    resolved = (root / pure).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BundleError(f"{root}: manifest entry {name!r} resolves outside the bundle directory (refused)")
    return resolved


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``root`` except the manifest (posix relative names)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return out


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the file table to ``manifest`` and write it (fsync'ed) into ``root``."""
    manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "files": file_table(root)}
    path = root / MANIFEST
    with open(path, "w") as f:
        # key order is kept: a table contract's column order is the model's input order
        f.write(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The bundle's manifest, after checking it is a keel bundle of a known format."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST}); an interrupted export leaves no valid bundle")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a keel bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {manifest.get('format_version')} (this keel reads {FORMAT_VERSION})")
    return manifest


def check_files(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems with the bundle's files: missing, changed (sha256), unlisted; [] when intact."""
    problems = []
    listed = manifest.get("files", {})
    for name, meta in listed.items():
        p = safe_member(root, name)
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif sha256(p) != meta.get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest (file changed)")
    for name in file_table(root):
        if name not in listed:
            problems.append(f"{name}: not listed in the manifest")
    return problems


def read_intact(root: str | Path, doing: str) -> dict[str, Any]:
    """The manifest of a bundle whose files all match it, before ``doing`` something to it.

    Raises:
        BundleError: no bundle, or its problems (missing, changed, unlisted files), all listed.
    """
    root = Path(root)
    manifest = read_manifest(root)
    problems = check_files(root, manifest)
    if problems:
        raise BundleError(f"{root}: cannot {doing} a bundle that fails its checks: {'; '.join(problems)}")
    return manifest


@contextlib.contextmanager
def staged(final: Path, copy_existing: bool = False) -> Iterator[Path]:
    """Build a bundle in a hidden sibling directory, then swap it in with renames.

    A crash before the swap leaves the previous bundle (if any) untouched and no directory
    under the final name that is half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    uid = secrets.token_hex(4)
    tmp = final.parent / f".{final.name}.tmp-{uid}"
    try:
        if copy_existing and final.is_dir():
            shutil.copytree(final, tmp)
        else:
            tmp.mkdir()
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            from keel.errors import disk_full

            kept = f"The previous bundle {final} is intact." if final.exists() else f"No bundle was written at {final}."
            full = disk_full(e, str(tmp), kept)
            if full is not None:
                raise full from e
        raise
    old = final.parent / f".{final.name}.old-{uid}"
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
