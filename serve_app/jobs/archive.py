"""A job's artifacts as one zip, written while it is sent (GET /v1/jobs/{id}/artifacts.zip).

Each artifact is read from the store in chunks (local file or S3 object stream) and compressed
into an unseekable sink that the response drains: memory stays at about one chunk per request,
whatever the job's size. Members are the artifacts' own names, which the store has already
validated (``check_name``: no slashes, no ``..``); they are checked again here, so an archive
can never hold a path that escapes the folder it is unpacked into."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator, Sequence

from serve_app.jobs.records import ArtifactRecord
from serve_app.storage.artifacts import ArtifactStore, check_name

CHUNK = 1 << 20
# Already-compressed formats are stored as they are: deflating them again costs CPU for nothing.
STORED_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".webp", ".zip", ".npz", ".usdz", ".gz")


class _Sink:
    """Write-only and unseekable (no ``tell``/``seek``): zipfile then writes each member's sizes
    in a data descriptor after its bytes, so nothing already sent is ever rewritten."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data, self._chunks, self.size = b"".join(self._chunks), [], 0
        return data


def _member(record: ArtifactRecord) -> zipfile.ZipInfo:
    when = record.created_at
    stamp = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    info = zipfile.ZipInfo(check_name(record.name), date_time=max(stamp, (1980, 1, 1, 0, 0, 0)))
    stored = record.name.lower().endswith(STORED_SUFFIXES)
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    info.file_size = record.bytes  # lets zipfile pick ZIP64 headers for a member over 2 GiB
    info.external_attr = 0o644 << 16
    return info


def zip_artifacts(
    files: ArtifactStore, job_id: str, records: Sequence[ArtifactRecord]
) -> Iterator[bytes]:
    """The zip's bytes, in chunks of about ``CHUNK``. Blocking (store reads, deflate): the
    response iterates it in a thread. Closing the generator (the client went away) closes the
    open artifact stream."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compresslevel=6) as archive:  # type: ignore[arg-type]
        for record in {r.name: r for r in records}.values():  # one member per name
            info = _member(record)
            with (
                contextlib.closing(files.reader(job_id, record.name)) as source,
                archive.open(info, "w") as member,
            ):
                while chunk := source.read(CHUNK):
                    member.write(chunk)
                    if sink.size >= CHUNK:
                        yield sink.drain()
    yield sink.drain()  # the last member's tail and the central directory


def archive_name(job_id: str) -> str:
    return f"meshline-{job_id}.zip"
