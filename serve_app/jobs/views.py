"""Store records → public API shapes (shared by the routers, the runner and the handle API)."""

from __future__ import annotations

from serve_app.http.errors import ApiError
from serve_app.jobs.records import JobRecord
from serve_app.jobs.schemas import ArtifactPublic, JobOptions, JobPublic, StagePublic, WebhookPublic
from serve_app.jobs.store import JobStore
from serve_app.storage.artifacts import ArtifactStore, check_job_id


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
