"""Store records → public API shapes (shared by the routers, the runner and the handle API)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from serve_app.artifacts import ArtifactStore, check_job_id
from serve_app.errors import ApiError
from serve_app.jobstore import JobRecord, JobStore
from serve_app.schemas import ArtifactPublic, JobOptions, JobPublic, StagePublic, WebhookPublic


def job_public(job: JobRecord, files: ArtifactStore | None = None) -> JobPublic:
    """``files`` lets artifact URLs point straight at storage (presigned S3 URLs)."""
    base = f"/v1/jobs/{job.id}/artifacts/"

    def url(name: str) -> str:
        direct = files.download_url(job.id, name) if files is not None else None
        return direct or base + name

    return JobPublic(
        job_id=job.id,
        status=job.status,
        progress=job.progress,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        options=JobOptions.model_validate(job.options),
        inputs=job.inputs,
        error=job.error,
        stages=[StagePublic(**vars(s)) for s in job.stages],
        artifacts=[
            ArtifactPublic(
                name=a.name, media_type=a.media_type, bytes=a.bytes, stage=a.stage, url=url(a.name)
            )
            for a in job.artifacts
        ],
        webhook=WebhookPublic.model_validate(job.webhook) if job.webhook else None,
    )


def job_or_404(store: JobStore, job_id: str) -> JobRecord:
    """The job, or a 404 (a malformed id is a 422 from ``check_job_id``).

    Blocking: run it in a thread."""
    job = store.get(check_job_id(job_id))
    if job is None:
        raise ApiError(404, f"job {job_id!r} not found", "not_found", "job_id")
    return job


# Secrets in logs and answers (issue 13) ------------------------------------------------------
_SECRET_QUERY_KEYS = ("password", "secret", "token", "signature", "credential", "key")
# A URI with a scheme (s3://, https://, gs://, file://…), or an absolute path of two or more
# parts; what ends it: whitespace, quotes, brackets, a comma/semicolon before a space.
_LOCATION = re.compile(
    r"""(?:\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'"<>()\[\]]+)|(?:(?<![\w.:/])/(?:[^\s'"<>()\[\]/]+/)+[^\s'"<>()\[\]/]+)"""
)


def safe_db_url(url: str) -> str:
    """The job store URL for logs: the password (and any password-like query parameter)
    masked, e.g. ``postgresql://meshline:***@db:5432/jobs``."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 — unparsable: show nothing that could hold a secret
        return "(unparsable database URL)"
    query = {
        k: ("***" if any(word in k.lower() for word in _SECRET_QUERY_KEYS) else v)
        for k, v in parsed.query.items()
    }
    return parsed.set(query=query).render_as_string(hide_password=True)


def safe_label(location: str) -> str:
    """What users may see of a checkpoint (or any file) location: its file name, without
    scheme, bucket, host, credentials, directories or query (``s3://b/runs/7/best.pt?X-Amz-…``
    → ``best.pt``); "checkpoint" when it has no usable name."""
    text = str(location).strip()
    path = urlsplit(text).path if "://" in text else text
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name if name and "@" not in name and ":" not in name else "checkpoint"


def redact_locations(text: str) -> str:
    """``text`` with every URI and absolute path replaced by its ``safe_label``: stage errors
    (a checkpoint that did not load…) reach users; the full text stays in the server log."""
    return _LOCATION.sub(_label_match, text)


def _label_match(match: re.Match[str]) -> str:
    found = match.group(0)
    location = found.rstrip(":;,.")  # punctuation of the sentence, not of the location
    return safe_label(location) + found[len(location) :]
