"""model.channels_last: conv weights in channels-last layout while fitting (auto on one CPU process),
the same training as the default layout, back to the default layout after fit, and optimizer
state re-laid-out to match its parameters (fused kernels read them as flat memory)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from keel.config import ConfigError, validate_config
from keel.models.channels_last import resolve_channels_last
from keel.models.nets import CNN, MLP
from keel.optim import align_state_layout
from keel.fit import build_model

CL = torch.channels_last


def _cnn() -> nn.Module:
    return CNN(input_shape=[1, 8, 8], num_classes=3, channels=[4])


@pytest.mark.parametrize(
    ("setting", "device", "world", "expected"),
    [("auto", "cpu", 1, True), ("auto", "cuda", 1, False), ("auto", "cpu", 2, False), (True, "cuda", 4, True),
     (False, "cpu", 1, False)],
)
def test_resolution(setting, device, world, expected):
    use, why = resolve_channels_last(setting, _cnn(), device, world)
    assert use is expected
    if setting == "auto":
        assert why.startswith("auto: ")
        assert (device in why) == (device != "cpu") and ("DDP" in why) == (world > 1)


def test_no_4d_weights_no_change_and_bad_values_refused():
    assert resolve_channels_last("auto", MLP(input_shape=[5], num_classes=2, hidden=[4]), "cpu", 1) == (False, "")
    with pytest.raises(ValueError, match=r"model.channels_last='yes': expected auto, true or false"):
        resolve_channels_last("yes", _cnn(), "cpu", 1)
    with pytest.raises(ValueError, match="expected auto, true or false"):
        resolve_channels_last(1, _cnn(), "cpu", 1)  # not the boolean true


def test_config_rule(compose_cfg):
    cfg = compose_cfg("model=cnn", "model.channels_last=sometimes")
    with pytest.raises(ConfigError, match=r"model.channels_last.*sometimes.*auto, true or false"):
        validate_config(cfg)
    validate_config(compose_cfg("model=cnn", "model.channels_last=false"))


class _Layouts(L.Callback):
    """Records whether every 4D weight (and its Adam moments) is channels-last at each step."""

    def __init__(self) -> None:
        self.params: list[bool] = []
        self.state: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        weights = [p for p in pl_module.net.parameters() if p.dim() == 4]
        # channels-last throughout (a weight with one input channel is both layouts at once)
        self.params.append(all(p.is_contiguous(memory_format=CL) for p in weights)
                           and any(not p.is_contiguous() for p in weights))
        opt = trainer.optimizers[0]
        self.state.append(all(v.stride() == p.stride() for p in weights
                              for v in opt.state.get(p, {}).values() if v.dim() == 4))


def _fit(compose_cfg, tmp_path, setting, epochs=2, ckpt_path=None, name="run"):
    cfg = compose_cfg("model=cnn", f"model.channels_last={str(setting).lower()}", "model.net.channels=[8]",
                      "trainer.limit_train_batches=4", "trainer.limit_val_batches=1")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    L.seed_everything(0, verbose=False)
    model = build_model(cfg, dm)
    layouts = _Layouts()
    trainer = L.Trainer(default_root_dir=tmp_path / name, accelerator="cpu", devices=1, max_epochs=epochs,
                        limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[layouts])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, layouts, trainer


def test_fits_in_channels_last_like_the_default_layout(compose_cfg, tmp_path):
    plain, plain_layouts, _ = _fit(compose_cfg, tmp_path, False, name="plain")
    fast, fast_layouts, _ = _fit(compose_cfg, tmp_path, "auto", name="fast")
    assert fast_layouts.params == [True] * 8 and fast_layouts.state == [True] * 8
    assert plain_layouts.params == [False] * 8
    # back in the default layout after fit; the same training to float tolerance (other kernels)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert b.is_contiguous(), name
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_across_layouts_re_lays_out_the_optimizer_state(compose_cfg, tmp_path):
    _, _, trainer = _fit(compose_cfg, tmp_path, True, epochs=1, name="first")
    ckpt = tmp_path / "first.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["state"]
    assert any(v.dim() == 4 and not v.is_contiguous() for s in saved.values() for v in s.values()
               if isinstance(v, torch.Tensor))  # the moments were saved channels-last
    _, layouts, _ = _fit(compose_cfg, tmp_path, False, epochs=2, ckpt_path=ckpt, name="resumed")
    assert layouts.params == [False] * 4 and layouts.state == [True] * 4


def test_align_state_layout_keeps_fused_adam_exact():
    torch.manual_seed(0)
    w, g = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)

    def two_steps(channels_last: bool, state_from_other_layout: bool, align: bool) -> torch.Tensor:
        fmt = CL if channels_last else torch.contiguous_format
        p = nn.Parameter(w.clone().contiguous(memory_format=fmt))
        opt = torch.optim.Adam([p], lr=0.1, fused=True)
        p.grad = g.clone().contiguous(memory_format=fmt)
        opt.step()
        if state_from_other_layout:
            other = torch.contiguous_format if channels_last else CL
            for key in ("exp_avg", "exp_avg_sq"):
                opt.state[p][key] = opt.state[p][key].contiguous(memory_format=other)
        if align:
            assert align_state_layout(opt) == (2 if state_from_other_layout else 0)
        p.grad = (0.5 * g).contiguous(memory_format=fmt)
        opt.step()
        return p.detach().contiguous()

    reference = two_steps(False, False, False)
    assert (two_steps(True, True, False) - reference).abs().max() > 1e-2  # the silent error it prevents
    torch.testing.assert_close(two_steps(True, True, True), reference)
    torch.testing.assert_close(two_steps(False, True, True), reference)
