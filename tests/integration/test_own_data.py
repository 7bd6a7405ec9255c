"""A user's own data module from a file outside the package: the in-memory base with one load()
(data=custom, a contract file outside the repo; and a data config of the user's own through
--config-dir), and a plain LightningDataModule refused with every missing part named."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

MYDATA = '''
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from keel.data import InMemoryDataModule


class Blobs(InMemoryDataModule):
    """Three Gaussian blobs in 4 dimensions: all keel needs is load()."""

    def load(self):
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 900)
        centers = np.array([[0, 0, 0, 0], [3, 0, 3, 0], [0, 3, 0, 3]], dtype=np.float32)
        return (centers[y] + rng.normal(size=(900, 4))).astype(np.float32), y


class FolderDM(L.LightningDataModule):
    """A plain LightningDataModule: loaders only."""

    def __init__(self, batch_size=32, **_):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage=None):
        self.ds = TensorDataset(torch.randn(100, 4), torch.randint(0, 3, (100,)))

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=self.batch_size)
'''
CONTRACT = """\
kind: tensor
name: blobs
shape: [4]
dtype: float32
range: [-10.0, 15.0]
finite: true
classes: [0, 1, 2]
"""


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    (d / "conf" / "data").mkdir(parents=True)
    (d / "mydata.py").write_text(textwrap.dedent(MYDATA))
    (d / "blobs.yaml").write_text(CONTRACT)
    # a data config of the user's own: keel's data=custom knobs, their class, the contract inline
    (d / "conf" / "data" / "blobs.yaml").write_text("defaults:\n  - custom\n  - _self_\n_target_: mydata.Blobs\n"
                                                    "batch_size: 32\ncontract:\n" + textwrap.indent(CONTRACT, "  "))
    return d


def _train(user_dir: Path, *args: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(user_dir)}
    # Hydra's flags come before the overrides (argparse does not take them in between)
    return subprocess.run([sys.executable, "train.py", *flags, "callbacks.progress_bar.refresh_rate=0", "logger=none",
                           "trainer.max_epochs=3", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_load_method_and_a_contract_file_train_with_data_custom(tmp_path, user_dir):
    run = tmp_path / "run"
    proc = _train(user_dir, "data=custom", "data._target_=mydata.Blobs", f"data.contract={user_dir / 'blobs.yaml'}",
                  f"run_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["metrics"]["test/acc"] > 0.85  # separable blobs
    assert "name: blobs" in (run / "data" / "contract.yaml").read_text()
    assert (run / "bundle" / "model.onnx").is_file()


def test_a_data_config_of_the_users_own_through_config_dir(tmp_path, user_dir):
    run = tmp_path / "run"
    proc = _train(user_dir, "data=blobs", "callbacks=training", f"run_dir={run}",
                  flags=("--config-dir", str(user_dir / "conf")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["metrics"]["test/acc"] > 0.85
    assert "batch_size: 32" in (run / ".hydra" / "config.yaml").read_text()


def test_a_data_module_missing_parts_of_the_protocol_is_refused_with_them_named(tmp_path, user_dir):
    proc = _train(user_dir, "data=custom", "data._target_=mydata.FolderDM", f"data.contract={user_dir / 'blobs.yaml'}",
                  f"run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "error: data module mydata.FolderDM (" in proc.stderr and "does not provide what keel needs (7 missing):" \
        in proc.stderr
    for part in ("test_dataloader", "split_arrays", "split_sizes", "contract", "preprocessing", "net_input_shape",
                 "class_counts"):
        assert f"\n  - {part}: " in proc.stderr, part
    assert not re.search(r"\bepoch \d+", proc.stdout)  # nothing trained: no per-epoch line


def test_an_unimportable_data_module_is_refused_before_anything_loads(tmp_path, user_dir):
    proc = _train(user_dir, "data=custom", "data._target_=mydata.Nope", f"data.contract={user_dir / 'blobs.yaml'}",
                  f"run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data._target_=mydata.Nope: cannot be imported: module 'mydata' has no attribute 'Nope'. Fix: check the " \
           "name; mydata defines Blobs, FolderDM" in proc.stderr
    assert not (tmp_path / "run").exists()
