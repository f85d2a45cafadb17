"""Reading task files from Label Studio: its URLs, its tokens, meshline's fetch rules.

Label Studio 1.23 has two kinds of API token. New organisations accept only *personal access
tokens*: a JWT refresh token, exchanged at ``/api/token/refresh/`` for a short-lived access token
sent as ``Authorization: Bearer``. Legacy tokens (``Authorization: Token <key>``) work where the
organisation enabled them; the token Label Studio sends at ``/setup`` is one of those. A JWT-shaped
token is used as a personal access token, anything else as a legacy one.

Only the operator's ``labelstudio_url`` is trusted: its host may be private (its addresses are
allowed for URLs on that origin, nothing else loosens), relative task URLs (``/data/upload/…``)
are resolved against it, and the token is sent to that origin only (a redirect elsewhere drops
it). Any other URL in a task is fetched like any client URL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from serve_app.http.errors import ApiError
from serve_app.http.fetch import fetch_input, fetch_url, pinned_request
from serve_app.settings import Settings

MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
ACCESS_TOKEN_MARGIN_S = 30.0  # refresh this long before the access token's exp


def is_jwt(token: str) -> bool:
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def _jwt_exp(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin | None:
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        return cls(parts.scheme, parts.hostname.lower(), port)


class LabelStudioAccess:
    """Per ingress replica: the access tokens exchanged so far, and the fetch rules."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = (settings.labelstudio_url or "").rstrip("/") or None
        self.origin = Origin.of(self.base_url) if self.base_url else None
        self._access: dict[str, tuple[str, float]] = {}  # refresh token → (access, expires)
        self._lock = asyncio.Lock()

    def configured_token(self) -> str | None:
        token = self.settings.labelstudio_api_token
        return token.get_secret_value() if token is not None else None

    async def _allow(self) -> list[str]:
        """url_allow_private plus the Label Studio host's own addresses (it may be private)."""
        allow = list(self.settings.url_allow_private)
        if self.origin is None:
            return allow
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.origin.host, self.origin.port, type=socket.SOCK_STREAM
            )
        except OSError:
            return allow  # the fetch reports the host as unreachable
        for info in infos:
            address = str(info[4][0]).split("%", 1)[0]
            allow.append(f"{address}/{128 if ':' in address else 32}")
        return allow

    async def auth_headers(self, token: str) -> dict[str, str]:
        if not is_jwt(token):
            return {"Authorization": f"Token {token}"}
        async with self._lock:
            cached = self._access.get(token)
            if cached is None or cached[1] - ACCESS_TOKEN_MARGIN_S < time.time():
                cached = await self._refresh(token)
                self._access = {token: cached}  # one configured token: keep only its access
        return {"Authorization": f"Bearer {cached[0]}"}

    async def _refresh(self, refresh: str) -> tuple[str, float]:
        if self.base_url is None:
            raise ApiError(
                422,
                "a personal access token needs labelstudio_url (MESHLINE_LABELSTUDIO_URL) to be "
                "exchanged",
                "labelstudio_unreachable",
                "labelstudio_api_token",
            )
        url = f"{self.base_url}/api/token/refresh/"
        param = "labelstudio_url"
        try:
            async with httpx.AsyncClient(timeout=self.settings.url_fetch_timeout_s) as client:
                response = await pinned_request(
                    client, "POST", url, await self._allow(), param, json={"refresh": refresh}
                )
                try:
                    body = b""
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                            break
                    status = response.status_code
                finally:
                    await response.aclose()
        except httpx.HTTPError:
            raise ApiError(
                422, "could not reach Label Studio to exchange the token", "fetch_failed", param
            ) from None
        try:
            access = str(json.loads(body)["access"]) if status == 200 else None
        except (ValueError, KeyError, TypeError):
            access = None
        if not access:
            raise ApiError(
                422,
                f"Label Studio refused the personal access token (HTTP {status} from "
                "/api/token/refresh/)",
                "labelstudio_auth",
                "labelstudio_api_token",
            )
        return access, _jwt_exp(access) or time.time() + 60

    def resolve(self, url: str, hostname: str | None) -> str:
        """An absolute URL for a task's file: relative ones against labelstudio_url (or, when
        unset, the host Label Studio named at setup, under the ordinary fetch rules)."""
        if url.startswith(("http://", "https://", "s3://")):
            return url
        base = self.base_url or (hostname or "").rstrip("/")
        if not base or not url.startswith("/"):
            raise ApiError(
                422,
                f"task file {url[:200]!r} is relative and labelstudio_url is not set",
                "invalid_url",
                "task.data",
            )
        try:
            return urljoin(base + "/", url.lstrip("/"))
        except ValueError:  # "Invalid IPv6 URL": a hostname stored before setup checked it
            raise ApiError(
                422,
                f"task file {url[:200]!r} cannot be resolved against {base[:200]!r}",
                "invalid_url",
                "task.data",
            ) from None

    async def fetch(
        self,
        url: str,
        hostname: str | None,
        setup_token: str | None,
        param: str,
        limit: int | None = None,
    ) -> bytes:
        """The bytes of a task's file (bounded by ``limit``, default max_upload_mb)."""
        settings = self.settings
        limit = limit or int(settings.max_upload_mb * 2**20)
        absolute = self.resolve(url, hostname)
        if self.origin is None or Origin.of(absolute) != self.origin:
            return await fetch_input(settings, absolute, limit, param)
        token = self.configured_token() or setup_token
        headers = await self.auth_headers(token) if token else {}
        return await fetch_url(
            absolute,
            limit,
            settings.url_fetch_timeout_s,
            await self._allow(),
            total_timeout_s=settings.fetch_total_timeout_s,
            param=param,
            headers=headers,
        )
