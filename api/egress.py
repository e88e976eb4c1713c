"""Where Keel's outbound requests may go: the one definition of a globally routable address, and of
a valid host name.

Outbound webhooks check every endpoint URL with it when it is created and every address they
connect to when they send (``api/webhooks/ssrf.py``); anything else Keel sends to a customer's
server (audit streams) uses the same functions, so there is one rule to get right.

An address is globally routable when it is in none of IANA's special-purpose blocks (IPv4 and
IPv6), not multicast, and, for IPv6, inside 2000::/3, the only space IANA allocates for global
unicast. An IPv6 address that stands for an IPv4 one (IPv4-mapped, -compatible and -translated,
NAT64, 6to4, Teredo) is judged by the IPv4 address it carries: ``[64:ff9b::a9fe:a9fe]`` is
169.254.169.254 behind a NAT64 gateway.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_v4 = ipaddress.IPv4Network
_v6 = ipaddress.IPv6Network

# IANA IPv4 Special-Purpose Address Registry
# (https://www.iana.org/assignments/iana-ipv4-special-registry), every entry, plus multicast from
# the IPv4 Address Space registry. Entries IANA marks globally reachable (the PCP and TURN anycast
# addresses inside 192.0.0.0/24, AS112, AMT) are refused too: they are shared service addresses
# that no webhook receiver runs on.
IPV4_SPECIAL_PURPOSE: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_v4("0.0.0.0/8"), '"this network"'),
    (_v4("10.0.0.0/8"), "private use"),
    (_v4("100.64.0.0/10"), "shared address space (carrier-grade NAT)"),
    (_v4("127.0.0.0/8"), "loopback"),
    (_v4("169.254.0.0/16"), "link local"),
    (_v4("172.16.0.0/12"), "private use"),
    (_v4("192.0.0.0/24"), "IETF protocol assignments"),
    (_v4("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (_v4("192.31.196.0/24"), "AS112-v4"),
    (_v4("192.52.193.0/24"), "AMT"),
    (_v4("192.88.99.0/24"), "deprecated 6to4 relay anycast"),
    (_v4("192.168.0.0/16"), "private use"),
    (_v4("192.175.48.0/24"), "direct delegation AS112 service"),
    (_v4("198.18.0.0/15"), "benchmarking"),
    (_v4("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (_v4("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (_v4("224.0.0.0/4"), "multicast"),
    (_v4("240.0.0.0/4"), "reserved"),
    (_v4("255.255.255.255/32"), "limited broadcast"),
)

# IANA IPv6 Special-Purpose Address Registry
# (https://www.iana.org/assignments/iana-ipv6-special-registry), every entry, plus what the IPv6
# Address Space registry sets apart outside 2000::/3 that is worth naming. The blocks that carry
# an IPv4 address (::ffff:0:0/96, 64:ff9b::/96, 2002::/16, 2001::/32) are judged by that address
# first (IPV4_EMBEDDINGS); 64:ff9b:1::/48 is refused whole, since where its IPv4 address sits
# depends on a prefix length chosen by the local network.
IPV6_SPECIAL_PURPOSE: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_v6("::1/128"), "loopback"),
    (_v6("::/128"), "unspecified"),
    (_v6("::ffff:0:0/96"), "IPv4-mapped"),
    (_v6("64:ff9b::/96"), "IPv4/IPv6 translation (NAT64)"),
    (_v6("64:ff9b:1::/48"), "local-use IPv4/IPv6 translation"),
    (_v6("100::/64"), "discard-only"),
    (_v6("100:0:0:1::/64"), "dummy IPv6 prefix"),
    (_v6("2001::/23"), "IETF protocol assignments"),
    (_v6("2001:db8::/32"), "documentation"),
    (_v6("2002::/16"), "6to4"),
    (_v6("2620:4f:8000::/48"), "direct delegation AS112 service"),
    (_v6("3fff::/20"), "documentation"),
    (_v6("5f00::/16"), "segment routing (SRv6) SIDs"),
    (_v6("fc00::/7"), "unique local"),
    (_v6("fe80::/10"), "link-local unicast"),
    (_v6("fec0::/10"), "site-local (deprecated)"),
    (_v6("ff00::/8"), "multicast"),
)
IPV6_GLOBAL_UNICAST = _v6("2000::/3")


def _last_32_bits(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]


def _sixtofour(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    return [ip.sixtofour] if ip.sixtofour else []


def _teredo(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    # Both the Teredo server and the (obfuscated) client address must be public.
    return list(ip.teredo) if ip.teredo else []


# IPv6 forms that stand for an IPv4 address, with where that address sits. ::/96 (IPv4-compatible,
# RFC 4291) leaves out :: and ::1, which are not IPv4 addresses but the unspecified and loopback ones.
Carried = Callable[[ipaddress.IPv6Address], list[ipaddress.IPv4Address]]
IPV4_EMBEDDINGS: tuple[tuple[ipaddress.IPv6Network, str, Carried], ...] = (
    (_v6("::ffff:0:0/96"), "IPv4-mapped", _last_32_bits),
    (_v6("::ffff:0:0:0/96"), "IPv4-translated", _last_32_bits),
    (_v6("64:ff9b::/96"), "NAT64", _last_32_bits),
    (_v6("2002::/16"), "6to4", _sixtofour),
    (_v6("2001::/32"), "Teredo", _teredo),
    (_v6("::/96"), "IPv4-compatible", _last_32_bits),
)  # fmt: skip
_NOT_IPV4 = _v6("::/127")


def non_routable_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not globally routable (a sentence naming the block), or ``None`` when it is."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    if ip not in _NOT_IPV4:
        for embedding, form, carried in IPV4_EMBEDDINGS:
            if ip in embedding:
                for inner in carried(ip):
                    reason = _ipv4_reason(inner)
                    if reason is not None:
                        return f"{ip} is the {form} form of {inner}, and {reason}"
                return None
    for network, name in IPV6_SPECIAL_PURPOSE:
        if ip in network:
            return f"{ip} is in {network}, {name}"
    if ip not in IPV6_GLOBAL_UNICAST:
        return f"{ip} is outside {IPV6_GLOBAL_UNICAST}, the only IPv6 space allocated for global unicast"
    return None


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, name in IPV4_SPECIAL_PURPOSE:
        if ip in network:
            return f"{ip} is in {network}, {name}"
    return None


def is_globally_routable(ip: IPAddress) -> bool:
    """True when a request to ``ip`` leaves the local network for the public internet."""
    return non_routable_reason(ip) is None


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


class InvalidHostName(ValueError):
    """The host is not a valid (internationalized) domain name."""


def ascii_host_name(host: str) -> str:
    """The ASCII (A-label) form of a domain name, after IDNA 2008 validation with the UTS #46 mapping
    (case and width folded: full-width ``EXAMPLE.com`` is ``example.com``). Labels are letters, digits
    and hyphens; an ``xn--`` label must decode to a valid name (``xn--ls8h.la``, the punycode of an
    emoji, does not)."""
    name = host[:-1] if host.endswith(".") else host
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidHostName(f"{host} is not a valid domain name ({exc})") from None
