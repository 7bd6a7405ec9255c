"""Optimizer parameter groups and learning-rate schedules built from config data."""

from keel.optim.param_groups import param_groups
from keel.optim.scheduler import build_scheduler

__all__ = ["build_scheduler", "param_groups"]
