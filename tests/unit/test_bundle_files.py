"""Bundle files: hashes, path traversal refused, atomic replacement."""

from __future__ import annotations

import json

import pytest

from keel.export.bundle import BundleError, check_files, read_manifest, safe_member, staged, write_manifest


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "..", "C:/x", "a\\..\\x", ""])
def test_manifest_entries_cannot_leave_the_bundle(tmp_path, name):
    with pytest.raises(BundleError, match="outside the bundle directory"):
        safe_member(tmp_path, name)


def test_symlink_out_of_the_bundle_is_refused(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "secret").write_text("x")
    (tmp_path / "b" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(BundleError, match="resolves outside"):
        safe_member(tmp_path / "b", "link")


def test_hashes_catch_changed_missing_and_extra_files(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"abc")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "x.npy").write_bytes(b"123")
    write_manifest(tmp_path, {"models": {"fp32": "model.onnx"}})
    m = read_manifest(tmp_path)
    assert check_files(tmp_path, m) == []
    assert set(m["files"]) == {"model.onnx", "samples/x.npy"}
    (tmp_path / "model.onnx").write_bytes(b"abd")
    (tmp_path / "samples" / "x.npy").unlink()
    (tmp_path / "extra.txt").write_text("?")
    assert check_files(tmp_path, m) == [
        "model.onnx: sha256 differs from the manifest (file changed)",
        "samples/x.npy: missing",
        "extra.txt: not listed in the manifest",
    ]


def test_manifest_pointing_outside_is_refused_by_check_files(tmp_path):
    write_manifest(tmp_path, {})
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["files"] = {"../../etc/passwd": {"sha256": "0"}}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="outside the bundle directory"):
        check_files(tmp_path, read_manifest(tmp_path))


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle \\(no manifest.json\\)"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_staged_write_keeps_the_old_bundle_when_interrupted(tmp_path):
    final = tmp_path / "bundle"
    with staged(final) as tmp:
        (tmp / "model.onnx").write_text("v1")
    with pytest.raises(RuntimeError):
        with staged(final) as tmp:
            (tmp / "model.onnx").write_text("half")
            raise RuntimeError("disk full")
    assert (final / "model.onnx").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary left behind
    with staged(final) as tmp:
        (tmp / "model.onnx").write_text("v2")
    assert (final / "model.onnx").read_text() == "v2" and [p.name for p in tmp_path.iterdir()] == ["bundle"]
