"""Contracted datasets. Exports resolve lazily: ``keel.data.contract`` needs only numpy."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DigitsDataModule": "keel.data.digits",
    "MNISTDataModule": "keel.data.mnist",
    "TableDataModule": "keel.data.table",
    "BreastCancerDataModule": "keel.data.table",
    "DiabetesDataModule": "keel.data.diabetes",
    "TableContract": "keel.data.table_contract",
    "infer_contract": "keel.data.table_contract",
    "read_table": "keel.data.table",
    "contract_from_dict": "keel.data.contract",
    "InMemoryDataModule": "keel.data.in_memory",
    "IndexBatchSampler": "keel.data.batches",
    "TensorContract": "keel.data.contract",
    "ContractViolationError": "keel.data.contract",
    "ContractError": "keel.data.contract",
    "stratified_split": "keel.data.split",
    "quantile_strata": "keel.data.split",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keel.data' has no attribute {name!r}")
