"""Callbacks at run boundaries: ONNX export and int8 quantization of the best checkpoint;
observability: throughput, TensorBoard views, the profiler summary (the progress bar is
Lightning's TQDMProgressBar, conf/callbacks/progress_bar.yaml); safety on every run:
NaN/Inf guard, RNG state and the run's config in checkpoints."""

from keel.callbacks.nan_guard import NanGuard
from keel.callbacks.onnx_export import OnnxExport
from keel.callbacks.optuna_pruning import OptunaPruning
from keel.callbacks.profile_summary import ProfileSummary
from keel.callbacks.quantize import Quantize
from keel.callbacks.rng_state import RngState
from keel.callbacks.run_config import RunConfigInCheckpoint
from keel.callbacks.tensorboard_views import TensorBoardViews
from keel.callbacks.throughput import Throughput

__all__ = ["NanGuard", "OnnxExport", "OptunaPruning", "ProfileSummary", "Quantize", "RngState", "RunConfigInCheckpoint", "TensorBoardViews", "Throughput"]
