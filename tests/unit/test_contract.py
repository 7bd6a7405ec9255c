"""TensorContract: parsing the config spec, fingerprints, and checking numpy splits."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from keel.data.contract import (
    MAX_EXAMPLES,
    ContractError,
    ContractReport,
    ContractViolationError,
    TensorContract,
    Violation,
    load_contract_spec,
)
from keel.errors import KeelError

SPEC = {
    "name": "toy",
    "shape": [1, 2, 2],
    "dtype": "float32",
    "classes": [0, 1, 2],
    "range": [0.0, 1.0],
    "finite": True,
}


def make(**overrides) -> TensorContract:
    return TensorContract.from_dict({**SPEC, **overrides})


def clean_x(n: int) -> np.ndarray:
    """``n`` in-range float32 samples of shape (1, 2, 2)."""
    return np.linspace(0.0, 1.0, n * 4, dtype=np.float32).reshape(n, 1, 2, 2)


def by_rule(report: ContractReport) -> dict[tuple[str, str], Violation]:
    keyed = {(v.rule, v.feature): v for v in report.violations}
    assert len(keyed) == len(report.violations), "one violation per (rule, feature)"
    return keyed


# --------------------------------------------------------------------------- from_dict


def test_from_dict_builds_typed_fields_and_round_trips_via_to_dict():
    c = make()
    assert c.name == "toy"
    assert c.shape == (1, 2, 2)
    assert c.dtype == "float32"
    assert c.classes == (0, 1, 2)
    assert c.range == (0.0, 1.0)
    assert c.finite is True
    assert c.num_classes == 3

    d = c.to_dict()
    assert d == {"kind": "tensor", **SPEC}
    # plain data only (lists, not tuples): safe for weights_only checkpoints and JSON
    assert isinstance(d["shape"], list) and isinstance(d["classes"], list) and isinstance(d["range"], list)
    json.dumps(d)
    # the config spec rebuilt from to_dict gives an equal contract
    spec_again = {k: v for k, v in d.items() if k != "kind"}
    assert TensorContract.from_dict(spec_again) == c


def test_from_dict_defaults_and_normalizes_dtype():
    c = TensorContract.from_dict({"name": "n", "shape": [3], "dtype": "f4", "classes": [1, 0]})
    assert c.dtype == "float32"  # alias normalized to the canonical name
    assert c.range is None
    assert c.finite is True
    assert c.classes == (1, 0)  # order is kept: it defines the logits
    assert c.to_dict()["range"] is None


def test_from_dict_accepts_its_own_to_dict_output():
    c = make()
    assert TensorContract.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        ({"shape": [1, 0, 2]}, r"shape=\[1, 0, 2\]: expected a non-empty list of positive integers"),
        ({"shape": []}, r"shape=\[\]: expected a non-empty list"),
        ({"shape": [1, 2.5]}, r"shape=\[1, 2\.5\]: expected"),
        ({"shape": 8}, r"shape=8: expected"),
        ({"dtype": "float33"}, r"dtype='float33': expected a numpy dtype name"),
        ({"classes": [0, 1, 1]}, r"classes=\[0, 1, 1\]: labels must be unique"),
        ({"classes": [0]}, r"classes=\[0\]: expected a list of at least 2 integer labels"),
        ({"classes": []}, r"classes=\[\]: expected a list of at least 2"),
        ({"classes": [0, 1.5]}, r"classes=\[0, 1\.5\]: expected a list of at least 2 integer labels"),
        ({"range": [1.0, 0.0]}, r"range=\[1\.0, 0\.0\]: expected \[low, high\] with low <= high"),
        ({"range": [0.0]}, r"range=\[0\.0\]: expected \[low, high\]"),
        ({"range": ["a", "b"]}, r"range=\['a', 'b'\]: expected \[low, high\]"),
        ({"dtype": None}, r"dtype=None: expected a numpy dtype name"),
        ({"shape": [True, 8]}, r"shape=\[True, 8\]: expected a non-empty list of positive integers"),
        ({"classes": [False, True]}, r"classes=\[False, True\]: expected a list of at least 2 integer labels"),
        ({"kind": "tabular"}, r"kind='tabular': a TensorContract has kind 'tensor'"),
        ({"ranges": [0.0, 1.0]}, r"unknown key 'ranges' \(allowed: \['classes', 'dtype', 'finite', 'name', 'range', 'shape'\]\)"),
    ],
    ids=lambda v: None if isinstance(v, str) else str(v),
)
def test_from_dict_rejects_malformed_field_naming_it(overrides, pattern):
    with pytest.raises(ContractError, match=r"^invalid data contract: .*" + pattern):
        make(**overrides)


def test_from_dict_missing_key_is_named():
    spec = {k: v for k, v in SPEC.items() if k != "classes"}
    with pytest.raises(ContractError, match=r"missing key 'classes'"):
        TensorContract.from_dict(spec)


def test_from_dict_reports_every_bad_field_at_once():
    with pytest.raises(ContractError) as info:
        make(shape=[0], dtype="nope", classes=[3, 3], range=[2, 1])
    msg = str(info.value)
    for fragment in ("shape=[0]", "dtype='nope'", "classes=[3, 3]", "range=[2, 1]"):
        assert fragment in msg
    assert msg.count(";") == 3  # four problems, "; "-separated
    assert isinstance(info.value, KeelError)  # user-facing: exit code 2, no traceback


def test_valid_range_with_equal_bounds_and_ints_is_accepted():
    c = make(range=[2, 2])
    assert c.range == (2.0, 2.0)
    assert isinstance(c.range[0], float)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_equal_for_equal_contracts():
    a, b = make(), make(dtype="f4", range=[0, 1])
    assert a == b
    assert a.fingerprint() == b.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", a.fingerprint())


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "other"},
        {"shape": [1, 4]},
        {"dtype": "float64"},
        {"classes": [0, 1, 3]},
        {"classes": [2, 1, 0]},  # same labels, different logit order
        {"range": [0.0, 2.0]},
        {"range": None},
        {"finite": False},
    ],
    ids=str,
)
def test_fingerprint_changes_when_a_field_changes(overrides):
    assert make(**overrides).fingerprint() != make().fingerprint()


# --------------------------------------------------------------------------- check / validate


def test_clean_split_has_no_violations():
    c = make()
    x, y = clean_x(6), np.array([0, 1, 2, 0, 1, 2])
    report = c.check(x, y, "train")
    assert report.ok
    assert report.violations == ()
    assert (report.contract, report.split, report.rows) == ("toy", "train", 6)
    assert c.validate(x, y, "train") == report
    # labels may be float if they are integral, and are optional
    assert c.check(x, y.astype(np.float64), "train").ok
    assert c.check(x, None, "train").ok


def test_every_violation_is_reported_with_counts_and_examples():
    c = make()
    x = clean_x(8)
    x[1, 0, 0, 1] = 1.5  # above range
    x[4, 0, 1, 1] = -0.25  # below range
    x[6, 0, 0, 0] = np.nan  # not finite
    y = np.array([0, 1, 5, np.nan, 1, np.nan, 0, 1], dtype=np.float64)  # 5 unknown, two NaN

    report = c.check(x, y, "train")
    assert not report.ok
    assert report.rows == 8
    assert {v.rule for v in report.violations} == {"range", "finite", "classes"}
    v = by_rule(report)
    assert set(v) == {("range", "x"), ("finite", "x"), ("finite", "label"), ("classes", "label")}

    rng = v["range", "x"]
    assert (rng.failing, rng.total) == (2, 8)
    assert rng.examples == ((1, 1.5), (4, -0.25))
    assert rng.detail == "allowed [0, 1]"

    fin = v["finite", "x"]
    assert (fin.failing, fin.total) == (1, 8)
    assert fin.examples == ((6, "NaN"),)  # non-finite examples as text: the report is strict JSON

    nan_labels = v["finite", "label"]
    assert (nan_labels.failing, nan_labels.total) == (2, 8)
    assert nan_labels.examples == ((3, "NaN"), (5, "NaN"))

    cls = v["classes", "label"]
    assert (cls.failing, cls.total) == (1, 8)  # NaN labels are not double-counted as unknown
    assert cls.examples == ((2, 5.0),)
    assert cls.detail == "allowed [0, 1, 2]"

    # examples are plain Python values (no numpy scalars): JSON-serializable report
    for viol in report.violations:
        for i, val in viol.examples:
            assert type(i) is int and not isinstance(val, np.generic)
    plain = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert plain["split"] == "train" and plain["rows"] == 8
    assert {"rule": "range", "feature": "x", "failing": 2, "total": 8,
            "examples": [[1, 1.5], [4, -0.25]], "detail": "allowed [0, 1]"} in plain["violations"]


def test_infinite_value_breaks_both_finite_and_range():
    x = clean_x(3)
    x[2, 0, 1, 0] = np.inf
    v = by_rule(make().check(x, None, "val"))
    assert set(v) == {("finite", "x"), ("range", "x")}
    assert v["finite", "x"].examples == ((2, "Inf"),)
    assert v["range", "x"].examples == ((2, "Inf"),)


def test_finite_false_allows_nan_but_range_still_applies():
    x = clean_x(3)
    x[0, 0, 0, 0] = np.nan
    x[1, 0, 0, 0] = 3.0
    report = make(finite=False).check(x, None, "val")
    assert [(v.rule, v.failing, v.examples) for v in report.violations] == [("range", 1, ((1, 3.0),))]


def test_examples_are_capped_but_failing_counts_every_row():
    x = clean_x(12)
    x[:10, 0, 0, 0] = 2.0
    (viol,) = make().check(x, None, "train").violations
    assert viol.rule == "range"
    assert viol.failing == 10 and viol.total == 12
    assert len(viol.examples) == MAX_EXAMPLES == 5
    assert [i for i, _ in viol.examples] == [0, 1, 2, 3, 4]


def test_fractional_labels_break_integer_rule():
    y = np.array([0.0, 1.5, 2.0])
    report = make().check(clean_x(3), y, "train")
    v = by_rule(report)
    assert v["integer", "label"].failing == 1
    assert v["integer", "label"].examples == ((1, 1.5),)
    # 1.5 is also not one of the classes
    assert v["classes", "label"].examples == ((1, 1.5),)


def test_wrong_sample_shape_is_a_shape_violation():
    x = np.zeros((3, 1, 2, 3), dtype=np.float32)
    (viol,) = make().check(x, np.array([0, 1, 2]), "train").violations
    assert (viol.rule, viol.feature, viol.failing, viol.total) == ("shape", "x", 3, 3)
    assert viol.detail == "sample shape [1, 2, 3], expected [1, 2, 2]"


def test_wrong_dtype_is_a_dtype_violation():
    x = clean_x(4).astype(np.float64)
    (viol,) = make().check(x, np.array([0, 1, 2, 0]), "test").violations
    assert (viol.rule, viol.feature, viol.failing, viol.total) == ("dtype", "x", 4, 4)
    assert viol.detail == "dtype float64, expected float32"


def test_empty_split_is_a_non_empty_violation():
    report = make().check(np.zeros((0, 1, 2, 2), dtype=np.float32), np.zeros(0, dtype=np.int64), "val")
    assert report.rows == 0
    assert [(v.rule, v.feature, v.detail) for v in report.violations] == [("non-empty", "x", "the split has no rows")]


def test_label_length_mismatch_is_a_label_shape_violation():
    (viol,) = make().check(clean_x(3), np.array([0, 1]), "train").violations
    assert (viol.rule, viol.feature) == ("shape", "label")
    assert viol.detail == "labels have shape [2], expected [3]"


def test_non_numeric_labels_are_a_dtype_violation():
    (viol,) = make().check(clean_x(2), np.array(["a", "b"]), "train").violations
    assert (viol.rule, viol.feature) == ("dtype", "label")
    assert "expected integers" in viol.detail


def test_row_ids_remap_example_indices():
    x = clean_x(8)
    x[1, 0, 0, 0] = 1.5
    x[4, 0, 0, 0] = -1.0
    y = np.array([0, 1, 2, 0, 1, 2, 9, 0])
    ids = np.arange(100, 108)[::-1]  # row k of this split is source row 107 - k
    report = make().check(x, y, "train", row_ids=ids)
    v = by_rule(report)
    assert v["range", "x"].failing == 2
    assert v["range", "x"].examples == ((106, 1.5), (103, -1.0))
    assert v["classes", "label"].examples == ((101, 9),)
    # without row_ids: positions in x
    plain = by_rule(make().check(x, y, "train"))
    assert plain["range", "x"].examples == ((1, 1.5), (4, -1.0))
    # a clean report is unchanged by row_ids
    assert make().check(clean_x(2), np.array([0, 1]), "val", row_ids=[7, 9]).ok


def test_violation_describe_text():
    v = Violation("range", "x", 2, 8, ((1, 1.5), (4, -0.25)), "allowed [0, 1]")
    assert v.describe() == "range on x: 2 of 8 rows fail (allowed [0, 1]); e.g. row 1: 1.5, row 4: -0.25"
    assert Violation("dtype", "x", 3, 3).describe() == "dtype on x: 3 of 3 rows fail"


def test_validate_raises_with_every_violation():
    x = clean_x(4)
    x[2, 0, 0, 0] = 7.0
    y = np.array([0, 1, 2, 8])
    with pytest.raises(ContractViolationError, match=r"^data contract 'toy' violated \(2 violations\):") as info:
        make().validate(x, y, "train")
    err = info.value
    assert isinstance(err, KeelError)
    assert [r.split for r in err.reports] == ["train"]
    msg = str(err)
    assert "split 'train' (4 rows):" in msg
    assert "- range on x: 1 of 4 rows fail (allowed [0, 1]); e.g. row 2: 7.0" in msg
    assert "- classes on label: 1 of 4 rows fail (allowed [0, 1, 2]); e.g. row 3: 8" in msg
    assert "Fix:" in msg


def test_violation_error_lists_every_bad_split_and_violation():
    c = make()
    bad_x = clean_x(5)
    bad_x[0, 0, 0, 0] = np.nan
    bad_x[3, 0, 0, 0] = 4.0
    train = c.check(bad_x, np.array([0, 1, 2, 0, 1]), "train")
    val = c.check(clean_x(3), np.array([0, 1, 2]), "val")
    test = c.check(clean_x(2).astype(np.float64), np.array([0, 3]), "test")
    assert val.ok and not train.ok and not test.ok

    with pytest.raises(ContractViolationError, match=r"violated in data/toy\.npz \(4 violations\):") as info:
        raise ContractViolationError([train, val, test], source="data/toy.npz")
    err = info.value
    assert [r.split for r in err.reports] == ["train", "test"]  # clean splits are left out
    lines = str(err).splitlines()
    assert lines[0] == "data contract 'toy' violated in data/toy.npz (4 violations):"
    assert lines[1] == "  split 'train' (5 rows):"
    assert lines[2] == "    - finite on x: 1 of 5 rows fail (NaN or Inf); e.g. row 0: NaN"
    assert lines[3] == "    - range on x: 1 of 5 rows fail (allowed [0, 1]); e.g. row 3: 4.0"
    assert lines[4] == "  split 'test' (2 rows):"
    assert lines[5] == "    - dtype on x: 2 of 2 rows fail (dtype float64, expected float32)"
    assert lines[6] == "    - classes on label: 1 of 2 rows fail (allowed [0, 1, 2]); e.g. row 1: 3"
    assert lines[7].startswith("Fix: ")
    assert "'val'" not in str(err)
    assert len(lines) == 8


def test_violation_error_singular_count():
    report = ContractReport("toy", "val", 0, (Violation("non-empty", "x", 0, 0, detail="the split has no rows"),))
    with pytest.raises(ContractViolationError, match=r"\(1 violation\):\n  split 'val' \(0 rows\):"):
        raise ContractViolationError([report])


def test_contract_yaml_is_loaded_safely(tmp_path):
    """A contract file is data: a YAML tag that would build a Python object (and run code) is refused."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(KeelError, match=r"evil.yaml: not valid YAML \(could not determine a constructor"):
        load_contract_spec(str(evil))
    assert not marker.exists()
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(KeelError, match=r"list.yaml: expected a contract mapping, got list"):
        load_contract_spec(str(listed))
