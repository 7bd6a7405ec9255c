"""Every file under conf/ is composed and instantiated here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from keel.data.contract import contract_from_dict, load_contract_spec
from keel.config import ConfigError, validate_config
from keel.config.machine import check_machine
from keel.optim import build_scheduler
from keel.fit import build_model
from keel.fit import instantiate_group as _instantiate_group

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ["data", "data/contract", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths", "hydra", "hydra/job_logging", "experiment", "debug", "hparams_search"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL = [(g, o) for g in GROUPS for o in _options(g)]


def test_every_config_file_is_covered():
    on_disk = {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")} - {"train.yaml", "export.yaml", "eval.yaml"}
    covered = {f"{g}/{o}.yaml" for g, o in ALL}
    assert on_disk == covered, f"untested config files: {sorted(on_disk - covered)}"


_DIGITS_CONTRACT = {"kind": "tensor", "name": "digits", "shape": [1, 8, 8], "dtype": "float32", "range": [0.0, 16.0],
                    "finite": True, "classes": list(range(10))}


def _data_files(group: str, option: str, tmp_path: Path) -> list[str]:
    """Tiny local files for data configs that read the user's files; their overrides.

    A config may bring its own maker: ``tests/unit/config_inputs/<group>_<option>.py`` with
    ``overrides(tmp_path) -> list[str]`` (one file per config, so configs added side by side
    never edit the same lines here)."""
    maker = Path(__file__).parent / "config_inputs" / f"{group.replace('/', '_')}_{option}.py"
    if maker.is_file():
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"config_inputs_{group.replace('/', '_')}_{option}", maker)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return list(module.overrides(tmp_path))
    if group == "data" and option == "mnist":
        from keel.data.idx import write_idx

        rng = np.random.default_rng(0)
        for name, n in (("train", 200), ("t10k", 50)):
            write_idx(tmp_path / f"{name}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            write_idx(tmp_path / f"{name}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
        return [f"data.root={tmp_path}"]
    if group == "data" and option == "csv":
        rng = np.random.default_rng(0)
        df = pd.DataFrame({"a": rng.normal(size=300), "b": rng.choice(["x", "y"], 300), "label": rng.integers(0, 3, 300)})
        df.to_csv(tmp_path / "t.csv", index=False)
        return [f"data.path={tmp_path / 't.csv'}", "data.target=label"]
    if group == "data/contract":
        return ["data=diabetes" if option == "diabetes" else "data=breast_cancer"]
    if group == "data" and option == "custom":  # the user's class and a contract file outside conf/
        import yaml

        (tmp_path / "digits.yaml").write_text(yaml.safe_dump(dict(_DIGITS_CONTRACT)))
        return ["data._target_=keel.data.DigitsDataModule", f"data.contract={tmp_path / 'digits.yaml'}"]
    if group == "model" and option == "custom":  # the user names their class; any importable nn.Module
        return ["model.net._target_=keel.models.nets.MLP"]
    return []


@pytest.fixture(scope="module")
def digits():
    """One set-up digits DataModule shared by the tests of this module."""
    from keel.config import register_resolvers

    register_resolvers()
    cfg = OmegaConf.load(CONF / "data" / "digits.yaml")
    cfg.seed = 0
    cfg.task = "auto"
    dm = instantiate(cfg)
    dm.setup()
    return dm


@pytest.mark.parametrize("group,option", ALL, ids=[f"{g}/{o}" for g, o in ALL])
def test_config_composes_and_instantiates(compose_cfg, digits, group, option, tmp_path):
    overrides = [] if group in ("paths", "hydra") else [f"{group}={option}"]
    overrides += _data_files(group, option, tmp_path)
    cfg = compose_cfg(*overrides)
    if group == "trainer" and option in ("gpu", "fsdp") and not torch.cuda.is_available():
        validate_config(cfg)
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu: no CUDA GPU is visible"):
            check_machine(cfg)
        return  # fsdp: its strategy is instantiated by test_fsdp_strategy_config below
    validate_config(cfg)
    check_machine(cfg)

    if group in ("data", "data/contract"):
        dm = instantiate(cfg.data)
        dm.setup()
        if isinstance(cfg.data.contract, str):  # a contract file given by path
            assert dm.contract.to_dict() == contract_from_dict(load_contract_spec(cfg.data.contract)).to_dict()
        elif cfg.data.contract is not None:
            assert dm.contract.num_classes == len(cfg.data.contract.get("classes") or ())
        assert dm.task == cfg.task  # the task resolved from the config is the data's
        x, y = next(iter(dm.train_dataloader()))
        assert list(x.shape[1:]) == list(dm.contract.shape) and len(x) == cfg.data.batch_size
        model = build_model(cfg, dm)
        if dm.task == "regression":
            assert model(x).shape == (len(x),) and y.dtype == torch.float32
        else:
            assert model(x).shape == (len(x), dm.contract.num_classes)
        return

    model = build_model(cfg, digits)
    x, y = next(iter(digits.train_dataloader()))
    assert model(x).shape == (len(x), digits.contract.num_classes)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)
    sched = build_scheduler(OmegaConf.to_container(cfg.scheduler, resolve=True), optimizer, 10, 200)
    assert (sched is None) == (cfg.scheduler.scheduler is None)

    callbacks = _instantiate_group(cfg.callbacks, "callbacks")
    loggers = _instantiate_group(cfg.logger, "logger")
    if group == "callbacks":
        assert len(callbacks) == len(cfg.callbacks or {})
        names = {type(c).__name__ for c in callbacks}
        training = {"ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "ProgressBar", "EpochSummary", "Throughput",
                    "TensorBoardViews"}
        expected = {"default": training | {"Explanations", "OnnxExport", "Quantize"}, "training": training, "none": set(),
                    "explain": {"Explanations"}}
        if option in expected:
            assert names == expected[option]
    if group == "logger":
        assert len(loggers) == (0 if option == "none" else 1)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_checkpointing=any(
        type(c).__name__ == "ModelCheckpoint" for c in callbacks))
    assert trainer.max_epochs == cfg.trainer.max_epochs
    if group == "debug":
        assert trainer.limit_train_batches == cfg.trainer.limit_train_batches


def test_fsdp_strategy_config(compose_cfg):
    """trainer=fsdp builds Lightning's FSDPStrategy: one-file checkpoints (what resume and export read)
    and a size-based wrap policy that makes every large submodule its own shard unit."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy

    cfg = compose_cfg("trainer=fsdp")
    validate_config(cfg)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy._state_dict_type == "full" and not strategy.cpu_offload.offload_params
    wrap = strategy.kwargs["auto_wrap_policy"]
    assert wrap(torch.nn.Linear(1000, 1000), recurse=False, nonwrapped_numel=1_001_000)
    assert not wrap(torch.nn.Linear(10, 10), recurse=False, nonwrapped_numel=110)


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where no CUDA GPU is visible")
@pytest.mark.parametrize("overrides", [["trainer=fsdp", "trainer.accelerator=cpu"],
                                       ["trainer.strategy=fsdp", "trainer.devices=2"]])
def test_fsdp_is_refused_without_cuda(compose_cfg, overrides):
    """torch's FSDP needs CUDA (Lightning and torch both refuse CPU): one message naming the fix."""
    cfg = compose_cfg(*overrides)
    validate_config(cfg)
    with pytest.raises(ConfigError, match=r"trainer.strategy=FSDP on trainer.accelerator=(cpu|auto): .*"
                                          r"does not run on CPU.*Fix: run trainer=fsdp where CUDA GPUs are visible"):
        check_machine(cfg)


def test_hydra_run_dirs_are_unique_per_process(compose_cfg):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    from keel.config.resolvers import _uid

    uid = _uid()
    assert re.fullmatch(r"[0-9a-f]{6}", uid)
    assert re.fullmatch(rf"outputs/train/runs/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_{uid}", cfg.hydra.run.dir)
    assert re.fullmatch(rf"outputs/train/multiruns/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_{uid}", cfg.hydra.sweep.dir)


def test_experiment_overrides_groups(compose_cfg):
    cfg = compose_cfg("experiment=digits_cnn")
    assert cfg.model.net._target_ == "keel.models.nets.CNN"
    assert cfg.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.scheduler.scheduler._target_ == "torch.optim.lr_scheduler.OneCycleLR"
    assert cfg.model.no_decay_bias_norm is True


def test_model_shapes_come_from_the_data_contract(compose_cfg):
    cfg = compose_cfg("model=cnn", "data.contract.classes=[0,1,2]", "data.contract.shape=[3,16,16]")
    assert list(cfg.model.net.input_shape) == [3, 16, 16]
    assert cfg.model.net.num_classes == 3


def test_resnet_config_builds_the_documented_net_for_rgb_images(compose_cfg):
    from keel.models.nets import ResNet

    cfg = compose_cfg("model=resnet", "data.contract.classes=[0,1,2,3,4,5,6,7,8,9]", "data.contract.shape=[3,32,32]")
    net = instantiate(cfg.model.net)
    assert isinstance(net, ResNet)
    # the count conf/model/resnet.yaml states (width 32, blocks [1, 1, 1, 1], 10 classes)
    assert sum(p.numel() for p in net.parameters()) == 1_228_970
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_export_config_composes_with_the_callback_options(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from keel.export.build import ExportOptions, QuantizeOptions

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="export", overrides=[f"ckpt_path={tmp_path / 'x.ckpt'}", "paths.output_dir=/tmp/x"])
    GlobalHydra.instance().clear()
    assert cfg.bundle_dir is None and cfg.quantize_int8 is True
    for key, cls in (("onnx_export", ExportOptions), ("quantize", QuantizeOptions)):
        node = OmegaConf.to_container(cfg.callbacks[key], resolve=True)
        cb = instantiate(cfg.callbacks[key])
        opts = {k: v for k, v in node.items() if k not in ("_target_", "bundle_dir")}
        assert cb.options == cls(**opts)
