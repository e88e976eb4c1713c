"""Nothing lost: SIGKILL a real `keel worker` while its request is in flight; once the lease
expires another real worker process delivers, and SIGTERM stops that one cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import Engine, text
from standardwebhooks.webhooks import Webhook

from api.settings import Settings
from tests.harness import make_org
from tests.hooks import attempt_rows, create_endpoint, delivery_rows, publish
from tests.receivers import Receiver, Reply, hec_events, splunk_hec

KEEL = str(Path(sys.executable).with_name("keel"))


def start_worker(database_url: str, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_DATA_DIR": str(tmp_path),
        "KEEL_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "KEEL_WEBHOOK_RETRY_SCHEDULE": "0,1,2",
        "KEEL_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [KEEL, "worker", *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_a_killed_worker_loses_nothing(
    database_url: str, hooks_client: httpx.Client, engine: Engine, tmp_path: Path
) -> None:
    world = make_org(hooks_client, engine, roles=("owner",))
    # The first request hangs (the worker is killed while waiting); later ones succeed at once.
    with Receiver(lambda arrival, n: Reply(200, delay=30 if n == 0 else 0)) as receiver:
        endpoint = create_endpoint(hooks_client, world, receiver.url)
        publish(hooks_client, world, "member.added", {"who": "ada"})
        first = start_worker(database_url, tmp_path, "--timeout", "2", "--lease-seconds", "3")
        try:
            assert receiver.arrived.wait(30), "the first worker never sent the delivery"
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            first.kill()
        (delivery,) = delivery_rows(engine, world.id)
        assert delivery["status"] == "delivering"  # the dead worker's lease still stands

        second = start_worker(database_url, tmp_path, "--timeout", "2", "--lease-seconds", "3")
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if delivery_rows(engine, world.id)[0]["status"] == "succeeded":
                    break
                time.sleep(0.1)
            second.send_signal(signal.SIGTERM)
            _out, err = second.communicate(timeout=30)
        finally:
            second.kill()
        assert second.returncode == 0, err.decode()
        assert b"worker stopped" in err
        arrivals = list(receiver.arrivals)
    (delivery,) = delivery_rows(engine, world.id)
    assert delivery["status"] == "succeeded" and delivery["leased_by"] is None
    assert len(arrivals) == 2 and arrivals[0].headers["webhook-id"] == arrivals[1].headers["webhook-id"]
    assert Webhook(endpoint["secret"]).verify(arrivals[1].body, arrivals[1].headers)["data"] == {"who": "ada"}
    attempts = attempt_rows(engine, delivery["id"])
    assert [(a["attempt_number"], a["error_class"], a["status_code"]) for a in attempts] == [
        (1, "worker_lost", None),
        (2, None, 200),
    ]


def test_keel_worker_delivers_audit_streams(
    database_url: str, hooks_client: httpx.Client, engine: Engine, hooks_settings: Settings, tmp_path: Path
) -> None:
    """The one outbound worker also delivers audit streams; it opens the credentials with the key
    the API sealed them with (the data dir's generated key, shared here). It runs as deployed (no
    ``--until-idle``: the session's database holds other tests' backlogs) until this org's chain
    has arrived, and stops cleanly on SIGTERM."""
    world = make_org(hooks_client, engine, roles=("owner", "admin"))
    with Receiver(splunk_hec("hec-process-token")) as receiver:
        created = hooks_client.post(
            f"/v1/orgs/{world.id}/audit-streams",
            json={"name": "p", "type": "splunk_hec", "url": f"http://127.0.0.1:{receiver.port}",
                  "token": "hec-process-token"},
            headers=world.headers("owner"),
        )  # fmt: skip
        assert created.status_code == 201, created.text
        with engine.connect() as conn:
            seqs = (
                conn.execute(
                    text("SELECT seq FROM audit_log WHERE chain_key = :k ORDER BY seq"), {"k": world.id}
                )
                .scalars()
                .all()
            )
        assert seqs

        def delivered() -> list[object]:
            events = [e["event"] for a in list(receiver.arrivals) for e in hec_events(a.body)]
            return [e["seq"] for e in events if isinstance(e, dict)]

        worker = start_worker(database_url, Path(hooks_settings.data_dir))
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(delivered()) < len(seqs) and worker.poll() is None:
                time.sleep(0.1)
            worker.send_signal(signal.SIGTERM)
            _out, err = worker.communicate(timeout=60)
        finally:
            worker.kill()
        assert worker.returncode == 0, err.decode()
        assert b"worker stopped" in err
        assert delivered() == list(seqs)
