"""Lightning's ``TensorBoardLogger``, laid out for a person reading TensorBoard.

TensorBoard groups scalar cards by the tag's first path component and sorts the groups by name,
so the page opens on whatever sorts first. keel's own tags are ``train/*``, ``val/*`` and
``test/*`` (throughput and drift summaries included); this logger moves the two tags Lightning
adds outside them under ``train/`` (``epoch`` -> ``train/epoch``, the LR monitor's ``lr/all``
-> ``train/lr/all``), so the Scalars page opens on the curves. The final HParams entry points at
the run's own metric tags (``val/*_best``, ``test/*``) instead of writing copies of them at
step 0 (Lightning's ``log_hyperparams`` writes every metric as a scalar first), so no one-point
``hparams/*`` cards appear either.

The run is named (``version``) for what it is: its directory's name and what was overridden
(:func:`run_name`), so ``tensorboard --logdir <run>/tensorboard`` or over ``outputs/`` lists
readable runs instead of ".".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger

__all__ = ["TensorBoardLogger", "run_name", "tensorboard_tag"]

# overrides that say where a run lives or how it resumes, not what it is
_NOT_NAMING = ("run_dir", "ckpt_path", "paths.", "hydra.", "logger", "console_log")
_MAX_NAME = 120


def tensorboard_tag(name: str) -> str:
    """The tag a Lightning-made metric name gets: ``epoch`` and the LR monitor's ``lr/*`` (``lr-*``
    without a scheduler) go under ``train/``."""
    if name == "epoch" or name.startswith(("lr-", "lr/")):
        return f"train/{name}"
    return name


class TensorBoardLogger(_LightningTensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` with the tag layout above.

    Same constructor. ``log_metrics`` renames via :func:`tensorboard_tag`;
    :meth:`log_final_hparams` writes the run's HParams entry.
    """

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics({tensorboard_tag(k): v for k, v in metrics.items()}, step)

    def log_final_hparams(self, params: Mapping[str, Any], metric_tags: Sequence[str]) -> None:
        """One HParams entry: ``params`` (flat, str/int/float/bool) against ``metric_tags``,
        scalar tags this run already logged (TensorBoard's HParams tab shows their last value)."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        if self.experiment is None:  # not rank 0
            return
        # A writer of its own: the run's writer is closed when fitting ends (Trainer teardown).
        with SummaryWriter(log_dir=self.log_dir) as writer:
            for summary in hparams(dict(params), {tag: 0.0 for tag in metric_tags}):
                writer.file_writer.add_summary(summary)


def _sanitize(text: str) -> str:
    text = text.replace("/", "_").replace("\\", "_")
    return re.sub(r"[^\w.,=+\-@:]+", "_", text).strip("_")


def run_name(output_dir: Path, overrides: Sequence[str], choices: Mapping[str, str], job_num: int | None) -> str:
    """A run's TensorBoard name: readable, one path component, stable for one run directory.

    Args:
        output_dir: the run directory.
        overrides: the job's command-line overrides (``key=value``; group choices included).
        choices: config group -> option (``data``, ``model``) of the job.
        job_num: the job's number in a sweep, or None for a single run.

    Returns:
        single run: ``<run dir name>_<data>-<model>`` plus ``,key=value`` for each value override;
        sweep job: ``<job num>_<overrides>`` (what differs between the sweep's jobs).
    """
    kept = [o for o in overrides if not any(o.lstrip("+~").startswith(p) for p in _NOT_NAMING)]
    if job_num is not None:
        name = f"{job_num}_{','.join(kept)}" if kept else str(job_num)
    else:
        groups = "-".join(str(choices[g]) for g in ("data", "model") if choices.get(g))
        values = [o for o in kept if "." in o.split("=", 1)[0] or o.split("=", 1)[0] not in choices]
        name = "_".join(p for p in (output_dir.name, groups) if p)
        if values:
            name += "," + ",".join(values)
    name = _sanitize(name)
    return name[:_MAX_NAME] or output_dir.name


def _cell(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if v == 0 or abs(v) >= 10 ** -digits else f"{v:.2e}"
    return str(v)


def drift_table(split: str, report: Mapping[str, Any], max_rows: int = 30) -> str:
    """A split's drift against train as one Markdown table for TensorBoard's Text tab.

    Rows: every alerting or warning feature, then the largest statistics up to ``max_rows``;
    columns: the statistic (PSI for numeric features, JS for categoricals), the noise bound at
    these sizes, the p-value and the status. The first line is the split's summary.
    """
    features = report.get("features") or {}
    summary = report.get("summary") or {}

    def stat(f: Mapping[str, Any]) -> float:
        v = f.get("psi") if f.get("kind") == "numeric" else f.get("js")
        return -1.0 if v is None else float(v)

    order = sorted(features, key=lambda n: (features[n].get("status") != "alert",
                                            features[n].get("status") != "warn", -stat(features[n])))
    shown = order[:max_rows]
    head = (f"**{split} vs train**: {summary.get('n_features', len(features))} features, "
            f"{summary.get('n_alert', 0)} alert, {summary.get('n_warn', 0)} warn; "
            f"max PSI {_cell(summary.get('max_psi'))}, max JS {_cell(summary.get('max_js'))}. "
            "An alert needs the statistic over its threshold *and* beyond sampling noise.")
    rows = ["| feature | kind | statistic | value | noise bound | p-value | status |",
            "|---|---|---|---|---|---|---|"]
    for name in shown:
        f = features[name]
        which = "PSI" if f.get("kind") == "numeric" else "JS"
        value = f.get("psi") if which == "PSI" else f.get("js")
        rows.append(f"| {name} | {f.get('kind')} | {which} | {_cell(value)} | {_cell(f.get('noise_bound'))} | "
                    f"{_cell(f.get('p_value'), 3)} | {f.get('status')} |")
    more = f"\n\n{len(order) - len(shown)} more features in data/drift_report.json" if len(order) > len(shown) else ""
    extra = []
    labels = report.get("labels")
    if labels:
        extra.append(f"labels: JS {_cell(labels.get('js'))}, p-value {_cell(labels.get('p_value'), 3)}, "
                     f"{labels.get('status')}")
    target = report.get("target")
    if target:
        extra.append(f"target: PSI {_cell(target.get('psi'))}, p-value {_cell(target.get('p_value'), 3)}, "
                     f"{target.get('status')}")
    leakage = report.get("leakage")
    if leakage:
        extra.append(f"rows also in train: {leakage.get('count', 0)}")
    tail = ("\n\n" + "; ".join(extra)) if extra else ""
    return head + "\n\n" + "\n".join(rows) + more + tail


def feature_statistics(report: Mapping[str, Any]) -> list[float]:
    """Every numeric feature's PSI of a split report (for one histogram per split)."""
    return [float(f["psi"]) for f in (report.get("features") or {}).values()
            if f.get("kind") == "numeric" and f.get("psi") is not None]
