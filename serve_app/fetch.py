"""Fetch client-supplied URLs safely: scheme, address, redirect, size and time limits."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx

from serve_app.errors import ApiError

MAX_REDIRECTS = 3


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_global and not address.is_multicast


async def check_host(host: str, port: int, allow: list[str], param: str = "image_url") -> None:
    """Refuse hosts that resolve to loopback, private, link-local or metadata addresses."""
    allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in allow]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ApiError(422, f"cannot resolve host {host!r}", param=param) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not _is_public(address) and not any(address in net for net in allowed):
            raise ApiError(
                422, f"URL host {host!r} resolves to a non-public address", "forbidden_url", param
            )


async def check_url(url: str, allow: list[str], param: str) -> None:
    """An http(s) URL whose host resolves only to allowed addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, f"{param} must be an http(s) URL", "forbidden_url", param)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ApiError(422, f"{param} has an invalid port", "forbidden_url", param) from None
    await check_host(parts.hostname, port, allow, param)


async def fetch_url(url: str, max_bytes: int, timeout_s: float, allow: list[str]) -> bytes:
    """GET ``url`` following at most a few redirects, each target checked again."""
    for _ in range(MAX_REDIRECTS + 1):
        await check_url(url, allow, "image_url")
        try:
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ApiError(
                            422, f"image_url answered HTTP {response.status_code}", param="image_url"
                        )
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise ApiError(
                                413, f"image_url body exceeds {max_bytes} bytes", "payload_too_large", "image_url"
                            )
                    return bytes(body)
        except httpx.HTTPError as exc:
            raise ApiError(422, f"could not fetch image_url ({exc.__class__.__name__})", param="image_url") from None
    raise ApiError(422, "image_url redirected too many times", param="image_url")


def fetch_s3(uri: str, max_bytes: int, endpoint_url: str | None, allowed_buckets: list[str]) -> bytes:
    """Read s3://bucket/key with the service's credentials — only from allow-listed buckets,
    or a client could read anything the service may read."""
    import boto3
    from botocore.exceptions import ClientError

    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise ApiError(422, "s3 URIs look like s3://bucket/key", param="image_url")
    if bucket not in allowed_buckets:
        raise ApiError(422, f"bucket {bucket!r} is not an allowed input bucket", "forbidden_url", "image_url")
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
