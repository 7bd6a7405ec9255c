"""The ``keel`` command: data contracts and drift checks from the shell.

    keel contract infer FILE --target COL [--name NAME]     print a starting contract (YAML)
    keel contract check CONTRACT FILE                       exit 1 when FILE breaks CONTRACT
    keel drift REFERENCE CURRENT                            exit 1 when a feature drifts past alert
    keel bundle verify DIR                                  exit 1 when a bundle's files or outputs changed
    keel predict DIR INPUT [--output FILE] [--keep COL]     predictions (labels and probabilities, or values)
    keel evaluate DIR FILE [--output FILE]                  the task's metrics on a labelled file (no torch)
    keel serve DIR [--host H] [--port P] [--workers N]      an HTTP server for the bundle (no torch)
    keel sweep report MULTIRUN_DIR                          every job of a sweep, best first
    keel replay RUN_DIR                                     re-run a run; exit 1 when its metrics differ

Exit status: 0 fine, 1 the data failed the check, 2 a usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from keel.errors import KeelError
from keel.fast_exit import exit_now

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def _contract_infer(args: argparse.Namespace) -> int:
    import yaml

    from keel.data.table_io import SERVING_FIXES, read_table
    from keel.data.table_contract import infer_contract

    df = read_table(args.file, args.format, SERVING_FIXES)
    name = args.name or Path(args.file).name.split(".")[0]
    contract = infer_contract(df, args.target, name, max_categories=args.max_categories, margin=args.margin,
                              task=args.task)
    header = (
        f"# Inferred by `keel contract infer {args.file} --target {args.target}` from {len(df)} rows "
        f"(task: {contract.task}).\n"
        "# Review it: ranges are the observed ones; widen them where new data may go further.\n"
    )
    sys.stdout.write(header + yaml.safe_dump(contract.to_dict(), sort_keys=False, allow_unicode=True))
    return EXIT_OK


def _contract_check(args: argparse.Namespace) -> int:
    from keel.data.contract import contract_from_dict, load_contract_spec
    from keel.data.table_io import SERVING_FIXES, read_table

    contract = contract_from_dict(load_contract_spec(args.contract))
    if getattr(contract, "target", None) is None:
        raise KeelError("keel contract check works on table contracts (kind: table)")
    df = read_table(args.file, args.format, SERVING_FIXES)
    with_target = contract.target in df.columns and not args.no_target
    report = contract.check(df, Path(args.file).name, with_target=with_target)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if report.ok:
        print(f"{args.file}: {report.rows} rows satisfy contract {contract.name!r}"
              + ("" if with_target else " (features only: no label column)"))
        return EXIT_OK
    print(f"{args.file}: contract {contract.name!r} violated ({len(report.violations)} violations, {report.rows} rows):")
    for v in report.violations:
        print(f"  - {v.describe()}")
    return EXIT_FAILED


def _reference_from(path: str, target: str | None, fmt: str) -> tuple[dict[str, Any], Any]:
    """(reference stats, contract or None) from a checkpoint, a bundle directory or a data file."""
    from keel.data.contract import contract_from_dict

    p = Path(path)
    if p.is_dir():
        manifest = p / "manifest.json"
        if not manifest.is_file():
            raise KeelError(f"{p}: a directory but not a bundle (no manifest.json)")
        data = json.loads(manifest.read_text())
        ref = data.get("data", {}).get("reference")
        if not ref:
            raise KeelError(f"{manifest}: holds no reference statistics")
        return ref, contract_from_dict(data["data"]["contract"])
    if p.suffix == ".ckpt":
        from keel.checkpoints.read import read_checkpoint

        keel = read_checkpoint(p).section  # CheckpointError (a KeelError) names what is wrong
        if not keel.get("reference"):
            raise KeelError(f"{p}: not a keel checkpoint with reference statistics")
        return keel["reference"], contract_from_dict(keel["contract"])
    columns, kinds, _ = _columns_of(path, target, fmt, None)
    from keel.data.drift import reference_stats

    return reference_stats(columns, kinds), None


def _columns_of(path: str, target: str | None, fmt: str, contract: Any) -> tuple[dict, dict, Any]:
    """Drift columns, their kinds and the labels (or None) of a data file."""
    import numpy as np

    p = Path(path)
    if p.suffix == ".npy":
        from keel.data.drift import tensor_drift_columns

        try:
            x = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise KeelError(f"{p}: not a readable .npy array ({e})") from None
        cols = tensor_drift_columns(x)
        return cols, {k: "numeric" for k in cols}, None
    from keel.data.table_io import SERVING_FIXES, read_table, table_drift_columns

    df = read_table(path, fmt, SERVING_FIXES)
    labels = df[target] if target and target in df.columns else None
    table_contract = contract if hasattr(contract, "columns") else None
    cols, kinds = table_drift_columns(df, table_contract, exclude=(target,) if target else ())
    return cols, kinds, labels


def _drift(args: argparse.Namespace) -> int:
    from keel.data.drift import DriftThresholds, compare, format_report

    thresholds = DriftThresholds.from_dict(
        {k: v for k, v in {"psi_warn": args.psi_warn, "psi_alert": args.psi_alert, "js_warn": args.js_warn,
                           "js_alert": args.js_alert, "alpha": args.alpha}.items() if v is not None}
    )
    reference, contract = _reference_from(args.reference, args.target, args.format)
    columns, _, _ = _columns_of(args.current, args.target, args.format, contract)
    missing = sorted(set(reference["features"]) - set(columns))
    if missing:
        raise KeelError(f"{args.current}: lacks features the reference has: {missing[:10]}")
    result = compare(reference, {k: columns[k] for k in reference["features"]}, thresholds)
    report = {"reference": args.reference, "current": args.current, "thresholds": thresholds.to_dict(),
              "splits": {"current": result}, "status": result["status"]}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return EXIT_FAILED if result["status"] == "alert" else EXIT_OK


def _bundle_verify(args: argparse.Namespace) -> int:
    from keel.serve.bundle import verify_bundle

    problems = verify_bundle(args.dir)
    if problems:
        print(f"{args.dir}: bundle verification FAILED ({len(problems)} problems):")
        for p in problems:
            print(f"  - {p}")
        return EXIT_FAILED
    from keel.export.bundle import read_manifest

    m = read_manifest(args.dir)
    models = ", ".join(f"{k}={v}" for k, v in m["models"].items() if v)
    print(f"{args.dir}: OK ({len(m['files'])} files match their sha256; stored samples reproduce on {models})")
    return EXIT_OK


def _csv_line(fields: list[str]) -> str:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue()


def _write_invalid(path: Path, invalid: dict[int, list[str]], source: str) -> None:
    """The rows ``--on-invalid skip`` left out, with the rules each breaks."""
    lines = ["row,violations", *(_csv_line([str(r), "; ".join(v)]) for r, v in invalid.items())]
    path.write_text("\n".join(lines) + "\n")
    print(f"{len(invalid)} rows of {source} break the contract: not predicted, written with their violations to "
          f"{path}", file=sys.stderr)


def _invalid_path(args: argparse.Namespace) -> Path:
    if args.invalid_output:
        return Path(args.invalid_output)
    base = Path(args.output) if args.output else Path(args.input)
    return base.with_name(base.stem + ".invalid.csv")


def _predict(args: argparse.Namespace) -> int:
    from keel.serve.bundle import load_bundle

    bundle = load_bundle(args.dir, variant="int8" if args.int8 else "fp32")
    source = Path(args.input).name
    rows = bundle.read_rows(args.input, args.format, keep=tuple(args.keep))
    enc = bundle.encode_rows(rows, source, on_invalid=args.on_invalid)
    outputs = _outputs(bundle, enc.x)
    columns, values = bundle.task.prediction_table(outputs, bundle.manifest)
    carried = list(rows.carried)  # the --keep columns; for image files, each row's file
    header = ["row", *carried, *columns]
    kept = [[rows.carried[c][r] for c in carried] for r in enc.rows.tolist()]
    lines = [[str(r), *k] + [f"{v:.6f}" if isinstance(v, float) else str(v) for v in row]
             for r, k, row in zip(enc.rows.tolist(), kept, values)]
    if args.output and args.output.endswith(".json"):
        records = bundle.task.prediction_records(outputs, bundle.manifest)
        out = [{"row": r, **dict(zip(carried, k)), **rec} for r, k, rec in zip(enc.rows.tolist(), kept, records)]
        Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    else:
        text = "\n".join(_csv_line(r) for r in [header, *lines]) + "\n"
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
    if args.output:
        print(f"{len(lines)} predictions written to {args.output}", file=sys.stderr)
    if enc.invalid:
        _write_invalid(_invalid_path(args), enc.invalid, source)
    return EXIT_OK


def _outputs(bundle: Any, x: Any) -> tuple:
    from keel.export.runtime import run

    return run(bundle.session, x)


def _evaluate(args: argparse.Namespace) -> int:
    from keel.serve.bundle import load_bundle

    bundle = load_bundle(args.dir, variant="int8" if args.int8 else "fp32")
    source = Path(args.input).name
    rows = bundle.read_rows(args.input, args.format, keep=tuple(args.ignore), labels=args.labels, with_target=True)
    enc = bundle.encode_rows(rows, source, on_invalid=args.on_invalid, with_target=True)
    metrics = bundle.task.score(_outputs(bundle, enc.x), enc.y)
    result = {"bundle": str(args.dir), "model": bundle.variant, "file": str(args.input), "task": bundle.task.name,
              "rows": int(len(enc.rows)), "rows_invalid": len(enc.invalid), "metrics": metrics}
    print(f"{source}: {len(enc.rows)} rows, {bundle.task.name}, {bundle.variant} model")
    for k, v in metrics.items():
        print(f"  {k:<10} {v:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
        print(f"written: {args.output}")
    if enc.invalid:
        _write_invalid(_invalid_path(args), enc.invalid, source)
    return EXIT_OK


def _explain_source(target: str) -> tuple[Path, Path | None]:
    """(checkpoint, run dir or None) of ``keel explain``'s argument: a checkpoint file, or a run
    directory (its metrics.json names the best checkpoint)."""
    from keel.checkpoints.read import CheckpointError

    path = Path(target)
    if path.is_file():
        run_dir = path.resolve().parent.parent if path.resolve().parent.name == "checkpoints" else None
        return path, run_dir
    if not path.is_dir():
        raise CheckpointError(f"{target}: no such checkpoint file or run directory. Expected a .ckpt file or a run "
                              "directory, e.g. outputs/train/runs/<run>")
    record = path / "metrics.json"
    named = None
    if record.is_file():
        try:
            named = json.loads(record.read_text()).get("best_checkpoint") or None
        except (OSError, ValueError):
            named = None
    candidates = [Path(named), path / "checkpoints" / Path(named).name] if named else []
    candidates += [path / "checkpoints" / "last.ckpt"] if not named else []
    for c in candidates:
        if c.is_file():
            return c, path
    raise CheckpointError(f"{target}: no checkpoint found (looked for {', '.join(map(str, candidates)) or 'metrics.json'}). "
                          "Fix: pass the checkpoint file itself, e.g. keel explain <run>/checkpoints/epoch012.ckpt")


def _explain(args: argparse.Namespace) -> int:
    """``keel explain``: the test-time explanations again, for a finished run or any checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from keel.checkpoints.read import CheckpointError, keel_section, load_checkpoint
    from keel.explain.importance import importance_lines
    from keel.explain.run import ExplainOptions, add_importance, explain_split
    from keel.export.build import rebuild_module

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    options = ExplainOptions(images=args.images, methods=methods, ig_steps=args.ig_steps, repeats=args.repeats,
                             max_rows=args.max_rows, seed=args.seed, split=args.split).check()
    ckpt_path, run_dir = _explain_source(args.target)
    ckpt = load_checkpoint(ckpt_path)
    section = keel_section(ckpt, ckpt_path)
    config = section.get("config")
    if not config or "data" not in config:
        raise CheckpointError(f"{ckpt_path}: holds no run config (written by an older keel?); cannot rebuild its data")
    datamodule = instantiate(OmegaConf.create(config["data"]))
    datamodule.setup()
    if json.dumps(datamodule.contract.to_dict()) != json.dumps(section["contract"]):
        raise CheckpointError(f"{ckpt_path}: trained on contract {section['contract'].get('name')!r}, but its data "
                              f"config now gives contract {datamodule.contract.name!r} with other fields: the data "
                              "changed since training. Fix: restore the data, or explain a checkpoint of this data")
    module = rebuild_module(ckpt)
    out = Path(args.out) if args.out else (run_dir / "explain" if run_dir is not None
                                            else ckpt_path.resolve().parent / "explain")
    result = explain_split(module, datamodule, options, out)
    print(f"{ckpt_path}: {result.kind} data, {options.split} split")
    if result.note:
        print(f"  {result.note}")
    if result.grid is not None:
        print(f"  {', '.join(result.methods)} of {result.images} images")
        print(f"  written: {out / 'explanations.png'} (all images) and {out / 'images'}/ (one PNG per image and method)")
    if result.importance is not None:
        print("\n".join(importance_lines(result.importance, top=args.top)))
        print(f"  written: {out / 'importance.json'}, {out / 'importance.png'}")
        bundle = run_dir / "bundle" if run_dir is not None else None
        if args.bundle and bundle is not None and (bundle / "manifest.json").is_file():
            add_importance(bundle, result.importance)
            print(f"  bundle manifest updated: {bundle / 'manifest.json'} (importance; keel serve's /info lists it)")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from keel.serve.server import ServeOptions, serve

    return serve(ServeOptions(
        bundle=args.dir, int8=args.int8, host=args.host, port=args.port, workers=args.workers,
        batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, max_body_bytes=args.max_body_bytes,
        drift_window=args.drift_window, drift_interval_s=args.drift_interval, graceful_timeout_s=args.graceful_timeout,
        access_log=args.access_log, threads=args.threads))


def _sweep_report(args: argparse.Namespace) -> int:
    from keel.sweep.report import build_report, format_csv, format_markdown, format_terminal

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    report = build_report(args.dirs, direction=args.direction, metrics=metrics)
    sys.stdout.write(format_terminal(report))
    for path, text in ((args.markdown, format_markdown), (args.csv, format_csv)):
        if path:
            Path(path).write_text(text(report))
            print(f"written: {path}")
    return EXIT_OK


REPLAY_HELP = "re-run a run from its run.json into a new directory; exit 1 when the metrics differ"


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``keel`` parser; ``command`` is the subcommand about to be parsed (argv[0]), if known.

    ``keel.replay`` imports ``keel.provenance`` (importlib.metadata, subprocess, socket: ~40 ms
    of ``keel predict``'s start), so ``replay`` gets its full parser only when it is the
    command; otherwise a stand-in with the same help line lists it in ``keel --help``.
    """
    parser = argparse.ArgumentParser(prog="keel", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    contract = sub.add_parser("contract", help="infer or check a table contract").add_subparsers(
        dest="action", required=True
    )
    infer = contract.add_parser("infer", help="print a starting contract for a CSV/Parquet file (YAML)")
    infer.add_argument("file")
    infer.add_argument("--target", required=True, help="the label column")
    infer.add_argument("--name", help="contract name (default: the file name)")
    infer.add_argument("--task", default="auto", choices=["auto", "classification", "regression"],
                       help="the target's task (auto: from the column's values)")
    infer.add_argument("--format", default="auto", choices=["auto", "csv", "parquet"])
    infer.add_argument("--max-categories", type=int, default=50, help="most distinct values of a text column")
    infer.add_argument("--margin", type=float, default=0.0, help="widen numeric ranges by this fraction")
    infer.set_defaults(func=_contract_infer)

    check = contract.add_parser("check", help="validate a CSV/Parquet file against a contract")
    check.add_argument("contract", help="contract YAML (e.g. conf/data/contract/my.yaml)")
    check.add_argument("file")
    check.add_argument("--format", default="auto", choices=["auto", "csv", "parquet"])
    check.add_argument("--no-target", action="store_true", help="check features only")
    check.add_argument("--json", help="also write the full report to this file")
    check.set_defaults(func=_contract_check)

    drift = sub.add_parser("drift", help="compare a file with a reference; exit 1 on alert (beyond sampling noise)")
    drift.add_argument("reference", help="CSV/Parquet file, keel checkpoint (.ckpt) or bundle directory")
    drift.add_argument("current", help="CSV/Parquet file (tables) or .npy array (tensors)")
    drift.add_argument("--target", help="label column (excluded from the features)")
    drift.add_argument("--format", default="auto", choices=["auto", "csv", "parquet"])
    for name in ("psi-warn", "psi-alert", "js-warn", "js-alert"):
        drift.add_argument(f"--{name}", type=float)
    drift.add_argument("--alpha", type=float, help="significance level of the noise test (default 0.01): a "
                       "feature alerts only when its BH-adjusted p-value is below it")
    drift.add_argument("--json", help="also write the full report to this file")
    drift.set_defaults(func=_drift)

    bundle = sub.add_parser("bundle", help="check a bundle").add_subparsers(dest="action", required=True)
    verify = bundle.add_parser("verify", help="check hashes and re-run the stored samples; exit 1 on mismatch")
    verify.add_argument("dir")
    verify.set_defaults(func=_bundle_verify)

    predict = sub.add_parser("predict", help="predict with a bundle (ONNX Runtime; no torch)")
    predict.add_argument("dir", help="bundle directory")
    predict.add_argument("input", help="CSV/Parquet (tables), .npy (tensors), or for image bundles a PNG/JPEG file or a "
                                       "folder of them (decoded and resized as in training); checked against the "
                                       "contract first")
    predict.add_argument("--output", help="write predictions here (.csv or .json) instead of stdout")
    predict.add_argument("--int8", action="store_true", help="use the bundle's int8 model")
    predict.add_argument("--format", default="auto", choices=["auto", "csv", "parquet"])
    predict.add_argument("--keep", action="append", default=[], metavar="COLUMN",
                         help="carry this column of the input into the output (an ID, or the label); repeatable")
    predict.add_argument("--on-invalid", default="fail", choices=["fail", "skip"],
                         help="rows that break the contract: fail (nothing predicted; default) or skip (predict the "
                              "others; the invalid rows and their violations go to --invalid-output)")
    predict.add_argument("--invalid-output", help="where skipped rows go (default: <output or input>.invalid.csv)")
    predict.set_defaults(func=_predict)

    evaluate = sub.add_parser("evaluate", help="the task's metrics of a bundle on a labelled file (ONNX Runtime; "
                                               "no torch)")
    evaluate.add_argument("dir", help="bundle directory")
    evaluate.add_argument("input", help="labelled CSV/Parquet (with the contract's target column), or .npy samples "
                                        "with --labels")
    evaluate.add_argument("--labels", help="tensor bundles: a .npy of one label (or target value) per sample")
    evaluate.add_argument("--ignore", action="append", default=[], metavar="COLUMN",
                          help="a column of the file that is not an input (an ID): left out; repeatable")
    evaluate.add_argument("--output", help="also write the metrics here (JSON)")
    evaluate.add_argument("--int8", action="store_true", help="evaluate the bundle's int8 model")
    evaluate.add_argument("--format", default="auto", choices=["auto", "csv", "parquet"])
    evaluate.add_argument("--on-invalid", default="fail", choices=["fail", "skip"],
                          help="rows that break the contract: fail (default) or skip (evaluate the others)")
    evaluate.add_argument("--invalid-output", help="where skipped rows go (default: <output or input>.invalid.csv)")
    evaluate.set_defaults(func=_evaluate)

    srv = sub.add_parser("serve", help="serve a bundle over HTTP (ONNX Runtime; no torch): POST /predict, GET /health, "
                                       "/ready, /info, /metrics")
    srv.add_argument("dir", help="bundle directory (verified before anything listens)")
    srv.add_argument("--int8", action="store_true", help="serve the bundle's int8 model")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                                         "0.0.0.0 for every interface)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, logged)")
    srv.add_argument("--workers", type=int, default=1, help="server processes (each loads the bundle and keeps its "
                                                            "own drift window; /metrics counts all of them)")
    srv.add_argument("--batch-window-ms", type=float, default=2.0,
                     help="the most a model call waits for requests still being read, to share it (default 2 ms); "
                          "a lone request runs at once, and requests that queue while a call runs share the next one")
    srv.add_argument("--threads", type=int, default=1,
                     help="ONNX Runtime intra-op threads per worker (default 1: batched calls of a small model gain "
                          "nothing from more, and a pool thread per core competes with the event loop; raise it for "
                          "a big model, keeping workers x threads <= cores; 0: ONNX Runtime's default). Pool threads "
                          "never spin between calls")
    srv.add_argument("--max-batch", type=int, default=64, help="most rows in one model call (default 64)")
    srv.add_argument("--max-body-bytes", type=int, default=16 << 20, help="larger request bodies get 413 (default 16 MiB)")
    srv.add_argument("--drift-window", type=int, default=1000, help="served rows compared with the bundle's reference "
                                                                    "statistics (default 1000)")
    srv.add_argument("--drift-interval", type=float, default=1.0, help="seconds between drift comparisons (default 1)")
    srv.add_argument("--graceful-timeout", type=float, default=30.0,
                     help="on SIGTERM, seconds in-flight requests may take before they are cancelled (default 30)")
    srv.add_argument("--access-log", action="store_true", help="log one line per request (uvicorn's access log)")
    srv.set_defaults(func=_serve)

    expl = sub.add_parser("explain", help="explain a trained model (Captum): saliency, Integrated Gradients and "
                                          "Grad-CAM maps of test images, or permutation feature importance of a table")
    expl.add_argument("target", metavar="CHECKPOINT_OR_RUN",
                      help="a .ckpt file, or a run directory (its best checkpoint); the data is rebuilt from the "
                           "config stored in the checkpoint")
    expl.add_argument("--images", type=int, default=20, help="image data: test images explained, spread over the "
                                                             "classes (default 20)")
    expl.add_argument("--methods", default="saliency,integrated_gradients,grad_cam",
                      help="image data: comma-separated attribution methods (default: all three)")
    expl.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients' interpolation steps (default 32)")
    expl.add_argument("--repeats", type=int, default=5, help="table data: permutations per feature (default 5)")
    expl.add_argument("--max-rows", type=int, default=20000, help="rows of the split used at most (default 20000)")
    expl.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split explained")
    expl.add_argument("--seed", type=int, default=0, help="seeds the image choice and the permutations")
    expl.add_argument("--top", type=int, default=10, help="table data: features printed (default 10)")
    expl.add_argument("--out", help="output directory (default: <run dir>/explain)")
    expl.add_argument("--no-bundle", dest="bundle", action="store_false",
                      help="do not write the importance into the run's bundle manifest")
    expl.set_defaults(func=_explain)

    if command == "replay":
        from keel.replay import add_replay_parser

        add_replay_parser(sub)
    else:
        sub.add_parser("replay", help=REPLAY_HELP)

    sweep = sub.add_parser("sweep", help="look at a sweep (python train.py -m ...)").add_subparsers(
        dest="action", required=True
    )
    report = sweep.add_parser("report", help="one table of every job of a sweep dir, best first")
    report.add_argument("dirs", nargs="+", metavar="MULTIRUN_DIR",
                        help="sweep dir(s), e.g. outputs/train/multiruns/<date>_<time>_<id>")
    report.add_argument("--direction", choices=["maximize", "minimize"],
                        help="sort order (default: the Optuna study's, else from the metric's name)")
    report.add_argument("--metrics", help="comma-separated metric columns (default, by the jobs' task: "
                                          "classification test/acc,test/loss,val/acc_best,val/loss_best; "
                                          "regression test/rmse,test/r2,val/rmse_best,val/loss_best)")
    report.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    report.add_argument("--csv", metavar="FILE",
                        help="also write every job as CSV: one column per config key that differs between jobs "
                             "(optimizer, optimizer.lr, ...), then every metric")
    report.set_defaults(func=_sweep_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``keel`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Callable in-process (tests, scripts); :func:`console_main` is the process entry point.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv[0] if argv else None).parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `keel ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as e:  # bad threshold values and the like
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


def console_main() -> None:
    """Entry point of the ``keel`` console script and ``python -m keel.cli``: :func:`main`, then exit.

    After a successful ``keel predict`` the process ends through :func:`keel.fast_exit.exit_now`
    (outputs are written and closed): interpreter teardown (freeing numpy and ONNX Runtime, and
    pandas and pyarrow when a table was read with them) adds 30-40 ms, up to ~0.15 s with pandas,
    to a command that takes ~0.2 s.
    """
    argv = sys.argv[1:]
    status = main(argv)
    if status == EXIT_OK and argv[:1] == ["predict"]:
        exit_now(status)
    sys.exit(status)


if __name__ == "__main__":
    console_main()
