from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Principal
from api.auth.permissions import Permission
from api.pagination import Limit
from api.people import queries
from api.people.schemas import PersonOut, PersonPage

PeopleCursor = Annotated[
    str | None,
    Parameter(
        default=None,
        max_length=255,
        pattern=r"^[^\x00]*$",
        description="The `next_cursor` of the previous page (the last user id it showed).",
    ),
]


class PeopleController(Controller):
    path = "/v1/orgs/{org_id:uuid}/people"
    tags = ["people"]

    @get(
        "/",
        summary="The organization's people, by user id (any member)",
        description="People are made by Segment `identify` calls (traits, first and last seen; an "
        "identify with only an `anonymousId` makes an `anonymous` person keyed by it), `group` calls (the "
        "user belongs to the org) and `alias` calls (an earlier id merged into the user id, as is an "
        "anonymous person by an identify carrying both ids); a merged person is listed as the user. "
        "`trait=name:value` keeps those whose trait, read as text, equals the value.",
    )
    async def list_people(
        self,
        org_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        cursor: PeopleCursor,
        limit: Limit,
        trait: Annotated[
            str | None,
            Parameter(
                default=None,
                max_length=500,
                pattern=r"^[^:\x00]+:[^\x00]*$",
                description="`name:value`: only people whose trait `name`, read as text, is `value`.",
            ),
        ],
    ) -> PersonPage:
        await auth.org_access(db, principal, org_id, Permission.read_org)
        items, next_cursor = await queries.list_people(
            db,
            org_id=org_id,
            traits=queries.parse_trait_filters([trait] if trait else []),
            cursor=cursor,
            limit=limit,
        )
        return PersonPage(items=items, next_cursor=next_cursor)

    @get(
        "/{user_id:str}",
        summary="One person of the organization (any member)",
        description="By user id or anonymous id; an id merged into a user answers that user.",
    )
    async def read_person(
        self, org_id: uuid.UUID, user_id: str, db: AsyncSession, principal: Principal
    ) -> PersonOut:
        await auth.org_access(db, principal, org_id, Permission.read_org)
        return await queries.get_person(db, org_id=org_id, user_id=user_id)
