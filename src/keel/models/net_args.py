"""The net a run trains, checked before the data loads: its ``_target_`` imports, and its
constructor takes the keys its config gives; keel's own arguments (``input_shape``, the output
size ``num_classes``) go only to a constructor that takes them.

Light: imports the net's module (which may import torch), nothing of Lightning or the data.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from importlib import import_module
from typing import Any

# What keel fills in from the data (the contract's input shape, the task's output size) when
# the constructor takes it and the config leaves it out or null.
INJECTED = ("input_shape", "num_classes")
# Keys of a net config that are Hydra's, not the constructor's.
HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_", "_args_")


class NetTargetError(Exception):
    """``model.net._target_`` cannot be imported (the message names what and why); ``module``:
    the module that did import when only the attribute is missing."""

    def __init__(self, message: str, module: Any = None) -> None:
        super().__init__(message)
        self.module = module


def locate(target: str) -> Any:
    """The object ``target`` (``package.module.Name``) names: the longest importable module
    prefix, then attributes. Raises NetTargetError with the reason."""
    parts = str(target).split(".")
    if len(parts) < 2 or not all(parts):
        raise NetTargetError(f"{target!r} is not a dotted path (expected module.ClassName, e.g. mynets.MyNet)")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: Any = import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and (e.name == module_name or module_name.startswith(e.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise NetTargetError(f"importing {module_name!r} failed inside it: {e}") from e
        except Exception as e:  # the user's module raised while importing
            raise NetTargetError(f"importing {module_name!r} failed inside it: {type(e).__name__}: {e}") from e
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise NetTargetError(f"module {'.'.join(parts[:i])!r} has no attribute {attr!r}", module=obj)
            obj = getattr(obj, attr)
        return obj
    raise NetTargetError(f"no module named {parts[0]!r}")


def _search_path_hint() -> str:
    shown = [p or "." for p in sys.path[:4]]
    return ("Fix: put the folder holding the module on PYTHONPATH (`PYTHONPATH=/path/to/dir python train.py ...`) "
            "or install its package into .venv (`.venv/bin/pip install -e /path/to/pkg`); Python looks in "
            f"{', '.join(shown)}, ... (sys.path)")


def _parameters(cls: Any) -> tuple[dict[str, inspect.Parameter], bool] | None:
    """The constructor's named parameters and whether it takes ``**kwargs``; None if unknowable."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    named = {n: p for n, p in sig.parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return named, var_kw


def signature_text(cls: Any) -> str:
    try:
        return f"{getattr(cls, '__qualname__', cls)}{inspect.signature(cls)}"
    except (TypeError, ValueError):
        return str(cls)


def net_problems(net: Mapping[str, Any], prefix: str = "model.net",
                 injected: tuple[str, ...] = INJECTED) -> list[str]:
    """Every problem of the net config ``net`` (plain data), each with its fix: a ``_target_``
    that does not import or is not a class, keys the constructor does not take (keel's own
    ``injected`` keys excepted: they are dropped for a constructor without them), required
    arguments that are not given. ``prefix``/``injected``: the config node checked
    (``data``, ``()`` for a data module's config)."""
    target = net.get("_target_")
    if not isinstance(target, str) or not target:
        return [f"{prefix}._target_={target!r}: expected the import path of your class. "
                f"Fix: e.g. {prefix}._target_=mynets.MyNet"]
    try:
        cls = locate(target)
    except NetTargetError as e:
        if e.module is not None:  # the module imports; the name in it is wrong
            classes = sorted(n for n, v in vars(e.module).items()
                             if inspect.isclass(v) and getattr(v, "__module__", None) == e.module.__name__)
            return [f"{prefix}._target_={target}: cannot be imported: {e}. Fix: check the name; "
                    f"{e.module.__name__} defines {', '.join(classes) or 'no classes'} ({e.module.__file__})"]
        return [f"{prefix}._target_={target}: cannot be imported: {e}. {_search_path_hint()}"]
    if not callable(cls):
        return [f"{prefix}._target_={target}: is a {type(cls).__name__}, not a class. "
                f"Fix: name the nn.Module class, e.g. {prefix}._target_={target.rsplit('.', 1)[0]}.MyNet"]
    params = _parameters(cls)
    if params is None:
        return []
    named, var_kw = params
    sig = signature_text(cls)
    problems = []
    for key in net:
        if key in HYDRA_KEYS or key in injected or key in named or var_kw:
            continue
        hint = "; model=custom starts from a net config that holds only _target_" if prefix == "model.net" else ""
        problems.append(f"{prefix}.{key}: not an argument of {target} ({sig}). Fix: remove it (~{prefix}.{key}"
                        f"{hint})")
    for name, p in named.items():
        if p.default is inspect.Parameter.empty and name not in net and name not in injected:
            problems.append(f"{prefix}.{name}: required by {target} ({sig}) and not given. "
                            f"Fix: +{prefix}.{name}=...")
    return problems


def net_arguments(net: Mapping[str, Any], input_shape: list[int], output_size: int) -> dict[str, Any]:
    """``net`` with keel's :data:`INJECTED` arguments filled in where the constructor takes them
    and the config leaves them out or null (``input_shape``, ``num_classes`` = ``output_size``),
    and dropped where it does not take them."""
    out = dict(net)
    params = _parameters(locate(str(net["_target_"])))
    values = {"input_shape": list(input_shape), "num_classes": int(output_size)}
    for name in INJECTED:
        # unknowable signature, or **kwargs with a value the config gives: keep what the config says
        takes = params is None or name in params[0] or (params[1] and out.get(name) is not None)
        if not takes:
            out.pop(name, None)
        elif out.get(name) is None and params is not None:
            out[name] = values[name]
    return out


__all__ = ["INJECTED", "NetTargetError", "locate", "net_arguments", "net_problems", "signature_text"]
