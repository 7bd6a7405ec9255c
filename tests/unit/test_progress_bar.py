"""The progress bar of conf/callbacks/progress_bar.yaml: keel.callbacks.ProgressBar, Lightning's
TQDMProgressBar through its public constructor (refresh_rate, leave, process_position) and its
documented ``get_metrics`` extension (the running train loss); hidden when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import io
import re

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar

from keel.callbacks import ProgressBar
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCHES = 23


@pytest.fixture(autouse=True)
def _no_refresh_rate_env(monkeypatch):
    # Lightning raises refresh_rate to TQDM_MINITERS, and to 20 on Colab: keep the configured one
    monkeypatch.delenv("TQDM_MINITERS", raising=False)
    monkeypatch.delenv("COLAB_GPU", raising=False)


class _Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)

        self.losses: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
        self.losses.append(loss.detach())
        return loss

    def running_train_loss(self, window):  # as keel's LightningModule has it
        return float(torch.stack(self.losses[-window:]).mean()) if self.losses else None

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self.layer(batch[0]), batch[1]), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(bar: TQDMProgressBar, epochs: int = 2) -> str:
    """Train ``epochs`` epochs of BATCHES batches with ``bar``; what it wrote to stdout, a
    captured stream and not a terminal (as in a SLURM or CI log file)."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(BATCHES * 4, 3, generator=g), torch.randint(0, 2, (BATCHES * 4,), generator=g))
    trainer = L.Trainer(max_epochs=epochs, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=2, num_sanity_val_steps=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer.fit(_Net(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    return out.getvalue()


def _train_frames(text: str) -> list[tuple[int, int]]:
    """(epoch, batches done) of every frame of the training bar."""
    return [(int(e), int(n)) for e, n in re.findall(rf"Epoch (\d+): [^\r\n]*?\| (\d+)/{BATCHES} ", text)]


ON_TERMINAL = "callbacks.progress_bar.only_on_terminal=false"  # pytest's stderr is not a terminal


def test_config_builds_the_bar_with_its_refresh_rate(compose_cfg):
    cfg = compose_cfg("callbacks=training", ON_TERMINAL)
    bar = instantiate(cfg.callbacks.progress_bar)
    assert type(bar) is ProgressBar and isinstance(bar, TQDMProgressBar)
    assert bar.refresh_rate == cfg.callbacks.progress_bar.refresh_rate == 10
    assert bar.process_position == 0 and bar.is_enabled and bar.window == 20


def test_no_bar_when_stderr_is_not_a_terminal(compose_cfg):
    bar = instantiate(compose_cfg("callbacks=training").callbacks.progress_bar)
    assert bar.is_disabled  # under pytest stderr is captured, as in a CI or SLURM log
    assert "Epoch" not in _fit(bar, epochs=1)


def test_configured_bar_draws_every_refresh_rate_batches_with_the_running_loss(compose_cfg):
    text = _fit(instantiate(compose_cfg("callbacks=training", ON_TERMINAL).callbacks.progress_bar))
    frames = _train_frames(text)
    assert {e for e, _ in frames} == {0, 1}
    # updates every 10 batches and at the epoch's last one (plus each epoch start's empty bar)
    assert {n for _, n in frames} == {0, 10, 20, BATCHES}
    last = [f for f in re.split(r"[\r\n]", text) if f.startswith("Epoch 1:")][-1]
    assert re.search(rf"100%.*{BATCHES}/{BATCHES} .*loss=[\d.]+, val_loss=[\d.]+\]", last), last
    assert "v_num" not in text


def test_running_loss_is_the_mean_of_the_last_window_batches():
    net = _Net()
    net.losses = [torch.tensor(float(v)) for v in (9.0, 1.0, 2.0, 3.0)]
    bar = ProgressBar(only_on_terminal=False, window=3)
    assert net.running_train_loss(bar.window) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="window=0"):
        ProgressBar(only_on_terminal=False, window=0)


def test_leave_closes_each_epochs_bar_on_its_own_line(compose_cfg):
    def between_epochs(text: str) -> tuple[str, str]:
        """Epoch 0's last frame and what was written from its end up to epoch 1's first frame."""
        last0 = list(re.finditer(r"Epoch 0: [^\r\n]*", text))[-1]
        return last0.group(), text[last0.end():text.index("Epoch 1:")]

    cfg = compose_cfg("callbacks=training", ON_TERMINAL)
    assert cfg.callbacks.progress_bar.leave is False
    # leave=false: one bar for the run, reset and renamed in place: epoch 1 redraws epoch 0's line
    _, gap = between_epochs(_fit(instantiate(cfg.callbacks.progress_bar)))
    assert "\n" not in gap
    # leave=true: epoch 0's bar is closed full, its line ended, and a new bar starts epoch 1
    kept = instantiate(compose_cfg("callbacks=training", ON_TERMINAL, "callbacks.progress_bar.leave=true").callbacks.progress_bar)
    frame, gap = between_epochs(_fit(kept))
    assert re.match(rf"Epoch 0: 100%\|.*\| {BATCHES}/{BATCHES} .*val_loss=", frame) and gap.startswith("\n")


def test_refresh_rate_zero_hides_the_bar(compose_cfg):
    bar = instantiate(compose_cfg("callbacks=training", ON_TERMINAL, "callbacks.progress_bar.refresh_rate=0").callbacks.progress_bar)
    assert bar.is_disabled
    assert "Epoch" not in _fit(bar, epochs=1)
