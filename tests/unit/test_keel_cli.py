"""The `keel` command: contract infer/check and drift, as a scheduled job would call them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from keel.cli import main

KEEL = Path(sys.executable).parent / "keel"


def _table(n: int = 400, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x": rng.normal(shift, 1.0, n),
        "size": rng.integers(1, 5, n),
        "kind": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2] if not shift else [0.1, 0.3, 0.6]),
        "label": rng.integers(0, 2, n),
    })


@pytest.fixture
def ref(tmp_path):
    path = tmp_path / "ref.csv"
    _table().to_csv(path, index=False)
    return path


def test_console_script_is_installed():
    proc = subprocess.run([str(KEEL), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "contract" in proc.stdout and "drift" in proc.stdout


def test_infer_writes_a_contract_that_check_accepts(tmp_path, ref, capsys):
    assert main(["contract", "infer", str(ref), "--target", "label"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Inferred by `keel contract infer")
    spec = yaml.safe_load(text)
    assert spec["kind"] == "table" and spec["target"] == "label" and spec["classes"] == [0, 1]
    assert spec["columns"]["kind"] == {"dtype": "category", "nullable": False, "categories": ["a", "b", "c"]}
    assert spec["columns"]["size"]["dtype"] == "int64"
    contract = tmp_path / "my.yaml"
    contract.write_text(text)
    assert main(["contract", "check", str(contract), str(ref)]) == 0
    assert "400 rows satisfy contract 'ref'" in capsys.readouterr().out


def test_check_exits_1_and_lists_every_violation(tmp_path, ref, capsys):
    main(["contract", "infer", str(ref), "--target", "label"])
    contract = tmp_path / "my.yaml"
    contract.write_text(capsys.readouterr().out)
    bad = _table()
    bad.loc[5, "kind"] = "zzz"
    bad.loc[6, "size"] = 99
    bad = bad.drop(columns=["x"])
    path = tmp_path / "new.csv"
    bad.to_csv(path, index=False)
    out_json = tmp_path / "report.json"
    assert main(["contract", "check", str(contract), str(path), "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "contract 'ref' violated (3 violations" in out
    assert "missing-columns: x" in out and "categories on kind: 1 of 400 rows fail" in out and "row 6: 99" in out
    assert len(json.loads(out_json.read_text())["violations"]) == 3


def test_check_without_labels_checks_features_only(tmp_path, ref, capsys):
    main(["contract", "infer", str(ref), "--target", "label"])
    contract = tmp_path / "my.yaml"
    contract.write_text(capsys.readouterr().out)
    path = tmp_path / "serve.csv"
    _table().drop(columns=["label"]).to_csv(path, index=False)
    assert main(["contract", "check", str(contract), str(path)]) == 0
    assert "features only" in capsys.readouterr().out


def test_drift_exit_status_follows_the_alert_threshold(tmp_path, ref, capsys):
    same = tmp_path / "same.csv"
    _table(seed=1).to_csv(same, index=False)
    shifted = tmp_path / "shifted.csv"
    _table(shift=1.5, seed=2).to_csv(shifted, index=False)
    assert main(["drift", str(ref), str(same), "--target", "label"]) == 0
    capsys.readouterr()
    report = tmp_path / "drift.json"
    assert main(["drift", str(ref), str(shifted), "--target", "label", "--json", str(report)]) == 1
    data = json.loads(report.read_text())
    feats = data["splits"]["current"]["features"]
    assert feats["x"]["status"] == "alert" and feats["x"]["psi"] > 0.25
    assert feats["x"]["significant"] and feats["x"]["p_adjusted"] < data["thresholds"]["alpha"]
    assert feats["kind"]["status"] == "alert" and feats["kind"]["kind"] == "categorical"
    assert "label" not in feats  # the label column is not a feature
    assert data["status"] == "alert"


def test_usage_and_input_errors_exit_2(tmp_path, ref, capsys):
    assert main(["contract", "check", str(tmp_path / "none.yaml"), str(ref)]) == 2
    assert "none.yaml: no such contract file" in capsys.readouterr().err
    assert main(["contract", "infer", str(ref), "--target", "nope"]) == 2
    assert "--target 'nope' is not a column" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["drift", str(ref), str(empty)]) == 2
    assert "empty.csv: the file is empty" in capsys.readouterr().err
    assert main(["drift", str(ref), str(ref), "--psi-warn", "0.5", "--psi-alert", "0.2"]) == 2
    assert "psi" in capsys.readouterr().err


def test_replay_is_listed_with_the_help_of_its_full_parser(capsys):
    from keel.cli import _parser

    # `keel replay` gets its parser (keel.replay, ~40 ms of imports) only when it is the command;
    # the stand-in that lists it elsewhere must say the same
    assert _parser().format_help() == _parser("replay").format_help()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "re-run a run from its run.json" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    assert "--tolerance" in capsys.readouterr().out


def test_predict_does_not_import_replay():
    code = "import sys; from keel.cli import _parser; _parser('predict'); print(sorted(m for m in sys.modules " \
           "if m in ('keel.replay', 'keel.provenance', 'importlib.metadata')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "argv,status,fast",
    [(["predict", "b", "x.npy"], 0, True), (["predict", "b", "x.npy"], 2, False), (["drift", "a", "b"], 0, False)],
    ids=["predict-ok", "predict-failed", "other-command"],
)
def test_console_entry_exits_at_once_only_after_a_successful_predict(monkeypatch, argv, status, fast):
    import io

    import keel.cli

    class Exited(Exception):
        pass

    class Stream(io.StringIO):
        flushed = ""

        def flush(self) -> None:
            self.flushed = self.getvalue()

    def fake_exit(code: int) -> None:
        raise Exited(code)

    def fake_main(args: list[str]) -> int:
        print("rows")
        return status

    out = Stream()
    monkeypatch.setattr(sys, "argv", ["keel", *argv])
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(keel.cli, "main", fake_main)
    monkeypatch.setattr(keel.cli, "exit_now", fake_exit)  # keel.fast_exit: tested in test_library_reaches
    with pytest.raises(Exited if fast else SystemExit) as exit_info:
        keel.cli.console_main()
    code = exit_info.value.args[0] if fast else exit_info.value.code
    assert code == status
    assert out.getvalue() == "rows\n"
