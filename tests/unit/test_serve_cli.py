"""`keel serve` refuses bad options and bundles before anything listens (exit 2, the reason said)."""

from __future__ import annotations

import sys

from keel.cli import main


def test_a_missing_bundle_is_refused_before_listening(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "no such bundle directory" in capsys.readouterr().err


def test_bad_options_are_refused_together(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--max-batch", "0", "--drift-window", "0", "--port", "70000",
                 "--threads", "-1"]) == 2
    err = capsys.readouterr().err
    assert "invalid keel serve options" in err
    for expected in ("--max-batch 0: expected >= 1", "--drift-window 0: expected >= 1 rows", "--port 70000",
                     "--threads -1: expected >= 0"):
        assert expected in err


def test_building_the_parser_imports_no_server_code():
    import subprocess

    code = ("import sys; from keel.cli import _parser; _parser('serve'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('uvicorn', 'starlette', 'prometheus_client')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
