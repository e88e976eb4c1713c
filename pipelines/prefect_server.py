"""The Prefect API that ``keel flows`` and ``keel dev`` talk to, and the local server they run.

Prefect's *ephemeral* server (the one a client starts by itself when no ``PREFECT_API_URL`` is
set) runs without Prefect's scheduler service (``run_in_ephemeral=False`` in
``prefect.server.services.scheduler``), so deployments served against it never get a scheduled
run. ``keel flows serve`` and ``keel dev`` therefore start a real ``prefect server start`` (with
its services, the UI off) on a free loopback port when no server is configured, with its state
(a SQLite file) under ``<KEEL_DATA_DIR>/prefect``, and record its address there so that
``keel flows list`` and ``keel flows run`` in another shell use the same server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from api.settings import Settings

#: Where a running local server writes its address, inside PREFECT_HOME.
SERVER_RECORD = "keel-server.json"
#: How long a busy 2-core machine may take to start a Prefect server (its default is 20 s).
STARTUP_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 8


def prepare_environment(settings: Settings, *, verbose: bool = False) -> Path:
    """Prefect keeps its state under the data directory; returns PREFECT_HOME."""
    home = Path(os.environ.setdefault("PREFECT_HOME", str(settings.data_dir.resolve() / "prefect")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(STARTUP_TIMEOUT_SECONDS))
    # Prefect's own logs (with tracebacks) only on request; the commands print their own summary.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
    return home


def connect(settings: Settings, *, verbose: bool = False) -> tuple[Path, str | None]:
    """The one set-up of Prefect's environment for a ``keel`` process: its state under the data
    directory, and the API to use (``PREFECT_API_URL``, else the local server ``keel dev`` or
    ``keel flows serve`` runs; None: neither, and Prefect starts a temporary one of its own).
    Returns PREFECT_HOME and that API's URL."""
    home = prepare_environment(settings, verbose=verbose)
    return home, use_configured_server(home)


def _answers(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def running_server(home: Path) -> str | None:
    """The API URL of the local server recorded in ``home``, when it is alive and answers."""
    record = home / SERVER_RECORD
    try:
        data = json.loads(record.read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    api_url = str(data["api_url"])
    return api_url if _answers(api_url) else None


def use_configured_server(home: Path) -> str | None:
    """Point this process at a Prefect API: ``PREFECT_API_URL`` when set, else the local server
    ``keel dev`` or ``keel flows serve`` runs (exported as ``PREFECT_API_URL``). None: neither, and
    Prefect falls back to a temporary server of its own (no scheduler)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    found = running_server(home)
    if found:
        os.environ["PREFECT_API_URL"] = found
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the parent dies (even by SIGKILL), so
    a killed ``keel dev`` leaves no Prefect server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_process(args: list[str], *, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """A helper process in a session of its own: a Ctrl-C in the terminal reaches only its parent,
    which stops the helpers in order (the flow runner before the server it talks to)."""
    return subprocess.Popen(
        args, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=_die_with_parent,
    )  # fmt: skip


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM to all at once, then wait for each (SIGKILL whatever is left after ``timeout``)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class LocalPrefectServer:
    api_url: str
    process: subprocess.Popen[bytes]
    record: Path

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if json.loads(self.record.read_text()).get("pid") == self.process.pid:
                self.record.unlink()
        stop_process(self.process)


def start_local_server(home: Path, log_path: Path) -> LocalPrefectServer:
    """``prefect server start`` (scheduler and other services on, UI off) on a free loopback port,
    its database under ``home``; waits until it answers and records its address."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_ENABLED": "false"}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    for _attempt in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        with log_path.open("ab") as log:
            process = child_process(
                [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, log=log
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(api_url, timeout=1.0):
                record = home / SERVER_RECORD
                record.write_text(json.dumps({"api_url": api_url, "pid": process.pid}))
                return LocalPrefectServer(api_url, process, record)
            time.sleep(0.25)
        stop_process(process)
    raise RuntimeError(f"the Prefect server did not start; its log is {log_path}")


@contextlib.contextmanager
def prefect_api(settings: Settings, *, log_dir: Path) -> Iterator[tuple[str, LocalPrefectServer | None]]:
    """A Prefect API with a scheduler for the duration: the configured one (``PREFECT_API_URL``
    or a running local server), else a local server started here and stopped on exit. Exports
    ``PREFECT_API_URL`` so flows run in this process and child processes use it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    home, found = connect(settings)
    server = None if found else start_local_server(home, log_dir / "prefect-server.log")
    api_url = found or server.api_url  # type: ignore[union-attr]
    os.environ["PREFECT_API_URL"] = api_url
    try:
        # Prefect reads its settings once, when first imported: the environment is not enough.
        # This process's own log lines stay local (flow runs still log to the API): shipping them
        # would retry against a server that is stopping, and delay the exit by seconds.
        with temporary_settings({PREFECT_API_URL: api_url, PREFECT_LOGGING_TO_API_ENABLED: False}):
            yield api_url, server
    finally:
        if server is not None:
            server.stop()
            os.environ.pop("PREFECT_API_URL", None)
