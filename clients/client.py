"""Python client for the meshline HTTP API (the CLI is built on it). Needs only httpx."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class MeshlineError(RuntimeError):
    """An error answer from the service, with its status code and error body."""

    def __init__(self, status: int, body: dict[str, Any] | str) -> None:
        message = (
            body.get("error", {}).get("message", str(body)) if isinstance(body, dict) else body
        )
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class MeshlineClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MeshlineClient:
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
            raise MeshlineError(response.status_code, body)
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
            with self._http.stream("GET", artifact["url"]) as response:
                self._check(response)
                with target.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
            saved.append(target)
        return saved

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
