"""Fetch client-supplied URLs safely: scheme, address, redirect, size and time limits."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from serve_app.errors import ApiError

MAX_REDIRECTS = 3


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_global and not address.is_multicast


async def check_host(host: str, port: int, allow: list[str], param: str = "image_url") -> str:
    """Refuse hosts that resolve to loopback, private, link-local or metadata addresses.

    Returns the checked address to connect to: connecting by name again would resolve again,
    and a DNS answer that changes in between (rebinding) could then reach a private address.
    """
    allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in allow]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ApiError(422, f"cannot resolve host {host!r}", param=param) from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if not _is_public(address) and not any(address in net for net in allowed):
            raise ApiError(
                422, f"URL host {host!r} resolves to a non-public address", "forbidden_url", param
            )
    return str(addresses[0])


@dataclass(frozen=True)
class PinnedUrl:
    """A URL whose host was checked, rewritten to connect to the checked address."""

    url: str  # with the IP literal as host
    host_header: str
    sni_hostname: str | None


async def check_url(url: str, allow: list[str], param: str) -> PinnedUrl:
    """An http(s) URL whose host resolves only to allowed addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, f"{param} must be an http(s) URL", "forbidden_url", param)
    if parts.username or parts.password:
        raise ApiError(422, f"{param} must not carry credentials", "forbidden_url", param)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ApiError(422, f"{param} has an invalid port", "forbidden_url", param) from None
    address = await check_host(parts.hostname, port, allow, param)
    literal = f"[{address}]" if ":" in address else address
    pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return PinnedUrl(pinned, host_header, parts.hostname if parts.scheme == "https" else None)


async def pinned_request(
    client: httpx.AsyncClient, method: str, url: str, allow: list[str], param: str, **kwargs: Any
) -> httpx.Response:
    """Send a request to the address ``check_url`` approved (TLS still verifies the name)."""
    pinned = await check_url(url, allow, param)
    extensions = {"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else {}
    headers = {**kwargs.pop("headers", {}), "Host": pinned.host_header}
    request = client.build_request(
        method, pinned.url, headers=headers, extensions=extensions, **kwargs
    )
    return await client.send(request, stream=True)


async def fetch_url(url: str, max_bytes: int, timeout_s: float, allow: list[str]) -> bytes:
    """GET ``url`` following at most a few redirects, each target checked again."""
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = await pinned_request(client, "GET", url, allow, "image_url")
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ApiError(
                            422,
                            f"image_url answered HTTP {response.status_code}",
                            param="image_url",
                        )
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise ApiError(
                            413,
                            f"image_url body exceeds {max_bytes} bytes",
                            "payload_too_large",
                            "image_url",
                        )
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise ApiError(
                                413,
                                f"image_url body exceeds {max_bytes} bytes",
                                "payload_too_large",
                                "image_url",
                            )
                    return bytes(body)
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                raise ApiError(
                    422, f"could not fetch image_url ({exc.__class__.__name__})", param="image_url"
                ) from None
    raise ApiError(422, "image_url redirected too many times", param="image_url")


def fetch_s3(
    uri: str, max_bytes: int, endpoint_url: str | None, allowed_buckets: list[str]
) -> bytes:
    """Read s3://bucket/key with the service's credentials — only from allow-listed buckets,
    or a client could read anything the service may read."""
    import boto3
    from botocore.exceptions import ClientError

    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise ApiError(422, "s3 URIs look like s3://bucket/key", param="image_url")
    if bucket not in allowed_buckets:
        raise ApiError(
            422, f"bucket {bucket!r} is not an allowed input bucket", "forbidden_url", "image_url"
        )
    client = boto3.client("s3", endpoint_url=endpoint_url)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ApiError(422, f"could not read {uri} ({code})", param="image_url") from None
    if int(response.get("ContentLength", 0)) > max_bytes:
        response["Body"].close()
        raise ApiError(413, f"{uri} exceeds {max_bytes} bytes", "payload_too_large", "image_url")
    return response["Body"].read(max_bytes + 1)
