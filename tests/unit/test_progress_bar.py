"""keel's progress bar: the states Lightning's TQDM bar shows, each drawn once, at most every min_interval."""

from __future__ import annotations

import contextlib
import io
import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from keel.callbacks import ProgressBar


class _Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self.layer(batch[0]), batch[1]), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _draw(bar: TQDMProgressBar, batches: int = 23) -> list[str]:
    """Train 3 epochs of ``batches`` batches with ``bar``; every frame it wrote."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batches * 4, 3, generator=g), torch.randint(0, 2, (batches * 4,), generator=g))
    trainer = L.Trainer(max_epochs=3, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer.fit(_Net(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    return [f.strip() for f in re.split(r"[\r\n]", out.getvalue()) if f.strip()]


def _states(frames: list[str]) -> list[tuple[str, str]]:
    """The training bar's (epoch, count) of each frame, repeats in a row dropped."""
    states = [m.groups() for f in frames if (m := re.match(r"Epoch (\d+): .*?\| (\d+)/23", f))]
    return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]


@pytest.mark.parametrize("refresh_rate", [1, 10])
def test_same_states_and_postfix_as_lightning_with_fewer_redraws(refresh_rate):
    ours, theirs = _draw(ProgressBar(refresh_rate, min_interval=0)), _draw(TQDMProgressBar(refresh_rate))
    # Lightning's epoch start also draws the reset bar under the previous epoch's name
    # ("Epoch 0: 0/23" before "Epoch 1: 0/23"); keel's sets the name first and draws once
    states = _states(theirs)
    flicker = [i for i, (s, nxt) in enumerate(zip(states, states[1:])) if s[1] == "0" and nxt == (str(int(s[0]) + 1), "0")]
    assert len(flicker) == 2  # epochs 1 and 2
    assert _states(ours) == [s for i, s in enumerate(states) if i not in flicker]
    assert ("10", "23") not in _states(ours) and ("0", "10" if refresh_rate == 10 else "1") in _states(ours)
    epoch_frames = [f for f in ours if f.startswith("Epoch 2:")]
    assert re.search(r"23/23 .*loss=[\d.]+, val_loss=[\d.]+\]", epoch_frames[-1])  # the postfix is shown
    train = lambda frames: sum(f.startswith("Epoch ") for f in frames)  # noqa: E731
    # Lightning: reset + description at each epoch start, two draws per update, one at epoch end
    assert train(ours) < train(theirs)
    updates = 3 * (23 // refresh_rate + (23 % refresh_rate > 0))
    assert train(ours) <= 3 * 2 + updates + 3 * 2  # epoch start, updates, epoch end and validation end


def test_min_interval_skips_draws_but_every_epoch_starts_and_ends_drawn():
    """With an hour between draws, the training bar draws each epoch's start, then only the
    skipped state before each validation and at each epoch end: every epoch's last frame is complete."""
    frames = _draw(ProgressBar(1, min_interval=3600))
    train = [f for f in frames if f.startswith("Epoch ")]
    assert len(train) <= 3 * 3 + 1  # vs 76 frames at min_interval=0 (test above); +1: the bar's close
    for epoch in range(3):
        shown = [f for f in train if f.startswith(f"Epoch {epoch}:")]
        assert re.search(r" 0/23 ", shown[0]), shown[0]  # the new epoch, not the last one's 100%
        assert re.search(r"23/23 .*loss=[\d.]+, val_loss=[\d.]+\]", shown[-1]), shown[-1]


def test_min_interval_is_checked():
    with pytest.raises(ValueError, match=r"callbacks.progress_bar.min_interval=-1: expected seconds >= 0"):
        ProgressBar(min_interval=-1)
