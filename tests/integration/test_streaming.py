"""Streamed tables end to end: a CSV trained with data.streaming=true (converted once, bundle, keel
predict), a mid-epoch resume through Lightning's checkpoint, a bad row group refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from keel.cli import main as keel

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], n)
    label = np.where((a + b > 0) ^ (color == "red"), "yes", "no")
    return pd.DataFrame({"rid": np.arange(n), "a": a, "b": b, "color": color, "label": label})


def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", f"paths.log_dir={tmp_path / 'out'}", "callbacks.progress_bar.refresh_rate=0",
           "data=csv", "data.target=label", "data.streaming=true", "data.stream.row_group_rows=400", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_streamed_csv_trains_exports_and_predicts(tmp_path):
    csv = tmp_path / "people.csv"
    _table(4000).drop(columns=["rid"]).to_csv(csv, index=False)
    proc = _train(tmp_path, f"data.path={csv}", "trainer.max_epochs=6", "logger=csv", "model.net.hidden=[32]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "converted once to the Parquet copy" in log and "(streamed): 4000 rows in 10 row groups" in log
    run = sorted((tmp_path / "out").rglob("metrics.json"))[-1].parent
    m = json.loads((run / "metrics.json").read_text())
    assert m["metrics"]["test/acc"] > 0.85
    report = json.loads((run / "data" / "contract_report.json").read_text())
    assert report["streaming"]["row_groups"] == 10 and sum(report["split_sizes"].values()) == 4000
    drift = json.loads((run / "data" / "drift_report.json").read_text())
    assert drift["streaming"]["counts"].startswith("exact") and drift["splits"]["test"]["leakage"]["count"] == 0
    ckpt = torch.load(m["best_checkpoint"], weights_only=True, map_location="cpu")
    assert set(ckpt["keel"]["reference"]["features"]) == {"a", "b", "color"}
    assert list((tmp_path / "out" / "cache" / "tables").glob("people-*.parquet"))
    new = tmp_path / "new.csv"
    _table(50, seed=3).drop(columns=["rid", "label"]).to_csv(new, index=False)
    out = tmp_path / "pred.csv"
    assert keel(["predict", str(run / "bundle"), str(new), "--output", str(out)]) == 0
    assert len(pd.read_csv(out)) == 50


def test_a_schema_other_than_the_contract_stops_the_run_before_training(tmp_path):
    df = _table(2000)
    df["a"] = df["a"].astype(str)  # numbers written as text: the file's schema is not the contract's
    pq = tmp_path / "bad.parquet"
    df.to_parquet(pq, row_group_size=500, index=False)
    contract = tmp_path / "c.yaml"
    contract.write_text(
        "kind: table\nname: people\ntarget: label\nclasses: ['no', 'yes']\ncolumns:\n"
        "  rid: {dtype: int64, nullable: false, min: 0, max: 100000}\n"
        "  a: {dtype: float64, nullable: false, min: -10, max: 10}\n"
        "  b: {dtype: float64, nullable: false, min: -10, max: 10}\n"
        "  color: {dtype: category, nullable: false, categories: [blue, green, red]}\n")
    proc = _train(tmp_path, f"data.path={pq}", f"data.contract={contract}", "trainer.max_epochs=1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "the Parquet schema does not match data contract 'people'" in err
    assert "column 'a' is large_string in the file; the contract expects float64" in err and "Fix:" in err
    assert not list((tmp_path / "out").rglob("*.ckpt"))


# the resumed run checkpoints into the interrupted run's folder, as a resumed run does
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_mid_epoch_checkpoint_resumes_with_the_next_batches(tmp_path):
    import lightning as L

    from keel.data import TableDataModule

    pq = tmp_path / "t.parquet"
    _table(3000).to_parquet(pq, row_group_size=250, index=False)

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(4, 2)  # rid, a, b, color (its index)
            self.seen: list[np.ndarray] = []

        def training_step(self, batch, i):
            x, y = batch
            self.seen.append(x[:, 0].numpy().astype(np.int64).copy())
            return torch.nn.functional.cross_entropy(self.w(torch.nan_to_num(x)), y)

        def validation_step(self, batch, i):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def dm() -> TableDataModule:
        return TableDataModule(path=str(pq), target="label", batch_size=50, streaming=True, drift={"enabled": False},
                               stream={"shuffle_rows": 300, "cache_dir": str(tmp_path / "c")})

    def trainer(**kw) -> L.Trainer:
        return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False, **kw)

    whole = Recorder()
    trainer(max_epochs=2, enable_checkpointing=False).fit(whole, datamodule=dm())
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=5, save_top_k=-1)
    first = Recorder()
    trainer(max_epochs=1, max_steps=27, callbacks=[ckpt]).fit(first, datamodule=dm())
    mid = tmp_path / "ck" / "epoch=0-step=25.ckpt"
    assert mid.is_file()
    resumed = Recorder()
    again = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=5, save_top_k=-1)
    trainer(max_epochs=2, callbacks=[again]).fit(resumed, datamodule=dm(), ckpt_path=str(mid))
    per_epoch = len(whole.seen) // 2
    assert len(resumed.seen) == 2 * per_epoch - 25
    assert all(np.array_equal(a, b) for a, b in zip(first.seen[:25] + resumed.seen, whole.seen))
    epoch0 = np.sort(np.concatenate(whole.seen[:per_epoch]))
    assert len(np.unique(epoch0)) == len(epoch0)  # each train row once per epoch
