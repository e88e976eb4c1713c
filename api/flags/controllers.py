from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.status_codes import HTTP_204_NO_CONTENT
from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import Permission, StaffPermission
from api.deps import provide_context
from api.errors import Forbidden, NotFound
from api.events.services import Origin
from api.flags import services
from api.flags.evaluation import Evaluation
from api.flags.exposure import record_exposures
from api.flags.models import FeatureFlag, FlagOverride
from api.flags.schemas import (
    KEY_PATTERN,
    EvaluationOut,
    FlagCreate,
    FlagDetail,
    FlagOut,
    FlagPage,
    FlagsOut,
    FlagUpdate,
    OverrideOut,
    OverrideSet,
)
from api.flags.store import FlagStore, canonical_org_id
from api.pagination import Cursor, Limit, page_of
from api.tokens.models import TokenKind

PathKey = Annotated[str, Parameter(pattern=KEY_PATTERN, max_length=100, description="The flag's key.")]
OrgIdQuery = Annotated[
    uuid.UUID | None,
    Parameter(
        default=None,
        description="The organization: required with a user token; an org ingest key may omit it.",
    ),
]
UserIdQuery = Annotated[
    str | None,
    Parameter(
        default=None,
        min_length=1,
        max_length=255,
        description="The end user, hashed as given, for flags with `user` stickiness.",
    ),
]


def flag_out(flag: FeatureFlag) -> FlagOut:
    return FlagOut(
        id=flag.id, key=flag.key, description=flag.description, enabled=flag.enabled,
        rollout_percentage=flag.rollout_percentage, stickiness=flag.stickiness,
        archived=flag.archived_at is not None, archived_at=flag.archived_at, created_by=flag.created_by,
        updated_by=flag.updated_by, created_at=flag.created_at, updated_at=flag.updated_at,
        rules=list(flag.rules or []), variants=list(flag.variants or []),
    )  # fmt: skip


def override_out(override: FlagOverride, flag_key: str, organization_name: str) -> OverrideOut:
    return OverrideOut(
        flag_key=flag_key, organization_id=override.organization_id, organization_name=organization_name,
        enabled=override.enabled, reason=override.reason, created_by=override.created_by,
        updated_by=override.updated_by, created_at=override.created_at, updated_at=override.updated_at,
        variant=override.variant,
    )  # fmt: skip


class FlagAdminController(Controller):
    """Definitions and overrides: platform admins change them, support reads them."""

    path = "/v1/admin/flags"
    tags = ["flags"]

    @get("/", summary="List flag definitions (staff)", opt=auth.staff_only(StaffPermission.read))
    async def list_flags(
        self,
        db: AsyncSession,
        principal: Principal,
        cursor: Cursor,
        limit: Limit,
        include_archived: Annotated[bool, Parameter(default=False, description="Include archived flags.")],
    ) -> FlagPage:
        flags = await services.list_flags(db, include_archived=include_archived, cursor=cursor, limit=limit)
        return page_of(FlagPage, flags, limit, flag_out)

    @post("/", summary="Create a flag (admin)", opt=auth.staff_only(StaffPermission.administer))
    async def create(
        self, data: FlagCreate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> FlagOut:
        flag = await services.create_flag(
            db, key=data.key, description=data.description, enabled=data.enabled,
            rollout_percentage=data.rollout_percentage, stickiness=data.stickiness,
            actor=Actor.of(principal, as_staff=True), ctx=ctx, user_id=principal.user_id,
            rules=data.rules, variants=data.variants,
        )  # fmt: skip
        return flag_out(flag)

    @get(
        "/{key:str}",
        summary="One flag with its per-org overrides (staff)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def read(self, key: PathKey, db: AsyncSession, principal: Principal) -> FlagDetail:
        flag = await services.get_flag(db, key)
        overrides = await services.overrides_of(db, flag)
        out = flag_out(flag)
        return FlagDetail(
            **{f: getattr(out, f) for f in out.__struct_fields__},
            overrides=[override_out(o, flag.key, name) for o, name in overrides],
        )

    @patch(
        "/{key:str}",
        summary="Change a flag: kill switch, rollout, stickiness, rules, variants, description (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def update(
        self, key: PathKey, data: FlagUpdate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> FlagOut:
        changes = {f: getattr(data, f) for f in data.__struct_fields__ if getattr(data, f) is not UNSET}
        flag = await services.update_flag(
            db, key=key, changes=changes, actor=Actor.of(principal, as_staff=True), ctx=ctx,
            user_id=principal.user_id,
        )  # fmt: skip
        return flag_out(flag)

    @delete(
        "/{key:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Archive a flag: off everywhere (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def archive(
        self, key: PathKey, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> None:
        await services.archive_flag(
            db, key=key, actor=Actor.of(principal, as_staff=True), ctx=ctx, user_id=principal.user_id
        )

    @put(
        "/{key:str}/overrides/{org_id:uuid}",
        summary="Force a flag on or off for one organization (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def set_override(
        self,
        key: PathKey,
        org_id: uuid.UUID,
        data: OverrideSet,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> OverrideOut:
        override, org_name = await services.set_override(
            db, key=key, org_id=org_id, enabled=data.enabled, reason=data.reason,
            actor=Actor.of(principal, as_staff=True), ctx=ctx, user_id=principal.user_id,
            variant=data.variant,
        )  # fmt: skip
        return override_out(override, key, org_name)

    @delete(
        "/{key:str}/overrides/{org_id:uuid}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove an organization's override: the rollout decides again (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def remove_override(
        self, key: PathKey, org_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> None:
        await services.remove_override(
            db, key=key, org_id=org_id, actor=Actor.of(principal, as_staff=True), ctx=ctx
        )


async def evaluation_org(state: State, principal: Principal, org_id: uuid.UUID | None) -> str:
    """The organization to evaluate for, as the caller may see it.

    These routes carry the org in the query, so the central org guard does not apply: an org
    ingest key answers for its own org only, a user token for an org they are an active member of.
    Anyone else is told the org does not exist (404), exactly as for an id that never existed.

    No database round trip in the common case: an ingest key's org comes from the (cached)
    principal, a member's from the membership cache (``api/auth/cache.py``, same 2 s bound).
    """
    if principal.kind is TokenKind.org_ingest:
        # authenticate() has already refused the key of a deleted (401) or suspended (403) org.
        if org_id is not None and org_id != principal.organization_id:
            raise NotFound(auth.ORG_NOT_FOUND)
        assert principal.organization_id is not None
        return canonical_org_id(principal.organization_id)
    if not principal.is_user:
        raise Forbidden("flag evaluation needs an org ingest key or a member's user token")
    if org_id is None:
        # 403 as for a platform key that names no org (auth.ingest_org): the request is well-formed,
        # this credential just cannot use it that way.
        raise Forbidden(
            "a user token must name the organization: add ?org_id=",
            errors=[{"field": "org_id", "message": "required with a user token"}],
        )
    await auth.org_access_cached(state.sessionmaker, principal, org_id, Permission.read_org)
    return canonical_org_id(org_id)


TrackQuery = Annotated[
    bool,
    Parameter(default=False, description="Also record each answer as a `$flag_evaluated` event (exposure)."),
]


async def _track(
    request: Request[Any, Any, Any],
    principal: Principal,
    org: str,
    user_id: str | None,
    results: list[Evaluation],
) -> None:
    """Record the answers as events, in a transaction of their own committed before the answer.

    The only evaluation that writes, so the only one that opens a session."""
    state = request.app.state
    ctx = provide_context(request)
    async with state.sessionmaker() as session, session.begin():
        await record_exposures(
            session, results, organization_id=org, user_id=user_id, principal=principal,
            partitions=state.partitions, origin=Origin(ip=ctx.ip, user_agent=ctx.user_agent),
        )  # fmt: skip


class FlagEvaluationController(Controller):
    """What product clients call: answers come from the in-process copy, not the database.

    Nothing here depends on ``db``: a request opens no session unless the membership cache
    misses or ``track`` asks for events to be written.
    """

    path = "/v1/flags/evaluate"
    #: Browsers call these routes (CORS), publishable keys reach them.
    opt = auth.BROWSER_ROUTE
    tags = ["flags"]

    @get("/", summary="Every flag's answer for an organization (org ingest key or member token)")
    async def evaluate_all(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        org_id: OrgIdQuery,
        user_id: UserIdQuery,
        track: TrackQuery,
    ) -> FlagsOut:
        state = request.app.state  # not a `state` parameter: Litestar would build a State per request
        org = await evaluation_org(state, principal, org_id)
        store: FlagStore = state.flags
        facts = await store.facts(org, user_id=user_id)
        snapshot = store.snapshot
        store.mark_evaluated()
        if not track:
            answers = snapshot.answers(org_id=org, user_id=user_id, facts=facts)
            return FlagsOut(
                flags=answers, variants=snapshot.variant_answers(answers, org_id=org, facts=facts)
            )
        results = snapshot.evaluate_all(org_id=org, user_id=user_id, facts=facts)
        await _track(request, principal, org, user_id, results)
        return FlagsOut(
            flags={r.key: r.enabled for r in results},
            variants={r.key: r.variant for r in results if r.variant is not None},
        )

    @get("/{key:str}", summary="One flag's answer and the reason for it (org ingest key or member token)")
    async def evaluate_one(
        self,
        key: PathKey,
        request: Request[Any, Any, Any],
        principal: Principal,
        org_id: OrgIdQuery,
        user_id: UserIdQuery,
        track: TrackQuery,
    ) -> EvaluationOut:
        state = request.app.state
        org = await evaluation_org(state, principal, org_id)
        store: FlagStore = state.flags
        facts = await store.facts(org, user_id=user_id)
        result = store.snapshot.evaluate(key, org_id=org, user_id=user_id, facts=facts)
        if result is None:
            raise services.flag_not_found(key)
        store.mark_evaluated([key])
        if track:
            await _track(request, principal, org, user_id, [result])
        return EvaluationOut(
            key=result.key, enabled=result.enabled, reason=result.reason, variant=result.variant,
            value=result.value, rule=result.rule,
        )  # fmt: skip
