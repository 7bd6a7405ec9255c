"""A user's own nn.Module from a file outside the package (model=custom): train, bundle, resume,
export.py; an unimportable or mis-signatured net refused before the data loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

MYNETS = '''
import math
from torch import nn


class MyNet(nn.Module):
    """A residual MLP; keel passes input_shape and num_classes because the constructor takes them."""

    def __init__(self, input_shape, num_classes, width=32):
        super().__init__()
        self.inp = nn.Linear(math.prod(input_shape), width)
        self.block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        return self.out(h + self.block(h))
'''


def _run(script: str, *args: str, pythonpath: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    quiet = ["callbacks.progress_bar.refresh_rate=0"] if script == "train.py" else []
    return subprocess.run([sys.executable, script, *quiet, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mycode"
    d.mkdir()
    (d / "mynets.py").write_text(textwrap.dedent(MYNETS))
    return d


def test_own_net_trains_exports_and_resumes(tmp_path, user_dir):
    run_dir = tmp_path / "run"
    net = ["model=custom", "model.net._target_=mynets.MyNet", "+model.net.width=24"]
    proc = _run("train.py", *net, "trainer.max_epochs=3", "logger=none", f"run_dir={run_dir}", pythonpath=user_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metrics"]["test/acc"] > 0.5  # digits, 3 epochs: learned something
    # the checkpoint holds the user's net config with keel's arguments filled in, as plain data
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["net"] == {"_target_": "mynets.MyNet", "width": 24, "input_shape": [1, 8, 8],
                                               "num_classes": 10}
    manifest = json.loads((run_dir / "bundle" / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_diff"] < 1e-4 and (run_dir / "bundle" / "model.onnx").is_file()

    # resume the finished run for more epochs, in place
    proc = _run("train.py", *net, "trainer.max_epochs=5", "logger=none", f"run_dir={run_dir}", "ckpt_path=auto",
                pythonpath=user_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert resumed["epoch"] == 4 and resumed["global_step"] > ckpt["global_step"]

    # export.py rebuilds the user's net from the checkpoint alone
    out = tmp_path / "bundle2"
    proc = _run("export.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"bundle_dir={out}",
                "quantize_int8=false", pythonpath=user_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["parity"]["max_abs_diff"] < 1e-4


def test_an_unimportable_net_is_refused_before_the_data_loads(tmp_path, user_dir):
    run_dir = tmp_path / "run"
    proc = _run("train.py", "model=custom", "model.net._target_=mynets.MyNet", f"run_dir={run_dir}")  # no PYTHONPATH
    assert proc.returncode == 2, proc.stderr
    assert "error: invalid configuration (1 problem):" in proc.stderr and "Traceback" not in proc.stderr
    assert "model.net._target_=mynets.MyNet: cannot be imported: no module named 'mynets'" in proc.stderr
    assert "PYTHONPATH=/path/to/dir" in proc.stderr
    assert "load_digits" not in proc.stderr  # the data never loaded
    assert not run_dir.exists()  # nor was a run directory left behind


def test_a_net_behind_another_nets_keys_gets_every_key_counted(tmp_path, user_dir):
    # model=mlp's net config (hidden, dropout, norm, activation) with the user's class
    proc = _run("train.py", "model.net._target_=mynets.MyNet", "optimizer.lr=-1", f"run_dir={tmp_path / 'run'}",
                pythonpath=user_dir)
    assert proc.returncode == 2, proc.stderr
    assert "error: invalid configuration (5 problems):" in proc.stderr
    assert "optimizer.lr=-1: expected a number > 0" in proc.stderr
    for key in ("hidden", "dropout", "norm", "activation"):
        assert (f"model.net.{key}: not an argument of mynets.MyNet (MyNet(input_shape, num_classes, width=32)). "
                f"Fix: remove it (~model.net.{key};") in proc.stderr
    assert "load_digits" not in proc.stderr
