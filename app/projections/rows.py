"""Row operations: what pure `project()` functions return, applied in one place."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["Increment", "Insert", "RowOp", "Update", "UpdateWhere", "apply_ops"]


@dataclass(frozen=True, slots=True)
class Insert:
    table: str
    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Update:
    table: str
    key: tuple[str, Any]  # (column, value)
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Increment:
    table: str
    key: tuple[str, Any]
    column: str = "count"


@dataclass(frozen=True, slots=True)
class UpdateWhere:
    table: str
    where: tuple[tuple[str, Any], ...]  # column = value, all must hold
    values: dict[str, Any]


RowOp = Insert | Update | UpdateWhere | Increment


def apply_ops(conn: sqlite3.Connection, ops: list[RowOp]) -> None:
    """Apply inside the caller's transaction (table names are ours, never input)."""
    for op in ops:
        match op:
            case Insert(table, row):
                cols = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                conn.execute(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", tuple(row.values()))
            case Update(table, (key_col, key), values):
                sets = ", ".join(f"{c} = ?" for c in values)
                conn.execute(f"UPDATE {table} SET {sets} WHERE {key_col} = ?", (*values.values(), key))
            case UpdateWhere(table, where, values):
                sets = ", ".join(f"{c} = ?" for c in values)
                conds = " AND ".join(f"{c} = ?" for c, _ in where)
                conn.execute(
                    f"UPDATE {table} SET {sets} WHERE {conds}",
                    (*values.values(), *(v for _, v in where)),
                )
            case Increment(table, (key_col, key), column):
                conn.execute(
                    f"INSERT INTO {table} ({key_col}, {column}) VALUES (?, 1) "
                    f"ON CONFLICT({key_col}) DO UPDATE SET {column} = {column} + 1",
                    (key,),
                )
