"""NanGuard: a NaN/Inf loss or gradient stops training at once, naming the step and the last good checkpoint."""

from __future__ import annotations

import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from keel.callbacks import NanGuard
from keel.callbacks.nan_guard import NonFiniteError, nonfinite_grads, nonfinite_message
from keel.errors import KeelError


class _Tiny(L.LightningModule):
    """A linear regression whose loss (or gradient) turns NaN at one global step, on purpose."""

    def __init__(self, nan_loss_at: int | None = None, nan_grad_at: int | None = None):
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.nan_loss_at, self.nan_grad_at = nan_loss_at, nan_grad_at
        self.layer.weight.register_hook(self._maybe_poison)

    def _maybe_poison(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan") if self.global_step == self.nan_grad_at else grad

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.layer(x).squeeze(1) - y) ** 2).mean()
        if self.global_step == self.nan_loss_at:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module: L.LightningModule, tmp_path, **trainer_kwargs) -> L.Trainer:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, generator=g))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, monitor=None, every_n_epochs=1)
    trainer = L.Trainer(max_epochs=3, callbacks=[ckpt, NanGuard()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", **trainer_kwargs)
    trainer.fit(module, DataLoader(data, batch_size=4))
    return trainer


def test_nonfinite_loss_stops_at_its_step_naming_the_last_good_checkpoint(tmp_path):
    module = _Tiny(nan_loss_at=5)  # 4 batches per epoch: epoch 1, batch 1
    with pytest.raises(NonFiniteError) as info:
        _fit(module, tmp_path)
    msg = str(info.value)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert msg.startswith(f"non-finite loss at global step 5 (epoch 1, batch 1); last good checkpoint: {last}. ")
    assert "The loss was nan" in msg and "optimizer.lr" in msg
    assert isinstance(info.value, KeelError) and info.value.exit_code == 2
    assert torch.isfinite(module.layer.weight).all()  # the NaN never reached the weights


def test_nonfinite_gradient_stops_before_the_optimizer_step(tmp_path):
    module = _Tiny(nan_grad_at=2)
    with pytest.raises(NonFiniteError, match=re.escape(
            "non-finite gradient at global step 2 (epoch 0, batch 2); last good checkpoint: none (no checkpoint "
            "written yet). NaN/Inf in the gradient of layer.weight.")):
        _fit(module, tmp_path)
    assert torch.isfinite(module.layer.weight).all()


def test_a_finite_run_is_not_stopped(tmp_path):
    trainer = _fit(_Tiny(), tmp_path, limit_train_batches=2)
    assert trainer.global_step == 6


def test_nonfinite_grads_names_the_parameters():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net(torch.ones(1, 2)).sum().backward()
    assert nonfinite_grads(net.named_parameters()) == []
    net[1].bias.grad[0] = float("inf")
    assert nonfinite_grads(net.named_parameters()) == ["1.bias"]
    assert nonfinite_grads([("w", nn.Parameter(torch.ones(1)))]) == []  # no gradient yet


def test_gradients_are_not_checked_under_a_grad_scaler():
    """16-mixed: Inf gradients are normal there (the scaler skips the step and lowers its scale)."""
    net = nn.Linear(2, 1)
    net.weight.grad = torch.full_like(net.weight, float("inf"))
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()))
    NanGuard().on_before_optimizer_step(trainer, net, None)  # no raise
    plain = SimpleNamespace(precision_plugin=SimpleNamespace(), global_step=7, current_epoch=1, checkpoint_callbacks=[],
                            ckpt_path=None)
    with pytest.raises(NonFiniteError, match="non-finite gradient at global step 7 \\(epoch 1\\)"):
        NanGuard().on_before_optimizer_step(plain, net, None)


def test_message_format():
    assert nonfinite_message("loss", 12, 3, 4, "/r/checkpoints/last.ckpt").startswith(
        "non-finite loss at global step 12 (epoch 3, batch 4); last good checkpoint: /r/checkpoints/last.ckpt. Training")


class _PoisonBatch(_Tiny):
    def __init__(self, batch: int):
        super().__init__()
        self.poison_batch = batch

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("inf") if self.current_epoch == 1 and batch_idx == self.poison_batch else loss


def test_nonfinite_loss_in_an_accumulated_step_names_its_batch(tmp_path):
    """The losses of the micro-batches are checked together at the optimizer step: the first
    non-finite one is named, and no update is applied."""
    module = _PoisonBatch(batch=2)  # epoch 1: batches 2 and 3 make global step 3 (2 steps per epoch)
    with pytest.raises(NonFiniteError, match=re.escape("non-finite loss at global step 3 (epoch 1, batch 2)")) as info:
        _fit(module, tmp_path, accumulate_grad_batches=2)
    assert "The loss was inf" in str(info.value)
    assert torch.isfinite(module.layer.weight).all()


def test_loss_is_checked_without_the_gradient_check(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, generator=g))
    module = _PoisonBatch(batch=0)
    trainer = L.Trainer(max_epochs=3, callbacks=[NanGuard(check_grads=False)], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    with pytest.raises(NonFiniteError, match=re.escape("non-finite loss at global step 4 (epoch 1, batch 0)")):
        trainer.fit(module, DataLoader(data, batch_size=4))
    assert torch.isfinite(module.layer.weight).all()


def test_fused_check_finds_every_nonfinite_value_and_leaves_values_unchanged():
    """The fused kernel (scale 1) flags a NaN/Inf anywhere, in any float dtype or layout, and
    rewrites every value bit for bit (-0.0 and subnormals included)."""
    from keel.callbacks.nan_guard import _fused_found_inf

    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(5, 4, generator=g), torch.randn(3, generator=g).to(torch.bfloat16),
               torch.randn(4, 6, generator=g).t(), torch.tensor([-0.0, 1e-40, 3.0])]
    before = [t.clone() for t in tensors]
    assert not bool(_fused_found_inf(tensors))
    for t, b in zip(tensors, before):
        assert torch.equal(t.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    for i, bad in enumerate((float("nan"), float("inf"), float("-inf"), float("nan"))):
        damaged = [t.clone() for t in before]
        damaged[i][(-1,) * damaged[i].dim()] = bad
        assert bool(_fused_found_inf(damaged)), (i, bad)


def test_fused_check_declines_what_it_cannot_check():
    from keel.callbacks.nan_guard import _fused_found_inf

    assert _fused_found_inf([torch.ones(2), torch.ones(2, device="meta")]) is None  # two devices
    assert _fused_found_inf([torch.ones(2, 2).to_sparse()]) is None
    assert _fused_found_inf([torch.ones(2, dtype=torch.long)]) is None


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "fallback"])
def test_both_check_paths_stop_at_the_bad_step(tmp_path, monkeypatch, fused):
    """Where the fused kernel does not apply, the per-loss check and the gradient norm still
    stop a bad loss and a bad gradient at their step."""
    import keel.callbacks.nan_guard as guard

    if not fused:
        monkeypatch.setattr(guard, "_fused_found_inf", lambda tensors: None)
    with pytest.raises(NonFiniteError, match=re.escape("non-finite loss at global step 4 (epoch 1, batch 0)")):
        _fit(_PoisonBatch(batch=0), tmp_path / "loss")
    with pytest.raises(NonFiniteError, match=re.escape("non-finite gradient at global step 5")):
        _fit(_Tiny(nan_grad_at=5), tmp_path / "grad")
