"""Group commit of product-sent audit entries, and ``POST /v1/audit-logs/batch``.

Appends to one chain are serialized by its advisory lock, so one request at a time used to pay a
whole transaction (lock, head read, insert, commit, WAL flush) while the others queued in Postgres.
:class:`AuditAppender` queues them in the process instead: per chain, one task takes whatever has
queued, and writes it in one transaction — one lock, one head read, one multi-row insert (whose
statement-level trigger moves the head once), one insert of the idempotency keys, one commit — then
answers each request, only after that commit. The chain rules are :mod:`api.audit.chain`'s, as
for every other entry; Keel's own entries (``api.audit.services.record``) take the same lock.

Idempotency keys are per organization and the chain lock is per organization, so a key is looked
up and claimed under the lock that orders the chain: two requests with one key, in one group or
in two, are stored once. A group that fails is retried entry by entry, so one entry Postgres
refuses fails only itself.

Pipelined: while one group's insert and commit are in Postgres, the next group is chained in
Python onto the head the first will leave (ids, seqs, hashes; a slice at a time, so the event loop
keeps reading requests). Under the lock its transaction then only checks that the head is that one
and that none of its idempotency keys was stored meanwhile; otherwise it is chained again there.
Hashing so leaves the critical path of a busy chain: one group's Python work overlaps the other's
Postgres work. Each request is still answered with one future, after its own group's commit.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from api.audit.chain import GENESIS, canonical_parts
from api.audit.ingest import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_TTL,
    Answer,
    body_hash,
    check_entry,
)
from api.audit.models import AuditSource
from api.audit.rows import iso
from api.audit.schemas import ActorOut, AuditLogCreate, AuditLogOut, ContextOut, TargetOut
from api.audit.services import chain_key_of, jsonb_safe
from api.auth import services as auth
from api.auth.context import Principal
from api.auth.services import ORG_NOT_FOUND
from api.bodies import check_json
from api.db.base import new_id_text
from api.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    KeelError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
)
from api.events.store import live_orgs
from api.orgs.models import OrgStatus
from api.schemas import Struct

log = logging.getLogger("keel.audit")
#: Entries one transaction writes at most (a batch request of 1,000 fits in one).
GROUP_MAX_ENTRIES = 2000
#: Entries one batch request may hold (more: 413).
MAX_BATCH_ENTRIES = 1000
#: Bytes of a batch request at most (after gzip decompression): 1,000 entries of 16 KB.
MAX_BATCH_BYTES = 16 * 1024 * 1024
PgConnection = psycopg.AsyncConnection[Any]

_HEAD = (
    "SELECT (SELECT seq FROM audit_chain_heads WHERE chain_key = %(k)s),"
    " (SELECT hash FROM audit_chain_heads WHERE chain_key = %(k)s), now()"
)
# Each row is the entry's canonical object (chain.canonical_parts, seq spliced in) with its
# prev_hash and hash: the bytes the hash covers are the bytes inserted, encoded once. The optional
# fields the canonical object leaves out hold their defaults (chain.OPTIONAL_FIELDS).
_INSERT = """
INSERT INTO audit_log (id, chain_key, seq, organization_id, occurred_at, actor_type, actor_id, actor_name,
                       action, resource_type, resource_id, metadata, ip, user_agent, request_id, source,
                       targets, prev_hash, hash)
SELECT (e->>'id')::uuid, %s, (e->>'seq')::bigint, (e->>'organization_id')::uuid,
       (e->>'occurred_at')::timestamptz, e->>'actor_type', e->>'actor_id', e->>'actor_name', e->>'action',
       e->>'resource_type', e->>'resource_id', e->'metadata', (e->>'ip')::inet, e->>'user_agent',
       e->>'request_id', COALESCE(e->>'source', 'keel'), COALESCE(e->'targets', '[]'::jsonb),
       e->>'prev_hash', e->>'hash'
FROM jsonb_array_elements(%b) AS t(e)"""
_EARLIER_KEYS = (
    "SELECT key, body_hash, status_code, response FROM audit_idempotency_keys"
    " WHERE organization_id = %s AND key = ANY(%s) AND created_at > %s"
)
_SAVE_KEYS = """
INSERT INTO audit_idempotency_keys (organization_id, key, body_hash, status_code, response, created_at)
SELECT %s, k->>0, k->>1, (k->>2)::int, decode(k->>3, 'base64'), %s
FROM jsonb_array_elements(%s::jsonb) AS t(k)
ON CONFLICT (organization_id, key) DO UPDATE SET body_hash = EXCLUDED.body_hash,
    status_code = EXCLUDED.status_code, response = EXCLUDED.response, created_at = EXCLUDED.created_at"""
_encode = msgspec.json.Encoder().encode


class Prepared(msgspec.Struct, gc=False):
    """One checked entry, encoded: everything but its place on the chain (seq, prev_hash, hash).

    (A Struct built in C and left alone by the garbage collector: nothing it holds leads back to it.)"""

    #: Its id, a UUIDv7 as text, chosen when it is checked (kept if its group is chained again).
    id: str
    #: Its canonical bytes up to seq's digits, and after them less the closing brace
    #: (``chain.canonical_parts``): chaining it is a concatenation and a hash.
    head: bytes
    tail: bytes
    idempotency_key: str | None
    #: Only entries with an idempotency key need it (a replay compares bodies).
    body_hash: str | None
    #: When the answer must carry the stored entry (the single route, and any keyed entry): its
    #: values in ``chain.CANONICAL_FIELDS`` order and its ``occurred_at``; else ``None``.
    shown: tuple[tuple[Any, ...], datetime] | None = None


_PRODUCT = AuditSource.product.value


def prepare(
    data: AuditLogCreate,
    *,
    key: str,
    request_id: str | None,
    idempotency_key: str | None,
    now: datetime,
    raw: bytes | None = None,
    answer_body: bool = True,
) -> Prepared:
    """Check one product entry for the chain ``key`` (its org's; ValidationFailed names the field)
    and encode it, ready to chain."""
    occurred_at, ip, floats = check_entry(data, now, raw)
    # jsonb_safe is what makes a value hash as Postgres will hand it back. The checks above refused
    # NULs and out-of-range numbers, and msgspec let through only scalars: what is left for it is
    # a -0.0 to turn into 0.0, so it runs only where a float is (the common entry has none).
    metadata = jsonb_safe(data.metadata) if floats else data.metadata
    targets: list[dict[str, Any]] = msgspec.to_builtins(data.targets) if data.targets else []  # text only
    first = targets[0] if targets else None
    entry_id = new_id_text()  # (and ``key`` is the org id as text: an org's chain key)
    context = data.context
    # The hashed values in CANONICAL_FIELDS order (seq's place is not read: it is spliced in later).
    values = (
        entry_id, key, 0, iso(occurred_at), data.actor.type.value, data.actor.id, data.actor.name,
        data.action, first["type"] if first else None, first["id"] if first else None, metadata, ip,
        context.user_agent if context else None, request_id, _PRODUCT, targets,
    )  # fmt: skip
    head, tail = canonical_parts(values, floats=floats)  # (targets are text: only metadata may hold one)
    return Prepared(
        id=entry_id,
        head=head,
        tail=tail[:-1],
        idempotency_key=idempotency_key,
        body_hash=body_hash(data) if idempotency_key is not None else None,
        shown=(values, occurred_at) if answer_body or idempotency_key is not None else None,
    )


@dataclass(slots=True)
class _Pending:
    """One caller's entries (a request's), answered together: one future per request, not per entry."""

    entries: list[Prepared]
    future: asyncio.Future[list[Answer | KeelError]]


@dataclass
class _Chain:
    organization_id: uuid.UUID
    queue: list[_Pending] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class AuditAppender:
    """Appends product entries to their org's chain, many requests to one transaction (see above)."""

    def __init__(self, pool: AsyncConnectionPool[PgConnection]) -> None:
        self.pool = pool
        self.chains: dict[str, _Chain] = {}

    async def append(self, organization_id: uuid.UUID, entries: list[Prepared]) -> list[Answer | KeelError]:
        """Each entry's answer (201, or a replay) or its error, in order, once durable."""
        if not entries:
            return []
        key = chain_key_of(organization_id)
        chain = self.chains.get(key)
        if chain is None:
            chain = self.chains[key] = _Chain(organization_id)
        pending = _Pending(entries, asyncio.get_running_loop().create_future())
        chain.queue.append(pending)
        if chain.task is None:
            chain.task = asyncio.create_task(self._drain(key, chain))
        # (shielded: a caller that goes away does not cancel what its entries' group does)
        return await asyncio.shield(pending.future)

    async def _drain(self, key: str, chain: _Chain) -> None:
        loop = asyncio.get_running_loop()
        ahead: tuple[list[_Pending], _Plan] | None = None  # the next group, chained in advance
        group: list[_Pending] = []
        try:
            while chain.queue or ahead is not None:
                if ahead is not None:
                    (group, plan), ahead = ahead, None
                else:
                    group, plan = _take_group(chain.queue), None
                entries = [e for p in group for e in p.entries]
                planned: asyncio.Future[_Plan] = loop.create_future()
                commit = asyncio.ensure_future(self._commit(chain.organization_id, entries, plan, planned))
                # While this group's insert and commit are in Postgres, chain the next group onto
                # the head this one will leave: under the lock, only a check that it did is left.
                await asyncio.wait((commit, planned), return_when=asyncio.FIRST_COMPLETED)
                if planned.done() and not commit.done() and chain.queue:
                    following = _take_group(chain.queue)
                    ahead = (following, await _plan_async(planned.result().end, following))
                try:
                    outcomes = await commit
                except KeelError as exc:  # the org itself (gone, suspended): every entry's answer
                    outcomes = [exc] * len(entries)
                except Exception:
                    if len(entries) == 1:
                        log.exception("audit append failed")
                        outcomes = [_unavailable()]
                    else:  # one bad entry must not fail the others
                        outcomes = [await self._commit_alone(chain.organization_id, e) for e in entries]
                _settle(group, outcomes)
        finally:
            chain.task = None
            waiting = [p for p in group if not p.future.done()]
            waiting += (ahead[0] if ahead is not None else []) + chain.queue
            chain.queue.clear()
            if not waiting:
                self.chains.pop(key, None)
            for p in waiting:  # cancelled with work left (shutdown): nothing more will run it
                _settle([p], [_unavailable()] * len(p.entries))

    async def _commit_alone(self, organization_id: uuid.UUID, entry: Prepared) -> Answer | KeelError:
        try:
            (outcome,) = await self._commit(organization_id, [entry])
        except KeelError as exc:
            return exc
        except Exception:
            log.exception("audit append failed")
            return _unavailable()
        return outcome

    async def _commit(
        self,
        organization_id: uuid.UUID,
        group: list[Prepared],
        plan: _Plan | None = None,
        planned: asyncio.Future[_Plan] | None = None,
    ) -> list[Answer | KeelError]:
        """Store ``group`` in one transaction. ``plan``: the group chained in advance, used only if
        the head is still the one it was chained onto and no key of it was stored before (else it
        is chained again here). ``planned`` learns the plan before the insert goes out."""
        key = chain_key_of(organization_id)
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
            status = (await live_orgs(conn, {organization_id})).get(organization_id)
            if status is None:
                raise NotFound(ORG_NOT_FOUND)
            if status is OrgStatus.suspended:
                raise Forbidden("this organization is suspended")
            head_seq, head_hash, now = await (await conn.execute(_HEAD, {"k": key})).fetchone()  # type: ignore[misc]
            head = (int(head_seq), str(head_hash)) if head_seq is not None else (0, GENESIS)
            keys = [e.idempotency_key for e in group if e.idempotency_key is not None]
            earlier: dict[str, tuple[str, int, bytes]] = {}
            if keys:
                cursor = await conn.execute(_EARLIER_KEYS, (organization_id, keys, now - IDEMPOTENCY_TTL))
                earlier = {k: (h, code, bytes(body)) for k, h, code, body in await cursor.fetchall()}
            if plan is None or plan.base != head or earlier:
                plan = _plan(head, group, earlier)
            if planned is not None and not planned.done():
                planned.set_result(plan)
            if plan.rows:
                rows = Jsonb(b"[" + b",".join(plan.rows) + b"]", dumps=_as_is)
                await conn.execute(_INSERT, (key, rows))
            answers, claimed = _answers(organization_id, group, plan, earlier, now)
            if claimed:
                saved = [[k, h, code, _b64(body)] for k, (h, code, body) in claimed.items()]
                await conn.execute(_SAVE_KEYS, (organization_id, now, _encode(saved).decode()))
        return answers


@dataclass(slots=True)
class _Plan:
    """A group chained onto the head ``base`` (seq, hash): the rows to insert (JSON objects) and
    each row's (id, seq, hash); for each entry the index of its row, or ``None`` when it replays an
    earlier entry with its idempotency key."""

    base: tuple[int, str]
    end: tuple[int, str]
    rows: list[bytes]
    stored: list[tuple[str, int, str]]
    links: list[int | None]


def _plan(
    base: tuple[int, str],
    group: list[Prepared],
    earlier: dict[str, tuple[str, int, bytes]],
    seen: set[str] | None = None,
) -> _Plan:
    """``group`` chained onto ``base``; ``earlier``: the keys stored before, ``seen``: the keys of
    this group met so far (a later entry with one replays the first)."""
    seq, prev_hash = base
    previous = prev_hash.encode()
    rows: list[bytes] = []
    stored: list[tuple[str, int, str]] = []
    links: list[int | None] = []
    seen = set() if seen is None else seen
    sha256, join = hashlib.sha256, b"".join
    for entry in group:
        idem = entry.idempotency_key
        if idem is not None and (idem in earlier or idem in seen):
            links.append(None)
            continue
        if idem is not None:
            seen.add(idem)
        seq += 1
        digits = b"%d" % seq
        head, tail = entry.head, entry.tail
        # The entry's hash (chain.values_hash: its canonical bytes and the previous hash), and its row.
        prev_hash = sha256(join((head, digits, tail, b"}", previous))).hexdigest()
        digest = prev_hash.encode()
        links.append(len(rows))
        rows.append(join((head, digits, tail, b',"prev_hash":"', previous, b'","hash":"', digest, b'"}')))
        stored.append((entry.id, seq, prev_hash))
        previous = digest
    return _Plan(base, (seq, prev_hash), rows, stored, links)


def _as_is(data: bytes) -> bytes:
    """The JSON an insert's parameter already is (psycopg's ``Jsonb`` sends it binary, as it is)."""
    return data


#: Entries chained between two looks at the event loop, when a group is chained in advance: the
#: group in Postgres gets its insert sent, and requests keep being read, meanwhile.
_PLAN_SLICE = 250


async def _plan_async(base: tuple[int, str], group: list[_Pending]) -> _Plan:
    """:func:`_plan` of a group ahead of its transaction (no keys stored before assumed: the
    commit checks), a slice at a time."""
    entries = [e for p in group for e in p.entries]
    plan = _Plan(base, base, [], [], [])
    seen: set[str] = set()  # (one group: a key met in an earlier slice is met)
    for at in range(0, len(entries), _PLAN_SLICE):
        await asyncio.sleep(0)
        piece = _plan(plan.end, entries[at : at + _PLAN_SLICE], {}, seen)
        offset = len(plan.rows)
        plan.rows.extend(piece.rows)
        plan.stored.extend(piece.stored)
        plan.links.extend(None if link is None else link + offset for link in piece.links)
        plan.end = piece.end
    return plan


def _answers(
    organization_id: uuid.UUID,
    group: list[Prepared],
    plan: _Plan,
    earlier: dict[str, tuple[str, int, bytes]],
    now: datetime,
) -> tuple[list[Answer | KeelError], dict[str, tuple[str, int, bytes]]]:
    """Each entry's answer, and the first answers of the keys this group claims."""
    answers: list[Answer | KeelError] = []
    claimed: dict[str, tuple[str, int, bytes]] = {}
    for entry, link in zip(group, plan.links, strict=True):
        idem = entry.idempotency_key
        if link is None:
            assert idem is not None
            answers.append(_replay(earlier.get(idem) or claimed[idem], entry.body_hash))
            continue
        stored = plan.stored[link]
        shown = entry.shown
        if shown is None:
            answers.append(Answer(201, b"", stored=stored))
            continue
        prev_hash = plan.stored[link - 1][2] if link else plan.base[1]
        answer = Answer(201, _encode(_answer(organization_id, stored, prev_hash, shown, now)), stored=stored)
        answers.append(answer)
        if idem is not None:
            claimed[idem] = (entry.body_hash or "", answer.status_code, answer.body)
    return answers, claimed


def _take_group(queue: list[_Pending]) -> list[_Pending]:
    """Whole requests off the front of ``queue``, up to GROUP_MAX_ENTRIES entries (at least one request)."""
    size, count = len(queue[0].entries), 1
    while count < len(queue) and size + len(queue[count].entries) <= GROUP_MAX_ENTRIES:
        size += len(queue[count].entries)
        count += 1
    group = queue[:count]
    del queue[:count]
    return group


def _settle(group: list[_Pending], outcomes: list[Answer | KeelError]) -> None:
    """Hand each request its entries' outcomes (``outcomes`` is the group's, in queue order)."""
    at = 0
    for p in group:
        mine = outcomes[at : at + len(p.entries)]
        at += len(p.entries)
        if not p.future.done():
            p.future.set_result(mine)


def _b64(body: bytes) -> str:
    return base64.b64encode(body).decode()


def _replay(first: tuple[str, int, bytes], digest: str | None) -> Answer | KeelError:
    stored_hash, status_code, body = first
    if stored_hash != digest:
        return Conflict(
            "this Idempotency-Key was used in the last 24 hours with a different body",
            errors=[{"field": IDEMPOTENCY_HEADER, "message": "reused with a different body"}],
        )
    return Answer(status_code, body, replayed=True)


def _answer(
    organization_id: uuid.UUID,
    stored: tuple[str, int, str],
    prev_hash: str,
    shown: tuple[tuple[Any, ...], datetime],
    now: datetime,
) -> AuditLogOut:
    """The API's answer for an entry stored as ``stored`` (id, seq, hash) after ``prev_hash``;
    ``shown``: its values in CANONICAL_FIELDS order and its occurred_at; ``now``: the transaction's
    time, recorded_at."""
    values, occurred_at = shown
    entry_id, seq, digest = stored
    targets: list[dict[str, Any]] = values[15]
    return AuditLogOut(
        id=uuid.UUID(entry_id), organization_id=organization_id, seq=seq, source=values[14],
        action=values[7], occurred_at=occurred_at, recorded_at=now.astimezone(UTC),
        actor=ActorOut(type=values[4], id=values[5], name=values[6]),
        targets=[TargetOut(type=t["type"], id=t["id"], name=t.get("name")) for t in targets],
        resource_type=values[8], resource_id=values[9],
        context=ContextOut(ip=values[11], user_agent=values[12]), metadata=values[10],
        request_id=values[13], prev_hash=prev_hash, hash=digest,
    )  # fmt: skip


def _unavailable() -> KeelError:
    return ServiceUnavailable("the audit entry could not be stored; retry it with the same Idempotency-Key")


class AuditBatchEntry(AuditLogCreate):
    """One entry of a batch: an ``AuditLogCreate`` with its own idempotency key."""

    idempotency_key: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=r"^[\x21-\x7e]{1,255}$",
                description="1-255 printable ASCII characters, as the `Idempotency-Key` header.",
            ),
        ]
        | None
    ) = None


class AuditBatchDoc(Struct):
    """What the OpenAPI document shows; the entries are read one by one (a bad one is one rejection)."""

    entries: Annotated[list[AuditBatchEntry], msgspec.Meta(max_length=MAX_BATCH_ENTRIES)]


class _Envelope(Struct):
    entries: list[msgspec.Raw]


class _Entries(Struct):
    entries: list[AuditBatchEntry]


class _Stored(msgspec.Struct):
    id: str
    seq: int
    hash: str


class BatchEntryResult(msgspec.Struct, gc=False):
    index: int
    #: 201 stored; 200 the first answer to its idempotency key (nothing stored); else the error's status.
    status: int
    idempotency_key: str | None = None
    id: Annotated[str, msgspec.Meta(extra_json_schema={"extra": {"format": "uuid"}})] | None = None
    seq: int | None = None
    hash: str | None = None
    error: str | None = None


class BatchRejection(msgspec.Struct, gc=False):
    index: int
    idempotency_key: str | None
    error: str


class AuditBatchResult(msgspec.Struct):
    #: Entries stored by this request.
    accepted: int
    #: Entries whose idempotency key had stored them already (answered with that first answer).
    duplicates: int
    rejected: list[BatchRejection]
    #: One per entry, in the order sent.
    results: list[BatchEntryResult]


def _decode_envelope(body: bytes) -> _Envelope:
    if not body.strip():
        raise BadRequest('the request body is empty; send {"entries": [...]}')
    check_json(body)
    try:
        return msgspec.json.decode(body, type=_Envelope)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"the body is not an object with an `entries` array: {exc}") from None
    except msgspec.DecodeError:
        raise BadRequest("the request body is not JSON") from None


def _decode_entries(body: bytes) -> list[AuditBatchEntry] | None:
    """Every entry of a batch in which every entry decodes, in one pass in C; else ``None`` (the
    envelope is then read entry by entry, and each entry that does not decode is one rejection).

    No depth check is needed first: decoding into these types never descends further than they
    do (an unknown field is an error, not skipped, and metadata holds scalars), so no body reaches
    the decoder's recursion limit here. Anything this refuses — too deep, not UTF-8, not JSON, one
    bad entry — goes the other way, which names it as before."""
    try:
        return msgspec.json.decode(body, type=_Entries).entries
    except Exception:  # (every refusal is named by the entry-by-entry path)
        return None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationFailed) and exc.errors:
        return "; ".join(f"{e.get('field')}: {e.get('message')}" for e in exc.errors)
    if isinstance(exc, KeelError):
        return exc.detail
    return str(exc)


@dataclass(slots=True)
class _OrgEntries:
    """One organization's entries of a batch: their indexes in it, and the entries checked."""

    key: str
    indexes: list[int] = field(default_factory=list)
    entries: list[Prepared] = field(default_factory=list)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The garbage collector held off for a synchronous stretch that makes and drops many objects
    (a batch's decoding and checking: no await inside, so nothing else runs meanwhile). What dies
    inside is never walked; what survives is walked once, at the next collection."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _check_batch(
    body: bytes, principal: Principal, request_id: str | None
) -> tuple[list[BatchEntryResult | None], dict[uuid.UUID, _OrgEntries]]:
    """Every entry of ``body`` decoded and checked: the results of the refused ones (by index; the
    others ``None`` yet), and the checked ones by organization, in order."""
    decoded: list[AuditBatchEntry | None] | None = _decode_entries(body)  # type: ignore[assignment]
    raws = _decode_envelope(body).entries if decoded is None else None
    count = len(decoded) if decoded is not None else len(raws or ())
    if count > MAX_BATCH_ENTRIES:
        raise PayloadTooLarge(f"a batch holds at most {MAX_BATCH_ENTRIES} entries; this one has {count}")
    now = datetime.now(UTC)
    # JSON spells a NUL only as \\u0000: a body without one spares each entry the walk looking for it.
    nul_free = b"\\u0000" not in body
    results: list[BatchEntryResult | None] = [None] * count
    by_org: dict[uuid.UUID, _OrgEntries] = {}
    last_org: uuid.UUID | None = None
    bucket = _OrgEntries("")  # the last entry's org's (most batches have one org)
    for index in range(count):
        idem = None
        try:
            if decoded is not None:
                item, raw = decoded[index], (b"" if nul_free else None)
                # Once encoded, the decoded entry is not needed: freed now (its lists and dicts die
                # young), not held until the request is answered.
                decoded[index] = None
                assert item is not None
            else:
                assert raws is not None
                item = msgspec.json.decode(raws[index], type=AuditBatchEntry)
                raw = b"" if nul_free else bytes(raws[index])
            idem = item.idempotency_key
            org_id = auth.ingest_target(principal, item.org_id)
            if org_id is not last_org:
                last_org = org_id
                if org_id not in by_org:
                    by_org[org_id] = _OrgEntries(chain_key_of(org_id))
                bucket = by_org[org_id]
            prepared = prepare(
                item, key=bucket.key, request_id=request_id, idempotency_key=idem, now=now, raw=raw,
                answer_body=False,
            )  # fmt: skip
        except msgspec.ValidationError as exc:
            results[index] = BatchEntryResult(index=index, status=422, error=str(exc))
            continue
        except KeelError as exc:
            results[index] = BatchEntryResult(
                index=index, status=exc.status_code, idempotency_key=idem, error=_reason(exc)
            )
            continue
        bucket.indexes.append(index)
        bucket.entries.append(prepared)
    return results, by_org


async def ingest_batch(
    appender: AuditAppender, body: bytes, *, principal: Principal, request_id: str | None
) -> AuditBatchResult:
    """Check every entry on its own, store the valid ones (grouped by organization), answer each."""
    with _collector_paused():
        results, by_org = _check_batch(body, principal, request_id)

    async def one_org(org_id: uuid.UUID, mine: _OrgEntries) -> None:
        outcomes = await appender.append(org_id, mine.entries)
        for index, prepared, outcome in zip(mine.indexes, mine.entries, outcomes, strict=True):
            idem = prepared.idempotency_key
            if isinstance(outcome, KeelError):
                results[index] = BatchEntryResult(
                    index=index, status=outcome.status_code, idempotency_key=idem, error=_reason(outcome)
                )
                continue
            if outcome.stored is not None:
                entry_id, seq, digest = outcome.stored
            else:  # a replay: the first answer's entry
                stored = msgspec.json.decode(outcome.body, type=_Stored)
                entry_id, seq, digest = stored.id, stored.seq, stored.hash
            results[index] = BatchEntryResult(
                index=index, status=200 if outcome.replayed else outcome.status_code, idempotency_key=idem,
                id=entry_id, seq=seq, hash=digest,
            )  # fmt: skip

    await asyncio.gather(*(one_org(org_id, mine) for org_id, mine in by_org.items() if mine.entries))
    done = [r for r in results if r is not None]
    return AuditBatchResult(
        accepted=sum(1 for r in done if r.status == 201),
        duplicates=sum(1 for r in done if r.status == 200),
        rejected=[
            BatchRejection(index=r.index, idempotency_key=r.idempotency_key, error=r.error or "")
            for r in done
            if r.status >= 300
        ],
        results=done,
    )
