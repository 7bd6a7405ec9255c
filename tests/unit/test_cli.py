"""`python train.py` as a user types it: fast answers, one readable message for mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hydra
import pytest

from keel.config import run_app

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + ["train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [("--cfg", "job"), ("--help",)])
def test_config_and_help_do_not_import_torch_lightning_or_data(args):
    proc = _run(*args, importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mods = _imported(proc.stderr)
    assert "hydra" in mods
    heavy = {m for m in mods if m.split(".")[0] in ("torch", "lightning", "sklearn", "torchmetrics")}
    assert not heavy, f"imported at start-up: {sorted(heavy)[:10]}"


def test_cfg_job_prints_the_composed_config():
    proc = _run("--cfg", "job", "model=cnn", "optimizer=sgd")
    assert proc.returncode == 0
    assert "_target_: keel.models.nets.CNN" in proc.stdout
    assert "_target_: torch.optim.SGD" in proc.stdout


def test_help_lists_config_groups_and_examples():
    out = _run("--help").stdout
    assert "model: cnn, custom, mlp, resnet, rnn" in out
    assert "optimizer: adam, adamw, rmsprop, sgd" in out
    assert "scheduler: cosine, none, onecycle, plateau, step" in out
    assert "python train.py trainer.devices=2" in out


def test_unknown_group_option_exits_2_with_the_choices():
    proc = _run("model=transformer")
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: invalid configuration (1 problem):\n  - model=transformer: no option 'transformer' in config group "
        "'model'; expected one of: cnn, custom, mlp, resnet, rnn. Fix: e.g. model=cnn, or add your own conf/model/transformer.yaml\n"
    )


def test_a_sweep_with_a_bad_option_exits_2_before_any_job(tmp_path):
    proc = _run("-m", "model=mlp,cnm", f"paths.log_dir={tmp_path}")
    assert proc.returncode == 2
    assert "  - model=mlp,cnm: no option 'cnm' in config group 'model'; expected one of: cnn, custom, mlp, resnet, rnn. Fix: model=mlp,cnn" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.name == ".hydra"]  # no job ran


def test_missing_data_file_is_refused_before_torch_is_imported(tmp_path):
    proc = _run("data=csv", "data.path=no/such.csv", "data.target=label", f"paths.log_dir={tmp_path}", importtime=True)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert errors[:2] == [
        "error: invalid configuration (1 problem):",
        f"  - data.path='no/such.csv': no such file (relative to {ROOT}); expected a .csv/.tsv/.parquet file. "
        "Fix: data.path=<your table file>",
    ]
    heavy = {m for m in _imported(proc.stderr) if m.split(".")[0] in ("torch", "lightning")}
    assert not heavy, sorted(heavy)[:5]


def test_export_without_a_checkpoint_exits_2_before_torch_is_imported(tmp_path):
    cmd = [sys.executable, "-X", "importtime", "export.py", f"paths.log_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "  - ckpt_path is required but not set (???). Fix: add ckpt_path=outputs/train/runs/<run>/checkpoints/" \
        "last.ckpt to the command line" in proc.stderr
    assert not {m for m in _imported(proc.stderr) if m.split(".")[0] in ("torch", "lightning")}


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="train")
def _train_app(cfg):  # never runs: every command line given to it below fails while composing
    raise AssertionError("composed")


@pytest.mark.parametrize(
    "argv,problem",
    [
        (["trainer.max_epoch=3"], "trainer.max_epoch=3: no key 'trainer.max_epoch' in the config"),
        (["experiment=nope"], "experiment=nope: no option 'nope' in config group 'experiment'; expected one of: "
                              "digits_cnn"),
        (["--cfg", "job", "optimizer.lr=[0.1"], "'optimizer.lr=[0.1': not a valid override"),
        (["+seed=3"], "+seed=3: 'seed' is already in the config ('+' adds a new key). Fix: seed=3"),
        (["hydra/launcher=nope"], "hydra/launcher=nope: no option 'nope' in config group 'hydra/launcher'"),
    ],
    ids=["unknown-key", "no-experiment", "parse-error", "append-existing", "hydra-group"],
)
def test_hydra_config_errors_exit_2_with_one_message(monkeypatch, capsys, argv, problem):
    import hydra._internal.utils as hydra_utils

    report = hydra_utils.run_and_report
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    with pytest.raises(SystemExit) as info:
        run_app(_train_app)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: invalid configuration (1 problem):\n  - {problem}") and err.count("\n") == 2
    assert "Fix:" in err and "Traceback" not in err
    assert hydra_utils.run_and_report is report  # Hydra's reporter is back


def test_hydra_full_error_keeps_hydras_exception(monkeypatch):
    from hydra.errors import MissingConfigException

    monkeypatch.setattr(sys, "argv", ["train.py", "model=transformer"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(MissingConfigException):
        run_app(_train_app)


def test_wrong_type_exits_2_with_one_message(tmp_path):
    proc = _run("trainer.max_epochs=ten", "data.batch_size=-3", f"paths.log_dir={tmp_path}")
    assert proc.returncode == 2
    assert "error: invalid configuration (2 problems):" in proc.stderr
    assert "trainer.max_epochs='ten': expected an integer >= 1" in proc.stderr
    assert "data.batch_size=-3: expected an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
