"""Flag definitions and per-org overrides: every change audited with before and after.

Each write also bumps ``flags_version`` (a trigger, same transaction), which is how the API
processes' caches learn of it; nothing here needs to remember to.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth.context import Actor, RequestContext
from api.db.base import utcnow
from api.errors import Conflict, NotFound, ValidationFailed
from api.flags.evaluation import Evaluation, Override, Stickiness, evaluate
from api.flags.models import FeatureFlag, FlagOverride, FlagSegment
from api.flags.rules import check_rules, check_variants
from api.flags.schemas import RuleIn, VariantIn
from api.flags.store import canonical_org_id, definition, org_facts, read_segments
from api.flags.targeting import Facts
from api.orgs.live import get_live_org
from api.orgs.models import Organization
from api.pagination import decode_cursor

FLAG = "feature_flag"
FLAG_OVERRIDE = "feature_flag_override"
#: Keys a URL cannot carry as a path segment (clients resolve them away).
UNADDRESSABLE_KEYS = frozenset({".", ".."})


def flag_not_found(key: str) -> NotFound:
    return NotFound(f"no flag with the key {key!r}")


def snapshot(flag: FeatureFlag) -> dict[str, Any]:
    return {
        "key": flag.key, "description": flag.description, "enabled": flag.enabled,
        "rollout_percentage": flag.rollout_percentage, "stickiness": flag.stickiness.value,
        "archived": flag.archived_at is not None, "rules": list(flag.rules or []),
        "variants": list(flag.variants or []),
    }  # fmt: skip


def override_snapshot(override: FlagOverride) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": override.enabled, "reason": override.reason}
    if override.variant is not None:
        out["variant"] = override.variant
    return out


async def segment_names(session: AsyncSession) -> list[str]:
    return list((await session.scalars(select(FlagSegment.name))).all())


async def get_flag(session: AsyncSession, key: str, *, for_update: bool = False) -> FeatureFlag:
    query = select(FeatureFlag).where(FeatureFlag.key == key)
    flag = await session.scalar(query.with_for_update() if for_update else query)
    if flag is None:
        raise flag_not_found(key)
    return flag


async def list_flags(
    session: AsyncSession, *, include_archived: bool, cursor: str | None, limit: int
) -> list[FeatureFlag]:
    after = decode_cursor(cursor)
    query = select(FeatureFlag).order_by(FeatureFlag.id).limit(limit + 1)
    if not include_archived:
        query = query.where(FeatureFlag.archived_at.is_(None))
    if after is not None:
        query = query.where(FeatureFlag.id > after)
    return list((await session.scalars(query)).all())


async def overrides_of(session: AsyncSession, flag: FeatureFlag) -> list[tuple[FlagOverride, str]]:
    """The flag's overrides with each organization's name, oldest first."""
    rows = await session.execute(
        select(FlagOverride, Organization.name)
        .join(Organization, Organization.id == FlagOverride.organization_id)
        .where(FlagOverride.flag_id == flag.id)
        .order_by(FlagOverride.id)
    )
    return [(override, name) for override, name in rows.all()]


async def create_flag(
    session: AsyncSession,
    *,
    key: str,
    description: str,
    enabled: bool,
    rollout_percentage: int,
    stickiness: Stickiness,
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID | None,
    rules: list[RuleIn] | None = None,
    variants: list[VariantIn] | None = None,
) -> FeatureFlag:
    if key in UNADDRESSABLE_KEYS:
        raise ValidationFailed(f"the key {key!r} cannot appear in a URL; add a letter or digit", field="key")
    existing = await session.scalar(select(FeatureFlag).where(FeatureFlag.key == key))
    if existing is not None:
        hint = " (archived: restore it with PATCH archived=false)" if existing.archived_at else ""
        raise Conflict(
            f"a flag with the key {key!r} already exists{hint}", errors=[{"field": "key", "message": "taken"}]
        )
    stored_rules = check_rules(rules or [], await segment_names(session))
    stored_variants = check_variants(variants or [])
    flag = FeatureFlag(
        key=key, description=description, enabled=enabled, rollout_percentage=rollout_percentage,
        stickiness=stickiness, created_by=user_id, updated_by=user_id, rules=stored_rules,
        variants=stored_variants,
    )  # fmt: skip
    session.add(flag)
    await session.flush()
    await audit.record(
        session, action="flag.created", actor=actor, ctx=ctx, organization_id=None,
        resource_type=FLAG, resource_id=key, after=snapshot(flag),
    )  # fmt: skip
    return flag


async def update_flag(
    session: AsyncSession,
    *,
    key: str,
    changes: Mapping[str, Any],
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID | None,
    metadata: dict[str, Any] | None = None,
) -> FeatureFlag:
    """Apply ``changes`` (``archived`` false restores an archived flag); unchanged, nothing is written."""
    flag = await get_flag(session, key, for_update=True)
    before = snapshot(flag)
    for name, value in changes.items():
        if name == "rules":
            flag.rules = check_rules(value, await segment_names(session))
        elif name == "variants":
            flag.variants = check_variants(value)
        elif name == "archived":
            if value and flag.archived_at is None:
                flag.archived_at = utcnow()
            elif not value:
                flag.archived_at = None
        else:
            setattr(flag, name, value)
    after = snapshot(flag)
    if after == before:
        return flag
    flag.updated_by = user_id
    await session.flush()
    action = "flag.updated"
    if before["archived"] != after["archived"]:
        action = "flag.archived" if after["archived"] else "flag.restored"
    await audit.record(
        session, action=action, actor=actor, ctx=ctx, organization_id=None,
        resource_type=FLAG, resource_id=key, before=before, after=after, metadata=metadata,
    )  # fmt: skip
    return flag


async def archive_flag(
    session: AsyncSession, *, key: str, actor: Actor, ctx: RequestContext | None, user_id: uuid.UUID | None
) -> FeatureFlag:
    """Archive (the flag answers off everywhere; its row, overrides and audit history stay)."""
    return await update_flag(
        session, key=key, changes={"archived": True}, actor=actor, ctx=ctx, user_id=user_id
    )


async def set_override(
    session: AsyncSession,
    *,
    key: str,
    org_id: uuid.UUID,
    enabled: bool,
    reason: str,
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID | None,
    variant: str | None = None,
) -> tuple[FlagOverride, str]:
    """Force ``key`` on or off (and a variant) for one organization; audited in that org's chain."""
    flag = await get_flag(session, key, for_update=True)
    if variant is not None and variant not in {v["name"] for v in flag.variants or []}:
        raise ValidationFailed(f"the flag {key!r} has no variant {variant!r}", field="variant")
    org = await get_live_org(session, org_id)
    override = await session.scalar(
        select(FlagOverride).where(FlagOverride.flag_id == flag.id, FlagOverride.organization_id == org_id)
    )
    before = override_snapshot(override) if override is not None else None
    if override is None:
        override = FlagOverride(
            flag_id=flag.id, organization_id=org_id, enabled=enabled, reason=reason, variant=variant,
            created_by=user_id, updated_by=user_id,
        )  # fmt: skip
        session.add(override)
    elif (override.enabled, override.reason, override.variant) == (enabled, reason, variant):
        return override, org.name
    else:
        override.enabled, override.reason, override.updated_by = enabled, reason, user_id
        override.variant = variant
    await session.flush()
    await audit.record(
        session, action="flag.override_set", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type=FLAG_OVERRIDE, resource_id=key, before=before, after=override_snapshot(override),
    )  # fmt: skip
    return override, org.name


async def remove_override(
    session: AsyncSession, *, key: str, org_id: uuid.UUID, actor: Actor, ctx: RequestContext | None
) -> None:
    flag = await get_flag(session, key, for_update=True)
    await get_live_org(session, org_id)
    override = await session.scalar(
        select(FlagOverride).where(FlagOverride.flag_id == flag.id, FlagOverride.organization_id == org_id)
    )
    if override is None:
        raise NotFound(f"the flag {key!r} has no override for this organization")
    before = override_snapshot(override)
    await session.delete(override)
    await session.flush()
    await audit.record(
        session, action="flag.override_removed", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type=FLAG_OVERRIDE, resource_id=key, before=before,
    )  # fmt: skip


async def org_flags(
    session: AsyncSession, *, org_id: uuid.UUID
) -> tuple[list[tuple[FeatureFlag, Evaluation]], list[tuple[FlagOverride, str]]]:
    """For the admin org view, read fresh: each live flag's answer for the org (no user id), and
    every override the org has (archived flags' included), with its flag key."""
    flags = (
        await session.scalars(
            select(FeatureFlag).where(FeatureFlag.archived_at.is_(None)).order_by(FeatureFlag.key)
        )
    ).all()
    rows = (
        await session.execute(
            select(FlagOverride, FeatureFlag.key)
            .join(FeatureFlag, FeatureFlag.id == FlagOverride.flag_id)
            .where(FlagOverride.organization_id == org_id)
            .order_by(FeatureFlag.key)
        )
    ).all()
    overrides = {key: Override(enabled=o.enabled, reason=o.reason, variant=o.variant) for o, key in rows}
    org = canonical_org_id(org_id)
    segments = await read_segments(session)
    fields, traits = await org_facts(session, org_id)
    facts = Facts(org_id=org, org=fields, traits=traits)
    states = [
        (
            flag,
            evaluate(
                definition(flag, segments),
                org_id=org,
                user_id=None,
                override=overrides.get(flag.key),
                facts=facts,
            ),
        )
        for flag in flags
    ]
    return states, [(o, key) for o, key in rows]


async def explain(
    session: AsyncSession,
    *,
    key: str,
    org_id: uuid.UUID,
    user_id: str | None,
    context: Mapping[str, Any] | None = None,
) -> tuple[FeatureFlag, Organization, Evaluation]:
    """One flag for one organization, read from the database (not a cache), for `keel flags explain`."""
    flag = await get_flag(session, key)
    org = await get_live_org(session, org_id)
    row = await session.scalar(
        select(FlagOverride).where(FlagOverride.flag_id == flag.id, FlagOverride.organization_id == org_id)
    )
    override = (
        Override(enabled=row.enabled, reason=row.reason, variant=row.variant) if row is not None else None
    )
    fields, traits = await org_facts(session, org_id)
    org_text = canonical_org_id(org_id)
    facts = Facts(org_id=org_text, user_id=user_id, org=fields, traits=traits, context=context or {})
    result = evaluate(
        definition(flag, await read_segments(session)), org_id=org_text, user_id=user_id, override=override,
        facts=facts,
    )  # fmt: skip
    return flag, org, result
