"""Fetch client-supplied URLs safely: scheme, address, redirect, size and time limits.

The rules (what a URL may be, which addresses it may reach) live in ``deployments.netguard``,
shared with the checkpoint downloads. Here:

- every URL is parsed without raising anything but ``ApiError`` (422 ``invalid_url`` /
  ``forbidden_url``), and resolved once: the connection goes to the address that was checked
  (no second DNS answer — rebinding — can send it elsewhere), every redirect target again;
- bodies are read raw (``iter_raw``): httpx never decodes a ``Content-Encoding`` chain; gzip
  and deflate are decoded here, incrementally, each step stopping at ``max_bytes`` (413);
- one deadline (``fetch_total_timeout_s``) covers DNS, connects, redirects and the body
  (422 ``fetch_timeout``);
- network failures answer one message whatever the cause (refused, timed out, TLS, reset),
  so the API is no port scanner; the cause is logged here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx

from deployments.netguard import (
    HttpTarget,
    IPAddress,
    UrlRefused,
    addresses_from_getaddrinfo,
    check_addresses,
    parse_http_url,
    parse_networks,
    url_for_display,
)
from serve_app.http.errors import ApiError

if TYPE_CHECKING:
    from serve_app.settings import Settings

logger = logging.getLogger("meshline.fetch")

MAX_REDIRECTS = 3
DEFAULT_TOTAL_TIMEOUT_S = 30.0  # settings.fetch_total_timeout_s's default
MAX_CONTENT_ENCODINGS = 3
# Whatever goes wrong on the network: one answer, so that errors are not a port-scan oracle.
NETWORK_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError)


def _api_error(refused: UrlRefused, param: str) -> ApiError:
    return ApiError(422, f"{param}: {refused.message}", refused.kind, param)


def _unreachable(param: str) -> ApiError:
    return ApiError(422, f"could not fetch {param}", "fetch_failed", param)


async def _resolve(target: HttpTarget, allow: list[str], param: str) -> IPAddress:
    try:
        networks = parse_networks(allow)
        if target.literal is not None:
            return check_addresses(target.host, [target.literal], networks)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            logger.info("cannot resolve %s for %s: %s", target.host, param, exc)
            raise UrlRefused(f"cannot resolve host {target.host!r}") from None
        return check_addresses(target.host, addresses_from_getaddrinfo(infos), networks)
    except UrlRefused as refused:
        raise _api_error(refused, param) from None


async def check_host(host: str, port: int, allow: list[str], param: str = "image_url") -> str:
    """Refuse hosts that resolve to loopback, private, link-local or metadata addresses.

    Returns the checked address to connect to: connecting by name again would resolve again,
    and a DNS answer that changes in between (rebinding) could then reach a private address.
    """
    try:
        bracketed = f"[{host}]" if ":" in host else host
        target = parse_http_url(f"http://{bracketed}:{port}/")
    except UrlRefused as refused:
        raise _api_error(refused, param) from None
    return str(await _resolve(target, allow, param))


@dataclass(frozen=True)
class PinnedUrl:
    """A URL whose host was checked, rewritten to connect to the checked address."""

    url: str  # with the IP literal as host
    host_header: str
    sni_hostname: str | None


async def check_url(url: str, allow: list[str], param: str) -> PinnedUrl:
    """An http(s) URL whose host resolves only to allowed addresses; any other text is a 422
    ``invalid_url`` / ``forbidden_url`` naming ``param`` (never another exception)."""
    try:
        target = parse_http_url(url)
    except UrlRefused as refused:
        raise _api_error(refused, param) from None
    address = await _resolve(target, allow, param)
    return PinnedUrl(target.pinned_url(address), target.host_header, target.sni_hostname)


async def pinned_request(
    client: httpx.AsyncClient, method: str, url: str, allow: list[str], param: str, **kwargs: Any
) -> httpx.Response:
    """Send a request to the address ``check_url`` approved (TLS still verifies the name).

    The response is streamed: read it with ``aiter_raw`` (``aiter_bytes`` would decode a
    Content-Encoding chain with no size limit), and close it."""
    pinned = await check_url(url, allow, param)
    extensions = {"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else {}
    headers = {**kwargs.pop("headers", {}), "Host": pinned.host_header}
    request = client.build_request(
        method, pinned.url, headers=headers, extensions=extensions, **kwargs
    )
    return await client.send(request, stream=True)


class _TooLarge(Exception):
    pass


class _Inflater:
    """One gzip or deflate step whose total output never exceeds ``limit`` bytes: each call
    to zlib asks for at most what is left (+1, to notice the excess), however small the input."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.gzip = encoding in ("gzip", "x-gzip")
        self.limit = limit
        self.produced = 0
        self.first = True
        self._obj = self._new(zlib.MAX_WBITS | 16 if self.gzip else zlib.MAX_WBITS)

    @staticmethod
    def _new(wbits: int) -> Any:
        return zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            try:
                chunk = self._obj.decompress(data, self.limit - self.produced + 1)
            except zlib.error:
                if self.gzip or not self.first:
                    raise
                # "deflate" is meant to be zlib-wrapped; some servers send it raw.
                self._obj, self.first = self._new(-zlib.MAX_WBITS), False
                continue
            self.first = False
            self.produced += len(chunk)
            if self.produced > self.limit:
                raise _TooLarge
            out += chunk
            if self._obj.unconsumed_tail:
                data = self._obj.unconsumed_tail
            elif self.gzip and self._obj.eof and self._obj.unused_data:
                data = self._obj.unused_data  # the next member of a multi-member gzip
                self._obj = self._new(zlib.MAX_WBITS | 16)
            else:
                data = b""
        return bytes(out)


class _BodyReader:
    """Raw body bytes in, decoded bytes out, every stage bounded by ``max_bytes``."""

    def __init__(self, content_encoding: str, max_bytes: int, param: str) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        unsupported = [c for c in codings if c not in ("gzip", "x-gzip", "deflate")]
        if unsupported or len(codings) > MAX_CONTENT_ENCODINGS:
            raise ApiError(
                422,
                f"{param} answered with Content-Encoding {content_encoding[:100]!r}; only "
                f"identity, or up to {MAX_CONTENT_ENCODINGS} of gzip/deflate, are accepted",
                "unsupported_encoding",
                param,
            )
        # The last coding listed was applied last: it is undone first.
        self.stages = [_Inflater(c, max_bytes) for c in reversed(codings)]
        self.max_bytes = max_bytes
        self.param = param
        self.raw = 0
        self.body = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.raw += len(chunk)
        if self.raw > self.max_bytes:
            raise self.too_large()
        try:
            for stage in self.stages:
                chunk = stage.feed(chunk)
        except _TooLarge:
            raise self.too_large(decoded=True) from None
        self.body += chunk
        if len(self.body) > self.max_bytes:
            raise self.too_large(decoded=bool(self.stages))

    def too_large(self, decoded: bool = False) -> ApiError:
        what = "decoded body" if decoded else "body"
        return ApiError(
            413,
            f"{self.param} {what} exceeds {self.max_bytes} bytes",
            "payload_too_large",
            self.param,
        )


async def fetch_url(
    url: str,
    max_bytes: int,
    timeout_s: float,
    allow: list[str],
    *,
    total_timeout_s: float | None = DEFAULT_TOTAL_TIMEOUT_S,
    param: str = "image_url",
    headers: dict[str, str] | None = None,
) -> bytes:
    """GET ``url`` following at most a few redirects, each target checked again.

    ``timeout_s`` bounds each network step (connect, each read); ``total_timeout_s`` the whole
    fetch (DNS, redirects, body); ``max_bytes`` the body as received and as decoded.
    ``headers`` (credentials) go only to ``url``'s own origin: a redirect elsewhere drops them."""
    try:
        async with asyncio.timeout(total_timeout_s):
            return await _fetch(url, max_bytes, timeout_s, allow, param, headers or {})
    except TimeoutError:
        logger.info("fetch of %s for %s passed its deadline", url_for_display(url), param)
        raise ApiError(
            422,
            f"fetching {param} took longer than {total_timeout_s:g} s (fetch_total_timeout_s)",
            "fetch_timeout",
            param,
        ) from None


def _origin(url: str) -> tuple[str, str, int | None]:
    try:
        parts = urlsplit(url)
        return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", "", None


async def _fetch(
    url: str,
    max_bytes: int,
    timeout_s: float,
    allow: list[str],
    param: str,
    credentials: dict[str, str],
) -> bytes:
    origin = _origin(url)
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Accept-Encoding": "identity"}
            if credentials and _origin(url) == origin:
                headers.update(credentials)
            try:
                response = await pinned_request(client, "GET", url, allow, param, headers=headers)
                try:
                    if response.is_redirect and "location" in response.headers:
                        try:
                            url = urljoin(url, response.headers["location"])
                        except ValueError:
                            raise ApiError(
                                422, f"{param} redirected to a malformed URL", "invalid_url", param
                            ) from None
                        continue
                    if response.status_code != 200:
                        raise ApiError(
                            422, f"{param} answered HTTP {response.status_code}", param=param
                        )
                    reader = _BodyReader(
                        response.headers.get("content-encoding", ""), max_bytes, param
                    )
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise reader.too_large()
                    async for chunk in response.aiter_raw():
                        reader.feed(chunk)
                    return bytes(reader.body)
                finally:
                    await response.aclose()
            except (*NETWORK_ERRORS, zlib.error) as exc:
                logger.info(
                    "fetch of %s for %s failed: %s: %s",
                    url_for_display(url),
                    param,
                    exc.__class__.__name__,
                    exc,
                )
                raise _unreachable(param) from None
    raise ApiError(422, f"{param} redirected too many times", param=param)


def fetch_s3(
    uri: str,
    max_bytes: int,
    endpoint_url: str | None,
    allowed_buckets: list[str],
    param: str = "image_url",
) -> bytes:
    """Read s3://bucket/key with the service's credentials — only from allow-listed buckets,
    or a client could read anything the service may read."""
    import boto3
    from botocore.exceptions import ClientError

    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced "[" read as an IPv6 host
        raise ApiError(422, "s3 URIs look like s3://bucket/key", "invalid_url", param) from None
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise ApiError(422, "s3 URIs look like s3://bucket/key", "invalid_url", param)
    if bucket not in allowed_buckets:
        raise ApiError(
            422, f"bucket {bucket!r} is not an allowed input bucket", "forbidden_url", param
        )
    client = boto3.client("s3", endpoint_url=endpoint_url)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ApiError(422, f"could not read {uri} ({code})", param=param) from None
    if int(response.get("ContentLength", 0)) > max_bytes:
        response["Body"].close()
        raise ApiError(413, f"{uri} exceeds {max_bytes} bytes", "payload_too_large", param)
    return response["Body"].read(max_bytes + 1)


async def fetch_input(settings: Settings, url: str, limit: int, param: str) -> bytes:
    """A client-named input (``image_url``, ``video_url``, ``frame_urls[i]``): s3:// from the
    allowed input buckets, or http(s) under the fetch rules above; bounded by ``limit`` bytes."""
    if url.startswith("s3://"):
        return await asyncio.to_thread(
            fetch_s3, url, limit, settings.s3_endpoint_url, settings.s3_input_buckets, param
        )
    return await fetch_url(
        url,
        limit,
        settings.url_fetch_timeout_s,
        settings.url_allow_private,
        total_timeout_s=settings.fetch_total_timeout_s,
        param=param,
    )
