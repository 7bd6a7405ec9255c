"""Optuna pieces shared by the sweeper, the pruning callback and the report: storage URLs,
samplers and pruners from plain config dicts, and the direction a metric is optimized in."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keel.errors import KeelError
from keel.tasks import metric_mode

SQLITE = "sqlite:///"
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "percentile", "threshold", "successive_halving", "hyperband", "none")
# Wait this long (s) for another process's write lock on a SQLite study (parallel jobs report at once).
SQLITE_TIMEOUT_S = 60


class SweepConfigError(KeelError):
    """A sweeper option (sampler, pruner, direction, storage) cannot be used."""


def metric_direction(metric: str) -> str:
    """``maximize`` or ``minimize``: the way ``metric`` improves, from the task that logs it
    (:func:`keel.tasks.metric_mode`): ``val/acc_best``, ``val/r2_best`` maximize; losses,
    ``val/rmse_best``, ``test/mae`` minimize; a name no task logs minimizes when it says
    ``loss`` and maximizes otherwise."""
    return "maximize" if metric_mode(metric) == "max" else "minimize"


def resolve_direction(direction: str, metric: str) -> str:
    """``auto`` -> :func:`metric_direction`; otherwise checked against :data:`DIRECTIONS`."""
    if direction == "auto":
        return metric_direction(metric)
    if direction not in DIRECTIONS:
        raise SweepConfigError(f"hydra.sweeper.direction={direction!r}: expected auto, maximize or minimize. "
                               "Fix: e.g. hydra.sweeper.direction=auto")
    return direction


def absolute_storage(url: str, base: Path | None = None) -> str:
    """A SQLite URL with an absolute path (relative ones are taken from ``base``, default the
    working directory), its folder created; other URLs unchanged. Jobs in other processes or
    directories then open the same file."""
    if not url.startswith(SQLITE):
        return url
    path = Path(url[len(SQLITE):])
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE}{path}"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite storage URL (None for other URLs)."""
    return Path(url[len(SQLITE):]) if url.startswith(SQLITE) else None


def open_storage(url: str) -> Any:
    """An Optuna RDB storage; SQLite waits for locks instead of failing under parallel writers."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def _options(spec: Mapping[str, Any], kind: str, allowed: tuple[str, ...], example: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, Mapping) or spec.get("type") not in allowed:
        got = spec.get("type") if isinstance(spec, Mapping) else spec
        raise SweepConfigError(f"hydra.sweeper.{kind}.type={got!r}: expected one of: {', '.join(allowed)}. "
                               f"Fix: e.g. hydra.sweeper.{kind}.type={example}")
    return spec["type"], {k: v for k, v in spec.items() if k != "type"}


def build_sampler(spec: Mapping[str, Any], grid: Any = None, seed_offset: int = 0) -> Any:
    """A sampler from ``{type: tpe|random|grid, seed: N, ...}`` (other keys go to its constructor).

    ``grid`` is a zero-argument callable returning the GridSampler search space. ``seed_offset``
    (the number of trials already in a resumed study) is added to the seed, so that a resumed
    sweep does not replay the random draws of the first run.
    """
    import optuna

    kind, kwargs = _options(spec, "sampler", SAMPLERS, "tpe")
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + seed_offset
    try:
        if kind == "tpe":
            return optuna.samplers.TPESampler(**kwargs)
        if kind == "random":
            return optuna.samplers.RandomSampler(**kwargs)
        return optuna.samplers.GridSampler(grid(), **kwargs)
    except TypeError as e:
        raise SweepConfigError(f"hydra.sweeper.sampler: {e}") from None


def build_pruner(spec: Mapping[str, Any] | None) -> Any:
    """A pruner from ``{type: median|percentile|threshold|successive_halving|hyperband|none, ...}``."""
    import optuna

    kind, kwargs = _options(spec or {"type": "none"}, "pruner", PRUNERS, "median")
    classes = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "threshold": optuna.pruners.ThresholdPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    try:
        return classes[kind](**kwargs)
    except (TypeError, ValueError) as e:
        raise SweepConfigError(f"hydra.sweeper.pruner ({kind}): {e}") from None
