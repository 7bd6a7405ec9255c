"""The LightningModule: logged metric names, loss options, checkpoints as plain data."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from keel.models import Classifier
from keel.fit import build_model
from keel.tasks import get_task

TASK = get_task("classification")
PER_SPLIT = TASK.metrics
METRIC_NAMES = TASK.metric_names()
logged_names = TASK.logged_names


@pytest.fixture
def setup(compose_cfg):
    cfg = compose_cfg("trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                      "trainer.limit_test_batches=2")
    dm = instantiate(cfg.data)
    dm.setup()
    return cfg, dm


def _trainer(tmp_path, **kw):
    return L.Trainer(
        default_root_dir=tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=2, limit_test_batches=2,
        logger=False, enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, **kw,
    )


def test_logs_exactly_the_declared_metric_names(setup, tmp_path):
    cfg, dm = setup
    model = build_model(cfg, dm)
    trainer = _trainer(tmp_path, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    m = dict(trainer.logged_metrics)
    trainer.test(model, datamodule=dm, verbose=False)
    m.update(trainer.logged_metrics)
    assert set(m) == set(logged_names())  # the training split: loss and acc by default
    assert 0.0 <= float(m["test/acc"]) <= 1.0
    assert float(m["val/acc_best"]) >= float(m["val/acc"]) - 1e-6
    assert float(m["val/loss_best"]) <= float(m["val/loss"]) + 1e-6
    cm = model.confusion["test"]
    assert len(cm) == 10 and all(len(r) == 10 for r in cm)
    assert sum(map(sum, cm)) == 2 * cfg.data.batch_size  # two test batches, each row counted once


def test_train_metrics_all_logs_every_metric_and_a_list_its_own(setup, tmp_path):
    """model.train_metrics picks the training split's metrics; val and test log all six either way."""
    cfg, dm = setup
    for train_metrics, train_names in (("all", {"loss", "acc", "f1", "precision", "recall", "auroc"}),
                                       (["auroc", "f1"], {"f1", "auroc"})):
        cfg.model.train_metrics = train_metrics
        model = build_model(cfg, dm)
        assert model.metrics["train_metrics"].auroc is ("auroc" in train_names)
        trainer = _trainer(tmp_path, enable_checkpointing=False)
        trainer.fit(model, datamodule=dm)
        logged = set(trainer.logged_metrics)
        assert {n.split("/", 1)[1] for n in logged if n.startswith("train/")} == train_names
        assert logged == set(logged_names(train_metrics)) - {f"test/{m}" for m in PER_SPLIT}
    assert set(logged_names("all")) == set(METRIC_NAMES)


def test_default_training_split_keeps_no_rows_for_an_auroc(setup, tmp_path):
    cfg, dm = setup
    model = build_model(cfg, dm)
    assert model.logged["train"] == ("loss", "acc")
    train, val = model.metrics["train_metrics"], model.metrics["val_metrics"]
    assert not train.auroc and not hasattr(train, "probs") and val.auroc
    x, y = next(iter(dm.train_dataloader()))
    model.training_step((x, y), 0)
    model.validation_step((x, y), 0)
    assert model._outputs["train"][0][0].shape == (len(y),)  # predicted classes, not N x classes logits
    assert model._outputs["val"][0][0].shape == (len(y), 10)
    with pytest.raises(ValueError, match=r"model.train_metrics=\['loss', 'accuracy'\]: unknown 'accuracy' for classification; "
                                         r"expected all or a list of loss, acc, f1, precision, recall, auroc"):
        cfg.model.train_metrics = ["loss", "accuracy"]
        build_model(cfg, dm)


def test_checkpoint_is_plain_data_and_rebuilds_the_model(setup, tmp_path):
    cfg, dm = setup
    model = build_model(cfg, dm)
    trainer = _trainer(tmp_path, enable_checkpointing=True)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    ckpt = torch.load(path, weights_only=True, map_location="cpu")  # no unpickling of objects
    assert ckpt["keel"]["contract"] == dm.contract.to_dict()
    assert ckpt["keel"]["preprocessing"]["mean"] == pytest.approx(dm.preprocessing["mean"])
    assert ckpt["hyper_parameters"]["net"]["_target_"] == "keel.models.nets.MLP"

    restored = Classifier.load_from_checkpoint(path, weights_only=True)
    model.eval()
    restored.eval()
    x, _ = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)


def test_standardization_is_fitted_on_train_and_inside_the_model(setup):
    cfg, dm = setup
    model = build_model(cfg, dm)
    train_x = dm._data["train"].tensors[0]
    z = model.preprocess(train_x)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-3)


def test_balanced_class_weights_and_label_smoothing(compose_cfg):
    cfg = compose_cfg("model.loss.class_weights=balanced", "model.loss.label_smoothing=0.1")
    dm = instantiate(cfg.data)
    dm.setup()
    model = build_model(cfg, dm)
    counts = dm.class_counts("train")
    expected = [sum(counts) / (len(counts) * c) for c in counts]
    assert model.criterion.weight.tolist() == pytest.approx(expected)
    assert model.hparams.loss["class_weights"] == pytest.approx(expected)
    assert model.criterion.label_smoothing == 0.1


def test_class_weight_count_must_match_classes(compose_cfg):
    cfg = compose_cfg("model.loss.class_weights=[1.0,2.0]")
    dm = instantiate(cfg.data)
    dm.setup()
    with pytest.raises(ValueError, match="class_weights has 2 values but the data has 10 classes"):
        build_model(cfg, dm)


def test_no_decay_groups_reach_the_optimizer(compose_cfg, tmp_path):
    cfg = compose_cfg("optimizer=adamw", "model.no_decay_bias_norm=true", "scheduler=none")
    dm = instantiate(cfg.data)
    dm.setup()
    model = build_model(cfg, dm)
    trainer = _trainer(tmp_path, enable_checkpointing=False, max_steps=1)
    trainer.fit(model, datamodule=dm)
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert groups[0]["weight_decay"] == cfg.optimizer.weight_decay and groups[1]["weight_decay"] == 0.0


def test_epoch_metrics_equal_per_step_updates(compose_cfg):
    """The step keeps its outputs and the metrics are fed once per epoch: the same values as
    torchmetrics' classification metrics fed at every step."""
    from torchmetrics import MeanMetric, MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassAUROC,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    cfg = compose_cfg()
    dm = instantiate(cfg.data)
    dm.setup()
    model = build_model(cfg, dm).eval()
    c = len(dm.contract.classes)
    reference = MetricCollection({
        "acc": MulticlassAccuracy(c, average="micro"), "f1": MulticlassF1Score(c, average="macro"),
        "precision": MulticlassPrecision(c, average="macro"), "recall": MulticlassRecall(c, average="macro"),
        "auroc": MulticlassAUROC(c, average="macro", thresholds=None),
    })
    mean_loss = MeanMetric()
    confusion = torch.zeros(c, c, dtype=torch.long)
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            loss = model._step((x, y), "val")
            logits = model(x)
            reference.update(logits.softmax(dim=1), y)
            mean_loss.update(loss, weight=len(y))
            confusion += torch.bincount(y * c + logits.argmax(1), minlength=c ** 2).view_as(confusion)
    model._update_metrics("val")
    assert model._outputs["val"] == []
    got, want = model.metrics["val_metrics"].compute(), reference.compute()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)
    assert float(got["loss"]) == pytest.approx(float(mean_loss.compute()), rel=1e-6)
    assert got["confusion"].tolist() == confusion.tolist()
