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
    assert r.direction == "minimize" and r.direction_source == "the metric's name"
    assert "; sorted by val/loss_best, minimize (from the metric's name)\n" in format_terminal(r)
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


OPTIMIZERS = {
    "adam": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.003, "betas": [0.9, 0.999],
             "weight_decay": 0.0, "fused": "auto"},
    "sgd": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9, "nesterov": True,
            "weight_decay": 0.0005, "fused": "auto"},
}


def _optimizer_job(sweep: Path, num: int, optimizer: str, lr: float, objective: float | None) -> Path:
    """A job as train.py leaves it: run.json with the resolved config, .hydra/ with the choices,
    metrics.json with Lightning's LR monitor metrics, named after the optimizer class."""
    overrides = [f"optimizer={optimizer}", f"optimizer.lr={lr}", "trainer.max_epochs=2", "~callbacks.progress_bar=null"]
    d = _job(sweep, num, overrides)
    run_dir = str(d.resolve())
    config = {"seed": 42, "run_dir": run_dir, "optimizer": {**OPTIMIZERS[optimizer], "lr": lr},
              "trainer": {"max_epochs": 2, "default_root_dir": run_dir},
              "paths": {"log_dir": "/tmp/x", "output_dir": run_dir},
              "model": {"net": {"hidden": [256, 128], "num_classes": 10}}}
    choices = {"optimizer": optimizer, "model": "mlp", "hydra/launcher": "basic", "hydra/sweeper": "basic"}
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    hydra_config = {**config, "run_dir": "${paths.log_dir}/train/runs/${now:%H}", "paths": {
        "log_dir": "/tmp/x", "output_dir": "${hydra:runtime.output_dir}"}}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(hydra_config))
    if objective is None:  # a job that crashed before keel wrote its record: only .hydra/ is there
        return d
    (d / "run.json").write_text(json.dumps({"schema": 1, "status": "finished", "config": config}))
    cls = OPTIMIZERS[optimizer]["_target_"].rsplit(".", 1)[-1]
    metrics = {"val/acc_best": objective, f"lr-{cls}/all": lr / 10, f"lr-{cls}-momentum/all": 0.9}
    (d / "metrics.json").write_text(json.dumps({"metrics": metrics, "objective": objective,
                                                "optimized_metric": "val/acc_best", "wall_time_s": 3.0}))
    return d


def test_csv_has_one_column_per_parameter_whatever_the_optimizer(tmp_path):
    """`-m optimizer=adam,sgd optimizer.lr=0.001,0.01`: the learning rate is one column, keys only
    one optimizer has are empty for the other, and the LR monitor's metrics are not split by class."""
    sweep = tmp_path / "grid"
    for num, (opt, lr, obj) in enumerate([("adam", 0.001, 0.80), ("adam", 0.01, 0.90), ("sgd", 0.001, 0.70),
                                          ("sgd", 0.01, None)]):
        _optimizer_job(sweep, num, opt, lr, obj)
    r = build_report([sweep])
    assert r.params == ["optimizer", "optimizer._target_", "optimizer.betas", "optimizer.lr", "optimizer.momentum",
                        "optimizer.nesterov", "optimizer.weight_decay"]
    text = format_csv(r)
    rows = list(csv.DictReader(io.StringIO(text)))
    header = text.splitlines()[0].split(",")
    # one column each; what every job shares (seed, model) and each job's own directory are not parameters
    assert [h for h in header if "lr" in h] == ["optimizer.lr", "lr-momentum/all", "lr/all"]
    shared = {"seed", "run_dir", "paths.output_dir", "trainer.default_root_dir", "model", "hydra/launcher"}
    assert not shared & set(header)
    by_job = {row["job"]: row for row in rows}
    assert [by_job[j]["optimizer.lr"] for j in "0123"] == ["0.001", "0.01", "0.001", "0.01"]
    assert [by_job[j]["optimizer"] for j in "0123"] == ["adam", "adam", "sgd", "sgd"]
    assert [by_job[j]["optimizer.momentum"] for j in "0123"] == ["", "", "0.9", "0.9"]
    assert [by_job[j]["optimizer.betas"] for j in "0123"] == ["[0.9,0.999]", "[0.9,0.999]", "", ""]
    assert [by_job[j]["optimizer.nesterov"] for j in "0123"] == ["", "", "true", "true"]
    assert [by_job[j]["optimizer.weight_decay"] for j in "0123"] == ["0.0", "0.0", "0.0005", "0.0005"]
    assert [by_job[j]["lr/all"] for j in "0123"] == ["0.0001", "0.001", "0.0001", ""]
    # the crashed job's parameters come from .hydra/ (its config.yaml is not resolved: no run_dir)
    assert by_job["3"]["status"] == "failed" and by_job["3"]["optimizer._target_"] == "torch.optim.SGD"
    assert by_job["1"]["rank"] == "1" and by_job["1"]["overrides"] == (
        "optimizer=adam optimizer.lr=0.01 trainer.max_epochs=2 ~callbacks.progress_bar")
    assert r.best_command() == ("python train.py optimizer=adam optimizer.lr=0.01 trainer.max_epochs=2 "
                                "'~callbacks.progress_bar'")
    # the table shows what the sweep changed, as typed
    assert r.varying_overrides(r.rows[0]) == ["optimizer=adam", "optimizer.lr=0.01"]


def test_lr_monitor_names_of_another_class_are_left_as_they_are():
    from keel.sweep.report import _class_free_lr

    adam, sgd = "torch.optim.Adam", "torch.optim.SGD"
    assert _class_free_lr({"lr-Adam/all": 1.0, "lr-Adam-1/all": 2.0}, adam) == {"lr/all": 1.0, "lr-1/all": 2.0}
    # a second optimizer of another class (a GAN's) keeps its name; so does a metric named lr already
    two = {"lr-SGD": 1.0, "lr": 3.0, "lr-Adam": 2.0}
    assert _class_free_lr(two, adam) == two
    assert _class_free_lr({"lr-Adam/all": 1.0}, None) == {"lr-Adam/all": 1.0}
    assert _class_free_lr({"train/lr-SGD-weight_decay/decay": 1.0}, sgd) == {"train/lr-weight_decay/decay": 1.0}
    assert _class_free_lr({"val/acc": 1.0, "lr-Adamish": 2.0}, adam) == {"val/acc": 1.0, "lr-Adamish": 2.0}


def test_no_finished_job_and_no_study_sorts_by_default(tmp_path):
    sweep = tmp_path / "crashed"
    for num in range(2):
        _job(sweep, num, [f"model.net.dropout={num / 10}"], None)
    r = build_report([sweep])
    assert r.metric is None and r.direction_source == "default"
    assert "jobs: 2 (2 failed); sorted by objective, maximize (by default)\n" in format_terminal(r)
    assert format_terminal(r).rstrip().endswith("best: no job completed")
