"""Row operations: what pure `project()` functions return, applied in one place."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from functools import lru_cache
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
                conn.execute(_insert_sql(table, tuple(row)), tuple(row.values()))
            case Update(table, (key_col, key), values):
                conn.execute(_update_sql(table, tuple(values), (key_col,)), (*values.values(), key))
            case UpdateWhere(table, where, values):
                columns = tuple(c for c, _ in where)
                conn.execute(
                    _update_sql(table, tuple(values), columns), (*values.values(), *(v for _, v in where))
                )
            case Increment(table, (key_col, key), column):
                conn.execute(_increment_sql(table, key_col, column), (key,))


# SQL text depends only on the shape of an operation: build each shape once.
@lru_cache(maxsize=256)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})"


@lru_cache(maxsize=256)
def _update_sql(table: str, columns: tuple[str, ...], where: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = ?" for c in columns)
    conds = " AND ".join(f"{c} = ?" for c in where)
    return f"UPDATE {table} SET {sets} WHERE {conds}"


@lru_cache(maxsize=64)
def _increment_sql(table: str, key_col: str, column: str) -> str:
    return (
        f"INSERT INTO {table} ({key_col}, {column}) VALUES (?, 1) "
        f"ON CONFLICT({key_col}) DO UPDATE SET {column} = {column} + 1"
    )
