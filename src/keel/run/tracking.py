"""MLflow runs: what a keel run leaves in the tracking store, and where a person finds it.

Lightning's ``MLFlowLogger`` (conf/logger/mlflow.yaml) creates the MLflow run and logs every
metric the LightningModule logs, per epoch, while the run trains. :func:`finish_mlflow_run` adds
what only the end of the run knows: the curated params, the final metrics, the run's files as
artifacts, the run's status. :func:`prepare_mlflow_logger` gives the logger's extra arguments
at the start: the store and experiment made once under a lock (parallel sweep jobs, torchrun
ranks) and, for a run continued in place, the MLflow run it started. :func:`mlflow_rows` is
what the summary prints.

MLflow is imported here only inside the functions: ``import keel`` and ``train.py --help`` never
pay for it (~1.4 s); a run with ``logger=mlflow`` imports it when the logger is built.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from keel.errors import KeelError

log = logging.getLogger("keel")

# MLflow's limits (mlflow.utils.validation; the tracking server enforces them too).
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
# MLflow 3 servers take 6000 characters per param value; 500 is the limit of older servers and
# other backends still in use (Databricks before 2024). Curated params are short; the cut is marked.
MAX_PARAM_VALUE_LENGTH = 500
STATUSES = ("FINISHED", "FAILED", "KILLED")
# What of a run directory becomes an artifact, and where in the run's artifacts.
CONFIG_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml")
RECORD_FILES = ("run.json", "metrics.json")
# the contract and drift reports (keel.fit.write_data_reports) and any other small record there
DATA_REPORT_SUFFIXES = (".json", ".yaml")

# Names MLflow accepts: letters, digits, _ - . / space (and ':' except on Windows servers: left out).
_BAD_KEY_CHARS = re.compile(r"[^\w\-./ ]")


class TrackingError(KeelError):
    """The tracking store refused or could not be reached; the run's own files are complete."""


def mlflow_key(name: str) -> str:
    """``name`` as a valid MLflow param/metric key: other characters become ``_``, empty or
    ``..`` path parts are dropped (MLflow refuses keys that normalize to another name), at most
    :data:`MAX_KEY_LENGTH` characters. ``val/acc_best`` stays as it is."""
    parts = [p for p in _BAD_KEY_CHARS.sub("_", str(name)).split("/") if p not in ("", ".", "..")]
    key = "/".join(parts)[:MAX_KEY_LENGTH].rstrip("/")
    return key or "_"


def mlflow_param_value(value: Any) -> str:
    """A param value as MLflow stores it (text): ``str(value)``, cut to :data:`MAX_PARAM_VALUE_LENGTH`
    with a trailing ``...`` when longer."""
    text = str(value)
    if len(text) <= MAX_PARAM_VALUE_LENGTH:
        return text
    return text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _params_to_log(params: Mapping[str, Any], logged: Mapping[str, str]) -> dict[str, str]:
    """The params not yet in the run. MLflow refuses to change a logged param: a value that
    differs from the one already there (a run continued with other overrides) keeps the first
    and is named in a warning."""
    out: dict[str, str] = {}
    for name, value in params.items():
        key, text = mlflow_key(name), mlflow_param_value(value)
        if key in out and out[key] != text:
            log.warning("MLflow param %r: %r and %r map to the same key; kept the first", key, out[key], text)
            continue
        if key in logged:
            if logged[key] != text:
                log.warning("MLflow param %s=%s was logged by this run before; MLflow keeps params "
                            "fixed, so %s=%s is not logged", key, logged[key], key, text)
            continue
        out.setdefault(key, text)
    return out


def _metrics_to_log(metrics: Mapping[str, float], latest: Mapping[str, float]) -> dict[str, float]:
    """The final metrics whose value the run's latest does not already show (Lightning logged most
    of them while the run trained): no duplicate point in a metric's history."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        key, v = mlflow_key(name), float(value)
        old = latest.get(key)
        if old is not None and (old == v or (math.isnan(old) and math.isnan(v))):
            continue
        out[key] = v
    return out


def _global_step(output_dir: Path) -> int:
    """The run's last step (``metrics.json``), for final metrics Lightning did not log; 0 if unknown."""
    try:
        return int(json.loads((output_dir / "metrics.json").read_text()).get("global_step") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def run_artifacts(output_dir: Path, bundle_dir: Path | None) -> list[tuple[Path, str | None]]:
    """``(local path, artifact dir)`` for every file or folder of a run that is uploaded, in order:
    the bundle folder under ``bundle/``, ``run.json`` and ``metrics.json`` at the top, the resolved
    config under ``config/``, the data reports under ``data/``, the job's log under ``logs/``.
    Only what exists."""
    out: list[tuple[Path, str | None]] = []
    if bundle_dir is not None and Path(bundle_dir).is_dir():
        out.append((Path(bundle_dir), "bundle"))
    out += [(output_dir / name, None) for name in RECORD_FILES if (output_dir / name).is_file()]
    out += [(output_dir / name, "config") for name in CONFIG_FILES if (output_dir / name).is_file()]
    data = output_dir / "data"
    if data.is_dir():
        out += [(p, "data") for p in sorted(data.iterdir()) if p.is_file() and p.suffix in DATA_REPORT_SUFFIXES]
    out += [(p, "logs") for p in sorted(output_dir.glob("*.log")) if p.is_file()]
    return out


def finish_mlflow_run(logger: Any, *, params: Mapping[str, Any], metrics: Mapping[str, float],
                      output_dir: Path, bundle_dir: Path | None, status: str = "FINISHED") -> None:
    """Complete a run's MLflow record and end the MLflow run with ``status``.

    Logs ``params`` (keys made valid with :func:`mlflow_key`, values as text of at most
    :data:`MAX_PARAM_VALUE_LENGTH` characters, 100 per batch; a param the run already has keeps
    its first value), the final ``metrics`` under their own names where the run's latest value
    differs (at the run's last step), and uploads :func:`run_artifacts`. Only global rank 0
    writes; elsewhere this returns at once.

    Args:
        logger: a ``lightning.pytorch.loggers.MLFlowLogger``.
        params: flat ``{name: str|int|float|bool}`` (keel.run.report.curated_params).
        metrics: the final metrics, e.g. ``{"val/acc_best": 0.93, "test/acc": 0.94}``.
        output_dir: the run directory (``run.json``, ``metrics.json``, ``.hydra/``, ``data/``).
        bundle_dir: the bundle folder, or None when the run wrote none.
        status: ``FINISHED``, ``FAILED`` or ``KILLED``.

    Raises:
        ValueError: an unknown ``status``.
        TrackingError: the store refused a write or could not be reached (the MLflow run is then
            marked FAILED where the store still answers).
    """
    from lightning.pytorch.utilities import rank_zero_only

    if status not in STATUSES:
        raise ValueError(f"status={status!r}: allowed {', '.join(STATUSES)}")
    if rank_zero_only.rank != 0:
        return
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    client, run_id = logger.experiment, logger.run_id
    output_dir = Path(output_dir)
    try:
        _flush_async_logging()
        data = client.get_run(run_id).data
        new_params = _params_to_log(params, data.params)
        for batch in _batches([Param(k, v) for k, v in new_params.items()], MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=list(batch))
        step, now_ms = _global_step(output_dir), int(time.time() * 1000)
        new_metrics = _metrics_to_log(metrics, data.metrics)
        for batch in _batches([Metric(k, v, now_ms, step) for k, v in new_metrics.items()], MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=list(batch))
        for path, where in run_artifacts(output_dir, bundle_dir):
            if path.is_dir():
                client.log_artifacts(run_id, str(path), where)
            else:
                client.log_artifact(run_id, str(path), where)
        client.set_terminated(run_id, status)
    except (MlflowException, OSError) as e:
        try:
            client.set_terminated(run_id, "FAILED")
        except (MlflowException, OSError):
            pass  # the store is gone: the first error is the one to report
        raise TrackingError(
            f"MLflow run {run_id} at {client.tracking_uri}: could not complete the record ({e}). The run's "
            f"files are complete in {output_dir}. Fix: check the tracking store (logger.mlflow.tracking_uri), "
            f"or train with logger=tensorboard") from e


def _flush_async_logging() -> None:
    """Wait for metrics queued by asynchronous logging (``synchronous: false``) before reading back."""
    import mlflow

    mlflow.flush_async_logging()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative to the working directory
    when written with three slashes), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def browse_command(tracking_uri: str) -> str:
    """How a person looks at the runs of ``tracking_uri``: ``mlflow ui --backend-store-uri ...``
    with an absolute path for a local store (it works from any directory), else the URI itself."""
    db = _sqlite_path(tracking_uri)
    if db is not None:
        return f"mlflow ui --backend-store-uri sqlite:///{db.resolve()}"
    if tracking_uri.startswith("file:"):  # MLflow's file store (deprecated in MLflow 3)
        from urllib.parse import urlparse

        path = urlparse(tracking_uri).path if tracking_uri.startswith("file://") else tracking_uri[len("file:"):]
        return f"mlflow ui --backend-store-uri {Path(path).resolve().as_uri()}"
    return tracking_uri


def mlflow_rows(loggers: Sequence[Any]) -> list[tuple[str, str]]:
    """Summary rows for the MLflow loggers among ``loggers``: ``("mlflow", "mlflow ui
    --backend-store-uri sqlite:////abs/outputs/mlflow.db  (run <id>)")`` for a local store, the
    run's page for a tracking server. Rank 0 only (elsewhere no row)."""
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return []
    rows = []
    for lg in loggers:
        if not isinstance(lg, MLFlowLogger):
            continue
        uri, run_id, experiment_id = lg.experiment.tracking_uri, lg.run_id, lg.experiment_id
        if uri.startswith(("http://", "https://")):
            rows.append(("mlflow", f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"))
        else:
            rows.append(("mlflow", f"{browse_command(uri)}  (run {run_id})"))
    return rows


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive lock on a local SQLite store (``<db>.lock`` beside it) while it is created:
    MLflow builds a new database's tables without one, and two processes starting on a fresh
    store at once (a joblib sweep, torchrun ranks) would both build them. Other stores: no lock."""
    db = _sqlite_path(tracking_uri)
    if db is None or os.name != "posix":
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_mlflow_logger(node: Mapping[str, Any], *, continued: bool) -> dict[str, Any]:
    """Extra constructor arguments for a ``MLFlowLogger`` config ``node`` (resolved), before it is built.

    Makes the store (a new SQLite database's tables) and, in global rank 0, the experiment, under
    one lock (:func:`_store_lock`), so parallel sweep jobs and torchrun ranks do not race to
    create them. For a run ``continued`` in place (``ckpt_path=auto run_dir=DIR``), returns
    ``{"run_id": ...}`` of the newest MLflow run tagged with the same ``keel.run_dir``, marked
    RUNNING again; the logger then continues that run (epochs redone after the checkpoint show
    twice in a metric's history, at the same steps). Otherwise ``{}``.
    """
    # MLflow 3 sends usage telemetry unless told not to; keel runs offline and sends nothing on
    # its users' behalf. MLFLOW_DISABLE_TELEMETRY=false in the environment turns it back on.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from keel.distributed import is_rank_zero

    uri = node.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return {}  # MLFlowLogger's own default (file:./mlruns): nothing shared to make first
    uri = str(uri)
    name = node.get("experiment_name")
    try:
        with _store_lock(uri):
            client = MlflowClient(uri)
            if not is_rank_zero() or not name:
                return {}
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    client.create_experiment(name, artifact_location=node.get("artifact_location"))
                except MlflowException as e:  # another job of a sweep made it first (tracking server)
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                experiment = client.get_experiment_by_name(name)
        run_dir = (node.get("tags") or {}).get("keel.run_dir")
        if not continued or experiment is None or not run_dir:
            return {}
        quoted = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`keel.run_dir` = '{quoted}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return {}
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        log.info("MLflow: continuing run %s (%s)", run_id, run_dir)
        return {"run_id": run_id}
    except MlflowException as e:
        raise TrackingError(f"MLflow at {uri}: {e}. Fix: check logger.mlflow.tracking_uri, or train with "
                            f"logger=tensorboard") from e


__all__ = ["MAX_PARAM_VALUE_LENGTH", "TrackingError", "browse_command", "finish_mlflow_run", "mlflow_key",
           "mlflow_param_value", "mlflow_rows", "prepare_mlflow_logger", "run_artifacts"]
