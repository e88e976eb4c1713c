"""The business rules of ``warehouse.rules`` as SQLAlchemy clauses over the API's own columns.

The rule's SQL is the one the marts run as a DuckDB macro: only the columns differ.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, TextClause, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import InstrumentedAttribute

from warehouse.rules import Rule

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


Column = InstrumentedAttribute[Any] | ColumnElement[Any]


def render(rule: Rule, *columns: Column) -> str:
    """``rule``'s SQL applied to these columns."""
    return rule.sql(*(str(c.expression.compile(dialect=_DIALECT)) for c in columns))


def clause(rule: Rule, *columns: Column) -> TextClause:
    """``rule`` applied to these columns, for a ``where()``."""
    return text(render(rule, *columns))
