"""The search space grammar: YAML specs and command-line sweeps -> Optuna distributions -> overrides
that compose into the values they stand for."""

from __future__ import annotations

import optuna
import pytest

from keel.sweep import SearchSpaceError, build_search_space
from keel.sweep.study import SweepConfigError, build_pruner, build_sampler, metric_direction, resolve_direction

D = optuna.distributions


def test_yaml_specs_become_distributions():
    space = build_search_space({
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "data.batch_size": {"type": "int", "low": 32, "high": 128, "step": 32},
        "model.net.hidden": {"type": "categorical", "choices": [[128], [256, 128]]},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "model.net.dropout": [0.0, 0.1],
        "trainer.max_epochs": 7,
    }, [])
    dist = {name: p.distribution() for name, p in space.params.items()}
    assert dist["optimizer.lr"] == D.FloatDistribution(1e-4, 1e-2, log=True)
    assert dist["data.batch_size"] == D.IntDistribution(32, 128, step=32)
    # lists are not valid Optuna choices: stored as their override strings
    assert dist["model.net.hidden"] == D.CategoricalDistribution(["[128]", "[256,128]"])
    assert dist["optimizer"] == D.CategoricalDistribution(["adam", "sgd"])
    assert dist["model.net.dropout"] == D.CategoricalDistribution([0.0, 0.1])
    assert space.fixed == ["trainer.max_epochs=7"]


def test_nested_yaml_keys_are_dotted():
    """`hydra.sweeper.params.optimizer.lr={type:...}` on the command line nests the key."""
    space = build_search_space({"optimizer": {"lr": {"type": "float", "low": 0.1, "high": 0.2}}}, [])
    assert list(space.params) == ["optimizer.lr"]


def test_trial_values_compose_into_the_config(compose_cfg):
    space = build_search_space({
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "model.net.hidden": {"type": "categorical", "choices": [[128], [256, 128]]},
        "model.net.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        "data.batch_size": {"type": "int", "low": 16, "high": 64},
    }, ["trainer.max_epochs=3"])
    values = {"optimizer": "sgd", "optimizer.lr": 2.5e-05 * 10, "model.net.hidden": "[256,128]",
              "model.net.dropout": 0.30000000000000004, "data.batch_size": 48}
    overrides = space.overrides(values)
    assert overrides[0] == "trainer.max_epochs=3"
    assert "model.net.dropout=0.3" in overrides  # float noise of low + k * step rounded away
    cfg = compose_cfg(*overrides)
    assert cfg.optimizer._target_ == "torch.optim.SGD"  # a config group chosen
    assert cfg.optimizer.lr == pytest.approx(2.5e-4)
    assert list(cfg.model.net.hidden) == [256, 128]
    assert cfg.model.net.dropout == 0.3 and cfg.data.batch_size == 48 and cfg.trainer.max_epochs == 3


def test_string_choices_with_special_characters_are_escaped(compose_cfg):
    space = build_search_space({"tags": {"type": "categorical", "choices": [["a b", "c=d"]]}}, [])
    (override,) = space.overrides({"tags": "[a\\ b,c\\=d]"})
    assert list(compose_cfg(override).tags) == ["a b", "c=d"]


def test_command_line_sweeps_become_distributions_and_win_over_yaml():
    space = build_search_space(
        {"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.2}, "model.net.dropout": [0.0, 0.5]},
        ["model=mlp,cnn", "optimizer.lr=tag(log,interval(1e-5,1e-1))", "data.batch_size=range(16,80,16)",
         "trainer.max_epochs=tag(int,interval(2,9))", "model.net.dropout=0.2", "seed=3"],
    )
    dist = {name: p.distribution() for name, p in space.params.items()}
    assert dist["model"] == D.CategoricalDistribution(["mlp", "cnn"])
    assert dist["optimizer.lr"] == D.FloatDistribution(1e-5, 1e-1, log=True)
    assert dist["data.batch_size"] == D.IntDistribution(16, 64, step=16)  # range() excludes its stop
    assert dist["trainer.max_epochs"] == D.IntDistribution(2, 9)
    assert "model.net.dropout" not in dist  # a plain command-line value fixes it
    assert space.fixed == ["model.net.dropout=0.2", "seed=3"]


def test_every_bad_entry_is_reported_at_once():
    with pytest.raises(SearchSpaceError) as e:
        build_search_space({
            "a": {"type": "uniform", "low": 0, "high": 1},
            "b": {"type": "float", "low": 1.0, "high": 0.5},
            "c": {"type": "float", "low": 0.0, "high": 1.0, "log": True},
            "d": {"type": "int", "low": 1.5, "high": 4},
            "e": {"type": "categorical", "choices": []},
            "f": {"type": "float", "low": 0.0, "high": 1.0, "steps": 0.1},
        }, [])
    msg = str(e.value)
    assert msg.startswith("invalid search space (6 problems):")
    for part in ("a: type='uniform': expected one of: float, int, categorical", "b: low=1.0 > high=0.5",
                 "c: log=true needs low > 0", "d: low=1.5: expected an integer", "e: choices=[]: expected a non-empty",
                 "f: unknown field(s) ['steps']"):
        assert part in msg


def test_grid_needs_discrete_values():
    space = build_search_space({"x": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
                                "n": {"type": "int", "low": 1, "high": 3}, "c": ["a", "b"]}, [])
    assert space.grid() == {"x": [0.0, 0.1, 0.2, 0.3], "n": [1, 2, 3], "c": ["a", "b"]}
    with pytest.raises(SearchSpaceError, match="lr: sampler type=grid needs discrete values"):
        build_search_space({"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}, []).grid()


def test_direction_samplers_and_pruners():
    assert metric_direction("val/acc_best") == "maximize" and metric_direction("val/loss_best") == "minimize"
    assert resolve_direction("auto", "val/loss") == "minimize" and resolve_direction("maximize", "val/loss") == "maximize"
    with pytest.raises(SweepConfigError, match="direction='up': expected auto, maximize or minimize"):
        resolve_direction("up", "val/acc")
    assert isinstance(build_sampler({"type": "tpe", "seed": 1, "n_startup_trials": 3}), optuna.samplers.TPESampler)
    grid = build_sampler({"type": "grid", "seed": 0}, grid=lambda: {"x": [1, 2]})
    assert isinstance(grid, optuna.samplers.GridSampler)
    with pytest.raises(SweepConfigError, match=r"sampler.type='cmaes': expected one of: tpe, random, grid"):
        build_sampler({"type": "cmaes"})
    with pytest.raises(SweepConfigError, match="hydra.sweeper.sampler: .*unexpected keyword argument 'n_warmup'"):
        build_sampler({"type": "random", "n_warmup": 3})
    assert isinstance(build_pruner({"type": "median", "n_warmup_steps": 2}), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner({"type": "none"}), optuna.pruners.NopPruner)
    with pytest.raises(SweepConfigError, match="pruner.type='patient'"):
        build_pruner({"type": "patient"})


def test_resumed_random_sampler_does_not_replay_the_first_draws():
    first = build_sampler({"type": "random", "seed": 5})
    resumed = build_sampler({"type": "random", "seed": 5}, seed_offset=2)
    dist = D.FloatDistribution(0, 1)
    draws = [s.sample_independent(None, None, "x", dist) for s in (first, resumed)]  # type: ignore[arg-type]
    assert draws[0] != draws[1]
