"""Export: streamed with every entry's hashes, and re-verified offline by the script in docs/audit.md."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from api.audit.chain import entry_hash
from tests.harness import OrgWorld, audit_rows, auth
from tests.test_audit_ingest import entry
from tests.test_audit_verify import tamper
from tests.test_cli import keel


def run_script(script: Path, export: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Run with no access to Keel's code: only the standard library.
    return subprocess.run([sys.executable, "-I", str(script), str(export), *args], capture_output=True,
                          text=True, timeout=60, cwd=export.parent)  # fmt: skip


def fill(client: httpx.Client, org: OrgWorld) -> None:
    for overrides in (
        {},
        {"metadata": {"emoji": "😀 ü", "n": -12, "x": 0.1, "flag": False, "none": None}},
        {"context": {"ip": "::ffff:10.0.0.1", "user_agent": 'quotes " and, commas\nand a newline'}},
        {"occurred_at": "2026-01-15T23:59:59.999999-11:30", "targets": []},
        {"actor": {"type": "api_key", "id": "cron"}, "action": "report.generated"},
    ):
        assert (
            client.post("/v1/audit-logs", json=entry(**overrides), headers=auth(org.ingest_key)).status_code
            == 201
        )


def download(client: httpx.Client, org: OrgWorld, path: Path, **params: Any) -> Path:
    with client.stream(
        "GET", f"/v1/orgs/{org.id}/audit-logs/export", params=params, headers=org.headers("owner")
    ) as r:
        assert r.status_code == 200, r.read()
        assert "attachment" in r.headers["content-disposition"]
        with path.open("wb") as f:
            for piece in r.iter_bytes():
                f.write(piece)
    return path


def test_jsonl_export_carries_every_hash_and_reverifies_offline(
    client: httpx.Client, engine: Engine, org: OrgWorld, offline_script: Path, tmp_path: Path
) -> None:
    fill(client, org)
    export = download(client, org, tmp_path / "audit.jsonl", format="jsonl")
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    rows = audit_rows(engine, organization_id=org.id)
    assert [e["seq"] for e in lines] == list(range(1, len(rows) + 1))
    assert all(e["prev_hash"] and e["hash"] and e["chain_key"] == org.id for e in lines)
    assert {e["id"] for e in lines} == {str(r["id"]) for r in rows}
    # The doc's script and api/audit/chain.py are one definition.
    assert all(entry_hash(e, e["prev_hash"]) == e["hash"] for e in lines)

    result = run_script(offline_script, export)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {len(lines)} entries, seq 1..{len(lines)}")
    assert lines[-1]["hash"] in result.stdout


def test_csv_export_reverifies_offline(
    client: httpx.Client, org: OrgWorld, offline_script: Path, tmp_path: Path
) -> None:
    fill(client, org)
    export = download(client, org, tmp_path / "audit.csv", format="csv")
    with export.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and {"seq", "prev_hash", "hash"} <= set(rows[0])
    result = run_script(offline_script, export)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {len(rows)} entries")


def test_the_offline_script_names_what_was_changed(
    client: httpx.Client, org: OrgWorld, offline_script: Path, tmp_path: Path
) -> None:
    fill(client, org)
    lines = download(client, org, tmp_path / "audit.jsonl").read_text().splitlines()
    doctored = [json.loads(line) for line in lines]
    doctored[4]["actor_id"] = "someone-else"
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(json.dumps(e) for e in doctored) + "\n")
    result = run_script(offline_script, changed)
    assert (
        result.returncode == 1
        and "BROKEN at seq 5" in result.stderr
        and "does not match its hash" in result.stderr
    )

    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    result = run_script(offline_script, dropped)
    assert result.returncode == 1 and "BROKEN at seq 5" in result.stderr
    # The same gap is accepted as a filtered export, each entry still checked.
    assert run_script(offline_script, dropped, "--partial").returncode == 0

    swapped = tmp_path / "swapped.jsonl"
    order = list(range(len(lines)))
    order[2], order[3] = 3, 2
    swapped.write_text("\n".join(lines[i] for i in order) + "\n")
    assert run_script(offline_script, swapped).returncode == 1


def test_export_filters_by_time(
    client: httpx.Client, org: OrgWorld, offline_script: Path, tmp_path: Path
) -> None:
    fill(client, org)
    export = download(
        client, org, tmp_path / "jan.jsonl", since="2026-01-15T00:00:00Z", until="2026-01-16T00:00:00Z"
    )
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert lines and all(e["occurred_at"].startswith("2026-01-1") for e in lines)
    assert run_script(offline_script, export, "--partial").returncode == 0
    bad = client.get(
        f"/v1/orgs/{org.id}/audit-logs/export", params={"format": "xml"}, headers=org.headers("owner")
    )
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")


def test_cli_export(
    client: httpx.Client,
    engine: Engine,
    org: OrgWorld,
    database_url: str,
    offline_script: Path,
    tmp_path: Path,
) -> None:
    fill(client, org)
    before = len(audit_rows(engine, organization_id=org.id))
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"cli.{fmt}"
        result = keel("audit", "export", "--org", org.id, "--format", fmt, "--out", str(out),
                      database_url=database_url, tmp_path=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "exported" in result.stderr
        checked = run_script(offline_script, out)
        assert checked.returncode == 0, checked.stderr
    # Each CLI export is itself in the org's log, so the second export holds the first one's entry.
    exported = audit_rows(engine, organization_id=org.id, action="audit_log.exported")
    assert len(exported) == 2 and exported[0]["actor_type"] == "system"
    assert len((tmp_path / "cli.jsonl").read_text().splitlines()) == before + 1
    missing = keel("audit", "export", "--org", "0190f0f0-0000-7000-8000-000000000000", "--out", str(tmp_path / "x"),
                   database_url=database_url, tmp_path=tmp_path)  # fmt: skip
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_an_export_of_a_tampered_chain_fails_offline(
    client: httpx.Client, engine: Engine, org: OrgWorld, offline_script: Path, tmp_path: Path
) -> None:
    fill(client, org)
    seq = random.Random(7).randint(2, 10)
    tamper(
        engine,
        "UPDATE audit_log SET action = 'nothing.happened' WHERE chain_key = :k AND seq = :s",
        k=org.id,
        s=seq,
    )
    result = run_script(offline_script, download(client, org, tmp_path / "t.jsonl"))
    assert result.returncode == 1 and f"BROKEN at seq {seq} " in result.stderr
