"""Tiny real runs: every model and optimizer, schedulers, DDP, multirun, resume, seeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from keel.pipeline import train

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _train_py(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]  # argparse wants -m before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "train.py", *flags, f"paths.log_dir={tmp_path}", "callbacks.progress_bar.refresh_rate=0",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


def test_default_job_end_to_end(tmp_path, tensorboard_run):
    """`python train.py` with no arguments: accuracy, files, TensorBoard content, summary."""
    proc = _train_py(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _run_dirs(tmp_path)
    assert run.parent == tmp_path / "train" / "runs"
    m = _metrics(run)
    assert m["metrics"]["test/acc"] >= 0.95
    assert m["objective"] == m["metrics"]["val/acc_best"]
    assert Path(m["best_checkpoint"]).is_file() and Path(m["last_checkpoint"]).name == "last.ckpt"
    assert sum(map(sum, m["confusion_matrix"])) == m["split_sizes"]["test"]
    assert (run / ".hydra" / "config.yaml").is_file()
    bundle = m["bundle"]
    assert bundle["parity"]["ok"] and bundle["parity"]["class_agreement"] == 1.0
    assert bundle["models"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert (run / "bundle" / "model.onnx").is_file() and "bundle        :" in proc.stdout
    assert f"run directory : {run}" in proc.stdout and "tensorboard --logdir" in proc.stdout

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard_run(run)), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/f1"):
        assert name in tags, f"{name} not in TensorBoard scalars {sorted(tags)}"
    assert "train/lr/all" in tags and "train/epoch" in tags, sorted(tags)
    # the Scalars page opens on the curves: every card in the train, val or test group
    assert {t.split("/")[0] for t in tags} == {"train", "val", "test"}, sorted(tags)
    assert acc.Graph() is not None  # the model graph (Graphs tab)
    plugins = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
    from tensorboard.plugins.hparams import plugin_data_pb2

    experiment = plugin_data_pb2.HParamsPluginData.FromString(plugins["_hparams_/experiment"]).experiment
    params = [h.name for h in experiment.hparam_infos]
    assert {"data", "model", "optimizer", "optimizer.lr", "data.batch_size", "seed"} <= set(params), params
    assert len(params) <= 20 and not any("_target_" in p for p in params), params
    # the HParams metrics are the run's own final tags, whose last value is the final metric
    metrics = [mi.name.tag for mi in experiment.metric_infos]
    assert "test/acc" in metrics and "val/acc_best" in metrics and not any(t.startswith("hparams/") for t in tags)
    assert acc.Scalars("test/acc")[-1].value == pytest.approx(m["metrics"]["test/acc"], rel=1e-6)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
def test_each_model_and_optimizer_trains(compose_cfg, model, optimizer):
    cfg = compose_cfg(f"model={model}", f"optimizer={optimizer}", "debug=fast", "logger=none", "callbacks=training")
    value = train(cfg)
    m = _metrics(Path(cfg.paths.output_dir))
    assert value == m["metrics"]["val/acc_best"]
    assert m["global_step"] == 2 and 0.0 <= m["metrics"]["test/acc"] <= 1.0


@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "plateau", "onecycle"])
def test_each_scheduler_trains_and_logs_lr(compose_cfg, scheduler):
    extra = {"step": ["scheduler.scheduler.step_size=1"], "plateau": ["scheduler.scheduler.patience=0", "+scheduler.scheduler.threshold=1.0"]}  # "better" only by 100%: each epoch stalls
    cfg = compose_cfg(f"scheduler={scheduler}", *extra.get(scheduler, []), "trainer.max_epochs=3", "trainer.limit_train_batches=3",
                      "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1", "logger=csv",
                      "callbacks=training")
    train(cfg)
    rows = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    # a scheduler is named "lr": one curve name whatever the optimizer (lr-Adam without one)
    lr_cols = [i for i, h in enumerate(header) if h.startswith("lr-" if scheduler == "none" else "lr/")]
    assert lr_cols, header
    lrs = [float(r.split(",")[lr_cols[0]]) for r in rows[1:] if r.split(",")[lr_cols[0]]]
    if scheduler == "none":
        assert len(set(lrs)) == 1
    else:
        assert len(set(lrs)) > 1, f"{scheduler}: lr never changed: {lrs}"


def test_callbacks_none_and_bf16(compose_cfg):
    cfg = compose_cfg("callbacks=none", "trainer.precision=bf16-mixed", "debug=fast")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    m = _metrics(out)
    assert m["best_checkpoint"] is None and not (out / "checkpoints").exists()
    assert 0.0 <= m["metrics"]["test/acc"] <= 1.0


def test_same_seed_same_metrics_other_seed_differs(compose_cfg, tmp_path):
    common = ["trainer.max_epochs=3", "logger=none", "trainer.deterministic=true", "callbacks=training"]
    results = []
    for i, seed in enumerate([7, 7, 8]):
        cfg = compose_cfg(f"seed={seed}", *common)
        cfg.paths.output_dir = str(tmp_path / f"run{i}")
        train(cfg)
        results.append(_metrics(Path(cfg.paths.output_dir))["metrics"])
    assert results[0] == results[1]  # bit-identical, every metric
    assert results[0] != results[2]


# Resuming into a new run directory is what this test does; Lightning notes the move.
@pytest.mark.filterwarnings("ignore:The dirpath has changed from:UserWarning")
def test_resume_from_checkpoint_continues_training(compose_cfg, tmp_path):
    cfg = compose_cfg("trainer.max_epochs=2", "logger=none", "callbacks=training", "callbacks.early_stopping.patience=100")
    cfg.paths.output_dir = str(tmp_path / "first")
    train(cfg)
    first = _metrics(tmp_path / "first")
    last = first["last_checkpoint"]

    cfg2 = compose_cfg("trainer.max_epochs=4", "logger=none", f"ckpt_path={last}", "callbacks=training",
                       "callbacks.early_stopping.patience=100")
    cfg2.paths.output_dir = str(tmp_path / "second")
    train(cfg2)
    second = _metrics(tmp_path / "second")
    assert second["resumed_from"] == last
    assert second["global_step"] == 2 * first["global_step"]  # epochs 3-4 only, not 4 from scratch
    assert second["epochs_trained"] == 4


def test_ddp_two_processes_one_run_dir(tmp_path, tensorboard_run):
    proc = _train_py(tmp_path, "trainer.devices=2", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _run_dirs(tmp_path)
    m = _metrics(run)
    assert m["world_size"] == 2
    # reduced across ranks: each test row counted exactly once over both shards
    assert sum(map(sum, m["confusion_matrix"])) == m["split_sizes"]["test"]
    writers = {p.name.split(".")[-2] for p in tensorboard_run(run).glob("events.out.tfevents.*")}
    assert len(writers) == 1, f"more than one process wrote TensorBoard events: {writers}"
    assert not list(run.glob("*ddp_process*")), "rank 1 wrote into the run directory"
    assert m["bundle"]["parity"]["ok"] and len(list(tmp_path.rglob("manifest.json"))) == 1
    assert len([d for d in (tmp_path / "train" / "runs").iterdir()]) == 1


def test_multirun_grid_each_job_its_own_dir(tmp_path):
    proc = _train_py(tmp_path, "-m", "model=mlp,cnn", "optimizer=adam,sgd", "debug=fast", "logger=none",
                     "callbacks=training")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((tmp_path / "debug" / "multiruns").iterdir())
    jobs = _run_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    overrides = {(j / ".hydra" / "overrides.yaml").read_text() for j in jobs}
    assert len(overrides) == 4


def test_multirun_with_ddp_makes_one_sweep(tmp_path):
    """Lightning re-executes argv for rank 1; under -m that used to start a second sweep."""
    proc = _train_py(tmp_path, "-m", "model=mlp,cnn", "trainer.devices=2", "debug=fast", "logger=none",
                     "callbacks=training")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "debug" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = _run_dirs(sweeps[0])
    assert [j.name for j in jobs] == ["0", "1"]
    assert all(_metrics(j)["world_size"] == 2 for j in jobs)


def test_runs_started_together_never_share_a_dir(tmp_path):
    cmd = [sys.executable, "train.py", f"paths.log_dir={tmp_path}", "debug=fast", "logger=none", "callbacks=training",
           "callbacks.progress_bar.refresh_rate=0"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    runs = list((tmp_path / "debug" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)


def test_contract_violation_stops_before_training(tmp_path):
    proc = _train_py(tmp_path, "data.contract.range=[0,15]")
    assert proc.returncode == 2
    assert "error: data contract 'digits' violated" in proc.stderr
    assert proc.stderr.count("range on x") == 3 and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_refused_command_leaves_no_run_directory_and_no_trace_on_a_run(tmp_path):
    """Exit 2 before anything ran: the directory Hydra made for it is removed; a run_dir holding a
    run keeps that run's own record in .hydra/ (Hydra had rewritten it for the refused command)."""
    proc = _train_py(tmp_path, "optimizer.lr=-1")
    assert proc.returncode == 2 and "optimizer.lr=-1: expected a number > 0" in proc.stderr
    assert list((tmp_path / "train" / "runs").iterdir()) == []
    run = tmp_path / "run"
    done = _train_py(tmp_path, "debug=fast", "logger=none", "callbacks=training", f"run_dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    recorded = (run / ".hydra" / "overrides.yaml").read_text()
    proc = _train_py(tmp_path, "optimizer.lr=-1", f"run_dir={run}")
    assert proc.returncode == 2
    assert (run / ".hydra" / "overrides.yaml").read_text() == recorded and (run / "metrics.json").is_file()
