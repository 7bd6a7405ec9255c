"""keel.run.tracking against a real MLFlowLogger on a local SQLite store: no training.

One store serves the module (a new database's tables take seconds to build); each test files its
runs under an experiment of its own.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from keel.run.tracking import (
    MAX_PARAM_VALUE_LENGTH,
    browse_command,
    finish_mlflow_run,
    mlflow_key,
    mlflow_param_value,
    mlflow_rows,
    prepare_mlflow_logger,
)


@pytest.fixture(scope="module", autouse=True)
def _no_telemetry():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # offline, and nothing sent from a test
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """``(tracking URI, artifact root)`` of one SQLite store, its tables built once."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).search_experiments()
    return uri, root / "artifacts"


def _logger(store, **kwargs):
    from lightning.pytorch.loggers import MLFlowLogger

    uri, artifacts = store
    kwargs.setdefault("experiment_name", f"test-{uuid.uuid4().hex[:8]}")
    return MLFlowLogger(tracking_uri=uri, artifact_location=str(artifacts), **kwargs)


def _run_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory as train.py leaves it (the files finish_mlflow_run uploads); its bundle."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 42\n")
    (run / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.01\n")
    (run / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")  # Hydra's own settings: not uploaded
    (run / "data").mkdir()
    (run / "data" / "contract.yaml").write_text("name: digits\n")
    (run / "data" / "drift_report.json").write_text("{}")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x" * 64)  # not uploaded: the bundle is
    (run / "run.json").write_text(json.dumps({"status": "finished"}))
    (run / "metrics.json").write_text(json.dumps({"global_step": 40, "metrics": {}}))
    (run / "train.log").write_text("epoch 0\n")
    bundle = run / "bundle"
    (bundle / "samples").mkdir(parents=True)
    (bundle / "model.onnx").write_bytes(b"onnx")
    (bundle / "manifest.json").write_text("{}")
    (bundle / "samples" / "input.npy").write_bytes(b"npy")
    return run, bundle


def _files(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _files(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_finish_logs_params_final_metrics_and_the_run_files(store, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    lg = _logger(store, run_name="2026-01-01_00-00-00_abcdef", tags={"keel.task_name": "train"})
    lg.log_metrics({"val/acc": 0.5, "val/acc_best": 0.5}, step=19)
    lg.log_metrics({"val/acc": 0.9, "val/acc_best": 0.9}, step=39)
    lg.log_metrics({"test/acc": 0.88}, step=40)
    run, bundle = _run_dir(tmp_path)
    params = {"model": "mlp", "optimizer.lr": 0.01, "trainer.devices": 1, "compile": False,
              "tags": "x" * 2000, "bad key!": "v", **{f"extra.{i}": i for i in range(150)}}
    finish_mlflow_run(lg, params=params, metrics={"val/acc_best": 0.9, "test/acc": 0.88, "test/f1": 0.87},
                      output_dir=run, bundle_dir=bundle)

    client = MlflowClient(store[0])
    r = client.get_run(lg.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["model"] == "mlp" and r.data.params["optimizer.lr"] == "0.01"
    assert r.data.params["compile"] == "False" and r.data.params["bad key_"] == "v"
    assert len(r.data.params["tags"]) == MAX_PARAM_VALUE_LENGTH and r.data.params["tags"].endswith("...")
    assert len(r.data.params) == 6 + 150  # past MLflow's 100 params per batch
    assert r.data.tags["mlflow.runName"] == "2026-01-01_00-00-00_abcdef" and r.data.tags["keel.task_name"] == "train"
    # the final metrics under their own names; no second point where the run already had the value
    assert [(m.step, m.value) for m in client.get_metric_history(lg.run_id, "val/acc_best")] == [(19, 0.5), (39, 0.9)]
    assert [(m.step, m.value) for m in client.get_metric_history(lg.run_id, "test/acc")] == [(40, 0.88)]
    assert [(m.step, m.value) for m in client.get_metric_history(lg.run_id, "test/f1")] == [(40, 0.87)]
    assert _files(client, lg.run_id) == {
        "bundle/model.onnx", "bundle/manifest.json", "bundle/samples/input.npy", "run.json", "metrics.json",
        "config/config.yaml", "config/overrides.yaml", "data/contract.yaml", "data/drift_report.json",
        "logs/train.log"}

    # the same run, read back as a person would
    mlflow.set_tracking_uri(store[0])
    df = mlflow.search_runs(experiment_ids=[lg.experiment_id])
    assert list(df["run_id"]) == [lg.run_id] and df["params.model"][0] == "mlp"
    assert df["metrics.test/f1"][0] == pytest.approx(0.87)


def test_finish_without_bundle_or_reports_and_another_status(store, tmp_path):
    from mlflow.tracking import MlflowClient

    lg = _logger(store)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    finish_mlflow_run(lg, params={}, metrics={"test/acc": 0.5}, output_dir=run, bundle_dir=None, status="KILLED")
    client = MlflowClient(store[0])
    assert client.get_run(lg.run_id).info.status == "KILLED"
    assert _files(client, lg.run_id) == {"metrics.json"}
    assert [(m.step, m.value) for m in client.get_metric_history(lg.run_id, "test/acc")] == [(0, 0.5)]  # no global_step known


def test_a_param_logged_before_keeps_its_value(store, tmp_path, caplog):
    """MLflow refuses to change a param: a run continued with another value keeps the first, says so."""
    from mlflow.tracking import MlflowClient

    lg = _logger(store)
    run = tmp_path / "run"
    run.mkdir()
    finish_mlflow_run(lg, params={"optimizer.lr": 0.01}, metrics={}, output_dir=run, bundle_dir=None)
    with caplog.at_level(logging.WARNING, logger="keel"):
        finish_mlflow_run(lg, params={"optimizer.lr": 0.1, "seed": 1}, metrics={}, output_dir=run, bundle_dir=None)
    params = MlflowClient(store[0]).get_run(lg.run_id).data.params
    assert params == {"optimizer.lr": "0.01", "seed": "1"}
    assert "optimizer.lr=0.01 was logged by this run before" in caplog.text and "optimizer.lr=0.1 is not logged" in caplog.text


def test_unknown_status_is_refused(store, tmp_path):
    with pytest.raises(ValueError, match=r"status='DONE': allowed FINISHED, FAILED, KILLED"):
        finish_mlflow_run(_logger(store), params={}, metrics={}, output_dir=tmp_path, bundle_dir=None, status="DONE")


def test_a_store_that_refuses_is_a_tracking_error(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from keel.run.tracking import TrackingError

    lg = _logger(store)
    MlflowClient(store[0]).delete_run(lg.run_id)  # writes to a deleted run are refused
    with pytest.raises(TrackingError, match=rf"MLflow run {lg.run_id} at .*: could not complete the record.*"
                                            rf"files are complete in {tmp_path}"):
        finish_mlflow_run(lg, params={"a": 1}, metrics={}, output_dir=tmp_path, bundle_dir=None)


@pytest.mark.parametrize("name,key", [
    ("val/acc_best", "val/acc_best"), ("lr-Adam/all", "lr-Adam/all"), ("a b.c", "a b.c"),
    ("bad key!", "bad key_"), ("x:y", "x_y"), ("/lead//double/", "lead/double"), ("../up/./x", "up/x"),
    ("", "_"), ("k" * 300, "k" * 250),
])
def test_mlflow_key(name, key):
    assert mlflow_key(name) == key


def test_mlflow_param_value():
    assert mlflow_param_value(0.001) == "0.001" and mlflow_param_value(True) == "True"
    long = mlflow_param_value("y" * 10_000)
    assert len(long) == MAX_PARAM_VALUE_LENGTH and long == "y" * (MAX_PARAM_VALUE_LENGTH - 3) + "..."


def test_rows_name_the_ui_command_with_an_absolute_store(store):
    lg = _logger(store)
    uri = store[0]
    db = Path(uri[len("sqlite:///"):]).resolve()
    assert mlflow_rows([object(), lg]) == [("mlflow", f"mlflow ui --backend-store-uri sqlite:///{db}  (run {lg.run_id})")]


def test_browse_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert browse_command("sqlite:///outputs/mlflow.db") == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/outputs/mlflow.db"
    assert browse_command("sqlite:////abs/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////abs/mlflow.db"
    assert browse_command("file:./mlruns") == f"mlflow ui --backend-store-uri file://{tmp_path}/mlruns"
    assert browse_command("http://mlflow.example:5000") == "http://mlflow.example:5000"


def _node(store, name: str, run_dir: str, config: bool = False):
    uri, artifacts = store
    node = {"_target_": "lightning.pytorch.loggers.MLFlowLogger", "tracking_uri": uri, "experiment_name": name,
            "artifact_location": str(artifacts / name), "tags": {"keel.run_dir": run_dir}}
    return OmegaConf.create(node) if config else node


@pytest.mark.parametrize("config", [False, True], ids=["dict", "DictConfig"])
def test_prepare_makes_the_experiment_and_continues_the_run_of_a_run_dir(store, tmp_path, config):
    from mlflow.tracking import MlflowClient

    name = f"prep-{uuid.uuid4().hex[:8]}"
    node = _node(store, name, str(tmp_path / "run"), config)
    assert prepare_mlflow_logger(node, continued=False) == {}
    client = MlflowClient(store[0])
    experiment = client.get_experiment_by_name(name)
    assert experiment.artifact_location == str(store[1] / name)
    assert prepare_mlflow_logger(node, continued=True) == {}  # no MLflow run of that directory yet

    first = _logger(store, experiment_name=name, tags={"keel.run_dir": str(tmp_path / "run")})
    other = _logger(store, experiment_name=name, tags={"keel.run_dir": str(tmp_path / "other")})
    assert first.run_id != other.run_id
    client.set_terminated(first.run_id, "FAILED")  # how Lightning leaves an interrupted run
    assert prepare_mlflow_logger(node, continued=True) == {"run_id": first.run_id}
    assert client.get_run(first.run_id).info.status == "RUNNING"
    assert prepare_mlflow_logger(node, continued=False) == {}  # a new run


def _prepare_in_child(node: dict, out: Path) -> None:
    try:
        prepare_mlflow_logger(node, continued=False)
        out.write_text("ok")
    except Exception as e:  # reported to the parent through the file
        out.write_text(f"{type(e).__name__}: {e}")


def test_prepare_on_a_fresh_store_from_two_processes_at_once(tmp_path):
    """Two jobs of a parallel sweep start on a new store: MLflow alone would build its tables twice
    ("duplicate column name"); under keel's lock both start."""
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    node = {"tracking_uri": uri, "experiment_name": "sweep", "artifact_location": str(tmp_path / "artifacts")}
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_prepare_in_child, args=(node, tmp_path / f"out{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [(tmp_path / f"out{i}").read_text() for i in range(2)] == ["ok", "ok"]


def test_mlflow_resolver_outside_a_hydra_app():
    from keel.config import register_resolvers

    register_resolvers()
    cfg = OmegaConf.create({
        "task_name": "train", "tags": ["baseline", "digits"], "log_dir": "outputs", "out": "/runs/r1",
        "e": "${keel.mlflow:experiment,${task_name},${log_dir}}", "n": "${keel.mlflow:run_name}",
        "t": "${keel.mlflow:tags,${task_name},${tags},${out}}", "bad": "${keel.mlflow:colour}"})
    assert cfg.e == "train" and cfg.n is None
    assert cfg.t == {"keel.task_name": "train", "keel.run_dir": "/runs/r1",
                                             "keel.tags": "baseline, digits"}
    with pytest.raises(Exception, match="unknown field 'colour'; allowed: experiment, artifact_location, run_name, tags"):
        _ = cfg.bad


@pytest.mark.parametrize("uri,local", [("sqlite:///outputs/mlflow.db", True), ("file:./mlruns", True),
                                       ("/data/mlruns", True), ("http://mlflow.example:5000", False),
                                       ("https://mlflow.example", False), ("databricks://profile", False)])
def test_artifacts_beside_a_local_store_and_on_a_tracking_server(compose_cfg, uri, local):
    """A tracking server keeps the artifacts (null); a local store gets the folder beside it."""
    cfg = compose_cfg("logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    expected = f"{cfg.paths.log_dir}/mlartifacts" if local else None
    assert cfg.logger.mlflow.artifact_location == expected
    assert compose_cfg("logger=mlflow", "logger.mlflow.artifact_location=s3://bucket/x").logger.mlflow.artifact_location == "s3://bucket/x"


@pytest.fixture
def hydra_job(tmp_path):
    """Set Hydra's job config as a running app has it; ``job(mode, num)``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from keel.config import register_resolvers

    register_resolvers()
    conf = Path(__file__).resolve().parents[2] / "conf"

    def job(mode: str, num: int | None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"paths.log_dir={tmp_path}", "logger=mlflow"],
                          return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode = mode
            cfg.hydra.sweep.dir = str(tmp_path / "train" / "multiruns" / "2026-01-01_00-00-00_abcdef")
            cfg.hydra.runtime.output_dir = str(tmp_path / "train" / "runs" / "2026-01-01_00-00-00_123456")
            if num is not None:
                cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    yield job
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def test_mlflow_logger_config_of_a_single_run(hydra_job, tmp_path):
    lg = hydra_job("RUN", None).logger.mlflow
    assert lg.experiment_name == "train" and lg.run_name == "2026-01-01_00-00-00_123456"
    assert lg.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and lg.artifact_location == f"{tmp_path}/mlartifacts"
    assert "keel.sweep" not in lg.tags and lg.tags["keel.run_dir"] == str(tmp_path / "run")


def test_mlflow_logger_config_of_a_sweep_job(hydra_job, tmp_path):
    lg = hydra_job("MULTIRUN", 3).logger.mlflow
    assert lg.experiment_name == "train/multiruns/2026-01-01_00-00-00_abcdef" and lg.run_name == "trial 3"
    assert lg.tags == {
        "keel.task_name": "train", "keel.run_dir": str(tmp_path / "run"), "keel.sweep": "2026-01-01_00-00-00_abcdef",
        "keel.sweep_dir": str(tmp_path / "train" / "multiruns" / "2026-01-01_00-00-00_abcdef"), "keel.trial": "3"}
