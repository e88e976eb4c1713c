"""docs/audit-actions.md names exactly the actions the code writes."""

from __future__ import annotations

import re
from pathlib import Path

from api.audit.actions import KEEL_ACTIONS
from api.tokens.services import ACTION_NOUN, PUBLISHABLE_NOUN

ROOT = Path(__file__).resolve().parents[1]


def actions_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "api").rglob("*.py"):
        source = path.read_text()
        found |= set(re.findall(r'action="([a-z_.]+)"', source))
        found |= set(re.findall(r'action="([a-z_.]+)" if ', source))
        found |= set(re.findall(r'action = "([a-z_]+\.[a-z_.]+)"', source))
        found |= set(re.findall(r'action = "([a-z_]+\.[a-z_.]+)" if ', source))
        found |= set(re.findall(r'= "([a-z_]+\.[a-z_.]+)" if after', source))
        found |= set(re.findall(r' else "([a-z_]+\.[a-z_.]+)"', source))
        resource = re.search(r'^RESOURCE = "([a-z_]+)"', source, flags=re.M)
        if resource:
            found |= {
                f"{resource.group(1)}.{s}" for s in re.findall(r'action=f"\{RESOURCE\}\.([a-z_]+)"', source)
            }
        # Token actions: ``noun = action_noun(kind, publishable=...)``, then ``action=f"{noun}.created"``.
        for suffix in re.findall(r'action=f"\{noun\}\.([a-z_]+)"', source):
            found |= {f"{noun}.{suffix}" for noun in (*ACTION_NOUN.values(), *PUBLISHABLE_NOUN.values())}
    return found


def actions_in_doc() -> set[str]:
    rows = (ROOT / "docs" / "audit-actions.md").read_text().splitlines()
    return {m.group(1) for line in rows if (m := re.match(r"^\| `([a-z_.]+)` \|", line))}


def test_the_doc_lists_every_action_the_code_writes() -> None:
    code, doc = actions_in_code(), actions_in_doc()
    assert {"org.unsuspended", "token.revoked", "platform_ingest_key.created"} <= code  # the scan works
    assert code - doc == set(), f"add to docs/audit-actions.md: {sorted(code - doc)}"
    assert doc - code == set(), f"no longer written by the code: {sorted(doc - code)}"


def test_the_reserved_list_is_the_docs_list() -> None:
    """``KEEL_ACTIONS`` (what product entries may not use) is exactly the documented table."""
    doc = actions_in_doc()
    assert doc - KEEL_ACTIONS == set(), (
        f"add to KEEL_ACTIONS in api/audit/actions.py: {sorted(doc - KEEL_ACTIONS)}"
    )
    assert KEEL_ACTIONS - doc == set(), f"not in docs/audit-actions.md: {sorted(KEEL_ACTIONS - doc)}"
