"""Build the model's input preprocessing from the plain data a DataModule fitted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from keel.models.nets.standardize import Standardize
from keel.models.nets.tabular import TabularPreprocess


def build_preprocess(spec: Mapping[str, Any]) -> nn.Module:
    """``spec["type"]``: ``standardize`` (tensors/images) or ``tabular`` (tables).

    Raises:
        ValueError: an unknown type.
    """
    kind = spec.get("type", "standardize")
    if kind == "standardize":
        return Standardize(spec["mean"], spec["std"], int(spec["sample_ndim"]))
    if kind == "tabular":
        return TabularPreprocess(
            spec["numeric"], spec["mean"], spec["std"], spec["fill"], spec["nullable"],
            spec["categorical"], spec["cardinalities"],
        )
    raise ValueError(f"preprocessing type {kind!r}: expected 'standardize' or 'tabular'")
