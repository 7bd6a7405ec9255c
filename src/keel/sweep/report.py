"""``keel sweep report SWEEP_DIR``: one table of every job of a sweep, best first.

A sweep directory (``outputs/<task>/multiruns/<date>_<time>_<id>/``) holds one directory per
job with ``.hydra/overrides.yaml`` and, when the job finished, ``metrics.json`` (written by
``keel.pipeline.train``: ``metrics``, ``objective``, ``optimized_metric``, ``wall_time_s`` and
``task``, absent in older runs: classification). A job
without ``metrics.json`` was pruned, crashed or is still running: the Optuna study named in
``optuna_study.yaml`` (written by the ``keel_optuna`` sweeper) says which; without a study the
job's log is read (the pruning callback logs ``pruned at epoch N``).

A job's parameters (the CSV's columns beside its metrics) are its resolved config
(``run.json``'s ``config``, else ``.hydra/config.yaml``) as dotted keys plus the option of each
config group (``.hydra/hydra.yaml``), else its overrides: ``optimizer.lr`` is one column whatever
the optimizer, a key only some options have (``optimizer.momentum``) is empty where it does not
apply. Only keys whose values differ between jobs are columns. Lightning's LR monitor names its
metrics after the optimizer class (``lr-Adam/all``, ``lr-SGD-momentum/all``); they are read as
``lr/all``, ``lr-momentum/all`` so that one metric is one column across optimizers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from keel.errors import KeelError
from keel.sweep.study import DIRECTIONS, metric_direction, open_storage, sqlite_path
from keel.tasks import TASKS

RESULTS_FILE = "optuna_study.yaml"  # keel.sweep.optuna_sweeper.RESULTS_FILE (kept import-light)
PRUNING_KEY = "callbacks.optuna_pruning"
STATUS_ORDER = ("complete", "pruned", "running", "failed")
# The metric columns a job's task brings (those some job logged are shown); a sweep of both
# tasks shows the union, in TASKS order.
TASK_METRICS = {
    "classification": ("test/acc", "test/loss", "val/acc_best", "val/loss_best"),
    "regression": ("test/rmse", "test/r2", "val/rmse_best", "val/loss_best"),
}
DEFAULT_TASK = "classification"  # a metrics.json without a task key (written before regression)
DEFAULT_METRICS = TASK_METRICS[DEFAULT_TASK]
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]")
_PRUNED = re.compile(r"pruned at epoch (\d+)(.*)$")


@dataclass
class JobRow:
    """One job (or one trial that never got a job directory) of a sweep."""

    job: str
    path: Path | None
    status: str
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    objective: float | None = None
    optimized_metric: str | None = None
    task: str | None = None
    duration_s: float | None = None
    trial: int | None = None
    note: str = ""
    rank: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepReport:
    """Every row, sorted (complete jobs by objective, then pruned, running and failed ones)."""

    sweep_dirs: list[Path]
    rows: list[JobRow]
    metric: str | None
    direction: str
    direction_source: str
    columns: list[str]
    study: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # the parameters that differ between jobs (CSV columns)

    @property
    def best(self) -> JobRow | None:
        return next((r for r in self.rows if r.status == "complete" and _finite(r.objective)), None)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUS_ORDER}
        for r in self.rows:
            out[r.status] = out.get(r.status, 0) + 1
        return {k: v for k, v in out.items() if v}

    def varying_overrides(self, row: JobRow) -> list[str]:
        """The overrides of ``row`` that not every job shares (what the sweep changed)."""
        shown = [_shown(r.overrides) for r in self.rows if r.overrides]
        common = set.intersection(*(set(o) for o in shown)) if len(shown) > 1 else set()
        return [o for o in _shown(row.overrides) if o not in common]

    def best_command(self) -> str | None:
        best = self.best
        if best is None:
            return None
        return " ".join(["python", "train.py", *(shlex.quote(o) for o in _shown(best.overrides)
                                                  if not _key(o).startswith("hparams_search"))])


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _shown(overrides: Sequence[str]) -> list[str]:
    """Overrides without the pruning callback the sweeper adds (it names a study trial); a delete
    as typed (Hydra's sweepers record ``~key`` as ``~key=null``, which means the same)."""
    return [o.removesuffix("=null") if o.startswith("~") else o for o in overrides
            if not _key(o).startswith(PRUNING_KEY)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(dirs, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~8x faster on a job's config


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError):
        return None


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.01}}`` -> ``{"optimizer.lr": 0.01}``; lists are values."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _job_params(job_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The job's parameters (see the module doc); an unresolved interpolation (``.hydra/config.yaml``
    of a job that never started) is not a value."""
    record = None
    try:
        record = json.loads((job_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict):
        config = _read_yaml(job_dir / ".hydra" / "config.yaml")
    if not isinstance(config, dict):
        return _override_params(overrides)
    params = {k: v for k, v in _flat(config).items() if not (isinstance(v, str) and "${" in v)}
    choices: Any = _read_yaml(job_dir / ".hydra" / "hydra.yaml")
    for key in ("hydra", "runtime", "choices"):
        choices = choices.get(key) if isinstance(choices, dict) else None
    for group, option in (choices or {}).items():
        if not str(group).startswith("hydra"):  # hydra/launcher, hydra/sweeper...: how, not what
            params.setdefault(str(group), option)
    return params


def _override_params(overrides: Sequence[str]) -> dict[str, Any]:
    """``key=value`` overrides as parameters (the values as typed): for a trial without a job."""
    out: dict[str, Any] = {}
    for o in _shown(overrides):
        key, sep, value = o.partition("=")
        if sep and not key.startswith("~"):
            out[key.lstrip("+").split("@", 1)[0]] = value
    return out


# lr-<class>[-<n>][-momentum|-weight_decay][/<param group>], maybe under a logger's prefix (train/)
_LR_MONITOR = re.compile(r"(?P<pre>(?:[^/]+/)*)lr-(?P<cls>[A-Za-z_]\w*)(?P<rest>[-/].*)?")


def _class_free_lr(metrics: dict[str, float], optimizer_target: Any) -> dict[str, float]:
    """Lightning's LR monitor metrics of the job's optimizer without its class name
    (``lr-Adam/all`` -> ``lr/all``), so that one metric is one column across optimizers."""
    cls = str(optimizer_target).rsplit(".", 1)[-1] if optimizer_target else None
    out: dict[str, float] = {}
    for name, value in metrics.items():
        m = _LR_MONITOR.fullmatch(name)
        plain = f"{m.group('pre')}lr{m.group('rest') or ''}" if m and m.group("cls") == cls else name
        out[plain if plain not in metrics else name] = value
    return out


def _param_columns(rows: Sequence[JobRow]) -> list[str]:
    """The parameters whose values differ between the rows (absent counts as a value), less those
    naming the job's own directory (``run_dir``, ``paths.output_dir``: different by design)."""
    keys = sorted({k for r in rows for k in r.params})
    own = set()
    for r in rows:
        if r.path is None:
            continue
        here = str(r.path.resolve())
        own |= {k for k, v in r.params.items() if isinstance(v, str) and here in v}
    with_params = [r for r in rows if r.params]
    return [k for k in keys if k not in own and k.split(".", 1)[0] != "hydra"
            and not k.startswith(PRUNING_KEY)
            and len({_param_text(r.params.get(k, _ABSENT)) for r in with_params}) > 1]


_ABSENT = object()


def _param_text(v: Any) -> str:
    """A parameter as a CSV cell, written as an override's value (``[256,128]``, ``true``, ``null``);
    empty when the job has no such key."""
    if v is _ABSENT:
        return ""
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def _log_info(job_dir: Path) -> tuple[str | None, str, float | None]:
    """(``pruned``/None, a note, duration in s from the first log line to the log's last write)."""
    status, note, duration = None, "", None
    for log in sorted(job_dir.glob("*.log")):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        lines = text.splitlines()
        m = _LOG_TIME.match(lines[0]) if lines else None
        if m:
            start = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
            duration = max(0.0, log.stat().st_mtime - start)
        for line in reversed(lines):
            p = _PRUNED.search(line)
            if p:
                status, note = "pruned", f"pruned at epoch {p.group(1)}{p.group(2)}"
                break
        if status is None:
            errors = [ln for ln in lines if "ERROR" in ln or ln.startswith("error:")]
            if errors:
                note = errors[-1].split("] - ", 1)[-1].strip()
    return status, note, duration


def _load_study(sweep_dir: Path, notes: list[str]) -> tuple[dict[str, Any] | None, Any]:
    """(the sweeper's record, the Optuna study or None) of a sweep directory."""
    record = _read_yaml(sweep_dir / RESULTS_FILE)
    if not isinstance(record, dict) or not record.get("storage") or not record.get("study_name"):
        return None, None
    url = record["storage"]
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        notes.append(f"study database {path} is gone: pruned/failed told apart from the job logs")
        return record, None
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return record, optuna.load_study(study_name=record["study_name"], storage=open_storage(url))
    except Exception as e:  # noqa: BLE001 - a report must still come out of the files alone
        notes.append(f"could not read study {record['study_name']!r} from {url}: {e}")
        return record, None


def _trial_rows(study: Any, sweep_dir: Path) -> dict[Any, Any]:
    """This sweep's trials by job number (and by resolved job dir); unlaunched ones under None."""
    out: dict[Any, Any] = {}
    here = str(sweep_dir.resolve())
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("sweep_dir") != here:
            continue
        num = t.user_attrs.get("job_num")
        if num is None:
            out.setdefault(None, []).append(t)
        else:
            out[int(num)] = t
    return out


def _trial_status(t: Any) -> tuple[str, str]:
    state = t.state.name
    if state == "PRUNED":
        step = t.last_step
        value = t.intermediate_values.get(step) if step is not None else None
        return "pruned", f"pruned at epoch {step}" + (f" (value {value:.4g})" if _finite(value) else "")
    if state == "FAIL":
        if t.user_attrs.get("interrupted"):
            return "failed", "interrupted (queued again on resume)"
        return "failed", " ".join(str(t.user_attrs.get("error", "")).split())
    if state == "RUNNING":
        return "running", ""
    return state.lower(), ""


def _duration(t: Any) -> float | None:
    if t is not None and t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return None


def _rows_of(sweep_dir: Path, label: str, notes: list[str]) -> tuple[list[JobRow], dict[str, Any] | None, Any]:
    record, study = _load_study(sweep_dir, notes)
    trials = _trial_rows(study, sweep_dir) if study is not None else {}
    rows = []
    for job_dir in _job_dirs(sweep_dir):
        overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml") or []
        num = int(job_dir.name) if job_dir.name.isdigit() else None
        trial = trials.get(num)
        row = JobRow(job=f"{label}{job_dir.name}", path=job_dir, status="failed", overrides=[str(o) for o in overrides],
                     trial=trial.number if trial is not None else None)
        row.params = _job_params(job_dir, row.overrides)
        metrics_file = job_dir / "metrics.json"
        if metrics_file.is_file():
            try:
                m = json.loads(metrics_file.read_text())
            except (OSError, json.JSONDecodeError) as e:
                row.note = f"unreadable metrics.json: {e}"
            else:
                row.status = "complete"
                row.metrics = _class_free_lr({k: float(v) for k, v in (m.get("metrics") or {}).items() if _finite(v)},
                                             row.params.get("optimizer._target_"))
                row.objective = m.get("objective")
                row.optimized_metric = m.get("optimized_metric")
                row.task = str(m.get("task") or DEFAULT_TASK)
                row.duration_s = m.get("wall_time_s")
        if row.status != "complete":
            log_status, log_note, log_duration = _log_info(job_dir)
            if trial is not None:
                row.status, row.note = _trial_status(trial)
                row.duration_s = _duration(trial) or log_duration
                if not row.note:
                    row.note = log_note
            else:
                row.status = log_status or "failed"
                row.note = log_note
                row.duration_s = log_duration
        rows.append(row)
    for t in trials.get(None, []):
        status, note = _trial_status(t)
        overrides = [str(o) for o in t.user_attrs.get("overrides") or []]
        rows.append(JobRow(job="-", path=None, status=status, overrides=overrides, trial=t.number,
                           note=note or "never launched", params=_override_params(overrides)))
    return rows, record, study


def build_report(sweep_dirs: Sequence[str | Path], direction: str | None = None,
                 metrics: Sequence[str] | None = None) -> SweepReport:
    """Collect and sort every job of ``sweep_dirs``.

    Args:
        sweep_dirs: one or more multirun directories (several: one study resumed over runs).
        direction: ``maximize``/``minimize``; default the study's, else from the metric's name.
        metrics: metric columns besides the objective (default: :func:`default_metrics`, those
            some job logged).

    Raises:
        KeelError: a directory is missing or holds no job directories.
    """
    dirs = [Path(d) for d in sweep_dirs]
    notes: list[str] = []
    rows: list[JobRow] = []
    record = study = None
    for d in dirs:
        if not d.is_dir():
            raise KeelError(f"{d}: no such directory (give a sweep dir, e.g. outputs/train/multiruns/<date>_<time>_<id>)")
        label = f"{d.name}/" if len(dirs) > 1 else ""
        got, rec, st = _rows_of(d, label, notes)
        if not got:
            raise KeelError(f"{d}: no job directories (a sweep dir holds <job number>/.hydra/ per job)")
        rows += got
        record, study = record or rec, study or st
    metric = (record or {}).get("optimized_metric") or next((r.optimized_metric for r in rows if r.optimized_metric), None)
    if direction is not None:
        if direction not in DIRECTIONS:
            raise KeelError(f"--direction {direction!r}: expected maximize or minimize")
        source = "--direction"
    elif study is not None:
        direction, source = study.direction.name.lower(), "the study"
    elif record and record.get("direction"):
        direction, source = record["direction"], "the study record"
    elif metric:
        direction, source = metric_direction(metric), "the metric's name"
    else:
        direction, source = "maximize", "default"
    sign = -1.0 if direction == "maximize" else 1.0

    def key(r: JobRow) -> tuple[Any, ...]:
        objective = sign * r.objective if _finite(r.objective) else math.inf
        return (STATUS_ORDER.index(r.status) if r.status in STATUS_ORDER else len(STATUS_ORDER), objective)

    rows.sort(key=key)
    for i, r in enumerate(rows, 1):
        r.rank = i
    wanted = list(metrics) if metrics else [m for m in default_metrics(rows) if any(m in r.metrics for r in rows)]
    columns = [m for m in wanted if m != metric]
    return SweepReport(dirs, rows, metric, direction, source, columns, record, notes, _param_columns(rows))


def default_metrics(rows: Sequence[JobRow]) -> list[str]:
    """The metric columns of the tasks of ``rows`` (:data:`TASK_METRICS`; a sweep of several
    tasks: the union in :data:`TASKS` order; no finished job: classification's)."""
    tasks = {r.task for r in rows if r.task}
    out: list[str] = []
    for task in [t for t in TASKS if t in tasks] or [DEFAULT_TASK]:
        out += [m for m in TASK_METRICS.get(task, ()) if m not in out]
    return out


# -- rendering --------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def _duration_text(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m"


def _short(override: str) -> str:
    """``optimizer.lr=0.005399484409787433`` -> ``optimizer.lr=0.005399`` (tables only; the CSV and
    the best command keep the exact values)."""
    key, sep, value = override.partition("=")
    if sep and re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)", value):
        return f"{key}={float(value):.4g}"
    return override


def _table(report: SweepReport, max_note: int | None) -> tuple[list[str], list[list[str]]]:
    header = ["#", "job", "status", report.metric or "objective", *report.columns, "time", "overrides", "note"]
    body = []
    for r in report.rows:
        note = r.note if max_note is None or len(r.note) <= max_note else r.note[: max_note - 3] + "..."
        body.append([str(r.rank), r.job, r.status, _fmt(r.objective), *(_fmt(r.metrics.get(c)) for c in report.columns),
                     _duration_text(r.duration_s), " ".join(_short(o) for o in report.varying_overrides(r)), note])
    return header, body


def _summary_lines(report: SweepReport) -> list[str]:
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items())
    why = "by default" if report.direction_source == "default" else f"from {report.direction_source}"
    lines = [f"sweep: {', '.join(str(d) for d in report.sweep_dirs)}",
             f"jobs: {len(report.rows)} ({counts}); sorted by {report.metric or 'objective'}, {report.direction} "
             f"({why})"]
    if report.study:
        lines.append(f"study: {report.study['study_name']} in {report.study['storage']}")
    lines += [f"note: {n}" for n in report.notes]
    return lines


def _numeric_columns(report: SweepReport) -> set[int]:
    return {0, 3, *range(4, 5 + len(report.columns))}  # rank, objective, metrics, time


def format_terminal(report: SweepReport) -> str:
    header, body = _table(report, max_note=60)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    numeric = _numeric_columns(report)

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = _summary_lines(report) + ["", line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    cmd = report.best_command()
    out += ["", f"best ({report.metric}={_fmt(report.best.objective)}, job {report.best.job}):", f"  {cmd}"] if cmd else \
        ["", "best: no job completed"]
    return "\n".join(out) + "\n"


def format_markdown(report: SweepReport) -> str:
    header, body = _table(report, max_note=None)

    def cell(c: str) -> str:
        return c.replace("|", "\\|")

    out = ["# Sweep report", "", *(f"- {ln}" for ln in _summary_lines(report)), "",
           "| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if i in _numeric_columns(report) else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    cmd = report.best_command()
    if cmd:
        out += ["", f"Best: job {report.best.job}, {report.metric}={_fmt(report.best.objective)}", "", "```bash", cmd, "```"]
    else:
        out += ["", "Best: no job completed"]
    return "\n".join(out) + "\n"


def format_csv(report: SweepReport) -> str:
    """One row per job: the parameters that differ between jobs (:attr:`SweepReport.params`, empty
    where a job has no such key) and every metric (not only the table's columns)."""
    names = sorted({k for r in report.rows for k in r.metrics} - set(report.params))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "job", "status", "trial", "optimized_metric", "objective", *report.params, *names,
                "duration_s", "overrides", "note", "path"])
    for r in report.rows:
        w.writerow([r.rank, r.job, r.status, "" if r.trial is None else r.trial, report.metric or "",
                    "" if r.objective is None else r.objective,
                    *(_param_text(r.params.get(k, _ABSENT)) for k in report.params),
                    *(r.metrics.get(n, "") for n in names),
                    "" if r.duration_s is None else round(r.duration_s, 3), " ".join(_shown(r.overrides)), r.note,
                    r.path or ""])
    return buf.getvalue()
