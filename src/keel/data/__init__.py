"""Contracted datasets. Exports resolve lazily: ``keel.data.contract`` needs only numpy."""

from keel._lazy import lazy_getattr

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
    "WindowsDataModule": "keel.data.windows",
    "WindowError": "keel.data.windows",
    "StreamingTableDataModule": "keel.data.streaming",
    "StreamingError": "keel.data.streaming",
    "ImageFolderDataModule": "keel.data.image_folder",
    "ImageFolderError": "keel.data.image_folder",
    "Augment": "keel.data.image_folder",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
