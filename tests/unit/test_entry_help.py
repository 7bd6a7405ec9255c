"""`python train.py --help` (export.py, eval.py) is rendered without Hydra's composition, prints exactly
Hydra's text, and each script prints its own."""

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


SCRIPTS = ("train.py", "export.py", "eval.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_fast_help_prints_what_hydra_prints(script):
    # an override after --help sends the command through Hydra's own composition and help
    fast, composed = _help(ROOT / script), _help(ROOT / script, "hydra.job.chdir=false")
    assert fast == composed
    # each script's own help: its name in the header, the usage line and every example
    name = script.removesuffix(".py")
    assert fast.startswith(f"keel {name}: ")
    assert f"\nUsage: python {script} " in fast
    examples = [line.strip() for line in fast.splitlines() if line.startswith("  python ")]
    assert len(examples) >= 4 and all(line.startswith(f"python {script} ") for line in examples), examples
    assert f"Hydra options: python {script} --hydra-help" in fast


def test_train_help_lists_the_config_groups():
    fast = _help(ROOT / "train.py")
    assert "== Config groups (pick one option each; logger takes a list too: 'logger=[tensorboard,mlflow]') ==" in fast and "optimizer: adam, adamw, rmsprop, sgd" in fast


@pytest.mark.parametrize("script", ["export.py", "eval.py"])
def test_export_and_eval_help_name_every_key_of_their_config(script):
    """Not train.py's groups (data, model, optimizer mean nothing to them): their own keys, each
    key a user sets in conf/<name>.yaml and each group it composes."""
    from omegaconf import OmegaConf

    fast = _help(ROOT / script)
    assert "== Config groups" not in fast and "optimizer:" not in fast
    primary = OmegaConf.load(ROOT / "conf" / script.replace(".py", ".yaml"))
    internal = {"defaults", "task_name", "run_dir"}  # the job's name and its own log dir's pattern
    keys = [str(k) for k in primary if k not in internal]
    groups = [next(iter(d)) for d in primary.defaults if not isinstance(d, str) and next(iter(d)) != "hydra"]
    assert keys
    for key in keys:
        assert f"\n{key}=" in fast or f"\n+{key}." in fast, key
    for group in groups:
        assert f"\n{group}." in fast, group


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


def _decorated(conf: Path, name: str = "train"):
    @hydra.main(version_base="1.3", config_path=str(conf), config_name=name)
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


def test_a_hydra_option_built_on_another_is_followed_as_hydra_follows_it(tmp_path):
    """conf/hydra/export.yaml builds on default.yaml through its defaults list: the fast text
    merges the two in Hydra's order (no ``_self_``: the file comes last), and a defaults entry
    it does not read (a subgroup override) leaves --help to Hydra."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "app.py").write_text(APP.replace('config_name="train"', 'config_name="export"'))
    hydra_yaml = tmp_path / "conf" / "hydra" / "export.yaml"
    text = hydra_yaml.read_text()
    assert "  - default\n  - _self_\n" in text
    text = text.replace("  - _self_\n", "")  # implied last
    text = text.replace("  header: |\n", "  app_name: zoo\n  header: |\n    ${hydra.help.app_name}:\n", 1)
    hydra_yaml.write_text(text)
    fast, composed = _help(tmp_path / "app.py"), _help(tmp_path / "app.py", "bundle_dir=x")
    assert fast == composed
    assert fast.startswith("zoo:\nkeel export: ")
    main = _decorated(tmp_path / "conf", "export")
    assert fast_help(main, ["--help"]) == fast.removesuffix("\n")  # print() adds the last newline
    hydra_yaml.write_text(text.replace("  - default\n", "  - default\n  - override help: default\n"))
    assert fast_help(main, ["--help"]) is None


def test_help_with_a_config_mistake_is_one_error_not_a_traceback():
    """Hydra composes --help's config outside its error reporter; keel still reports the mistake."""
    proc = subprocess.run([sys.executable, "train.py", "model=nope", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ("error: invalid configuration (1 problem):\n  - model=nope: no option 'nope' in config group 'model'; "
            "expected one of: cnn, custom, mlp, resnet, rnn.") in proc.stderr
