"""Synchronous model calls for interactive use: one Segmenter or Detector call per request, and
the detector model registry. What serve_app/predict/router.py calls once it has read the HTTP
request; every limit is checked here, in the ingress, before a model is called (its time is
shared by every client)."""

from __future__ import annotations

import asyncio
import base64
import time

from pydantic import Field

from deployments.errors import InvalidInput
from deployments.protocol import (
    IMAGE_ID,
    DetectRequest,
    EncodedMask,
    SegmentImageRequest,
    image_id_of,
    loaded_models_by_replica,
)
from serve_app.admin import recent
from serve_app.http.errors import ApiError, to_api_error
from serve_app.imaging import ImageHeader, check_prompt_in_image, read_header
from serve_app.predict.images import image_source, store_image
from serve_app.predict.schemas import (
    DetectOptions,
    DetectResponse,
    ModelList,
    ModelPublic,
    ModelReloaded,
    SegmentResponse,
)
from serve_app.redact import safe_label
from serve_app.schemas import Prompt
from serve_app.services import Services


class SegmentOptions(Prompt):
    multimask: bool = Field(False, description="Return SAM2's three candidate masks.")
    png: bool = Field(False, description="Also return each mask as a base64 PNG.")
    min_score: float = Field(
        0.5, ge=0.0, le=1.0, description="Text prompts: keep instances scoring above this."
    )
    max_masks: int = Field(
        50, ge=1, le=200, description="Text prompts: at most this many instances, best first."
    )


def check_text_supported(services: Services, text: str | None, param: str) -> None:
    """A text prompt on a Segmenter without a text encoder: 422 now, not a model call."""
    if text is not None and services.settings.segment_backend != "sam3":
        raise ApiError(
            422,
            "text prompts need the sam3 segmenter backend (MESHLINE_SEGMENT_BACKEND=sam3); this "
            f"service runs {services.settings.segment_backend}, which takes points and boxes",
            "unsupported_prompt",
            param,
        )


# The JSON body's third image source on /v1/segment (read_inputs(id_field="image_id")).
IMAGE_ID_FIELD = {
    "image_id": {
        "type": "string",
        "pattern": IMAGE_ID.pattern,
        "description": "An image sent before (the image_id of its answer): no image is sent "
        "again; 404 if the service no longer has it.",
    }
}


class DetectRequestOptions(DetectOptions):
    max_det: int = Field(300, ge=1, le=10000)


def checked_model(services: Services, model_id: str) -> str:
    """404 for ids the registry does not know (checked here, before routing)."""
    try:
        return services.registry.resolve(model_id).model_id
    except InvalidInput as exc:
        error = to_api_error(exc)  # UnknownModel → 404, a malformed id → 422
        assert error is not None
        raise error from None


async def segment(
    services: Services, data: bytes, options: SegmentOptions, image_id: str | None = None
) -> SegmentResponse:
    """Masks for a prompt on an image sent now (``data``: its header is checked here, the
    Segmenter decodes it), or on one sent before, named by ``image_id`` (no image crosses: the
    replica holding its embedding answers; another one fetches the stored file)."""
    settings = services.settings
    check_text_supported(services, options.text, "options.text")
    started = time.perf_counter()
    stored: asyncio.Task[None] | None = None
    if image_id is None:
        header, image_id = await asyncio.to_thread(_header_and_id, data, settings.max_image_pixels)
        # max_prompt_points was checked when the options were read; the prompt must lie in
        # the image (for an id, the replica checks it against the image it holds).
        check_prompt_in_image(options.points, options.box, header.width, header.height)
        bound = int(settings.segment_image_store_mb * 2**20)
        stored = asyncio.create_task(
            asyncio.to_thread(store_image, services.artifacts, image_id, data, bound)
        )
    elif not IMAGE_ID.fullmatch(image_id):
        raise ApiError(422, "image_id must be 64 lower-case hex digits (SHA-256)", param="image_id")
    request = SegmentImageRequest(
        image_id,
        data=data or None,
        source=image_source(services.artifacts, image_id),
        points=[list(p) for p in options.points] if options.points else None,
        labels=list(options.labels) if options.labels else None,
        box=list(options.box) if options.box else None,
        multimask=options.multimask,
        text=options.text,
        min_score=options.min_score,
        max_masks=options.max_masks,
        mask_format="rle+png" if options.png else "rle",  # encoded in the replica
    )
    try:
        result = await services.handles.segmenter_client.segment_image(request)
    finally:
        if stored is not None:
            await stored  # the id is usable on every replica once the answer is out
    height, width = result.size
    recent.note(recent.model_name(services.models, "Segmenter"), width, height)
    found = zip(result.encoded_masks(), result.scores, strict=True)
    masks = [_mask_summary(mask, score) for mask, score in found]
    return SegmentResponse(
        width=width,
        height=height,
        masks=masks,
        prompt=result.prompt.to_dict(),
        weights=services.models["Segmenter"]["weights"],
        seconds=round(time.perf_counter() - started, 4),
        image_id=image_id,
        cached=bool(result.cached),
    )


def _mask_summary(mask: EncodedMask, score: float) -> dict[str, object]:
    return {
        "score": round(float(score), 5),
        "area": mask.area,
        "bbox": mask.bbox,
        "rle": mask.rle,
        "png_base64": base64.b64encode(mask.png).decode("ascii") if mask.png else None,
    }


def _header_and_id(data: bytes, max_pixels: int) -> tuple[ImageHeader, str]:
    return read_header(data, max_pixels), image_id_of(data)


async def detect(
    services: Services, data: bytes, options: DetectRequestOptions, model_id: str
) -> DetectResponse:
    """Detections by registered model ``model_id`` (404 if unknown), as of its last reload.
    The image's header is checked here; the encoded file goes to the Detector, which decodes
    it on its device (and checks the pixel bound again)."""
    # Resolving may list S3 (cached): never on the event loop.
    model_id = await asyncio.to_thread(checked_model, services, model_id)
    max_pixels = services.settings.max_image_pixels
    header = await asyncio.to_thread(read_header, data, max_pixels)
    recent.note(model_id, header.width, header.height)
    started = time.perf_counter()
    generation = await asyncio.to_thread(services.store.model_generation, model_id)
    request = DetectRequest(
        data,
        conf=options.conf,
        iou=options.iou,
        imgsz=options.imgsz,
        max_det=options.max_det,
        classes=options.classes,
        max_pixels=max_pixels,
    )
    found = await services.handles.detector_client.detect(request, model_id, generation)
    masks = found.masks_rle or [None] * len(found.boxes)
    detections = [
        {
            "box": box,
            "box_normalized": norm,
            "score": score,
            "class_id": cid,
            "class_name": cname,
            "mask_rle": rle,
        }
        for box, norm, score, cid, cname, rle in zip(
            found.boxes,
            found.boxes_normalized,
            found.scores,
            found.class_ids,
            found.class_names,
            masks,
            strict=True,
        )
    ]
    return DetectResponse(
        model=found.model_id or model_id,
        width=found.image_size[0] if found.image_size else header.width,
        height=found.image_size[1] if found.image_size else header.height,
        detections=detections,
        weights=services.models["Detector"]["weights"],
        seconds=round(time.perf_counter() - started, 4),
    )


async def list_models(services: Services, admin: bool) -> ModelList:
    """Every registered detector model, with what the live replicas know of it. Sources may
    name buckets, hosts or signed queries: ``admin`` callers see them, others the file name."""
    entries = await asyncio.to_thread(services.registry.entries)
    replicas = await asyncio.to_thread(loaded_models_by_replica, services.app_name)
    listed = []
    for entry in entries.values():
        holders = sorted(r for r, held in replicas.items() if entry.model_id in held.models)
        info = next(
            (
                held.info[entry.model_id]
                for held in replicas.values()
                if entry.model_id in held.info
            ),
            None,
        )
        listed.append(
            ModelPublic(
                model_id=entry.model_id,
                source=entry.source if admin else safe_label(entry.source),
                origin=entry.origin,  # type: ignore[arg-type]
                task=info.task if info else None,
                class_names=info.names if info else None,
                loaded_on=holders,
            )
        )
    return ModelList(models=listed)


async def reload_model(services: Services, model_id: str) -> ModelReloaded:
    """Bump the model's generation (the router's docstring says what that does)."""

    checked = await asyncio.to_thread(checked_model, services, model_id)
    generation = await asyncio.to_thread(services.store.bump_model_generation, checked)
    return ModelReloaded(model_id=checked, generation=generation)
