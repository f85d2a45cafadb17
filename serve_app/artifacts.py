"""Artifact store: job inputs and stage outputs, written atomically before a stage ends."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from serve_app.errors import ApiError

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


class LocalArtifactStore:
    """Files under ``root/<job_id>/<name>``; names are validated, never joined raw."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str, name: str) -> Path:
        path = self.root / check_job_id(job_id) / check_name(name)
        # Defence in depth: the resolved path must stay inside the job directory.
        if path.resolve().parent != (self.root / job_id).resolve():
            raise ApiError(400, f"invalid artifact name {name!r}", param="name")
        return path

    def put(self, job_id: str, name: str, data: bytes) -> int:
        target = self.path(job_id, name)
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

    def exists(self, job_id: str, name: str) -> bool:
        return self.path(job_id, name).is_file()

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.root / check_job_id(job_id), ignore_errors=True)
