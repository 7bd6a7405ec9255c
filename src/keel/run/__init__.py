"""A run's lifecycle: run directory, lock, record (run.json), the resume plan, the report.

Thin on purpose: no training logic (that is :mod:`keel.fit`). Light at import; the submodules
import what they need when called.
"""
