"""The search space of a sweep: YAML specs and command-line sweeps -> Optuna distributions,
and each trial's values -> Hydra override strings.

YAML grammar (``hydra.sweeper.params`` in ``conf/hparams_search/*.yaml``), one entry per
override key (a config value, or a config group to choose an option of)::

    optimizer.lr:      {type: float, low: 1.0e-4, high: 1.0e-2, log: true}   # step: 0.001 also allowed
    data.batch_size:   {type: int, low: 32, high: 256, step: 32}             # log: true also allowed
    model.net.hidden:  {type: categorical, choices: [[128], [256, 128]]}     # any values, lists too
    optimizer:         {type: categorical, choices: [adam, sgd]}             # a group: picks the option
    model.net.dropout: [0.0, 0.1, 0.3]                                       # a list: categorical
    trainer.max_epochs: 20                                                   # a plain value: fixed

Nested mappings are read as dotted keys too (``optimizer: {lr: {type: float, ...}}``), which is
what a command-line override such as ``hydra.sweeper.params.optimizer.lr={type:float,...}``
produces. Command-line sweeps work as in Hydra: ``model=mlp,cnn`` or ``choice(...)``
(categorical), ``range(1,5)`` (int), ``interval(0.0,0.5)`` (float), ``tag(log,interval(1e-4,1e-1))``
(log-uniform) and ``tag(int,interval(16,256))`` (int); a command-line value replaces the YAML
entry of the same key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keel.errors import KeelError

TYPES = ("float", "int", "categorical")
_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


class SearchSpaceError(KeelError):
    """The search space cannot be used; the message lists every problem found."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"invalid search space ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across joblib processes
        return (SearchSpaceError, (self.problems,))


def override_value(value: Any) -> str:
    """``value`` as the value part of a Hydra override (escaped, lists/dicts in Hydra syntax)."""
    from hydra.core.override_parser.types import Override

    return Override._get_value_element_as_str(value)


def _choice(value: Any) -> Any:
    """A categorical choice as Optuna stores it: None/bool/int/float/str as is, anything else
    (lists, mappings) as its override string."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return override_value(value)


@dataclass(frozen=True)
class Param:
    """One searched override key and its Optuna distribution (``kind``: float, int, categorical)."""

    name: str
    kind: str
    spec: dict[str, Any]
    # categorical: override string of each choice, by the value Optuna stores
    encoded: dict[Any, str] = field(default_factory=dict, compare=False)

    def distribution(self) -> Any:
        import optuna.distributions as d

        if self.kind == "float":
            return d.FloatDistribution(self.spec["low"], self.spec["high"], log=self.spec.get("log", False),
                                       step=self.spec.get("step"))
        if self.kind == "int":
            return d.IntDistribution(self.spec["low"], self.spec["high"], log=self.spec.get("log", False),
                                     step=self.spec.get("step", 1))
        return d.CategoricalDistribution(list(self.encoded))

    def override(self, value: Any) -> str:
        """The Hydra override of this key for a value Optuna suggested."""
        if self.kind == "categorical":
            text = self.encoded[value]
        elif self.kind == "int":
            text = str(int(value))
        elif self.spec.get("step") is not None:
            text = override_value(float(f"{value:.12g}"))  # 0.30000000000000004 (low + 3 * step) -> 0.3
        else:
            text = override_value(float(value))
        return f"{self.name}={text}"

    def grid(self) -> list[Any] | None:
        """Every value of this parameter for a grid search; None when it is continuous."""
        if self.kind == "categorical":
            return list(self.encoded)
        step = self.spec.get("step", 1 if self.kind == "int" else None)
        if step is None or self.spec.get("log", False):
            return None
        low, high = self.spec["low"], self.spec["high"]
        n = int(math.floor((high - low) / step + 1e-9)) + 1
        values = [low + i * step for i in range(n)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]


@dataclass
class SearchSpace:
    """The searched parameters and the fixed overrides passed to every job unchanged."""

    params: dict[str, Param]
    fixed: list[str]

    def grid(self) -> dict[str, list[Any]]:
        """Optuna's GridSampler search space; raises when a parameter is continuous."""
        out, problems = {}, []
        for name, p in self.params.items():
            values = p.grid()
            if values is None:
                problems.append(f"{name}: sampler type=grid needs discrete values: a categorical, an int, or a "
                                f"float with a step (and no log). Fix: e.g. {{type: float, low: 0.0, high: 0.5, step: 0.1}}")
            else:
                out[name] = values
        if problems:
            raise SearchSpaceError(problems)
        return out

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """The overrides of one trial: the fixed ones, then one per searched parameter."""
        return [*self.fixed, *(self.params[name].override(values[name]) for name in self.params)]


def _key(override_key: str) -> str:
    return override_key.lstrip("+~")


def _is_spec(node: Any) -> bool:
    return isinstance(node, Mapping) and isinstance(node.get("type"), str)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys; a mapping with a string ``type`` is one parameter."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and not _is_spec(v):
            out.update(_flatten(v, f"{name}."))
        else:
            out[name] = v
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def param_from_spec(name: str, spec: Any, problems: list[str]) -> Param | str | None:
    """A YAML entry -> a Param (searched), a str (a fixed override) or None (bad: see problems)."""
    if isinstance(spec, (list, tuple)):
        spec = {"type": "categorical", "choices": list(spec)}
    if not isinstance(spec, Mapping):
        return f"{name}={override_value(spec)}"
    kind = spec.get("type")
    if kind not in TYPES:
        problems.append(f"{name}: type={kind!r}: expected one of: {', '.join(TYPES)}. "
                        f"Fix: e.g. {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}")
        return None
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        problems.append(f"{name}: unknown field(s) {unknown} for type {kind}: expected {sorted(_KEYS[kind])}")
        return None
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            problems.append(f"{name}: choices={choices!r}: expected a non-empty list. Fix: e.g. choices: [adam, sgd]")
            return None
        encoded: dict[Any, str] = {}
        for c in choices:
            key = _choice(c)
            if key in encoded:
                problems.append(f"{name}: choice {c!r} is listed twice")
                return None
            encoded[key] = override_value(c)
        return Param(name, kind, {"type": kind, "choices": list(choices)}, encoded)
    low, high = spec.get("low"), spec.get("high")
    log, step = spec.get("log", False), spec.get("step")
    bad = []
    want = "an integer" if kind == "int" else "a number"
    check = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if kind == "int" else _is_num
    for field_name, v in (("low", low), ("high", high)):
        if not check(v):
            bad.append(f"{name}: {field_name}={v!r}: expected {want}")
    if not bad and low > high:
        bad.append(f"{name}: low={low} > high={high}: expected low <= high")
    if not isinstance(log, bool):
        bad.append(f"{name}: log={log!r}: expected true or false")
    elif log and not bad and low <= 0:
        bad.append(f"{name}: log=true needs low > 0 (got low={low})")
    if step is not None and (not check(step) or step <= 0):
        bad.append(f"{name}: step={step!r}: expected {want} > 0")
    if log and step is not None and step != 1:
        bad.append(f"{name}: log=true cannot be combined with step={step}")
    if bad:
        problems.extend(bad)
        return None
    clean = {"type": kind, "low": low, "high": high, "log": log}
    if kind == "float":
        clean.update(low=float(low), high=float(high))
        if step is not None:
            clean["step"] = float(step)
    elif step is not None:
        clean["step"] = step
    return Param(name, kind, clean)


def param_from_override(override: Any, problems: list[str]) -> Param | str | None:
    """A parsed command-line override (hydra ``Override``) -> Param, fixed override or None."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer

    if not override.is_sweep_override():
        return override.input_line
    name = _key(override.get_key_element())
    value = override.value()
    if isinstance(value, ChoiceSweep):
        if value.shuffle:
            problems.append(f"{name}: shuffle() means nothing to a sampler; drop it")
            return None
        choices = list(override.sweep_iterator(transformer=Transformer.identity))
        return param_from_spec(name, {"type": "categorical", "choices": choices}, problems)
    if isinstance(value, RangeSweep):
        if value.shuffle:
            problems.append(f"{name}: shuffle() means nothing to a sampler; drop it")
            return None
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return param_from_spec(name, {"type": "int", "low": start, "high": stop - step, "step": step}, problems)
        choices = list(override.sweep_iterator(transformer=Transformer.identity))
        return param_from_spec(name, {"type": "categorical", "choices": choices}, problems)
    if isinstance(value, IntervalSweep):
        tags = set(value.tags)
        kind = "int" if "int" in tags else "float"
        low, high = (int(value.start), int(value.end)) if kind == "int" else (value.start, value.end)
        return param_from_spec(name, {"type": kind, "low": low, "high": high, "log": "log" in tags}, problems)
    problems.append(f"{name}: unsupported sweep {override.input_line!r}")
    return None


def build_search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> SearchSpace:
    """Combine the YAML ``params`` and the command-line ``arguments`` (command line wins per key).

    Raises:
        SearchSpaceError: every bad entry, each with the allowed values.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    problems: list[str] = []
    entries: dict[str, Param | str] = {}
    for name, spec in _flatten(params or {}).items():
        got = param_from_spec(name, spec, problems)
        if got is not None:
            entries[_key(name)] = got
    parser = OverridesParser.create()
    for override in parser.parse_overrides(list(arguments)):
        got = param_from_override(override, problems)
        if got is not None:
            key = _key(override.get_key_element())
            entries.pop(key, None)  # re-insert: command-line entries come after the YAML ones
            entries[key] = got
    if problems:
        raise SearchSpaceError(problems)
    return SearchSpace(
        params={k: v for k, v in entries.items() if isinstance(v, Param)},
        fixed=[v for v in entries.values() if isinstance(v, str)],
    )
