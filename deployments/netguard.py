"""Which URLs and addresses a server-side fetch may reach: pure rules, no I/O but DNS.

Shared by the ingress (``serve_app.http.fetch``: ``image_url``, ``video_url``, ``callback_url``) and
the model deployments (``deployments.common``: http(s) checkpoints), so it imports neither
serve_app nor torch. Everything that is refused raises ``UrlRefused`` (a ``ValueError``) whose
``kind`` is ``invalid_url`` (the text is not a usable http(s) URL) or ``forbidden_url`` (it is,
but policy forbids it: scheme, credentials, or a non-public address).

The address rule is written out explicitly rather than trusting ``ipaddress.is_global``, which
(Python 3.11) calls multicast, ``fec0::/10``, ``::127.0.0.1``, ``64:ff9b::a9fe:a9fe`` (NAT64 of
169.254.169.254) and ``2002:7f00:1::`` (6to4 of 127.0.0.1) global.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 8192
MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63

# IPv4 ranges that are not publicly routable unicast (IANA special-purpose registry).
_V4_REFUSED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", 0.0.0.0 included
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, 255.255.255.255 included
    )
)
# IPv6: only global unicast (2000::/3) can be public. Everything outside it is refused: ::/8
# (unspecified, loopback, IPv4-compatible ::/96, IPv4-mapped ::ffff:0:0/96, IPv4-translated
# ::ffff:0:0:0/96, NAT64 local-use 64:ff9b:1::/48), 100::/64 discard, 5f00::/16 SRv6,
# fc00::/7 unique-local, fe80::/10 link-local, fec0::/10 site-local, ff00::/8 multicast. The
# one exception is the NAT64 well-known prefix, judged by the IPv4 address it embeds.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: IPv4 in the low 32 bits
_V6_6TO4 = ipaddress.IPv6Network("2002::/16")  # RFC 3056: IPv4 in bits 16-48
_V6_REFUSED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID…
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
    )
)

_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_HOST_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class UrlRefused(ValueError):
    """A URL or address a server-side fetch must not use; ``kind`` is the API error type."""

    def __init__(self, message: str, kind: str = "invalid_url") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


def is_public_address(address: IPAddress) -> bool:
    """True only for publicly routable unicast addresses (see the module docstring)."""
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in net for net in _V4_REFUSED) and address.is_global
    if address in _V6_NAT64:
        return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address not in _V6_GLOBAL_UNICAST or any(address in net for net in _V6_REFUSED):
        return False
    if address in _V6_6TO4:
        return is_public_address(ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    """The operator's allow-list (``url_allow_private``) as networks."""
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def is_allowed_address(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> bool:
    """Public, or inside one of the operator's allowed networks."""
    if is_public_address(address):
        return True
    plain = ipaddress.ip_address(str(address).split("%")[0])  # a scope id never matches a CIDR
    return any(plain.version == net.version and plain in net for net in allow)


def ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host means to ``getaddrinfo`` (inet_aton): ``2130706433``,
    ``0x7f.1``, ``017700000001``, ``127.1`` are all 127.0.0.1. None for a DNS name; a host
    that looks numeric but is no address (``1.2.3.4.5``, ``08``) is refused."""
    labels = host.removesuffix(".").split(".")
    if not labels or not all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        raise UrlRefused(f"host {host!r} is neither a name nor an IPv4 address") from None


def normalize_host(host: str) -> str:
    """A DNS name as sent on the wire: lower case, IDNA A-labels, every label 1-63 characters,
    253 at most in all. Raises ``UrlRefused`` otherwise (empty labels, ``x..y``, ``%``…)."""
    if not host:
        raise UrlRefused("URL has no host")
    if not host.isascii():
        import idna

        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise UrlRefused(f"host {host!r} is not a valid domain name") from None
    host = host.lower()
    labels = host.removesuffix(".").split(".")
    if len(host.removesuffix(".")) > MAX_HOST_LENGTH or not all(
        len(label) <= MAX_LABEL_LENGTH and _HOST_LABEL.fullmatch(label) for label in labels
    ):
        raise UrlRefused(f"host {host[:300]!r} is not a valid domain name")
    return host


@dataclass(frozen=True)
class HttpTarget:
    """A parsed, validated http(s) URL: what to resolve, and how to address the server."""

    scheme: str
    host: str  # an A-label name, or an IP address (no brackets)
    port: int
    explicit_port: bool
    path: str  # path and query, never empty, no fragment
    literal: IPAddress | None  # the address, when the host is one (in any form)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.explicit_port else host

    @property
    def sni_hostname(self) -> str | None:
        """The name TLS sends and verifies the certificate against (None: an IP literal)."""
        if self.scheme != "https" or self.literal is not None:
            return None
        return self.host.removesuffix(".")

    def pinned_url(self, address: IPAddress) -> str:
        """The URL with ``address`` as its host: connecting there resolves nothing again."""
        literal = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{literal}:{self.port}{self.path}"


def parse_http_url(url: object, max_length: int = MAX_URL_LENGTH) -> HttpTarget:
    """Validate an http(s) URL without touching the network; ``UrlRefused`` for anything else.

    Never raises another exception type, whatever the text: ``http://[/``, ``http://x..y/``,
    over-long labels, an empty host, userinfo (``a@b@host``, ``host\\@evil``), other schemes,
    ports outside 1-65535.
    """
    if not isinstance(url, str):
        raise UrlRefused("URL must be a string")
    if len(url) > max_length:
        raise UrlRefused(f"URL is longer than {max_length} characters")
    if _FORBIDDEN_CHARS.search(url):
        raise UrlRefused("URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme
        hostname = parts.hostname or ""
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range", non-numeric port
        raise UrlRefused(f"URL is malformed ({exc})") from None
    if scheme not in ("http", "https"):
        raise UrlRefused("URL must be http(s)", "forbidden_url")
    if "@" in parts.netloc:
        raise UrlRefused("URL must not carry credentials", "forbidden_url")
    if port == 0:
        raise UrlRefused("URL port must be 1-65535")
    literal: IPAddress | None
    if "[" in parts.netloc or "]" in parts.netloc:
        try:
            literal = ipaddress.IPv6Address(hostname)
        except ValueError:
            raise UrlRefused(f"host {hostname!r} is not an IPv6 address") from None
        if literal.scope_id:
            raise UrlRefused("IPv6 zone ids are not accepted")
        host = str(literal)
    else:
        literal = ipv4_literal(hostname) if hostname else None
        host = str(literal) if literal is not None else normalize_host(hostname)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return HttpTarget(
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        explicit_port=port is not None,
        path=path,
        literal=literal,
    )


def check_addresses(
    host: str, addresses: Sequence[IPAddress], allow: Sequence[IPNetwork] = ()
) -> IPAddress:
    """The address to connect to, when every address ``host`` resolved to is allowed (a name
    with one private address among public ones is refused: the connection could go there)."""
    if not addresses:
        raise UrlRefused(f"host {host!r} resolved to no address")
    for address in addresses:
        if not is_allowed_address(address, allow):
            raise UrlRefused(f"URL host {host!r} resolves to a non-public address", "forbidden_url")
    return addresses[0]


def addresses_from_getaddrinfo(infos: Iterable[tuple]) -> list[IPAddress]:  # type: ignore[type-arg]
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def resolve_checked(target: HttpTarget, allow: Sequence[IPNetwork] = ()) -> IPAddress:
    """Resolve (blocking) and check ``target``'s host; an IP literal needs no DNS."""
    if target.literal is not None:
        return check_addresses(target.host, [target.literal], allow)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        raise UrlRefused(f"cannot resolve host {target.host!r}") from None
    return check_addresses(target.host, addresses_from_getaddrinfo(infos), allow)


def url_for_display(url: str) -> str:
    """Scheme, host, port and path only, for logs and messages: query strings and userinfo
    may carry tokens (presigned URLs)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]  # never the userinfo
        return urlunsplit((parts.scheme, host, parts.path, "", ""))[:300]
    except ValueError:
        return "<malformed URL>"
