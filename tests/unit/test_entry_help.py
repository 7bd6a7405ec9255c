"""`python train.py --help` is rendered without Hydra's composition, and prints exactly Hydra's text."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import hydra
import pytest

from keel.config.entry import fast_help

ROOT = Path(__file__).resolve().parents[2]

APP = '''import hydra

from keel.config import register_resolvers, run_app

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    raise SystemExit("the task must not run for --help")


if __name__ == "__main__":
    run_app(main)
'''


def _help(script: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, str(script), "--help", *extra], cwd=script.parent, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("script", ["train.py", "export.py"])
def test_fast_help_prints_what_hydra_prints(script):
    # an override after --help sends the command through Hydra's own composition and help
    fast, composed = _help(ROOT / script), _help(ROOT / script, "hydra.job.chdir=false")
    assert fast == composed
    assert "== Config groups (pick one option each) ==" in fast and "optimizer: adam, adamw, rmsprop, sgd" in fast


def test_groups_are_listed_as_hydra_lists_them(tmp_path):
    """Nested groups, folders without YAML files and other files: the same listing as Hydra's."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "zoo" / "nested").mkdir(parents=True)
    (tmp_path / "conf" / "zoo" / "nested" / "b.yaml").write_text("x: 1\n")
    (tmp_path / "conf" / "zoo" / "a.yaml").write_text("x: 2\n")
    (tmp_path / "conf" / "empty").mkdir()
    (tmp_path / "conf" / "notes").mkdir()
    (tmp_path / "conf" / "notes" / "readme.txt").write_text("not a config\n")
    fast, composed = _help(tmp_path / "app.py"), _help(tmp_path / "app.py", "seed=1")
    assert fast == composed
    assert "zoo: a\nzoo/nested: b\n" in fast and "empty" not in fast and "notes" not in fast


def _decorated(conf: Path):
    @hydra.main(version_base="1.3", config_path=str(conf), config_name="train")
    def main(cfg):  # pragma: no cover - never called
        raise AssertionError

    return main


def test_templates_that_need_the_composed_config_go_to_hydra(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    main = _decorated(tmp_path / "conf")
    assert fast_help(main, ["--help"]).startswith("keel train:")
    assert fast_help(main, ["-h"]) == fast_help(main, ["--help"])
    assert fast_help(main, ["--help", "model=cnn"]) is None  # overrides: Hydra composes
    assert fast_help(main, ["model=cnn"]) is None
    hydra_yaml = tmp_path / "conf" / "hydra" / "default.yaml"
    hydra_yaml.write_text(hydra_yaml.read_text().replace("$APP_CONFIG_GROUPS", "$APP_CONFIG_GROUPS\n    $CONFIG"))
    assert fast_help(main, ["--help"]) is None


def test_help_with_a_config_mistake_is_one_error_not_a_traceback():
    """Hydra composes --help's config outside its error reporter; keel still reports the mistake."""
    proc = subprocess.run([sys.executable, "train.py", "model=nope", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ("error: invalid configuration (1 problem):\n  - model=nope: no option 'nope' in config group 'model'; "
            "expected one of: cnn, custom, mlp, resnet.") in proc.stderr
