"""Check a composed train config before anything heavy is imported.

Every problem is collected and reported together, each with the key, the bad value, what is
allowed and an override that fixes it (the style of torchtune's ``config/_validate.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from keel.errors import KeelError
from keel.models.metric_names import METRIC_NAMES

_MISSING = object()


class ConfigError(KeelError):
    """The composed config cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"invalid configuration ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:  # rebuilt from its problems when sent between processes (joblib)
        return (type(self), (self.problems,))


@dataclass(frozen=True)
class Rule:
    """``path`` must satisfy ``ok``; ``expected`` says what is allowed, ``example`` a fix."""

    path: str
    ok: Callable[[Any], bool]
    expected: str
    example: str
    optional: bool = True  # the key may be absent (e.g. momentum only exists for sgd/rmsprop)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_ge(lo: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= lo


def _num_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if not _is_num(v):
            return False
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        return above and below

    return ok


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: v in allowed


def _none_or(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _devices(v: Any) -> bool:
    if v == "auto" or v == -1:
        return True
    if _is_int(v):
        return v >= 1
    if isinstance(v, (list, ListConfig)):
        return len(v) > 0 and all(_is_int(i) and i >= 0 for i in v)
    return False


def _limit(v: Any) -> bool:
    return v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


def _class_weights(v: Any) -> bool:
    if v is None or v == "balanced":
        return True
    return isinstance(v, (list, ListConfig)) and len(v) > 0 and all(_is_num(w) and w > 0 for w in v)


_PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine")
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_METRICS = ", ".join(METRIC_NAMES)

RULES: tuple[Rule, ...] = (
    Rule("seed", _int_ge(0), "an integer >= 0", "seed=42", optional=False),
    Rule("data.batch_size", _int_ge(1), "an integer >= 1", "data.batch_size=64"),
    Rule("data.num_workers", _int_ge(0), "an integer >= 0", "data.num_workers=0"),
    Rule("data.val_fraction", _num_in(0, 1, True, True), "a fraction in (0, 1)", "data.val_fraction=0.15"),
    Rule("data.test_fraction", _num_in(0, 1, True, True), "a fraction in (0, 1)", "data.test_fraction=0.15"),
    Rule("data.split_seed", _int_ge(0), "an integer >= 0", "data.split_seed=0"),
    Rule("data.on_violation", _one_of("raise", "drop"), "one of: raise, drop", "data.on_violation=drop"),
    Rule("data.class_weights", _one_of(None, "balanced"), "null or balanced", "data.class_weights=balanced"),
    Rule("trainer.max_epochs", lambda v: v == -1 or (_is_int(v) and v >= 1), "an integer >= 1 (or -1: no limit)", "trainer.max_epochs=40"),
    Rule("trainer.min_epochs", _none_or(_int_ge(0)), "an integer >= 0", "trainer.min_epochs=1"),
    Rule("trainer.devices", _devices, "an integer >= 1, 'auto', -1 or a list of device indices", "trainer.devices=1"),
    Rule("trainer.num_nodes", _int_ge(1), "an integer >= 1", "trainer.num_nodes=1"),
    Rule("trainer.accelerator", _one_of(*_ACCELERATORS), f"one of: {', '.join(_ACCELERATORS)}", "trainer.accelerator=auto"),
    Rule("trainer.precision", lambda v: str(v) in _PRECISIONS, f"one of: {', '.join(_PRECISIONS)}", "trainer.precision=bf16-mixed"),
    Rule("trainer.gradient_clip_val", _none_or(_num_in(0, float("inf"))), "null or a number >= 0", "trainer.gradient_clip_val=1.0"),
    Rule("trainer.gradient_clip_algorithm", _one_of("norm", "value"), "one of: norm, value", "trainer.gradient_clip_algorithm=norm"),
    Rule("trainer.accumulate_grad_batches", _int_ge(1), "an integer >= 1", "trainer.accumulate_grad_batches=2"),
    Rule("trainer.deterministic", _one_of(True, False, "warn", None), "true, false or warn", "trainer.deterministic=true"),
    Rule("trainer.sync_batchnorm", _one_of(True, False), "true or false", "trainer.sync_batchnorm=false"),
    Rule("trainer.check_val_every_n_epoch", _none_or(_int_ge(1)), "an integer >= 1", "trainer.check_val_every_n_epoch=1"),
    Rule("trainer.log_every_n_steps", _int_ge(1), "an integer >= 1", "trainer.log_every_n_steps=10"),
    Rule("trainer.limit_train_batches", _limit, "null, an integer >= 0 (batches) or a fraction in [0, 1]", "trainer.limit_train_batches=0.5"),
    Rule("trainer.limit_val_batches", _limit, "null, an integer >= 0 (batches) or a fraction in [0, 1]", "trainer.limit_val_batches=0.5"),
    Rule("trainer.limit_test_batches", _limit, "null, an integer >= 0 (batches) or a fraction in [0, 1]", "trainer.limit_test_batches=0.5"),
    Rule("optimizer.lr", _num_in(0, float("inf"), lo_open=True), "a number > 0", "optimizer.lr=0.001", optional=False),
    Rule("optimizer.weight_decay", _num_in(0, float("inf")), "a number >= 0", "optimizer.weight_decay=0.01"),
    Rule("optimizer.momentum", _num_in(0, 1, hi_open=True), "a number in [0, 1)", "optimizer.momentum=0.9"),
    Rule("scheduler.interval", _one_of("epoch", "step"), "one of: epoch, step", "scheduler.interval=epoch"),
    Rule("scheduler.frequency", _int_ge(1), "an integer >= 1", "scheduler.frequency=1"),
    Rule("scheduler.warmup", _int_ge(0), "an integer >= 0 (epochs or steps, per scheduler.interval)", "scheduler.warmup=2"),
    Rule("scheduler.warmup_start_factor", _num_in(0, 1, lo_open=True), "a number in (0, 1]", "scheduler.warmup_start_factor=0.1"),
    Rule("scheduler.monitor", _none_or(_one_of(*METRIC_NAMES)), f"null or a logged metric: {_METRICS}", "scheduler.monitor=val/loss"),
    Rule("model.loss.label_smoothing", _num_in(0, 1, hi_open=True), "a number in [0, 1)", "model.loss.label_smoothing=0.1"),
    Rule("model.loss.class_weights", _class_weights, "null, 'balanced' or a list of positive numbers", "model.loss.class_weights=balanced"),
    Rule("model.no_decay_bias_norm", _one_of(True, False), "true or false", "model.no_decay_bias_norm=true"),
    Rule("model.compile", _one_of(True, False), "true or false", "model.compile=true"),
    Rule("monitor.metric", _one_of(*METRIC_NAMES), f"a logged metric: {_METRICS}", "monitor.metric=val/acc", optional=False),
    Rule("monitor.mode", _one_of("min", "max"), "one of: min, max", "monitor.mode=max", optional=False),
    Rule("optimized_metric", _none_or(_one_of(*METRIC_NAMES)), f"null or a logged metric: {_METRICS}", "optimized_metric=val/acc_best", optional=False),
    Rule("ckpt_path", _none_or(lambda v: isinstance(v, str) and v != ""), "null or a path to a .ckpt file", "ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt", optional=False),
)


def _select(cfg: DictConfig, path: str) -> Any:
    return OmegaConf.select(cfg, path, default=_MISSING, throw_on_missing=False)


def _show(v: Any) -> str:
    if isinstance(v, (DictConfig, ListConfig)):
        v = OmegaConf.to_container(v, resolve=True)
    return repr(v)


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every problem in ``cfg``; return None if it can run.

    Checks: required values (``???``) are set, every interpolation resolves, each known key
    has the right type and range, cross-key constraints (fractions, nesterov, resume path).
    """
    problems: list[str] = []
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except Exception as e:  # an interpolation that cannot resolve, reported as config, not traceback
        raise ConfigError([f"an interpolation cannot be resolved: {e}"]) from None
    for key in missing:
        problems.append(f"{key} is required but not set (???). Fix: add `{key}=<value>` to the command line.")
    if problems:
        raise ConfigError(problems)
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        raise ConfigError([f"an interpolation cannot be resolved: {e}"]) from None

    for rule in RULES:
        value = _select(cfg, rule.path)
        if value is _MISSING:
            if not rule.optional:
                problems.append(f"{rule.path} is missing: expected {rule.expected}. Fix: +{rule.example}")
            continue
        if not rule.ok(value):
            problems.append(f"{rule.path}={_show(value)}: expected {rule.expected}. Fix: e.g. {rule.example}")

    val_f = _select(cfg, "data.val_fraction")
    test_f = _select(cfg, "data.test_fraction")
    if _is_num(val_f) and _is_num(test_f) and 0 < val_f < 1 and 0 < test_f < 1 and val_f + test_f >= 0.9:
        problems.append(
            f"data.val_fraction + data.test_fraction = {val_f + test_f:g}: expected < 0.9 so that training keeps"
            " at least 10% of the rows. Fix: e.g. data.val_fraction=0.15 data.test_fraction=0.15"
        )
    if _select(cfg, "optimizer.nesterov") is True and _select(cfg, "optimizer.momentum") in (0, 0.0):
        problems.append(
            "optimizer.nesterov=true with optimizer.momentum=0: Nesterov needs momentum > 0."
            " Fix: optimizer.momentum=0.9 or optimizer.nesterov=false"
        )
    ckpt = _select(cfg, "ckpt_path")
    if isinstance(ckpt, str) and ckpt and not os.path.isfile(ckpt):
        problems.append(
            f"ckpt_path={ckpt!r}: no such file (looked in {os.getcwd()}). Fix: give the path of a .ckpt file,"
            " e.g. <run dir>/checkpoints/last.ckpt"
        )
    if problems:
        raise ConfigError(problems)


__all__ = ["ConfigError", "Rule", "RULES", "validate_config"]
