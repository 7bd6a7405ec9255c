"""Optimizers (fused where they can be), parameter groups and learning-rate schedules built from config data."""

from keel.optim.optimizer import align_state_layout, build_optimizer
from keel.optim.param_groups import param_groups
from keel.optim.scheduler import build_scheduler

__all__ = ["align_state_layout", "build_optimizer", "build_scheduler", "param_groups"]
