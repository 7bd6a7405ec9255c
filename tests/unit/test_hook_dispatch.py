"""keel.hook_dispatch: per-step hooks that only Lightning's empty defaults implement are not called;
every hook an object overrides still is, and training is unchanged."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from keel.hook_dispatch import (
    MODULE_STEP_HOOKS,
    PER_STEP_HOOKS,
    CheapHookNames,
    NoProfiler,
    lean_dispatch,
    skip_noop_hooks,
)
from keel.models import TaskModule as Classifier


class _Counting(L.Callback):
    """Overrides two per-step hooks and one epoch hook; counts their calls."""

    def __init__(self) -> None:
        self.calls = {"on_train_batch_end": 0, "on_before_backward": 0, "on_train_epoch_end": 0}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls["on_train_batch_end"] += 1

    def on_before_backward(self, trainer, pl_module, loss):
        self.calls["on_before_backward"] += 1

    def on_train_epoch_end(self, trainer, pl_module):
        self.calls["on_train_epoch_end"] += 1


class _Sub(_Counting):
    """Inherits its overrides from _Counting (not from Lightning's base)."""


class _Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.zero_grad_calls = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def on_before_zero_grad(self, optimizer):
        self.zero_grad_calls += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def _fit(lean: bool, epochs: int = 2) -> tuple[_Module, _Counting]:
    L.seed_everything(0, verbose=False)
    module, counting = _Module(), _Sub()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[counting],
                        profiler=NoProfiler() if lean else None)
    if lean:
        lean_dispatch(trainer, module)
    trainer.fit(module, _loader())
    return module, counting


def test_only_inherited_noop_hooks_are_skipped():
    cb = _Sub()
    skipped = skip_noop_hooks(cb, L.Callback)
    overridden = {"on_train_batch_end", "on_before_backward"}
    assert set(skipped) == set(PER_STEP_HOOKS) - overridden
    for name in PER_STEP_HOOKS:
        value = getattr(cb, name)
        assert (value is None) == (name not in overridden), name
    # epoch, setup and checkpoint hooks (some called without Lightning's callable check) stay
    for name in ("on_train_epoch_end", "on_train_epoch_start", "setup", "on_save_checkpoint", "state_dict"):
        assert callable(getattr(cb, name)), name
    # the class and other instances keep their methods
    assert callable(_Sub().on_train_batch_start) and callable(_Sub.on_after_backward)


def test_instance_attributes_set_by_the_user_are_kept():
    cb = _Counting()
    marker = lambda *args: None  # noqa: E731
    cb.on_after_backward = marker
    assert "on_after_backward" not in skip_noop_hooks(cb, L.Callback)
    assert cb.on_after_backward is marker


def test_lightning_callbacks_keep_what_they_implement():
    bar, ckpt = TQDMProgressBar(), ModelCheckpoint()
    skip_noop_hooks(bar, L.Callback)
    skip_noop_hooks(ckpt, L.Callback)
    assert callable(bar.on_train_batch_end) and callable(bar.on_validation_batch_end)
    assert callable(ckpt.on_train_batch_end)  # every_n_train_steps saves from there
    assert ckpt.on_before_backward is None and bar.on_before_optimizer_step is None


def test_module_hooks():
    module = _Module()
    skipped = skip_noop_hooks(module, L.LightningModule, MODULE_STEP_HOOKS)
    assert "on_before_zero_grad" not in skipped and callable(module.on_before_zero_grad)
    assert module.on_train_batch_start is None and "on_train_batch_start" in skipped
    # Lightning reads the evaluation batch hooks' signatures: they stay methods
    assert callable(module.on_validation_batch_end) and callable(module.on_test_batch_start)
    assert "layer.weight" in module.state_dict()  # a plain attribute, not a module or parameter
    with pytest.raises(TypeError, match="_Module is not a Callback"):
        skip_noop_hooks(module, L.Callback)


def test_validation_and_test_run_with_lean_dispatch():
    L.seed_everything(0, verbose=False)
    module, counting = _Module(), _Counting()
    module.validation_step = module.test_step = lambda batch, batch_idx: None
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=True, enable_model_summary=False, callbacks=[counting],
                        profiler=NoProfiler())
    skipped = lean_dispatch(trainer, module)
    assert "on_validation_batch_end" in skipped["_Counting"]
    trainer.fit(module, _loader(), _loader())
    trainer.test(module, _loader())
    assert counting.calls["on_train_batch_end"] == 5


def test_training_is_unchanged_and_overridden_hooks_still_run():
    plain_module, plain_cb = _fit(lean=False)
    lean_module, lean_cb = _fit(lean=True)
    assert lean_cb.calls == plain_cb.calls == {"on_train_batch_end": 10, "on_before_backward": 10,
                                               "on_train_epoch_end": 2}
    assert lean_module.zero_grad_calls == plain_module.zero_grad_calls == 10
    for a, b in zip(plain_module.parameters(), lean_module.parameters()):
        assert torch.equal(a, b)
    assert lean_module.on_train_batch_start is None  # the skip was in effect


def test_no_profiler_records_nothing_and_nests():
    profiler = NoProfiler()
    with profiler.profile("outer"), profiler.profile("inner"):
        pass
    assert profiler.summary() == ""


def test_classifier_step_signatures_are_their_own():
    for name in ("training_step", "validation_step", "test_step"):
        fn = getattr(Classifier, name)
        code = fn.__code__
        assert list(fn.__signature__.parameters) == list(code.co_varnames[: code.co_argcount])
        assert inspect.getfullargspec(fn).args == ["self", "batch", "batch_idx"]


def test_cheap_hook_names_mixin_keeps_module_registration(monkeypatch):
    class M(CheapHookNames, L.LightningModule):
        pass

    m, layer = M(), nn.Linear(2, 2)
    calls = []
    real = nn.Module.__setattr__
    monkeypatch.setattr(nn.Module, "__setattr__", lambda self, k, v: (calls.append(k), real(self, k, v)))
    m._current_fx_name = "training_step"
    assert m._current_fx_name == "training_step" and calls == []  # straight to object.__setattr__
    m.layer = layer  # modules and parameters still register
    assert calls == ["layer"] and "layer.weight" in m.state_dict()


def test_training_step_signature_is_cached_as_lightning_reads_it():
    """Lightning asks at every step whether training_step takes batch_idx; the cached signature
    gives the same answer (with and without batch_idx, and for a wrapped step, which Lightning
    unwraps once) and keel's Classifier carries it."""
    import functools
    import inspect

    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

    from keel.hook_dispatch import cache_step_signature
    from keel.models import TaskModule as Classifier

    def wrapped(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            return fn(self, *args, **kwargs)
        return inner

    def step(self, batch, batch_idx):
        return None

    def step_without_idx(self, batch):
        return None

    for fn, takes_idx in ((wrapped(step_without_idx), False), (step, True), (step_without_idx, False)):
        cls = type("M", (L.LightningModule,), {"training_step": fn})
        before = inspect.getfullargspec(cls().training_step)
        assert is_param_in_hook_signature(cls().training_step, "batch_idx", min_args=2) == takes_idx
        assert cache_step_signature(cls) is cls
        assert "__signature__" in vars(fn)
        assert inspect.getfullargspec(cls().training_step) == before
        assert is_param_in_hook_signature(cls().training_step, "batch_idx", min_args=2) == takes_idx
    assert "__signature__" in vars(Classifier.training_step)
    assert list(inspect.signature(Classifier.training_step).parameters) == ["self", "batch", "batch_idx"]
