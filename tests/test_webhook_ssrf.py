"""Where webhooks may go: the address checks on their own, with literal addresses and real names."""

from __future__ import annotations

import ipaddress

import pytest

from api.errors import ValidationFailed
from api.webhooks.ssrf import TargetRefused, address_allowed, literal_address, resolve, validate_url


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "::", "::ffff:127.0.0.1",
        "::ffff:10.0.0.1", "2002:7f00:1::1",
    ],
)  # fmt: skip
def test_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("host", "address"), [("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("017700000001", "127.0.0.1"),
                          ("[::1]", "::1"), ("example.com", None)],
)  # fmt: skip
def test_legacy_and_bracketed_literals_are_read_as_addresses(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found else None) == address


async def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    with pytest.raises(TargetRefused, match=r"127\.0\.0\.1"):
        await resolve("localhost", 443, allow_private=False, within=5)
    assert "127.0.0.1" in await resolve("localhost", 443, allow_private=True, within=5)


async def test_literal_addresses_are_checked_without_dns() -> None:
    for host in ("127.0.0.1", "169.254.169.254", "10.1.2.3", "2130706433", "::1"):
        with pytest.raises(TargetRefused):
            await resolve(host, 443, allow_private=False, within=5)
    assert await resolve("93.184.216.34", 443, allow_private=False, within=5) == ["93.184.216.34"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/hook", "https"),
        ("ftp://example.com/hook", "https"),
        ("https://127.0.0.1/hook", "public"),
        ("https://localhost:8443/hook", "public"),
        ("https://api.localhost/hook", "public"),
        ("https://metadata.google.internal/", "public"),
        ("https://169.254.169.254/latest/meta-data", "public"),
        ("https://[::1]/hook", "public"),
        ("https://[fe80::1]/hook", "public"),
        ("https://2130706433/hook", "public"),
        ("https://10.0.0.8/hook", "public"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https:///nohost", "host"),
        ("https://exa mple.com/", "spaces"),
        ("https://example.com/\x00", "control"),
        ("https://[::1/hook", "valid URL"),
        ("https://example.com:99999/", "valid URL"),
        ("not a url", "spaces"),
        ("example.com/hook", "https"),
    ],
)
async def test_endpoint_urls_are_validated(url: str, reason: str) -> None:
    with pytest.raises(ValidationFailed, match=reason) as caught:
        await validate_url(url, allow_private=False)
    assert caught.value.errors == [{"field": "url", "message": caught.value.detail}]


async def test_private_targets_and_http_pass_only_when_allowed() -> None:
    assert await validate_url("http://127.0.0.1:9000/hook", allow_private=True)
    assert await validate_url("https://hooks.example.com/keel?x=1", allow_private=False)
    # A name that does not resolve (yet) is accepted; it is checked again at every connection.
    assert await validate_url("https://not-yet-in-dns.invalid/hook", allow_private=False)
