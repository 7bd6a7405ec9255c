"""Base class for mistakes a user can fix: shown as one message, no traceback, exit code 2."""


class KeelError(Exception):
    """A user-facing error: bad config, bad data, unusable machine setting.

    The message names the value, what was expected and how to fix it. Entry points print
    it without a traceback and exit with status 2.
    """

    exit_code = 2


class DiskFullError(KeelError):
    """A write ran out of space (or quota). The file or bundle it replaces is left as it was."""


def disk_full(e: OSError, target: str, kept: str) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``e`` when it means "no space left" (ENOSPC, EDQUOT, EFBIG),
    else None. ``target``: what was being written; ``kept``: what is still intact."""
    import errno
    import shutil
    from pathlib import Path

    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return None
    where = Path(target).parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.1f} MiB free on {where}"
    except OSError:
        free = f"free space on {where} unknown"
    return DiskFullError(
        f"no space left while writing {target} ({e.strerror or e}; {free}). {kept} "
        "Fix: free disk space (or point paths.log_dir at a larger disk), then continue the run with "
        "ckpt_path=auto run_dir=<this run's directory>"
    )
