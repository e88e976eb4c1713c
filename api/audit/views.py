"""Audit entries as the API shows them."""

from __future__ import annotations

from api.audit.chain import normalize_ip
from api.audit.models import AuditEntry
from api.audit.schemas import ActorOut, AuditLogOut, ContextOut, TargetOut


def entry_out(e: AuditEntry) -> AuditLogOut:
    return AuditLogOut(
        id=e.id, organization_id=e.organization_id, seq=e.seq, source=e.source.value, action=e.action,
        occurred_at=e.occurred_at, recorded_at=e.recorded_at,
        actor=ActorOut(type=e.actor_type.value, id=e.actor_id, name=e.actor_name),
        targets=[TargetOut(type=t["type"], id=t["id"], name=t.get("name")) for t in e.targets],
        resource_type=e.resource_type, resource_id=e.resource_id,
        context=ContextOut(ip=normalize_ip(str(e.ip)) if e.ip is not None else None, user_agent=e.user_agent),
        metadata=e.metadata_, request_id=e.request_id, prev_hash=e.prev_hash, hash=e.hash,
    )  # fmt: skip
