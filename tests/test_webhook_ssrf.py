"""Where webhooks may go: the address checks on their own, with literal addresses and real names,
then every refused form through the API at creation and through a worker at send time."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from sqlalchemy import Engine, text

from api.egress import IPV4_SPECIAL_PURPOSE, IPV6_SPECIAL_PURPOSE, is_globally_routable, literal_address
from api.errors import ValidationFailed
from api.settings import Settings
from api.webhooks.ssrf import TargetRefused, resolve, validate_url
from api.webhooks.worker import Worker
from tests.harness import OrgWorld
from tests.hooks import attempt_rows, create_endpoint, delivery_rows, publish
from tests.receivers import Receiver
from tests.test_bad_input import assert_problem

#: The forms issue 12 found accepted, each an address that is not globally routable.
EMBEDDED_AND_SITE_LOCAL = [
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::127.0.0.1",  # the same, written dotted
    "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b:1::a00:1",  # local-use NAT64 (10.0.0.1)
    "fec0::1",  # site-local
    "192.0.0.8",  # IPv4 dummy address (IETF protocol assignments)
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "2001:0:a00:1::1",  # Teredo, server 10.0.0.1
]
#: One address inside each block of the IANA special-purpose registries (written out by hand, so a
#: block dropped from api/egress.py fails here).
SPECIAL_PURPOSE = [
    "0.1.2.3", "10.0.0.1", "100.64.0.1", "100.127.255.254", "127.0.0.1", "169.254.169.254", "172.16.5.4",
    "172.31.255.255", "192.0.0.1", "192.0.0.9", "192.0.0.170", "192.0.2.1", "192.31.196.1", "192.52.193.1",
    "192.88.99.1", "192.168.1.1", "192.175.48.1", "198.18.0.1", "198.19.255.254", "198.51.100.7",
    "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "::1", "::", "100::1", "100:0:0:1::1", "2001:2::1", "2001:1::1", "2001:3::1", "2001:4:112::1",
    "2001:10::1", "2001:20::1", "2001:30::1", "2001:db8::1", "2620:4f:8000::1", "3fff::1", "5f00::1",
    "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "4000::1", "::2:1",
]  # fmt: skip
NOT_GLOBALLY_ROUTABLE = EMBEDDED_AND_SITE_LOCAL + SPECIAL_PURPOSE


def url_of(address: str, port: int | None = None) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}{f':{port}' if port else ''}/hook"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "::", "::ffff:127.0.0.1",
        "::ffff:10.0.0.1", "2002:7f00:1::1",
    ],
)  # fmt: skip
def test_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    assert not is_globally_routable(ipaddress.ip_address(address))


def test_embedded_ipv4_site_local_and_special_purpose_addresses_are_refused() -> None:
    allowed = [a for a in NOT_GLOBALLY_ROUTABLE if is_globally_routable(ipaddress.ip_address(a))]
    assert allowed == []


def test_every_special_purpose_block_is_refused_from_its_first_to_its_last_address() -> None:
    blocks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
        network for network, _ in (*IPV4_SPECIAL_PURPOSE, *IPV6_SPECIAL_PURPOSE)
    ]
    allowed = [str(ip) for network in blocks for ip in (network[0], network[-1]) if is_globally_routable(ip)]
    assert allowed == []


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34", "1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
        # Just outside a special-purpose block.
        "100.128.0.1", "192.0.1.1", "198.20.0.1", "223.255.255.254", "11.0.0.1",
        # IPv4 embedded in IPv6 is judged by the IPv4 address it carries.
        "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
    ],
)  # fmt: skip
def test_globally_routable_addresses_are_allowed(address: str) -> None:
    assert is_globally_routable(ipaddress.ip_address(address))


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
        ("https://127.0.0.1/hook", "globally routable"),
        ("https://localhost:8443/hook", "globally routable"),
        ("https://api.localhost/hook", "globally routable"),
        ("https://metadata.google.internal/", "globally routable"),
        ("https://169.254.169.254/latest/meta-data", r"169\.254\.0\.0/16, link local"),
        ("https://[::1]/hook", "globally routable"),
        ("https://[fe80::1]/hook", "globally routable"),
        ("https://2130706433/hook", "globally routable"),
        ("https://10.0.0.8/hook", "globally routable"),
        ("https://[64:ff9b::a9fe:a9fe]/", r"NAT64 form of 169\.254\.169\.254"),
        ("https://[fec0::1]/", "site-local"),
        ("https://xn--ls8h.la/", "not a valid domain name"),
        ("https://xn--.example/", "not a valid domain name"),
        ("https://a..example.com/", "not a valid domain name"),
        ("https://-bad.example.com/", "not a valid domain name"),
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


async def test_valid_internationalized_names_pass() -> None:
    for url in ("https://bücher.example/hook", "https://xn--bcher-kva.example/hook", "https://EXAMPLE.com./"):
        assert await validate_url(url, allow_private=False) == url


def test_every_refused_form_is_a_422_on_url_at_creation(client: httpx.Client, org: OrgWorld) -> None:
    base = f"/v1/orgs/{org.id}/webhook-endpoints"
    for address in NOT_GLOBALLY_ROUTABLE:
        answer = client.post(base, json={"url": url_of(address)}, headers=org.headers("owner"))
        body = assert_problem(answer, 422, "url")
        assert "globally routable" in body["detail"], (address, body)
    for host in ("xn--ls8h.la", "xn--.example"):
        answer = client.post(base, json={"url": f"https://{host}/"}, headers=org.headers("owner"))
        assert f"{host} is not a valid domain name" in assert_problem(answer, 422, "url")["detail"]
    assert client.get(base, headers=org.headers("owner")).json()["items"] == []


async def test_every_refused_form_is_blocked_at_send_time(
    client: httpx.Client, engine: Engine, org: OrgWorld, settings: Settings
) -> None:
    """Endpoints created with a public name, then pointed at each refused address behind the API's
    back (as a DNS change would): the worker records ``ssrf_blocked`` and sends nothing. The
    IPv4-mapped loopback form reaches a local receiver when private targets are allowed, so that
    refusal is the guard's doing, not a connection that could not have worked."""
    with Receiver() as receiver:
        targets = {url_of(a, receiver.port): a for a in NOT_GLOBALLY_ROUTABLE}
        mapped = url_of("::ffff:127.0.0.1", receiver.port).replace("https", "http")
        targets[mapped] = "::ffff:127.0.0.1"
        endpoints: dict[str, str] = {}
        for i, url in enumerate(targets):
            endpoint = create_endpoint(client, org, f"https://hooks.example.com/{i}")
            endpoints[endpoint["id"]] = url
        with engine.begin() as conn:
            for endpoint_id, url in endpoints.items():
                conn.execute(
                    text("UPDATE webhook_endpoints SET url = :u WHERE id = :id"),
                    {"u": url, "id": endpoint_id},
                )
        publish(client, org, "member.added", {"n": 1})
        strict = settings.with_(webhook_allow_private_targets=False)
        async with Worker(strict) as worker:
            for _ in range(10):
                if all(d["attempts"] for d in delivery_rows(engine, org.id)):
                    break
                await worker.tick()
        assert receiver.arrivals == []
        outcomes = {}
        for delivery in delivery_rows(engine, org.id):
            (attempt,) = attempt_rows(engine, delivery["id"])
            outcomes[endpoints[str(delivery["endpoint_id"])]] = attempt["error_class"]
        assert outcomes == dict.fromkeys(endpoints.values(), "ssrf_blocked")
        # The same stored URL, with private targets allowed, does reach the receiver.
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE webhook_endpoints SET enabled = false WHERE organization_id = :org AND url <> :u"
                ),
                {"u": mapped, "org": org.id},
            )
        publish(client, org, "member.added", {"n": 2})
        async with Worker(settings.with_(webhook_allow_private_targets=True)) as worker:
            for _ in range(10):
                if receiver.arrivals:
                    break
                await worker.tick()
        assert len(receiver.arrivals) == 1


async def test_a_stored_url_httpx_cannot_parse_is_an_invalid_url_attempt(
    client: httpx.Client, engine: Engine, org: OrgWorld, settings: Settings
) -> None:
    endpoint = create_endpoint(client, org, "https://hooks.example.com/idna")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_endpoints SET url = 'https://💩.la/hook' WHERE id = :id"),
            {"id": endpoint["id"]},
        )
    publish(client, org, "member.added", {})
    async with Worker(settings) as worker:
        for _ in range(10):
            if all(d["attempts"] for d in delivery_rows(engine, org.id)):
                break
            await worker.tick()
    (delivery,) = delivery_rows(engine, org.id)
    (attempt,) = attempt_rows(engine, delivery["id"])
    assert attempt["error_class"] == "invalid_url" and delivery["status"] == "failed"
