"""Python client for the meshline HTTP API (the CLI is built on it). Needs only httpx.

API keys: pass ``api_key=`` to ``MeshlineClient``. The Python client takes the key only as
that argument; it never reads the environment (the ``meshline`` CLI reads
``MESHLINE_API_KEY`` itself and passes it on). The key is sent as ``Authorization: Bearer``
to the service's own origin only, never to another host (presigned S3 artifact URLs, a 307 to
storage), and never appears in ``repr()``, in errors or in logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class MeshlineError(RuntimeError):
    """An error answer from the service, with its status code and error body.

    ``hint`` (if any) goes before the service's own message: ``HTTP 403: <hint>: <message>``.
    """

    def __init__(self, status: int, body: dict[str, Any] | str, hint: str | None = None) -> None:
        message = (
            body.get("error", {}).get("message", str(body)) if isinstance(body, dict) else body
        )
        self.server_message = message
        super().__init__(
            f"HTTP {status}: {hint}: {message}" if hint else f"HTTP {status}: {message}"
        )
        self.status = status
        self.body = body


class AuthenticationError(MeshlineError):
    """401: no API key was sent (``key_sent`` False) or the service did not accept it."""

    def __init__(self, status: int, body: dict[str, Any] | str, key_sent: bool) -> None:
        hint = (
            "the API key was not accepted"
            if key_sent
            else "the service needs an API key: pass MeshlineClient(api_key=...)"
        )
        super().__init__(status, body, hint)
        self.key_sent = key_sent


class PermissionDeniedError(MeshlineError):
    """403: the API key is valid but may not do this (an admin-only route)."""

    def __init__(self, status: int, body: dict[str, Any] | str) -> None:
        super().__init__(status, body, "this API key may not do that (admin only)")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


class _BearerKey(httpx.Auth):
    """``Authorization: Bearer <key>`` on requests to the service's origin only: absolute URLs
    elsewhere (presigned S3 links in a job's artifacts) never get it, and httpx drops it when
    a redirect leaves the origin (a 307 from the artifact route to storage)."""

    def __init__(self, key: str, base_url: httpx.URL) -> None:
        self._header = f"Bearer {key}"
        self._origin = _origin(base_url)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self._origin:
            request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "<BearerKey (hidden)>"


def _check_key(api_key: str | None) -> str | None:
    """The key stripped of surrounding whitespace (a trailing newline from a file or
    ``$(...)``); None or blank means no key. Never echoes the key in the error."""
    if api_key is None or not api_key.strip():
        return None
    key = api_key.strip()
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError("the API key must be printable ASCII without spaces")
    return key


class MeshlineClient:
    """A client for one meshline service.

    ``api_key``: the service's API key (sent as ``Authorization: Bearer``), or None when the
    service runs with open access. It is taken only from this argument, never from the
    environment: read ``MESHLINE_API_KEY`` (or a secret store) yourself if you want that, as
    the CLI does. Errors are ``MeshlineError``; a 401 is an ``AuthenticationError`` and a 403
    a ``PermissionDeniedError`` (both subclasses). ``transport``: an httpx transport to use
    instead of the network (tests: ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout_s: float = 60.0,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        key = _check_key(api_key)
        self._has_key = key is not None
        auth = _BearerKey(key, httpx.URL(self.base_url)) if key is not None else None
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout_s, auth=auth, transport=transport
        )

    def __repr__(self) -> str:
        return f"MeshlineClient({self.base_url!r}, api_key={'(hidden)' if self._has_key else None})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            response.read()  # streamed responses have no body loaded yet
            try:
                body: dict[str, Any] | str = response.json()
            except ValueError:
                body = response.text
            status = response.status_code
            if status == 401:
                raise AuthenticationError(status, body, key_sent=self._has_key)
            if status == 403:
                raise PermissionDeniedError(status, body)
            raise MeshlineError(status, body)
        return response

    @staticmethod
    def _image_part(
        image: str | Path | bytes, field: str = "image"
    ) -> tuple[str, tuple[str, bytes]]:
        if isinstance(image, bytes):
            return field, (f"{field}.bin", image)
        path = Path(image)
        return field, (path.name, path.read_bytes())

    # Calls ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._http.get("/healthz").json()

    def submit(
        self,
        image: str | Path | bytes | None = None,
        *,
        image_url: str | None = None,
        options: dict[str, Any] | None = None,
        mask: str | Path | bytes | None = None,
        mesh: str | Path | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Queue a job and return its id (the service answers 202 at once).

        With an ``idempotency_key`` a retried submit returns the same job instead of a new one.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if image_url is not None:
            response = self._http.post(
                "/v1/jobs", json={"image_url": image_url, "options": options or {}}, headers=headers
            )
        else:
            if image is None:
                raise ValueError("give an image or an image_url")
            files = [self._image_part(image)]
            if mask is not None:
                files.append(self._image_part(mask, "mask"))
            if mesh is not None:
                files.append(("mesh", (Path(mesh).name, Path(mesh).read_bytes())))
            response = self._http.post(
                "/v1/jobs",
                files=files,
                data={"options": json.dumps(options or {})},
                headers=headers,
            )
        return self._check(response).json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(self._http.get(f"/v1/jobs/{job_id}")).json()

    def jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._check(self._http.get("/v1/jobs", params=params)).json()["jobs"]

    def watch(
        self, job_id: str, poll_s: float = 0.5, timeout_s: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield the job's status at every change until it ends: Server-Sent Events from
        /v1/jobs/{id}/events, falling back to polling when the stream is unavailable."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: dict[str, Any] | None = None
        try:
            for status in self._sse(job_id, deadline):
                last = status
                yield status
            if last is not None and last["status"] in TERMINAL:
                return
        except (httpx.HTTPError, MeshlineError, ValueError):
            pass  # e.g. a proxy that buffers or blocks event streams: poll instead
        yield from self._poll(job_id, poll_s, deadline, timeout_s)

    def _sse(self, job_id: str, deadline: float | None) -> Iterator[dict[str, Any]]:
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(30.0, read=60.0)
        ) as response:
            self._check(response)
            event, data = "message", []
            for line in response.iter_lines():
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} did not end in time")
                if line.startswith(":"):
                    continue
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line:
                    if event == "job" and data:
                        yield json.loads("\n".join(data))
                    if event in ("end", "gone"):
                        return
                    event, data = "message", []

    def _poll(
        self, job_id: str, poll_s: float, deadline: float | None, timeout_s: float | None
    ) -> Iterator[dict[str, Any]]:
        last = None
        while True:
            status = self.job(job_id)
            key = (
                status["status"],
                status["progress"],
                tuple(s["status"] for s in status["stages"]),
            )
            if key != last:
                last = key
                yield status
            if status["status"] in TERMINAL:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status['status']} after {timeout_s} s")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self._http.post(f"/v1/jobs/{job_id}/cancel")).json()

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        status: dict[str, Any] = {}
        for status in self.watch(job_id, timeout_s=timeout_s):
            if on_update:
                on_update(status)
        return status

    def download(
        self, job_id: str, out_dir: str | Path, names: list[str] | None = None
    ) -> list[Path]:
        """Save the job's artifacts (all, or the given names) under out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        saved = []
        for artifact in self.job(job_id)["artifacts"]:
            name = artifact["name"]
            if names and name not in names:
                continue
            target = out / Path(name).name  # never trust a name to stay inside out_dir
            # A job's artifact URL is the API's own route or a presigned storage URL (another
            # origin: no key is sent there); the route may answer 307 to storage, and httpx
            # drops Authorization when a redirect leaves the origin.
            with self._http.stream("GET", artifact["url"], follow_redirects=True) as response:
                self._check(response)
                with target.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
            saved.append(target)
        return saved

    def models(self) -> list[dict[str, Any]]:
        """The registered detector models (``GET /v1/models``)."""
        return self._check(self._http.get("/v1/models")).json()["models"]

    def reload_model(self, model_id: str) -> dict[str, Any]:
        """Make every Detector replica load the model's current file (needs an admin key)."""
        path = f"/v1/models/{quote(model_id, safe='')}/reload"
        return self._check(self._http.post(path)).json()

    def segment(self, image: str | Path | bytes, **options: Any) -> dict[str, Any]:
        response = self._http.post(
            "/v1/segment", files=[self._image_part(image)], data={"options": json.dumps(options)}
        )
        return self._check(response).json()

    def detect(self, image: str | Path | bytes, **options: Any) -> dict[str, Any]:
        response = self._http.post(
            "/v1/detect", files=[self._image_part(image)], data={"options": json.dumps(options)}
        )
        return self._check(response).json()
