"""keel.models.net_args: a user's net is checked before the data loads (import, constructor
keys, required arguments), and gets keel's input_shape / num_classes only if it takes them."""

from __future__ import annotations

import sys
import textwrap

import pytest

from keel.models.net_args import NetTargetError, locate, net_arguments, net_problems


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``usernets`` in a folder outside the package, on sys.path as PYTHONPATH would put it."""
    (tmp_path / "usernets.py").write_text(textwrap.dedent('''
        import math
        from torch import nn

        class Plain(nn.Module):  # takes neither input_shape nor num_classes
            def __init__(self, width=8):
                super().__init__()
                self.body = nn.LazyLinear(width)

        class Shaped(nn.Module):
            def __init__(self, input_shape, num_classes, width=16):
                super().__init__()
                self.body = nn.Linear(math.prod(input_shape), num_classes)

        class Needs(nn.Module):
            def __init__(self, depth, *, heads):
                super().__init__()

        class Loose(nn.Module):
            def __init__(self, **kwargs):
                super().__init__()
                self.kwargs = kwargs

        helper = 3
    '''))
    (tmp_path / "brokennets.py").write_text("import not_a_real_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usernets"
    for name in ("usernets", "brokennets"):
        sys.modules.pop(name, None)


def test_locate_finds_classes_and_says_why_not():
    from keel.models.nets import MLP

    assert locate("keel.models.nets.MLP") is MLP
    with pytest.raises(NetTargetError, match="no module named 'nowhere_xyz'"):
        locate("nowhere_xyz.Net")
    with pytest.raises(NetTargetError, match=r"module 'keel.models.nets' has no attribute 'Nope'"):
        locate("keel.models.nets.Nope")
    with pytest.raises(NetTargetError, match="not a dotted path"):
        locate("MLP")


def test_an_unimportable_module_names_the_search_path_to_fix(user_module):
    (p,) = net_problems({"_target_": "missingnets.Net"})
    assert p.startswith("model.net._target_=missingnets.Net: cannot be imported: no module named 'missingnets'")
    assert "PYTHONPATH=/path/to/dir python train.py" in p and ".venv/bin/pip install -e" in p and "(sys.path)" in p


def test_a_module_that_fails_inside_is_not_called_missing(user_module):
    (p,) = net_problems({"_target_": "brokennets.Net"})
    assert "importing 'brokennets' failed inside it" in p and "not_a_real_dependency_xyz" in p


def test_a_wrong_class_name_lists_the_classes_the_module_defines(user_module):
    (p,) = net_problems({"_target_": "usernets.Shapd"})
    assert "module 'usernets' has no attribute 'Shapd'" in p
    assert "usernets defines Loose, Needs, Plain, Shaped" in p  # its own classes, not nn's
    (p,) = net_problems({"_target_": "usernets.helper"})
    assert "is a int, not a class" in p


def test_every_key_the_constructor_does_not_take_is_a_problem_with_its_signature(user_module):
    # a user's net behind model=mlp's keys: each foreign key is counted; keel's own keys are not
    net = {"_target_": "usernets.Shaped", "input_shape": [1, 8, 8], "num_classes": None, "hidden": [256, 128],
           "dropout": 0.1, "norm": "auto", "activation": "relu"}
    problems = net_problems(net)
    assert [p.split(":")[0] for p in problems] == [f"model.net.{k}" for k in ("hidden", "dropout", "norm", "activation")]
    assert all("not an argument of usernets.Shaped (Shaped(input_shape, num_classes, width=16))" in p for p in problems)
    assert "Fix: remove it (~model.net.hidden;" in problems[0]
    assert net_problems({"_target_": "usernets.Shaped", "width": 64}) == []
    assert net_problems({"_target_": "usernets.Loose", "anything": 1}) == []  # **kwargs takes every key


def test_required_arguments_that_are_not_given_are_named(user_module):
    problems = net_problems({"_target_": "usernets.Needs"})
    assert [p.split(":")[0] for p in problems] == ["model.net.depth", "model.net.heads"]
    assert "required by usernets.Needs (Needs(depth, *, heads)) and not given. Fix: +model.net.depth=..." in problems[0]
    assert net_problems({"_target_": "usernets.Needs", "depth": 2, "heads": 4}) == []


def test_keel_arguments_go_only_to_a_constructor_that_takes_them(user_module):
    filled = net_arguments({"_target_": "usernets.Shaped"}, [1, 8, 8], 10)
    assert filled == {"_target_": "usernets.Shaped", "input_shape": [1, 8, 8], "num_classes": 10}
    # mlp.yaml's interpolated keys (null until setup, or the contract's shape) do not reach Plain
    plain = net_arguments({"_target_": "usernets.Plain", "input_shape": None, "num_classes": 3, "width": 4}, [5], 1)
    assert plain == {"_target_": "usernets.Plain", "width": 4}
    # a value the config gives is kept; **kwargs gets what the config names, nothing invented
    assert net_arguments({"_target_": "usernets.Shaped", "num_classes": 7}, [3], 1)["num_classes"] == 7
    assert net_arguments({"_target_": "usernets.Loose", "input_shape": [2]}, [3], 1) == \
        {"_target_": "usernets.Loose", "input_shape": [2]}
    assert net_arguments({"_target_": "usernets.Loose"}, [3], 1) == {"_target_": "usernets.Loose"}
