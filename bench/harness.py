"""Shared scaffolding for the benchmark programs: a private Postgres, a served API, RSS sampling.

Every bench starts its own embedded Postgres in a temporary directory (default durability
settings, unlike the test suite) and its own `keel serve` process on a port chosen at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.db.embedded import APP_ROLE, app_url, start_embedded_postgres, system_user
from api.db.migrate import upgrade_with_roles
from api.settings import Settings

T = TypeVar("T")
KEEL = str(Path(sys.executable).with_name("keel"))


@contextlib.contextmanager
def private_postgres(*, tcp: bool = False, sized: bool = True) -> Iterator[str]:
    """The owner's (superuser's) URL of a migrated private Postgres; its application role (what
    served APIs and workers connect as: :func:`app_url`) has its grants.

    ``tcp``: the server listens on 127.0.0.1 at a free port (as a Postgres server elsewhere would
    be reached) and the URL says so; otherwise on a Unix socket only. ``sized=False``: stock
    Postgres settings instead of api/db/embedded.py's machine_settings()."""
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    url, server = start_embedded_postgres(workdir, cleanup="delete", sized=sized)
    try:
        if tcp:
            url = _listen_on_tcp(server)
        upgrade_with_roles(url, app_url(url), audit_retention_days=Settings().audit_retention_days)
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def tcp_postgres(**settings: str) -> Iterator[str]:
    """The owner's (superuser's) URL of a migrated private Postgres *server* reached over TCP on
    127.0.0.1 (a port chosen at run time), as a deployment reaches an external server; stock
    settings unless ``settings`` (``postgres -c name=value``) say otherwise. The server's binaries
    are the embedded wheel's, or those of ``KEEL_BENCH_PG_BIN`` (e.g. Debian's
    ``/usr/lib/postgresql/15/bin``, which has ``pg_stat_statements``). Its data directory is
    deleted afterwards."""
    import pgserver._commands as pg
    from pgserver import utils

    bin_dir = Path(os.environ.get("KEEL_BENCH_PG_BIN") or pg.POSTGRES_BIN_PATH)
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-tcp-"))
    pgdata, sockets = workdir / "pgdata", workdir / "sockets"
    pgdata.mkdir()
    sockets.mkdir()
    user = None
    if (entry := system_user()) is not None:  # as root: run Postgres as pgserver runs it
        user = entry.pw_name
        utils.ensure_prefix_permissions(pgdata)
        for path in (workdir, pgdata, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def command(name: str, *args: str) -> None:
        subprocess.run(
            [str(bin_dir / name), *args], check=True, user=user, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=120,
        )  # fmt: skip

    port = free_port()
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    owner = f"postgresql://postgres@127.0.0.1:{port}/keel"
    try:
        command("initdb", "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        command(
            "pg_ctl", "-D", str(pgdata), "-w", "-l", str(workdir / "log"),
            "-o", f"-h 127.0.0.1 -p {port} -k {sockets} {options}", "start",
        )  # fmt: skip
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE keel")
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        upgrade_with_roles(owner, app_url(owner), audit_retention_days=Settings().audit_retention_days)
        yield owner
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            command("pg_ctl", "-D", str(pgdata), "-w", "-m", "fast", "stop")
        shutil.rmtree(workdir, ignore_errors=True)


def _listen_on_tcp(server: Any) -> str:
    """Restart a pgserver Postgres listening on 127.0.0.1 (trust authentication, as pgserver sets
    up); returns the owner's URL over TCP. The handle then stops (and deletes) the new server."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
    from pgserver.utils import PostmasterInfo

    port = free_port()
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    pg_ctl(
        ["-w", "-o", f"-h 127.0.0.1 -p {port} -k {server.pgdata}", "-l", str(server.log), "start"],
        pgdata=server.pgdata,
        user=server.system_user,
    )
    server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)
    return f"postgresql://postgres@127.0.0.1:{port}/keel"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served_api(database_url: str, workers: int = 1, **env: str) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="keel-bench-api-")
    environment = {
        **os.environ,
        "KEEL_DATABASE_URL": app_url(database_url),  # as in production: the application role
        "KEEL_DATA_DIR": workdir,
        "KEEL_LOG_LEVEL": "WARNING",
        **env,
    }
    proc = subprocess.Popen(
        [KEEL, "serve", "--port", str(port), "--workers", str(workers)],
        env=environment,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = wait_for_answer(f"{url}/ready", proc, "keel serve", timeout=180)  # a loaded machine
        server = psutil.Process(proc.pid)
        wait_until_idle(server, deadline)
        yield url, server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for_answer(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> float:
    """Poll ``url`` until it answers 200; raise if ``proc`` exits or ``timeout`` passes first.
    Returns the deadline, for whatever else the caller waits for."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return deadline
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


def wait_until_idle(server: psutil.Process, deadline: float, window: float = 0.5) -> None:
    """One worker answering /ready does not mean all have started: the others may still be importing,
    which would be charged to the first figure. Wait until the process tree is nearly idle."""
    last = CpuMeter.tree_seconds(server)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = CpuMeter.tree_seconds(server)
        if now - last < 0.1 * window:
            return
        last = now


class PeakRss:
    """Samples the resident set size of a process and its children (all server workers) in the
    background; ``peak`` is the largest total seen (MB).

    A sum of RSS counts every page shared between the processes (the interpreter, libc, OpenSSL:
    ~27 MB a worker) once per process; ``peak_pss`` is the largest sum of proportional set sizes
    (each shared page split between the processes mapping it), what the tree costs the machine.
    PSS is read from ``smaps_rollup``, dearer than RSS, so it is sampled every ``pss_every`` s.

    The process tree is re-read every ``rescan`` seconds only: finding children walks all of /proc,
    which at 20 times a second cost the load generator's side of a 2-core machine more than the
    sampling itself."""

    def __init__(
        self, process: psutil.Process, every: float = 0.05, rescan: float = 1.0, pss_every: float = 0.25
    ) -> None:
        self.process, self.every, self.rescan, self.pss_every = process, every, rescan, pss_every
        self.peak = self.peak_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tree: list[psutil.Process] = []
        scanned = pss_read = 0.0
        while not self._stop.is_set():
            if time.monotonic() - scanned > self.rescan:
                with contextlib.suppress(psutil.Error):
                    tree = [self.process, *self.process.children(recursive=True)]
                scanned = time.monotonic()
            total = 0
            for proc in tree:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total / 1024 / 1024)
            if time.monotonic() - pss_read > self.pss_every:
                pss = 0
                for proc in tree:
                    with contextlib.suppress(psutil.Error):
                        pss += proc.memory_full_info().pss
                self.peak_pss = max(self.peak_pss, pss / 1024 / 1024)
                pss_read = time.monotonic()
            time.sleep(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuMeter:
    """CPU seconds (user + system) spent between two readings by process trees (the server's
    workers; Postgres's backends, exited ones too through the postmaster's waited-children times)
    and by single processes (the load generator, without the server it started). On a shared
    2-core machine rates move with the neighbours' load; CPU per event says what each part costs."""

    def __init__(self, trees: dict[str, psutil.Process], single: dict[str, psutil.Process]) -> None:
        self.trees, self.single = trees, single
        self.start: dict[str, float] = {}

    @staticmethod
    def own_seconds(proc: psutil.Process) -> float:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            return times.user + times.system
        return 0.0

    @classmethod
    def tree_seconds(cls, root: psutil.Process) -> float:
        total = cls.own_seconds(root)
        with contextlib.suppress(psutil.Error):
            times = root.cpu_times()
            total += times.children_user + times.children_system
            for child in root.children(recursive=True):
                total += cls.own_seconds(child)
        return total

    def _now(self) -> dict[str, float]:
        readings = {name: self.tree_seconds(proc) for name, proc in self.trees.items()}
        readings.update({name: self.own_seconds(proc) for name, proc in self.single.items()})
        return readings

    def reset(self) -> None:
        self.start = self._now()

    def __enter__(self) -> CpuMeter:
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        #: After the block: CPU seconds of every part inside it (the children it waited for too).
        self.taken = self.spent(settle=0)

    def spent(self, settle: float = 0.5) -> dict[str, float]:
        """CPU seconds of every part since :meth:`reset`."""
        time.sleep(settle)  # a closed connection's backend must exit and be reaped to be counted
        return {name: seconds - self.start[name] for name, seconds in self._now().items()}

    def per(self, units: float, scale: float = 1000.0) -> str:
        """Milliseconds of CPU of every part per ``scale`` units (events, requests)."""
        spent = self.spent()
        return ", ".join(f"{name} {seconds / units * scale * 1000:.1f} ms" for name, seconds in spent.items())


def postmaster(database_url: str) -> psutil.Process:
    """The Postgres server process behind ``database_url`` (its backends are its children)."""
    import psycopg

    from api.db.engine import libpq_url

    with psycopg.connect(libpq_url(database_url)) as conn:
        return psutil.Process(psutil.Process(conn.info.backend_pid).ppid())


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


class HttpLoad:
    """A lean HTTP/1.1 keep-alive load generator on raw asyncio streams.

    httpx spends more CPU per request than the server under test does on a small route; on a
    2-core machine that would measure the client. This one sends pre-built requests and parses
    only the status line and Content-Length.
    """

    def __init__(self, url: str, connections: int) -> None:
        host_port = url.removeprefix("http://")
        self.host, port = host_port.split(":")
        self.port = int(port)
        self.size = connections
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def __aenter__(self) -> HttpLoad:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()

    def build(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> bytes:
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        reader, writer = await self.idle.get()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
        except Exception:
            writer.close()
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
            raise
        self.idle.put_nowait((reader, writer))
        return status, body

    async def closed_loop(self, requests: list[bytes]) -> tuple[float, list[int]]:
        """Send every request as fast as the connections allow; returns (requests/s, statuses)."""
        pending = iter(requests)
        statuses: list[int] = []

        async def worker() -> None:
            for request in pending:
                statuses.append((await self.send(request))[0])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.size)))
        return len(requests) / (time.perf_counter() - started), statuses

    async def open_loop(self, requests: list[bytes], rate: float) -> tuple[float, list[float], list[int]]:
        """Offer ``rate`` requests/s on a fixed schedule; latency counts from the scheduled time, so a
        queue building up shows in the figures. Returns (achieved requests/s, latencies ms, statuses)."""
        latencies: list[float] = []
        statuses: list[int] = []
        started = time.perf_counter()

        async def one(i: int, request: bytes) -> None:
            due = started + i / rate
            statuses.append((await self.send(request))[0])
            latencies.append((time.perf_counter() - due) * 1000)

        tasks = []
        for i, request in enumerate(requests):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, request)))
        await asyncio.gather(*tasks)
        return len(requests) / (time.perf_counter() - started), latencies, statuses


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<52} {value:>18}  {note}")


__all__ = [
    "KEEL",
    "Any",
    "CpuMeter",
    "PeakRss",
    "percentile",
    "postmaster",
    "private_postgres",
    "row",
    "run",
    "served_api",
    "tcp_postgres",
]
