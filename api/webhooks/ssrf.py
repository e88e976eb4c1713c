"""Where a webhook may be sent: public addresses only (unless the setting allows private ones).

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
import typing
from urllib.parse import urlsplit

import httpcore
import httpx
from httpcore._backends.auto import AutoBackend

from api.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
LOCAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa")
CREATION_DNS_TIMEOUT = 2.0


class TargetRefused(Exception):
    """The target is on a private, loopback, link-local or otherwise non-public address."""


class DnsFailure(Exception):
    """The host name did not resolve."""


def address_allowed(ip: IPAddress) -> bool:
    """Public unicast addresses only; IPv4 hidden inside IPv6 is judged as the IPv4 it carries."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not address_allowed(embedded):
            return False
    return ip.is_global and not ip.is_multicast


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, including legacy IPv4 forms (``2130706433``, ``0x7f.1``)."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except (OSError, ValueError):
        return None


def check_host(host: str) -> None:
    """Refuse local names and non-public literal addresses, without resolving anything."""
    name = host.lower().rstrip(".")
    if name in LOCAL_NAMES or name.endswith(LOCAL_SUFFIXES):
        raise TargetRefused(f"{host} is a local name")
    ip = literal_address(name)
    if ip is not None and not address_allowed(ip):
        raise TargetRefused(f"{ip} is not a public address")


async def resolve(host: str, port: int, *, allow_private: bool, within: float | None) -> list[str]:
    """Every address ``host`` resolves to, each checked; refused if any of them is not public
    (one private record beside public ones is enough to aim a request inward)."""
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
            if not address_allowed(ipaddress.ip_address(address.split("%", 1)[0])):
                raise TargetRefused(f"{host} resolves to {address}, which is not a public address")
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
    if not host or not parsed.host:
        raise refuse("needs a host")
    if parts.username is not None or parts.password is not None:
        raise refuse("must not carry credentials; authenticate with the signature instead")
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
        raise refuse(f"must be a public address ({exc})") from None
    return url


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving and checking each host itself before connecting."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port, allow_private=self.allow_private, within=timeout)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: typing.Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("webhooks are never sent to Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(*, allow_private: bool, connections: int, timeout: float) -> httpx.AsyncClient:
    """One keep-alive client for all deliveries, connecting only where :func:`resolve` allows."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    # httpx takes no network backend; its pool is rebuilt with the same limits and the guarded one.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=transport._pool._ssl_context,  # type: ignore[union-attr]
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(allow_private=allow_private),
    )
    return httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False
    )
