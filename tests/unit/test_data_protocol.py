"""keel.data.protocol: what a data module must provide, every missing part named at once."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from keel.data import DigitsDataModule, InMemoryDataModule
from keel.data.protocol import DataModuleError, KeelDataModule, check_data_module, protocol_problems


class LoadersOnly(L.LightningDataModule):
    def setup(self, stage=None):
        self.ds = TensorDataset(torch.randn(10, 4), torch.randint(0, 3, (10,)))

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=4)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=4)


def _digits():
    dm = DigitsDataModule(contract={"kind": "tensor", "name": "digits", "shape": [1, 8, 8], "dtype": "float32",
                                    "range": [0.0, 16.0], "classes": list(range(10))}, drift={"enabled": False})
    dm.setup()
    return dm


def test_the_in_memory_base_provides_everything():
    dm = _digits()
    assert protocol_problems(dm) == []
    assert isinstance(dm, KeelDataModule)
    check_data_module(dm)  # no error


def test_a_plain_lightning_data_module_gets_every_missing_part_named():
    dm = LoadersOnly()
    dm.setup()
    assert not isinstance(dm, KeelDataModule)
    names = [p.split(":")[0] for p in protocol_problems(dm, task="classification")]
    # test_dataloader is Lightning's placeholder (it raises "must be implemented"): missing too
    assert names == ["test_dataloader", "split_arrays", "split_sizes", "contract", "preprocessing", "net_input_shape",
                     "class_counts"]
    with pytest.raises(DataModuleError) as e:
        check_data_module(dm, "regression")
    msg = str(e.value)
    assert msg.startswith(f"data module {__name__}.LoadersOnly (")  # its class and file
    assert "does not provide what keel needs (7 missing):" in msg
    assert "  - target_stats: target_stats(split) -> mean, std, min, max, count: the target's scaling (regression)" in msg
    assert "Fix: subclass keel.data.InMemoryDataModule and implement load()" in msg and e.value.exit_code == 2


def test_a_contract_that_is_not_keels_is_refused():
    dm = LoadersOnly()
    dm.setup()
    dm.contract = {"shape": [4]}
    (p,) = [p for p in protocol_problems(dm) if p.startswith("contract")]
    assert "a dict is not a keel data contract" in p


def test_one_load_method_is_all_a_subclass_writes():
    class Blobs(InMemoryDataModule):
        def load(self):
            rng = np.random.default_rng(0)
            return rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3

    dm = Blobs(contract={"kind": "tensor", "name": "blobs", "shape": [4], "dtype": "float32", "classes": [0, 1, 2]},
               batch_size=8)
    dm.setup()
    assert protocol_problems(dm) == [] and dm.class_counts("train") == [14, 14, 14]
    assert dm.net_input_shape == [4] and dm.preprocessing["type"] == "standardize"
