"""Load, verify and run a keel bundle (ONNX Runtime + numpy; pandas/pandera only for the table
files that ``keel.serve.table`` leaves to them, and for ``verify_bundle``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from keel.data.contract import ContractReport, ContractViolationError, Violation, contract_from_dict
from keel.errors import KeelError
from keel.export.bundle import BundleError, check_files, read_manifest, safe_member
from keel.export.runtime import run, session
from keel.serve.images import DEFAULT_MODES, DecodedImages, image_shape_problem, is_image_name, load_images
from keel.serve.table import CsvTable, check_table, encode_table, read_csv


ON_INVALID = ("fail", "skip")


def input_fix(source: str, whole: list[Any] | None = None) -> str:
    """The Fix line of a contract violation in a file given to the bundle (not a training config);
    ``whole``: the file-level violations (columns), which no row can be skipped for."""
    if whole:
        what = "; ".join(v.describe() for v in whole)
        return (f"Fix: give {source} the contract's columns ({what}): remove extra columns or name them with "
                "--keep COLUMN (predict) / --ignore COLUMN (evaluate); --on-invalid skip leaves out rows, not "
                "columns. The bundle's contract is data.contract in its manifest.json")
    return (f"Fix: correct these rows of {source}, or predict the valid ones with --on-invalid skip (the others go "
            "to a side file with their violations); the bundle's contract is data.contract in its manifest.json")


@dataclass
class Rows:
    """Rows read from a file for the bundle: ``data`` (features, what :meth:`Bundle.encode` takes),
    ``target`` (the label column or labels file, raw, when present), ``carried`` (``--keep``
    columns as text; for image files the ``file`` of each row), ``n`` (rows in the file),
    ``unreadable`` (image files that did not decode: one row-level violation each; their rows
    in ``data`` are zeros)."""

    data: Any
    target: Any
    carried: dict[str, list[str]]
    n: int
    unreadable: tuple[Violation, ...] = ()


@dataclass
class Encoded:
    """Contract-checked rows: ``x`` (model input), ``y`` (encoded targets or None), ``rows``
    (the file's row ids of ``x``), ``invalid`` (row id -> the rules it breaks, rows left out),
    ``report`` (the check's report when ``skip`` left rows out, else None)."""

    x: np.ndarray
    y: np.ndarray | None
    rows: np.ndarray
    invalid: dict[int, list[str]]
    report: ContractReport | None = None


def _subset(data: Any, idx: np.ndarray) -> Any:
    if isinstance(data, CsvTable):
        return CsvTable(data.header, int(idx.size), {k: v[idx] for k, v in data.numeric.items()},
                        {k: [v[i] for i in idx] for k, v in data.text.items()})
    if hasattr(data, "iloc"):
        return data.iloc[idx].reset_index(drop=True)
    return np.asarray(data)[idx]


class ContractInput:
    """Files checked against a data contract and encoded for the model: what a bundle serves and
    what ``eval.py`` tests a checkpoint on (``self.contract``: a keel data contract)."""

    contract: Any

    @property
    def is_table(self) -> bool:
        return hasattr(self.contract, "feature_names")  # TableContract; a TensorContract has a sample shape

    @property
    def image_modes(self) -> tuple[str, ...]:
        """The Pillow modes image files may have (the training data config's ``modes``)."""
        return tuple(DEFAULT_MODES)

    def read_images(self, path: str | Path) -> DecodedImages:
        """An image file, or every PNG/JPEG under a folder (recursively, sorted), decoded as the
        model's input: float32 ``(N, C, H, W)`` raw pixels in [0, 255], resized to the contract's
        ``H x W`` by ``keel.serve.images`` (the decoding that training used). Files that fail are
        listed in the result's ``problems``, not raised.

        Raises:
            KeelError: the bundle does not take images; a folder without images.
        """
        p = Path(path)
        shape = list(getattr(self.contract, "shape", ()) or ())
        problem = "a table" if self.is_table else image_shape_problem(shape)
        if problem:
            raise KeelError(f"{p}: this bundle does not take images ({problem}). Fix: give "
                            + ("a CSV or Parquet file" if self.is_table else "a .npy array of shape (N, *shape)"))
        if p.is_dir():
            files = sorted((f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                            and is_image_name(f.name)), key=lambda f: str(f.relative_to(p)))
            if not files:
                raise KeelError(f"{p}: a folder without PNG/JPEG images (.png, .jpg, .jpeg). Fix: give an image file, "
                                "a folder of images, or a .npy array")
        else:
            files = [p]
        return load_images(files, shape, self.image_modes)

    def read(self, path: str | Path, fmt: str = "auto") -> Any:
        """The rows in ``path`` to predict on: an array from a ``.npy`` file (tensor bundles);
        for table bundles a CSV or Parquet file (``fmt``: auto, csv, parquet) as a
        :class:`~keel.serve.table.CsvTable` when ``keel.serve.table.read_csv`` takes the file,
        else as a DataFrame (``read_table``).

        Raises:
            KeelError: naming the file and the fix (the wrong kind of file for this bundle, or
                unreadable).
        """
        p = Path(path)
        if not self.is_table and (p.is_dir() or is_image_name(p.name)):
            decoded = self.read_images(p)
            if decoded.problems:
                raise ContractViolationError([_image_report(self.contract, decoded, p.name)], p.name,
                                             fix=input_fix(p.name))
            return decoded.x
        if p.suffix == ".npy":
            if self.is_table:
                raise KeelError(f"{p}: this bundle serves a table; give a CSV or Parquet file")
            try:
                return np.load(p, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise KeelError(f"{p}: not a readable .npy array ({e})") from None
        if not self.is_table:
            images = "" if image_shape_problem(list(self.contract.shape)) else ", a PNG/JPEG image or a folder of them"
            raise KeelError(f"{p}: this bundle serves tensors; give a .npy array of shape (N, *shape){images}")
        from keel.data.table_io import SERVING_FIXES, read_table, table_format

        fmt = table_format(p, fmt, SERVING_FIXES)
        table = read_csv(p, self.contract) if fmt == "csv" else None
        return table if table is not None else read_table(p, fmt, SERVING_FIXES)

    def encode(self, data: Any, source: str) -> np.ndarray:
        """Check ``data`` against the bundle's contract, then encode it as the model's input.

        ``data``: what :meth:`read` returns: a CsvTable or DataFrame (tables), an array
        ``(N, *shape)`` (tensors).

        Raises:
            ContractViolationError: listing every violation (nothing is predicted).
        """
        if isinstance(data, CsvTable):
            report = check_table(self.contract, data, source)
            if not report.ok:
                raise ContractViolationError([report], source, fix=input_fix(source))
            return encode_table(self.contract, data)
        if self.is_table:
            report = self.contract.check(data, source, with_target=False) if len(data) else None
            if report is not None and not report.ok:
                raise ContractViolationError([report], source, fix=input_fix(source))
            if report is None:
                raise BundleError(f"{source}: no rows to predict")
            return self.contract.encode_features(data)
        try:
            x = np.asarray(data)
        except (ValueError, TypeError):  # ragged nested sequences: the contract check names the problem
            raise ContractViolationError([self.contract.check(data, None, source)], source,
                                         fix=input_fix(source)) from None
        if x.ndim == len(self.contract.shape):  # a single sample
            x = x[None]
        report = self.contract.check(x, None, source)
        if not report.ok:
            raise ContractViolationError([report], source, fix=input_fix(source))
        return np.ascontiguousarray(x, dtype=np.float32)

    def read_rows(self, path: str | Path, fmt: str = "auto", keep: tuple[str, ...] = (),
                  labels: str | Path | None = None, with_target: bool = False) -> Rows:
        """The rows of ``path`` with what is not a feature set apart: a table's label column
        (ignored by predict, the targets of evaluate), ``keep`` columns (carried to the output as
        text), or a tensor file's labels from ``labels`` (``.npy``).

        A plain CSV without ``keep`` or targets is read without pandas, as :meth:`read` does; the
        kept columns' values and typed targets need pandas' reader.

        Raises:
            KeelError: naming the file: a ``keep`` column it lacks, labels of the wrong length, a
                tensor file with ``keep``.
        """
        p = Path(path)
        if not self.is_table:
            if keep:
                raise KeelError(f"--keep {' '.join(keep)}: a tensor file has no columns to keep. Fix: leave out --keep")
            if p.is_dir() or is_image_name(p.name):
                if labels is not None:
                    raise KeelError(f"--labels {labels}: give labels with a .npy of samples, not with image files")
                decoded = self.read_images(p)
                root = p if p.is_dir() else p.parent
                names = [str(Path(f).relative_to(root)) if p.is_dir() else Path(f).name for f in decoded.files]
                return Rows(decoded.x, None, {"file": names}, len(names),
                            _image_report(self.contract, decoded, p.name, root).violations)
            x = self.read(p, fmt)
            n = len(x) if np.ndim(x) > 0 else 1  # a 0-d array: one (malformed) sample for the check to name
            y = None
            if labels is not None:
                y = self.read(labels, fmt)
                if np.ndim(y) != 1 or len(y) != n:
                    raise KeelError(f"{labels}: labels of shape {list(np.shape(y))} for the {n} samples of {p}. Fix: "
                                    "a 1-d .npy of one label per sample, in the same order")
            return Rows(x, y, {}, n)
        target = self.contract.target
        features = set(self.contract.feature_names)
        if not keep and not with_target:
            data = self.read(p, fmt)
            if isinstance(data, CsvTable):
                # the label column is not an input: left out of the check (an extra column otherwise)
                return Rows(replace(data, header=tuple(h for h in data.header if h != target)), None, {}, len(data))
        else:
            from keel.data.table_io import SERVING_FIXES, read_table

            data = read_table(p, fmt, SERVING_FIXES)
        data = data.reset_index(drop=True)
        missing = [c for c in keep if c not in data.columns]
        if missing:
            raise KeelError(f"--keep {', '.join(missing)}: no such column in {p} (it has {', '.join(map(str, data.columns))})."
                            " Fix: name columns of the file")
        carried = {c: ["" if v is None or v != v else str(v) for v in data[c].tolist()] for c in keep}
        y = data[target] if target in data.columns else None
        drop = [c for c in (*keep, target) if c in data.columns and c not in features]
        return Rows(data.drop(columns=list(dict.fromkeys(drop))), y, carried, len(data))

    def encode_rows(self, rows: Rows, source: str, on_invalid: str = "fail", with_target: bool = False) -> Encoded:
        """Check ``rows`` against the contract (with the targets when ``with_target``) and encode
        them. ``on_invalid``: ``fail`` raises ContractViolationError listing every violation;
        ``skip`` leaves out the rows that break a row-level rule (a file-level problem, such as a
        missing column, still fails).

        Raises:
            ContractViolationError: the violations, with a Fix line about the input file.
            KeelError: ``with_target`` and no targets; ``skip`` left no valid row.
        """
        if on_invalid not in ON_INVALID:
            raise KeelError(f"--on-invalid {on_invalid}: expected one of {', '.join(ON_INVALID)}")
        if with_target and rows.target is None:
            what = (f"a {self.contract.target!r} column" if self.is_table else "labels (--labels FILE.npy)")
            raise KeelError(f"{source}: no targets to evaluate against: expected {what}. Fix: give a labelled file")
        data = rows.data
        if self.is_table and with_target:
            data = data.assign(**{self.contract.target: rows.target})
            report = self.contract.check(data, source, with_target=True) if len(data) else None
        elif self.is_table:
            report = (check_table(self.contract, data, source) if isinstance(data, CsvTable)
                      else self.contract.check(data, source, with_target=False) if len(data) else None)
        else:
            try:
                x = np.asarray(data)
            except (ValueError, TypeError):  # ragged nested sequences: the contract check names the problem
                raise ContractViolationError([self.contract.check(data, None, source)], source,
                                             fix=input_fix(source)) from None
            if x.ndim == len(self.contract.shape):  # a single sample
                x = data = x[None]
            rows = replace(rows, n=len(x) if x.ndim else 1)
            report = self.contract.check(x, rows.target if with_target else None, source)
            if rows.unreadable:  # image files that did not decode (their rows are zeros)
                report = ContractReport(report.contract, report.split, report.rows,
                                        rows.unreadable + report.violations)
        if report is None:
            raise BundleError(f"{source}: no rows to predict")
        keep_rows = np.arange(rows.n)
        invalid: dict[int, list[str]] = {}
        if not report.ok:
            whole = [v for v in report.violations if v.rows is None]
            if on_invalid == "fail" or whole:
                fix = input_fix(source, whole)
                if rows.unreadable and not whole:
                    fix = (f"Fix: replace or remove these image files of {source} (PNG or JPEG, a mode the bundle "
                           "takes), or predict the others with --on-invalid skip (the files left out go to a side "
                           "file with their problems)")
                raise ContractViolationError([report], source, fix=fix)
            for v in report.violations:
                for r in np.asarray(v.rows).tolist():
                    invalid.setdefault(int(r), []).append(f"{v.rule} on {v.feature}")
            keep_rows = np.setdiff1d(keep_rows, np.fromiter(invalid, dtype=np.int64))
            if keep_rows.size == 0:
                raise ContractViolationError([report], source, fix=input_fix(source))
            data = _subset(data, keep_rows)
        if self.is_table:
            table = data.drop(columns=[self.contract.target]) if with_target else data
            x = encode_table(self.contract, table) if isinstance(table, CsvTable) else self.contract.encode_features(table)
        else:
            x = np.ascontiguousarray(data, dtype=np.float32)
        y = None
        if with_target:
            y = self.contract.encode_labels(np.asarray(rows.target)[keep_rows] if not self.is_table
                                            else rows.target.iloc[keep_rows])
        return Encoded(x, y, keep_rows, dict(sorted(invalid.items())), report if invalid else None)



def _image_report(contract: Any, decoded: DecodedImages, source: str, root: Path | None = None) -> ContractReport:
    """The image files that did not decode, one row-level violation each (named by path)."""
    n = len(decoded.files)

    def name(path: str) -> str:
        try:
            return str(Path(path).relative_to(root)) if root is not None else Path(path).name
        except ValueError:
            return path

    violations = tuple(Violation(p.rule, name(p.path), 1, n, detail=p.detail, rows=np.array([i], dtype=np.int64))
                       for i, p in decoded.problems.items())
    return ContractReport(contract.name, source, n, violations)


class LabelledFile(ContractInput):
    """A labelled file for a checkpoint's ``contract`` (``eval.py file=...``)."""

    def __init__(self, contract: Any) -> None:
        self.contract = contract


@dataclass
class Bundle(ContractInput):
    """A verified bundle: manifest, contract and an ONNX Runtime session."""

    root: Path
    manifest: dict[str, Any]
    contract: Any
    variant: str = "fp32"
    _session: Any = field(default=None, repr=False)

    @property
    def session(self) -> Any:
        if self._session is None:
            name = self.manifest["models"].get(self.variant)
            if not name:
                raise BundleError(f"{self.root}: this bundle has no {self.variant} model")
            self._session = session(safe_member(self.root, name))
        return self._session

    def open_session(self, threads: int = 1, spin: bool = False) -> Any:
        """(Re)build :attr:`session` with ``threads`` intra-op threads (0: ONNX Runtime's default,
        one per core) and, ``spin=False``, pool threads that block between calls instead of
        spinning: ``keel serve``'s session (see ``--threads``)."""
        name = self.manifest["models"].get(self.variant)
        if not name:
            raise BundleError(f"{self.root}: this bundle has no {self.variant} model")
        self._session = session(safe_member(self.root, name), threads=threads, spin=spin)
        return self._session

    @property
    def task(self) -> Any:
        """The bundle's task (bundles from before the task seam are classification)."""
        from keel.tasks import get_task

        return get_task(self.manifest.get("task", "classification"))

    @property
    def image_modes(self) -> tuple[str, ...]:
        data = (self.manifest.get("config") or {}).get("data") or {}
        return tuple(data.get("modes") or DEFAULT_MODES)

    def predict(self, data: Any, source: str = "input") -> tuple[np.ndarray, ...]:
        """The task's outputs (classification: logits and probabilities; regression: the
        prediction in the target's units) for contract-checked ``data``."""
        return run(self.session, self.encode(data, source))


def load_bundle(root: str | Path, variant: str = "fp32", verify_hashes: bool = True) -> Bundle:
    """Open a bundle after checking every file's sha256 against the manifest.

    Raises:
        BundleError: missing/changed/unlisted files, paths outside the bundle, unknown variant.
    """
    root = Path(root)
    manifest = read_manifest(root)
    if variant not in ("fp32", "int8"):
        raise BundleError(f"model variant {variant!r}: expected fp32 or int8")
    if verify_hashes:
        problems = check_files(root, manifest)
        if problems:
            raise BundleError(f"{root}: refusing to serve a bundle that fails its checks: {'; '.join(problems)}")
    if variant == "int8" and not manifest["models"].get("int8"):
        reason = (manifest.get("quantization") or {}).get("reason", "no int8 model was made")
        raise BundleError(f"{root}: no int8 model in this bundle ({reason})")
    return Bundle(root, manifest, contract_from_dict(manifest["data"]["contract"]), variant)


def verify_bundle(root: str | Path, atol: float = 1e-5) -> list[str]:
    """Every problem found: hashes, paths, and stored samples re-run through ONNX Runtime
    (fp32 and int8) compared with the stored outputs; [] when the bundle is intact."""
    root = Path(root)
    manifest = read_manifest(root)
    problems = check_files(root, manifest)
    if problems:
        return problems
    samples = manifest.get("samples", {})
    for key in samples.values():
        safe_member(root, key)
    x = np.load(safe_member(root, samples["input"]), allow_pickle=False)
    from keel.tasks import get_task

    names = get_task(manifest.get("task", "classification")).outputs
    variants = ["fp32"] + (["int8"] if manifest["models"].get("int8") else [])
    for variant in variants:
        sess = session(safe_member(root, manifest["models"][variant]))
        keys = [name if variant == "fp32" else f"{name}_int8" for name in names]
        for key, got in zip(keys, run(sess, x)):
            if key not in samples:
                problems.append(f"{variant} {key}: no stored sample outputs in the manifest")
                continue
            expected = np.load(safe_member(root, samples[key]), allow_pickle=False)
            diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
            if diff > atol:
                problems.append(f"{variant} {key}: outputs differ from the stored ones (max |diff| {diff:.3g} > {atol})")
    if "input_table" in samples:
        import pandas as pd

        contract = contract_from_dict(manifest["data"]["contract"])
        table = pd.read_csv(safe_member(root, samples["input_table"]))
        report = contract.check(table, "samples/input.csv", with_target=False)
        if not report.ok:
            problems.append("samples/input.csv breaks the bundle's own contract: " + report.violations[0].describe())
        elif not np.allclose(contract.encode_features(table), x, equal_nan=True):
            problems.append("samples/input.csv does not encode to samples/input.npy (serving transform mismatch)")
    return problems
