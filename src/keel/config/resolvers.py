"""OmegaConf resolvers used by conf/: registered by train.py before Hydra composes.

They stay light (omegaconf only): composing a config must not import torch, pandas or data.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from omegaconf import DictConfig, OmegaConf

from keel.distributed import is_rank_zero, rank_zero_value

# One id per process: every directory this process names with it is its own, and two
# processes started in the same second never share a run directory.
_PROCESS_UID = f"{secrets.token_hex(3)}"


def _uid() -> str:
    return _PROCESS_UID


def _rank_zero_only(value: Any, other: Any = None) -> Any:
    """``value`` in global rank 0 (or a lone process), ``other`` in the other ranks of a
    distributed job: e.g. only rank 0 writes Hydra's ``.hydra/`` record into the shared run directory."""
    return value if is_rank_zero() else other


def table_input_width(columns: Any) -> int:
    """Width of a table row after the model's preprocessing (``TabularPreprocess``): numeric
    columns 1 (+1 missing indicator when nullable), category columns ``categories + 1``."""
    width = 0
    for spec in columns.values():
        if spec.get("dtype") == "category":
            width += len(spec.get("categories") or ()) + 1
        else:
            width += 2 if spec.get("nullable", False) else 1
    return width


def _net_input(contract: DictConfig | None) -> list[int] | None:
    """The net's input shape from a data contract; None when the contract is inferred at setup."""
    if contract is None or isinstance(contract, str):  # inferred, or a YAML file read at setup
        return None
    if contract.get("kind", "tensor") == "table":
        return [table_input_width(contract.columns)]
    return list(contract.shape)


def _num_classes(contract: DictConfig | None) -> int | None:
    return None if contract is None or isinstance(contract, str) else len(contract.get("classes") or ())


def _num_outputs(contract: DictConfig | None) -> int | None:
    """The net's output width: the number of classes, or 1 for a regression contract; None when
    the contract is inferred at setup (then the data fills it in)."""
    if contract is None or isinstance(contract, str):
        return None
    return 1 if contract.get("task", "classification") == "regression" else len(contract.get("classes") or ())


def _sweep_job() -> tuple[Any, Any] | None:
    """``(hydra config, job number)`` in a job of a Hydra multirun; None elsewhere (a single run,
    the compose API, a DDP rank relaunched as a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or hc.job.get("num") is None:
        return None
    return hc, hc.job.num


def _mlflow(field: str, *args: Any) -> Any:
    """What an MLflow run is filed under (conf/logger/mlflow.yaml), from the Hydra job:

    - ``experiment,TASK_NAME,LOG_DIR``: ``TASK_NAME`` for a single run; in a multirun job the
      sweep's own experiment, named as its directory under LOG_DIR (``train/multiruns/<stamp>``),
      or ``TASK_NAME/<sweep dir name>`` for a sweep directory elsewhere.
    - ``artifact_location,TRACKING_URI,PATH``: PATH for a local store (``sqlite:``, ``file:``,
      a plain path), None for a tracking server (its own artifact store serves the UI).
    - ``run_name``: the run directory's name; ``trial N`` in a multirun job; None (MLflow names
      it) outside a Hydra app.
    - ``tags,TASK_NAME,TAGS,RUN_DIR``: ``keel.task_name``, ``keel.run_dir`` (the absolute run
      directory: a resumed run finds its MLflow run by it), ``keel.tags`` (the config's ``tags``
      list, comma-separated, when not empty) and in a multirun job ``keel.sweep`` (the sweep
      directory's name), ``keel.sweep_dir`` and ``keel.trial`` (the job number).
    """
    job = _sweep_job()
    if field == "experiment":
        task_name, log_dir = args
        if job is None:
            return str(task_name)
        sweep_dir = os.path.abspath(str(job[0].sweep.dir))
        rel = os.path.relpath(sweep_dir, os.path.abspath(str(log_dir)))
        return rel.replace(os.sep, "/") if not rel.startswith("..") else f"{task_name}/{os.path.basename(sweep_dir)}"
    if field == "artifact_location":
        uri, path = args
        local = uri is None or str(uri).startswith(("sqlite:", "file:")) or "://" not in str(uri)
        return str(path) if local else None
    if field == "run_name":
        if job is not None:
            return f"trial {job[1]}"
        from hydra.core.hydra_config import HydraConfig

        return os.path.basename(str(HydraConfig.get().runtime.output_dir)) if HydraConfig.initialized() else None
    if field == "tags":
        task_name, tags, run_dir = args
        out = {"keel.task_name": str(task_name), "keel.run_dir": os.path.abspath(str(run_dir))}
        if tags:
            out["keel.tags"] = ", ".join(str(t) for t in tags)
        if job is not None:
            sweep_dir = os.path.abspath(str(job[0].sweep.dir))
            out.update({"keel.sweep": os.path.basename(sweep_dir), "keel.sweep_dir": sweep_dir, "keel.trial": str(job[1])})
        return out
    raise ValueError(f"${{keel.mlflow:{field}}}: unknown field {field!r}; allowed: experiment, artifact_location, run_name, tags")


def register_resolvers() -> None:
    """Register ``${len:..}``, ``${keel.uid:}``, ``${keel.net_input:..}``, ``${keel.num_classes:..}``, ``${keel.num_outputs:..}``,
    ``${keel.rank_zero_value:NAME,VALUE}`` (rank 0's VALUE on every torchrun rank, see
    keel.distributed.rank_zero_value), ``${keel.rank_zero_only:VALUE[,OTHER]}`` and
    ``${keel.mlflow:FIELD,...}`` (an MLflow run's experiment, artifact location, name and tags: :func:`_mlflow`);
    safe to call more than once."""
    resolvers = {
        "len": lambda seq: len(seq),
        "keel.uid": _uid,
        "keel.rank_zero_value": rank_zero_value,
        "keel.rank_zero_only": _rank_zero_only,
        "keel.net_input": _net_input,
        "keel.num_classes": _num_classes,
        "keel.num_outputs": _num_outputs,
        "keel.mlflow": _mlflow,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            # cached: a config resolves ${keel.uid:} once, so joblib workers that receive the
            # parent's config name the same sweep directory instead of one each
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "keel.uid")


__all__ = ["register_resolvers", "table_input_width"]
