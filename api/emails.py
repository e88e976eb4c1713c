"""Email addresses: one normalization, and one definition of "the same address".

An address is stored as :func:`normalize_email` returns it: NFKC first, so a full-width or other
compatibility lookalike (full-width ``ada@example.com``) is the plain address it imitates, then
email-validator's normalized form (the domain in its Unicode form, lowercased). Two addresses are
the same user when their :func:`email_key` is equal: ``lower(normalize(email, NFKC))``, computed by
Postgres on both sides of every lookup and by the unique index on ``users``, so a row written
before the normalization existed, or by hand, is judged by the same rule.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import ColumnElement, func, literal_column

from api.errors import ValidationFailed


def normalize_email(email: str, *, field: str = "email") -> str:
    """The address to store; :class:`ValidationFailed` naming ``field`` when it is not one."""
    try:
        return validate_email(unicodedata.normalize("NFKC", email), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValidationFailed(f"invalid email: {exc}", field=field) from None


def email_key(value: Any) -> ColumnElement[str]:
    """The SQL expression two addresses are compared by (and the unique index is built on)."""
    return func.lower(func.normalize(value, literal_column("NFKC")))
