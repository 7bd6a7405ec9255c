"""Cheaper per-step hook dispatch for the Trainer keel builds: no calls to hooks that do nothing.

Lightning calls every per-step hook on every callback and on the LightningModule, ~14 calls per
training step, each through a profiler context named with an f-string (plus the callback's
``state_key``), whether or not the object overrides the hook: the base hooks are empty methods.
Measured on this project's 2-core machine: one hook that no callback implements, dispatched to 5
callbacks, costs ~11 us; the default run has ~10 callbacks and 6 callback hooks per step.

Lightning's dispatch (``lightning.pytorch.trainer.call._call_callback_hooks`` and
``_call_lightning_module_hook``) skips a hook whose attribute is not callable. So for each
per-step hook that an object inherits unchanged from Lightning's base class (an empty method),
:func:`skip_noop_hooks` sets that attribute to ``None`` on the instance: the call Lightning
would have made did nothing; now it is not made. Overridden hooks, the class itself and every
other instance are untouched; hooks outside :data:`PER_STEP_HOOKS` (setup, checkpoint, epoch
hooks: some are called directly, without the callable check) are never touched, nor are the
module's evaluation batch hooks (Lightning reads their signatures).

:class:`CheapHookNames` (a LightningModule mixin) sets the hook name Lightning records around
every call without ``nn.Module.__setattr__``'s type checks.

:func:`cache_step_signature` (a class decorator on keel's modules) gives ``training_step`` a
precomputed ``__signature__``: Lightning asks ``inspect.getfullargspec`` at every training step
whether the step takes ``batch_idx`` (``_build_kwargs``), which otherwise rebuilds the signature
each time (~17 us a step here; ~6 us with it).

:class:`NoProfiler` is Lightning's default ``PassThroughProfiler`` (no profiling) whose
``profile()`` returns one shared ``nullcontext`` instead of building a generator-based context
manager for each of the ~40-100 profiled actions of a step. Used only when the config sets no
``trainer.profiler``.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from lightning.pytorch.profilers import PassThroughProfiler

# Hooks Lightning calls once or more per batch, always through the callable-checking dispatch.
PER_STEP_HOOKS: tuple[str, ...] = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)
# The LightningModule's share: the training step's. Lightning reads the signatures of the module's
# evaluation and prediction batch hooks (does one take ``dataloader_idx``?), so those stay methods.
MODULE_STEP_HOOKS: tuple[str, ...] = PER_STEP_HOOKS[:6]

_NULL = contextlib.nullcontext()


class CheapHookNames:
    """LightningModule mixin (list it before ``LightningModule``): Lightning sets
    ``_current_fx_name`` around every hook it calls, ~45 times per training step.
    ``nn.Module.__setattr__`` first tests the value against Parameter, Module and Buffer
    (isinstance through Python-level metaclass checks) and its three registries; for this plain
    string that always ends in ``object.__setattr__``, so go there directly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


class NoProfiler(PassThroughProfiler):
    """``PassThroughProfiler`` (records nothing) without a context manager built per action."""

    def profile(self, action_name: str) -> contextlib.nullcontext:  # type: ignore[override]
        return _NULL


def skip_noop_hooks(obj: Any, base: type, hooks: tuple[str, ...] = PER_STEP_HOOKS) -> list[str]:
    """Set each of ``hooks`` that ``obj`` inherits unchanged from ``base`` to ``None`` on ``obj``
    (Lightning then skips it); returns the names set.

    Args:
        obj: a callback (``base=lightning.Callback``) or a LightningModule
            (``base=lightning.LightningModule``, ``hooks=MODULE_STEP_HOOKS``).
        base: the Lightning class whose methods are the empty defaults.
        hooks: the hook names to consider.
    """
    if not isinstance(obj, base):
        raise TypeError(f"skip_noop_hooks: {type(obj).__name__} is not a {base.__name__}")
    skipped = []
    cls = type(obj)
    for name in hooks:
        default = getattr(base, name, None)
        if default is None or name in vars(obj):
            continue  # not a hook of base, or already set on the instance (by a user, or by us)
        if getattr(cls, name, None) is default:
            try:
                object.__setattr__(obj, name, None)
            except AttributeError:  # __slots__ without __dict__: leave Lightning to call the no-op
                continue
            skipped.append(name)
    return skipped


def cache_step_signature(cls: type) -> type:
    """Class decorator for a LightningModule: store the signature of its own ``training_step``
    as the function's ``__signature__``, which ``inspect`` returns as is. It is the signature
    ``getfullargspec`` computes (no ``__wrapped__`` chain followed), so what Lightning decides
    from it is unchanged. Set on keel's own classes when they are defined (a subclass that
    overrides the step is unaffected); a step that is not a plain function is left alone."""
    func = vars(cls).get("training_step")
    if inspect.isfunction(func) and "__signature__" not in vars(func):
        func.__signature__ = inspect.signature(func, follow_wrapped=False)  # type: ignore[attr-defined]
    return cls


def lean_dispatch(trainer: Any, model: Any) -> dict[str, list[str]]:
    """:func:`skip_noop_hooks` for every callback of ``trainer`` and for ``model``; returns
    ``{callback state key or "model": skipped hook names}``."""
    import lightning as L

    skipped = {"model": skip_noop_hooks(model, L.LightningModule, MODULE_STEP_HOOKS)}
    for callback in trainer.callbacks:
        skipped[callback.state_key] = skip_noop_hooks(callback, L.Callback)
    return skipped
