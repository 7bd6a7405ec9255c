"""data=image_folder: layouts, every bad file reported by path, drop, statistics, deterministic
augmentation across worker counts and mid-epoch resume, and the serving decoder it shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from keel.data.contract import ContractViolationError
from keel.data.image_folder import Augment, ImageFolderDataModule, ImageFolderError
from keel.errors import KeelError
from keel.serve.images import ImageError, load_image

SHAPE = (3, 16, 16)
AUG = {"crop_scale": [0.6, 1.0], "hflip": 0.5, "rotate": 10.0, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2}


def _png(path: Path, rng: np.random.Generator, colour: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(rng.normal(colour, 25, (*size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _folder(root: Path, per_class: int = 12, classes=("cat", "dog", "owl"), bad: bool = True) -> Path:
    """Class folders of RGB PNGs, a JPEG and a grayscale PNG; with ``bad``: a truncated PNG, an
    empty file, a GIF named .png and a text file among them."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", rng, 50 + 70 * k)
    Image.fromarray(np.full((20, 14, 3), 60, np.uint8)).save(root / classes[0] / "photo.jpg", quality=90)
    Image.fromarray(np.full((9, 9), 120, np.uint8), mode="L").save(root / classes[1] / "gray.png")
    if bad:
        whole = (root / classes[2] / "0.png").read_bytes()
        (root / classes[2] / "broken.png").write_bytes(whole[: len(whole) // 2])
        (root / classes[0] / "empty.png").write_bytes(b"")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / classes[1] / "anim.png", format="GIF")
        (root / classes[2] / "notes.txt").write_text("not an image")
    return root


def _dm(root: Path, **kw) -> ImageFolderDataModule:
    kw = {"channels": SHAPE[0], "height": SHAPE[1], "width": SHAPE[2], "batch_size": 8, **kw}
    return ImageFolderDataModule(root=str(root), **kw)


def test_every_bad_file_is_reported_with_its_path(tmp_path):
    dm = _dm(_folder(tmp_path / "img"))
    with pytest.raises(ContractViolationError) as err:
        dm.setup()
    text = str(err.value)
    for name, rule in (("owl/broken.png", "decode"), ("cat/empty.png", "empty"), ("dog/anim.png", "format"),
                       ("owl/notes.txt", "format")):
        assert f"{rule} on {name}" in text, text
    assert "gray.png" not in text and "photo.jpg" not in text  # L is accepted and converted; JPEG is read
    assert "Fix: replace or remove these files, or leave them out with data.on_violation=drop" in text


def test_drop_leaves_the_bad_files_out_and_counts_them(tmp_path):
    dm = _dm(_folder(tmp_path / "img"), on_violation="drop")
    dm.setup()
    assert dm.dropped["total"] == 4
    dropped = {Path(f).name for s in dm.dropped["splits"].values() for f in s["files"]}
    assert dropped == {"broken.png", "empty.png", "anim.png", "notes.txt"}
    kept = {p.name for p in dm.files()}
    assert not kept & dropped and {"gray.png", "photo.jpg"} <= kept
    assert sum(dm.split_sizes().values()) == 3 * 12 + 2
    assert dm.class_names == ["cat", "dog", "owl"] and dm.contract.classes == (0, 1, 2)
    assert dm.data_report()["dropped"]["total"] == 4


def test_a_mode_not_accepted_is_a_violation_with_the_fix(tmp_path):
    dm = _dm(_folder(tmp_path / "img", bad=False), modes=["RGB"])
    with pytest.raises(ContractViolationError, match=r"mode on dog/gray.png: .*Pillow mode L; accepted: RGB"):
        dm.setup()
    with pytest.raises(ImageError, match=r"gray.png: mode: .*Fix: convert the file, or accept the mode with "
                                         r"data.modes=\[RGB,L\]"):
        load_image(tmp_path / "img" / "dog" / "gray.png", SHAPE, ["RGB"])


def test_a_class_folder_without_images_is_named(tmp_path):
    root = _folder(tmp_path / "img", bad=False)
    (root / "empty_class").mkdir()
    (root / "readme").mkdir()
    (root / "readme" / "notes.txt").write_text("x")
    with pytest.raises(ImageFolderError, match=r"2 class folder\(s\) under .* hold no PNG/JPEG images: .*empty_class "
                                               r"\(empty\); .*readme \(holds notes.txt\).*Fix: add images"):
        _dm(root).setup()


def test_missing_root_and_loose_images(tmp_path):
    with pytest.raises(ImageFolderError, match=r"data.root='.*nowhere' does not exist .*Fix: data.root=DIR"):
        _dm(tmp_path / "nowhere").setup()
    _png(tmp_path / "flat" / "a.png", np.random.default_rng(0), 10)
    with pytest.raises(ImageFolderError, match=r"holds no class folders \(1 images directly in it\)"):
        _dm(tmp_path / "flat").setup()


def test_bad_knobs_are_named_before_anything_is_read(tmp_path):
    with pytest.raises(KeelError, match=r"data.augment.spin: unknown knob .*data.augment.hflip=2: expected a number "
                                        r"in \[0, 1\]"):
        _dm(tmp_path, augment={"hflip": 2, "spin": 1})
    with pytest.raises(KeelError, match=r"data.channels/height/width=2/16/16: sample shape \[2, 16, 16\] is not an "
                                        r"image's"):
        _dm(tmp_path, channels=2)
    with pytest.raises(KeelError, match=r"data.modes=\['I;16'\]: expected a non-empty list of 8-bit Pillow modes"):
        _dm(tmp_path, modes=["I;16"])


def test_split_folders_are_kept_and_a_missing_val_is_held_out_of_train(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 5)):
        for c in ("0", "1"):
            for i in range(n):
                _png(tmp_path / "img" / split / c / f"{i}.png", rng, 60 if c == "0" else 180)
    dm = _dm(tmp_path / "img", val_fraction=0.2)
    dm.setup()
    assert dm.split_sizes() == {"train": 32, "val": 8, "test": 10}
    assert all("/test/" in f for f in dm.split_files("test"))
    assert not any("/test/" in f for f in dm.split_files("val"))
    assert dm.contract.classes == (0, 1) and dm.layout == "split folders train/, test/"


def test_csv_of_path_label_and_a_label_outside_the_classes(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for i in range(30):
        label = ["red", "blue"][i % 2]
        _png(tmp_path / "img" / "all" / f"{i}.png", rng, 200 if label == "red" else 40)
        lines.append(f"all/{i}.png,{label}")
    lines.append("all/29.png,green")
    (tmp_path / "img" / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ContractViolationError, match=r"classes on label: 1 of \d+ rows fail \(labels \['green'\] are "
                                                     r"not among the classes \['red', 'blue'\]\)"):
        _dm(tmp_path / "img", labels="labels.csv", classes=["red", "blue"]).setup()
    dm = _dm(tmp_path / "img", labels="labels.csv", classes=["red", "blue"], on_violation="drop")
    dm.setup()
    assert dm.class_names == ["red", "blue"] and sum(dm.split_sizes().values()) == 30
    x, y = dm.split_arrays("train")
    red = x[y == 0].mean()
    assert red > x[y == 1].mean() + 100  # labels follow the CSV, in the order data.classes gives


def test_protocol_statistics_and_bounded_split_arrays(tmp_path):
    from keel.data.protocol import check_data_module

    dm = _dm(_folder(tmp_path / "img", bad=False))
    dm.setup()
    check_data_module(dm)
    x, y = dm.split_arrays("train")
    assert x.shape == (dm.split_sizes()["train"], *SHAPE) and x.dtype == np.float32 and y.dtype == np.int64
    pre = dm.preprocessing
    np.testing.assert_allclose(pre["mean"], x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(pre["std"], x.astype(np.float64).std(axis=(0, 2, 3), ddof=1), rtol=1e-6)
    a, ya = dm.split_arrays("train", limit=5)
    b, yb = dm.split_arrays("train", limit=5)
    assert len(a) == 5 and np.array_equal(a, b) and np.array_equal(ya, yb)
    assert sum(dm.class_counts("train")) == len(y)
    assert set(dm.reference["features"]) == {f"c{c}.{s}" for c in range(3) for s in ("mean", "std", "min", "max")}
    assert dm.drift["splits"]["val"]["leakage"]["count"] == 0


def test_serving_decodes_exactly_as_training(tmp_path):
    dm = _dm(_folder(tmp_path / "img", bad=False))
    dm.setup()
    x, _ = dm.split_arrays("val")
    served = np.stack([load_image(f, SHAPE) for f in dm.split_files("val")])
    assert np.array_equal(x, served)
    xv, _ = next(iter(dm.val_dataloader()))  # val/test batches are never augmented
    assert np.array_equal(xv.numpy(), x[: len(xv)])


def _batches(dm: ImageFolderDataModule, epoch: int, workers: int) -> list[torch.Tensor]:
    dm.num_workers = workers
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [x for x, _ in loader]


def test_augmentation_is_the_same_with_any_worker_count_and_new_each_epoch(tmp_path):
    dm = _dm(_folder(tmp_path / "img", bad=False), augment=AUG, seed=3)
    dm.setup()
    zero, two = _batches(dm, 1, 0), _batches(dm, 1, 2)
    assert len(zero) == len(two) and all(torch.equal(a, b) for a, b in zip(zero, two))
    other = _batches(dm, 2, 0)
    assert not torch.equal(torch.cat(zero).sort(0).values, torch.cat(other).sort(0).values)
    plain = _dm(tmp_path / "img", seed=3)
    plain.setup()
    assert not torch.equal(_batches(plain, 1, 0)[0], zero[0])  # the augmentation did something
    assert float(torch.cat(zero).min()) >= 0 and float(torch.cat(zero).max()) <= 255


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_resumed_mid_epoch_serves_the_batches_that_follow(tmp_path, workers):
    dm = _dm(_folder(tmp_path / "img", bad=False), augment=AUG, seed=1)
    dm.setup()
    whole = _batches(dm, 4, 0)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(4)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 4, "batches_done": 2}
    dm.num_workers = workers
    resumed = dm.train_dataloader()
    # Lightning's order on a mid-epoch resume: the iterator (workers are handed indices at once),
    # then the loader's state, then set_epoch, then the batches
    it = iter(resumed)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(4)
    first = next(it)[0]
    assert resumed.state_dict() == {"epoch": 4, "batches_done": 3}  # a second interruption resumes after batch 3
    rest = [first, *(x for x, _ in it)]
    assert len(rest) == len(whole) - 2 and all(torch.equal(a, b) for a, b in zip(rest, whole[2:]))
    again = iter(resumed)  # another iterator of that epoch (e.g. the loop made one more) is whole
    assert sum(1 for _ in again) == len(whole)
    resumed.sampler.set_epoch(5)
    assert len(list(resumed)) == len(whole)  # the next epoch is whole


def test_verify_header_finds_header_problems_and_the_loader_names_a_broken_file(tmp_path):
    root = _folder(tmp_path / "img", bad=False)
    whole = (root / "owl" / "0.png").read_bytes()
    (root / "owl" / "cut.png").write_bytes(whole[: len(whole) - 30])  # the header reads, the pixels do not
    (root / "cat" / "empty.png").write_bytes(b"")
    with pytest.raises(ContractViolationError) as err:
        _dm(root, verify="header", stats_sample=2).setup()
    assert "empty on cat/empty.png" in str(err.value) and "cut.png" not in str(err.value)
    (root / "cat" / "empty.png").unlink()
    dm = _dm(root, verify="header", stats_sample=2)
    dm.setup()
    split = next(s for s in ("train", "val", "test") if any(f.endswith("cut.png") for f in dm.split_files(s)))
    loader = dm.train_dataloader() if split == "train" else getattr(dm, f"{split}_dataloader")()
    with pytest.raises(ImageError, match=r"cut.png: decode: the pixel data does not decode.*data.verify=full"):
        list(loader)


def test_cnn_and_resnet_build_on_the_images(compose_cfg, tmp_path):
    from keel.fit import build_model

    root = _folder(tmp_path / "img", bad=False)
    for model in ("cnn", "resnet"):
        cfg = compose_cfg("data=image_folder", f"data.root={root}", f"model={model}", "data.num_workers=0",
                          "data.height=16", "data.width=16")
        from hydra.utils import instantiate

        dm = instantiate(cfg.data)
        dm.setup()
        net = build_model(cfg, dm)
        x, _ = next(iter(dm.train_dataloader()))
        assert net(x).shape == (len(x), 3)


def test_config_check_names_a_missing_image_root(compose_cfg, tmp_path):
    from keel.config import ConfigError, validate_config

    cfg = compose_cfg("data=image_folder", f"data.root={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match=r"data.root='.*nope': no such folder; expected a folder of images \(one "
                                          r"sub-folder of PNG/JPEG files per class.*Fix: data.root=<the folder with "
                                          r"the class folders>"):
        validate_config(cfg)


def test_bundle_input_reads_image_files_and_folders(tmp_path):
    from keel.data.contract import contract_from_dict
    from keel.serve.bundle import LabelledFile

    root = _folder(tmp_path / "img", bad=False)
    whole = (root / "owl" / "0.png").read_bytes()
    (root / "owl" / "broken.png").write_bytes(whole[:40])
    contract = contract_from_dict({"kind": "tensor", "name": "imgs", "shape": list(SHAPE), "dtype": "float32",
                                   "range": [0.0, 255.0], "classes": [0, 1, 2]})
    io = LabelledFile(contract)
    rows = io.read_rows(root / "owl")
    assert rows.n == 13 and rows.carried["file"][0] == "0.png" and "broken.png" in rows.carried["file"]
    with pytest.raises(ContractViolationError, match=r"(?s)decode on broken.png.*Fix: replace or remove these image files"):
        io.encode_rows(rows, "owl")
    enc = io.encode_rows(rows, "owl", on_invalid="skip")
    broken = rows.carried["file"].index("broken.png")
    assert list(enc.invalid) == [broken] and len(enc.x) == 12
    np.testing.assert_array_equal(enc.x[0], load_image(root / "owl" / "0.png", SHAPE))
    one = io.read_rows(root / "dog" / "gray.png")
    assert one.n == 1 and io.encode_rows(one, "gray.png").x.shape == (1, *SHAPE)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("x")
    with pytest.raises(KeelError, match="a folder without PNG/JPEG images"):
        io.read_rows(tmp_path / "none")


def test_serving_images_imports_no_torch():
    code = ("import sys, keel.serve.images, keel.serve.bundle; "
            "bad = [m for m in ('torch', 'lightning') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_augment_defaults_are_off():
    assert not Augment.from_dict({}).active
    assert Augment.from_dict({"hflip": 0.5}).active


def test_an_image_error_from_a_worker_keeps_its_message():
    """torch re-raises a worker's exception as ``type(e)(text with the worker's traceback)``."""
    text = ("Caught ImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            "  File \"x.py\", line 1, in f\nkeel.serve.images.ImageError: /d/a.png: decode: cut short. Fix: remove it")
    assert str(ImageError(text)) == "/d/a.png: decode: cut short (read in a DataLoader worker). Fix: remove it"
