"""Signed checkpoints: JWS (EdDSA) verified with PyJWT (not the library that signs) from the published
JWKS; key rotation keeps old checkpoints verifiable; a chain a superuser rewrote and re-hashed
passes ``verify`` but fails the offline verifier against the checkpoints taken before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import Engine, text

from api.app import create_app
from api.audit.chain import entry_hash
from api.audit.checkpoints import generate_key_jwk, load_signing_key
from api.settings import Settings, SettingsError
from tests.harness import LiveServer, OrgWorld, auth, make_org
from tests.test_audit_export import download, run_script
from tests.test_audit_ingest import entry
from tests.test_audit_verify import chain, tamper


def append(client: httpx.Client, org: OrgWorld, n: int) -> None:
    for i in range(n):
        response = client.post("/v1/audit-logs", json=entry(metadata={"i": i}), headers=auth(org.ingest_key))
        assert response.status_code == 201, response.text


def sign(client: httpx.Client, org: OrgWorld, expect: int = 201) -> dict[str, Any]:
    response = client.post(f"/v1/orgs/{org.id}/audit-logs/checkpoints", headers=org.headers("admin"))
    assert response.status_code == expect, response.text
    return response.json()


def verified(client: httpx.Client, jws: str) -> dict[str, Any]:
    """The payload, checked with PyJWT against the published JWKS (the key its header names)."""
    keys = jwt.PyJWKSet.from_dict(client.get("/.well-known/keel-audit-keys.json").json())
    kid = jwt.get_unverified_header(jws)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    return json.loads(jwt.api_jws.decode(jws, key.key, algorithms=["EdDSA"]))


def test_a_signed_head_verifies_with_pyjwt_from_the_published_jwks(
    client: httpx.Client, org: OrgWorld
) -> None:
    append(client, org, 3)
    head = client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("owner")).json()["head"]
    made = sign(client, org)
    assert (made["seq"], made["hash"]) == (head["seq"], head["hash"])
    payload = verified(client, made["jws"])
    assert set(payload) == {"chain", "seq", "hash", "entries", "iat"}
    assert (payload["chain"], payload["seq"], payload["hash"]) == (org.id, head["seq"], head["hash"])
    assert payload["entries"] == head["seq"]
    assert jwt.get_unverified_header(made["jws"])["alg"] == "EdDSA"

    # The same head again: the checkpoint there is, not a second one.
    assert sign(client, org, expect=200)["jws"] == made["jws"]
    append(client, org, 1)
    later = sign(client, org)
    assert later["seq"] == made["seq"] + 1

    page = client.get(
        f"/v1/orgs/{org.id}/audit-logs/checkpoints", params={"limit": 1}, headers=org.headers("owner")
    ).json()
    assert [c["seq"] for c in page["items"]] == [made["seq"]]
    rest = client.get(
        f"/v1/orgs/{org.id}/audit-logs/checkpoints",
        params={"cursor": page["next_cursor"]},
        headers=org.headers("owner"),
    ).json()
    assert [c["seq"] for c in rest["items"]] == [later["seq"]] and rest["next_cursor"] is None
    # A tampered signature does not verify.
    forged = made["jws"][:-4] + ("AAAA" if not made["jws"].endswith("AAAA") else "BBBB")
    with pytest.raises(jwt.InvalidSignatureError):
        verified(client, forged)


def test_checkpoints_are_for_the_orgs_readers_of_the_audit_log(
    client: httpx.Client, org: OrgWorld, other_org: OrgWorld
) -> None:
    append(client, org, 1)
    path = f"/v1/orgs/{org.id}/audit-logs/checkpoints"
    for role in ("billing", "member", "viewer"):
        assert client.post(path, headers=org.headers(role)).status_code == 403
        assert client.get(path, headers=org.headers(role)).status_code == 403
    assert client.post(path, headers=other_org.headers("owner")).status_code == 404
    assert client.get(path, headers=other_org.headers("owner")).status_code == 404
    assert client.post(path, headers=auth(org.ingest_key)).status_code == 404
    assert client.post(path).status_code == 401
    bad = client.get(path, params={"cursor": "not-a-cursor"}, headers=org.headers("owner"))
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")


def test_a_chain_with_no_entry_has_no_head_to_sign(client: httpx.Client, engine: Engine) -> None:
    org = make_org(client, engine)
    with engine.begin() as conn:
        has_head = conn.execute(
            text("SELECT count(*) FROM audit_chain_heads WHERE chain_key = :k"), {"k": org.id}
        ).scalar_one()
    if has_head:  # the org's creation was audited: its chain has a head, which signs
        assert sign(client, org)["seq"] >= 1
    else:
        response = client.post(f"/v1/orgs/{org.id}/audit-logs/checkpoints", headers=org.headers("owner"))
        assert response.status_code == 409 and "no entry" in response.json()["detail"]


def test_key_rotation_keeps_old_checkpoints_verifiable(
    client: httpx.Client, org: OrgWorld, settings: Settings, tmp_path: Path
) -> None:
    append(client, org, 2)
    before = sign(client, org)
    rotated = settings.with_(audit_signing_key=generate_key_jwk())
    with LiveServer(create_app(rotated)) as server, httpx.Client(base_url=server.url) as new_client:
        append(new_client, org, 1)
        after = sign(new_client, org)
        assert (
            jwt.get_unverified_header(after["jws"])["kid"] != jwt.get_unverified_header(before["jws"])["kid"]
        )
        published = {k["kid"] for k in new_client.get("/.well-known/keel-audit-keys.json").json()["keys"]}
        # Both, from either server: the old key stays published after the rotation.
        assert verified(new_client, before["jws"])["seq"] == before["seq"]
        assert verified(client, after["jws"])["seq"] == after["seq"]
    assert {jwt.get_unverified_header(c["jws"])["kid"] for c in (before, after)} <= published


def test_the_private_key_is_generated_once_into_the_data_dir_and_never_shown(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = load_signing_key(settings)
    assert (tmp_path / "audit-signing-key.json").stat().st_mode & 0o777 == 0o600
    assert load_signing_key(settings).kid == first.kid
    assert "d" not in first.public_jwk and first.public_jwk["kid"] == first.kid
    assert '"d"' not in repr(first) and "audit_signing_key=" not in repr(
        settings.with_(audit_signing_key="x")
    )
    with pytest.raises(SettingsError, match="does not exist"):
        load_signing_key(Settings(audit_signing_key_file=tmp_path / "missing.json"))
    with pytest.raises(SettingsError, match="Ed25519"):
        load_signing_key(Settings(audit_signing_key='{"kty": "oct", "k": "c2VjcmV0"}'))


def rewrite_from(engine: Engine, org_id: str, seq: int) -> None:
    """A superuser with the triggers off changes entry ``seq`` and re-hashes every later one, head too."""
    rows = chain(engine, org_id)
    prev = rows[seq - 2]["hash"] if seq > 1 else "0" * 64
    for row in rows[seq - 1 :]:
        changed = {**row, "prev_hash": prev}
        if row["seq"] == seq:
            changed["action"] = "document.unshared"
        changed["hash"] = entry_hash(changed, prev)
        tamper(
            engine,
            "UPDATE audit_log SET action = :a, prev_hash = :p, hash = :h WHERE chain_key = :k AND seq = :s",
            a=changed["action"], p=prev, h=changed["hash"], k=org_id, s=row["seq"],
        )  # fmt: skip
        prev = changed["hash"]
    tamper(engine, "UPDATE audit_chain_heads SET hash = :h WHERE chain_key = :k", h=prev, k=org_id)


def test_a_rewritten_chain_fails_the_offline_verifier_against_earlier_checkpoints(
    client: httpx.Client, engine: Engine, org: OrgWorld, offline_script: Path, tmp_path: Path
) -> None:
    append(client, org, 4)
    first = sign(client, org)
    append(client, org, 2)
    sign(client, org)
    jwks = tmp_path / "keel-audit-keys.json"
    jwks.write_text(client.get("/.well-known/keel-audit-keys.json").text)
    export = download(client, org, tmp_path / "audit.jsonl", format="jsonl", checkpoints="true")
    kept = [json.loads(line) for line in export.read_text().splitlines() if '"checkpoint"' in line[:15]]
    assert [c["checkpoint"]["seq"] for c in kept] == [first["seq"], first["seq"] + 2]
    result = run_script(offline_script, export, "--checkpoints", str(export), "--jwks", str(jwks))
    assert result.returncode == 0, result.stderr
    assert "ok: 2 signed checkpoint(s) verified" in result.stdout

    # The customer kept the checkpoints list (as the API answers it).
    saved = tmp_path / "checkpoints.json"
    saved.write_text(
        client.get(f"/v1/orgs/{org.id}/audit-logs/checkpoints", headers=org.headers("owner")).text
    )
    rewrite_from(engine, org.id, first["seq"] - 1)
    # The database alone cannot tell: the re-hashed chain verifies.
    assert client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("owner")).json()["ok"]
    rewritten = download(client, org, tmp_path / "rewritten.jsonl", format="jsonl")
    assert run_script(offline_script, rewritten).returncode == 0
    result = run_script(offline_script, rewritten, "--checkpoints", str(saved), "--jwks", str(jwks))
    assert result.returncode == 1
    assert f"BROKEN against the checkpoint of seq {first['seq']}" in result.stderr
    assert "the chain was rewritten" in result.stderr

    # Forging the checkpoint instead: its signature no longer verifies.
    forged = json.loads(saved.read_text())
    forged["items"][0]["jws"] = forged["items"][0]["jws"][:-6] + "AAAAAA"
    saved.write_text(json.dumps(forged))
    result = run_script(offline_script, rewritten, "--checkpoints", str(saved), "--jwks", str(jwks))
    assert result.returncode == 1 and "signature does not verify" in result.stderr


def test_the_hourly_flow_signs_the_heads_that_moved_and_only_those(
    client: httpx.Client,
    org: OrgWorld,
    other_org: OrgWorld,
    prefect_harness: None,
    pipeline_env: dict[str, Path],
) -> None:
    from pipelines.flows import sign_audit_checkpoints

    append(client, org, 2)
    sign(client, other_org)  # its head is signed already
    result = sign_audit_checkpoints()
    signed = {c["chain"]: c["seq"] for c in result["chains"]}
    assert org.id in signed and other_org.id not in signed
    (made,) = [
        c
        for c in client.get(f"/v1/orgs/{org.id}/audit-logs/checkpoints", headers=org.headers("owner")).json()[
            "items"
        ]
        if c["seq"] == signed[org.id]
    ]
    assert verified(client, made["jws"])["seq"] == signed[org.id]  # the flow's key is published too
    assert org.id not in {c["chain"] for c in sign_audit_checkpoints()["chains"]}  # nothing moved


def test_a_tampered_head_is_not_signed_and_does_not_block_other_chains(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, settings: Settings
) -> None:
    import asyncio

    from api.audit.checkpoints import sign_moved_heads
    from api.db.engine import make_async_engine, make_sessionmaker

    append(client, org, 1)
    append(client, other_org, 1)
    tamper(engine, "UPDATE audit_chain_heads SET hash = :h WHERE chain_key = :k", h="f" * 64, k=org.id)
    response = client.post(f"/v1/orgs/{org.id}/audit-logs/checkpoints", headers=org.headers("owner"))
    assert response.status_code == 409 and "cannot be signed" in response.json()["detail"]

    async def hourly() -> list[str]:
        db = make_async_engine(settings.database_url or "", pool_size=1)
        try:
            async with make_sessionmaker(db)() as session, session.begin():
                return [c.chain_key for c in await sign_moved_heads(session, key=load_signing_key(settings))]
        finally:
            await db.dispose()

    signed = asyncio.run(hourly())
    assert other_org.id in signed and org.id not in signed
