"""Field types shared by every domain's msgspec schemas."""

from __future__ import annotations

from typing import Annotated

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="1-200 characters.")]
Slug = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9-]*[a-z0-9]$",
        description="3-63 lowercase letters, digits and hyphens; starts and ends with a letter or digit.",
        examples=["acme-corp"],
    ),
]
Email = Annotated[
    str,
    msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$", examples=["ada@example.com"]),
]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class Struct(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """Base for request bodies: unknown fields are an error, not silently dropped."""
