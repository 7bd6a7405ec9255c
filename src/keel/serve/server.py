"""``keel serve BUNDLE``: an HTTP server for a bundle (Starlette on uvicorn, ONNX Runtime; no torch,
no Lightning).

Why Starlette and not FastAPI: the request schema here is the bundle's data contract, known only
at run time and checked by keel's own checker, which must answer a bad request with the same
report as ``keel predict`` (HTTP 422). FastAPI's value is pydantic request models and their
OpenAPI schema; with raw bodies (JSON, CSV, Parquet, .npy) parsed by keel it would add pydantic
and a second 422 format without checking anything. FastAPI is Starlette underneath; Starlette
alone is a smaller import for the same ASGI app, and uvicorn is its usual server (graceful
shutdown on SIGTERM, worker processes).

Endpoints: ``POST /predict``, ``GET /health``, ``GET /ready``, ``GET /info``, ``GET /metrics``
(see README, "Serving"). :func:`create_app` builds the app for one bundle; :func:`serve` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keel.data.contract import ContractViolationError
from keel.errors import KeelError
from keel.export.bundle import BundleError
from keel.serve.batching import BatcherClosed, MicroBatcher
from keel.serve.metrics import (MULTIPROC_ENV, DriftWindow, ServeMetrics, drift_columns, drift_thresholds,
                                tensor_drift_matrix, tensor_drift_names)
from keel.serve.requests import (JSON, NPY, RequestError, body_kind, check_length, on_invalid_mode, parse,
                                 too_large)

log = logging.getLogger("keel.serve")
ENV = "KEEL_SERVE_OPTIONS"  # the options of worker processes (--workers N start the app by import string)
MAX_ROWS_LISTED = 1000  # row ids per violation in a 422 answer (``failing`` says how many in all)
# JSON and .npy bodies up to this size are parsed and checked on the event loop (a few hundred
# microseconds at most: cheaper than a thread-pool hop); larger ones, and CSV/Parquet files, in a
# worker thread, so a big body does not stall every other request
INLINE_BODY_BYTES = 64 << 10
TOP_FEATURES = 10  # features of the manifest's permutation importance listed in GET /info


@dataclass(frozen=True)
class ServeOptions:
    """What ``keel serve`` takes (the CLI flags, same names).

    Attributes:
        bundle: the bundle directory.
        int8: serve the bundle's int8 model instead of fp32.
        host, port, workers: where to listen (127.0.0.1 by default: not reachable from other
            machines unless asked) and how many processes (each loads the bundle and keeps its own
            drift window; with more than one, ``/metrics`` merges every worker's counts through
            prometheus-client's multiprocess mode, see ``keel.serve.metrics``).
        batch_window_ms: the most a request waits for others to share its model call, and only
            while other requests are on their way in (being read or checked): a lone request runs
            at once, and requests that queue while a call runs share the next one without waiting
            (see ``keel.serve.batching``).
        max_batch: most rows merged into one call (a larger single request runs alone).
        threads: ONNX Runtime intra-op threads per worker (0: its default, one per core). 1 by
            default: batch-1..64 calls of a small model gain nothing from more, and a pool thread
            per core competes with the event loop for the cores; raise it for a big model whose
            single call is long (convolutions on large images), and set ``workers`` x ``threads``
            to at most the cores. Pool threads never spin between calls.
        max_body_bytes: request bodies above this are refused (413).
        drift_window: served rows in the drift window.
        drift_interval_s: how often the drift window is compared in the background (/metrics
            also compares it when rows came since).
        graceful_timeout_s: on SIGTERM, how long in-flight requests may take before they are
            cancelled.
        access_log: uvicorn's line per request.
    """

    bundle: str
    int8: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    batch_window_ms: float = 2.0
    max_batch: int = 64
    threads: int = 1
    max_body_bytes: int = 16 << 20
    drift_window: int = 1000
    drift_interval_s: float = 1.0
    graceful_timeout_s: float = 30.0
    access_log: bool = False

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.port <= 65535:
            out.append(f"--port {self.port}: expected 0-65535")
        if self.workers < 1:
            out.append(f"--workers {self.workers}: expected >= 1")
        if not self.batch_window_ms >= 0:
            out.append(f"--batch-window-ms {self.batch_window_ms}: expected >= 0, e.g. 2")
        if self.max_batch < 1:
            out.append(f"--max-batch {self.max_batch}: expected >= 1, e.g. 64")
        if self.threads < 0:
            out.append(f"--threads {self.threads}: expected >= 0 (0: ONNX Runtime's default), e.g. 1")
        if self.max_body_bytes < 1:
            out.append(f"--max-body-bytes {self.max_body_bytes}: expected >= 1")
        if self.drift_window < 1:
            out.append(f"--drift-window {self.drift_window}: expected >= 1 rows, e.g. 1000")
        if not self.drift_interval_s > 0:
            out.append(f"--drift-interval {self.drift_interval_s}: expected > 0 seconds")
        if not self.graceful_timeout_s > 0:
            out.append(f"--graceful-timeout {self.graceful_timeout_s}: expected > 0 seconds")
        return out


def open_bundle(options: ServeOptions) -> tuple[Any, str]:
    """(the verified bundle, its id): every file's sha256 and the stored samples' outputs checked
    (``keel bundle verify``), then the session of the served model built and run once.

    The id is the sha256 of ``manifest.json``, which holds the sha256 of every other file.

    Raises:
        BundleError: a bundle that fails its checks (every problem listed), or no int8 model.
    """
    from keel.serve.bundle import load_bundle, verify_bundle

    root = Path(options.bundle)
    problems = verify_bundle(root)
    if problems:
        raise BundleError(f"{root}: refusing to serve a bundle that fails its checks: {'; '.join(problems)}")
    bundle = load_bundle(root, variant="int8" if options.int8 else "fp32", verify_hashes=False)  # just verified
    bundle_id = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    # built now (the first request should not pay for it): --threads intra-op threads, no spinning
    bundle.open_session(options.threads, spin=False)
    return bundle, bundle_id


def _json(data: Any, status: int = 200) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(data, allow_nan=False, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def _violations(reports: Any) -> list[dict[str, Any]]:
    from keel.data.contract import plain_value

    out = []
    for report in reports:
        for v in report.violations:
            rows = None if v.rows is None else [int(r) for r in np.asarray(v.rows)[:MAX_ROWS_LISTED].tolist()]
            out.append({"rule": v.rule, "column": v.feature, "failing": int(v.failing), "total": int(v.total),
                        "detail": v.detail, "examples": [[int(i), plain_value(x)] for i, x in v.examples],
                        "rows": rows, "describe": v.describe()})
    return out


def _server_fix(reports: Any) -> str:
    whole = [v for r in reports for v in r.violations if v.rows is None]
    if whole:
        what = "; ".join(v.describe() for v in whole)
        return (f"Fix: send the contract's columns ({what}); extra keys can be carried with ?keep=COLUMN. "
                "on_invalid=skip leaves out rows, not columns. The contract is 'contract' in GET /info")
    return ("Fix: correct these rows, or send ?on_invalid=skip to predict the valid ones (the others are listed in "
            "the answer's 'rejected'); the contract is 'contract' in GET /info")


class _Accounting:
    """ASGI middleware: every HTTP request counted by endpoint and status, and timed."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        predicting = scope.get("path") == "/predict"
        if predicting:
            self.metrics.in_flight.inc()

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.request(scope.get("path", ""), status[0], time.perf_counter() - start)
            if predicting:
                self.metrics.in_flight.dec()


def create_app(options: ServeOptions, opened: tuple[Any, str] | None = None) -> Any:
    """The ASGI app serving ``options.bundle`` (verified here: see :func:`open_bundle`).

    ``opened``: a bundle already opened by :func:`open_bundle` (tests, the CLI).

    Raises:
        BundleError: the bundle fails its checks.
        KeelError: invalid options.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response
    from starlette.routing import Route

    problems = options.problems()
    if problems:
        raise KeelError("invalid keel serve options: " + "; ".join(problems))
    bundle, bundle_id = opened or open_bundle(options)
    manifest, task = bundle.manifest, bundle.task
    reference = (manifest.get("data") or {}).get("reference")
    drift = DriftWindow(reference, drift_thresholds(manifest), options.drift_window) if reference else None
    # a tensor bundle whose reference has exactly the tensor drift features: rows go in as a matrix
    drift_matrix = (drift is not None and not bundle.is_table and not drift.other
                    and drift.numeric == tensor_drift_names(tuple(bundle.contract.shape)))
    # several workers: the directory serve() made for prometheus-client's multiprocess mode
    multiproc = os.environ.get(MULTIPROC_ENV) if options.workers > 1 else None
    metrics = ServeMetrics(task, manifest, drift, multiproc)
    session = bundle.session
    from keel.export.runtime import run

    batcher = MicroBatcher(lambda x: run(session, x), options.batch_window_ms / 1000.0, options.max_batch,
                           on_batch=lambda s: metrics.batch(s.rows, s.requests, s.seconds))
    state = {"ready": False}
    head = {"bundle_id": bundle_id, "model": bundle.variant}

    def error(status: int, kind: str, message: str) -> Any:
        return _json({"error": kind, "status": status, "message": message, **head}, status)

    async def read_body(request: Request) -> bytes:
        # Not Starlette's Route(max_body_size=...): that answers a plain-text "Content Too Large";
        # this one answers in the JSON of every other refusal, naming the limit and the fix.
        limit = options.max_body_bytes
        check_length(request.headers.get("content-length"), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, too_large(limit))
            chunks.append(chunk)
        return b"".join(chunks)

    def read(kind: str, body: bytes, keep: tuple[str, ...], on_invalid: str) -> tuple[Any, Any]:
        parsed = parse(bundle, kind, body, keep)
        return parsed, bundle.encode_rows(parsed.rows, parsed.source, on_invalid=on_invalid)

    async def predict(request: Request) -> Any:
        try:
            with batcher.incoming():  # a model call about to run waits for this one (at most the window)
                on_invalid = on_invalid_mode(request.query_params.get("on_invalid"))
                keep = tuple(request.query_params.getlist("keep"))
                kind = body_kind(request.headers.get("content-type"))
                body = await read_body(request)
                if len(body) <= INLINE_BODY_BYTES and kind in (JSON, NPY):
                    # parse + check on the event loop: ~100 us for a small body, less than a
                    # thread-pool hop costs (and no temporary file, unlike CSV/Parquet)
                    parsed, enc = read(kind, body, keep, on_invalid)
                else:  # large bodies and files off the loop, in one hop
                    parsed, enc = await run_in_threadpool(read, kind, body, keep, on_invalid)
        except RequestError as e:
            names = {400: "bad_request", 413: "body_too_large", 415: "unsupported_media_type"}
            return error(e.status, names.get(e.status, "bad_request"), str(e))
        except ClientDisconnect:
            return Response(status_code=400)
        except ContractViolationError as e:
            metrics.rejected(e.reports)
            report = ContractViolationError(e.reports, e.source, fix=_server_fix(e.reports))
            return _json({"error": "contract_violation", "status": 422, **head, "contract": e.reports[0].contract,
                          "source": e.source, "message": str(report), "violations": _violations(e.reports)}, 422)
        except KeelError as e:  # no rows, a reader's refusal: the request, not the server
            return error(400, "bad_request", str(e))
        except Exception:  # a bug of ours (the checks answer every input with a report): said, and logged
            log.exception("keel serve: reading a request failed")
            return error(500, "internal_error", "the server failed to read this request (logged)")
        try:
            outputs = await batcher.submit(enc.x)
        except BatcherClosed as e:
            return error(503, "shutting_down", str(e))
        except Exception:  # noqa: BLE001  ONNX Runtime failed on checked input: the server's fault
            log.exception("keel serve: the model call failed")
            return error(500, "internal_error", "the model failed on this request (logged)")
        records = task.prediction_records(outputs, manifest)
        carried = list(parsed.rows.carried)
        ids = enc.rows.tolist()
        answers = [{"row": r, **{c: parsed.rows.carried[c][r] for c in carried}, **rec} for r, rec in zip(ids, records)]
        metrics.predicted(records)
        if enc.report is not None:
            metrics.rejected([enc.report])
        if drift is not None:
            try:
                if drift_matrix:  # tensors: one matrix into the window, no dict of one-row columns
                    drift.add_matrix(tensor_drift_matrix(enc.x))
                else:
                    drift.add(drift_columns(bundle, parsed.rows.data, enc.x, enc.rows))
            except Exception:  # noqa: BLE001  the answer is right; a drift bookkeeping failure is logged, not returned
                log.exception("keel serve: adding rows to the drift window failed")
        out: dict[str, Any] = {**head, "task": task.name, "rows": len(answers), "predictions": answers}
        if on_invalid == "skip":
            out["rejected"] = [{"row": r, "violations": v} for r, v in enc.invalid.items()]
        return _json(out)

    async def health(request: Request) -> Any:
        return _json({"status": "alive"})

    async def ready(request: Request) -> Any:
        ok = state["ready"]
        return _json({"ready": ok, **head, "verified": "sha256 of every file and the stored samples' outputs"},
                     200 if ok else 503)

    info_doc = _info(bundle, bundle_id, options, drift)

    async def info(request: Request) -> Any:
        return _json(info_doc)

    async def prometheus(request: Request) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        await run_in_threadpool(metrics.update_drift)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def drift_loop() -> None:
        while True:
            await asyncio.sleep(options.drift_interval_s)
            try:
                await run_in_threadpool(metrics.update_drift)
            except Exception:  # noqa: BLE001  keep serving; the next round tries again
                log.exception("keel serve: comparing the drift window failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        await batcher.start()
        task_ = asyncio.get_running_loop().create_task(drift_loop(), name="keel-drift")
        state["ready"] = True
        log.info("keel serve: %s (%s model, bundle %s) ready", options.bundle, bundle.variant, bundle_id[:12])
        try:
            yield
        finally:
            state["ready"] = False
            task_.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task_
            await batcher.close()  # every request already queued gets its answer
            metrics.close()
            log.info("keel serve: stopped")

    routes = [Route("/predict", predict, methods=["POST"]), Route("/health", health, methods=["GET"]),
              Route("/ready", ready, methods=["GET"]), Route("/info", info, methods=["GET"]),
              Route("/metrics", prometheus, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_Accounting, metrics=metrics)])
    app.state.keel = {"bundle": bundle, "bundle_id": bundle_id, "metrics": metrics, "batcher": batcher,
                      "drift": drift, "options": options}
    return app


def _info(bundle: Any, bundle_id: str, options: ServeOptions, drift: DriftWindow | None) -> dict[str, Any]:
    """GET /info: what the bundle is (a summary of its manifest) and how it is served."""
    m = bundle.manifest
    quant = m.get("quantization") or {}
    out: dict[str, Any] = {
        "bundle_id": bundle_id, "bundle": str(options.bundle), "model": bundle.variant, "task": bundle.task.name,
        "created": m.get("created"), "contract": m["data"]["contract"], "io": m.get("io"), "models": m.get("models"),
        "metrics": m.get("metrics"), "quantization": {k: quant.get(k) for k in ("accepted", "mode", "reason")
                                                      if k in quant},
        "packages": m.get("packages"), "source": m.get("source"),
        "serving": {"batch_window_ms": options.batch_window_ms, "max_batch": options.max_batch,
                    "max_body_bytes": options.max_body_bytes, "workers": options.workers,
                    "threads": options.threads},
    }
    for key in ("classes", "class_names", "target"):
        if key in m:
            out[key] = m[key]
    if drift is not None:
        out["drift"] = {"window_rows": drift.size, "features": len(drift.features),
                        "thresholds": drift.thresholds.to_dict()}
    if m.get("importance") is not None:
        out.update(_importance(m["importance"]))
    return _plain(out)


def _importance(doc: Any) -> dict[str, Any]:
    """``top_features`` (the first :data:`TOP_FEATURES` by mean importance, descending: name, mean,
    std) and ``importance`` (how it was measured: method, metric, split, repeats) of the manifest's
    ``importance`` (permutation importance written at export).

    Raises:
        BundleError: a malformed ``importance`` (what is wrong, and where).
    """
    where = "manifest.json 'importance'"
    if not isinstance(doc, dict) or not isinstance(doc.get("features"), list):
        raise BundleError(f"{where}: expected an object with a 'features' list, got {type(doc).__name__}. Fix: "
                          "re-export the bundle, or remove the key")
    missing = [k for k in ("method", "metric", "split", "repeats") if k not in doc]
    problems = [f"no {k!r}" for k in missing]
    for i, f in enumerate(doc["features"]):
        if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                and all(isinstance(f.get(k), (int, float)) and not isinstance(f.get(k), bool) for k in ("mean", "std"))):
            problems.append(f"features[{i}] = {f!r}: expected {{'name': str, 'mean': number, 'std': number, ...}}")
    if problems:
        raise BundleError(f"{where}: {'; '.join(problems[:5])}. Fix: re-export the bundle, or remove the key")
    ranked = sorted(doc["features"], key=lambda f: -f["mean"])  # stable: ties keep the manifest's order
    return {"top_features": [{"name": f["name"], "mean": f["mean"], "std": f["std"]} for f in ranked[:TOP_FEATURES]],
            "importance": {k: doc[k] for k in ("method", "metric", "split", "repeats")}}


def _plain(v: Any) -> Any:
    """JSON-safe (no NaN/Inf: strict JSON)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def app_from_env() -> Any:
    """The app of a worker process (``--workers N``): options from ``$KEEL_SERVE_OPTIONS``."""
    return create_app(ServeOptions(**json.loads(os.environ[ENV])))


def log_config() -> dict[str, Any]:
    """uvicorn's logging config, with keel's serving logger (``keel.serve``: ready, stopped, drift
    alerts) on its stderr handler."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["keel"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return cfg


def serve(options: ServeOptions) -> int:
    """Run the server until SIGTERM/SIGINT; returns 0 after a graceful shutdown (in-flight
    requests answered; new connections refused from the signal on).

    Raises:
        BundleError, KeelError: the bundle fails its checks or the options are invalid (before
            anything listens).
    """
    import uvicorn

    problems = options.problems()
    if problems:
        raise KeelError("invalid keel serve options: " + "; ".join(problems))
    opened = open_bundle(options)
    _info(*opened, options, None)  # a malformed manifest section is refused here, before any worker starts
    common = dict(host=options.host, port=options.port, log_config=log_config(),
                  access_log=options.access_log, timeout_graceful_shutdown=math.ceil(options.graceful_timeout_s),
                  lifespan="on",
                  # uvloop and httptools (dependencies; "auto" falls back to asyncio and h11 without
                  # them): about half the HTTP stack's CPU per request
                  loop="auto", http="auto")
    # uvicorn re-raises the signal it shut down on once it has finished (so a default handler
    # would kill the process by that signal after the graceful shutdown); with these no-op
    # handlers in place the re-raised signal is a no-op and `keel serve` exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if options.workers == 1:
        uvicorn.run(create_app(options, opened), **common)
        return 0
    # prometheus-client's multiprocess mode: the workers (spawned: fresh interpreters with this
    # environment) write their values to files here, merged by whichever one answers /metrics.
    # A fresh directory per server (prometheus-client's docs: files of an earlier run would be
    # counted), removed when it stops.
    metrics_dir = tempfile.mkdtemp(prefix="keel-serve-metrics-")
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[ENV] = json.dumps(asdict(options))
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        uvicorn.run("keel.serve.server:app_from_env", factory=True, workers=options.workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
    return 0


__all__ = ["ServeOptions", "app_from_env", "create_app", "open_bundle", "serve"]
