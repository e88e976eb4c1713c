"""Exposure tracking: ``?track=true`` records each answer as a ``$flag_evaluated`` event, through
the same ingest path product clients use, so the warehouse can show adoption by flag."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth.context import Principal
from api.events.services import Origin, PartitionKeeper, ingest
from api.flags.evaluation import Evaluation
from api.tokens.models import TokenKind

EXPOSURE_EVENT = "$flag_evaluated"
_encode = msgspec.json.Encoder()


async def record_exposures(
    session: AsyncSession,
    results: Iterable[Evaluation],
    *,
    organization_id: str,
    user_id: str | None,
    principal: Principal,
    partitions: PartitionKeeper,
    origin: Origin,
) -> int:
    """Store one event per answer in the request's transaction; returns how many were stored."""
    who = user_id or (str(principal.user_id) if principal.user_id else None)
    raws = [
        _encode.encode(
            {
                "event": EXPOSURE_EVENT,
                **({"user_id": who} if who else {"anonymous_id": f"org:{organization_id}"}),
                "properties": {
                    "flag": r.key,
                    "enabled": r.enabled,
                    "reason": r.reason.value,
                    "bucket": r.bucket,
                    "rollout_percentage": r.rollout_percentage,
                    # The variant served and the rule that decided, when there are any.
                    **({"variant": r.variant} if r.variant is not None else {}),
                    **({"rule": r.rule} if r.rule is not None else {}),
                },
            }
        )
        for r in results
    ]
    if not raws:
        return 0
    # The events belong to the evaluated org, whatever credential asked (a member's token or its key).
    as_org = Principal(
        token_id=principal.token_id, kind=TokenKind.org_ingest, organization_id=uuid.UUID(organization_id)
    )
    result = await ingest(session, raws, principal=as_org, partitions=partitions, origin=origin)
    return result.accepted
