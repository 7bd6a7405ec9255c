"""`keel sweep report` on a sweep directory built here: rows, statuses, order, files, best command."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import optuna
import pytest
import yaml

from keel.cli import main
from keel.sweep.report import build_report, format_csv, format_markdown, format_terminal

PRUNING = "++callbacks.optuna_pruning={_target_:keel.callbacks.optuna_pruning.OptunaPruning,trial_number:0}"
FIXED = ["+hparams_search=optuna", "paths.log_dir=/tmp/x", "trainer.max_epochs=5"]


def _job(sweep: Path, num: int, overrides: list[str], objective: float | None = None, log: str = "",
         metric: str = "val/acc_best", wall: float = 10.0) -> Path:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / "train.log").write_text(log or "[2026-11-22 10:00:00,000][keel][INFO] - data: 1797 rows\n")
    if objective is not None:
        metrics = {metric: objective, "test/acc": objective - 0.02, "test/loss": 1 - objective, "val/loss_best": 0.5}
        (d / "metrics.json").write_text(json.dumps({"metrics": metrics, "objective": objective, "optimized_metric": metric,
                                                    "wall_time_s": wall}))
    return d


@pytest.fixture
def optuna_sweep(tmp_path) -> Path:
    """Five jobs (three complete, one pruned, one crashed) and one trial that never launched."""
    sweep = tmp_path / "multiruns" / "2026-11-22_10-00-00_abcdef"
    sweep.mkdir(parents=True)
    db = tmp_path / "optuna" / "s.db"
    db.parent.mkdir()
    storage = f"sqlite:///{db}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    lrs = [0.001, 0.02, 0.0001, 0.3, 0.005]
    objectives = [0.80, 0.95, None, None, 0.90]
    for num, (lr, obj) in enumerate(zip(lrs, objectives)):
        overrides = [*FIXED, f"optimizer.lr={lr}", "model.net.hidden=[256,128]", PRUNING]
        log = ""
        if num == 2:
            log = ("[2026-11-22 10:00:00,000][keel][INFO] - data\n"
                   "[2026-11-22 10:00:03,500][keel.callbacks.optuna_pruning][INFO] - optuna: trial 2 pruned at epoch 1"
                   " (val/acc_best=0.1)\n")
        _job(sweep, num, overrides, obj, log=log)
        t = study.ask()
        t.set_user_attr("sweep_dir", str(sweep.resolve()))
        t.set_user_attr("job_num", num)
        if obj is not None:
            study.tell(t, obj)
        elif num == 2:
            t.report(0.08, 0)
            t.report(0.1, 1)
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            t.set_user_attr("error", "ConfigError: invalid configuration (1 problem):\n  - optimizer.lr=0.3: too big")
            study.tell(t, state=optuna.trial.TrialState.FAIL)
    t = study.ask()  # failed composition: no job directory
    t.set_user_attr("sweep_dir", str(sweep.resolve()))
    t.set_user_attr("overrides", [*FIXED, "optimizer=adamm", "model.net.hidden=[256,128]"])
    t.set_user_attr("error", "the job's config does not compose: Could not find 'optimizer/adamm'")
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    other = study.ask()  # a trial of another sweep dir of the same study: not this report's
    other.set_user_attr("sweep_dir", str(tmp_path / "elsewhere"))
    other.set_user_attr("job_num", 0)
    study.tell(other, 0.99)
    (sweep / "optuna_study.yaml").write_text(yaml.safe_dump(
        {"study_name": "s", "storage": storage, "optimized_metric": "val/acc_best", "direction": "maximize"}))
    return sweep


def test_rows_sorted_with_status_from_the_study(optuna_sweep):
    r = build_report([optuna_sweep])
    assert [(row.job, row.status) for row in r.rows] == [
        ("1", "complete"), ("4", "complete"), ("0", "complete"), ("2", "pruned"), ("3", "failed"), ("-", "failed")]
    assert [row.rank for row in r.rows] == [1, 2, 3, 4, 5, 6]
    assert r.direction == "maximize" and r.direction_source == "the study" and r.metric == "val/acc_best"
    best = r.rows[0]
    assert best.objective == 0.95 and best.metrics["test/acc"] == pytest.approx(0.93) and best.duration_s == 10.0
    assert r.rows[3].note == "pruned at epoch 1 (value 0.1)" and r.rows[3].trial == 2
    assert "optimizer.lr=0.3: too big" in r.rows[4].note
    assert "Could not find 'optimizer/adamm'" in r.rows[5].note
    # only what changed between jobs is shown; the pruning callback never is
    assert r.varying_overrides(best) == ["optimizer.lr=0.02"]
    assert r.best_command() == ("python train.py paths.log_dir=/tmp/x trainer.max_epochs=5 optimizer.lr=0.02 "
                                "'model.net.hidden=[256,128]'")


def test_direction_flag_reverses_the_order_of_complete_jobs(optuna_sweep):
    r = build_report([optuna_sweep], direction="minimize")
    assert [row.job for row in r.rows][:3] == ["0", "4", "1"] and r.direction_source == "--direction"


def test_without_the_study_the_logs_tell_pruned_from_failed(optuna_sweep, tmp_path):
    (tmp_path / "optuna" / "s.db").unlink()
    r = build_report([optuna_sweep])
    status = {row.job: row.status for row in r.rows}
    assert status == {"1": "complete", "4": "complete", "0": "complete", "2": "pruned", "3": "failed"}
    pruned = next(row for row in r.rows if row.job == "2")
    assert pruned.note == "pruned at epoch 1 (val/acc_best=0.1)" and pruned.duration_s is not None
    assert r.direction_source == "the study record" and any("is gone" in n for n in r.notes)


def test_terminal_markdown_and_csv(optuna_sweep):
    r = build_report([optuna_sweep])
    text = format_terminal(r)
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("#"))
    assert header.split()[:7] == ["#", "job", "status", "val/acc_best", "test/acc", "test/loss", "val/loss_best"]
    row1 = next(ln for ln in lines if ln.startswith("1 "))
    assert row1.split()[:5] == ["1", "1", "complete", "0.9500", "0.9300"]
    assert "jobs: 6 (3 complete, 1 pruned, 2 failed); sorted by val/acc_best, maximize (from the study)" in text
    assert text.rstrip().endswith("python train.py paths.log_dir=/tmp/x trainer.max_epochs=5 optimizer.lr=0.02 "
                                  "'model.net.hidden=[256,128]'")

    md = format_markdown(r)
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 6 and table[2].startswith("| 1 | 1 | complete | 0.9500 | 0.9300 |")
    assert "```bash\npython train.py paths.log_dir=/tmp/x" in md

    rows = list(csv.DictReader(io.StringIO(format_csv(r))))
    assert [row["job"] for row in rows] == ["1", "4", "0", "2", "3", "-"]
    assert float(rows[0]["objective"]) == 0.95 and float(rows[0]["val/loss_best"]) == 0.5
    assert rows[3]["status"] == "pruned" and rows[3]["objective"] == "" and rows[3]["trial"] == "2"
    assert "optuna_pruning" not in rows[0]["overrides"] and "optimizer.lr=0.02" in rows[0]["overrides"]


def test_grid_sweep_without_a_study_sorts_a_loss_ascending(tmp_path):
    sweep = tmp_path / "grid"
    for num, obj in enumerate([0.4, 0.2, 0.3]):
        _job(sweep, num, [f"model.net.dropout={num / 10}"], obj, metric="val/loss_best")
    _job(sweep, 3, ["model.net.dropout=0.9"], None,
         log="[2026-11-22 10:00:00,000][keel][INFO] - start\n[2026-11-22 10:00:01,000][keel][ERROR] - exploded\n")
    r = build_report([sweep])
    assert [row.job for row in r.rows] == ["1", "2", "0", "3"]
    assert r.direction == "minimize" and r.direction_source == "the metric's name (val/loss_best)"
    assert r.rows[-1].status == "failed" and r.rows[-1].note == "exploded"
    assert r.best_command() == "python train.py model.net.dropout=0.1"


def test_cli_writes_files_and_refuses_a_non_sweep_dir(optuna_sweep, tmp_path, capsys):
    md, out_csv = tmp_path / "r.md", tmp_path / "r.csv"
    assert main(["sweep", "report", str(optuna_sweep), "--markdown", str(md), "--csv", str(out_csv),
                 "--metrics", "test/acc"]) == 0
    out = capsys.readouterr().out
    assert "best (val/acc_best=0.9500, job 1):" in out and f"written: {md}" in out
    assert "| # | job | status | val/acc_best | test/acc | time |" in md.read_text()
    assert len(out_csv.read_text().splitlines()) == 7
    assert main(["sweep", "report", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["sweep", "report", str(tmp_path / "empty")]) == 2
    assert "no job directories" in capsys.readouterr().err
