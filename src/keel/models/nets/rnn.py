"""Recurrent net (GRU or LSTM) over a fixed-length sequence ``[time, features]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
READOUTS = ("last", "mean")


class RNN(nn.Module):
    """A stack of ``num_layers`` GRU or LSTM layers (batch first), a readout over time, dropout
    and a linear head.

    A sample is a sequence ``[T, F]`` (time steps, features per step). An image sample
    ``[C, H, W]`` is read as ``H`` rows of ``C * W`` features, so ``model=rnn`` also runs on the
    image datasets (digits: 8 rows of 8 pixels); ``data=digits_seq`` gives the same digits as a
    declared ``[8, 8]`` sequence.

    Readout: ``last`` is the final hidden state of the top layer (for a bidirectional net, the
    forward direction after step ``T-1`` concatenated with the backward direction after step 0,
    i.e. each direction's summary of the whole sequence, not ``output[:, -1]`` whose backward
    half has seen one step); ``mean`` averages the top layer's outputs over time (more robust
    when the evidence is spread over the sequence, e.g. a digit's strokes).

    Args:
        input_shape: ``[T, F]`` of one sample (or ``[C, H, W]``, read as ``H`` rows).
        num_classes: number of outputs (the classes' logits, or 1 for regression).
        cell: ``gru`` (fewer parameters, int8 leaves it float32 in ONNX Runtime) or ``lstm``
            (ONNX Runtime has an int8 LSTM kernel).
        hidden_size: features of the hidden state per direction.
        num_layers: stacked recurrent layers.
        bidirectional: also read the sequence backwards (doubles the readout width).
        dropout: dropout probability between recurrent layers (only with ``num_layers > 1``:
            torch applies none after the last one) and before the head.
        readout: ``last`` or ``mean`` (see above).

    Shapes: ``(N, T, F) -> (N, num_classes)`` logits (``(N, C, H, W)`` for image samples).
    The time length is not baked into the weights; the exported graph has a fixed ``T`` only
    because the data contract fixes it.

    Raises:
        ValueError: an input shape of another rank, an unknown ``cell`` or ``readout``,
            ``hidden_size``/``num_layers``/``num_classes`` below 1 or ``dropout`` outside [0, 1).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        cell: str = "gru",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        readout: str = "last",
    ) -> None:
        super().__init__()
        shape = [int(d) for d in input_shape]
        if len(shape) not in (2, 3):
            raise ValueError(
                f"input_shape={shape}: the RNN expects a sequence [time, features] (or an image [channels, height, "
                "width], read as rows); use model=mlp for flat (tabular) features, or data=csv_windows to cut a "
                "time series into windows"
            )
        if cell not in CELLS:
            raise ValueError(f"cell={cell!r}: expected one of {sorted(CELLS)}")
        if readout not in READOUTS:
            raise ValueError(f"readout={readout!r}: expected one of {list(READOUTS)}")
        if int(hidden_size) < 1 or int(num_layers) < 1 or int(num_classes) < 1:
            raise ValueError(f"hidden_size={hidden_size}, num_layers={num_layers}, num_classes={num_classes}: "
                             "expected each >= 1")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout={dropout}: expected a probability in [0, 1)")
        self.image_rows = len(shape) == 3
        features = shape[0] * shape[2] if self.image_rows else shape[1]
        self.cell, self.readout = cell, readout
        self.num_layers, self.directions = int(num_layers), 2 if bidirectional else 1
        # inter-layer dropout only where torch applies it (it warns for a single layer)
        self.rnn = CELLS[cell](features, int(hidden_size), num_layers=int(num_layers), batch_first=True,
                               bidirectional=bool(bidirectional), dropout=float(dropout) if num_layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(float(dropout)), nn.Linear(int(hidden_size) * self.directions,
                                                                        int(num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_rows:  # (N, C, H, W) -> (N, H, C * W): one time step per row
            x = x.permute(0, 2, 1, 3).flatten(2)
        out, state = self.rnn(x)
        if self.readout == "mean":
            summary = out.mean(dim=1)
        else:
            h_n = state[0] if self.cell == "lstm" else state  # (layers * directions, N, hidden)
            top = h_n[-self.directions:]  # the top layer's directions
            summary = top.permute(1, 0, 2).flatten(1)
        return self.head(summary)


__all__ = ["CELLS", "READOUTS", "RNN"]
