"""The MNIST-format DataModule on tiny fake IDX folders: file discovery, order, errors, config."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from keel.config import ConfigError, validate_config
from keel.data.contract import ContractViolationError
from keel.data.idx import IDXFormatError, write_idx
from keel.data.mnist import MNISTDataError, MNISTDataModule
from keel.errors import KeelError

NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CONTRACT = {"name": "mnist", "shape": [1, 8, 8], "dtype": "float32", "range": [0.0, 255.0], "classes": list(range(10))}


def fake_arrays(n_train: int = 60, n_test: int = 20, size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Images whose pixel [0, 0] is the row's position (train 0.., t10k 100..); labels cycle 0-9."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, size=(n_train, size, size), dtype=np.uint8)
    test = rng.integers(0, 256, size=(n_test, size, size), dtype=np.uint8)
    train[:, 0, 0] = np.arange(n_train)
    test[:, 0, 0] = 100 + np.arange(n_test)
    return {
        "train_images": train,
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": test,
        "test_labels": ((np.arange(n_test) + 3) % 10).astype(np.uint8),
    }


def write_set(root: Path, arrays: dict[str, np.ndarray] | None = None, prefix: str = "", gz=False, skip=()) -> dict:
    """Write the 4 files (``gz``: True, False, or the set of parts to gzip) into ``root``."""
    arrays = fake_arrays() if arrays is None else arrays
    root.mkdir(parents=True, exist_ok=True)
    for part, name in NAMES.items():
        if part in skip:
            continue
        zipped = gz if isinstance(gz, bool) else part in gz
        write_idx(root / f"{prefix}{name}{'.gz' if zipped else ''}", arrays[part], gzip=zipped)
    return arrays


def module(root: Path, **kwargs) -> MNISTDataModule:
    return MNISTDataModule(str(root), contract=CONTRACT, batch_size=16, **kwargs)


def test_load_returns_train_then_t10k_as_float_images_and_int64_labels(tmp_path):
    arrays = write_set(tmp_path)
    dm = module(tmp_path)
    x, y = dm.load()
    assert x.shape == (80, 1, 8, 8) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (80,) and y.dtype == np.int64
    assert x[:, 0, 0, 0].tolist() == list(range(60)) + list(range(100, 120))  # order kept, no shuffling
    np.testing.assert_array_equal(x[:60, 0], arrays["train_images"].astype(np.float32))  # raw 0..255, not scaled
    np.testing.assert_array_equal(x[60:, 0], arrays["test_images"].astype(np.float32))
    assert y.tolist() == arrays["train_labels"].tolist() + arrays["test_labels"].tolist()
    rows = dm.test_rows()
    assert rows.dtype == np.int64 and rows.tolist() == list(range(60, 80))
    np.testing.assert_array_equal(y[rows], arrays["test_labels"])
    assert dm.source == str(tmp_path)


def test_test_rows_before_load_reads_only_the_labels(tmp_path):
    write_set(tmp_path, fake_arrays(n_train=30, n_test=7))
    assert module(tmp_path).test_rows().tolist() == list(range(30, 37))


@pytest.mark.parametrize("gz", [True, {"train_images", "test_labels"}], ids=["all-gz", "mixed"])
def test_gzipped_files_load_the_same(tmp_path, gz):
    arrays = write_set(tmp_path, gz=gz)
    x, y = module(tmp_path).load()
    assert x[:, 0, 0, 0].tolist() == list(range(60)) + list(range(100, 120))
    assert y.tolist() == arrays["train_labels"].tolist() + arrays["test_labels"].tolist()


def test_plain_file_wins_over_its_gz_twin(tmp_path):
    write_set(tmp_path)
    other = fake_arrays(seed=1)
    other["train_labels"][:] = 9
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", other["train_labels"], gzip=True)  # gunzip -k leftovers
    dm = module(tmp_path)
    assert dm.files()["train_labels"].name == "train-labels-idx1-ubyte"
    assert dm.load()[1][:10].tolist() == list(range(10))


@pytest.mark.parametrize(
    "prefix,gz", [("fashion-", False), ("emnist-digits-", True), ("kmnist_", True)], ids=["fashion", "emnist", "kmnist"]
)
def test_prefixed_names_are_found(tmp_path, prefix, gz):
    write_set(tmp_path, prefix=prefix, gz=gz)
    dm = module(tmp_path)
    assert {p.name for p in dm.files().values()} == {f"{prefix}{n}{'.gz' if gz else ''}" for n in NAMES.values()}
    assert dm.load()[0].shape == (80, 1, 8, 8)


def test_kaggle_dot_names_are_found(tmp_path):
    arrays = fake_arrays()
    for part, name in NAMES.items():
        write_idx(tmp_path / name.replace("-idx", ".idx"), arrays[part])
    assert module(tmp_path).load()[0].shape == (80, 1, 8, 8)


def test_two_complete_sets_are_refused_listing_candidates_then_prefix_picks_one(tmp_path):
    write_set(tmp_path, prefix="emnist-digits-", gz=True)
    write_set(tmp_path, fake_arrays(n_train=40, n_test=10), prefix="emnist-mnist-", gz=True)
    with pytest.raises(MNISTDataError) as info:
        module(tmp_path).load()
    msg = str(info.value)
    assert f"data.root={str(tmp_path)!r} holds 2 complete MNIST-format sets, which is ambiguous" in msg
    for prefix in ("emnist-digits-", "emnist-mnist-"):
        assert f"prefix {prefix!r}: " in msg
        for name in NAMES.values():
            assert f"{prefix}{name}.gz" in msg
    assert "Fix: data.prefix=<one of ['emnist-digits-', 'emnist-mnist-']>" in msg
    x, _ = module(tmp_path, prefix="emnist-mnist-").load()
    assert len(x) == 50


def test_several_files_for_one_part_are_refused(tmp_path):
    write_set(tmp_path)
    write_idx(tmp_path / "train-images.idx3-ubyte", fake_arrays()["train_images"])
    with pytest.raises(
        MNISTDataError,
        match=r"several files match train-images-idx3-ubyte\[\.gz\] with prefix '': "
        r"train-images-idx3-ubyte, train-images\.idx3-ubyte\. Fix: keep one of them",
    ):
        module(tmp_path).load()


def test_missing_file_names_folder_expected_names_and_fix(tmp_path):
    write_set(tmp_path, skip={"test_labels"})
    with pytest.raises(MNISTDataError) as info:
        module(tmp_path).load()
    msg = str(info.value)
    assert msg.startswith(f"data.root={str(tmp_path)!r} does not hold the 4 MNIST-format files: expected")
    for name in NAMES.values():
        assert f"{name}[.gz]" in msg
    assert "; missing t10k-labels-idx1-ubyte." in msg
    assert "Fix: data.root=DIR, the folder with the 4 files" in msg


def test_files_with_different_prefixes_are_not_one_set(tmp_path):
    write_set(tmp_path, prefix="fashion-", skip={"test_images", "test_labels"})
    write_set(tmp_path, skip={"train_images", "train_labels"})
    with pytest.raises(MNISTDataError, match=r"Found fashion-train-images-idx3-ubyte, fashion-train-labels-idx1-ubyte; "
                       r"missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte \(prefix 'fashion-'\)"):
        module(tmp_path).load()


def test_missing_or_empty_root_and_nested_hint(tmp_path):
    nowhere = tmp_path / "nowhere"
    dm = instantiate({"_target_": "keel.data.mnist.MNISTDataModule", "root": str(nowhere), "contract": CONTRACT})
    with pytest.raises(MNISTDataError, match=re.escape(f"data.root={str(nowhere)!r} does not exist") + ".* Fix: data.root=DIR"):
        dm.setup()  # instantiate succeeds: the error comes from setup, unwrapped by Hydra
    write_set(tmp_path / "MNIST" / "raw")
    with pytest.raises(MNISTDataError) as info:
        module(tmp_path).load()
    assert "The folder holds: MNIST." in str(info.value)
    assert f"Sub-folders with MNIST-format files: {tmp_path / 'MNIST' / 'raw'}." in str(info.value)
    afile = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    with pytest.raises(MNISTDataError, match="is not a directory"):
        module(afile).load()


def test_image_and_label_counts_must_match(tmp_path):
    arrays = fake_arrays()
    arrays["train_labels"] = arrays["train_labels"][:59]
    write_set(tmp_path, arrays, gz={"train_images"})
    with pytest.raises(
        MNISTDataError,
        match=r"train-images-idx3-ubyte\.gz holds 60 images but train-labels-idx1-ubyte holds 59 labels \(in .*\)\. "
        r"Fix: the two files come from different sets or one is cut short",
    ):
        module(tmp_path).load()


def test_files_of_the_wrong_kind_are_refused(tmp_path):
    arrays = fake_arrays()
    arrays["test_images"] = arrays["test_images"].astype(np.float32)
    write_set(tmp_path, arrays)
    with pytest.raises(MNISTDataError, match=r"t10k-images-idx3-ubyte: expected 3-D uint8 images \(N, H, W\), got float32 "
                       r"of shape \[20, 8, 8\]\. Fix: is this an MNIST images file"):
        module(tmp_path).load()
    arrays = fake_arrays()
    arrays["train_labels"] = arrays["train_labels"].reshape(60, 1)
    write_set(tmp_path, arrays)
    with pytest.raises(MNISTDataError, match=r"train-labels-idx1-ubyte: expected 1-D integer labels \(N,\), got uint8 of shape \[60, 1\]"):
        module(tmp_path).load()
    arrays = fake_arrays()
    arrays["test_images"] = np.zeros((20, 9, 9), np.uint8)
    write_set(tmp_path, arrays)
    with pytest.raises(MNISTDataError, match=r"train-images-idx3-ubyte holds \[8, 8\] images but t10k-images-idx3-ubyte holds \[9, 9\]"):
        module(tmp_path).load()


def test_corrupt_file_is_an_idx_error_naming_it(tmp_path):
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(IDXFormatError, match=r"t10k-labels-idx1-ubyte: not a valid IDX file: the file is empty"):
        module(tmp_path).load()


def test_setup_uses_t10k_as_test_and_carves_val_from_train(tmp_path):
    write_set(tmp_path)
    dm = module(tmp_path)
    dm.setup()
    assert dm.split_sizes() == {"train": 50, "val": 10, "test": 20} and all(r.ok for r in dm.reports.values())
    origin = {s: dm._data[s].tensors[0][:, 0, 0, 0].int().tolist() for s in ("train", "val", "test")}
    assert origin["test"] == list(range(100, 120))  # exactly the t10k rows, in order
    assert sorted(origin["train"] + origin["val"]) == list(range(60))  # val comes out of the train file
    assert sorted(dm._data["val"].tensors[1].tolist()) == list(range(10))  # stratified: one row per class
    assert dm.preprocessing["sample_ndim"] == 3
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 1, 8, 8) and str(yb.dtype) == "torch.int64"


def test_contract_violation_lists_out_of_range_labels_by_source_row(tmp_path):
    arrays = fake_arrays()
    arrays["train_labels"][5] = 11
    arrays["test_labels"][3] = 11
    write_set(tmp_path, arrays)
    with pytest.raises(ContractViolationError) as info:
        module(tmp_path).setup()
    msg = str(info.value)
    assert f"data contract 'mnist' violated in {tmp_path}" in msg
    # rows are positions in the concatenated train + t10k arrays: t10k row 3 is row 63
    assert "split 'train' (50 rows):\n    - classes on label: 1 of 50 rows fail (allowed [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);" \
        " e.g. row 5: 11\n" in msg
    assert "split 'test' (20 rows):\n    - classes on label: 1 of 20 rows fail (allowed [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);" \
        " e.g. row 63: 11\n" in msg
    dm = module(tmp_path, on_violation="drop")
    dm.setup()
    assert dm.split_sizes() == {"train": 49, "val": 10, "test": 19} and dm.dropped["total"] == 2


def test_config_composes_instantiates_and_validates(compose_cfg, tmp_path):
    root = tmp_path / "mnist"
    write_set(root, fake_arrays(size=28), gz=True)
    cfg = compose_cfg("data=mnist", f"data.root={root}", "model=cnn")
    validate_config(cfg)
    assert cfg.data.contract.shape == [1, 28, 28] and cfg.model.net.input_shape == [1, 28, 28]
    dm = instantiate(cfg.data)
    assert isinstance(dm, MNISTDataModule) and dm.batch_size == 128 and dm.val_fraction == 0.1
    assert dm.seed == cfg.seed
    dm.setup()
    assert sum(dm.split_sizes().values()) == 80 and all(r.ok for r in dm.reports.values())
    assert dm.test_rows().tolist() == list(range(60, 80))


def test_config_without_root_is_a_config_error(compose_cfg):
    cfg = compose_cfg("data=mnist")
    with pytest.raises(ConfigError, match=r"data\.root is required but not set \(\?\?\?\)\. Fix: add data\.root=~/data/mnist"):
        validate_config(cfg)
    assert issubclass(MNISTDataError, KeelError)
