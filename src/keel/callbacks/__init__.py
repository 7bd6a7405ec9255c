"""Callbacks at run boundaries: ONNX export and int8 quantization of the best checkpoint;
explanations (attribution maps, feature importance) at test time;
observability: the progress bar, one line per epoch, throughput, TensorBoard views, the profiler
summary; safety on every run:
NaN/Inf guard, RNG state and the run's config in checkpoints."""

from keel.callbacks.epoch_summary import EpochSummary
from keel.callbacks.explain import Explanations
from keel.callbacks.nan_guard import NanGuard
from keel.callbacks.onnx_export import OnnxExport
from keel.callbacks.optuna_pruning import OptunaPruning
from keel.callbacks.profile_summary import ProfileSummary
from keel.callbacks.progress_bar import ProgressBar
from keel.callbacks.quantize import Quantize
from keel.callbacks.rng_state import RngState
from keel.callbacks.run_config import RunConfigInCheckpoint
from keel.callbacks.tensorboard_views import TensorBoardViews
from keel.callbacks.throughput import Throughput

__all__ = ["EpochSummary", "Explanations", "NanGuard", "OnnxExport", "OptunaPruning", "ProfileSummary", "ProgressBar", "Quantize", "RngState", "RunConfigInCheckpoint", "TensorBoardViews", "Throughput"]
