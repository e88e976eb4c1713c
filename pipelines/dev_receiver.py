"""The demo's webhook receiver: what ``keel dev`` starts so the demo's endpoints really receive.

A small HTTP server on 127.0.0.1 (in a thread of ``keel dev``): ``POST /ok/<name>`` answers 204,
``POST /fail/<name>`` answers 500, each arrival one JSON line in ``<data dir>/logs/webhooks-received.log``.
Its port is kept in the data directory, so the endpoints the demo seeded keep pointing at it
after a restart.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from api.demo import RECEIVER_FAIL_PATH as FAIL_PREFIX
from api.demo import RECEIVER_OK_PATH as OK_PREFIX

PORT_FILE = "demo-receiver.json"


class DemoReceiver:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir / "logs" / "webhooks-received.log"
        self.received = 0
        self.previous_port: int | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DemoReceiver:
        """Bind the port used last time when it is free, else any free port."""
        record = self.data_dir / PORT_FILE
        try:
            self.previous_port = int(json.loads(record.read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            self.previous_port = None
        receiver = self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = (
                    204
                    if self.path.startswith(OK_PREFIX)
                    else 500
                    if self.path.startswith(FAIL_PREFIX)
                    else 404
                )
                receiver._record(self.path, status, self.headers.get("webhook-id"), body)
                self.send_response(status)
                if status != 204:
                    message = (
                        b"the demo's failing endpoint: it always answers 500\n" if status == 500 else b""
                    )
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                else:
                    self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # the log file has the arrivals
                return

        for port in ([self.previous_port] if self.previous_port else []) + [0]:
            try:
                self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
                break
            except OSError:
                continue
        assert self._server is not None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-receiver", daemon=True)
        self._thread.start()
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"port": self.port}))
        return self

    def _record(self, path: str, status: int, webhook_id: str | None, body: bytes) -> None:
        try:
            event_type = json.loads(body).get("type")
        except (ValueError, AttributeError):
            event_type = None
        line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "path": path,
                           "status": status, "webhook_id": webhook_id, "type": event_type})  # fmt: skip
        with self._lock:
            self.received += 1
            with self.log_path.open("a") as log:
                log.write(line + "\n")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
