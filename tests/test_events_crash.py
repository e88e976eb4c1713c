"""Acknowledged means durable: SIGKILL the server mid-stream, retry what was not acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import Engine, text

from tests.harness import OrgWorld, auth, free_port

KEEL = str(Path(sys.executable).with_name("keel"))
BATCH = 250
BATCHES = 40


def start_server(database_url: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_DATA_DIR": str(tmp_path),
        "KEEL_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([KEEL, "serve", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("keel serve did not become ready")


def test_sigkill_mid_stream_loses_and_doubles_nothing(
    database_url: str, engine: Engine, org: OrgWorld, tmp_path: Path
) -> None:
    batches = [
        [
            {
                "event": "page.viewed",
                "user_id": f"u{j % 17}",
                "message_id": f"b{i}-e{j}",
                "properties": {"i": i, "j": j},
            }
            for j in range(BATCH)
        ]
        for i in range(BATCHES)
    ]
    proc, url = start_server(database_url, tmp_path)
    acknowledged: set[str] = set()
    attempts = 0
    killed = threading.Event()

    def kill_soon() -> None:
        time.sleep(0.8)  # well into the stream
        proc.send_signal(signal.SIGKILL)
        killed.set()

    threading.Thread(target=kill_soon, daemon=True).start()
    try:
        for batch in batches:
            while True:
                attempts += 1
                try:
                    response = httpx.post(
                        f"{url}/v1/events/batch",
                        json={"events": batch},
                        headers=auth(org.ingest_key),
                        timeout=10,
                    )
                except httpx.TransportError:
                    killed.wait(5)
                    proc.wait(10)
                    proc, url = start_server(database_url, tmp_path)
                    continue
                assert response.status_code == 200, response.text
                acknowledged.update(event["message_id"] for event in batch)
                break
    finally:
        proc.kill()
        proc.wait(10)
    assert killed.is_set() and attempts > BATCHES, "the server was never killed mid-stream"

    with engine.connect() as conn:
        counts = dict(conn.execute(text(
            "SELECT split_part(message_id, '-', 1), count(*) FROM events WHERE organization_id = :o GROUP BY 1"
        ), {"o": org.id}).all())  # fmt: skip
        doubled = conn.execute(text(
            "SELECT count(*) FROM (SELECT message_id FROM events WHERE organization_id = :o GROUP BY 1 HAVING count(*) > 1) d"
        ), {"o": org.id}).scalar()  # fmt: skip
        ids = set(
            conn.execute(
                text("SELECT message_id FROM events WHERE organization_id = :o"), {"o": org.id}
            ).scalars()
        )
    assert doubled == 0
    assert counts == {f"b{i}": BATCH for i in range(BATCHES)}  # every batch whole, none half-stored
    assert acknowledged <= ids
