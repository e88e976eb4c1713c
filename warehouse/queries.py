"""Typed read queries over the warehouse file; every function returns a Polars frame.

Connections are read-only and short-lived: the build replaces the file atomically, so a reader
sees either the previous warehouse or the new one, never a half-built one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import duckdb
import polars as pl


class WarehouseMissing(RuntimeError):
    """No warehouse has been built at this path yet."""


@contextmanager
def connect(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    if not Path(path).is_file():
        raise WarehouseMissing(f"no warehouse at {path}: run the build-warehouse flow first")
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def as_of(path: Path) -> date:
    with connect(path) as con:
        return con.execute("SELECT as_of FROM keel_params").fetchone()[0]  # type: ignore[index,no-any-return]


def org_activity(path: Path, organization_id: str, start: date, end: date) -> pl.DataFrame:
    """org_daily_activity joined with org_active_users for one org, ``start`` to ``end`` inclusive."""
    with connect(path) as con:
        return con.sql(
            """
            SELECT a.day, a.events, a.active_users, a.new_users, u.dau, u.wau, u.mau, u.dau_mau
            FROM org_daily_activity a JOIN org_active_users u USING (organization_id, day)
            WHERE a.organization_id = ? AND a.day BETWEEN ? AND ?
            ORDER BY a.day
            """,
            params=[organization_id, start, end],
        ).pl()


def org_health(path: Path, organization_id: str | None = None) -> pl.DataFrame:
    """org_health rows (one org, or all, worst first)."""
    with connect(path) as con:
        where, params = ("WHERE organization_id = ?", [organization_id]) if organization_id else ("", [])
        return con.sql(f"SELECT * FROM org_health {where} ORDER BY score, name", params=params).pl()


def wau_series(path: Path, days: int) -> pl.DataFrame:
    """WAU per org per day over the ``days`` days ending at the as-of date (for charts), with
    ``wau_complete``: whether the lake holds that day's whole 7-day window."""
    with connect(path) as con:
        return con.sql(
            """
            SELECT organization_id, day, wau, wau_complete FROM org_active_users
            WHERE day > (SELECT as_of FROM keel_params) - ? AND day <= (SELECT as_of FROM keel_params)
            ORDER BY organization_id, day
            """,
            params=[days],
        ).pl()


def seat_use(path: Path) -> pl.DataFrame:
    """Seats (or members), monthly active users and utilization per org at the as-of date."""
    with connect(path) as con:
        return con.sql(
            """
            SELECT organization_id, seats_purchased, active_members, active_users, utilization
            FROM seat_utilization WHERE day = (SELECT as_of FROM keel_params)
            """
        ).pl()


def sql(path: Path, query: str) -> pl.DataFrame:
    """An analyst's query, read-only."""
    with connect(path) as con:
        return con.sql(query).pl()


def describe(path: Path) -> pl.DataFrame:
    """``keel_params`` and every model, with its grain and columns (type and description)."""
    with connect(path) as con:
        return con.sql(
            """
            SELECT c.name AS table_name, c.kind, c.grain, c.key, col.column_name, col.data_type,
                   coalesce(d.description, '') AS description
            FROM keel_catalog c
            JOIN information_schema.columns col ON col.table_name = c.name
            LEFT JOIN keel_columns d ON d.table_name = c.name AND d.column_name = col.column_name
            ORDER BY CASE c.kind WHEN 'parameters' THEN 0 WHEN 'staging' THEN 1 ELSE 2 END, c.name,
                     col.ordinal_position
            """
        ).pl()


def monthly_active_users(path: Path) -> pl.DataFrame:
    """Each organization's monthly active users at the warehouse's as-of date (org_active_users.mau)."""
    with connect(path) as con:
        return con.sql(
            "SELECT organization_id, mau FROM org_active_users WHERE day = (SELECT as_of FROM keel_params)"
        ).pl()
