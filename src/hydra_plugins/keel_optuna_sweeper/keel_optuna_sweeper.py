"""The Hydra plugin class; it stays import-light (Hydra imports every plugin module at start-up)
and hands the work to :class:`keel.sweep.optuna_sweeper.OptunaSweeperImpl`."""

import sys
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class KeelOptunaSweeper(Sweeper):
    """Optuna (current releases) ask-and-tell sweeper; options: ``KeelOptunaSweeperConf``."""

    def __init__(self, **options: Any) -> None:
        from keel.sweep.optuna_sweeper import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(**options)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from keel.errors import KeelError

        try:
            return self.sweeper.sweep(arguments)
        except KeelError as e:  # a user mistake or a stopped sweep: one message, no traceback
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
