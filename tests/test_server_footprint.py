"""What a server worker loads: the app it serves, not libraries it never runs (issue 20: the server
stays under 300 MB with 2 workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from api.app import KeelLitestar, create_app
from api.settings import Settings

#: What ``python -m api.server`` spawns: uvicorn imports ``api.server`` and calls ``from_env``.
WORKER = """
import json, sys
import uvicorn, api.server
app = api.server.from_env()
import httpx
with httpx.Client() as client:  # the client the API sends webhooks with still works
    pass
print(json.dumps({
    "loaded": sorted(m for m in ("pydantic", "pydantic_core", "rich", "pygments") if m in sys.modules),
    "plugins": sorted(type(p).__name__ for p in app.plugins),
    "routes": len(app.routes),
}))
"""


def test_a_server_worker_imports_neither_pydantic_nor_httpx_s_command_line_client() -> None:
    # No database is reached: the app is built, not started.
    env = {**os.environ, "KEEL_DATABASE_URL": "postgresql://keel_app@127.0.0.1:1/none"}
    out = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["loaded"] == []
    assert "MsgspecDIPlugin" in found["plugins"]
    assert not [p for p in found["plugins"] if p.startswith(("Pydantic", "Attrs"))]
    assert found["routes"] > 50


def test_the_app_carries_only_the_msgspec_default_plugin() -> None:
    app = create_app(Settings(database_url="postgresql://keel_app@127.0.0.1:1/none"))
    assert isinstance(app, KeelLitestar)
    names = {type(p).__name__ for p in app.plugins}
    assert "MsgspecDIPlugin" in names
    assert not {n for n in names if n.startswith(("Pydantic", "Attrs"))}
