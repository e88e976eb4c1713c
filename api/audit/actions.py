"""Keel's own audit actions: the list ``docs/audit-actions.md`` documents, and the namespace a
product's entries (``POST /v1/audit-logs``) may not use.

``tests/test_audit_actions_doc.py`` checks that this list, the doc's table and the actions the code
writes are the same set: an action Keel starts writing fails that test until it is listed here, and
so reserved.
"""

from __future__ import annotations

from api.audit.models import ActorType

KEEL_ACTIONS: frozenset[str] = frozenset(
    {
        "audit_log.exported",
        "audit_stream.created",
        "audit_stream.deleted",
        "audit_stream.disabled",
        "audit_stream.paused",
        "audit_stream.resumed",
        "audit_stream.updated",
        "billing.customer_linked",
        "billing.invoice_event",
        "billing.reconciliation_requested",
        "billing.subscription_created",
        "billing.subscription_moved",
        "billing.subscription_removed",
        "billing.subscription_updated",
        "flag.archived",
        "flag.change_scheduled",
        "flag.created",
        "flag.override_removed",
        "flag.override_set",
        "flag.restored",
        "flag.schedule_canceled",
        "flag.segment_created",
        "flag.segment_deleted",
        "flag.segment_updated",
        "flag.updated",
        "inbound_event.reprocessed",
        "ingest_key.created",
        "ingest_key.revoked",
        "member.added",
        "member.invited",
        "member.joined",
        "member.removed",
        "member.role_changed",
        "org.created",
        "org.deleted",
        "org.suspended",
        "org.unsuspended",
        "org.updated",
        "platform_ingest_key.created",
        "platform_ingest_key.revoked",
        "platform_publishable_key.created",
        "platform_publishable_key.revoked",
        "publishable_key.created",
        "publishable_key.revoked",
        "staff.audit_viewed",
        "staff.console_signed_in",
        "staff.console_signed_out",
        "staff.health_viewed",
        "staff.ingestion_warnings_viewed",
        "staff.members_viewed",
        "staff.org_viewed",
        "staff.report_viewed",
        "staff.webhook_deliveries_viewed",
        "token.created",
        "token.revoked",
        "user.created",
        "user.platform_role_changed",
        "webhook_delivery.retried",
        "webhook_endpoint.created",
        "webhook_endpoint.deleted",
        "webhook_endpoint.disabled",
        "webhook_endpoint.recovered",
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint.secret_viewed",
        "webhook_endpoint.updated",
    }
)
#: Whole namespaces that are Keel's: ``keel.*`` for Keel's future actions, ``staff.*`` because those
#: entries tell a customer the vendor's staff read their data.
RESERVED_ACTION_PREFIXES = ("keel.", "staff.")
#: Actor types only Keel's own entries carry: its staff (``/v1/admin``) and Keel itself (CLI, flows).
RESERVED_ACTOR_TYPES = frozenset({ActorType.staff, ActorType.system})


def is_reserved_action(action: str) -> bool:
    """True when a product entry may not use ``action``: Keel writes it, or it is in Keel's namespace."""
    return action in KEEL_ACTIONS or action.startswith(RESERVED_ACTION_PREFIXES)
