"""Experiment loggers: Lightning's TensorBoard logger with keel's tag layout and run names."""

from keel.loggers.tensorboard import TensorBoardLogger, run_name

__all__ = ["TensorBoardLogger", "run_name"]
