"""API keys, scoping, CORS and body limits on the real HTTP stack (create_api + a real store),
without Ray: the routes used here never call a model or Serve."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.api import create_api
from serve_app.auth import Principal, can_access, hash_key, is_public, needs_admin
from tests.helpers import ALICE, BOB, ROOT, auth_keys, bearer, local_services, make_scene


async def _submit(client: httpx.AsyncClient, key: str | None, **headers: str) -> httpx.Response:
    auth = bearer(key) if key else {}
    return await client.post(
        "/v1/jobs", files={"image": ("s.png", make_scene().png())}, headers={**auth, **headers}
    )


def _run(app, calls):  # type: ignore[no-untyped-def]
    """Run ``calls(client)`` against the ASGI app and return its result."""

    async def main():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://m"
        ) as client:
            return await calls(client)

    return asyncio.run(main())


def test_missing_or_wrong_key_is_401_with_a_bearer_challenge(tmp_path: Path) -> None:
    app = create_api(local_services(tmp_path, api_keys=auth_keys()))

    async def calls(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await c.get("/v1/jobs"),
            await c.get("/v1/jobs", headers=bearer("not-a-key")),
            await c.get("/v1/jobs", headers={"Authorization": f"Basic {ALICE}"}),
            await c.get("/metrics"),
            await c.get("/openapi.json"),
            await c.post("/v1/jobs", files={"image": ("s.png", b"x")}),
        ]

    for response in _run(app, calls):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = response.json()["error"]
        assert (
            error["type"] == "unauthorized"
            and error["request_id"] == response.headers["x-request-id"]
        )
    assert (
        is_public("GET", "/healthz")
        and is_public("GET", "/admin")
        and not is_public("GET", "/admin/api/status")
    )


def test_jobs_are_scoped_to_their_key(tmp_path: Path) -> None:
    services = local_services(tmp_path, api_keys=auth_keys())
    app = create_api(services)

    async def calls(c: httpx.AsyncClient) -> dict[str, object]:
        mine = (await _submit(c, ALICE)).json()["job_id"]
        theirs = (await _submit(c, BOB)).json()["job_id"]
        out: dict[str, object] = {"mine": mine, "theirs": theirs}
        out["own_read"] = (await c.get(f"/v1/jobs/{mine}", headers=bearer(ALICE))).status_code
        out["other_read"] = await c.get(f"/v1/jobs/{theirs}", headers=bearer(ALICE))
        out["other_events"] = (
            await c.get(f"/v1/jobs/{theirs}/events", headers=bearer(ALICE))
        ).status_code
        out["other_artifact"] = (
            await c.get(f"/v1/jobs/{theirs}/artifacts/input.png", headers=bearer(ALICE))
        ).status_code
        out["own_artifact"] = (
            await c.get(f"/v1/jobs/{mine}/artifacts/input.png", headers=bearer(ALICE))
        ).status_code
        out["other_cancel"] = (
            await c.post(f"/v1/jobs/{theirs}/cancel", headers=bearer(ALICE))
        ).status_code
        out["list_alice"] = [
            j["job_id"] for j in (await c.get("/v1/jobs", headers=bearer(ALICE))).json()["jobs"]
        ]
        out["list_root"] = [
            j["job_id"] for j in (await c.get("/v1/jobs", headers=bearer(ROOT))).json()["jobs"]
        ]
        out["root_cancel"] = await c.post(f"/v1/jobs/{theirs}/cancel", headers=bearer(ROOT))
        out["own_cancel"] = (
            await c.post(f"/v1/jobs/{mine}/cancel", headers=bearer(ALICE))
        ).status_code
        return out

    out = _run(app, calls)
    assert out["own_read"] == 200 and out["own_artifact"] == 200
    other = out["other_read"]
    assert (
        isinstance(other, httpx.Response) and other.status_code == 404
    )  # not 403: existence stays hidden
    assert other.json()["error"] == {
        **other.json()["error"],
        "type": "not_found",
        "param": "job_id",
    }
    assert out["other_events"] == out["other_artifact"] == out["other_cancel"] == 404
    assert out["list_alice"] == [out["mine"]]
    assert set(out["list_root"]) == {out["mine"], out["theirs"]}  # type: ignore[arg-type]
    assert out["root_cancel"].status_code == 200 and out["own_cancel"] == 200  # type: ignore[union-attr]
    assert services.store.get(out["theirs"]).owner == "bob"  # type: ignore[arg-type, union-attr]
    assert services.store.get(out["theirs"]).status == "cancelled"  # type: ignore[arg-type, union-attr]


def test_admin_routes_need_an_admin_key(tmp_path: Path) -> None:
    services = local_services(tmp_path, api_keys=auth_keys())
    app = create_api(services)

    async def calls(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await c.post("/v1/models/default/reload", headers=bearer(ALICE)),
            await c.get("/admin/api/errors", headers=bearer(ALICE)),
            await c.post("/v1/models/default/reload", headers=bearer(ROOT)),
            await c.get("/admin/api/errors", headers=bearer(ROOT)),
            await c.get("/admin"),  # the page shell: public, holds no data
            await c.get("/admin/api/errors"),
        ]

    reload_user, errors_user, reload_admin, errors_admin, page, anonymous = _run(app, calls)
    for refused in (reload_user, errors_user):
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
    assert reload_admin.status_code == 200 and reload_admin.json()["generation"] == 1
    assert errors_admin.status_code == 200 and errors_admin.json() == {"errors": []}
    assert page.status_code == 200 and "meshline admin" in page.text and "Bearer" in page.text
    assert anonymous.status_code == 401
    assert needs_admin("POST", "/v1/models/x/reload") and not needs_admin("GET", "/v1/models")


def test_idempotency_keys_and_dedup_do_not_cross_owners(tmp_path: Path) -> None:
    services = local_services(tmp_path, api_keys=auth_keys())
    app = create_api(services)

    async def calls(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await _submit(c, ALICE, **{"Idempotency-Key": "same"}),
            await _submit(c, BOB, **{"Idempotency-Key": "same"}),
            await _submit(c, ALICE, **{"Idempotency-Key": "same"}),
        ]

    alice, bob, replay = _run(app, calls)
    assert alice.status_code == bob.status_code == 202
    assert bob.json()["job_id"] != alice.json()["job_id"]
    assert replay.status_code == 200 and replay.json()["job_id"] == alice.json()["job_id"]
    digest = services.store.find_by_idempotency_key(f"alice:{hashlib.sha256(b'same').hexdigest()}")
    assert digest is not None and digest[0] == alice.json()["job_id"]
    services.store.finish_job(alice.json()["job_id"], "succeeded")
    assert services.store.find_succeeded_by_hash(digest[1], "alice") == alice.json()["job_id"]
    assert services.store.find_succeeded_by_hash(digest[1], "bob") is None


def test_key_file_is_reread_and_the_cli_makes_entries(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "serve_app.auth", "new", "ci", "--admin"],
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stderr.strip().rsplit(" ", 1)[-1]
    entry = yaml.safe_load(made.stdout)
    assert (
        entry["ci"]["admin"] is True and key not in made.stdout
    )  # only the hash is printed to store
    hashed = subprocess.run(
        [sys.executable, "-m", "serve_app.auth", "hash"],
        input=key,
        capture_output=True,
        text=True,
        check=True,
    )
    assert hashed.stdout.strip() == entry["ci"]["sha256"] == hash_key(key)

    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"old": {"sha256": hash_key("old-key")}}))
    app = create_api(local_services(tmp_path, api_keys_file=keys_file))

    async def before(c: httpx.AsyncClient) -> tuple[int, int]:
        return (
            (await c.get("/v1/jobs", headers=bearer("old-key"))).status_code,
            (await c.get("/v1/jobs", headers=bearer(key))).status_code,
        )

    assert _run(app, before) == (200, 401)
    keys_file.write_text(yaml.safe_dump(entry))  # rotate: no restart
    assert _run(app, before) == (401, 200)


def test_open_access_without_keys_and_cors_closed_by_default(tmp_path: Path) -> None:
    app = create_api(local_services(tmp_path))
    origin = {"Origin": "https://evil.example"}

    async def calls(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await _submit(c, None),
            await c.get("/v1/jobs", headers=origin),
            await c.options(
                "/v1/jobs", headers={**origin, "Access-Control-Request-Method": "POST"}
            ),
        ]

    submitted, listed, preflight = _run(app, calls)
    assert submitted.status_code == 202 and listed.status_code == 200
    assert listed.json()["jobs"][0]["job_id"] == submitted.json()["job_id"]
    for response in (listed, preflight):
        assert not any(h.startswith("access-control-") for h in response.headers)
    assert can_access(Principal(None, True), "anyone") and not can_access(
        Principal("a", False), None
    )


def test_cors_origins_are_configurable(tmp_path: Path) -> None:
    app = create_api(
        local_services(tmp_path, api_keys=auth_keys(), cors_origins=["https://ui.example"])
    )

    async def calls(c: httpx.AsyncClient) -> list[httpx.Response]:
        preflight = {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        return [
            await c.options("/v1/jobs", headers={"Origin": "https://ui.example", **preflight}),
            await c.get(
                "/v1/jobs", headers={"Origin": "https://ui.example"}
            ),  # 401, readable by the page
            await c.get("/v1/jobs", headers={"Origin": "https://evil.example", **bearer(ALICE)}),
        ]

    preflight, unauthorized, other = _run(app, calls)
    assert preflight.status_code == 200  # answered without a key
    assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == "https://ui.example"
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("chunked", [True, False])
def test_body_limit_holds_with_and_without_content_length(tmp_path: Path, chunked: bool) -> None:
    services = local_services(
        tmp_path, max_upload_mb=0.05
    )  # limit: 3 files x 52 KB + 64 KB of framing
    app = create_api(services)
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = head + b"\0" * 400_000 + f"\r\n--{boundary}--\r\n".encode()
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(body), 16_384):
            sent += 16_384
            yield body[start : start + 16_384]

    async def calls(c: httpx.AsyncClient) -> httpx.Response:
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if chunked:
            return await c.post("/v1/jobs", content=chunks(), headers=headers)
        return await c.post("/v1/jobs", content=body, headers=headers)

    response = _run(app, calls)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "payload_too_large"
    assert services.store.count("queued") == 0
    if chunked:
        assert sent < len(body)  # reading stopped at the limit, not at the end of the body


def test_small_chunked_upload_still_works(tmp_path: Path) -> None:
    app = create_api(local_services(tmp_path))
    png = make_scene().png()
    boundary = "xyz"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    async def calls(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(
            "/v1/jobs",
            content=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    response = _run(app, calls)
    assert response.status_code == 202, response.text
    assert json.loads(response.text)["status"] == "queued"


def test_a_key_swapped_in_place_with_its_mtime_set_back_is_seen(tmp_path: Path) -> None:
    """Revoking a key by swapping its hash for another's (same file size) and restoring the
    file's mtime (a config tool copying timestamps, a coarse filesystem clock): the ring still
    sees the change (the change time moves with any write or utime)."""
    import os

    from serve_app.auth import KeyRing

    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"k": {"sha256": hash_key("revoked-key")}}))
    ring = KeyRing([], keys_file)
    assert ring.authenticate("revoked-key") is not None
    before = keys_file.stat()
    with keys_file.open("r+") as handle:  # in place: same inode, same size
        handle.write(yaml.safe_dump({"k": {"sha256": hash_key("granted-key")}}))
    os.utime(keys_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert keys_file.stat().st_mtime_ns == before.st_mtime_ns
    assert keys_file.stat().st_size == before.st_size
    assert ring.authenticate("revoked-key") is None
    assert ring.authenticate("granted-key") is not None
