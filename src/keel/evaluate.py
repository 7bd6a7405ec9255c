"""``eval.py``: test a checkpoint, training nothing, on the test split of its own data config (with
overrides) or on a new labelled file with the same contract; metrics.json and TensorBoard test
views go into a new eval directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from keel.errors import KeelError

log = logging.getLogger("keel")


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Test ``cfg.ckpt_path``; write ``<eval dir>/metrics.json``; return that record.

    ``cfg.file`` (+ ``cfg.labels`` for tensors): every row of a labelled CSV/Parquet/.npy, checked
    against the checkpoint's contract (``cfg.on_invalid``: fail or skip, as ``keel predict``);
    else the checkpoint's own data config, merged with ``cfg.data`` overrides, and its test split.

    Raises:
        CheckpointError: a missing, unsafe or foreign checkpoint. ContractViolationError: the
            file breaks the contract. KeelError: the data config's contract is not the checkpoint's.
    """
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, TensorDataset

    from keel.atomic import write_json_atomic
    from keel.callbacks import TensorBoardViews
    from keel.checkpoints.read import keel_section, load_checkpoint
    from keel.data.contract import contract_from_dict
    from keel.export.build import rebuild_module
    from keel.fit import route_lightning_logs
    from keel.run.report import metric_line, print_summary
    from keel.serve.bundle import LabelledFile

    route_lightning_logs()
    ckpt_path = Path(cfg.ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    config = keel_section(ckpt, ckpt_path).get("config") or {}
    module = rebuild_module(ckpt)
    contract = contract_from_dict(dict(module.hparams.contract))
    out = Path(cfg.paths.output_dir)
    loggers, callbacks = [], []
    if cfg.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers = [TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)]
        callbacks = [TensorBoardViews()]
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=loggers or False, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    invalid = 0
    if cfg.file:
        source = Path(cfg.file).name
        data = LabelledFile(contract)
        rows = data.read_rows(cfg.file, keep=tuple(cfg.ignore), labels=cfg.labels, with_target=True)
        enc = data.encode_rows(rows, source, on_invalid=cfg.on_invalid, with_target=True)
        invalid = len(enc.invalid)
        if enc.invalid:
            lines = ["row,violations", *(f'{r},"{"; ".join(v)}"' for r, v in enc.invalid.items())]
            (out / "invalid_rows.csv").write_text("\n".join(lines) + "\n")
            log.warning("%d rows of %s break the contract: left out (%s)", invalid, source, out / "invalid_rows.csv")
        loader = DataLoader(TensorDataset(torch.from_numpy(enc.x), torch.from_numpy(enc.y)), batch_size=cfg.batch_size)
        n = len(enc.rows)
        trainer.test(module, dataloaders=loader, verbose=False)
        where = f"{cfg.file} ({n} rows{f', {invalid} left out' if invalid else ''})"
    else:
        if "data" not in config:
            raise KeelError(f"{ckpt_path}: holds no run config (written by an older keel?), so its test split cannot "
                            "be rebuilt. Fix: give a labelled file: file=PATH")
        data_cfg = OmegaConf.merge(OmegaConf.create(config["data"]), cfg.data or {})
        datamodule = instantiate(data_cfg)
        datamodule.setup("test")
        if datamodule.contract.fingerprint() != contract.fingerprint():
            raise KeelError(f"the data config's contract {datamodule.contract.name!r} is not the checkpoint's "
                            f"({contract.name!r}): the model would be tested on other data. Fix: drop the data "
                            "overrides that change the contract, or give a labelled file: file=PATH")
        n = int(datamodule.split_sizes()["test"])
        trainer.test(module, datamodule=datamodule, verbose=False)
        where = f"the test split of {getattr(datamodule, 'source', 'its data')} ({n} rows)"
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test/")}
    record = {
        "task": module.task.name, "checkpoint": str(ckpt_path), "data": where, "rows": n, "rows_invalid": invalid,
        "metrics": metrics, "test_record": module.task.test_record(module.split_records.get("test"), contract),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", record)
    print_summary("evaluation finished (nothing trained)", [
        ("eval directory", str(out)), ("checkpoint", str(ckpt_path)), ("data", where),
        ("tensorboard", f"tensorboard --logdir {out / 'tensorboard'}" if cfg.tensorboard else None),
        ("test metrics", metric_line(metrics)), ("metrics file", str(out / "metrics.json")),
    ])
    return record


__all__ = ["evaluate_checkpoint"]
