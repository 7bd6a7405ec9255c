"""logger=mlflow in tiny real runs: the run read back from the store as a person would
(mlflow.search_runs, MlflowClient), next to TensorBoard, in sweeps, and continued after a stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# offline, and nothing sent from a test: MLflow 3 reports usage unless told not to
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _train_py(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]  # argparse wants -m before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "train.py", *flags, f"paths.log_dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0",
           "trainer.max_epochs=2", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def _client(tmp_path: Path):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"  # the default store: <paths.log_dir>/mlflow.db
    mlflow.set_tracking_uri(uri)
    return mlflow, MlflowClient(uri)


def _files(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _files(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


def test_a_run_in_mlflow_params_epoch_metrics_tags_and_files(tmp_path):
    proc = _train_py(tmp_path, "logger=mlflow", "tags=[baseline,digits]", "optimizer.lr=0.005")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _run_dirs(tmp_path / "train")
    record = json.loads((run / "metrics.json").read_text())
    mlflow, client = _client(tmp_path)

    df = mlflow.search_runs(experiment_names=["train"])
    assert len(df) == 1
    row = df.iloc[0]
    run_id = row["run_id"]
    assert row["status"] == "FINISHED"
    # the curated params: group choices, key values, what the command line overrode
    assert row["params.model"] == "mlp" and row["params.data"] == "digits" and row["params.optimizer"] == "adam"
    assert row["params.optimizer.lr"] == "0.005" and row["params.seed"] == "42"
    assert row["params.data.batch_size"] == "64"
    # tags: the run's name and directory, the config's tags, the code's commit (MLflow's own)
    assert row["tags.mlflow.runName"] == run.name and row["tags.keel.run_dir"] == str(run)
    assert row["tags.keel.tags"] == "baseline, digits" and row["tags.keel.task_name"] == "train"
    assert len(row["tags.mlflow.source.git.commit"]) == 40
    # every epoch metric, one point per epoch, at the epoch's last step
    for name in ("train/loss", "val/acc", "val/loss", "val/acc_best"):
        history = client.get_metric_history(run_id, name)
        assert len(history) == 2, (name, history)
        assert history[0].step < history[1].step <= record["global_step"]
    assert client.get_metric_history(run_id, "val/acc_best")[-1].value == pytest.approx(record["objective"])
    assert row["metrics.test/acc"] == pytest.approx(record["metrics"]["test/acc"])
    # the run's files
    files = _files(client, run_id)
    assert {"bundle/model.onnx", "bundle/manifest.json", "run.json", "metrics.json", "config/config.yaml",
            "config/overrides.yaml", "data/contract.yaml", "data/drift_report.json"} <= files
    assert json.loads(Path(client.download_artifacts(run_id, "metrics.json", str(tmp_path / "dl"))).read_text()) == record
    # artifacts beside the store, under outputs/ (paths.log_dir); the summary says how to look
    assert row["artifact_uri"].startswith(str(tmp_path / "mlartifacts"))
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db  (run {run_id})" in proc.stdout
    assert not (ROOT / "mlruns").exists()


def test_tensorboard_and_mlflow_at_once(tmp_path):
    proc = _train_py(tmp_path, "logger=[tensorboard,mlflow]", "callbacks=training")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _run_dirs(tmp_path / "train")
    assert "tensorboard --logdir" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(acc.Scalars("val/acc")) == 2
    mlflow, client = _client(tmp_path)
    (run_id,) = mlflow.search_runs(experiment_names=["train"])["run_id"]
    assert [m.value for m in client.get_metric_history(run_id, "val/acc")] == pytest.approx(
        [e.value for e in acc.Scalars("val/acc")])


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_is_one_experiment_with_one_run_per_job(tmp_path, launcher):
    """Jobs one after the other (basic) or two at once on a new store (joblib: MLflow must not
    build the store's tables twice, nor the experiment)."""
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = _train_py(tmp_path, "-m", "logger=mlflow", "callbacks=training", "optimizer.lr=0.001,0.01", *extra,
                     timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    mlflow, client = _client(tmp_path)
    experiments = {e.name for e in client.search_experiments()} - {"Default"}
    assert experiments == {f"train/multiruns/{sweep.name}"}

    df = mlflow.search_runs(experiment_names=[f"train/multiruns/{sweep.name}"]).sort_values("tags.keel.trial")
    assert list(df["tags.keel.trial"]) == ["0", "1"] and list(df["tags.mlflow.runName"]) == ["trial 0", "trial 1"]
    assert set(df["tags.keel.sweep"]) == {sweep.name} and set(df["tags.keel.sweep_dir"]) == {str(sweep)}
    assert list(df["params.optimizer.lr"]) == ["0.001", "0.01"]
    assert list(df["tags.keel.run_dir"]) == [str(sweep / "0"), str(sweep / "1")]
    assert set(df["status"]) == {"FINISHED"}
    for job, run_id in enumerate(df["run_id"]):
        objective = json.loads((sweep / str(job) / "metrics.json").read_text())["objective"]
        assert df[df.run_id == run_id]["metrics.val/acc_best"].item() == pytest.approx(objective)


def test_a_run_continued_in_place_continues_its_mlflow_run(compose_cfg, monkeypatch):
    """Stopped by SIGTERM inside epoch 1, continued with ckpt_path=auto: one MLflow run, FINISHED,
    one point per epoch."""
    from keel.callbacks.nan_guard import NanGuard
    from keel.callbacks.preemption import Interrupted
    from keel.pipeline import train

    base = ("trainer.max_epochs=3", "logger=mlflow", "callbacks=training", "callbacks.progress_bar.refresh_rate=0")
    original = NanGuard.on_train_batch_end

    def stop_at_27(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 27:  # epoch 1, batch 7 of 20
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(NanGuard, "on_train_batch_end", stop_at_27)
    cfg = compose_cfg(*base)
    with pytest.raises(Interrupted):
        train(cfg)
    monkeypatch.setattr(NanGuard, "on_train_batch_end", original)
    train(compose_cfg(*base, "ckpt_path=auto"))

    import mlflow

    mlflow.set_tracking_uri(cfg.logger.mlflow.tracking_uri)
    df = mlflow.search_runs(experiment_names=["train"])
    assert len(df) == 1 and df["status"][0] == "FINISHED"
    assert df["tags.keel.run_dir"][0] == cfg.paths.output_dir
    steps = [m.step for m in mlflow.tracking.MlflowClient().get_metric_history(df["run_id"][0], "val/acc")]
    assert len(steps) == 3 and steps == sorted(set(steps))
