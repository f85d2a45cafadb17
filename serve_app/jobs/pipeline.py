"""The job DAG: what each stage needs, and how it runs through the deployment handles.

A stage reads its inputs from the artifact store and writes its outputs there before it
returns, so the next stage (or a resumed job after a restart) starts from stored data.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from deployments.protocol import (
    ConvertRequest,
    DetectRequest,
    DetectResult,
    EncodedMask,
    EncodeImageRequest,
    FrameMasks,
    ImageEncoded,
    PaintRequest,
    ReconstructRequest,
    SegmentImageRequest,
    SegmentPrompt,
    SegmentResult,
    VideoPrompt,
    VideoPropagateRequest,
    image_id_of,
)
from serve_app.handles import Handles
from serve_app.http.errors import ApiError
from serve_app.jobs.records import JobRecord
from serve_app.jobs.schemas import JobOptions
from serve_app.jobs.stages import STAGE_MAKES, STAGE_NEEDS, STAGE_ORDER, STAGES
from serve_app.jobs.store import JobStore
from serve_app.predict.images import artifact_source
from serve_app.storage.artifacts import ArtifactStore
from serve_app.videos.schemas import PropagateOptions

MESH_INPUT_FORMATS = ("ply", "glb", "obj", "stl")
# Stage outputs that stand for a role, most refined first (paint's mesh supersedes shape's).
PRODUCED_BY_ROLE: dict[str, tuple[str, ...]] = {
    "mask": ("mask.png",),
    "mesh": ("textured.glb", "shape.ply"),
}


def plan_stages(options: JobOptions, supplied: set[str]) -> list[str]:
    """Resolve the stage list and check that every stage has its inputs (else 422)."""
    if options.stages is not None:
        names = list(options.stages)
    else:
        names = [s for s in STAGE_ORDER if not (s == "segment" and "mask" in supplied)]
    available = set(supplied)
    for name in names:
        missing = [need for need in STAGE_NEEDS[name] if need not in available]
        if missing:
            raise ApiError(
                422,
                f"stage {name!r} needs {', '.join(missing)}, which the job neither supplies "
                "nor produces in an earlier stage",
                "missing_input",
                missing[0],
            )
        available.update(STAGE_MAKES[name])
    if "mesh" in supplied and "segment" in names and "reconstruct" not in names:
        _check_one_object_for_the_mesh(options)
    return names


def _check_one_object_for_the_mesh(options: JobOptions) -> None:
    """A supplied mesh is one object's: a segment stage that may find several (detector boxes
    or text instances with max_objects > 1) has no mesh for the others, and the job would fail
    in paint or convert after detection and segmentation ran."""
    prompt, detect = options.prompt, options.detect_options
    text_many = prompt is not None and prompt.text is not None and prompt.max_objects > 1
    boxes_many = options.detector_prompts and detect is not None and detect.max_objects > 1
    if text_many or boxes_many:
        raise ApiError(
            422,
            "a supplied mesh is one object's, but the segment stage may find several "
            "(max_objects > 1): add the reconstruct stage, or ask for one object",
            "invalid_request",
            "detect.max_objects" if boxes_many else "prompt.max_objects",
        )


R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")


async def replica_call(response: Awaitable[R]) -> R:
    """Await a deployment call; when the awaiting task is cancelled (stage time-out, job
    cancel, lost lease), cancel the call in the replica too. Serve only stops waiting (the
    replica went on working, issue 13); cancelled there, the Converter and Reconstructor kill
    the child process doing the work (deployments/meshing/isolate.py)."""
    try:
        return await response
    except asyncio.CancelledError:
        cancel = getattr(response, "cancel", None)
        if cancel is not None:
            cancel()
        raise


async def together(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both at once; when one fails, the other is cancelled (in its replica too, when it is a
    ``replica_call``) and the failure raised as it is."""
    tasks = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        done_first, done_second = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return done_first, done_second


class StageContext:
    """What a stage sees: the job, the stores, the handles, and the job's files by role."""

    def __init__(
        self,
        job: JobRecord,
        store: JobStore,
        files: ArtifactStore,
        handles: Handles,
        max_pixels: int,
        owner: str | None = None,
    ):
        self.job = job
        self.store = store
        self.files = files
        self.handles = handles
        self.max_pixels = max_pixels
        self.owner = owner  # the runner holding the job's lease: its writes check it still does
        self.options = JobOptions.model_validate(job.options)
        self._image_file: bytes | None = None
        self._image_id: str | None = None
        self._image_bytes: bytes | None = None

    async def write(self, stage: str, name: str, data: bytes, media_type: str) -> None:
        """Store an output (file first, then its record) off the event loop."""
        await self.write_many(stage, [(name, data, media_type)])

    async def write_many(self, stage: str, files: list[tuple[str, bytes, str]]) -> None:
        """Store outputs ((name, data, media type)): the files in parallel, then one
        transaction recording them all (a file is never recorded before it is stored)."""
        sizes = await asyncio.gather(
            *(asyncio.to_thread(self.files.put, self.job.id, *file) for file in files)
        )
        records = [(name, media, size) for (name, _, media), size in zip(files, sizes, strict=True)]
        await asyncio.to_thread(self.store.add_artifacts, self.job.id, stage, records, self.owner)

    def artifact_name(
        self, role: str, prefix: str = "", for_stage: str | None = None
    ) -> str | None:
        """The artifact for a role (of one object): a stage's output wins over the job's input.
        ``for_stage``: the stage that reads it, whose own outputs never count (a retried paint
        read the textured.glb of its earlier attempt and painted its own output again)."""
        produced = {a.name for a in self.job.artifacts if a.stage != for_stage}
        for name in PRODUCED_BY_ROLE.get(role, ()):
            if prefix + name in produced:
                return prefix + name
        return None if prefix else self.job.inputs.get(role)

    def objects(self) -> list[str]:
        """Artifact-name prefixes of the job's objects: ``[""]`` for one, ``obj<k>_`` for many.

        Depends only on the job snapshot, so each stage computes it once."""
        pattern = re.compile(r"^(obj\d+_)mask\.png$")
        prefixes = sorted(
            {m.group(1) for a in self.job.artifacts if (m := pattern.match(a.name))},
            key=lambda p: int(p[3:-1]),
        )
        return prefixes or [""]

    async def progress(
        self, stage: str, percent: float, detail: dict[str, Any] | None = None
    ) -> None:
        await asyncio.to_thread(
            self.store.set_stage_progress, self.job.id, stage, percent, detail, self.owner
        )

    async def object_done(self, stage: str, done: int, total: int) -> None:
        """Progress after the ``done``-th of ``total`` objects; none after the last: the
        stage's end records 100 % (a store write and a thread hop sooner)."""
        if done < total:
            await self.progress(stage, 100.0 * done / total)

    async def read(self, name: str) -> bytes:
        return await asyncio.to_thread(self.files.get, self.job.id, name)

    async def image_ref(self) -> tuple[str, bytes | None]:
        """The input image's id (SHA-256 of the stored file) and its bytes until a Segmenter
        call has carried them once (``image_sent``)."""
        if self._image_id is None:
            data = await self.image_file()
            self._image_id = image_id_of(data)
            self._image_bytes = data
        return self._image_id, self._image_bytes

    def image_sent(self) -> None:
        self._image_bytes = None

    async def image_file(self) -> bytes:
        """The stored input image as it came (checked at submit); model replicas decode it."""
        if self._image_file is None:
            self._image_file = await self.read(self.job.inputs["image"])
        return self._image_file

    async def mask_file(self, prefix: str = "") -> bytes:
        """The object's stored mask image (a segment stage's PNG, or the submitted mask)."""
        name = self.artifact_name("mask", prefix)
        if name is None:
            raise ApiError(422, "job has no mask", "missing_input", "mask")
        return await self.read(name)

    async def mesh(self, prefix: str = "", for_stage: str | None = None) -> tuple[bytes, str]:
        name = self.artifact_name("mesh", prefix, for_stage)
        if name is None:
            raise ApiError(422, "job has no mesh", "missing_input", "mesh")
        return await self.read(name), name.rsplit(".", 1)[-1].lower()


async def _detections(ctx: StageContext) -> DetectResult:
    """The job's image file goes to the Detector encoded (it decodes on its device)."""
    detect = ctx.options.detect_options
    assert detect is not None
    data, generation = await asyncio.gather(
        ctx.image_file(),
        asyncio.to_thread(ctx.store.model_generation, detect.model),
    )
    request = DetectRequest(
        data,
        conf=detect.conf,
        iou=detect.iou,
        imgsz=detect.imgsz,
        max_det=100,
        classes=detect.classes,
        max_pixels=ctx.max_pixels,
    )
    found = await replica_call(
        ctx.handles.detector_client.detect(request, detect.model, generation)
    )
    detections = json.dumps(found.to_dict()).encode()
    await ctx.write("segment", "detections.json", detections, "application/json")
    return found


async def _encode_image(ctx: StageContext) -> ImageEncoded:
    """The image's embedding computed in the Segmenter before its prompt is known (while the
    Detector looks for the boxes): the prompt's call then finds it, and sends no image."""
    image_id, data = await ctx.image_ref()
    source = artifact_source(ctx.files, ctx.job.id, ctx.job.inputs["image"])
    request = EncodeImageRequest(image_id, data=data, source=source)
    encoded = await replica_call(ctx.handles.segmenter_client.encode_image(request))
    if encoded.kept:
        ctx.image_sent()
    return encoded


async def _segment_one(
    ctx: StageContext,
    prefix: str,
    points: list[list[float]] | None = None,
    labels: list[int] | None = None,
    box: list[float] | None = None,
    encoded: ImageEncoded | None = None,
) -> dict[str, Any]:
    """One mask through ``segment_image``: the job's encoded file goes once (the Segmenter
    decodes it and caches the embedding); later objects of the same image send only its id and
    reach the replica holding the embedding, or one that reads the file from the store.
    ``encoded``: this stage's ``encode_image`` call, whose encoder time counts here."""
    result = await _segment_image(ctx, points=points, labels=labels, box=box)
    mask = result.encoded_masks()[0]
    if not mask.area:
        raise ApiError(
            422, "the segmenter returned an empty mask for this prompt", "empty_mask", "prompt"
        )
    await _write_masks(ctx, [(prefix, mask)])
    return {
        "score": round(float(result.scores[0]), 5),
        "area": mask.area,
        "prompt": result.prompt.to_dict(),
        "model_seconds": round(result.seconds + (encoded.seconds if encoded else 0.0), 4),
        # No encoder ran for this mask in this stage.
        "embedding_cached": bool(result.cached) and (encoded is None or encoded.cached),
    }


async def run_segment(ctx: StageContext) -> dict[str, Any]:
    """One mask from the prompt (or the centre / the detector's top box), or — with
    ``detect.max_objects`` > 1 — one mask per detection, named ``obj<k>_mask.png``."""
    options = ctx.options
    prompt = options.prompt
    points = [list(p) for p in prompt.points] if prompt and prompt.points else None
    labels = list(prompt.labels) if prompt and prompt.labels else None
    box = list(prompt.box) if prompt and prompt.box else None
    if prompt is not None and prompt.text is not None:
        return await _segment_text(ctx, prompt.text, prompt.max_objects, prompt.min_score)
    detect = options.detect_options
    if detect is None or not options.detector_prompts:
        return await _segment_one(ctx, "", points=points, labels=labels, box=box)
    await ctx.image_ref()  # read once, for both calls
    # The image encoder (the heavy half of SAM) needs no prompt: it runs while the Detector
    # finds the boxes, and the box prompts then take only the light decoder.
    found, encoded = await together(_detections(ctx), _encode_image(ctx))
    # The Detector's own time (decode, letterbox, forward, NMS) beside the Segmenter's.
    detected = {
        "detections": len(found.boxes),
        "detect_seconds": round(sum(found.speed_ms.values()) / 1000, 4),
        "encoded_during_detection": encoded.kept,
    }
    if not found.boxes:
        detail = await _segment_one(ctx, "", encoded=encoded)
        return {
            **detail,
            **detected,
            "prompt_from": "image centre (the detector found nothing)",
        }
    if detect.max_objects == 1:
        detail = await _segment_one(ctx, "", box=found.boxes[0], encoded=encoded)  # best first
        source = f"detector box ({found.class_names[0]}, {found.scores[0]:.3f})"
        return {**detail, **detected, "prompt_from": source}
    count = min(detect.max_objects, len(found.boxes))
    # Every box in one call: the decoder runs them in batches on the embedding, one hop.
    result = await _segment_image(ctx, boxes=found.boxes[:count])
    kept, objects, skipped = detected_objects(
        result.encoded_masks(), list(result.scores), result.prompt.boxes or [], found
    )
    await _write_masks(ctx, [(object_prefix(k), mask) for k, mask in kept])
    return {
        **detected,
        "model_seconds": round(result.seconds + encoded.seconds, 4),
        # No encoder ran for these masks in this stage.
        "embedding_cached": bool(result.cached) and encoded.cached,
        "objects": objects,
        **({"skipped": skipped} if skipped else {}),
        "prompt_from": "detector boxes",
    }


def detected_objects(
    masks: list[EncodedMask], scores: list[float], boxes: list[list[float]], found: DetectResult
) -> tuple[list[tuple[int, EncodedMask]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A detect job's objects: the detector boxes (best first) whose mask has pixels, each
    numbered by its detection (``obj<k>_`` is detection k, as the exports read it), and the
    boxes whose mask came back empty, as skipped. One unusable box does not cost the job its
    other objects; a 422 only when every mask is empty."""
    kept = [(index, mask) for index, mask in enumerate(masks) if mask.area]
    if not kept:
        raise ApiError(
            422,
            f"the segmenter returned an empty mask for every detector box ({len(masks)})",
            "empty_mask",
            "detect",
        )
    objects = [
        {
            "object": index,
            "score": round(float(scores[index]), 5),
            "area": mask.area,
            "prompt": SegmentPrompt(None, None, boxes[index]).to_dict(),
            "class_name": found.class_names[index],
            "detector_score": found.scores[index],
        }
        for index, mask in kept
    ]
    skipped = [
        {
            "object": index,
            "box": boxes[index],
            "class_name": found.class_names[index],
            "detector_score": found.scores[index],
            "reason": "empty mask",
        }
        for index, mask in enumerate(masks)
        if not mask.area
    ]
    return kept, objects, skipped


async def _segment_text(
    ctx: StageContext, text: str, max_objects: int, min_score: float
) -> dict[str, Any]:
    """Every instance of ``text`` (sam3 backend) in one call, best first: 1 → one unprefixed
    mask, more → ``obj<k>_`` masks, one mesh set each (as with detector boxes)."""
    result = await _segment_image(ctx, text=text, min_score=min_score, max_masks=max_objects)
    found = zip(result.encoded_masks(), result.scores, strict=True)
    kept = [(mask, score) for mask, score in found if mask.area]
    if not kept:
        raise ApiError(
            422,
            f"the segmenter found no instance of {text!r} scoring above {min_score}",
            "empty_mask",
            "prompt.text",
        )
    prefixes = [""] if max_objects == 1 else [object_prefix(k) for k in range(len(kept))]
    await _write_masks(ctx, [(p, mask) for p, (mask, _) in zip(prefixes, kept, strict=True)])
    objects = [
        {"object": index, "score": round(float(score), 5), "area": mask.area}
        for index, (mask, score) in enumerate(kept)
    ]
    detail = {"prompt": result.prompt.to_dict(), "model_seconds": result.seconds}
    if max_objects == 1:
        return {**detail, **objects[0], "instances": len(kept), "prompt_from": "text"}
    return {**detail, "instances": len(kept), "objects": objects, "prompt_from": "text"}


async def _segment_image(ctx: StageContext, **prompt: Any) -> SegmentResult:
    """``segment_image`` on the job's image with ``prompt`` (SegmentImageRequest's fields); the
    masks come back as the files the stage stores (RLE and PNG, encoded in the replica)."""
    image_id, data = await ctx.image_ref()
    source = artifact_source(ctx.files, ctx.job.id, ctx.job.inputs["image"])
    request = SegmentImageRequest(
        image_id, data=data, source=source, mask_format="rle+png", **prompt
    )
    result = await replica_call(ctx.handles.segmenter_client.segment_image(request))
    ctx.image_sent()
    return result


async def _write_masks(ctx: StageContext, masks: list[tuple[str, EncodedMask]]) -> None:
    """Each object's ``mask.png`` and ``mask_rle.json`` (prefixed), stored together."""
    files = []
    for prefix, mask in masks:
        assert mask.png is not None  # asked for with mask_format="rle+png"
        files.append((f"{prefix}mask.png", mask.png, "image/png"))
        rle = json.dumps(mask.rle).encode()
        files.append((f"{prefix}mask_rle.json", rle, "application/json"))
    await ctx.write_many("segment", files)


def object_prefix(index: int) -> str:
    return f"obj{index}_"


async def run_reconstruct(ctx: StageContext) -> dict[str, Any]:
    stats = {}
    objects = ctx.objects()
    for done, prefix in enumerate(objects, start=1):
        image, mask = await asyncio.gather(ctx.image_file(), ctx.mask_file(prefix))
        request = ReconstructRequest(image, mask, max_pixels=ctx.max_pixels)
        result = await replica_call(ctx.handles.reconstructor_client.reconstruct(request))
        await ctx.write("reconstruct", f"{prefix}shape.ply", result.mesh, "application/x-ply")
        stats[prefix or "object"] = result.stats
        await ctx.object_done("reconstruct", done, len(objects))
    return stats if len(stats) > 1 else stats["object"]


async def run_paint(ctx: StageContext) -> dict[str, Any]:
    stats = {}
    objects = ctx.objects()
    for done, prefix in enumerate(objects, start=1):
        (mesh, fmt), image, mask = await asyncio.gather(
            ctx.mesh(prefix, for_stage="paint"), ctx.image_file(), ctx.mask_file(prefix)
        )
        request = PaintRequest(
            mesh,
            image,
            mask,
            mesh_format=fmt,
            prefix=prefix,
            texture_px=ctx.options.texture_size,
            max_pixels=ctx.max_pixels,
        )
        result = await replica_call(ctx.handles.reconstructor_client.paint(request))
        outputs = [(f"{prefix}textured.glb", result.mesh, "model/gltf-binary")]
        await ctx.write_many(
            "paint", outputs + [(f.name, f.data, f.media_type) for f in result.files]
        )
        stats[prefix or "object"] = result.stats
        await ctx.object_done("paint", done, len(objects))
    return stats if len(stats) > 1 else stats["object"]


async def run_convert(ctx: StageContext) -> dict[str, Any]:
    options = ctx.options
    files: list[str] = []
    seconds = 0.0
    objects = ctx.objects()
    for done, prefix in enumerate(objects, start=1):
        mesh, fmt = await ctx.mesh(prefix)
        request = ConvertRequest(
            mesh,
            mesh_format=fmt,
            formats=list(options.formats),
            collision=options.collision,
            preview=options.preview,
            prefix=prefix,
            sim=options.sim.model_dump() if options.sim is not None else None,
            voxels=options.voxels.model_dump() if options.voxels is not None else None,
        )
        result = await replica_call(ctx.handles.converter_client.convert(request))
        await ctx.write_many("convert", [(f.name, f.data, f.media_type) for f in result.files])
        files += result.names
        seconds += result.seconds
        await ctx.object_done("convert", done, len(objects))
    return {"files": files, "seconds": round(seconds, 3)}


async def run_propagate(ctx: StageContext) -> dict[str, Any]:
    """Track the video's prompted objects through its frames (one SAM2 pass per direction),
    writing each frame's masks as they arrive. A retried or resumed job keeps the frames it
    already wrote and continues each pass from its last written frame, seeded with its masks."""
    from serve_app.videos.frames import (
        decode_frame_masks,
        encode_frame_masks,
        frame_source,
        masks_name,
        plan_passes,
        resume_point,
        video_store_for,
    )

    video_id = ctx.job.inputs["video"]
    options = ctx.options.video or PropagateOptions()
    videos = video_store_for(ctx.store.engine)
    record = await asyncio.to_thread(videos.get, video_id)
    if record is None:
        raise ApiError(422, f"video {video_id} was deleted", "missing_input", "video")
    prompts = await asyncio.to_thread(videos.prompts, video_id)
    passes = plan_passes(record, prompts, options)
    done = await asyncio.to_thread(videos.frames_done_by, video_id, ctx.job.id)
    total = len({f for one in passes for f in one.frames})
    written = {f for one in passes for f in one.frames} & done
    source = frame_source(ctx.files, video_id, record.frames)
    limiter = asyncio.Semaphore(
        4
    )  # batches being written at once (each writes its files in parallel)
    writes: set[asyncio.Task[None]] = set()
    objects: set[int] = set()

    def put(frame: FrameMasks) -> tuple[int, list[int], int]:
        data = encode_frame_masks(frame.masks)

        ctx.files.put(video_id, masks_name(frame.frame_idx), data, "application/json")
        return frame.frame_idx, sorted(int(k) for k in frame.masks), len(data)

    async def write(frames: list[FrameMasks]) -> None:
        """Files first (in parallel), then one DB transaction recording them."""
        async with limiter:
            records = await asyncio.gather(*(asyncio.to_thread(put, f) for f in frames))
            await asyncio.to_thread(videos.record_masks, video_id, ctx.job.id, list(records))
            written.update(r[0] for r in records)

    started = time.perf_counter()
    tracked = 0
    resumed: list[int] = []
    last_report = 0.0
    for one in passes:
        resume = resume_point(one, done)
        if resume is not None and one.frames.index(resume) == 0:
            resume = None  # only the shared start frame (the other pass wrote it): start fresh
        start, max_frames = one.start, one.max_frames
        seeds: list[VideoPrompt] = []
        if resume is not None:
            remaining = len(one.frames) - one.frames.index(resume) - 1
            if remaining == 0:
                continue  # this pass finished before the interruption
            stored = decode_frame_masks(
                await asyncio.to_thread(ctx.files.get, video_id, masks_name(resume))
            )
            seeds = [
                VideoPrompt(seq=-1, frame_idx=resume, obj_id=int(k), mask_rle=rle)
                for k, rle in stored.items()
            ]
            start, max_frames = resume, remaining
            resumed.append(resume)
        request = VideoPropagateRequest(
            video_id,
            source,
            [VideoPrompt.from_dict(p) for p in prompts],
            start,
            one.reverse,
            max_frames,
            seeds,
        )
        stream = ctx.handles.segmenter_client.video_propagate(request)
        try:
            async for batch in stream:
                tracked += len(batch.frames)
                objects.update(int(k) for frame in batch.frames for k in frame.masks)
                task = asyncio.get_running_loop().create_task(write(batch.frames))

                writes.add(task)
                task.add_done_callback(writes.discard)
                if time.perf_counter() - last_report >= PROGRESS_INTERVAL_S:
                    last_report = time.perf_counter()
                    elapsed = last_report - started
                    await ctx.progress(
                        "propagate",
                        100.0 * len(written) / total,
                        {
                            "frames_done": len(written),
                            "frames": total,
                            "fps": round(tracked / elapsed, 2) if elapsed > 0 else None,
                        },
                    )
                for finished in [t for t in writes if t.done()]:
                    finished.result()  # a failed write fails the stage now, not at the end
        except BaseException:
            stream.cancel()  # stop tracking in the replica (cancel, timeout, lost lease)
            # Writes under way finish (a few ms each; their threads would go on anyway): left
            # running, they landed after a deleted video's folder was removed, for ever.
            await asyncio.shield(asyncio.gather(*writes, return_exceptions=True))
            raise
        await asyncio.gather(*writes)
    seconds = time.perf_counter() - started
    missing = {f for one in passes for f in one.frames} - written
    if missing:
        raise RuntimeError(f"{len(missing)} frames got no masks (first: {min(missing)})")
    await ctx.progress("propagate", 100.0)
    return {
        "video_id": video_id,
        "frames": total,
        "tracked_this_attempt": tracked,
        "objects": sorted(objects),
        "seconds": round(seconds, 3),
        "fps": round(tracked / seconds, 2) if seconds > 0 else None,
        "passes": [
            {
                "start": p.start,
                "direction": "backward" if p.reverse else "forward",
                "frames": len(p.frames),
            }
            for p in passes
        ],
        "resumed_from": resumed,
    }


# Each stage's runner, by the name its declaration gives (serve_app/jobs/stages.py).
STAGE_RUNNERS = {stage.name: globals()[stage.runner] for stage in STAGES}
PROGRESS_INTERVAL_S = 0.5  # store writes of a propagation's progress, at most this often
