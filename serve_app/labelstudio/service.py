"""The Label Studio ML backend: setup, batch pre-annotation (YOLO), interactive smart tools
(SAM2). What serve_app/labelstudio/router.py calls once it has read the HTTP request.

Which detector model a project uses, in order: the backend's extra params in Label Studio
(``{"model": "<id>"}``, sent at /setup), a registered model named ``labelstudio-<project id>``
(a file in the models directory or a registry entry: no redeploy either way), else ``default``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from deployments.errors import InvalidInput
from deployments.netguard import UrlRefused, parse_http_url
from deployments.protocol import DetectRequest, DetectResult
from serve_app.http.errors import ApiError
from serve_app.http.inputs import validate_model
from serve_app.imaging import read_header
from serve_app.labelstudio import projects, video
from serve_app.labelstudio.access import LabelStudioAccess
from serve_app.labelstudio.config import Control, LabelConfig, parse_label_config
from serve_app.labelstudio.projects import ProjectSetup
from serve_app.labelstudio.results import brush, detections_to_results
from serve_app.labelstudio.schemas import (
    PredictIn,
    PredictOut,
    SetupIn,
    SetupOut,
    TaskPrediction,
)
from serve_app.predict.service import SegmentOptions, checked_model, segment
from serve_app.services import Services

logger = logging.getLogger("meshline.labelstudio")

TASK_CONCURRENCY = 4  # task images fetched and detected at once per request
IMAGE_IDS_KEPT = 4096  # task file URL → image_id, so a repeat click sends no image
# Controls the Detector pre-annotates (a -seg model's outlines and masks fill the last two).
PRE_ANNOTATED = ("rectanglelabels", "polygonlabels", "brushlabels")


class Backend:
    """Per ingress replica: Label Studio access, setup tokens, and which image id each task
    file had (the Segmenter keeps embeddings by image id)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.access = LabelStudioAccess(services.settings)
        self.setup_tokens: dict[str, str] = {}  # project key → the token sent at /setup
        # "<project id> <task file URL>" → (image_id, width, height)
        self.image_ids: OrderedDict[str, tuple[str, int, int]] = OrderedDict()

    def remember_image(self, url: str, image_id: str, width: int, height: int) -> None:
        self.image_ids[url] = (image_id, width, height)
        self.image_ids.move_to_end(url)
        while len(self.image_ids) > IMAGE_IDS_KEPT:
            self.image_ids.popitem(last=False)


def backend(services: Services) -> Backend:
    if services.labelstudio is None:
        services.labelstudio = Backend(services)
    return services.labelstudio


# Setup ------------------------------------------------------------------------------------
async def setup(services: Services, body: SetupIn, owner: str | None) -> SetupOut:
    config = parse_label_config(body.schema_)
    extra = projects.check_extra_params(body.extra_params)
    hostname = _hostname(body.hostname)
    record = ProjectSetup(projects.project_id(body.project, owner), hostname, extra)
    model_id = await asyncio.to_thread(_model_for, services, record)
    _conf(record)  # a bad conf is refused now, where Label Studio shows it
    video.wait_s(record)
    # Label Studio calls /setup as a project opens: its models start meanwhile, the Detector
    # with the project's model.
    await services.runner.waker.wake_with_model(deployments_used(config), model_id)
    version = await model_version(services, config, model_id)
    record = replace(record, model_version=version)
    await asyncio.to_thread(projects.save, services.artifacts, record)
    if body.access_token:
        backend(services).setup_tokens[record.project_id] = body.access_token
    return SetupOut(model_version=version)


def _hostname(hostname: str | None) -> str | None:
    """Label Studio's own URL (its HOSTNAME), the base of relative task URLs when
    labelstudio_url is unset: refused here, where Label Studio shows the error, rather than at
    every predict."""
    if not hostname:
        return None
    try:
        parse_http_url(hostname)
    except UrlRefused as refused:
        raise ApiError(422, f"hostname: {refused.message}", refused.kind, "hostname") from None
    return hostname


def deployments_used(config: LabelConfig) -> list[str]:
    """The model deployments a project's predictions call: video rectangles are tracked by the
    Segmenter; otherwise the Detector pre-annotates rectangles, polygons and brushes, and the
    Segmenter answers smart-tool prompts, which need a BrushLabels control."""
    if config.of_type("videorectangle"):
        return ["Segmenter"]
    used = []
    if config.of_type(*PRE_ANNOTATED):
        used.append("Detector")
    if config.of_type("brushlabels"):
        used.append("Segmenter")
    return used


async def versions(services: Services, project: str | None, owner: str | None) -> list[str]:
    """The project's current model version (meshline keeps no older ones)."""
    if project is None:
        return []
    key = projects.project_id(project, owner)
    record = await asyncio.to_thread(projects.load, services.artifacts, key)
    return [record.model_version] if record.model_version else []


def _model_for(services: Services, record: ProjectSetup) -> str:
    """The project's detector model id (module docstring); 422 for an unknown extra param."""
    wanted = record.extra_params.get("model")
    if wanted is not None:
        if not isinstance(wanted, str):
            raise ApiError(422, "extra_params.model must be a model id", param="extra_params")
        try:
            return checked_model(services, wanted)
        except ApiError as exc:
            raise ApiError(422, exc.message, exc.type, "extra_params.model") from None
    ls_id = record.project_id.rsplit("-", 1)[-1]
    try:
        return services.registry.resolve(f"labelstudio-{ls_id}").model_id
    except InvalidInput:
        return "default"


def _conf(record: ProjectSetup) -> tuple[float, int]:
    """The detector's confidence threshold and most boxes per image (extra params)."""
    conf, max_det = record.extra_params.get("conf", 0.25), record.extra_params.get("max_det", 100)
    if isinstance(conf, bool) or not isinstance(conf, int | float) or not 0.0 <= conf <= 1.0:
        raise ApiError(422, "extra_params.conf must be a number in [0, 1]", param="extra_params")
    if isinstance(max_det, bool) or not isinstance(max_det, int) or not 1 <= max_det <= 1000:
        raise ApiError(
            422,
            "extra_params.max_det must be an integer in [1, 1000]",
            "limit_exceeded",
            "extra_params",
        )
    return float(conf), max_det


async def model_version(services: Services, config: LabelConfig, model_id: str) -> str:
    """Changes when the answers would: the detector model's reloads, the Segmenter's weights
    (Label Studio predicts again only for tasks without a prediction of this version)."""
    parts = []
    if config.of_type(*PRE_ANNOTATED):
        generation = await asyncio.to_thread(services.store.model_generation, model_id)
        parts.append(f"{model_id}@{generation}")
    if config.of_type("brushlabels", "keypointlabels", "videorectangle"):
        weights = str(services.models.get("Segmenter", {}).get("weights", "sam2"))
        parts.append("sam2-" + weights.rsplit("/", 1)[-1][:40])
    return "meshline-" + "+".join(parts)


# Predict ----------------------------------------------------------------------------------
async def predict(services: Services, body: PredictIn, owner: str | None) -> PredictOut:
    settings = services.settings
    if len(body.tasks) > settings.labelstudio_max_tasks:
        raise ApiError(
            413,
            f"{len(body.tasks)} tasks; one request may carry at most "
            f"{settings.labelstudio_max_tasks} (labelstudio_max_tasks)",
            "limit_exceeded",
            "tasks",
        )
    config = parse_label_config(body.label_config)
    key = projects.project_id(body.project or "0", owner)
    record = await asyncio.to_thread(projects.load, services.artifacts, key)
    model_id = await asyncio.to_thread(_model_for, services, record)
    version = await model_version(services, config, model_id)
    context = body.params.context if body.params else None
    tracks = bool(config.of_type("videorectangle"))
    # Tracking jobs are waited for until one deadline per request (Label Studio waits 100 s).
    deadline = time.monotonic() + video.wait_s(record) if tracks else 0.0
    if context is not None and context.result:
        task = body.tasks[0]
        if tracks and any(r.get("type") == "videorectangle" for r in context.result):
            one = await video_track(
                services, config, record, task, context.result, version, owner, deadline
            )
            return PredictOut(results=[one], model_version=version)
        one = await interactive(services, config, record, task, context.result)
        return PredictOut(
            results=[one.model_copy(update={"model_version": version})], model_version=version
        )
    semaphore = asyncio.Semaphore(TASK_CONCURRENCY)

    async def one_task(task: dict[str, Any]) -> TaskPrediction | ApiError:
        async with semaphore:
            try:
                if tracks:
                    return await video_track(
                        services, config, record, task, None, version, owner, deadline
                    )
                return await pre_annotate(services, config, record, model_id, task, version)
            except ApiError as exc:
                logger.info("task %s not predicted: %s", task.get("id"), exc.message)
                return exc

    answers = await asyncio.gather(*(one_task(task) for task in body.tasks))
    errors = [a for a in answers if isinstance(a, ApiError)]
    if len(errors) == len(answers):
        raise errors[0]  # nothing to show: the first reason, as the caller's error
    results = [
        a if isinstance(a, TaskPrediction) else TaskPrediction(result=[], model_version=version)
        for a in answers
    ]
    return PredictOut(results=results, model_version=version)


def _task_file(control: Control, task: dict[str, Any]) -> str:
    data = task.get("data")
    url = data.get(control.value_key) if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise ApiError(
            422,
            f"task {task.get('id')} has no data.{control.value_key} for {control.to_name}",
            param="tasks",
        )
    if len(url) > 4096:
        raise ApiError(422, "task file URLs are at most 4096 characters", param="tasks")
    return url


async def _fetch(
    services: Services, record: ProjectSetup, url: str, limit: int | None = None
) -> bytes:
    ls = backend(services)
    token = ls.setup_tokens.get(record.project_id)
    return await ls.access.fetch(url, record.hostname, token, "task.data", limit)


async def video_track(
    services: Services,
    config: LabelConfig,
    record: ProjectSetup,
    task: dict[str, Any],
    context: list[dict[str, Any]] | None,
    version: str,
    owner: str | None,
    deadline: float,
) -> TaskPrediction:
    """VideoRectangle tracks (serve_app/labelstudio/video.py) for the annotator's keyframes
    (``context``) or, without context, the task's newest annotation's."""
    control = config.of_type("videorectangle")[0]
    url = _task_file(control, task)
    limit = services.settings.video_max_prompts
    if context is not None:
        regions = video.regions_of(context, control, limit)
    else:
        regions = video.annotated_regions(task, control, limit)
    if not regions:  # nothing drawn yet: nothing to track
        return TaskPrediction(result=[], model_version=version)

    async def fetch(file_url: str, max_bytes: int) -> bytes:
        return await _fetch(services, record, file_url, max_bytes)

    return await video.track(
        services, record, control, task, url, regions, owner, fetch, version, deadline
    )


async def pre_annotate(
    services: Services,
    config: LabelConfig,
    record: ProjectSetup,
    model_id: str,
    task: dict[str, Any],
    version: str,
) -> TaskPrediction:
    """Detections of the project's YOLO model as RectangleLabels (and PolygonLabels and
    BrushLabels from a -seg model's outlines and masks), labels matched by class name."""
    controls = config.of_type(*PRE_ANNOTATED)
    if not controls:
        return TaskPrediction(result=[], model_version=version)
    url = _task_file(controls[0], task)
    data = await _fetch(services, record, url)
    conf, max_det = _conf(record)
    found = await detect(services, data, model_id, conf, max_det)
    width, height = found.image_size
    masks = None
    if found.masks_rle is not None and config.of_type("brushlabels"):
        masks = [_decode(rle) for rle in found.masks_rle]
    mine = [c for c in controls if c.to_name == controls[0].to_name]
    results, skipped = await asyncio.to_thread(
        detections_to_results, mine, found, width, height, masks
    )
    if skipped:
        logger.info("task %s: classes with no label in the config: %s", task.get("id"), skipped)
    scores = [r["score"] for r in results]
    return TaskPrediction(
        result=results,
        score=round(float(np.mean(scores)), 4) if scores else None,
        model_version=version,
        skipped_classes=dict(skipped),
    )


def _decode(rle: dict[str, Any]) -> np.ndarray:
    counts = rle["counts"]
    encoded = {
        "size": rle["size"],
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }
    return mask_utils.decode(encoded).astype(bool)


async def detect(
    services: Services, data: bytes, model_id: str, conf: float, max_det: int
) -> DetectResult:
    max_pixels = services.settings.max_image_pixels
    await asyncio.to_thread(read_header, data, max_pixels)  # 4xx for what is not an image
    generation = await asyncio.to_thread(services.store.model_generation, model_id)
    request = DetectRequest(data, conf=conf, max_det=max_det, max_pixels=max_pixels)
    return await services.handles.detector_client.detect(request, model_id, generation)


# Interactive ------------------------------------------------------------------------------
def _pixels(value: dict[str, Any], key: str, size: int) -> float:
    """``value[key]``, a percent of ``size``, in pixels; ValueError unless a finite number
    (float() takes "nan", and a huge integer overflows it)."""
    try:
        pixels = float(value[key]) * size / 100.0
    except OverflowError:
        raise ValueError(key) from None
    if not math.isfinite(pixels):
        raise ValueError(key)
    return pixels


def _prompt(
    context: list[dict[str, Any]], width: int, height: int
) -> tuple[str | None, str | None, dict[str, Any]]:
    """Label Studio's smart-tool context (keypoints: clicks, is_positive false for Alt-clicks;
    a rectangle: a box), in percent, as a SAM2 prompt in pixels; with the to_name and label."""
    points: list[list[float]] = []
    labels: list[int] = []
    box = None
    to_name = label = None
    right, bottom = width - 1.0, height - 1.0
    for item in context:
        kind, value = item.get("type"), item.get("value")
        if not isinstance(value, dict) or kind not in ("keypointlabels", "rectanglelabels"):
            continue
        try:
            x, y = _pixels(value, "x", width), _pixels(value, "y", height)
        except (KeyError, TypeError, ValueError):
            raise ApiError(
                422, f"context {kind} needs finite numeric value.x and value.y", param="context"
            ) from None
        to_name = to_name or item.get("to_name")
        names = value.get(kind)
        if label is None and isinstance(names, list) and names and isinstance(names[0], str):
            label = names[0]
        if kind == "keypointlabels":
            points.append([min(max(x, 0.0), right), min(max(y, 0.0), bottom)])
            labels.append(0 if item.get("is_positive") is False else 1)
        else:
            try:
                w, h = _pixels(value, "width", width), _pixels(value, "height", height)
            except (KeyError, TypeError, ValueError):
                raise ApiError(
                    422,
                    "context rectangle needs finite numeric value.width and value.height",
                    param="context",
                ) from None
            # Clipped to the image: what is left of a box drawn past its edge, or nothing.
            box = [
                min(max(x, 0.0), right),
                min(max(y, 0.0), bottom),
                min(max(x + w, 0.0), right),
                min(max(y + h, 0.0), bottom),
            ]
            if not (box[0] < box[2] and box[1] < box[3]):
                raise ApiError(
                    422,
                    "context rectangle has no area inside the image (value.x, value.y, "
                    "value.width, value.height)",
                    param="context",
                )
    prompt: dict[str, Any] = {}
    if points:
        prompt.update(points=points, labels=labels)
    if box is not None:
        prompt["box"] = box
    if not prompt:
        raise ApiError(
            422, "context holds no keypointlabels or rectanglelabels result", param="context"
        )
    return to_name if isinstance(to_name, str) else None, label, prompt


async def interactive(
    services: Services,
    config: LabelConfig,
    record: ProjectSetup,
    task: dict[str, Any],
    context: list[dict[str, Any]],
) -> TaskPrediction:
    """A SAM2 mask for the annotator's clicks or box, as BrushLabels. A task file seen before
    is prompted by its image id (no fetch, no upload: the Segmenter's cached embedding)."""
    brushes = config.of_type("brushlabels")
    if not brushes:
        raise ApiError(
            422, "smart tools need a BrushLabels control in the label config", param="label_config"
        )
    url = _task_file(brushes[0], task)
    ls = backend(services)
    # Per key scope and project: a relative /data/upload/... path names another file in another
    # Label Studio (or project), and an id must not let one key prompt another's image.
    seen_as = f"{record.project_id} {url}"
    known = ls.image_ids.get(seen_as)
    data = b""
    if known is None:
        data = await _fetch(services, record, url)
        header = await asyncio.to_thread(read_header, data, services.settings.max_image_pixels)
        image_id, width, height = None, header.width, header.height
    else:
        image_id, width, height = known
    to_name, label, prompt = _prompt(context, width, height)
    control = next((b for b in brushes if b.to_name == to_name), brushes[0])
    options = validate_model(SegmentOptions, prompt, services.settings, "context")
    try:
        answer = await segment(services, data, options, image_id)
    except ApiError as exc:
        if exc.status != 404 or not image_id:
            raise
        data = await _fetch(services, record, url)  # the service no longer has that image
        answer = await segment(services, data, options, None)
    ls.remember_image(seen_as, answer.image_id, answer.width, answer.height)
    best = answer.masks[0]
    mask = _decode(best.rle)
    chosen = label if label in control.labels else (control.labels[0] if control.labels else label)
    item = await asyncio.to_thread(brush, control, mask, chosen or "object", best.score)
    return TaskPrediction(result=[item], score=round(float(best.score), 4), model_version="")
