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
        monkeypatch.setattr(guard, "_fused_found_inf", lambda tensors, *args: None)
    with pytest.raises(NonFiniteError, match=re.escape("non-finite loss at global step 4 (epoch 1, batch 0)")):
        _fit(_PoisonBatch(batch=0), tmp_path / "loss")
    with pytest.raises(NonFiniteError, match=re.escape("non-finite gradient at global step 5")):
        _fit(_Tiny(nan_grad_at=5), tmp_path / "grad")


# ------------------------------------------------------------------ the deferred check (CUDA's default)


class _FusedTiny(_Tiny):
    def __init__(self, optimizer: str = "adam", **kwargs):
        super().__init__(**kwargs)
        self.optimizer_name = optimizer

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=0.1, fused=True)
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, fused=True)
        return torch.optim.Adam(self.parameters(), lr=0.1)  # not fused: cannot skip on the device


def _fit_guarded(module: L.LightningModule, guard: NanGuard, **trainer_kwargs) -> L.Trainer:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, generator=g))
    trainer = L.Trainer(max_epochs=3, callbacks=[guard], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", **trainer_kwargs)
    trainer.fit(module, DataLoader(data, batch_size=4))
    return trainer


def _state(module: L.LightningModule) -> tuple[torch.Tensor, dict]:
    optimizer = module.trainer.optimizers[0]
    assert not hasattr(optimizer, "found_inf")  # the flag never outlives its step
    return module.layer.weight.detach().clone(), {k: v.clone() for k, v in optimizer.state[module.layer.weight].items()}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("bad", ["gradient", "loss"])
def test_deferred_check_stops_at_the_same_step_as_the_immediate_one(optimizer, bad):
    """Read one step later, the flag still names the bad step, its epoch and batch, and the
    weights and optimizer state are exactly what the immediate check leaves: the bad update was
    skipped inside the fused kernel (step count included) and the next one was refused."""
    kwargs = {"nan_grad_at": 5} if bad == "gradient" else {"nan_loss_at": 5}
    results = {}
    for defer in (False, True):
        torch.manual_seed(0)
        module = _FusedTiny(optimizer, **kwargs)
        guard = NanGuard(defer=defer)
        with pytest.raises(NonFiniteError) as info:
            _fit_guarded(module, guard)
        results[defer] = (str(info.value), *_state(module))
        assert torch.isfinite(module.layer.weight).all()
    msg_now, weight_now, state_now = results[False]
    msg_later, weight_later, state_later = results[True]
    where = f"non-finite {bad} at global step 5 (epoch 1, batch 1); last good checkpoint: none"
    assert msg_now.startswith(where) and msg_later.startswith(where)
    if bad == "loss":
        assert "The loss was nan" in msg_later
    else:
        assert "NaN/Inf in a gradient (the update was skipped on the device" in msg_later
    assert torch.equal(weight_now, weight_later)
    assert state_now.keys() == state_later.keys()
    for key in state_now:
        assert torch.equal(state_now[key], state_later[key]), key
    if optimizer == "adam":
        assert int(state_later["step"]) == 5  # steps 0-4 applied; 5 skipped and uncounted


def test_deferred_check_of_the_last_step_is_read_at_the_epoch_end():
    torch.manual_seed(0)
    module = _FusedTiny(nan_grad_at=11)  # 3 epochs x 4 batches: the fit's last optimizer step
    with pytest.raises(NonFiniteError, match=re.escape("non-finite gradient at global step 11 (epoch 2, batch 3)")):
        _fit_guarded(module, NanGuard(defer=True))


def test_deferred_check_leaves_a_finite_run_as_the_immediate_one():
    weights = []
    for defer in (False, True):
        torch.manual_seed(0)
        module = _FusedTiny()
        trainer = _fit_guarded(module, NanGuard(defer=defer))
        assert trainer.global_step == 12
        weights.append(_state(module))
    assert torch.equal(weights[0][0], weights[1][0])
    assert torch.equal(weights[0][1]["exp_avg_sq"], weights[1][1]["exp_avg_sq"])


def test_deferral_needs_an_optimizer_that_skips_on_the_device(monkeypatch):
    """Auto mode defers on CUDA only; an optimizer without the fused kernel is checked at once
    (and the bad parameter named) even when deferral is asked for."""
    from keel.callbacks.nan_guard import skips_on_device

    p = [nn.Parameter(torch.ones(2))]
    assert skips_on_device(torch.optim.Adam(p, fused=True)) and skips_on_device(torch.optim.SGD(p, lr=0.1, fused=True))
    assert not skips_on_device(torch.optim.Adam(p)) and not skips_on_device(torch.optim.RMSprop(p))
    guard = NanGuard()
    assert not guard._can_defer(torch.optim.Adam(p, fused=True), torch.device("cpu"))
    assert guard._can_defer(torch.optim.Adam(p, fused=True), torch.device("cuda"))
    assert not NanGuard(defer=False)._can_defer(torch.optim.Adam(p, fused=True), torch.device("cuda"))
    torch.manual_seed(0)
    with pytest.raises(NonFiniteError, match=re.escape("global step 5 (epoch 1, batch 1); last good checkpoint: none "
                                                       "(no checkpoint written yet). NaN/Inf in the gradient of "
                                                       "layer.weight.")):
        _fit_guarded(_FusedTiny("plain", nan_grad_at=5), NanGuard(defer=True))


def _sync_debug(mode) -> None:
    import warnings

    with warnings.catch_warnings():  # "a prototype feature": said at every switch
        warnings.simplefilter("ignore", UserWarning)
        torch.cuda.set_sync_debug_mode(mode)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_training_step_waits_for_the_gpu_when_deferred():
    """On CUDA with a fused optimizer, the deferred read adds no host sync to a training step
    (torch's sync debug mode raises at any synchronizing call inside the steps), and still
    stops a bad one, one step later, naming its own step."""

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                _sync_debug("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:
                _sync_debug(0)

        def on_exception(self, trainer, pl_module, exception):
            _sync_debug(0)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, generator=g))
    for nan_at, expect in ((None, None), (6, "non-finite gradient at global step 6 (epoch 1, batch 2)")):
        torch.manual_seed(0)
        module = _FusedTiny(nan_grad_at=nan_at)
        trainer = L.Trainer(max_epochs=3, callbacks=[Watch(), NanGuard(defer=True)], logger=False,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            accelerator="gpu", devices=1)
        loader = DataLoader(data, batch_size=4, pin_memory=True)
        if expect is None:
            trainer.fit(module, loader)
            assert trainer.global_step == 12
        else:
            with pytest.raises(NonFiniteError, match=re.escape(expect)):
                trainer.fit(module, loader)
            assert torch.isfinite(module.layer.weight).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_defers_when_the_gpu_is_the_bottleneck():
    """Default guard: a tiny model (the GPU keeps up) is read at once; a model whose steps keep
    the GPU busy for milliseconds switches to the deferred read."""

    class Wide(L.LightningModule):
        def __init__(self, width):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                     nn.Linear(width, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self.net(x).squeeze(1) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-4, fused=True)

    paced = {}
    for width, rows in ((8, 64), (8192, 16384)):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(rows, width, generator=g), torch.randn(rows, generator=g))
        guard = NanGuard()
        trainer = L.Trainer(max_steps=24, callbacks=[guard], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, accelerator="gpu", devices=1)
        trainer.fit(Wide(width), DataLoader(data, batch_size=rows // 24))
        paced[width] = guard._pacer.deferred
    assert paced == {8: False, 8192: True}


def test_pacer_defers_only_while_reads_wait_for_the_gpu():
    """Reads at once that keep waiting (the GPU is the bottleneck) switch to the deferred read;
    deferred reads that keep finding the flag ready (the GPU keeps up) switch back."""
    from keel.callbacks.nan_guard import _Pacer

    pacer = _Pacer()
    for _ in range(_Pacer.PATIENCE - 1):
        pacer.waited(2e-3)
    pacer.waited(1e-5)  # one quick read: the streak starts over
    for _ in range(_Pacer.PATIENCE - 1):
        pacer.waited(2e-3)
    assert not pacer.deferred
    pacer.waited(2e-3)
    assert pacer.deferred
    for _ in range(_Pacer.IDLE_STEPS - 1):
        pacer.found_ready(True)
    pacer.found_ready(False)  # had to wait: still the bottleneck
    for _ in range(_Pacer.IDLE_STEPS - 1):
        pacer.found_ready(True)
    assert pacer.deferred
    pacer.found_ready(True)
    assert not pacer.deferred


def test_the_flag_is_kept_across_steps_and_never_cleared(tmp_path):
    """One flag tensor serves the whole fit (no allocation per step); once set, it ends the run."""
    guard = NanGuard()
    seen = []
    original = NanGuard.on_before_optimizer_step

    def spy(self, trainer, pl_module, optimizer):
        original(self, trainer, pl_module, optimizer)
        seen.append(self._found)

    NanGuard.on_before_optimizer_step = spy
    try:
        _fit_guarded(_Tiny(), guard, limit_train_batches=2)
    finally:
        NanGuard.on_before_optimizer_step = original
    assert len(seen) == 6 and all(t is seen[0] for t in seen) and not bool(seen[0])


def test_auto_mode_defers_only_on_one_cuda_device():
    """Each rank's pacer times its own reads: ranks deciding apart would disagree on the
    flag's all-reduce, so auto mode keeps the read at once whenever there are several."""
    cuda_flag, cpu_flag = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    one, two = SimpleNamespace(world_size=1), SimpleNamespace(world_size=2)
    assert NanGuard()._auto(cuda_flag, one)
    assert not NanGuard()._auto(cuda_flag, two)
    assert not NanGuard()._auto(cpu_flag, one)
    assert not NanGuard(defer=True)._auto(cuda_flag, one)  # forced: decided without the pacer
