"""Load, verify and run a keel bundle (ONNX Runtime + numpy; pandas/pandera only for the table
files that ``keel.serve.table`` leaves to them, and for ``verify_bundle``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keel.data.contract import ContractViolationError, contract_from_dict
from keel.errors import KeelError
from keel.export.bundle import BundleError, check_files, read_manifest, safe_member
from keel.export.runtime import run, session
from keel.serve.table import CsvTable, check_table, encode_table, read_csv


@dataclass
class Bundle:
    """A verified bundle: manifest, contract and an ONNX Runtime session."""

    root: Path
    manifest: dict[str, Any]
    contract: Any
    variant: str = "fp32"
    _session: Any = field(default=None, repr=False)

    @property
    def is_table(self) -> bool:
        return self.manifest["data"]["contract"].get("kind") == "table"

    @property
    def session(self) -> Any:
        if self._session is None:
            name = self.manifest["models"].get(self.variant)
            if not name:
                raise BundleError(f"{self.root}: this bundle has no {self.variant} model")
            self._session = session(safe_member(self.root, name))
        return self._session

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
        if p.suffix == ".npy":
            if self.is_table:
                raise KeelError(f"{p}: this bundle serves a table; give a CSV or Parquet file")
            try:
                return np.load(p, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise KeelError(f"{p}: not a readable .npy array ({e})") from None
        if not self.is_table:
            raise KeelError(f"{p}: this bundle serves tensors; give a .npy array of shape (N, *shape)")
        from keel.data.table_io import read_table, table_format

        fmt = table_format(p, fmt)
        table = read_csv(p, self.contract) if fmt == "csv" else None
        return table if table is not None else read_table(p, fmt)

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
                raise ContractViolationError([report], source)
            return encode_table(self.contract, data)
        if self.is_table:
            report = self.contract.check(data, source, with_target=False) if len(data) else None
            if report is not None and not report.ok:
                raise ContractViolationError([report], source)
            if report is None:
                raise BundleError(f"{source}: no rows to predict")
            return self.contract.encode_features(data)
        try:
            x = np.asarray(data)
        except (ValueError, TypeError):  # ragged nested sequences: the contract check names the problem
            raise ContractViolationError([self.contract.check(data, None, source)], source) from None
        if x.ndim == len(self.contract.shape):  # a single sample
            x = x[None]
        report = self.contract.check(x, None, source)
        if not report.ok:
            raise ContractViolationError([report], source)
        return np.ascontiguousarray(x, dtype=np.float32)

    @property
    def task(self) -> Any:
        """The bundle's task (bundles from before the task seam are classification)."""
        from keel.tasks import get_task

        return get_task(self.manifest.get("task", "classification"))

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
