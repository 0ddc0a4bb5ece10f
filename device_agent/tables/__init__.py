"""Table look-ups: requests answered from a CSV of published measurements by ``arch_key``.

A table is not a backend: it runs no model, needs no model bytes and takes no job slot. The
rest of the agent asks :func:`answers_by_arch_key` what a request's ``build.backend`` names,
so the name ``"table"`` is known here only. :func:`load_table` is shared with the search side
(its accuracy table).
"""
from __future__ import annotations

from typing import Any

from device_agent.tables.load import load_table
from device_agent.tables.source import TABLE, TableSource


def answers_by_arch_key(name: str) -> bool:
    """True when ``name`` (a build config's backend) is answered by a table look-up by
    ``arch_key``, False when it runs a model on a backend."""
    return name == TABLE


def table_names() -> list[str]:
    """The names that select a table look-up (for CLI choices and listings)."""
    return [TABLE]


def describe_table(table: TableSource | None) -> dict[str, Any]:
    """The ``Describe`` entry of table look-ups (``available``, ``reason``, and the configured
    table's facts when the agent has one)."""
    ok, reason = TableSource.availability()
    out: dict[str, Any] = {"available": ok, "reason": reason}
    if table is not None:
        out["table"] = table.describe()
        out["available"] = bool(table.table_path)
    return out


__all__ = ["TABLE", "TableSource", "answers_by_arch_key", "describe_table", "load_table", "table_names"]
