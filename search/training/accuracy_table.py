"""The accuracy table: ``--accuracy-table CSV:COLUMN``, a published accuracy looked up by
architecture key instead of training (e.g. NAS-Bench-201's ``c10_test_200ep``).

The CSV is read by the agent's table reader (one reader for both sides); percentages (0..100)
become fractions like a trained accuracy.
"""
from __future__ import annotations

from pathlib import Path

from device_agent.tables import load_table


class AccuracyTableError(ValueError):
    """A malformed ``CSV:COLUMN`` spec, a missing file or column, an unknown architecture."""


class AccuracyTable:
    """``CSV:COLUMN``: accuracy by architecture key (``key_column``, default ``arch_str``)."""

    def __init__(self, spec: str, *, key_column: str = "arch_str") -> None:
        path, sep, column = spec.rpartition(":")
        if not sep or not path:
            raise AccuracyTableError(f"--accuracy-table wants CSV:COLUMN, got {spec!r}")
        if not Path(path).is_file():
            raise AccuracyTableError(f"accuracy table {path} does not exist")
        try:
            rows = load_table(path, key_column, (column,))
        except ValueError as exc:
            raise AccuracyTableError(f"{path}: needs columns {key_column!r} and {column!r} ({exc})") from None
        self.values = {key: values[0] for key, values in rows.items() if values[0] is not None}
        if not self.values:
            raise AccuracyTableError(f"{path}: column {column!r} holds no numbers")
        self.source = f"table:{Path(path).name}:{column}"
        # percentages (NAS-Bench-201 reports 0..100) become fractions like a trained accuracy
        self.scale = 0.01 if max(self.values.values(), default=0) > 1.0 else 1.0

    def lookup(self, key: str) -> float:
        """The accuracy (0..1) of architecture ``key``."""
        try:
            return self.values[key] * self.scale
        except KeyError:
            raise AccuracyTableError(f"architecture {key!r} is not in the accuracy table") from None
