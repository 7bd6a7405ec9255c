"""GET /info of ``keel serve``: the manifest's permutation importance as ``top_features``.

The app runs in-process (no socket): :class:`InProcess` drives it as an ASGI server does
(lifespan, then requests). Bundles are toys built with ``onnx.helper`` (a linear model over a
3-column table, reference statistics for drift; no torch, no training, well under a second).
``test_deploy.py`` serves the same toys.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

COLUMNS = ("mean radius", "mean texture", "smoothness")
CONTRACT = {"kind": "table", "name": "toy", "target": "y", "classes": ["no", "yes"],
            "columns": {c: {"dtype": "float64", "nullable": False, "min": 0.0, "max": 100.0} for c in COLUMNS}}
REGRESSION_CONTRACT = {"kind": "table", "task": "regression", "name": "toy_reg", "target": "y",
                       "columns": CONTRACT["columns"]}


def _onnx(path: Path, features: int, outputs: int, regression: bool) -> None:
    """A linear model over ``features`` float32 inputs: ``logits`` and ``probabilities`` (batch,
    outputs), or for regression ``prediction`` (batch,), as keel's exported models name them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(features, outputs)).astype(np.float32) / 50
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(outputs, np.float32), "b"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    if regression:
        nodes = [helper.make_node("Gemm", ["input", "W", "b"], ["z"]),
                 helper.make_node("Reshape", ["z", "flat"], ["prediction"])]
        outs = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch"])]
    else:
        nodes = [helper.make_node("Gemm", ["input", "W", "b"], ["logits"]),
                 helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
        outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", outputs])
                for n in ("logits", "probabilities")]
    graph = helper.make_graph(nodes, "linear",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
                              outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def toy_bundle(root: Path, regression: bool = False, **extra: Any) -> Path:
    """A table bundle as export writes it (model, samples, manifest with the sha256 of every file
    and reference statistics), classification (no/yes) or regression (target in [0, 10]);
    ``extra``: more manifest keys."""
    from keel.data.drift import reference_stats
    from keel.export.bundle import write_manifest
    from keel.export.runtime import run, session

    root.mkdir(parents=True)
    _onnx(root / "model.onnx", len(COLUMNS), 1 if regression else 2, regression)
    rng = np.random.default_rng(1)
    train = {c: rng.uniform(10, 30, 500) for c in COLUMNS}
    (root / "samples").mkdir()
    x = np.stack([train[c][:4] for c in COLUMNS], axis=1).astype(np.float32)
    outputs = ("prediction",) if regression else ("logits", "probabilities")
    for name, arr in zip(("input", *outputs), (x, *run(session(root / "model.onnx"), x))):
        np.save(root / "samples" / f"{name}.npy", arr)
    shape = ["batch"] if regression else ["batch", 2]
    manifest: dict[str, Any] = {
        "task": "regression" if regression else "classification",
        "models": {"fp32": "model.onnx", "int8": None},
        "io": {"inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", len(COLUMNS)]}],
               "outputs": [{"name": n, "dtype": "float32", "shape": shape} for n in outputs]},
        "data": {"contract": REGRESSION_CONTRACT if regression else CONTRACT,
                 "reference": reference_stats(train, {c: "numeric" for c in COLUMNS})},
        "config": {"data": {"drift": {"enabled": True, "psi_alert": 0.25}}},
        "samples": {n: f"samples/{n}.npy" for n in ("input", *outputs)},
        "quantization": None,
        **({"target": {"name": "y", "min": 0.0, "max": 10.0, "mean": 5.0, "std": 2.0}} if regression
           else {"classes": ["no", "yes"], "class_names": ["no", "yes"]}),
        **extra,
    }
    write_manifest(root, manifest)
    return root


def rows(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{c: float(rng.uniform(10, 30)) for c in COLUMNS} for _ in range(n)]


class InProcess:
    """The app of ``keel serve BUNDLE`` driven in-process as an ASGI server drives it: lifespan
    startup on enter, shutdown on exit; :meth:`call` sends one HTTP request. (Starlette's
    TestClient needs httpx, which keel does not depend on.)"""

    def __init__(self, bundle: Path, **options: Any) -> None:
        from keel.serve.server import ServeOptions, create_app

        self.app = create_app(ServeOptions(bundle=str(bundle), **options))
        self._loop = asyncio.new_event_loop()

    def __enter__(self) -> InProcess:
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._from_app: asyncio.Queue = asyncio.Queue()
        self._lifespan = self._loop.create_task(self.app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                                         self._to_app.get, self._from_app.put))
        self._lifespan_step("startup")
        return self

    def _lifespan_step(self, what: str) -> None:
        async def step() -> dict:
            await self._to_app.put({"type": f"lifespan.{what}"})
            return await asyncio.wait_for(self._from_app.get(), 10)

        message = self._loop.run_until_complete(step())
        assert message["type"] == f"lifespan.{what}.complete", message

    def __exit__(self, *exc: Any) -> None:
        self._lifespan_step("shutdown")
        self._loop.run_until_complete(self._lifespan)
        self._loop.close()

    def call(self, method: str, target: str, body: bytes = b"", ctype: str | None = None) -> tuple[int, bytes]:
        path, _, query = target.partition("?")
        headers = [(b"content-length", str(len(body)).encode())] + ([(b"content-type", ctype.encode())] if ctype else [])
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "root_path": "", "headers": headers, "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 9)}
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)  # the client stays connected
            raise AssertionError("unreachable")

        async def send(message: dict) -> None:
            sent.append(message)

        self._loop.run_until_complete(asyncio.wait_for(self.app(scope, receive, send), 30))
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    def json(self, method: str, target: str, doc: Any = None) -> tuple[int, Any]:
        body = b"" if doc is None else json.dumps(doc).encode()
        status, data = self.call(method, target, body, "application/json" if doc is not None else None)
        return status, json.loads(data)


# ------------------------------------------------------------------------------ /info

FEATURES = [{"name": f"f{i:02d}", "mean": round(0.5 - 0.03 * i, 4), "std": 0.01 * i, "rank": i + 1} for i in range(14)]
IMPORTANCE = {"method": "permutation", "metric": "acc", "higher_is_better": True, "split": "test", "rows": 270,
              "repeats": 5, "seed": 0, "baseline": 0.97, "features": FEATURES}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return toy_bundle(tmp_path_factory.mktemp("info") / "bundle")


def _with_manifest_key(src: Path, dst: Path, key: str, value: Any) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest[key] = value
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def test_info_lists_the_top_ten_features_and_how_importance_was_measured(plain, tmp_path):
    from keel.serve.bundle import verify_bundle

    bundle = _with_manifest_key(plain, tmp_path / "b", "importance", IMPORTANCE)
    # manifest.json is not in its own file table: the edited bundle still verifies...
    assert "manifest.json" not in json.loads((bundle / "manifest.json").read_text())["files"]
    assert verify_bundle(bundle) == []
    with InProcess(bundle) as server:
        status, ready = server.json("GET", "/ready")
        assert status == 200 and ready["ready"] is True  # ...and is served as ready
        assert ready["bundle_id"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
        status, info = server.json("GET", "/info")
    assert status == 200
    assert info["top_features"] == [{"name": f["name"], "mean": f["mean"], "std": f["std"]} for f in FEATURES[:10]]
    assert info["importance"] == {"method": "permutation", "metric": "acc", "split": "test", "repeats": 5}


def test_info_orders_by_mean_importance_even_when_the_manifest_does_not(plain, tmp_path):
    shuffled = dict(IMPORTANCE, features=[FEATURES[i] for i in (5, 0, 13, 2, 1, 3, 4, 12, 6, 7, 8, 11, 9, 10)])
    with InProcess(_with_manifest_key(plain, tmp_path / "b", "importance", shuffled)) as server:
        info = server.json("GET", "/info")[1]
    assert [f["name"] for f in info["top_features"]] == [f"f{i:02d}" for i in range(10)]


def test_a_bundle_without_importance_has_no_top_features(plain, tmp_path):
    with InProcess(plain) as server:
        info = server.json("GET", "/info")[1]
    assert "top_features" not in info and "importance" not in info
    assert info["task"] == "classification" and info["drift"]["features"] == 3  # the rest of /info is there
    with InProcess(_with_manifest_key(plain, tmp_path / "b", "importance", None)) as server:
        info = server.json("GET", "/info")[1]
    assert "top_features" not in info and "importance" not in info


def test_fewer_than_ten_features_are_all_listed(plain, tmp_path):
    few = dict(IMPORTANCE, features=FEATURES[:3])
    with InProcess(_with_manifest_key(plain, tmp_path / "b", "importance", few)) as server:
        info = server.json("GET", "/info")[1]
    assert [f["name"] for f in info["top_features"]] == ["f00", "f01", "f02"]


@pytest.mark.parametrize("bad, match", [
    ({"method": "permutation"}, r"expected an object with a 'features' list"),
    ([1, 2], r"expected an object with a 'features' list, got list"),
    ({**IMPORTANCE, "features": [{"name": "a", "mean": "high", "std": 0.1}]},
     r"features\[0\] = .*expected \{'name': str, 'mean': number"),
    ({k: v for k, v in IMPORTANCE.items() if k != "metric"}, r"no 'metric'"),
])
def test_a_malformed_importance_is_refused_at_startup_with_what_is_wrong(plain, tmp_path, bad, match):
    from keel.export.bundle import BundleError
    from keel.serve.server import ServeOptions, create_app

    bundle = _with_manifest_key(plain, tmp_path / "b", "importance", bad)
    with pytest.raises(BundleError, match=r"manifest.json 'importance': " + match):
        create_app(ServeOptions(bundle=str(bundle)))


def test_keel_serve_with_workers_refuses_a_malformed_importance_before_any_worker_starts(plain, tmp_path, capsys):
    from keel.cli import main

    bundle = _with_manifest_key(plain, tmp_path / "b", "importance", {"features": "mean radius"})
    assert main(["serve", str(bundle), "--workers", "2", "--port", "0"]) == 2  # returns: nothing listened
    assert "manifest.json 'importance': expected an object with a 'features' list" in capsys.readouterr().err
