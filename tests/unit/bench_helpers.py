"""What the bench smoke tests share: run a bench/ script, read its numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: int = 600) -> str:
    """Run ``bench/<script> args`` from the repo root; its stdout (fails the test on a non-zero exit)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def number(text: str) -> float:
    """A printed figure, thousands separators allowed (``12,345.6``)."""
    return float(text.replace(",", ""))
