"""Where a webhook may be sent: globally routable addresses only, as ``api.egress`` defines them
(unless the setting allows private ones).

A URL is checked when an endpoint is created or changed, and its host is resolved and checked
again on every new connection (:class:`GuardedBackend`), which then connects to the very address
it checked: a name that resolved to a public address at creation and to ``127.0.0.1`` later (DNS
rebinding) is refused at send time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import typing
from urllib.parse import urlsplit

import httpcore
import httpx
from httpcore._utils import is_socket_readable

from api.egress import InvalidHostName, ascii_host_name, literal_address, non_routable_reason
from api.errors import ValidationFailed

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa")
CREATION_DNS_TIMEOUT = 2.0


class TargetRefused(Exception):
    """The target is on an address that is not globally routable (``api.egress``), or a local name."""


class DnsFailure(Exception):
    """The host name did not resolve."""


# httpcore's pool re-raises connection errors ``from None``, so what went wrong travels in the type.
class ConnectRefused(httpcore.ConnectError):
    """Nothing listens there: the connection was refused."""


class TlsFailure(httpcore.ConnectError):
    """The TLS handshake failed (certificate, protocol)."""


def check_host(host: str) -> None:
    """Refuse local names and literal addresses that are not globally routable, without resolving."""
    name = host.lower().rstrip(".")
    if name in LOCAL_NAMES or name.endswith(LOCAL_SUFFIXES):
        raise TargetRefused(f"{host} is a local name")
    ip = literal_address(name)
    reason = non_routable_reason(ip) if ip is not None else None
    if reason is not None:
        raise TargetRefused(reason)


async def resolve(host: str, port: int, *, allow_private: bool, within: float | None) -> list[str]:
    """Every address ``host`` resolves to, each checked; refused if any of them is not globally
    routable (one private record beside public ones is enough to aim a request inward)."""
    ip = literal_address(host)
    if ip is not None:
        addresses = [str(ip)]
    else:
        # Names are judged by what they resolve to now, whatever they resolved to at creation.
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise DnsFailure(f"{host} did not resolve ({exc})") from None
        except TimeoutError:
            raise DnsFailure(f"{host} did not resolve in time") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            reason = non_routable_reason(ipaddress.ip_address(address.split("%", 1)[0]))
            if reason is not None:
                raise TargetRefused(reason if ip is not None else f"{host} resolves to {address}: {reason}")
    return addresses


async def validate_url(url: str, *, allow_private: bool) -> str:
    """Check an endpoint URL as given by a customer; every failure is a 422 naming ``url``."""

    def refuse(reason: str) -> ValidationFailed:
        return ValidationFailed(f"url: {reason}", field="url")

    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise refuse("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port out of range)
        host = parts.hostname or ""
        parsed = httpx.URL(url)
    except (ValueError, UnicodeError, httpx.InvalidURL, TypeError):
        raise refuse("is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_private):
        raise refuse("must use https")
    if not host or not parsed.raw_host:
        raise refuse("needs a host")
    if parts.username is not None or parts.password is not None:
        raise refuse("must not carry credentials; authenticate with the signature instead")
    if literal_address(host) is None:
        try:
            host = ascii_host_name(host)
        except InvalidHostName as exc:
            raise refuse(f"the host {exc}") from None
    if allow_private:
        return url
    try:
        check_host(host)
        if literal_address(host) is None:
            # Refuse names that already point inward; a name that does not resolve yet is accepted
            # (DNS may come later) and is checked again at every connection.
            with contextlib.suppress(DnsFailure):
                await resolve(host, parts.port or 443, allow_private=False, within=CREATION_DNS_TIMEOUT)
    except TargetRefused as exc:
        raise refuse(f"must be a globally routable address: {exc}") from None
    return url


#: Writes gather up to this many bytes before they are sent (they are sent before any read).
WRITE_GATHER = 65_536


class AsyncioStream(httpcore.AsyncNetworkStream):
    """A connection on plain asyncio streams (httpcore's default goes through anyio, which costs
    more per request than the rest of a delivery); errors are httpcore's, as httpx expects.

    httpcore writes a request's head and its body apart; each write is a syscall that wakes the
    receiver (the largest single cost of a delivery in bench_webhooks.py's profiles). Writes are
    gathered instead and go out as one segment before the stream is next read (or past
    :data:`WRITE_GATHER` bytes); HTTP/1.1 reads the answer only after the whole request is written.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._pending: list[bytes] = []
        self._pending_size = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._pending:
            await self._send(timeout)
        try:
            if timeout is None:  # no timer to schedule (the attempt's own deadline still holds)
                return await self._reader.read(max_bytes)
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout("no answer in time") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        self._pending.append(buffer)
        self._pending_size += len(buffer)
        if self._pending_size >= WRITE_GATHER:
            await self._send(timeout)

    async def _send(self, timeout: float | None) -> None:  # noqa: ASYNC109  (httpcore's, passed on)
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        try:
            self._writer.write(data)
            transport = self._writer.transport
            # Only a full buffer (or a closing connection, whose error drain raises) can wait.
            if transport.get_write_buffer_size() or transport.is_closing():
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout("the request could not be sent in time") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._pending.clear()
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("the TLS handshake did not finish in time") from exc
        except ssl.SSLError as exc:
            raise TlsFailure(f"TLS handshake failed: {exc}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "is_readable":
            return is_socket_readable(self._writer.get_extra_info("socket"))
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend: resolves and checks each host itself, then connects to the very
    address it checked."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port, allow_private=self.allow_private, within=timeout)
        failure: OSError | TimeoutError | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(timeout):
                    reader, writer = await asyncio.open_connection(
                        address, port, local_addr=(local_address, 0) if local_address else None
                    )
            except (OSError, TimeoutError) as exc:
                failure = exc
                continue
            sock = writer.get_extra_info("socket")
            for option in socket_options or ():
                sock.setsockopt(*option)
            return AsyncioStream(reader, writer)
        if isinstance(failure, TimeoutError):
            raise httpcore.ConnectTimeout(f"no connection to {host}:{port} in time") from failure
        if isinstance(failure, ConnectionRefusedError):
            raise ConnectRefused(f"{host}:{port} refused the connection") from failure
        raise httpcore.ConnectError(f"{host}:{port}: {failure}") from failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: typing.Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("webhooks are never sent to Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def guarded_transport(
    *, allow_private: bool, connections: int, ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncHTTPTransport:
    """httpx's keep-alive transport, connecting only where :func:`resolve` allows.

    Deliveries use the transport itself, not an ``httpx.AsyncClient`` around it: a webhook sender
    keeps no cookies and follows no redirects, and the client's layers for those cost more than a
    whole request to a fast receiver.
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    context = ssl_context or httpx.create_ssl_context(trust_env=False)
    transport = httpx.AsyncHTTPTransport(verify=context, limits=limits, trust_env=False)
    # httpx takes no network backend; its pool is rebuilt with the same limits and the guarded one.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context,
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(allow_private=allow_private),
    )
    return transport
