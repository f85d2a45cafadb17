"""The S3 artifact store and s3:// inputs against a real S3 API (moto's server)."""

from __future__ import annotations

import httpx
import pytest

from serve_app.http.errors import ApiError
from serve_app.http.fetch import fetch_s3
from serve_app.storage.artifacts import LocalArtifactStore, S3ArtifactStore, make_artifact_store
from tests.helpers import ARTIFACT_BUCKET, INPUT_BUCKET

JOB = "1" * 32


def test_put_get_presign_delete(s3_endpoint: str) -> None:
    store = S3ArtifactStore(f"s3://{ARTIFACT_BUCKET}/unit", s3_endpoint, presign_ttl_s=120)
    assert store.put(JOB, "mask.png", b"\x89PNG...", "image/png") == 7
    store.put(JOB, "visual.glb", b"glTF" + b"\0" * 100, "model/gltf-binary")
    assert store.get(JOB, "mask.png") == b"\x89PNG..."
    assert store.exists(JOB, "visual.glb") and not store.exists(JOB, "absent.obj")
    url = store.download_url(JOB, "visual.glb")
    assert url and "X-Amz-Signature=" in url and f"/unit/{JOB}/visual.glb" in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content.startswith(b"glTF")
    assert response.headers["content-type"] == "model/gltf-binary"
    assert "visual.glb" in response.headers["content-disposition"]
    assert "X-Amz-Expires=120" in url  # (moto does not check signatures; real S3 does)
    with pytest.raises(ApiError) as err:
        store.get(JOB, "absent.obj")
    assert err.value.status == 404
    store.delete_job(JOB)
    assert not store.exists(JOB, "mask.png") and not store.exists(JOB, "visual.glb")
    for bad in ("../escape", "a/b"):
        with pytest.raises(ApiError):
            store.key(JOB, bad)


def test_store_factory(tmp_path, s3_endpoint: str) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(make_artifact_store(None, tmp_path, None, 60), LocalArtifactStore)
    assert isinstance(
        make_artifact_store(f"s3://{ARTIFACT_BUCKET}", tmp_path, s3_endpoint, 60), S3ArtifactStore
    )
    with pytest.raises(ValueError):
        make_artifact_store("gs://bucket/x", tmp_path, None, 60)


def test_s3_inputs_only_from_allowed_buckets(s3_endpoint: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=INPUT_BUCKET, Key="in/photo.png", Body=b"x" * 50
    )
    assert (
        fetch_s3(f"s3://{INPUT_BUCKET}/in/photo.png", 100, s3_endpoint, [INPUT_BUCKET]) == b"x" * 50
    )
    cases = [
        (f"s3://{ARTIFACT_BUCKET}/anything", [INPUT_BUCKET], 422),  # not allow-listed
        (f"s3://{INPUT_BUCKET}/in/missing.png", [INPUT_BUCKET], 422),
        (f"s3://{INPUT_BUCKET}/", [INPUT_BUCKET], 422),
    ]
    for uri, allowed, status in cases:
        with pytest.raises(ApiError) as err:
            fetch_s3(uri, 100, s3_endpoint, allowed)
        assert err.value.status == status, uri
    with pytest.raises(ApiError) as err:
        fetch_s3(f"s3://{INPUT_BUCKET}/in/photo.png", 10, s3_endpoint, [INPUT_BUCKET])
    assert err.value.status == 413


def test_registry_lists_models_under_an_s3_prefix(s3_endpoint: str) -> None:
    import boto3

    from deployments.registry import ModelRegistry

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in (
        "registry/runs/chairs.pt",
        "registry/runs/tables.pt",
        "registry/runs/notes.txt",
        "elsewhere/x.pt",
    ):
        s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=b"x")
    registry = ModelRegistry(
        "yolov8n.yaml", s3_prefix=f"s3://{INPUT_BUCKET}/registry/", s3_endpoint_url=s3_endpoint
    )
    entries = registry.entries()
    assert set(entries) == {"default", "chairs", "tables"}
    assert entries["chairs"].source == f"s3://{INPUT_BUCKET}/registry/runs/chairs.pt"
    assert entries["chairs"].origin == "s3_prefix"


@pytest.mark.parametrize("uri", ["s3://[x/y", "s3://x]/y", "s3://bucket-only", "s3:///key"])
def test_malformed_s3_uris_are_a_422_naming_the_field(uri: str) -> None:
    """Refused before any client is made (nothing listens at the endpoint)."""
    with pytest.raises(ApiError) as err:
        fetch_s3(uri, 100, "http://127.0.0.1:9", [INPUT_BUCKET, "x"], "video_url")
    assert (err.value.status, err.value.type, err.value.param) == (422, "invalid_url", "video_url")
