"""Checkpoints load as plain data only; foreign, corrupted and unsafe files are refused clearly."""

from __future__ import annotations

import collections

import pytest
import torch

from keel.checkpoints.read import CheckpointError, check_resumable, keel_section, load_checkpoint, read_checkpoint


class Payload:  # a class torch.load(weights_only=True) must refuse to rebuild
    pass


def _keel_ckpt(path, net=None, contract=None):
    torch.save({"hyper_parameters": {"net": net or {"_target_": "keel.models.nets.MLP", "hidden": [8]}},
                "state_dict": {"w": torch.zeros(2)},
                "keel": {"contract": contract or {"kind": "tensor", "name": "digits"}}}, path)
    return path


def test_plain_checkpoint_loads(tmp_path):
    ckpt = load_checkpoint(_keel_ckpt(tmp_path / "a.ckpt"))
    assert keel_section(ckpt, "a.ckpt")["contract"]["name"] == "digits"


def test_checkpoint_with_pickled_objects_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil.ckpt: refused: the file holds pickled Python objects .*Payload.*"
                                              r"weights_only=True so that opening a file never runs code"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_checkpoint_is_named(tmp_path, damage):
    path = _keel_ckpt(tmp_path / "c.ckpt")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 50, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"c.ckpt: not a readable checkpoint \(truncated or corrupted\?\)"):
        load_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="nope.ckpt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save(collections.OrderedDict(weight=torch.zeros(3)), foreign)
    with pytest.raises(CheckpointError, match="foreign.ckpt: not a keel checkpoint"):
        keel_section(load_checkpoint(foreign), foreign)


def test_resume_refuses_another_net_or_contract(tmp_path):
    path = _keel_ckpt(tmp_path / "r.ckpt")
    check_resumable(read_checkpoint(path), {"_target_": "keel.models.nets.MLP", "hidden": [8]}, {"kind": "tensor", "name": "digits"})
    with pytest.raises(CheckpointError, match=r"another net: hidden: \[8\] -> \[16\]"):
        check_resumable(read_checkpoint(path), {"_target_": "keel.models.nets.MLP", "hidden": [16]}, {"kind": "tensor", "name": "digits"})
    with pytest.raises(CheckpointError, match=r"contract 'digits', which differs from this run's 'mnist'"):
        check_resumable(read_checkpoint(path), {"_target_": "keel.models.nets.MLP", "hidden": [8]}, {"kind": "tensor", "name": "mnist"})
