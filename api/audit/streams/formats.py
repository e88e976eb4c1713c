"""What a stream sends for each item: Keel's own JSON, or OCSF.

A stream carries items of two kinds: ``entry`` (an audit entry, with ``seq``, ``prev_hash`` and
``hash``, so the receiver can re-verify the chain) and ``checkpoint`` (a signed chain head, merged
in by the stream worker right after the entry it signs: its JWS travels as it is, in either format,
so the customer holds an independent copy).

OCSF (the Open Cybersecurity Schema Framework, version :data:`OCSF_VERSION`): membership changes
are Group Management (3006) events on the organization's group, everything else Entity Management
(3004) on the entry's resource, with the activity read from the action's verb. The chain fields
ride in ``unmapped.keel`` so nothing is lost; ``tests/test_audit_streams.py`` validates the output
against OCSF's published schema for both classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from api.audit.streams.models import StreamFormat

OCSF_VERSION = "1.5.0"
CATEGORY_IAM = 3
ENTITY_MANAGEMENT = 3004
GROUP_MANAGEMENT = 3006
SEVERITY_INFORMATIONAL = 1
STATUS_SUCCESS = 1

#: ``test`` is what ``POST …/test`` sends, outside the order.
ItemKind = Literal["entry", "checkpoint", "test"]


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One thing a stream delivers, in chain order. ``seq`` is the entry's (or the checkpoint's head)."""

    kind: ItemKind
    seq: int
    #: An entry as ``api.audit.rows.as_entry`` reads it (plus ``recorded_at``), or a checkpoint
    #: ``{"chain", "seq", "hash", "signed_at", "jws"}``.
    body: dict[str, Any]

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.body["signed_at" if self.kind == "checkpoint" else "occurred_at"])


# Entity Management activity by the action's last word (``member.role_changed`` -> ``changed``).
_ENTITY_ACTIVITY: dict[str, tuple[int, str]] = {
    "created": (1, "Create"),
    "invited": (1, "Create"),
    "linked": (1, "Create"),
    "viewed": (2, "Read"),
    "exported": (2, "Read"),
    "secret_viewed": (2, "Read"),
    "updated": (3, "Update"),
    "changed": (3, "Update"),
    "moved": (5, "Move"),
    "rotated": (3, "Update"),
    "secret_rotated": (3, "Update"),
    "set": (3, "Update"),
    "retried": (3, "Update"),
    "reprocessed": (3, "Update"),
    "deleted": (4, "Delete"),
    "removed": (4, "Delete"),
    "revoked": (4, "Delete"),
    "archived": (11, "Deactivate"),
    "restored": (10, "Activate"),
    "recovered": (8, "Enable"),
    "resumed": (13, "Resume"),
    "enabled": (8, "Enable"),
    "disabled": (9, "Disable"),
    "paused": (12, "Suspend"),
    "suspended": (12, "Suspend"),
    "unsuspended": (13, "Resume"),
}
# Group Management: the organization is the group, the member the user.
_GROUP_ACTIVITY: dict[str, tuple[int, str]] = {
    "member.added": (3, "Add User"),
    "member.joined": (3, "Add User"),
    "member.removed": (4, "Remove User"),
    "member.role_changed": (1, "Assign Privileges"),
}
_USER_TYPE = {"user": (1, "User"), "staff": (2, "Admin"), "system": (3, "System")}


def _verb(action: str) -> str:
    tail = action.rsplit(".", 1)[-1]
    return tail if tail in _ENTITY_ACTIVITY else tail.rsplit("_", 1)[-1]


def _millis(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def keel_json(item: StreamItem) -> dict[str, Any]:
    """Keel's own shape: every field of the entry (as the export writes it), or the checkpoint."""
    return {"kind": item.kind, **item.body}


def ocsf(item: StreamItem) -> dict[str, Any]:
    """The item as an OCSF event (see the module's docstring for the mapping)."""
    body = item.body
    if item.kind == "test":
        return _event(
            ENTITY_MANAGEMENT,
            99,
            "Other",
            time=_millis(body["occurred_at"]),
            uid=f"test:{body['stream_id']}",
            message=body["message"],
            sequence=0,
            extra={"entity": {"type": "audit_stream", "uid": body["stream_id"]}},
            unmapped={"keel": {"kind": "test"}},
        )
    if item.kind == "checkpoint":
        # A checkpoint is a fact about the log, not an action: an Entity Management "Other" on the
        # chain, its JWS kept whole.
        return _event(
            ENTITY_MANAGEMENT,
            99,
            "Other",
            time=_millis(body["signed_at"]),
            uid=f"{body['chain']}:{body['seq']}",
            message="audit chain checkpoint",
            sequence=item.seq,
            extra={"entity": {"type": "audit_chain", "uid": body["chain"], "data": body}},
            unmapped={"keel": {"kind": "checkpoint", **body}},
        )
    action: str = body["action"]
    actor_type = body["actor_type"]
    type_id, type_name = _USER_TYPE.get(actor_type, (99, "Other"))
    actor_user: dict[str, Any] = {"type_id": type_id, "type": type_name}
    if body.get("actor_id"):
        actor_user["uid"] = body["actor_id"]
    if body.get("actor_name"):
        actor_user["name"] = body["actor_name"]
    extra: dict[str, Any] = {"actor": {"user": actor_user, "app_name": "Keel"}}
    if actor_type == "api_key":
        extra["actor"]["app_uid"] = body.get("actor_id") or ""
    if body.get("ip"):
        extra["src_endpoint"] = {"ip": body["ip"]}
    if body.get("user_agent"):
        extra["http_request"] = {"user_agent": body["user_agent"]}
    resource = {k: v for k, v in (("type", body.get("resource_type")), ("uid", body.get("resource_id"))) if v}
    if action in _GROUP_ACTIVITY:
        class_uid, (activity_id, activity) = GROUP_MANAGEMENT, _GROUP_ACTIVITY[action]
        org = body.get("organization_id") or body["chain_key"]
        extra["group"] = {"uid": org, "type": "organization"}
        member = body.get("resource_id")
        if member:
            extra["user"] = {"uid": member}
        after = (body.get("metadata") or {}).get("after") or {}
        if isinstance(after, dict) and isinstance(after.get("role"), str):
            extra["privileges"] = [after["role"]]
    else:
        class_uid = ENTITY_MANAGEMENT
        activity_id, activity = _ENTITY_ACTIVITY.get(_verb(action), (99, "Other"))
        extra["entity"] = {
            **(resource or {"type": action.split(".", 1)[0]}),
            "data": body.get("metadata") or {},
        }
    return _event(
        class_uid,
        activity_id,
        activity,
        time=_millis(body["occurred_at"]),
        uid=body["id"],
        message=action,
        sequence=item.seq,
        extra=extra,
        correlation_uid=body.get("request_id"),
        tenant_uid=body.get("organization_id"),
        unmapped={
            "keel": {
                "kind": "entry",
                **{
                    k: body[k]
                    for k in (
                        "chain_key",
                        "seq",
                        "prev_hash",
                        "hash",
                        "action",
                        "source",
                        "targets",
                        "recorded_at",
                    )
                    if k in body
                },
            }
        },
    )


def _event(
    class_uid: int,
    activity_id: int,
    activity: str,
    *,
    time: int,
    uid: str,
    message: str,
    sequence: int,
    extra: dict[str, Any],
    unmapped: dict[str, Any],
    correlation_uid: str | None = None,
    tenant_uid: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": "Keel", "vendor_name": "Keel", "uid": "keel"},
        "uid": uid,
        "log_name": "audit_log",
        "log_provider": "Keel",
        "sequence": sequence,
    }
    if correlation_uid:
        metadata["correlation_uid"] = correlation_uid
    if tenant_uid:
        metadata["tenant_uid"] = tenant_uid
    return {
        "category_uid": CATEGORY_IAM,
        "class_uid": class_uid,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id,
        "severity_id": SEVERITY_INFORMATIONAL,
        "status_id": STATUS_SUCCESS,
        "time": time,
        "message": message,
        "metadata": metadata,
        **extra,
        "unmapped": unmapped,
    }


def render(fmt: StreamFormat, item: StreamItem) -> dict[str, Any]:
    return ocsf(item) if fmt is StreamFormat.ocsf else keel_json(item)
