"""Config and machine checks: every problem reported at once, with key, value, allowed, fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from keel.config import ConfigError, validate_config, validate_export_config
from keel.config.entry import hydra_problems, user_error_message
from keel.config.machine import check_machine, torch_build_info

CONF = Path(__file__).resolve().parents[2] / "conf"


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
    assert "monitor.metric='val/accuracy': expected auto or a metric that classification logs: train/loss" in msg
    assert "scheduler.interval='batch': expected one of: epoch, step" in msg
    assert msg.count("Fix:") == 6
    assert len(info.value.problems) == 6


def test_train_metrics_values_and_unlogged_train_metrics(compose_cfg):
    validate_config(compose_cfg("model.train_metrics=all"))
    validate_config(compose_cfg("model.train_metrics=[auroc,loss]", "monitor.metric=train/auroc"))
    validate_config(compose_cfg("debug=overfit"))  # monitors train/loss, optimizes train/acc: both logged
    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg("model.train_metrics=[loss,accuracy]"))
    assert ("model.train_metrics=['loss', 'accuracy']: unknown 'accuracy' for classification; expected all or a "
            "list of loss, acc, f1, precision, recall, auroc. Fix: e.g. model.train_metrics=[loss,acc]") in str(info.value)
    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg("monitor.metric=train/auroc", "optimized_metric=train/f1"))
    msg = str(info.value)
    assert ("monitor.metric='train/auroc' is not logged: model.train_metrics=['loss', 'acc'] leaves out auroc. "
            "Fix: model.train_metrics=all (or add auroc to the list), or monitor.metric=val/auroc") in msg
    assert "optimized_metric='train/f1' is not logged" in msg and len(info.value.problems) == 2
    # scheduler=plateau monitors ${monitor.metric}: one problem, not two
    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg("scheduler=plateau", "monitor.metric=train/recall"))
    assert len(info.value.problems) == 1 and "monitor.metric='train/recall' is not logged" in str(info.value)
    # a model config written before the setting existed gets the Classifier's default
    cfg = compose_cfg("monitor.metric=train/auroc")
    with open_dict(cfg):
        del cfg.model["train_metrics"]
    with pytest.raises(ConfigError, match=r"monitor.metric='train/auroc' is not logged: model.train_metrics="):
        validate_config(cfg)


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
        (["ckpt_path=/no/such/file.ckpt"], r"ckpt_path='/no/such/file.ckpt': no such file; expected a .ckpt file"),
        (["trainer.devices=0"], r"trainer.devices=0: expected an integer >= 1, 'auto'"),
        (["model.loss.class_weights=[1,-2]"], r"model.loss.class_weights=\[1, -2\]: expected null, 'balanced'"),
        (["model.loss.label_smoothing=1.5"], r"model.loss.label_smoothing=1.5: expected a number in \[0, 1\)"),
        (["callbacks.progress_bar.refresh_rate=-1"], r"callbacks.progress_bar.refresh_rate=-1: expected an integer >= 0"),
        (["optimized_metric=val/nope"], r"optimized_metric='val/nope': expected null, auto or a metric that classification logs"),
        (["data.val_fraction=0"], r"data.val_fraction=0: expected a fraction in \(0, 1\)"),
        (["optimizer.fused=yes"], r"optimizer.fused='yes': expected auto, true or false. Fix: e.g. optimizer.fused=auto"),
        (["optimizer.fused=1"], r"optimizer.fused=1: expected auto, true or false"),
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
    if not _cpu_only_torch():
        pytest.skip("a GPU-capable torch build: these settings may be valid here")
    cfg = compose_cfg(*overrides)
    validate_config(cfg)
    with pytest.raises(ConfigError, match=match):
        check_machine(cfg)


def _cpu_only_torch() -> bool:
    """A CPU-only torch build (and no Apple MPS): no GPU can be there."""
    info = torch_build_info()
    return info is not None and not info.get("cuda") and not info.get("hip") and sys.platform != "darwin"


def test_validation_and_cpu_machine_checks_do_not_import_torch():
    if not _cpu_only_torch():
        pytest.skip("a GPU-capable torch build: the machine check asks torch for its devices")
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from keel.config import ConfigError, register_resolvers, validate_config\n"
        "from keel.config.machine import check_machine\n"
        "register_resolvers()\n"
        f"with initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'):\n"
        "    good = compose(config_name='train', overrides=['trainer.devices=64', 'paths.output_dir=x'])\n"
        "    bad = compose(config_name='train', overrides=['data.batch_size=0', 'paths.output_dir=x'])\n"
        "validate_config(good)\n"
        "for check, cfg in ((validate_config, bad), (check_machine, good)):\n"
        "    try:\n"
        "        check(cfg)\n"
        "    except ConfigError as e:\n"
        "        print(e.problems[0].split(':')[0])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["data.batch_size=0", "trainer.devices=64", "[]"]


# --------------------------------------------------------------------------- files, more keys, export.py


def test_files_the_run_reads_must_exist(compose_cfg, tmp_path):
    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg("data=csv", "data.path=no/such.csv", "data.target=label", "ckpt_path=" + str(tmp_path)))
    msg = str(info.value)
    assert "invalid configuration (2 problems)" in msg
    assert f"data.path='no/such.csv': no such file (relative to {Path.cwd()}); expected a .csv/.tsv/.parquet file" in msg
    assert f"ckpt_path={str(tmp_path)!r}: a folder, not a file; expected a .ckpt file written by keel" in msg
    with pytest.raises(ConfigError, match=r"data.root='/no/such/idx': no such folder; expected a folder holding the IDX"):
        validate_config(compose_cfg("data=mnist", "data.root=/no/such/idx"))


def test_a_contract_file_must_exist_and_parse(compose_cfg, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("a,label\n1,0\n")
    cfg = compose_cfg("data=csv", f"data.path={table}", "data.target=label", "data.contract=no/such.yaml")
    with pytest.raises(ConfigError, match=r"data.contract='no/such.yaml': no such file .*; expected a contract YAML"):
        validate_config(cfg)
    bad = tmp_path / "c.yaml"
    bad.write_text("kind: table\nname: t\ntarget: label\nclasses: [0]\ncolumns: {a: {dtype: float64}}\n")
    with pytest.raises(ConfigError, match=r"data.contract: invalid table contract: classes=\[0\]: expected a list of at "
                                          r"least 2 label values\. Fix: correct the contract"):
        validate_config(compose_cfg("data=csv", f"data.path={table}", "data.target=label", f"data.contract={bad}"))
    bad.write_text("kind: table\n  name: [\n")
    with pytest.raises(ConfigError, match=r"data.contract: .*c.yaml: not valid YAML"):
        validate_config(compose_cfg("data=csv", f"data.path={table}", "data.target=label", f"data.contract={bad}"))


def test_required_values_name_an_example_fix(compose_cfg):
    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg("data=csv"))
    assert info.value.problems == [
        "data.path is required but not set (???). Fix: add data.path=my.csv to the command line",
        "data.target is required but not set (???). Fix: add data.target=label to the command line",
    ]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model.net.dropout=1.5"], r"model.net.dropout=1.5: expected a number in \[0, 1\)"),
        (["model.net.hidden=[64,0]"], r"model.net.hidden=\[64, 0\]: expected a non-empty list of layer widths >= 1"),
        (["model.net.activation=tanh"], r"model.net.activation='tanh': expected one of: relu, gelu, silu"),
        (["model=cnn", "model.net.norm=layer"], r"model.net.norm='layer' with model=cnn: expected batch or none"),
        (["data.drift.bins=1"], r"data.drift.bins=1: expected an integer >= 2"),
        (["data.drift.psi_warn=0.5"], r"data.drift.psi_warn=0.5 > data.drift.psi_alert=0.25: expected warn <= alert"),
        (["callbacks.early_stopping.patience=-1"], r"callbacks.early_stopping.patience=-1: expected an integer >= 0"),
        (["callbacks.quantize.mode=fast"], r"callbacks.quantize.mode='fast': expected one of: auto, dynamic, static"),
        (["callbacks.onnx_export.atol=-1"], r"callbacks.onnx_export.atol=-1: expected a number >= 0"),
    ],
)
def test_model_data_and_callback_values_are_checked(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(compose_cfg(*overrides))


def _compose_export(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from keel.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="export", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = "unused"
    return cfg


def test_export_config_is_checked_before_export(tmp_path):
    with pytest.raises(ConfigError) as info:
        validate_export_config(_compose_export())
    assert info.value.problems == [
        "ckpt_path is required but not set (???). Fix: add "
        "ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt to the command line"
    ]
    with pytest.raises(ConfigError) as info:
        validate_export_config(_compose_export("ckpt_path=no/such.ckpt", "quantize_int8=maybe",
                                               "callbacks.quantize.max_accuracy_drop=2"))
    msg = str(info.value)
    assert "invalid configuration (3 problems)" in msg
    assert "quantize_int8='maybe': expected true or false" in msg
    assert "callbacks.quantize.max_accuracy_drop=2: expected a fraction in [0, 1]" in msg
    assert "ckpt_path='no/such.ckpt': no such file" in msg
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    validate_export_config(_compose_export(f"ckpt_path={ckpt}"))


# --------------------------------------------------------------------------- Hydra's own errors


def _hydra_error(*overrides: str) -> Exception:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose(config_name="train", overrides=list(overrides))
    except Exception as e:
        return e
    finally:
        GlobalHydra.instance().clear()
    raise AssertionError(f"{overrides} composed")


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["model=transformer"], "model=transformer: no option 'transformer' in config group 'model'; expected one of: "
                                "cnn, custom, mlp, resnet, rnn. Fix: e.g. model=cnn, or add your own conf/model/transformer.yaml"),
        (["experiment=digits_cnm"], "experiment=digits_cnm: no option 'digits_cnm' in config group 'experiment'; "
                                    "expected one of: digits_cnn. Fix: experiment=digits_cnn, or add your own "
                                    "conf/experiment/digits_cnm.yaml"),
        (["trainer.max_epoch=3"], "trainer.max_epoch=3: no key 'trainer.max_epoch' in the config (expected a key "
                                  "under 'trainer': _target_, default_root_dir, accelerator, devices, num_nodes, "
                                  "strategy, precision, max_epochs, min_epochs, gradient_clip_val, "
                                  "gradient_clip_algorithm, accumulate_grad_batches, deterministic, benchmark, "
                                  "sync_batchnorm, ...). Fix: trainer.max_epochs=3 (did you mean trainer.max_epochs?)"),
        (["sed=3"], "sed=3: no key 'sed' in the config (expected a key at the top level: task_name, tags, "
                    "console_log, task, seed, run_dir, ckpt_path, monitor, optimized_metric, data, model, optimizer, "
                    "scheduler, trainer, callbacks, ...). Fix: seed=3 (did you mean seed?)"),
        (["foo=1"], "foo=1: no key 'foo' in the config (expected a key at the top level: task_name, tags, "
                    "console_log, task, seed, run_dir, ckpt_path, monitor, optimized_metric, data, model, optimizer, "
                    "scheduler, trainer, callbacks, ...). Fix: check the spelling (`python train.py --cfg job` prints every "
                    "key), or add a new key with +foo=1"),
        (["+seed=3"], "+seed=3: 'seed' is already in the config ('+' adds a new key). Fix: seed=3"),
        (["model=mlp,cnn"], "model=mlp,cnn: several values for one run. Fix: add -m (--multirun) to sweep over them, "
                            "or write key=[a,b] for a list value, or key='a,b' for text"),
        (["optimizer.lr=[0.1"], "'optimizer.lr=[0.1': not a valid override (no viable alternative at input '[0.1'). "
                                "Expected GROUP=OPTION, KEY=VALUE, +KEY=VALUE (add), ++KEY=VALUE (add or set) or ~KEY "
                                "(delete). Fix: close brackets and quotes, or quote a value that holds spaces, commas, "
                                "brackets or '=' (e.g. \"data.path='my file.csv'\"); grammar: "
                                "https://hydra.cc/docs/advanced/override_grammar/basic/"),
    ],
    ids=["group-option", "experiment", "nested-key", "top-key-typo", "unknown-key", "append-existing",
         "sweep-without-m", "parse-error"],
)
def test_hydra_errors_become_one_problem_with_the_fix(overrides, expected):
    assert hydra_problems(_hydra_error(*overrides), overrides) == [expected]


class _Takes:
    def __init__(self, max_epochs: int = 1) -> None:
        self.max_epochs = max_epochs


def test_a_key_added_with_plus_that_the_class_does_not_take_is_a_config_error():
    from hydra.utils import instantiate

    cfg = OmegaConf.create({"trainer": {"_target_": f"{__name__}._Takes", "max_epoch": 3}})
    with pytest.raises(Exception) as info:
        instantiate(cfg.trainer)
    assert user_error_message(info.value, ["+trainer.max_epoch=3"]) == (
        "invalid configuration (1 problem):\n  - trainer.max_epoch: not an argument of _Takes.__init__. Fix: check "
        "the spelling (`python train.py --cfg job` shows the composed config) or remove +trainer.max_epoch"
    )


def test_unknown_trainer_keys_are_refused_before_lightning_is_imported(compose_cfg):
    from keel.config.validate import lightning_trainer_arguments

    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg("+trainer.max_epoch=3", "+trainer.foo=1"))
    assert info.value.problems == [
        "trainer.max_epoch: not an argument of Lightning's Trainer. Fix: trainer.max_epochs=... "
        "(`python train.py --cfg job` shows the composed config)",
        "trainer.foo: not an argument of Lightning's Trainer. Fix: remove +trainer.foo "
        "(`python train.py --cfg job` shows the composed config)",
    ]
    # read from Lightning's source without importing it: the same names its signature has
    import inspect

    import lightning

    assert lightning_trainer_arguments() == set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    for group in ("default", "cpu", "gpu", "ddp", "fsdp"):  # every trainer config only uses real arguments
        cfg = compose_cfg(f"trainer={group}")
        assert set(cfg.trainer) - {"_target_"} <= lightning_trainer_arguments(), group


def test_keel_errors_pass_through_and_crashes_are_left_to_hydra():
    assert user_error_message(ConfigError(["seed=-1: expected an integer >= 0"]), []).startswith("invalid configuration")
    assert user_error_message(RuntimeError("training crashed"), []) is None
    assert hydra_problems(RuntimeError("training crashed"), []) is None


@pytest.mark.parametrize("overrides,expected", [
    (["model=rnn", "model.net.cell=transformer"], "model.net.cell='transformer': expected one of: gru, lstm"),
    (["model=rnn", "model.net.hidden_size=0"], "model.net.hidden_size=0: expected an integer >= 1"),
    (["data=digits_seq", "data.layout=grid"], "data.layout='grid': expected one of: image ([1, 8, 8]), sequence"),
])
def test_rnn_and_sequence_keys_are_checked(compose_cfg, overrides, expected):
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg(*overrides))
    assert any(p.startswith(expected) for p in e.value.problems), e.value.problems


def test_rnn_rules_leave_a_users_own_net_alone(compose_cfg):
    # a user's net may call something else a "cell": keel's rnn rules check keel's RNN only
    cfg = compose_cfg("model=custom", "model.net._target_=keel.models.nets.MLP", "+model.net.cell=transformer")
    problems = []
    try:
        validate_config(cfg)
    except ConfigError as e:
        problems = e.problems
    assert not [p for p in problems if p.startswith("model.net.cell")], problems
