"""`python train.py` as a user types it: fast answers, one readable message for mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "model: cnn, mlp" in out
    assert "optimizer: adam, adamw, rmsprop, sgd" in out
    assert "scheduler: cosine, none, onecycle, plateau, step" in out
    assert "python train.py trainer.devices=2" in out


def test_unknown_group_option_names_the_allowed_ones():
    proc = _run("model=transformer")
    assert proc.returncode != 0
    assert "Could not find 'model/transformer'" in proc.stderr
    assert "Available options in 'model'" in proc.stderr and "cnn" in proc.stderr and "mlp" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_key_is_refused_with_a_hint():
    proc = _run("trainer.max_epoch=3")
    assert proc.returncode != 0
    assert "Could not override 'trainer.max_epoch'" in proc.stderr
    assert "Key 'max_epoch' is not in struct" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_type_exits_2_with_one_message():
    proc = _run("trainer.max_epochs=ten", "data.batch_size=-3")
    assert proc.returncode == 2
    assert "error: invalid configuration (2 problems):" in proc.stderr
    assert "trainer.max_epochs='ten': expected an integer >= 1" in proc.stderr
    assert "data.batch_size=-3: expected an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
