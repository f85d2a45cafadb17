"""The CLI and the Python client against a service with API keys.

The keyed API is the live app's API with keys on, served by uvicorn in this process on the
live app's job store and artifact store (S3 on moto), as in test_admin_page.py: the live
app's ingress runs the jobs (replicas share work through the store), so no second Ray or Serve
instance is started. Keys are random per run, so "the key never appears in the output" means
something.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clients.client import (
    AuthenticationError,
    MeshlineClient,
    MeshlineError,
    PermissionDeniedError,
)
from tests.helpers import LiveApp, keyed_api_server, make_scene

CLI = [sys.executable, "-m", "clients.cli"]
ADMIN_KEY = "ml_admin_" + secrets.token_urlsafe(16)
ALICE_KEY = "ml_alice_" + secrets.token_urlsafe(16)
BOB_KEY = "ml_bob_" + secrets.token_urlsafe(16)
KEYS = (ADMIN_KEY, ALICE_KEY, BOB_KEY)
NEEDS_KEY = "HTTP 401: the service needs an API key: pass --api-key or set MESHLINE_API_KEY"
SEGMENT_ONLY = {"stages": ["segment"]}  # the quick stage: these tests are about the keys


@pytest.fixture(scope="module")
def keyed_api(live_app: LiveApp) -> Iterator[str]:
    """The API with three keys (admin ``root``; users ``alice`` and ``bob``, each its own
    scope), on the live app's stores; its URL."""
    from serve_app.auth import hash_key

    keys = [
        {"id": "root", "sha256": hash_key(ADMIN_KEY), "admin": True},
        {"id": "alice", "sha256": hash_key(ALICE_KEY)},
        {"id": "bob", "sha256": hash_key(BOB_KEY)},
    ]
    with keyed_api_server(live_app.settings, keys, "keyed-cli-test") as url:
        yield url


def _env(api_key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MESHLINE_API_KEY"}
    if api_key is not None:
        env["MESHLINE_API_KEY"] = api_key
    return env


def _run(*args: str, env_key: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess (``env_key`` goes in MESHLINE_API_KEY); no key may ever appear
    in what it prints, whatever happened."""
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=600, check=False, env=_env(env_key)
    )
    for key in KEYS:
        assert key not in result.stdout and key not in result.stderr, args
    return result


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_cli_without_a_key_is_told_how_to_pass_one(keyed_api: str, tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(make_scene("disk").png())
    for args in (
        ("submit", str(image)),
        ("status", "f" * 32),
        ("cancel", "f" * 32),
        ("download", "f" * 32, "--out", str(tmp_path / "out")),
    ):
        result = _run(*args, "--host", keyed_api)
        assert result.returncode == 2, (args, result.stderr)
        assert NEEDS_KEY in _one_line(result.stderr), (args, result.stderr)
    wrong = _run("status", "f" * 32, "--host", keyed_api, "--api-key", "ml_not_a_key")
    assert wrong.returncode == 2
    assert "HTTP 401: the API key was not accepted" in _one_line(wrong.stderr)
    assert "ml_not_a_key" not in wrong.stderr + wrong.stdout


def test_cli_user_key_submits_waits_downloads_and_others_get_404(
    keyed_api: str, tmp_path: Path
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(make_scene("box").png())
    out = tmp_path / "out"
    submitted = _run(
        "submit",
        str(image),
        "--options",
        json.dumps(SEGMENT_ONLY),
        "--wait",
        "--out",
        str(out),
        "--host",
        keyed_api,
        env_key=ALICE_KEY,  # from the environment, as a script would
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert len(job_id) == 32
    assert {"input.png", "mask.png", "mask_rle.json"} <= {p.name for p in out.iterdir()}
    assert "segment" in submitted.stderr  # the progress display, fed by the keyed SSE stream

    mine = _run("status", job_id, "--json", "--host", keyed_api, "--api-key", ALICE_KEY)
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout)["status"] == "succeeded"
    again = _run(
        "download",
        job_id,
        "--name",
        "mask.png",
        "--out",
        str(tmp_path / "again"),
        "--host",
        keyed_api,
        "--api-key",
        ALICE_KEY,
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "mask.png").read_bytes()[:4] == b"\x89PNG"

    # Bob's key: alice's job does not exist for him (404, not 403: no leak that it exists).
    for args in (
        ("status", job_id),
        ("cancel", job_id),
        ("download", job_id, "--out", str(tmp_path / "bob")),
    ):
        theirs = _run(*args, "--host", keyed_api, "--api-key", BOB_KEY)
        assert theirs.returncode == 2, (args, theirs.stderr)
        assert "HTTP 404" in theirs.stderr, (args, theirs.stderr)
    assert not (tmp_path / "bob").exists() or not any((tmp_path / "bob").iterdir())
    # The admin key sees every job.
    admin = _run("status", job_id, "--json", "--host", keyed_api, env_key=ADMIN_KEY)
    assert admin.returncode == 0 and json.loads(admin.stdout)["job_id"] == job_id


def test_cli_user_key_on_an_admin_route_is_403(keyed_api: str) -> None:
    # POST /v1/models/{id}/reload needs an admin key (serve_app/auth.py ADMIN_ROUTES); the
    # middleware refuses alice before the route runs, so the live models are not touched.
    result = _run("reload-model", "alpha", "--host", keyed_api, "--api-key", ALICE_KEY)
    assert result.returncode == 2, result.stderr
    message = _one_line(result.stderr)
    assert "HTTP 403: this API key may not do that (admin only)" in message
    assert "'alice' is not an admin key" in message  # the service's own message


def test_cli_never_shows_the_key(keyed_api: str) -> None:
    # Help with the key in the environment: the env var's name, never its value.
    helped = _run("status", "--help", env_key=ALICE_KEY)
    assert helped.returncode == 0 and "MESHLINE_API_KEY" in helped.stdout
    # Nothing listening: a clean error (no traceback with local variables).
    refused = _run("status", "f" * 32, "--host", "http://127.0.0.1:9", "--api-key", ALICE_KEY)
    assert refused.returncode == 2 and "could not reach the service" in refused.stderr
    assert "Traceback" not in refused.stderr
    malformed = _run("status", "f" * 32, "--host", keyed_api, "--api-key", "two words")
    assert malformed.returncode == 2 and "printable ASCII" in malformed.stderr
    assert "two words" not in malformed.stderr


def _record_requests(client: MeshlineClient) -> list[tuple[str, bool]]:
    """(origin, carried Authorization) of every request the client sends, redirects included."""
    seen: list[tuple[str, bool]] = []

    def record(request: httpx.Request) -> None:
        seen.append(
            (
                f"{request.url.scheme}://{request.url.netloc.decode()}",
                "authorization" in request.headers,
            )
        )

    client._http.event_hooks = {"request": [record], "response": []}
    return seen


def test_client_sends_the_key_to_the_service_and_never_to_storage(
    keyed_api: str, live_app: LiveApp, tmp_path: Path
) -> None:
    storage = live_app.settings["s3_endpoint_url"]
    with MeshlineClient(keyed_api, api_key=ALICE_KEY) as client:
        seen = _record_requests(client)
        job_id = client.submit(make_scene("disk").png(), options=SEGMENT_ONLY)
        updates: list[str] = []
        job = client.wait(job_id, timeout_s=180, on_update=lambda s: updates.append(s["status"]))
        assert job["status"] == "succeeded" and updates  # through the keyed SSE stream
        assert any(j["job_id"] == job_id for j in client.jobs())
        saved = client.download(job_id, tmp_path, names=["mask.png"])
        assert [p.name for p in saved] == ["mask.png"] and saved[0].stat().st_size > 0
        # The artifacts are in S3: the status lists presigned URLs on another origin.
        assert job["artifacts"][0]["url"].startswith(storage)
        assert (keyed_api, True) in seen and (storage, True) not in seen
        assert (storage, False) in seen  # the download itself
        assert all(auth for origin, auth in seen if origin == keyed_api)

        # The artifact route answers 307 to storage: httpx drops the key at the redirect.
        seen.clear()
        response = client._http.get(f"/v1/jobs/{job_id}/artifacts/mask.png", follow_redirects=True)
        assert response.status_code == 200 and response.history[0].status_code == 307
        assert seen == [(keyed_api, True), (storage, False)]
        assert ALICE_KEY not in repr(client) and "hidden" in repr(client)


def test_client_errors_for_keys(keyed_api: str) -> None:
    with MeshlineClient(keyed_api, api_key=ALICE_KEY) as alice:
        job_id = alice.submit(make_scene("disk").png(), options=SEGMENT_ONLY)
        errors: list[MeshlineError] = []
        with MeshlineClient(keyed_api) as anonymous:
            with pytest.raises(AuthenticationError) as missing:
                anonymous.job(job_id)
            assert not missing.value.key_sent
            assert "needs an API key" in str(missing.value) and "api_key=" in str(missing.value)
            errors.append(missing.value)
        with MeshlineClient(keyed_api, api_key="ml_wrong") as wrong:
            with pytest.raises(AuthenticationError) as refused:
                wrong.jobs()
            assert refused.value.key_sent
            assert str(refused.value) == "HTTP 401: the API key was not accepted: invalid API key"
            errors.append(refused.value)
        with MeshlineClient(keyed_api, api_key=BOB_KEY) as bob:
            for call in (bob.job, bob.cancel, lambda j: bob.wait(j, timeout_s=30)):
                with pytest.raises(MeshlineError) as hidden:
                    call(job_id)
                assert hidden.value.status == 404, hidden.value
                errors.append(hidden.value)
            assert all(j["job_id"] != job_id for j in bob.jobs())
        with pytest.raises(PermissionDeniedError) as forbidden:
            alice.reload_model("alpha")
        assert str(forbidden.value) == (
            "HTTP 403: this API key may not do that (admin only): "
            "API key 'alice' is not an admin key"
        )
        errors.append(forbidden.value)
        with MeshlineClient(keyed_api, api_key=ADMIN_KEY) as admin:
            assert admin.job(job_id)["job_id"] == job_id
        assert alice.wait(job_id, timeout_s=180)["status"] == "succeeded"
    for error in errors:
        for key in KEYS:
            assert key not in str(error) and key not in repr(error) and key not in repr(error.body)


def test_client_key_goes_only_to_the_service_origin(tmp_path: Path) -> None:
    """No service needed: a mock transport sees exactly which requests carry the key."""
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[str(request.url)] = request.headers.get("authorization")
        if request.url.path == "/v1/jobs/j/artifacts/a.bin":
            return httpx.Response(307, headers={"Location": "https://bucket.s3.example/a?X-Sig=1"})
        if request.url.path == "/v1/jobs/j":
            artifacts = [
                {"name": "a.bin", "url": "/v1/jobs/j/artifacts/a.bin"},
                {"name": "b.bin", "url": "http://svc.example:8000/v1/b"},  # same origin, absolute
                {"name": "c.bin", "url": "http://svc.example:9000/c"},  # another port
                {"name": "d.bin", "url": "https://svc.example:8000/d"},  # another scheme
            ]
            return httpx.Response(200, json={"job_id": "j", "artifacts": artifacts})
        return httpx.Response(200, content=b"data")

    client = MeshlineClient(
        "http://svc.example:8000/",
        api_key=f"  {ALICE_KEY}\n",
        transport=httpx.MockTransport(handler),
    )
    with client:
        assert len(client.download("j", tmp_path)) == 4
    bearer = f"Bearer {ALICE_KEY}"  # surrounding whitespace (a newline from a file) stripped
    assert seen == {
        "http://svc.example:8000/v1/jobs/j": bearer,
        "http://svc.example:8000/v1/jobs/j/artifacts/a.bin": bearer,
        "https://bucket.s3.example/a?X-Sig=1": None,
        "http://svc.example:8000/v1/b": bearer,
        "http://svc.example:9000/c": None,
        "https://svc.example:8000/d": None,
    }
    assert ALICE_KEY not in repr(client) and ALICE_KEY not in repr(client._http.auth)
    with MeshlineClient("http://svc.example:8000", api_key="   ") as blank:
        assert repr(blank).endswith("api_key=None)")  # a blank key is no key
    with pytest.raises(ValueError, match="printable ASCII") as bad:
        MeshlineClient("http://svc.example:8000", api_key="clé secrète")
    assert "clé" not in str(bad.value)


def test_model_sources_are_shown_in_full_to_admins_only(keyed_api: str) -> None:
    """Registry sources may name buckets, hosts or signed queries: a user key sees the file."""
    with httpx.Client(base_url=keyed_api, timeout=30) as http:
        as_user = http.get("/v1/models", headers={"Authorization": f"Bearer {ALICE_KEY}"})
        as_admin = http.get("/v1/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert as_user.status_code == as_admin.status_code == 200
    user = {m["model_id"]: m["source"] for m in as_user.json()["models"]}
    admin = {m["model_id"]: m["source"] for m in as_admin.json()["models"]}
    assert user["alpha"] == "alpha.pt" and admin["alpha"].endswith("/models/alpha.pt")
    assert admin["alpha"].startswith("/")
