"""param_groups and build_scheduler, including every conf/scheduler/*.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LRScheduler,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from keel.optim import build_scheduler, param_groups

CONF = Path(__file__).resolve().parents[2] / "conf"


# --------------------------------------------------------------------------- param_groups


def small_net() -> nn.Sequential:
    # 0 conv, 1 batchnorm, 2 relu, 3 flatten, 4 linear, 5 layernorm, 6 linear (no bias), 7 groupnorm
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8, 4),
        nn.LayerNorm(4),
        nn.Linear(4, 4, bias=False),
        nn.GroupNorm(2, 4),
    )
    return net


def ids(params) -> list[int]:
    return [id(p) for p in params]


def test_without_no_decay_one_group_of_all_trainable_params():
    net = small_net()
    net[6].weight.requires_grad_(False)
    groups = param_groups(net, no_decay_bias_norm=False)
    assert len(groups) == 1
    assert groups[0]["name"] == "all"
    assert "weight_decay" not in groups[0]  # keeps the optimizer's configured decay
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert ids(groups[0]["params"]) == ids(trainable)
    assert id(net[6].weight) not in ids(groups[0]["params"])
    assert len(trainable) == len(list(net.parameters())) - 1


def test_no_decay_splits_biases_and_norm_weights():
    net = small_net()
    groups = param_groups(net, no_decay_bias_norm=True)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    decay, no_decay = groups
    assert "weight_decay" not in decay
    assert no_decay["weight_decay"] == 0.0
    assert set(ids(decay["params"])) == {id(net[0].weight), id(net[4].weight), id(net[6].weight)}
    assert set(ids(no_decay["params"])) == {
        id(net[0].bias),
        id(net[1].weight),
        id(net[1].bias),
        id(net[4].bias),
        id(net[5].weight),
        id(net[5].bias),
        id(net[7].weight),
        id(net[7].bias),
    }
    d, nd = ids(decay["params"]), ids(no_decay["params"])
    assert len(d) == len(set(d)) and len(nd) == len(set(nd))
    assert not set(d) & set(nd)  # no parameter in both
    assert sorted(d + nd) == sorted(ids(net.parameters()))  # none lost


def test_no_decay_groups_work_with_a_real_optimizer():
    net = small_net()
    # a tied weight must appear once, or torch rejects the groups
    net.append(nn.Linear(4, 4))
    net[8].weight = net[6].weight
    groups = param_groups(net, no_decay_bias_norm=True)
    opt = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


def test_no_decay_skips_frozen_params():
    net = small_net()
    net[0].bias.requires_grad_(False)
    net[4].weight.requires_grad_(False)
    decay, no_decay = param_groups(net, no_decay_bias_norm=True)
    allids = ids(decay["params"]) + ids(no_decay["params"])
    assert id(net[0].bias) not in allids and id(net[4].weight) not in allids
    assert len(allids) == len([p for p in net.parameters() if p.requires_grad])


def test_no_decay_without_biases_or_norms_gives_one_group():
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 2, bias=False))
    groups = param_groups(net, no_decay_bias_norm=True)
    assert [g["name"] for g in groups] == ["decay"]
    assert ids(groups[0]["params"]) == ids(net.parameters())


# --------------------------------------------------------------------------- build_scheduler


def spec(scheduler: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
    out = {"scheduler": scheduler, "interval": "epoch", "frequency": 1, "monitor": None, "warmup": 0,
           "warmup_start_factor": 0.1}
    out.update(kw)
    return out


def cosine(**kw: Any) -> dict[str, Any]:
    return {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True, "T_max": None,
            "eta_min": 0.01, **kw}


def onecycle(**kw: Any) -> dict[str, Any]:
    return {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "max_lr": 0.5,
            "total_steps": None, **kw}


def plateau(**kw: Any) -> dict[str, Any]:
    return {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True, "mode": "min",
            "factor": 0.5, "patience": 0, **kw}


def sgd(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=lr)


def lr_of(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]


def run(opt: torch.optim.Optimizer, sched: Any, steps: int) -> list[float]:
    """lr before any step, then after each scheduler step."""
    lrs = [lr_of(opt)]
    for _ in range(steps):
        opt.step()  # keeps torch from warning about the call order
        sched.step()
        lrs.append(lr_of(opt))
    return lrs


def cosine_of(sched: Any) -> CosineAnnealingLR:
    if isinstance(sched, SequentialLR):
        sched = sched._schedulers[-1]
    assert isinstance(sched, CosineAnnealingLR)
    return sched


def test_no_scheduler_returns_none():
    opt = sgd()
    assert build_scheduler(spec(None), opt, total_epochs=5, total_steps=50) is None
    assert lr_of(opt) == 1.0


def test_cosine_with_warmup_ramps_then_decays_to_eta_min():
    opt = sgd(lr=1.0)
    out = build_scheduler(spec(cosine(), warmup=2, warmup_start_factor=0.1), opt, total_epochs=10, total_steps=100)
    assert out is not None
    assert out["interval"] == "epoch" and out["frequency"] == 1
    assert "monitor" not in out
    assert isinstance(out["scheduler"], SequentialLR)
    assert cosine_of(out["scheduler"]).T_max == 8

    lrs = run(opt, out["scheduler"], 10)
    assert lrs[0] == pytest.approx(0.1)  # lr * warmup_start_factor
    assert lrs[1] == pytest.approx(0.55)  # linear ramp
    assert lrs[2] == pytest.approx(1.0)  # warmup done: full lr
    decay = lrs[2:]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # then strictly decreasing...
    assert lrs[-1] == pytest.approx(0.01)  # ...to eta_min at the end of the run
    mid = 0.01 + (1.0 - 0.01) * 0.5  # half-way through T_max=8: cos(pi/2) = 0
    assert lrs[2 + 4] == pytest.approx(mid)


def test_cosine_without_warmup_starts_at_lr():
    opt = sgd(lr=0.5)
    out = build_scheduler(spec(cosine()), opt, total_epochs=4, total_steps=40)
    assert isinstance(out["scheduler"], CosineAnnealingLR)
    lrs = run(opt, out["scheduler"], 4)
    assert lrs[0] == 0.5
    assert lrs[-1] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "interval,warmup,expected",
    [("epoch", 0, 7), ("epoch", 2, 5), ("step", 0, 60), ("step", 3, 57), ("epoch", 7, 1), ("epoch", 9, 1)],
)
def test_cosine_null_t_max_resolves_to_the_run_length_minus_warmup(interval, warmup, expected):
    out = build_scheduler(spec(cosine(), interval=interval, warmup=warmup), sgd(), total_epochs=7, total_steps=60)
    assert out["interval"] == interval
    assert cosine_of(out["scheduler"]).T_max == expected
    assert isinstance(out["scheduler"], SequentialLR) == (warmup > 0)


def test_cosine_explicit_t_max_is_kept():
    out = build_scheduler(spec(cosine(T_max=3), warmup=2), sgd(), total_epochs=7, total_steps=60)
    assert cosine_of(out["scheduler"]).T_max == 3


def test_onecycle_null_total_steps_uses_the_run_total_steps():
    opt = sgd(lr=0.5)
    out = build_scheduler(spec(onecycle(), interval="step"), opt, total_epochs=3, total_steps=40)
    sched = out["scheduler"]
    assert isinstance(sched, OneCycleLR)
    assert sched.total_steps == 40
    assert out["interval"] == "step"
    lrs = run(opt, sched, 39)
    assert lrs[0] == pytest.approx(0.5 / 25)  # max_lr / div_factor
    assert max(lrs) == pytest.approx(0.5)
    assert lrs[-1] < lrs[0]  # annealed below the start by the last step


def test_onecycle_explicit_total_steps_is_kept():
    out = build_scheduler(spec(onecycle(total_steps=9), interval="step"), sgd(), total_epochs=3, total_steps=40)
    assert out["scheduler"].total_steps == 9


def test_onecycle_with_epoch_interval_raises():
    with pytest.raises(ValueError, match=r"OneCycleLR steps every batch: set scheduler.interval=step"):
        build_scheduler(spec(onecycle(), interval="epoch"), sgd(), total_epochs=3, total_steps=40)


def test_plateau_returns_monitor_and_cuts_lr_on_stall():
    opt = sgd(lr=1.0)
    out = build_scheduler(spec(plateau(), monitor="val/loss"), opt, total_epochs=5, total_steps=50)
    assert out["monitor"] == "val/loss"
    assert out["interval"] == "epoch" and out["frequency"] == 1
    sched = out["scheduler"]
    assert isinstance(sched, ReduceLROnPlateau)
    opt.step()
    sched.step(1.0)
    assert lr_of(opt) == 1.0
    sched.step(2.0)  # no improvement, patience 0
    assert lr_of(opt) == pytest.approx(0.5)


def test_plateau_with_warmup_raises():
    with pytest.raises(ValueError, match=r"scheduler.warmup=3: ReduceLROnPlateau cannot follow a warmup"):
        build_scheduler(spec(plateau(), monitor="val/loss", warmup=3), sgd(), total_epochs=5, total_steps=50)


@pytest.mark.parametrize("monitor", [None, ""])
def test_plateau_without_monitor_raises(monitor):
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau needs scheduler.monitor"):
        build_scheduler(spec(plateau(), monitor=monitor), sgd(), total_epochs=5, total_steps=50)


def test_step_scheduler_multiplies_by_gamma_every_step_size_epochs():
    opt = sgd(lr=1.0)
    step = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 3, "gamma": 0.1}
    out = build_scheduler(spec(step, frequency=2), opt, total_epochs=10, total_steps=100)
    assert isinstance(out["scheduler"], StepLR)
    assert out["frequency"] == 2
    lrs = run(opt, out["scheduler"], 7)
    assert lrs[:3] == [1.0, 1.0, 1.0]
    assert lrs[3:6] == pytest.approx([0.1, 0.1, 0.1])
    assert lrs[6:] == pytest.approx([0.01, 0.01])


def test_step_scheduler_after_warmup():
    opt = sgd(lr=1.0)
    step = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 2, "gamma": 0.5}
    out = build_scheduler(spec(step, warmup=1, warmup_start_factor=0.25), opt, total_epochs=10, total_steps=100)
    lrs = run(opt, out["scheduler"], 5)
    assert lrs == pytest.approx([0.25, 1.0, 1.0, 0.5, 0.5, 0.25])


# --------------------------------------------------------------------------- real conf/scheduler files

CONTEXT = {"trainer": {"max_epochs": 6}, "optimizer": {"lr": 0.003}, "monitor": {"mode": "max", "metric": "val/acc"}}
SCHEDULER_FILES = sorted((CONF / "scheduler").glob("*.yaml"))


def load_scheduler_yaml(path: Path) -> dict[str, Any]:
    """The file as the `scheduler` group composes it: under the key `scheduler` of the root
    config, its interpolations resolved against CONTEXT (the group's own `monitor` key would
    clash with the root `monitor` if it were merged at the root)."""
    merged = OmegaConf.merge(OmegaConf.create(CONTEXT), {"scheduler": OmegaConf.load(path)})
    data = OmegaConf.to_container(merged, resolve=True)
    return data["scheduler"]


def test_all_expected_scheduler_files_exist():
    assert {"none", "cosine", "onecycle", "plateau", "step"} <= {p.stem for p in SCHEDULER_FILES}


EXPECTED: dict[str, Any] = {
    "none": None,
    "cosine": (SequentialLR, "epoch"),
    "onecycle": (OneCycleLR, "step"),
    "plateau": (ReduceLROnPlateau, "epoch"),
    "step": (StepLR, "epoch"),
}


@pytest.mark.parametrize("path", SCHEDULER_FILES, ids=lambda p: p.stem)
def test_real_scheduler_yaml_builds_with_adam(path):
    cfg = load_scheduler_yaml(path)
    assert set(cfg) == {"scheduler", "interval", "frequency", "monitor", "warmup", "warmup_start_factor"}
    opt = torch.optim.Adam(nn.Linear(2, 1).parameters(), lr=0.003)
    out = build_scheduler(cfg, opt, total_epochs=CONTEXT["trainer"]["max_epochs"], total_steps=60)
    if path.stem in EXPECTED and EXPECTED[path.stem] is None:
        assert out is None
        return
    if cfg["scheduler"] is None:
        assert out is None
        return
    assert out["interval"] == cfg["interval"]
    assert out["frequency"] == cfg["frequency"]
    assert isinstance(out["scheduler"], (LRScheduler, ReduceLROnPlateau))
    if path.stem in EXPECTED:
        cls, interval = EXPECTED[path.stem]
        assert isinstance(out["scheduler"], cls)
        assert out["interval"] == interval
    if path.stem == "cosine":
        assert cosine_of(out["scheduler"]).T_max == 6 - cfg["warmup"]
        assert lr_of(opt) == pytest.approx(0.003 * cfg["warmup_start_factor"])
        lrs = run(opt, out["scheduler"], 6)
        assert lrs[cfg["warmup"]] == pytest.approx(0.003)
        assert lrs[-1] == pytest.approx(cfg["scheduler"]["eta_min"])
    if path.stem == "onecycle":
        assert out["scheduler"].total_steps == 60
        assert opt.param_groups[0]["max_lr"] == pytest.approx(0.003)  # ${optimizer.lr}
        run(opt, out["scheduler"], 60)  # the whole run steps without running past the cycle
    if path.stem == "plateau":
        assert out["monitor"] == "val/acc"  # ${monitor.metric}
        assert out["scheduler"].mode == "max"  # ${monitor.mode}
    else:
        assert "monitor" not in out
    if path.stem == "step":
        lrs = run(opt, out["scheduler"], cfg["scheduler"]["step_size"])
        assert lrs[-2] == pytest.approx(0.003)
        assert lrs[-1] == pytest.approx(0.003 * cfg["scheduler"]["gamma"])


def test_onecycle_refuses_an_extra_warmup():
    with pytest.raises(ValueError, match=r"scheduler.warmup=5: OneCycleLR warms up itself \(pct_start\)"):
        build_scheduler(spec(onecycle(), interval="step", warmup=5), sgd(), total_epochs=1, total_steps=20)


def test_unknown_interval_is_refused():
    with pytest.raises(ValueError, match=r"scheduler.interval='steps': expected 'epoch' or 'step'"):
        build_scheduler(spec(cosine(), interval="steps"), sgd(), total_epochs=5, total_steps=50)
