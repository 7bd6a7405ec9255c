"""Config and machine checks: every problem reported at once, with key, value, allowed, fix."""

from __future__ import annotations

import pytest
from omegaconf import open_dict

from keel.config import ConfigError, validate_config
from keel.config.machine import check_machine


def test_default_config_is_valid(compose_cfg):
    cfg = compose_cfg()
    validate_config(cfg)
    check_machine(cfg)


def test_every_problem_is_reported_together(compose_cfg):
    cfg = compose_cfg(
        "data.batch_size=0", "optimizer.lr=-0.1", "trainer.max_epochs=abc", "trainer.precision=8-bit",
        "monitor.metric=val/accuracy", "scheduler=step", "scheduler.interval=batch",
    )
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    msg = str(info.value)
    assert "invalid configuration (6 problems)" in msg
    assert "data.batch_size=0: expected an integer >= 1" in msg
    assert "optimizer.lr=-0.1: expected a number > 0" in msg
    assert "trainer.max_epochs='abc': expected an integer >= 1" in msg
    assert "trainer.precision='8-bit': expected one of: 32-true" in msg
    assert "monitor.metric='val/accuracy': expected a logged metric: train/loss" in msg
    assert "scheduler.interval='batch': expected one of: epoch, step" in msg
    assert msg.count("Fix:") == 6
    assert len(info.value.problems) == 6


def test_missing_required_value(compose_cfg):
    cfg = compose_cfg()
    with open_dict(cfg):
        cfg.data.batch_size = "???"
    with pytest.raises(ConfigError, match=r"data.batch_size is required but not set \(\?\?\?\)"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["data.val_fraction=0.5", "data.test_fraction=0.45"], r"data.val_fraction \+ data.test_fraction = 0.95"),
        (["optimizer=sgd", "optimizer.momentum=0"], r"optimizer.nesterov=true with optimizer.momentum=0"),
        (["ckpt_path=/no/such/file.ckpt"], r"ckpt_path='/no/such/file.ckpt': no such file"),
        (["trainer.devices=0"], r"trainer.devices=0: expected an integer >= 1, 'auto'"),
        (["model.loss.class_weights=[1,-2]"], r"model.loss.class_weights=\[1, -2\]: expected null, 'balanced'"),
        (["model.loss.label_smoothing=1.5"], r"model.loss.label_smoothing=1.5: expected a number in \[0, 1\)"),
        (["optimized_metric=val/nope"], r"optimized_metric='val/nope': expected null or a logged metric"),
        (["data.val_fraction=0"], r"data.val_fraction=0: expected a fraction in \(0, 1\)"),
    ],
)
def test_bad_values_name_key_value_and_fix(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(compose_cfg(*overrides))


def test_unresolvable_interpolation_is_a_config_error(compose_cfg):
    cfg = compose_cfg("optimizer.lr=${nope.lr}")
    with pytest.raises(ConfigError, match="an interpolation cannot be resolved"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["trainer.sync_batchnorm=true"], "SyncBatchNorm works only on GPUs"),
        (["trainer.devices=64"], "trainer.devices=64: a CPU run starts one process per device"),
        (["trainer.accelerator=cpu", "trainer.precision=16-mixed"], "float16 training is not supported on CPU"),
        (["trainer.accelerator=mps"], "Apple MPS is not available"),
    ],
)
def test_machine_checks_before_training(compose_cfg, overrides, match):
    import torch

    if torch.cuda.is_available():
        pytest.skip("these settings are valid on a GPU machine")
    cfg = compose_cfg(*overrides)
    validate_config(cfg)
    with pytest.raises(ConfigError, match=match):
        check_machine(cfg)


def test_validation_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from omegaconf import OmegaConf; from keel.config import validate_config, register_resolvers;"
        "register_resolvers(); "
        "print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
