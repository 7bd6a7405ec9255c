"""The digits DataModule: real embedded data, seeded splits, contract checked on every split."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from keel.data import ContractViolationError


def test_digits_splits_are_seeded_stratified_and_contracted(compose_cfg):
    cfg = compose_cfg()
    dm = instantiate(cfg.data)
    dm.setup()
    sizes = dm.split_sizes()
    assert sum(sizes.values()) == 1797
    assert sizes["val"] == pytest.approx(0.15 * 1797, abs=10) and sizes["test"] == pytest.approx(0.15 * 1797, abs=10)
    assert all(r.ok for r in dm.reports.values()) and set(dm.reports) == {"train", "val", "test"}
    again = instantiate(cfg.data)
    again.setup()
    for split in ("train", "val", "test"):
        a, b = dm._data[split].tensors[1], again._data[split].tensors[1]
        assert a.tolist() == b.tolist()
    assert min(dm.class_counts("test")) >= 20  # every class present in every split


def test_contract_violation_lists_every_split_and_source_rows(compose_cfg):
    cfg = compose_cfg("data.contract.range=[0,14]", "data.contract.classes=[0,1,2,3,4,5,6,7,8]")
    dm = instantiate(cfg.data)
    with pytest.raises(ContractViolationError) as info:
        dm.setup()
    msg = str(info.value)
    assert "data contract 'digits' violated in sklearn.datasets.load_digits" in msg
    for split in ("train", "val", "test"):
        assert f"split {split!r}" in msg
    assert msg.count("range on x") == 3 and msg.count("classes on label") == 3
    report = info.value.reports[0]
    labels = np.asarray(__import__("sklearn.datasets", fromlist=["load_digits"]).load_digits().target)
    classes = next(v for v in report.violations if v.rule == "classes")
    for row, value in classes.examples:  # examples point at source rows of the dataset
        assert labels[row] == value == 9


def test_loaders_serve_whole_batches_by_index(compose_cfg):
    cfg = compose_cfg("data.batch_size=100")
    dm = instantiate(cfg.data)
    dm.setup()
    batches = list(dm.val_dataloader())
    assert [len(b[0]) for b in batches] == [100, 100, dm.split_sizes()["val"] - 200]
    seen = np.concatenate([b[1].numpy() for b in batches])
    assert sorted(seen.tolist()) == sorted(dm._data["val"].tensors[1].tolist())


def test_on_device_keeps_splits_on_the_run_device_and_refuses_workers(compose_cfg):
    from types import SimpleNamespace

    import torch

    from keel.errors import KeelError

    with pytest.raises(Exception) as info:  # Hydra's instantiate wraps it; entry points print the KeelError
        instantiate(compose_cfg("data.on_device=true", "data.num_workers=2").data)
    assert isinstance(info.value.__cause__, KeelError)
    assert "data.on_device=true with data.num_workers=2" in str(info.value.__cause__)
    dm = instantiate(compose_cfg("data.on_device=true").data)
    dm.setup()
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")), global_rank=0,
                                 world_size=1)
    x, y = dm.train_dataloader().dataset.tensors
    assert x.device.type == "meta" and y.device.type == "meta" and dm._data["train"].tensors[0].device.type == "cpu"
    dm.trainer.strategy.root_device = torch.device("cpu")
    dm._device_data.clear()
    assert dm.val_dataloader().dataset is dm._data["val"]  # on CPU the data stays where it is
    # a device-resident split's batches are gathered there
    dm.trainer.strategy.root_device = torch.device("meta")
    dm._device_data.clear()
    x, y = next(iter(dm.train_dataloader()))
    assert x.device.type == y.device.type == "meta" and x.shape == (64, 1, 8, 8) and y.shape == (64,)


def test_batches_are_moved_to_the_training_device(compose_cfg):
    """A loader's batch reaches the device training runs on (Lightning's batch transfer), with
    its tensors' values and shapes; on the CPU it stays as it is."""
    import torch

    dm = instantiate(compose_cfg().data)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    same = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert len(same) == 2 and all(torch.equal(a, b) for a, b in zip(same, batch, strict=True))
    moved = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert [t.device.type for t in moved] == ["meta", "meta"]
    assert [t.shape for t in moved] == [t.shape for t in batch] and [t.dtype for t in moved] == [t.dtype for t in batch]
