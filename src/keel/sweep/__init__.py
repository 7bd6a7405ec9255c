"""Hyperparameter sweeps: the Optuna sweeper behind ``hydra/sweeper=keel_optuna``, its search
space grammar, and ``keel sweep report`` (one table of every job of a sweep directory)."""

from keel.sweep.search_space import SearchSpace, SearchSpaceError, build_search_space
from keel.sweep.study import SweepConfigError, metric_direction

__all__ = ["SearchSpace", "SearchSpaceError", "SweepConfigError", "build_search_space", "metric_direction"]
