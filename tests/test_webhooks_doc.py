"""docs/webhooks.md lists exactly the event types Keel itself publishes: none it does not send."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENT_TYPE = re.compile(r"[a-z_]+\.[a-z_]+")


def published_in_code() -> set[str]:
    """Event-type literals on the lines that publish (``publish(..., event_type=...)`` and the
    members' ``announce(session, "member.…", ...)``)."""
    found: set[str] = set()
    for path in (ROOT / "api").rglob("*.py"):
        for line in path.read_text().splitlines():
            if "event_type=" in line or "announce(session," in line:
                found |= {m for m in re.findall(r'"([^"]+)"', line) if EVENT_TYPE.fullmatch(m)}
    return found


def listed_in_doc() -> set[str]:
    text = (ROOT / "docs" / "webhooks.md").read_text()
    section = text.split("## Events Keel publishes", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    names: set[str] = set()
    for row in table:
        first_cell = row.split("|")[1]
        names |= {m for m in re.findall(r"`([^`]+)`", first_cell) if EVENT_TYPE.fullmatch(m)}
    # Outside the table, the section may not promise event types Keel does not publish either.
    prose = "\n".join(line for line in section.splitlines() if not line.startswith("|"))
    promised = {m for m in re.findall(r"`([^`]+)`", prose) if EVENT_TYPE.fullmatch(m)}
    return names | {p for p in promised if not p.startswith("billing.")}  # billing.* are audit actions


def test_the_doc_lists_the_event_types_keel_publishes() -> None:
    code, doc = published_in_code(), listed_in_doc()
    assert {"member.invited", "org.suspended", "org.unsuspended", "webhook.endpoint_disabled"} <= code
    assert doc - code == set(), f"docs/webhooks.md names events Keel does not publish: {sorted(doc - code)}"
    assert code - doc == set(), f"add to docs/webhooks.md: {sorted(code - doc)}"
