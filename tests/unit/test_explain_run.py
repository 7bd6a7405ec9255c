"""keel.explain.run: which inputs get which explanation, the options' checks, the manifest update,
and `keel explain`'s argument handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keel.data.contract import contract_from_dict
from keel.explain.run import ExplainOptions, add_importance, feature_names, input_kind

TABLE = {"kind": "table", "name": "t", "target": "y", "classes": [0, 1],
         "columns": {"age": {"dtype": "float64"}, "bmi": {"dtype": "float64"}}}


def _tensor(shape):
    return contract_from_dict({"kind": "tensor", "name": "x", "shape": shape, "dtype": "float32", "classes": [0, 1]})


def test_input_kind_and_feature_names():
    assert input_kind(_tensor([1, 8, 8])) == "image"
    assert input_kind(_tensor([64])) == "table"
    assert feature_names(_tensor([3])) == ["x[0]", "x[1]", "x[2]"]
    assert input_kind(_tensor([10, 4])) == "table"  # a sequence: one feature per channel
    assert feature_names(_tensor([10, 4])) == ["channel 0", "channel 1", "channel 2", "channel 3"]
    assert input_kind(_tensor([2, 2, 2, 2])) == "other"
    table = contract_from_dict(TABLE)
    assert input_kind(table) == "table" and feature_names(table) == ["age", "bmi"]


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("methods", ("saliency", "lime"), "unknown 'lime'"),
    ("methods", (), "expected at least one of"),
    ("repeats", 0, "repeats=0: expected an integer >= 1"),
    ("images", -1, "images=-1: expected an integer >= 0"),
    ("split", "holdout", "split='holdout': expected train, val or test"),
])
def test_bad_options_name_the_value(field, value, expected):
    with pytest.raises(ValueError, match="explain options") as e:
        ExplainOptions(**{field: value}).check()
    assert expected in str(e.value)


def test_bad_explain_config_is_refused_before_training(compose_cfg):
    from keel.config.validate import validate_config
    from keel.errors import KeelError

    with pytest.raises(KeelError) as e:
        validate_config(compose_cfg("callbacks.explain.methods=[saliency,shap]"))
    assert "callbacks.explain.methods" in str(e.value) and "saliency, integrated_gradients, grad_cam" in str(e.value)
    with pytest.raises(KeelError, match="callbacks.explain.repeats"):
        validate_config(compose_cfg("callbacks.explain.repeats=0"))


REPORT = {"method": "permutation", "metric": "acc", "higher_is_better": True, "split": "test", "rows": 10, "repeats": 2,
          "seed": 0, "baseline": 0.9, "features": [{"name": "bmi", "mean": 0.2, "std": 0.01, "rank": 1},
                                                   {"name": "age", "mean": 0.0, "std": 0.02, "rank": 2}]}


def _bundle(root):
    from keel.export.bundle import write_manifest

    root.mkdir()
    (root / "model.onnx").write_bytes(b"not a real model")
    write_manifest(root, {"task": "classification", "models": {"fp32": "model.onnx"}})
    return root


def test_add_importance_writes_the_manifest_and_keeps_the_files_intact(tmp_path):
    from keel.export.bundle import check_files, read_manifest

    root = _bundle(tmp_path / "bundle")
    manifest = add_importance(root, REPORT)
    assert manifest["importance"] == REPORT
    on_disk = read_manifest(root)
    assert on_disk["importance"]["features"][0]["name"] == "bmi"
    assert on_disk["task"] == "classification" and check_files(root, on_disk) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # the staged copy is gone


def test_add_importance_refuses_a_tampered_bundle(tmp_path):
    from keel.export.bundle import BundleError

    root = _bundle(tmp_path / "bundle")
    (root / "model.onnx").write_bytes(b"changed")
    with pytest.raises(BundleError, match="sha256 differs"):
        add_importance(root, REPORT)
    assert "importance" not in json.loads((root / "manifest.json").read_text())


def test_keel_explain_names_what_it_expected(tmp_path, capsys):
    from keel.cli import main

    assert main(["explain", str(tmp_path / "nowhere")]) == 2  # keel's user-error exit status
    err = capsys.readouterr().err
    assert "no such checkpoint file or run directory" in err and "outputs/train/runs/<run>" in err
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert main(["explain", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint found" in err and "last.ckpt" in err
    assert main(["explain", str(run), "--repeats", "0"]) == 2
    assert "repeats=0" in capsys.readouterr().err


def test_keel_explain_follows_a_moved_run_directory(tmp_path):
    """metrics.json keeps absolute paths; a run directory copied elsewhere still finds its checkpoint."""
    from keel.cli import _explain_source

    run = tmp_path / "moved"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch003.ckpt").write_bytes(b"x")
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "/elsewhere/run/checkpoints/epoch003.ckpt"}))
    ckpt, run_dir = _explain_source(str(run))
    assert ckpt == run / "checkpoints" / "epoch003.ckpt" and run_dir == run
    ckpt, run_dir = _explain_source(str(run / "checkpoints" / "epoch003.ckpt"))
    assert run_dir == run.resolve()


def test_sampling_is_seeded_and_bounded():
    from keel.explain.run import _sample

    x, y = np.arange(100).reshape(50, 2), np.arange(50)
    a, b = _sample(x, y, 10, 0), _sample(x, y, 10, 0)
    assert len(a[0]) == 10 and np.array_equal(a[0], b[0]) and np.array_equal(a[0][:, 0] // 2, a[1])
    assert len(_sample(x, y, 100, 0)[0]) == 50


def test_class_names_prefer_the_modules_own_then_the_contracts():
    """An image folder's classes are named by its subfolders (the confusion matrix and the
    explanation titles show circle/square, not 0/1); other modules by their contract."""
    from types import SimpleNamespace

    from keel.data.protocol import class_names

    contract = _tensor([1, 8, 8])
    assert class_names(SimpleNamespace(class_names=["circle", "square"], contract=contract)) == ["circle", "square"]
    assert class_names(SimpleNamespace(contract=contract)) == ["0", "1"]
    assert class_names(SimpleNamespace(class_names=[], contract=contract)) == ["0", "1"]
    assert class_names(None) == []
