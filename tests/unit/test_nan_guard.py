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


def test_a_bad_loss_and_a_bad_gradient_stop_at_their_step_in_a_later_epoch(tmp_path):
    with pytest.raises(NonFiniteError, match=re.escape("non-finite loss at global step 4 (epoch 1, batch 0)")):
        _fit(_PoisonBatch(batch=0), tmp_path / "loss")
    with pytest.raises(NonFiniteError, match=re.escape("non-finite gradient at global step 5 (epoch 1, batch 1)")):
        _fit(_Tiny(nan_grad_at=5), tmp_path / "grad")


def _plain_trainer(**kwargs) -> SimpleNamespace:
    return SimpleNamespace(precision_plugin=SimpleNamespace(), global_step=7, current_epoch=1, checkpoint_callbacks=[],
                           ckpt_path=None, **kwargs)


def test_a_total_norm_that_overflows_with_finite_gradients_is_not_a_bad_step():
    """Only a NaN/Inf value stops the run: huge but finite gradients whose norm overflows name no parameter."""
    net = nn.Linear(2, 1)
    net.weight.grad = torch.full_like(net.weight, 1e30)
    net.bias.grad = torch.ones_like(net.bias)
    assert not torch.isfinite(torch.nn.utils.get_total_norm([net.weight.grad, net.bias.grad]))
    NanGuard().on_before_optimizer_step(_plain_trainer(), net, torch.optim.SGD(net.parameters(), lr=0.1))  # no raise


def test_a_bad_gradient_outside_the_module_still_stops():
    """The optimizer's parameters are checked, even one the LightningModule does not hold (it is then not named)."""
    net, extra = nn.Linear(2, 1), nn.Parameter(torch.ones(2))
    extra.grad = torch.tensor([1.0, float("nan")])
    optimizer = torch.optim.SGD([*net.parameters(), extra], lr=0.1)
    with pytest.raises(NonFiniteError, match=re.escape("(epoch 1); last good checkpoint: none (no checkpoint written "
                                                       "yet). NaN/Inf in a gradient. Training stopped")):
        NanGuard().on_before_optimizer_step(_plain_trainer(), net, optimizer)


class _InfGrad(_Tiny):
    def _maybe_poison(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf") if self.global_step == self.nan_grad_at else grad


def test_a_step_the_grad_scaler_skips_is_not_a_false_alarm():
    """16-mixed with a real GradScaler: an Inf gradient makes the scaler skip that step and lower
    its scale; the guard does not stop the run, and the weights stay finite."""
    from lightning.pytorch.plugins import MixedPrecision

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, generator=g))
    scales = {}
    for inf_at in (None, 5):
        torch.manual_seed(0)
        scaler = torch.amp.GradScaler("cpu")
        module = _InfGrad(nan_grad_at=inf_at)
        trainer = L.Trainer(max_epochs=3, callbacks=[NanGuard()], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, accelerator="cpu",
                            plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
        trainer.fit(module, DataLoader(data, batch_size=4))
        assert trainer.global_step == 12 and torch.isfinite(module.layer.weight).all()
        scales[inf_at] = scaler.get_scale()
    assert scales[5] == scales[None] / 2  # step 5 was skipped by the scaler (its scale backed off once more)
