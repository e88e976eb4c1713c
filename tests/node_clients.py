"""Run the official JavaScript clients of ``tests/node/`` (Node scripts, and the browser bundle).

``make test`` installs them (``npm ci`` from ``tests/node/package-lock.json``); a missing install is
a failure that says how to fix it, never a skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent / "node"
#: What `npm ci` must have left (the packages package.json pins).
PACKAGES = (
    "@segment/analytics-node",
    "@segment/analytics-next",
    "@openfeature/server-sdk",
    "@openfeature/ofrep-provider",
    "@openfeature/web-sdk",
    "@openfeature/ofrep-web-provider",
    "esbuild",
)


def node_binary() -> str:
    node = shutil.which("node")
    assert node, "Node.js is needed for the JavaScript client tests: install node (v20+) and npm"
    missing = [p for p in PACKAGES if not (NODE_DIR / "node_modules" / p / "package.json").is_file()]
    assert not missing, f"{missing} not installed: run `make node-deps` (npm ci in tests/node)"
    return node


def run_node(script: str, payload: dict[str, Any], *, timeout: float = 120) -> dict[str, Any]:
    """Run ``tests/node/<script>`` with ``payload`` as JSON on stdin; its last stdout line, parsed."""
    done = subprocess.run(
        [node_binary(), str(NODE_DIR / script)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=NODE_DIR,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing:\n{done.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def build_browser_bundle(out: Path) -> Path:
    """Bundle the browser SDKs (``tests/node/browser-entry.mjs``, esbuild) into one script at ``out``:
    the page's ``KeelClients`` global."""
    done = subprocess.run(
        [node_binary(), str(NODE_DIR / "build-browser.mjs"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
        check=False,
    )
    assert done.returncode == 0 and out.is_file(), f"bundling the browser SDKs failed:\n{done.stderr}"
    return out
