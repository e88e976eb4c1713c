"""Keel's own bookkeeping: the settings the database enforces, the lake export's watermarks.

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Integer, SmallInteger, String, func
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import APP_READ_ONLY, Base, app_privileges, utcnow


class KeelSetting(Base):
    """One row of settings the database itself enforces, written by ``keel db upgrade`` as the
    owner (the application role may read it, never change it)."""

    __tablename__ = "keel_settings"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),
                      CheckConstraint("audit_retention_days >= 1", name="audit_retention_days_positive"),
                      app_privileges(*APP_READ_ONLY))  # fmt: skip

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    #: KEEL_AUDIT_RETENTION_DAYS: keel_audit_prune refuses entries recorded more recently.
    audit_retention_days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class ExportProgress(Base):
    """How far the lake export of each append-only table has got (its watermark), recorded by the
    exporter after the lake holds the rows; pruning and partition drops never go past it."""

    __tablename__ = "export_progress"
    __table_args__ = app_privileges("SELECT", "INSERT", "UPDATE")

    table_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
