"""Export a trained TaskModule to ONNX with the dynamo exporter: preprocessing, net and the
task's head (softmax, or the target's de-standardization) inside the graph."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from keel.errors import KeelError

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")  # classification's; each task names its own (Task.outputs)
# Warnings torch.export raises while tracing a GRU/LSTM (torch 2.13), none about our model: the RNN
# module re-binds its ``_flat_weights`` list during tracing (the weights are its parameters and are
# exported; parity checks them), reads ``.grad`` of those non-leaf views, and torch's own traced code
# calls the deprecated ``torch._check_is_size``. Ignored by exact message so that nothing else is.
EXPORT_WARNINGS = (
    (UserWarning, r"The tensor attributes .*_flat_weights\[0\].* were assigned during export"),
    (UserWarning, r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed"),
    (FutureWarning, r"_check_is_size will be removed in a future PyTorch release"),
)


class ExportError(KeelError):
    """The model could not be exported, or the export does not match the PyTorch model."""


class InferenceModel(nn.Module):
    """What ships: raw contract-conforming input -> the task's outputs (classification: logits
    and softmax probabilities; regression: the prediction in the target's units)."""

    def __init__(self, preprocess: nn.Module, net: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.preprocess, self.net, self.head = preprocess, net, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.head(self.net(self.preprocess(x))))


def inference_model(module: Any) -> InferenceModel:
    """The eval-mode, float32, CPU inference model of a :class:`keel.models.TaskModule`."""
    model = InferenceModel(module.preprocess, module.net, module.head).float().cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_onnx(model: InferenceModel, example: torch.Tensor, path: Path, opset: int = 18,
                output_names: tuple[str, ...] = OUTPUT_NAMES) -> dict[str, Any]:
    """Write ``model`` to ``path`` (weights embedded, dynamic batch axis, outputs named
    ``output_names``) and run ``onnx.checker`` with ``full_check``; return the graph's
    input/output description.

    Raises:
        ExportError: the exporter or the checker failed (message says which and why).
    """
    import onnx

    # The exporter logs one line per torchvision op it cannot register; torchvision is not used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # Only the batch axis is dynamic: a sequence contract fixes its length (a recurrent graph itself
    # would take any length, but serving checks inputs against the contract's shape).
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            for category, message in EXPORT_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            _export(model, example, path, batch, opset, output_names)
    except OSError:
        raise  # a full disk or an unwritable directory: reported by the bundle writer, not as an export bug
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; report one clear error
        raise ExportError(f"torch.onnx.export (dynamo) failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"onnx.checker rejected {path.name}: {e}") from e
    return describe_graph(path, opset, output_names)


def _export(model: nn.Module, example: torch.Tensor, path: Path, batch: Any, opset: int,
            output_names: tuple[str, ...]) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(output_names),
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        external_data=False,  # one self-contained file (models here are far below 2 GB)
        verbose=False,
    )


def describe_graph(path: Path, opset: int, output_names: tuple[str, ...]) -> dict[str, Any]:
    """The exported graph's inputs/outputs (name, dtype, shape with ``batch`` for the dynamic axis)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output), "opset": opset,
            "dynamic_axes": {INPUT_NAME: {"0": "batch"}, **{o: {"0": "batch"} for o in output_names}}}
