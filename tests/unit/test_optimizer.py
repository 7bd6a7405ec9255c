"""optimizer.fused: torch's fused kernel where it can run, torch's default otherwise, clear errors."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from keel.optim import build_optimizer
from keel.optim.optimizer import fused_blocker, has_fused
from keel.fit import build_model

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}


def groups(*tensors):
    return [{"params": [torch.nn.Parameter(t) for t in tensors], "name": "all"}]


def test_auto_uses_the_fused_kernel_on_cpu():
    opt = build_optimizer({**ADAM, "fused": "auto"}, groups(torch.zeros(3)))
    assert opt.param_groups[0]["fused"] is True and opt.param_groups[0]["name"] == "all"


@pytest.mark.parametrize("fused", [False, None])
def test_false_or_absent_keeps_torchs_default(fused):
    cfg = dict(ADAM) if fused is None else {**ADAM, "fused": fused}
    assert not build_optimizer(cfg, groups(torch.zeros(3))).param_groups[0]["fused"]


def test_fused_and_default_take_the_same_steps():
    torch.manual_seed(0)
    w, g = torch.randn(50), torch.randn(50)
    steps = {}
    for fused in (False, True):
        p = torch.nn.Parameter(w.clone())
        opt = build_optimizer({**ADAM, "fused": fused}, [{"params": [p]}])
        for _ in range(5):
            p.grad = g.clone()
            opt.step()
        steps[fused] = p.detach()
    torch.testing.assert_close(steps[True], steps[False], rtol=1e-5, atol=1e-6)


def test_auto_falls_back_where_the_kernel_cannot_run(caplog):
    ints = torch.nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
    assert fused_blocker([ints]) == "a parameter has dtype torch.int64"
    assert "16-mixed" in fused_blocker([torch.zeros(2)], grad_scaler=True, clip=True)
    assert fused_blocker([torch.zeros(2)], grad_scaler=True, clip=False) is None
    with caplog.at_level(logging.INFO, logger="keel"):
        opt = build_optimizer({**ADAM, "fused": "auto"}, groups(torch.zeros(2)), grad_scaler=True, clip=True)
    assert not opt.param_groups[0]["fused"]
    assert "Adam without the fused kernel: trainer.precision=16-mixed" in caplog.text


def test_true_where_it_cannot_run_says_why_and_how_to_fix():
    with pytest.raises(ValueError, match=r"optimizer.fused=true: trainer.precision=16-mixed .* Fix: optimizer.fused=auto"):
        build_optimizer({**ADAM, "fused": True}, groups(torch.zeros(2)), grad_scaler=True, clip=True)
    rmsprop = {"_target_": "torch.optim.RMSprop", "_partial_": True, "lr": 0.01}
    assert not has_fused(instantiate(rmsprop))
    with pytest.raises(ValueError, match="optimizer.fused=true: RMSprop has no fused implementation. Fix: optimizer.fused=false"):
        build_optimizer({**rmsprop, "fused": True}, groups(torch.zeros(2)))
    assert isinstance(build_optimizer({**rmsprop, "fused": "auto"}, groups(torch.zeros(2))), torch.optim.RMSprop)
    with pytest.raises(ValueError, match=r"optimizer.fused='yes': expected auto, true or false"):
        build_optimizer({**ADAM, "fused": "yes"}, groups(torch.zeros(2)))


@pytest.mark.parametrize("name,fused", [("adam", True), ("adamw", True), ("sgd", True), ("rmsprop", False)])
def test_each_optimizer_config_reaches_the_trainer(compose_cfg, tmp_path, name, fused):
    cfg = compose_cfg(f"optimizer={name}", "scheduler=none")
    dm = instantiate(cfg.data)
    dm.setup()
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=2, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(build_model(cfg, dm), datamodule=dm)
    group = trainer.optimizers[0].param_groups[0]
    assert bool(group.get("fused")) is fused
    assert group["lr"] == cfg.optimizer.lr


def test_a_resumed_optimizer_keeps_the_implementation_it_started_with():
    """Optimizer.load_state_dict restores each group's settings, fused included: a checkpoint
    from a run without the fused kernel resumes without it (same arithmetic as it began)."""
    p = torch.nn.Parameter(torch.zeros(4))
    plain = build_optimizer({**ADAM, "fused": False}, [{"params": [p]}])
    p.grad = torch.ones(4)
    plain.step()
    resumed = build_optimizer({**ADAM, "fused": "auto"}, [{"params": [p]}])
    assert resumed.param_groups[0]["fused"] is True
    resumed.load_state_dict(plain.state_dict())
    assert not resumed.param_groups[0]["fused"]
    resumed.step()  # and it steps
