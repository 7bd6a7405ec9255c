"""Optuna sweeps through train.py: resume after a kill, pruned and crashed trials, joblib processes,
the sweep report and TensorBoard's HParams view of a sweep."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEEL = Path(sys.executable).parent / "keel"
TS = optuna.trial.TrialState
SMALL = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "callbacks.progress_bar.refresh_rate=0"]


def _hparams_search() -> str:
    """`hparams_search=optuna` once conf/train.yaml lists the group (`- hparams_search: null`);
    until then the group has to be appended (`+`)."""
    defaults = yaml.safe_load((ROOT / "conf" / "train.yaml").read_text())["defaults"]
    listed = any(isinstance(d, dict) and "hparams_search" in d for d in defaults)
    return "hparams_search=optuna" if listed else "+hparams_search=optuna"


def _cmd(tmp_path: Path, *overrides: str) -> list[str]:
    """`python train.py -m hparams_search=optuna ...` (argparse wants -m before the overrides)."""
    return [sys.executable, "train.py", "-m", _hparams_search(), f"paths.log_dir={tmp_path}", *SMALL, *overrides]


def _run(cmd: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _study(tmp_path: Path, name: str = "train-digits-mlp") -> optuna.Study:
    db = tmp_path / "train" / "optuna" / f"{name}.db"
    assert db.is_file(), f"no study database at {db}"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def _sweep_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "train" / "multiruns").iterdir())


def _trial_states(db: Path) -> dict[int, str]:
    """Read the study's trials straight from SQLite (no Optuna: it would create tables)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("SELECT number, state FROM trials").fetchall())
    except sqlite3.OperationalError:  # not created yet / locked
        return {}


def test_a_killed_sweep_resumes_with_the_same_command(tmp_path):
    cmd = _cmd(tmp_path, "logger=none", "hydra.sweeper.n_trials=3")
    db = tmp_path / "train" / "optuna" / "train-digits-mlp.db"
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and first.poll() is None:
            # trial 1 asked (all its parameters stored) and its job started
            started = any((tmp_path / "train" / "multiruns").glob("*/1/.hydra"))
            if started and _trial_states(db) == {0: "COMPLETE", 1: "RUNNING"}:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the sweep never reached trial 1 (rc={first.poll()}): {first.stderr.read()[-3000:]}")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole sweep, mid-trial
        first.wait(timeout=60)
        first.stderr.close()
    before = _study(tmp_path).trials
    assert [t.state for t in before] == [TS.COMPLETE, TS.RUNNING]

    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 finished trial(s), 1 interrupted trial(s) queued again" in proc.stdout
    trials = _study(tmp_path).trials
    assert len(trials) == 4
    t0, t1, t2, t3 = trials
    assert (t0.state, t0.params, t0.value, t0.datetime_complete) == (
        TS.COMPLETE, before[0].params, before[0].value, before[0].datetime_complete)  # untouched
    assert t1.state == TS.FAIL and t1.user_attrs["interrupted"] is True
    assert t2.params == t1.params and t2.user_attrs["requeued_from"] == 1 and t2.state == TS.COMPLETE
    assert t3.state == TS.COMPLETE and t3.params != t2.params
    first_dir, second_dir = _sweep_dirs(tmp_path)
    assert (first_dir / "0" / "metrics.json").is_file() and not (first_dir / "1" / "metrics.json").exists()
    assert sorted(p.name for p in second_dir.iterdir() if p.is_dir()) == ["0", "1"]
    for t, job in ((t2, "0"), (t3, "1")):
        metrics = json.loads((second_dir / job / "metrics.json").read_text())
        assert metrics["objective"] == pytest.approx(t.value, abs=1e-9)
        assert t.user_attrs["job_dir"] == str((second_dir / job).resolve())

    again = _run(cmd)  # the study is complete: nothing is trained
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the study already has 3 finished trial(s) (n_trials=3): nothing to run" in again.stdout
    assert len(_study(tmp_path).trials) == 4


def test_pruned_and_crashed_trials_then_the_report(tmp_path):
    """Grid over batch size x lr: batch size 0 crashes (config check), lr=1e-5 is pruned at the
    first epoch past warm-up (val/acc_best ~0.04 < 0.3), lr=3e-3 completes (~0.8)."""
    proc = _run(_cmd(
        tmp_path, "logger=none", "trainer.max_epochs=3", "hydra.sweeper.n_trials=10", "hydra.sweeper.params=null",
        "hydra.sweeper.sampler.type=grid", "~hydra.sweeper.sampler.n_startup_trials", "data.batch_size=0,64",
        "optimizer.lr=0.003,0.00001", "hydra.sweeper.pruner.type=threshold", "+hydra.sweeper.pruner.lower=0.3",
        "~hydra.sweeper.pruner.n_startup_trials", "hydra.sweeper.pruner.n_warmup_steps=1",
    ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = {(t.params["data.batch_size"], t.params["optimizer.lr"]): t for t in _study(tmp_path).trials}
    assert len(trials) == 4  # n_trials capped at the grid
    (sweep,) = _sweep_dirs(tmp_path)
    for lr in (0.003, 0.00001):
        crashed = trials[(0, lr)]
        assert crashed.state == TS.FAIL
        assert "data.batch_size=0: expected an integer >= 1" in crashed.user_attrs["error"]
    pruned = trials[(64, 0.00001)]
    assert pruned.state == TS.PRUNED
    assert sorted(pruned.intermediate_values) == [0, 1]  # stopped after epoch 1 of 0..2
    assert pruned.value == pytest.approx(pruned.intermediate_values[1]) and pruned.value < 0.3
    pruned_dir = Path(pruned.user_attrs["job_dir"])
    assert not (pruned_dir / "metrics.json").exists()
    assert f"trial {pruned.number} pruned at epoch 1" in (pruned_dir / "train.log").read_text()
    done = trials[(64, 0.003)]
    assert done.state == TS.COMPLETE and done.value > 0.3
    done_dir = Path(done.user_attrs["job_dir"])
    assert json.loads((done_dir / "metrics.json").read_text())["objective"] == pytest.approx(done.value, abs=1e-9)
    assert sorted(done.intermediate_values) == [0, 1, 2]

    md, out_csv = tmp_path / "report.md", tmp_path / "report.csv"
    rep = subprocess.run([str(KEEL), "sweep", "report", str(sweep), "--markdown", str(md), "--csv", str(out_csv)],
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    rows = [ln.split() for ln in rep.stdout.splitlines() if ln[:1].isdigit()]
    assert [(r[1], r[2]) for r in rows] == [(done_dir.name, "complete"), (pruned_dir.name, "pruned"),
                                           (rows[2][1], "failed"), (rows[3][1], "failed")]
    assert f"{done.value:.4f}" == rows[0][3]
    assert "jobs: 4 (1 complete, 1 pruned, 2 failed); sorted by val/acc_best, maximize (from the study)" in rep.stdout
    lines = rep.stdout.splitlines()
    best = lines[lines.index(next(ln for ln in lines if ln.startswith("best ("))) + 1].strip()
    assert best.startswith("python train.py ") and "hparams_search" not in best and "optuna_pruning" not in best
    assert "data.batch_size=64" in best and "optimizer.lr=0.003" in best
    assert md.read_text().count("| failed |") == 2 and len(out_csv.read_text().splitlines()) == 5

    # the best command is ready to run, and trains the same model again
    args = best.split()[2:]
    rerun = subprocess.run([sys.executable, "train.py", *args, "callbacks=training"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["objective"] == pytest.approx(done.value, abs=1e-6)


def test_joblib_runs_trials_in_processes_and_tensorboard_shows_each_job(tmp_path):
    proc = _run(_cmd(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                     "hydra.sweeper.n_trials=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout
    (sweep,) = _sweep_dirs(tmp_path)  # one sweep dir, though each process has its own ${keel.uid:}
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TS.COMPLETE, TS.COMPLETE]
    for t in trials:
        job = sweep / str(t.user_attrs["job_num"])
        hydra_cfg = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_cfg["job"]["id"] == f"train_{job.name}"  # joblib's job ids (the basic launcher's are ints)
        assert sorted(t.intermediate_values) == [0, 1]  # the pruning callback reached the study from the worker
        assert json.loads((job / "metrics.json").read_text())["objective"] == pytest.approx(t.value, abs=1e-9)

    # `tensorboard --logdir <sweep dir>`: the HParams tab, as its backend computes it
    from tensorboard import context
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(sweep))
    mux.Reload()
    tb = backend_context.Context(base_plugin.TBContext(logdir=str(sweep), multiplexer=mux,
                                                       data_provider=MultiplexerDataProvider(mux, str(sweep))))
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=statuses)
    groups = list_session_groups.Handler(context.RequestContext(), tb, "", request).run().session_groups
    assert sorted(g.name.split("/")[0] for g in groups) == ["0", "1"]
    for g in groups:
        job = sweep / g.name.split("/")[0]
        metrics = json.loads((job / "metrics.json").read_text())["metrics"]
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
                         if o.startswith("optimizer.lr="))
        # each job's TensorBoard run is named by its number and the values the sweep gave it
        assert g.name.startswith(f"{job.name}/tensorboard/{job.name}_") and "optimizer.lr=" in g.name, g.name
        assert g.hparams["optimizer.lr"].number_value == pytest.approx(float(overrides["optimizer.lr"]))
        values = {mv.name.tag: mv.value for mv in g.metric_values}
        assert values["val/acc_best"] == pytest.approx(metrics["val/acc_best"], rel=1e-6)
        assert values["test/acc"] == pytest.approx(metrics["test/acc"], rel=1e-6)
