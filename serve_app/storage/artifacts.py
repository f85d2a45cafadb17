"""Artifact store: job inputs and stage outputs, written atomically before a stage ends."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, urlparse

from serve_app.http.errors import ApiError

ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def check_name(name: str) -> str:
    if not ARTIFACT_NAME.fullmatch(name) or ".." in name:
        raise ApiError(400, f"invalid artifact name {name!r}", param="name")
    return name


def check_job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(404, f"job {job_id!r} not found", "not_found", "job_id")
    return job_id


class ArtifactStore(Protocol):
    """Where job inputs and stage outputs live (local directory or S3)."""

    def put(
        self, job_id: str, name: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> int: ...
    def get(self, job_id: str, name: str) -> bytes: ...
    def reader(self, job_id: str, name: str) -> BinaryIO:
        """The artifact as a stream to ``read(n)`` in chunks (the caller closes it): what a zip
        of a job's artifacts reads, so that no whole file is held in memory."""
        ...

    def exists(self, job_id: str, name: str) -> bool: ...
    def delete_job(self, job_id: str) -> None: ...
    def download_url(self, job_id: str, name: str) -> str | None:
        """A direct (e.g. presigned) URL, or None to serve it through the API."""
        ...

    def describe(self) -> str: ...


class LocalArtifactStore:
    """Files under ``root/<job_id>/<name>``; names are validated, never joined raw."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved_root = root.resolve()

    def path(self, job_id: str, name: str) -> Path:
        path = self._join(job_id, name)
        # Defence in depth: the resolved path (links followed) stays inside the job directory.
        if path.resolve().parent != self._resolved_root / job_id:
            raise ApiError(400, f"invalid artifact name {name!r}", param="name")
        return path

    def _join(self, job_id: str, name: str) -> Path:
        """root/<job_id>/<name>: both checked, neither can hold a separator or be ".."."""
        return self.root / check_job_id(job_id) / check_name(name)

    def describe(self) -> str:
        return str(self.root)

    def download_url(self, job_id: str, name: str) -> str | None:
        return None

    def put(
        self, job_id: str, name: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> int:
        # Not path()'s resolve (a realpath walk: a syscall per path component; with the root's
        # walk as well, ~9% of the ingress's CPU in a burst of submits): the file is written
        # under a new name and renamed onto the target, and a rename replaces a link there
        # instead of following it.
        target = self._join(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(data)

    def get(self, job_id: str, name: str) -> bytes:
        path = self.path(job_id, name)
        if not path.is_file():
            raise ApiError(404, f"artifact {name!r} not found", "not_found", "name")
        return path.read_bytes()

    def reader(self, job_id: str, name: str) -> BinaryIO:
        try:
            return self.path(job_id, name).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ApiError(404, f"artifact {name!r} not found", "not_found", "name") from None

    def exists(self, job_id: str, name: str) -> bool:
        return self.path(job_id, name).is_file()

    def delete_job(self, job_id: str) -> None:
        # Gone already is done; any other failure is raised, so the job's row stays for the
        # next retention sweep (its files would be left behind for ever otherwise).
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root / check_job_id(job_id))


class S3ArtifactStore:
    """Objects under ``s3://bucket/prefix/<job_id>/<name>``; downloads are presigned GETs."""

    def __init__(
        self, uri: str, endpoint_url: str | None = None, presign_ttl_s: int = 3600
    ) -> None:
        import boto3
        from botocore.config import Config

        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"artifact URI must look like s3://bucket/prefix, got {uri!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.presign_ttl_s = presign_ttl_s
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"}
            ),
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, job_id: str, name: str) -> str:
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, check_job_id(job_id), check_name(name)])

    def put(
        self, job_id: str, name: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> int:
        # A PUT is atomic in S3: readers see the old object or the whole new one.
        self.client.put_object(
            Bucket=self.bucket, Key=self.key(job_id, name), Body=data, ContentType=media_type
        )
        return len(data)

    def get(self, job_id: str, name: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(job_id, name))
        except self.client.exceptions.NoSuchKey:
            raise ApiError(404, f"artifact {name!r} not found", "not_found", "name") from None
        return response["Body"].read()

    def reader(self, job_id: str, name: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(job_id, name))
        except self.client.exceptions.NoSuchKey:
            raise ApiError(404, f"artifact {name!r} not found", "not_found", "name") from None
        return response["Body"]  # type: ignore[no-any-return]  # botocore's StreamingBody

    def exists(self, job_id: str, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(job_id, name))
        except ClientError:
            return False
        return True

    def delete_job(self, job_id: str) -> None:
        prefix = self.key(job_id, "x")[:-1]
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )

    def download_url(self, job_id: str, name: str) -> str | None:
        return self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key(job_id, name),
                "ResponseContentDisposition": f"attachment; filename*=UTF-8''{quote(name)}",
            },
            ExpiresIn=self.presign_ttl_s,
        )


def make_artifact_store(
    uri: str | None, local_dir: Path, endpoint_url: str | None, presign_ttl_s: int
) -> ArtifactStore:
    if uri and uri.startswith("s3://"):
        return S3ArtifactStore(uri, endpoint_url, presign_ttl_s)
    if uri:
        raise ValueError(
            f"unsupported artifact store URI {uri!r} (use s3://bucket/prefix or unset)"
        )
    return LocalArtifactStore(local_dir)
