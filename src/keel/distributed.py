"""Make Lightning's DDP subprocess launcher re-run *this* Hydra job in *this* run directory."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from omegaconf import open_dict, read_write

# Set by Lightning's launchers and torch.distributed; restored after each run so the next
# job of a multirun starts clean (new port, new process group).
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "GLOBAL_RANK")


@contextlib.contextmanager
def hydra_ddp_relaunch(output_dir: str) -> Iterator[None]:
    """While active, a DDP child started by Lightning re-runs only this job, in ``output_dir``.

    Lightning starts ranks 1..N-1 by re-executing ``sys.argv`` plus
    ``hydra.run.dir=<HydraConfig run.dir>``. In a multirun that argv holds ``-m`` and the
    whole sweep, so each child would start a new sweep in a new directory (Lightning issue
    with lightning-hydra-template #393). Here argv becomes this job's own overrides and the
    run dir becomes this job's output directory; child ranks log to the console only.

    Outside a Hydra app (tests, notebooks) this does nothing. On exit, argv, the Hydra
    config, the distributed environment variables and the process group are restored.
    """
    from hydra.core.hydra_config import HydraConfig

    saved_env = {k: os.environ.get(k) for k in _DIST_ENV}
    saved_argv = list(sys.argv)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    is_launcher = "LOCAL_RANK" not in os.environ  # children (and torchrun workers) have it
    saved_run_dir = None
    if hydra_cfg is not None and is_launcher:
        saved_run_dir = hydra_cfg.run.dir
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra/job_logging=stdout"]
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
