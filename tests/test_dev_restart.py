"""`keel dev` (what `make run` starts), run for real twice on one data directory: the second start
changes nothing the first made; the demo's webhooks really arrive; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from api.db.embedded import start_embedded_postgres
from api.db.engine import make_sync_engine
from pipelines.prefect_server import child_process

KEEL = str(Path(sys.executable).with_name("keel"))
ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 600  # the demo seed, a Prefect server and the pipelines, on a shared 2-core machine
TOKEN = re.compile(r"^  Admin token  (keel_ut_\S+)$", re.M)
CONSOLE_LINK = re.compile(
    r"^  Console      \S+/console  \(sign in once: (\S+/console/login/keel_cl_\S+)\)$", re.M
)
INGEST_KEY = re.compile(r"^  Ingest key   (\w+) +(keel_ik_\S+)$", re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevRun:
    """One `keel dev` process, started in its own session as a terminal would, stopped by SIGINT."""

    def __init__(self, data_dir: Path, port: int, name: str, *args: str) -> None:
        self.log_path = data_dir.parent / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "PREFECT_"))}
        env.update(KEEL_DATA_DIR=str(data_dir), KEEL_PORT=str(port), COLUMNS="200")
        self.env = env
        with self.log_path.open("ab") as log:
            self.process = child_process([KEEL, "dev", *args], env=env, log=log)
        self.base = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self) -> str:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()[-4000:]
            out = self.output()
            if "started flow schedules" in out:
                try:
                    if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                        return out
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        raise AssertionError("keel dev did not start:\n" + self.output()[-4000:])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("keel dev did not stop on Ctrl-C:\n" + self.output()[-3000:]) from None


def reconciliation(base: str, token: str) -> list[tuple[Any, ...]]:
    answer = httpx.get(
        f"{base}/v1/admin/billing/reconciliation", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    fields = ("kind", "severity", "organization_id", "stripe_customer_id", "stripe_subscription_id",
              "expected", "actual")  # fmt: skip
    return sorted(tuple(d[f] for f in fields) for d in answer.json()["discrepancies"])


def me(base: str, token: str) -> httpx.Response:
    return httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {token}"})


def database_facts(data_dir: Path) -> dict[str, Any]:
    """Read with keel dev stopped: the embedded Postgres of the data directory, started and stopped here."""
    url, server = start_embedded_postgres(data_dir, cleanup="stop")
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            users = conn.scalar(text("SELECT count(*) FROM users"))
            admins = conn.execute(text("SELECT id FROM users WHERE platform_role = 'admin'")).scalars().all()
            orgs = conn.execute(
                text("SELECT slug, stripe_customer_id FROM organizations ORDER BY slug")
            ).all()
            subscriptions = conn.execute(
                text("SELECT stripe_subscription_id, organization_id, status FROM subscriptions ORDER BY 1")
            ).all()
            live_admin_tokens = conn.scalar(
                text("SELECT count(*) FROM api_tokens t JOIN users u ON u.id = t.user_id"
                     " WHERE u.email = 'admin@keel.demo' AND t.revoked_at IS NULL")
            )  # fmt: skip
    finally:
        engine.dispose()
        server.cleanup()  # type: ignore[attr-defined]
    return {"users": users, "admins": [str(a) for a in admins], "orgs": [tuple(o) for o in orgs],
            "subscriptions": [tuple(map(str, s)) for s in subscriptions], "live_admin_tokens": live_admin_tokens}  # fmt: skip


def assert_clean_stop(run: DevRun, data_dir: Path) -> None:
    out = run.output()
    assert run.process.returncode in (0, 130), out[-3000:]
    for text_ in [out, *(p.read_text(errors="replace") for p in (data_dir / "logs").glob("*.log"))]:
        assert "Traceback" not in text_ and "Segmentation fault" not in text_, text_[-3000:]
        assert "received 1012" not in text_ and "SystemExit" not in text_


def test_keel_dev_twice_on_one_data_dir_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "keel"
    port = free_port()

    first = DevRun(data_dir, port, "first")
    try:
        out = first.wait_ready()
        token = TOKEN.findall(out)[-1]
        # The console's sign-in link, beside the admin token, signs the admin in (once).
        link = CONSOLE_LINK.findall(out)[-1]
        with httpx.Client() as browser:
            assert browser.get(link).status_code == 200
            assert browser.get(f"{first.base}/console", follow_redirects=False).status_code == 200
        assert httpx.get(link).status_code == 401
        # Every key of the banner whole on one line (they wrapped across lines before).
        keys = dict(INGEST_KEY.findall(out))
        assert set(keys) == {"acme", "globex", "initech", "umbrella"}
        for key in keys.values():
            assert httpx.post(f"{first.base}/v1/events", json={"event": "banner.checked", "user_id": "u"},
                              headers={"Authorization": f"Bearer {key}"}).status_code == 200  # fmt: skip
        admin_id = me(first.base, token).json()["user_id"]
        found = reconciliation(first.base, token)
        assert len(found) == 4, found
        # An org the user creates is not the demo's: a restart must not give it a subscription.
        mine = httpx.post(f"{first.base}/v1/orgs", json={"name": "Mine", "slug": "mine"},
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert mine.status_code == 201, mine.text

        # The demo's endpoints really receive: the local receiver gets the invitations (204), the
        # failing endpoint answers 500, and support sees it failing in the admin org view.
        received = data_dir / "logs" / "webhooks-received.log"

        def arrivals() -> list[dict[str, Any]]:
            return (
                [json.loads(line) for line in received.read_text().splitlines()] if received.exists() else []
            )

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses = {(a["path"].split("/")[1], a["status"]) for a in arrivals()}
            if {("ok", 204), ("fail", 500)} <= statuses:
                break
            time.sleep(1)
        assert {("ok", 204), ("fail", 500)} <= statuses, arrivals()[:5]
        staff = {"Authorization": f"Bearer {token}"}
        initech = httpx.get(f"{first.base}/v1/admin/orgs", params={"q": "initech"}, headers=staff).json()[
            "items"
        ][0]
        view = httpx.get(f"{first.base}/v1/admin/orgs/{initech['id']}", headers=staff).json()
        assert any("/fail/initech" in e["url"] for e in view["failing_endpoints"]), view["failing_endpoints"]
    finally:
        first.stop()
    assert_clean_stop(first, data_dir)
    stripe_state = (data_dir / "stripe-local" / "state.json").read_text()
    before = database_facts(data_dir)

    second = DevRun(data_dir, port, "second", "--schedule", "export-lake=15s")
    try:
        out = second.wait_ready()
        assert "demo not seeded" in out
        assert "admin token re-issued for admin@keel.demo; the 1 earlier one(s) are revoked" in out
        new_token = TOKEN.findall(out)[-1]
        assert new_token != token
        assert me(second.base, token).status_code == 401, "the old admin token is revoked"
        assert me(second.base, new_token).json()["user_id"] == admin_id, "the same admin user, a new token"
        assert reconciliation(second.base, new_token) == found
        # Under keel dev the schedules fire (here a shorter one, passed on to `keel flows serve`),
        # and `keel flows list` in another shell finds keel dev's Prefect server by itself.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            listed = subprocess.run([KEEL, "flows", "list", "--json"], capture_output=True, text=True,
                                    env=second.env, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            export = {row["flow"]: row for row in json.loads(listed.stdout)}["export-lake"]
            last = export["last_run"]
            if last and last["origin"] == "scheduled" and last["state"] == "Completed":
                break
            time.sleep(3)
        assert export["schedule"] == "every 15s" and export["next_run"] is not None, export
        assert last and last["origin"] == "scheduled" and last["state"] == "Completed", export
    finally:
        second.stop()
    assert_clean_stop(second, data_dir)
    after = database_facts(data_dir)
    assert (data_dir / "stripe-local" / "state.json").read_text() == stripe_state
    assert after["users"] == before["users"] and after["admins"] == before["admins"]
    assert after["orgs"] == before["orgs"] and ("mine", None) in after["orgs"]
    assert after["subscriptions"] == before["subscriptions"] and len(after["subscriptions"]) == 4
    assert after["live_admin_tokens"] == 1
