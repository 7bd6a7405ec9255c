"""What a person reads during a run: the console filter and format (keel.run.console), the
per-epoch and early-stopping lines (keel.callbacks.epoch_summary), TensorBoard run names, the
curated HParams set and the drift table (keel.loggers.tensorboard, keel.run.report)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from keel.callbacks.epoch_summary import EpochSummary, epoch_line, improved, stop_line
from keel.loggers.tensorboard import drift_table, feature_statistics, run_name, tensorboard_tag
from keel.run.console import ConsoleFilter, ConsoleFormatter
from keel.run.report import curated_params, final_metric_tags


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_console_passes_keel_and_warnings_and_keeps_library_info_out():
    f = ConsoleFilter()
    assert f.filter(_record("keel.data.in_memory", logging.INFO, "data ..."))
    assert f.filter(_record("__main__", logging.INFO, "entry"))
    assert f.filter(_record("lightning.pytorch", logging.WARNING, "a warning"))
    assert not f.filter(_record("root", logging.INFO, 'Quantization parameters for tensor:"view" not specified'))
    assert not f.filter(_record("onnx_ir.passes.common.unused_removal", logging.INFO, "No unused functions"))
    assert not f.filter(_record("keelish", logging.INFO, "not keel's"))
    assert ConsoleFilter("all").filter(_record("onnx_ir", logging.INFO, "shown when asked"))
    with pytest.raises(ValueError, match="console_log='loud'.*Fix: console_log=keel"):
        ConsoleFilter("loud")


def test_console_shows_everything_under_hydra_verbose():
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.DEBUG)  # what hydra.verbose=true does
    try:
        assert ConsoleFilter().filter(_record("onnx_ir", logging.INFO, "x"))
    finally:
        root.setLevel(before)


def test_console_format_names_whose_line_it_is():
    fmt = ConsoleFormatter()
    keel_line = fmt.format(_record("keel.fit", logging.INFO, "epoch 3"))
    other = fmt.format(_record("lightning.pytorch", logging.WARNING, "careful"))
    assert keel_line.endswith(" epoch 3") and len(keel_line.split()[0]) == 8  # HH:MM:SS
    assert other.endswith(" WARNING [lightning.pytorch] careful")


def test_epoch_line_shows_loss_monitor_best_lr_and_time():
    line = epoch_line(4, {"train/loss": 0.06531, "val/acc": 0.9554}, "train/loss", "val/acc", 0.9628, 3, 0.00298,
                      0.084, max_epochs=40)
    assert line == "epoch 4/39  train/loss 0.0653  val/acc 0.9554 (best 0.9628 at epoch 3)  lr 0.00298  0.08 s"
    best = epoch_line(5, {"train/loss": 0.0351, "val/acc": 0.974}, "train/loss", "val/acc", 0.974, 5, None, 0.09)
    assert best == "epoch 5  train/loss 0.0351  val/acc 0.9740 (best)  0.09 s"
    # an epoch without validation shows no (stale) monitored value
    assert "val/acc" not in epoch_line(6, {"train/loss": 0.03}, "train/loss", "val/acc", 0.974, 5, None, 0.1)


def test_improved_follows_the_mode_and_never_takes_nan():
    assert improved(0.5, None, "max") and improved(0.6, 0.5, "max") and not improved(0.5, 0.5, "max")
    assert improved(0.4, 0.5, "min") and not improved(0.6, 0.5, "min")
    assert not improved(float("nan"), None, "max")
    with pytest.raises(ValueError, match="mode='up'"):
        EpochSummary("val/acc", "up")


def test_stop_line_says_why_and_where_the_best_was():
    line = stop_line(15, "ignored", True, "val/acc", 6, 0.98141, 9, 40)
    assert line == ("early stopping after epoch 15 (16 of 40 epochs trained): val/acc did not improve for 6 "
                    "validations; best 0.9814 at epoch 9")
    nan = stop_line(2, "Monitored metric val/loss = nan is not finite.", False, "val/loss", 6, None, None, 40)
    assert nan.endswith(": Monitored metric val/loss = nan is not finite.")


def test_epoch_summary_keeps_its_best_across_a_resume():
    cb = EpochSummary("val/loss", "min")
    cb.best, cb.best_epoch = 0.25, 7
    again = EpochSummary("val/loss", "min")
    again.load_state_dict(cb.state_dict())
    assert (again.best, again.best_epoch) == (0.25, 7)


def test_tensorboard_tags_put_lightnings_own_under_train():
    assert tensorboard_tag("epoch") == "train/epoch"
    assert tensorboard_tag("lr/all") == "train/lr/all" and tensorboard_tag("lr-Adam") == "train/lr-Adam"
    assert tensorboard_tag("val/acc") == "val/acc" and tensorboard_tag("lrx") == "lrx"


def test_run_names_are_readable_single_components():
    run = Path("/out/train/runs/2026-12-04_19-55-21_527a98")
    choices = {"data": "digits", "model": "cnn", "optimizer": "adam"}
    assert run_name(run, [], choices, None) == "2026-12-04_19-55-21_527a98_digits-cnn"
    named = run_name(run, ["model=cnn", "optimizer.lr=0.01", "data.path=/home/me/x.csv", "run_dir=/x",
                           "ckpt_path=auto"], choices, None)
    assert named == "2026-12-04_19-55-21_527a98_digits-cnn,optimizer.lr=0.01,data.path=_home_me_x.csv"
    assert "/" not in named
    assert run_name(Path("/sweep/3"), ["optimizer.lr=0.001", "model=mlp"], choices, 3) == "3_optimizer.lr=0.001,model=mlp"
    assert len(run_name(run, [f"k{i}.x={'v' * 20}" for i in range(20)], choices, None)) <= 120


def test_curated_params_are_the_choices_the_key_values_and_the_overrides():
    config = {"task": "classification", "seed": 42, "optimizer": {"lr": 0.003, "weight_decay": 0.0, "_target_": "x"},
              "data": {"batch_size": 64, "path": None}, "trainer": {"max_epochs": 40, "precision": "32-true",
                                                                   "devices": 1, "gradient_clip_val": 1.5},
              "model": {"net": {"hidden": [256, 128]}}}
    params = curated_params(config, ["model=mlp", "trainer.gradient_clip_val=1.5", "model.net.hidden=[256,128]",
                                     "paths.log_dir=/tmp/x"], {"data": "digits", "model": "mlp", "optimizer": "adam"})
    assert params == {"data": "digits", "model": "mlp", "optimizer": "adam", "task": "classification", "seed": 42,
                      "optimizer.lr": 0.003, "optimizer.weight_decay": 0.0, "data.batch_size": 64,
                      "trainer.max_epochs": 40, "trainer.precision": "32-true", "trainer.devices": 1,
                      "trainer.gradient_clip_val": 1.5, "model.net.hidden": "[256, 128]"}
    assert final_metric_tags({"val/acc": 1, "val/acc_best": 1, "test/acc": 1, "train/loss": 1}) == [
        "test/acc", "val/acc_best"]


def test_drift_table_lists_alerts_first_with_the_noise_bound():
    report = {"summary": {"n_features": 3, "n_alert": 1, "n_warn": 0, "max_psi": 0.9, "max_js": 0.01},
              "features": {"a": {"kind": "numeric", "psi": 0.05, "noise_bound": 0.2, "p_value": 0.4, "status": "ok"},
                           "b": {"kind": "numeric", "psi": 0.9, "noise_bound": 0.2, "p_value": 1e-9, "status": "alert"},
                           "c": {"kind": "categorical", "js": 0.01, "noise_bound": None, "p_value": None,
                                 "status": "ok"}},
              "labels": {"js": 0.002, "p_value": 0.9, "status": "ok"}, "leakage": {"count": 2}}
    text = drift_table("val", report)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| feature")]
    assert [r.split("|")[1].strip() for r in rows] == ["b", "a", "c"]
    assert rows[0] == "| b | numeric | PSI | 0.9000 | 0.2000 | 1.00e-09 | alert |"
    assert "val vs train" in text and "1 alert" in text and "rows also in train: 2" in text
    assert feature_statistics(report) == [0.05, 0.9]
    assert "2 more features" in drift_table("val", report, max_rows=1)


def test_known_library_warnings_are_silenced_by_exact_message_only():
    import warnings

    from keel.run.console import quiet_known_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet_known_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
                      FutureWarning)
        warnings.warn("The number of training batches (1) is smaller than the logging interval "
                      "Trainer(log_every_n_steps=10).", UserWarning)
        with pytest.raises(UserWarning, match="something else"):
            warnings.warn("something else", UserWarning)
