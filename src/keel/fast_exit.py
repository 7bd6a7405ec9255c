"""keel's one fast exit (``os._exit`` after a successful command), in a module light enough
for ``keel predict`` to import (os, sys, pathlib only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def exit_now(code: int = 0) -> None:
    """End the process with status ``code`` at once, skipping the interpreter's teardown; or,
    when it has live child processes, return (the caller then exits the normal way).

    keel's one fast exit: ``train.py`` and ``export.py`` after a finished run, where tearing
    down torch, ONNX and their modules would only add 1-2 s of waiting (checkpoints and
    records are fsynced, loggers finalized); ``keel predict`` after a successful command, where
    teardown (numpy, ONNX Runtime, pandas/pyarrow) adds 30-150 ms to a ~0.2 s command. Call it
    only after a successful command, as ``exit_now(status); sys.exit(status)``.

    Before ``os._exit``: the ``atexit`` handlers run (``atexit._run_exitfuncs``, private CPython
    and the only way to run them early; they run once, as at a normal exit), then
    ``logging.shutdown()``, then stdout and stderr are flushed; a closed pipe
    (``BrokenPipeError``, ``keel predict ... | head``) or a closed stream is ignored: the reader
    left, and the status stays ``code``. With children alive (e.g. joblib's worker pool) the
    normal exit stops them; ``os._exit`` would leave them holding our stdout open.
    """
    import atexit
    import logging

    if _has_child_processes():
        return
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # BrokenPipeError is an OSError; ValueError: stream closed
            pass
    os._exit(code)


def _has_child_processes() -> bool:
    """Whether this process has live children (Linux ``/proc/PID/task/TID/children``; where that
    cannot be read, assume it may)."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    try:
        return any((t / "children").read_text().strip() for t in tasks.iterdir())
    except OSError:
        return True


__all__ = ["exit_now"]
