"""The URL and address rules (deployments.netguard), as pure functions: no network at all.

Every refused form is refused before any connection: ``check_url`` on an IP literal resolves
nothing, and the tests below that go through it use hosts no server listens on.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from deployments.netguard import (
    UrlRefused,
    check_addresses,
    ipv4_literal,
    is_allowed_address,
    is_public_address,
    parse_http_url,
    parse_networks,
)
from serve_app.http.errors import ApiError
from serve_app.http.fetch import check_url, fetch_url

NON_PUBLIC = [
    # IPv4
    "0.0.0.0",
    "0.1.2.3",
    "10.1.2.3",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "127.0.0.1",
    "127.255.0.1",
    "169.254.169.254",  # metadata
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",  # multicast (Python calls it global)
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    # IPv6
    "::",
    "::1",
    "::127.0.0.1",  # IPv4-compatible (Python calls it global)
    "::8.8.8.8",  # IPv4-compatible, whatever it embeds
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:8.8.8.8",
    "::ffff:0:8.8.8.8",  # IPv4-translated
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (Python calls it global)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::1",  # NAT64 local-use: refused whole
    "64:ff9b:1::808:808",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1 (Python calls it global)
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:0a00:0001::",  # 6to4 of 10.0.0.1
    "2001::1",  # Teredo
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001:db8::1",  # documentation
    "2001:2::1",  # benchmarking
    "3fff::1",
    "100::1",  # discard
    "fc00::1",  # ULA
    "fd12:3456::1",
    "fe80::1",  # link-local
    "fe80::1%eth0",
    "fec0::1",  # site-local (Python calls it global)
    "ff02::1",  # multicast
    "ff0e::1",
    "5f00::1",
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.128.0.1",  # just past CGNAT
    "172.32.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8: reachable on IPv6-only networks
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_global_address_forms_are_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))
    assert not is_allowed_address(ipaddress.ip_address(address), [])


@pytest.mark.parametrize("address", PUBLIC)
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_the_allow_list_opens_only_its_own_networks() -> None:
    allow = parse_networks(["127.0.0.1/32", "10.0.0.0/8"])
    assert is_allowed_address(ipaddress.ip_address("127.0.0.1"), allow)
    assert is_allowed_address(ipaddress.ip_address("10.9.8.7"), allow)
    for other in ("127.0.0.2", "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "::1"):
        assert not is_allowed_address(ipaddress.ip_address(other), allow), other
    assert is_allowed_address(ipaddress.ip_address("fe80::1%eth0"), parse_networks(["fe80::/10"]))


def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    public, private = ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")
    assert check_addresses("h", [public]) == public
    with pytest.raises(UrlRefused) as err:
        check_addresses("h", [public, private])
    assert err.value.kind == "forbidden_url"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("2852039166", "169.254.169.254"),
        ("134744072", "8.8.8.8"),
    ],
)
def test_numeric_ipv4_forms_mean_what_getaddrinfo_makes_of_them(host: str, address: str) -> None:
    import socket

    assert str(ipv4_literal(host)) == address
    assert socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)[0][4][0] == address
    assert parse_http_url(f"http://{host}/x").literal == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://[/", "invalid_url"),
        ("http://[::1/", "invalid_url"),
        ("http://]/", "invalid_url"),
        ("http://[127.0.0.1]/", "invalid_url"),
        ("http://[fe80::1%25eth0]/", "invalid_url"),
        ("http://x..y/a.png", "invalid_url"),
        ("http://.x/", "invalid_url"),
        ("http://" + "a" * 64 + ".com/", "invalid_url"),
        ("http://" + ".".join(["a" * 60] * 5) + "/", "invalid_url"),  # 304 characters
        ("http://-x.com/", "invalid_url"),
        ("http://ex%61mple.com/", "invalid_url"),
        ("http://exa mple.com/", "invalid_url"),
        ("http://example.com/a b", "invalid_url"),
        ("http://example.com/\x00", "invalid_url"),
        ("http://127.0.0.1\\@example.com/", "invalid_url"),
        ("http:///a.png", "invalid_url"),
        ("http://:80/a.png", "invalid_url"),
        ("http://", "invalid_url"),
        ("", "forbidden_url"),
        ("example.com/a.png", "forbidden_url"),
        ("//example.com/a.png", "forbidden_url"),
        ("http://1.2.3.4.5/", "invalid_url"),
        ("http://08/", "invalid_url"),
        ("http://999.1.1.1/", "invalid_url"),
        ("http://example.com:0/", "invalid_url"),
        ("http://example.com:65536/", "invalid_url"),
        ("http://example.com:99999999999999999999/", "invalid_url"),
        ("http://example.com:-1/", "invalid_url"),
        ("http://example.com:8o/", "invalid_url"),
        ("http://user:pw@example.com/", "forbidden_url"),
        ("http://user@example.com/", "forbidden_url"),
        ("http://@example.com/", "forbidden_url"),
        ("http://a@b@127.0.0.1/", "forbidden_url"),
        ("http://example.com@127.0.0.1/", "forbidden_url"),
        ("file:///etc/passwd", "forbidden_url"),
        ("ftp://example.com/x", "forbidden_url"),
        ("gopher://example.com/", "forbidden_url"),
        ("javascript:alert(1)", "forbidden_url"),
        ("data:image/png;base64,AAAA", "forbidden_url"),
        ("http://xn--/", "invalid_url"),
        ("http://b\u00fccher..example/", "invalid_url"),
        ("http://" + "\u00fc" * 80 + ".com/", "invalid_url"),
        ("http://example.com/" + "a" * 9000, "invalid_url"),
    ],
)
def test_malformed_or_forbidden_urls_are_refused_with_a_kind(url: str, kind: str) -> None:
    with pytest.raises(UrlRefused) as err:
        parse_http_url(url)
    assert err.value.kind == kind


def test_non_strings_are_refused() -> None:
    for value in (None, 12, b"http://example.com/", ["http://example.com/"]):
        with pytest.raises(UrlRefused):
            parse_http_url(value)


def test_valid_urls_parse_to_what_is_sent() -> None:
    target = parse_http_url("HTTPS://B\u00fccher.Example:8443/p/a.png?x=1#frag")
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "xn--bcher-kva.example",
        8443,
        "/p/a.png?x=1",
    )
    assert target.host_header == "xn--bcher-kva.example:8443"
    assert target.sni_hostname == "xn--bcher-kva.example"
    assert target.pinned_url(ipaddress.ip_address("93.184.215.14")) == (
        "https://93.184.215.14:8443/p/a.png?x=1"
    )
    v6 = parse_http_url("http://[2606:4700:4700::1111]/")
    assert v6.host_header == "[2606:4700:4700::1111]" and v6.sni_hostname is None
    assert v6.pinned_url(v6.literal) == "http://[2606:4700:4700::1111]:80/"  # type: ignore[arg-type]
    assert parse_http_url("http://_acme.example.com./").host == "_acme.example.com."


def _refusal(url: str, param: str = "image_url") -> ApiError:
    with pytest.raises(ApiError) as err:
        asyncio.run(check_url(url, [], param))
    return err.value


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
        "http://[::127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b:1::808:808]/",
        "http://[2001::1]/",
        "http://[fec0::1]/",
        "http://[fd00::1]/",
        "http://[ff02::1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://017700000001/",
        "http://0/",
        "http://224.0.0.1/",
        "http://100.64.0.1/",
    ],
)
def test_check_url_refuses_embedded_and_numeric_forms_without_resolving(url: str) -> None:
    error = _refusal(url, "callback_url")
    assert (error.status, error.type, error.param) == (422, "forbidden_url", "callback_url")
    with pytest.raises(ApiError) as err:  # the fetch refuses the same way, before connecting
        asyncio.run(fetch_url(url, 1000, 5, allow=[]))
    assert err.value.type == "forbidden_url"


@pytest.mark.parametrize(
    "url",
    [
        "http://[/",
        "http://x..y/a.png",
        "http://" + "a" * 64 + ".com/",
        "http:///a.png",
        "http://example.com:99999/",
        "http://a@b@127.0.0.1/",
        "gopher://example.com/",
        "",
    ],
)
def test_check_url_and_fetch_url_answer_4xx_for_malformed_urls(url: str) -> None:
    for param in ("image_url", "callback_url"):
        error = _refusal(url, param)
        assert error.status == 422 and error.param == param
        assert error.type in ("invalid_url", "forbidden_url")
    with pytest.raises(ApiError) as err:
        asyncio.run(fetch_url(url, 1000, 5, allow=[]))
    assert err.value.status == 422 and err.value.param == "image_url"
