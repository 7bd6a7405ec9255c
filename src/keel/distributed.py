"""Processes of one run: which one is rank 0, one run directory for all, threads, the DDP relaunch.

Three launchers start keel's processes: Lightning's own DDP launcher (``trainer.devices=N``
re-executes ``train.py`` for ranks 1..N-1), ``torchrun`` (every process of every node runs
``train.py``) and SLURM's ``srun`` (likewise, one task per device). Everything here reads the
environment those launchers set, so it answers before Lightning or torch.distributed start:
Hydra's config composition asks it too (see keel.config.resolvers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict, read_write

from keel.errors import KeelError

# Set by Lightning's launchers and torch.distributed; restored after each run so the next
# job of a multirun starts clean (new port, new process group).
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "GLOBAL_RANK")

# How long a rank waits for rank 0 to publish a value (rank 0 composes its config within
# seconds of starting; the wait covers a slow node, not a dead one).
RANK_ZERO_TIMEOUT_S = 300.0

# Values this process received from rank 0, by name: one exchange per name and process.
_FROM_RANK_ZERO: dict[str, str] = {}


def under_torchrun() -> bool:
    """True in a worker started by ``torchrun`` (torch.distributed.run / torchelastic)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def is_rank_zero() -> bool:
    """True in the process that owns the run's record: global rank 0, or a lone process.

    torchrun gives every worker its global ``RANK`` (node ranks are assigned at rendezvous,
    so a ``NODE_RANK`` or ``SLURM_PROCID`` inherited from the shell says nothing there).
    Elsewhere every rank variable must be 0 or absent: Lightning's DDP children have
    ``LOCAL_RANK``, the processes of other nodes ``NODE_RANK``, srun tasks ``SLURM_PROCID``.
    """
    if under_torchrun():
        return os.environ.get("RANK", "0") == "0"
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def rank_zero_value(name: str, value: str) -> str:
    """``value`` as global rank 0 made it, on every process of a torchrun job; elsewhere ``value``.

    Every torchrun worker composes its own config, so a value made per process (the run
    directory's timestamp and random id) differs between ranks. Rank 0 publishes its value
    on the store torchrun's agents share with their workers (``MASTER_ADDR:MASTER_PORT``,
    reachable before the process group exists); the other ranks wait for it. The key holds
    the rendezvous id and the restart count: a job restarted by ``--max-restarts`` agrees on
    a new value, not the old one. One exchange per ``name`` and process: later calls return
    the first answer.

    Raises:
        KeelError: the store is not shared with workers (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``)
            or rank 0 did not publish within :data:`RANK_ZERO_TIMEOUT_S`.
    """
    if not under_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return value
    if name in _FROM_RANK_ZERO:
        return _FROM_RANK_ZERO[name]
    fix = f"Fix: give every node the same {name}=<path> on the command line"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise KeelError(
            f"{name}: torchrun does not share its store with the workers here (TORCHELASTIC_USE_AGENT_STORE="
            f"{os.environ.get('TORCHELASTIC_USE_AGENT_STORE')!r}), so the ranks cannot agree on one {name}. {fix}"
        )
    from torch.distributed import TCPStore

    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    key = f"keel/{os.environ['TORCHELASTIC_RUN_ID']}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"
    try:
        store = TCPStore(addr, port, is_master=False, timeout=timedelta(seconds=RANK_ZERO_TIMEOUT_S))
        if is_rank_zero():
            store.set(key, value)
            shared = value
        else:
            shared = store.get(key).decode()
    except RuntimeError as e:  # torch raises DistStoreError (a RuntimeError) on timeouts and refused connections
        raise KeelError(
            f"{name}: rank {os.environ.get('RANK')} got no {name} from rank 0 through torchrun's store at "
            f"{addr}:{port} within {RANK_ZERO_TIMEOUT_S:g} s ({type(e).__name__}: {e}). {fix}"
        ) from e
    _FROM_RANK_ZERO[name] = shared
    return shared


def is_fsdp(strategy: Any) -> bool:
    """``trainer.strategy`` names FSDP: Lightning's ``fsdp``/``fsdp_*`` or an ``FSDPStrategy`` config/object."""
    if isinstance(strategy, DictConfig):
        name = str(strategy.get("_target_", ""))
    elif isinstance(strategy, str):
        name = strategy
    else:
        name = type(strategy).__name__
    return name == "fsdp" or name.startswith("fsdp_") or name.rsplit(".", 1)[-1] == "FSDPStrategy"


def leave_run_log_to_rank_zero(output_dir: str | Path) -> None:
    """On a rank other than 0: stop writing Hydra's job log file in the shared run directory.

    Every torchrun/srun process runs Hydra, which opens ``<run dir>/<job>.log`` in each; on a
    shared filesystem the ranks' lines would interleave (or clobber each other over NFS).
    Other ranks keep logging to the console, which the launcher collects per rank.
    """
    run_dir = Path(output_dir).resolve()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            root.removeHandler(handler)
            handler.close()


def cpu_threads_per_process(local_processes: int) -> int | None:
    """Intra-op threads for each of ``local_processes`` CPU training processes on this host.

    The cores this process may run on (its CPU affinity: a SLURM or container limit, not the
    whole machine) shared by the processes of this node, at least 1. None when
    ``OMP_NUM_THREADS`` is set: that choice (yours, or torchrun's default of 1 when it starts
    several processes per node) is kept, as Lightning's own DDP launcher keeps it.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_processes))


@contextlib.contextmanager
def hydra_ddp_relaunch(output_dir: str) -> Iterator[None]:
    """While active, a DDP child started by Lightning re-runs only this job, in ``output_dir``.

    Lightning starts ranks 1..N-1 by re-executing ``sys.argv`` plus
    ``hydra.run.dir=<HydraConfig run.dir>``. In a multirun that argv holds ``-m`` and the
    whole sweep, so each child would start a new sweep in a new directory (Lightning issue
    with lightning-hydra-template #393). Here argv becomes this job's own overrides and the
    run dir becomes this job's output directory; child ranks log to the console only.

    Outside a Hydra app (tests, notebooks) this does nothing, and so it does under torchrun
    and srun, which start every rank themselves. On exit, argv, the Hydra config, the
    distributed environment variables and the process group are restored.
    """
    from hydra.core.hydra_config import HydraConfig

    saved_env = {k: os.environ.get(k) for k in _DIST_ENV}
    saved_argv = list(sys.argv)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    is_launcher = "LOCAL_RANK" not in os.environ  # Lightning's children (and torchrun workers) have it
    saved_run_dir = None
    if hydra_cfg is not None and is_launcher:
        saved_run_dir = hydra_cfg.run.dir
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra/job_logging=keel_console"]
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        if hydra_cfg is not None and saved_run_dir is not None:
            with read_write(hydra_cfg), open_dict(hydra_cfg):
                hydra_cfg.run.dir = saved_run_dir
        if is_launcher:
            _destroy_process_group()
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "RANK_ZERO_TIMEOUT_S",
    "cpu_threads_per_process",
    "hydra_ddp_relaunch",
    "is_fsdp",
    "is_rank_zero",
    "leave_run_log_to_rank_zero",
    "rank_zero_value",
    "under_torchrun",
]
