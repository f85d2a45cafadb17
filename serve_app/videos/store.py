"""Durable video records: frames metadata, the ordered prompt history, and which frames have
masks. Lives in the job database (same engine), so a video survives any replica or ingress loss.

The frames and per-frame masks themselves are files in the artifact store, under the video id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from serve_app.jobs.records import as_utc, utcnow
from serve_app.storage.db import metadata, migrate

# A change to these tables needs an Alembic revision (serve_app/storage/migrations/versions).

videos = Table(
    "videos",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(64)),  # API key id that uploaded it (None: open access)
    Column("frames", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("fps", Float),
    Column("source", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=False, index=True),
)

video_prompts = Table(
    "video_prompts",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("frame_idx", Integer, nullable=False),
    Column("obj_id", Integer, nullable=False),
    Column("points", JSON),
    Column("labels", JSON),
    Column("box", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

video_masks = Table(
    "video_masks",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True),
    Column("frame_idx", Integer, primary_key=True),
    Column("job_id", String(32), nullable=False),
    Column("objects", JSON, nullable=False),  # object ids with a mask on this frame
    Column("bytes", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class VideoRecord:
    id: str
    owner: str | None
    frames: int
    width: int
    height: int
    fps: float | None
    source: str
    created_at: datetime
    last_used_at: datetime


@dataclass(frozen=True)
class MaskRecord:
    frame_idx: int
    job_id: str
    objects: list[int]
    bytes: int


class VideoGone(LookupError):
    """The video was deleted (or expired) under the call."""


class VideoStore:
    """Blocking SQLAlchemy calls: the API runs them in threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine)  # a no-op once the job store has migrated this database

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def create(
        self,
        video_id: str,
        frames: int,
        width: int,
        height: int,
        fps: float | None,
        source: str,
        owner: str | None = None,
    ) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                insert(videos).values(
                    id=video_id,
                    owner=owner,
                    frames=frames,
                    width=width,
                    height=height,
                    fps=fps,
                    source=source,
                    created_at=now,
                    last_used_at=now,
                )
            )

    def get(self, video_id: str) -> VideoRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(videos).where(videos.c.id == video_id)).mappings().first()
        if row is None:
            return None
        return VideoRecord(
            **{
                **row,
                "created_at": as_utc(row["created_at"]),
                "last_used_at": as_utc(row["last_used_at"]),
            }
        )

    def list(self, limit: int, owner: str | None, any_owner: bool) -> list[VideoRecord]:
        """Newest first; ``any_owner=False`` keeps only ``owner``'s videos (as jobs' list)."""
        query = select(videos).order_by(videos.c.created_at.desc(), videos.c.id).limit(limit)
        if not any_owner:
            owned = videos.c.owner.is_(None) if owner is None else videos.c.owner == owner
            query = query.where(owned)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            VideoRecord(
                **{
                    **row,
                    "created_at": as_utc(row["created_at"]),
                    "last_used_at": as_utc(row["last_used_at"]),
                }
            )
            for row in rows
        ]

    def summaries(self, video_ids: list[str]) -> dict[str, tuple[list[int], int, int]]:
        """Per video: (prompted object ids, prompt count, frames with masks), in two grouped
        queries for the whole page (not two per video)."""
        found: dict[str, tuple[list[int], int, int]] = {v: ([], 0, 0) for v in video_ids}
        if not video_ids:
            return found
        with self.engine.connect() as conn:
            for video_id, obj_id, count in conn.execute(
                select(video_prompts.c.video_id, video_prompts.c.obj_id, func.count())
                .where(video_prompts.c.video_id.in_(video_ids))
                .group_by(video_prompts.c.video_id, video_prompts.c.obj_id)
            ):
                objects, prompts, masks = found[video_id]
                found[video_id] = (sorted([*objects, int(obj_id)]), prompts + int(count), masks)
            for video_id, count in conn.execute(
                select(video_masks.c.video_id, func.count())
                .where(video_masks.c.video_id.in_(video_ids))
                .group_by(video_masks.c.video_id)
            ):
                objects, prompts, _ = found[video_id]
                found[video_id] = (objects, prompts, int(count))
        return found

    def touch(self, video_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(videos).where(videos.c.id == video_id).values(last_used_at=utcnow())
            )

    def delete(self, video_id: str) -> bool:
        with self.engine.begin() as conn:
            # Children first: SQLite enforces ON DELETE CASCADE only with its pragma set.
            conn.execute(delete(video_prompts).where(video_prompts.c.video_id == video_id))
            conn.execute(delete(video_masks).where(video_masks.c.video_id == video_id))
            return conn.execute(delete(videos).where(videos.c.id == video_id)).rowcount > 0

    def idle_before(self, cutoff: datetime) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(select(videos.c.id).where(videos.c.last_used_at < cutoff)).scalars()
            )

    # Prompts -----------------------------------------------------------------------------
    def add_prompt(
        self,
        video_id: str,
        frame_idx: int,
        obj_id: int,
        points: list[list[float]] | None,
        labels: list[int] | None,
        box: list[float] | None,
    ) -> int:
        """Append to the video's prompt history; returns its sequence number. VideoGone when
        the video was deleted meanwhile (its row is touched first, inside the transaction)."""
        for _ in range(5):  # two concurrent prompts may pick the same next seq: retry
            try:
                with self.engine.begin() as conn:
                    touched = conn.execute(
                        update(videos).where(videos.c.id == video_id).values(last_used_at=utcnow())
                    )
                    if touched.rowcount != 1:
                        raise VideoGone(video_id)
                    seq = (
                        conn.execute(
                            select(func.coalesce(func.max(video_prompts.c.seq), 0)).where(
                                video_prompts.c.video_id == video_id
                            )
                        ).scalar_one()
                        + 1
                    )
                    conn.execute(
                        insert(video_prompts).values(
                            video_id=video_id,
                            seq=seq,
                            frame_idx=frame_idx,
                            obj_id=obj_id,
                            points=points,
                            labels=labels,
                            box=box,
                            created_at=utcnow(),
                        )
                    )
                return int(seq)
            except IntegrityError:
                continue
        raise RuntimeError("could not append the prompt (contention)")

    def remove_prompt(self, video_id: str, seq: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(video_prompts).where(
                    (video_prompts.c.video_id == video_id) & (video_prompts.c.seq == seq)
                )
            )

    def prompts(self, video_id: str) -> list[dict[str, Any]]:
        """The history in order, as the Segmenter replays it."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(
                        video_prompts.c.seq,
                        video_prompts.c.frame_idx,
                        video_prompts.c.obj_id,
                        video_prompts.c.points,
                        video_prompts.c.labels,
                        video_prompts.c.box,
                    )
                    .where(video_prompts.c.video_id == video_id)
                    .order_by(video_prompts.c.seq)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    # Masks -------------------------------------------------------------------------------
    def record_mask(
        self, video_id: str, frame_idx: int, job_id: str, objects: list[int], size: int
    ) -> None:
        self.record_masks(video_id, job_id, [(frame_idx, objects, size)])

    def record_masks(
        self, video_id: str, job_id: str, frames: list[tuple[int, list[int], int]]
    ) -> None:
        """Record written mask files, (frame_idx, object ids, bytes) each, in one transaction."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                delete(video_masks).where(
                    (video_masks.c.video_id == video_id)
                    & video_masks.c.frame_idx.in_([f[0] for f in frames])
                )
            )
            conn.execute(
                insert(video_masks),
                [
                    {
                        "video_id": video_id,
                        "frame_idx": idx,
                        "job_id": job_id,
                        "objects": objects,
                        "bytes": size,
                        "created_at": now,
                    }
                    for idx, objects, size in frames
                ],
            )

    def mask_count(self, video_id: str) -> int:
        """How many frames of the video have masks (one COUNT on the primary key)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(video_masks)
                    .where(video_masks.c.video_id == video_id)
                ).scalar_one()
            )

    def masks(self, video_id: str, start: int = 0, end: int | None = None) -> list[MaskRecord]:
        """Frames in [start, end) that have masks, in order."""
        query = select(video_masks).where(
            (video_masks.c.video_id == video_id) & (video_masks.c.frame_idx >= start)
        )
        if end is not None:
            query = query.where(video_masks.c.frame_idx < end)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(video_masks.c.frame_idx)).mappings().all()
        return [
            MaskRecord(r["frame_idx"], r["job_id"], list(r["objects"]), r["bytes"]) for r in rows
        ]

    def frames_done_by(self, video_id: str, job_id: str) -> set[int]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(video_masks.c.frame_idx).where(
                        (video_masks.c.video_id == video_id) & (video_masks.c.job_id == job_id)
                    )
                ).scalars()
            )
