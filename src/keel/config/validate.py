"""Check a composed train config before anything heavy is imported.

Every problem is collected and reported together, each with the key, the bad value, what is
allowed and an override that fixes it (the style of torchtune's ``config/_validate.py``).
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from keel.errors import KeelError
from keel.tasks import TASKS, get_task

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
    # checked only when the enclosing node's _target_ is this class (a user's own net may give
    # the same key another meaning)
    only_for: str | None = None


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


def _ints_ge(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, ListConfig)) and len(v) > 0 and all(_is_int(i) and i >= lo for i in v)


def _explain_methods(v: Any) -> bool:
    from keel.explain.run import METHODS

    return isinstance(v, (list, tuple, ListConfig)) and len(v) > 0 and all(m in METHODS for m in v)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _class_weights(v: Any) -> bool:
    if v is None or v == "balanced":
        return True
    return isinstance(v, (list, ListConfig)) and len(v) > 0 and all(_is_num(w) and w > 0 for w in v)


_PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine")
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_MODULES = ("keel.models.TaskModule", "keel.models.module.TaskModule", "keel.models.Classifier",
            "keel.models.classifier.Classifier", "keel.models.module.Classifier")

# Export and int8 options: in the train config (callbacks=default) and in export.yaml.
BUNDLE_RULES: tuple[Rule, ...] = (
    Rule("callbacks.onnx_export.opset", _int_ge(1), "an integer ONNX opset, e.g. 18", "callbacks.onnx_export.opset=18"),
    Rule("callbacks.onnx_export.parity_batches", _int_ge(1), "an integer >= 1", "callbacks.onnx_export.parity_batches=4"),
    Rule("callbacks.onnx_export.batch_size", _int_ge(1), "an integer >= 1", "callbacks.onnx_export.batch_size=64"),
    Rule("callbacks.onnx_export.atol", _num_in(0, float("inf")), "a number >= 0", "callbacks.onnx_export.atol=1e-4"),
    Rule("callbacks.onnx_export.rtol", _num_in(0, float("inf")), "a number >= 0", "callbacks.onnx_export.rtol=1e-3"),
    Rule("callbacks.onnx_export.min_agreement", _num_in(0, 1), "a fraction in [0, 1]", "callbacks.onnx_export.min_agreement=1.0"),
    Rule("callbacks.onnx_export.samples", _int_ge(1), "an integer >= 1", "callbacks.onnx_export.samples=8"),
    Rule("callbacks.quantize.mode", _one_of("auto", "dynamic", "static"), "one of: auto, dynamic, static", "callbacks.quantize.mode=auto"),
    Rule("callbacks.quantize.calibration_batches", _int_ge(1), "an integer >= 1", "callbacks.quantize.calibration_batches=8"),
    Rule("callbacks.quantize.batch_size", _int_ge(1), "an integer >= 1", "callbacks.quantize.batch_size=64"),
    Rule("callbacks.quantize.max_accuracy_drop", _num_in(0, 1), "a fraction in [0, 1]", "callbacks.quantize.max_accuracy_drop=0.01"),
    Rule("callbacks.quantize.max_rmse_increase", _num_in(0, float("inf")), "a fraction >= 0 (0.01: rmse up by at most 1%)",
         "callbacks.quantize.max_rmse_increase=0.01"),
    Rule("callbacks.quantize.per_channel", _one_of(True, False), "true or false", "callbacks.quantize.per_channel=true"),
    Rule("callbacks.explain.images", _int_ge(0), "an integer >= 0 (0: no image maps)", "callbacks.explain.images=20"),
    Rule("callbacks.explain.methods", _explain_methods, "a list of saliency, integrated_gradients, grad_cam",
         "callbacks.explain.methods=[saliency,integrated_gradients,grad_cam]"),
    Rule("callbacks.explain.ig_steps", _int_ge(1), "an integer >= 1", "callbacks.explain.ig_steps=32"),
    Rule("callbacks.explain.repeats", _int_ge(1), "an integer >= 1", "callbacks.explain.repeats=5"),
    Rule("callbacks.explain.max_rows", _int_ge(1), "an integer >= 1", "callbacks.explain.max_rows=20000"),
    Rule("callbacks.explain.importance", _one_of(True, False), "true or false", "callbacks.explain.importance=true"),
    Rule("callbacks.explain.in_sweeps", _one_of(True, False), "true or false", "callbacks.explain.in_sweeps=false"),
)

_RNN = "keel.models.nets.RNN"
_WINDOWS = "keel.data.WindowsDataModule"

RULES: tuple[Rule, ...] = (
    Rule("task", _one_of("auto", *TASKS), f"auto or one of: {', '.join(TASKS)}", "task=regression"),
    Rule("seed", _int_ge(0), "an integer >= 0", "seed=42", optional=False),
    Rule("data.path", _text, "the path of a .csv/.tsv/.parquet file", "data.path=my.csv"),
    Rule("data.target", _text, "the name of the label column", "data.target=label"),
    Rule("data.format", _one_of("auto", "csv", "parquet"), "one of: auto, csv, parquet", "data.format=auto"),
    Rule("data.root", _text, "the data folder (data=mnist: the 4 IDX files; data=image_folder: class folders of images)",
         "data.root=~/data/mnist"),
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
    Rule("optimizer.fused", lambda v: v is None or v == "auto" or isinstance(v, bool), "auto, true or false", "optimizer.fused=auto"),
    Rule("optimizer.momentum", _num_in(0, 1, hi_open=True), "a number in [0, 1)", "optimizer.momentum=0.9"),
    Rule("scheduler.interval", _one_of("epoch", "step"), "one of: epoch, step", "scheduler.interval=epoch"),
    Rule("scheduler.frequency", _int_ge(1), "an integer >= 1", "scheduler.frequency=1"),
    Rule("scheduler.warmup", _int_ge(0), "an integer >= 0 (epochs or steps, per scheduler.interval)", "scheduler.warmup=2"),
    Rule("scheduler.warmup_start_factor", _num_in(0, 1, lo_open=True), "a number in (0, 1]", "scheduler.warmup_start_factor=0.1"),
    Rule("model.loss.label_smoothing", _num_in(0, 1, hi_open=True), "a number in [0, 1)", "model.loss.label_smoothing=0.1"),
    Rule("model.loss.class_weights", _class_weights, "null, 'balanced' or a list of positive numbers", "model.loss.class_weights=balanced"),
    Rule("model.no_decay_bias_norm", _one_of(True, False), "true or false", "model.no_decay_bias_norm=true"),
    Rule("model.compile", _one_of(True, False), "true or false", "model.compile=true"),
    Rule("model.channels_last", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false", "model.channels_last=auto"),
    Rule("model.net.hidden", _ints_ge(1), "a non-empty list of layer widths >= 1", "model.net.hidden=[256,128]"),
    Rule("model.net.channels", _ints_ge(1), "a non-empty list of channel counts >= 1", "model.net.channels=[32,64]"),
    Rule("model.net.dropout", _num_in(0, 1, hi_open=True), "a number in [0, 1)", "model.net.dropout=0.1"),
    Rule("model.net.norm", _one_of("auto", "batch", "layer", "none"), "one of: auto (the task's), batch, layer (mlp only), none", "model.net.norm=batch"),
    Rule("model.net.activation", _one_of("relu", "gelu", "silu"), "one of: relu, gelu, silu", "model.net.activation=relu"),
    # model=rnn (keel.models.nets.RNN)
    Rule("model.net.cell", _one_of("gru", "lstm"), "one of: gru, lstm", "model.net.cell=gru", only_for=_RNN),
    Rule("model.net.readout", _one_of("last", "mean"), "one of: last (final hidden state), mean (over time)",
         "model.net.readout=last", only_for=_RNN),
    Rule("model.net.hidden_size", _int_ge(1), "an integer >= 1", "model.net.hidden_size=64", only_for=_RNN),
    Rule("model.net.num_layers", _int_ge(1), "an integer >= 1", "model.net.num_layers=1", only_for=_RNN),
    Rule("model.net.bidirectional", _one_of(True, False), "true or false", "model.net.bidirectional=false",
         only_for=_RNN),
    # data=csv_windows, data=digits_seq
    Rule("data.window", _int_ge(1), "an integer >= 1 (rows per window)", "data.window=32", only_for=_WINDOWS),
    Rule("data.stride", _int_ge(1), "an integer >= 1 (rows between window starts)", "data.stride=1",
         only_for=_WINDOWS),
    Rule("data.target_at", _one_of("end", "next"), "one of: end (the window's last row), next (the row after)",
         "data.target_at=next", only_for=_WINDOWS),
    Rule("data.layout", _one_of("image", "sequence"), "one of: image ([1, 8, 8]), sequence ([8, 8])",
         "data.layout=sequence", only_for="keel.data.DigitsDataModule"),
    Rule("data.infer_margin", _num_in(0, float("inf")), "a number >= 0 (a fraction of each column's span)",
         "data.infer_margin=0.1"),
    Rule("data.streaming", _one_of(True, False), "true or false", "data.streaming=true"),
    Rule("data.stream.holdout_rows", _int_ge(1), "an integer >= 1", "data.stream.holdout_rows=100000"),
    Rule("data.stream.shuffle_rows", _int_ge(1), "an integer >= 1", "data.stream.shuffle_rows=65536"),
    Rule("data.stream.sample_rows", _int_ge(1), "an integer >= 1", "data.stream.sample_rows=50000"),
    Rule("data.stream.row_group_rows", _int_ge(1), "an integer >= 1", "data.stream.row_group_rows=65536"),
    Rule("data.stream.cache_dir", _text, "a folder for Parquet copies of CSV files", "data.stream.cache_dir=outputs/cache/tables"),
    Rule("data.drift.enabled", _one_of(True, False), "true or false", "data.drift.enabled=true"),
    Rule("data.drift.bins", _int_ge(2), "an integer >= 2", "data.drift.bins=10"),
    Rule("data.drift.psi_warn", _num_in(0, float("inf")), "a number >= 0", "data.drift.psi_warn=0.1"),
    Rule("data.drift.psi_alert", _num_in(0, float("inf")), "a number >= 0", "data.drift.psi_alert=0.25"),
    Rule("data.drift.js_warn", _num_in(0, 1), "a number in [0, 1]", "data.drift.js_warn=0.05"),
    Rule("data.drift.js_alert", _num_in(0, 1), "a number in [0, 1]", "data.drift.js_alert=0.1"),
    Rule("data.drift.epsilon", _num_in(0, 1, lo_open=True), "a number in (0, 1]", "data.drift.epsilon=0.0001"),
    Rule("data.drift.alpha", _num_in(0, 1, lo_open=True, hi_open=True),
         "a significance level in (0, 1) (the noise test's: lower, fewer false alarms)", "data.drift.alpha=0.01"),
    Rule("callbacks.early_stopping.patience", _int_ge(0), "an integer >= 0 (epochs)", "callbacks.early_stopping.patience=6"),
    Rule("callbacks.early_stopping.min_delta", _num_in(0, float("inf")), "a number >= 0", "callbacks.early_stopping.min_delta=0.0"),
    Rule("callbacks.progress_bar.refresh_rate", _int_ge(0), "an integer >= 0 (0 hides the bar)", "callbacks.progress_bar.refresh_rate=10"),
    Rule("callbacks.model_checkpoint.save_top_k", _int_ge(-1), "an integer >= -1 (-1: keep all)", "callbacks.model_checkpoint.save_top_k=1"),
    *BUNDLE_RULES,
    Rule("monitor.mode", _one_of("auto", "min", "max"), "one of: auto (the metric's way), min, max", "monitor.mode=auto",
         optional=False),
    Rule("ckpt_path", _none_or(lambda v: isinstance(v, str) and v != ""),
         "null, auto (the newest complete checkpoint of run_dir) or a path to a .ckpt file",
         "ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt", optional=False),
)


EXPORT_RULES: tuple[Rule, ...] = (
    Rule("ckpt_path", _text, "the path of a .ckpt file written by train.py",
         "ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt", optional=False),
    Rule("bundle_dir", _none_or(_text), "null (next to the checkpoint's run) or a directory", "bundle_dir=my_bundle"),
    Rule("quantize_int8", _one_of(True, False), "true or false", "quantize_int8=false", optional=False),
    *BUNDLE_RULES,
)


def _tasks(cfg: DictConfig) -> list[Any]:
    """The task objects the config may run: its ``task``, or every task while it is ``auto``
    (the data decides at setup; a name any task logs is accepted until then)."""
    task = _select(cfg, "task")
    return [get_task(task)] if task in TASKS else [get_task(t) for t in TASKS]


def _names(tasks: list[Any], train_metrics: Any = "all") -> list[str]:
    names: list[str] = []
    for task in tasks:
        try:
            logged = task.logged_names(train_metrics)
        except ValueError:
            logged = task.metric_names()
        names += [n for n in logged if n not in names]
    return names


def _train_metrics(value: Any) -> Any:
    if isinstance(value, ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _task_problems(cfg: DictConfig) -> list[str]:
    """The keys whose allowed values depend on the task: the monitored, optimized and scheduler
    metrics, ``model.train_metrics`` and ``model.loss``; each problem names the task."""
    tasks = _tasks(cfg)
    label = tasks[0].name if len(tasks) == 1 else " or ".join(t.name for t in tasks) + " (task=auto)"
    ours = _select(cfg, "model._target_") in (*_MODULES, _MISSING)
    problems = []
    train = _train_metrics(_select(cfg, "model.train_metrics"))
    train = None if train is _MISSING else train
    if ours:
        errors = []
        for task in tasks:
            try:
                task.train_metric_set(train)
            except ValueError as e:
                errors.append(str(e))
        if len(errors) == len(tasks):
            problems.append(errors[0])
    names = _names(tasks, train)
    shown = ", ".join(names)
    for key, auto, nullable, example in (("monitor.metric", True, False, tasks[0].monitor),
                                         ("optimized_metric", True, True, tasks[0].optimized),
                                         ("scheduler.monitor", True, True, "val/loss")):
        value = _select(cfg, key)
        if value is _MISSING:
            if key == "monitor.metric":
                problems.append(f"monitor.metric is missing: expected auto or a logged metric. Fix: +monitor.metric=auto")
            continue
        if key == "scheduler.monitor" and value == _select(cfg, "monitor.metric"):
            continue  # ${monitor.metric} (scheduler=plateau): checked once, as monitor.metric
        if (value is None and nullable) or (value == "auto" and auto) or not ours:
            continue
        if value in names:
            continue
        if isinstance(value, str) and value.startswith("train/") and value in _names(tasks, "all"):
            metric = value[len("train/"):]
            try:
                chosen = list(tasks[0].train_metric_set(train))
            except ValueError:
                continue  # not a valid setting: reported above
            problems.append(f"{key}={value!r} is not logged: model.train_metrics={chosen!r} leaves out {metric}. "
                            f"Fix: model.train_metrics=all (or add {metric} to the list), or {key}=val/{metric}")
            continue
        problems.append(f"{key}={_show(value)}: expected {'null, ' if nullable else ''}auto or a metric that "
                        f"{label} logs: {shown}. Fix: e.g. {key}={example}")
    metric, mode = _select(cfg, "monitor.metric"), _select(cfg, "monitor.mode")
    if ours and isinstance(metric, str) and metric in names and mode in ("min", "max"):
        way = tasks[0].mode(metric) if len(tasks) == 1 else None
        if way is not None and way != mode:
            problems.append(f"monitor.mode={mode} with monitor.metric={metric}: {metric} improves toward its "
                            f"{'maximum' if way == 'max' else 'minimum'}, so checkpoints and early stopping would "
                            f"keep the worst epochs. Fix: monitor.mode=auto (or monitor.mode={way})")
    loss = _select(cfg, "model.loss")
    if ours and isinstance(loss, DictConfig):
        loss = OmegaConf.to_container(loss, resolve=True)
        if len(tasks) == 1:
            problems += tasks[0].loss_problems(loss)
        else:
            allowed = sorted({n for t in tasks for n in t.losses})
            if loss.get("name", "auto") not in ("auto", None, *allowed):
                problems.append(f"model.loss.name={loss.get('name')!r}: expected auto or one of {', '.join(allowed)}. "
                                "Fix: model.loss.name=auto")
    return problems


_LIGHTNING_TRAINERS = ("lightning.pytorch.Trainer", "lightning.Trainer", "lightning.pytorch.trainer.trainer.Trainer",
                       "lightning.pytorch.trainer.Trainer")
_HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


@functools.lru_cache(maxsize=1)
def lightning_trainer_arguments() -> frozenset[str] | None:
    """The parameter names of Lightning's ``Trainer.__init__``, read from its source with ``ast``
    (importing Lightning takes ~2 s); None when the source cannot be found or read."""
    import ast
    import importlib.util

    try:
        spec = importlib.util.find_spec("lightning")  # top level: finds it without importing it
        locations = list(spec.submodule_search_locations or []) if spec else []
        tree = ast.parse((Path(locations[0]) / "pytorch" / "trainer" / "trainer.py").read_text())
    except (ImportError, IndexError, OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    a = item.args
                    if a.kwarg is not None:  # **kwargs: any key is taken
                        return None
                    return frozenset(x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs) if x.arg != "self")
    return None


def _trainer_key_problems(cfg: DictConfig) -> list[str]:
    """Keys under ``trainer`` that Lightning's Trainer does not take (``+trainer.max_epoch=3``),
    caught here rather than after the imports and the data setup."""
    trainer = _select(cfg, "trainer")
    if not isinstance(trainer, DictConfig) or _select(cfg, "trainer._target_") not in _LIGHTNING_TRAINERS:
        return []
    known = lightning_trainer_arguments()
    if known is None:
        return []
    problems = []
    for key in trainer:
        if key in known or key in _HYDRA_KEYS:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hint = f"trainer.{close[0]}=..." if close else f"remove +trainer.{key}"
        problems.append(f"trainer.{key}: not an argument of Lightning's Trainer. Fix: {hint} "
                        "(`python train.py --cfg job` shows the composed config)")
    return problems


def _select(cfg: DictConfig, path: str) -> Any:
    return OmegaConf.select(cfg, path, default=_MISSING, throw_on_missing=False)


def _show(v: Any) -> str:
    if isinstance(v, (DictConfig, ListConfig)):
        v = OmegaConf.to_container(v, resolve=True)
    return repr(v)


def _resolution_problems(cfg: DictConfig, rules: tuple[Rule, ...]) -> list[str]:
    """Required values (``???``) that are not set, and interpolations that cannot resolve."""
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except Exception as e:  # an interpolation that cannot resolve, reported as config, not traceback
        return [f"an interpolation cannot be resolved: {e}"]
    examples = {rule.path: rule.example for rule in rules}
    problems = [
        f"{key} is required but not set (???). Fix: add {examples.get(key, f'{key}=<value>')} to the command line"
        for key in missing
    ]
    if problems:
        return problems
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        return [f"an interpolation cannot be resolved: {e}"]
    return []


def _rule_problems(cfg: DictConfig, rules: tuple[Rule, ...]) -> list[str]:
    problems = []
    for rule in rules:
        if rule.only_for is not None and _select(cfg, rule.path.rsplit(".", 1)[0] + "._target_") != rule.only_for:
            continue
        value = _select(cfg, rule.path)
        if value is _MISSING:
            if not rule.optional:
                problems.append(f"{rule.path} is missing: expected {rule.expected}. Fix: +{rule.example}")
            continue
        if not rule.ok(value):
            problems.append(f"{rule.path}={_show(value)}: expected {rule.expected}. Fix: e.g. {rule.example}")
    return problems


def _no_file(key: str, value: str, expected: str, fix: str, folder: bool = False) -> str | None:
    """A problem when ``value`` is not an existing file (or folder); relative paths start at the cwd."""
    path = Path(os.path.expanduser(value) if folder else value)
    if path.is_dir() if folder else path.is_file():
        return None
    what = "a folder, not a file" if path.is_dir() else ("a file, not a folder" if path.exists() else "")
    what = what or f"no such {'folder' if folder else 'file'}"
    where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
    return f"{key}={value!r}: {what}{where}; expected {expected}. Fix: {fix}"


def _file_problems(cfg: DictConfig) -> list[str]:
    """Files the run reads (data, contract, checkpoint), checked before anything is imported."""
    problems = []
    path = _select(cfg, "data.path")
    if _text(path):
        problems.append(_no_file("data.path", path, "a .csv/.tsv/.parquet file", "data.path=<your table file>"))
    root = _select(cfg, "data.root")
    if _text(root):
        images = "image_folder" in str(_select(cfg, "data._target_"))
        expected = ("a folder of images (one sub-folder of PNG/JPEG files per class, or train/ val/ test/ folders of "
                    "those)" if images else "a folder holding the IDX files (train-images-idx3-ubyte...)")
        fix = "data.root=<the folder with the class folders>" if images else "data.root=<the folder with the 4 IDX files>"
        problems.append(_no_file("data.root", root, expected, fix, folder=True))
    problems.append(_contract_problem(_select(cfg, "data.contract")))
    ckpt = _select(cfg, "ckpt_path")
    if _text(ckpt) and ckpt != "auto":
        problems.append(_no_file("ckpt_path", ckpt, "a .ckpt file written by keel (or auto)",
                                 "give the path of a .ckpt file, e.g. <run dir>/checkpoints/last.ckpt"))
    return [p for p in problems if p]


def _contract_problem(contract: Any) -> str | None:
    """A contract given as a YAML path or inline must exist and parse (same code the data uses)."""
    if contract is _MISSING or contract is None:
        return None  # inferred from the data at setup
    if not isinstance(contract, (str, DictConfig)):
        return (f"data.contract={_show(contract)}: expected null (inferred from the data), a mapping or the path "
                "of a contract YAML file. Fix: data/contract=<name> (conf/data/contract/) or data.contract=<file.yaml>")
    if isinstance(contract, str):
        missing = _no_file("data.contract", contract, "a contract YAML file (e.g. from `keel contract infer`)",
                           "data.contract=<file.yaml>, or pick one with data/contract=<name> from conf/data/contract/")
        if missing:
            return missing
    from keel.data.contract import contract_from_dict, load_contract_spec

    try:
        spec = contract if isinstance(contract, str) else OmegaConf.to_container(contract, resolve=True)
        contract_from_dict(load_contract_spec(spec))
    except KeelError as e:
        return f"data.contract: {e}. Fix: correct the contract (see README: Data contracts)"
    return None


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every problem in ``cfg``; return None if it can run.

    Checks: required values (``???``) are set, every interpolation resolves, each known key
    has the right type and range, cross-key constraints (fractions, nesterov, drift levels),
    and the files the run reads (``data.path``, ``data.root``, a contract YAML, ``ckpt_path``)
    exist. Imports neither torch nor Lightning.
    """
    problems = _resolution_problems(cfg, RULES)
    if problems:
        raise ConfigError(problems)
    problems = _rule_problems(cfg, RULES)
    problems += _trainer_key_problems(cfg)

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
    for kind in ("psi", "js"):
        warn, alert = _select(cfg, f"data.drift.{kind}_warn"), _select(cfg, f"data.drift.{kind}_alert")
        if _is_num(warn) and _is_num(alert) and warn > alert:
            problems.append(
                f"data.drift.{kind}_warn={warn:g} > data.drift.{kind}_alert={alert:g}: expected warn <= alert."
                f" Fix: e.g. data.drift.{kind}_warn={alert:g}"
            )
    problems += _task_problems(cfg)
    if str(_select(cfg, "model.net._target_")).endswith(".CNN") and _select(cfg, "model.net.norm") == "layer":
        problems.append("model.net.norm='layer' with model=cnn: expected batch or none. Fix: model.net.norm=batch")
    problems += _file_problems(cfg)
    if problems:
        raise ConfigError(problems)


def validate_export_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every problem in an ``export.py`` config
    (``ckpt_path`` set and a file, export and int8 options in range). Imports nothing heavy."""
    problems = _resolution_problems(cfg, EXPORT_RULES)
    if problems:
        raise ConfigError(problems)
    problems = _rule_problems(cfg, EXPORT_RULES)
    ckpt = _select(cfg, "ckpt_path")
    if _text(ckpt):
        problems.append(_no_file("ckpt_path", ckpt, "a .ckpt file written by train.py",
                                 "ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt"))
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(problems)


__all__ = ["ConfigError", "EXPORT_RULES", "Rule", "RULES", "validate_config", "validate_export_config"]
