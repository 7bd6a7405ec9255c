"""What reaches the console during a run: keel's own lines and every warning; the rest goes to
the run log only.

Hydra's job logging (conf/hydra/default.yaml ``job_logging``) gives the root logger two handlers:
the console and ``<run dir>/<job>.log``. The file keeps every INFO line of every library (the
ONNX exporter's passes, ONNX Runtime's quantizer notes, which it logs through the *root* logger,
Lightning's device lines and model summary); the console handler carries :class:`ConsoleFilter`,
which lets through keel's records and anything at WARNING or above. ``console_log=all`` (or
``hydra.verbose=true``) shows everything on the console too.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["ConsoleFilter", "ConsoleFormatter", "KEEL_LOGGERS", "quiet_known_warnings"]

# Loggers whose INFO lines are keel's own (the package, and the thin entry scripts' __main__).
KEEL_LOGGERS = ("keel", "__main__", "hydra_plugins.keel_optuna_sweeper")
SHOW = ("keel", "all")


def _is_keel(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in KEEL_LOGGERS)


class ConsoleFilter(logging.Filter):
    """Passes keel's records and WARNING+ from anyone; with ``show="all"`` (or when the root
    logger is at DEBUG, as ``hydra.verbose=true`` sets it) every record.

    Args:
        show: ``keel`` (default) or ``all``.

    Raises:
        ValueError: for another ``show``.
    """

    def __init__(self, show: str = "keel") -> None:
        super().__init__()
        if show not in SHOW:
            raise ValueError(f"console_log={show!r}: expected one of {list(SHOW)}. Fix: console_log=keel "
                             "(keel's lines and every warning) or console_log=all (every library's INFO too)")
        self.show = show

    def filter(self, record: logging.LogRecord) -> bool:
        if self.show == "all" or record.levelno >= logging.WARNING or _is_keel(record.name):
            return True
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message`` for keel's INFO lines; ``HH:MM:SS LEVEL [logger] message`` for the rest,
    so a line keel did not write says whose it is."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, self.datefmt)
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.levelno == logging.INFO and _is_keel(record.name):
            return f"{stamp} {message}"
        return f"{stamp} {record.levelname} [{record.name}] {message}"


def quiet_known_warnings() -> None:
    """Silence the warnings a keel run is known to trigger in its libraries, each by exact message.

    - lightning 2.6 on torch 2.13 checks ``isinstance(treespec, LeafSpec)``, which torch deprecates
      (lightning/pytorch/utilities/_pytree.py; also reached from copyreg when batches are pickled).
      It is Lightning's call, not the user's, and changes nothing in the run.
    - Lightning warns when an epoch has fewer batches than ``trainer.log_every_n_steps``: keel's
      metrics are epoch values (the module computes them at each epoch's end), so a small table
      with one batch per epoch loses nothing; only the per-step LR curve is sparser.
    """
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging "
                            r"interval", category=UserWarning)
