"""Read a request's image (multipart upload, or JSON with image_url / image_base64), options."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from serve_app.errors import ApiError
from serve_app.fetch import fetch_s3, fetch_url
from serve_app.settings import Settings

OptionsT = TypeVar("OptionsT", bound=BaseModel)

MULTIPART = "multipart/form-data"
JSON = "application/json"


@dataclass
class RequestInputs:
    image: bytes
    files: dict[str, tuple[bytes, str]]  # extra uploads by field: (data, filename)
    options: BaseModel


def validation_error(exc: ValidationError, prefix: str) -> ApiError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    param = f"{prefix}.{loc}" if loc else prefix
    return ApiError(422, f"{param}: {first.get('msg')}", "validation_error", param)


def _decode_base64(text: str, limit: int) -> bytes:
    if text.startswith("data:"):  # a data: URL from a browser
        text = text.split(",", 1)[-1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "image_base64 is not valid base64", param="image_base64") from None
    if len(data) > limit:
        raise ApiError(413, f"image exceeds {limit} bytes", "payload_too_large", "image_base64")
    return data


async def read_upload(upload: UploadFile, field: str, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"{field} exceeds {limit} bytes", "payload_too_large", field)
    return data


async def read_inputs(
    request: Request,
    settings: Settings,
    options_model: type[OptionsT],
    extra_files: tuple[str, ...] = (),
) -> RequestInputs:
    """Multipart: ``image`` file, optional ``options`` JSON field and extra files.

    JSON: ``{"image_url": ..., "options": {...}}``; the URL is fetched with SSRF checks.
    """
    limit = int(settings.max_upload_mb * 1024 * 1024)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == MULTIPART:
        try:
            form = await request.form(
                max_files=1 + len(extra_files), max_fields=8, max_part_size=limit
            )
        except Exception as exc:  # noqa: BLE001 — multipart parsers raise their own error types
            raise ApiError(400, f"malformed multipart body ({exc.__class__.__name__})") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                422, "multipart body needs an 'image' file field", "missing_input", "image"
            )
        image = await read_upload(upload, "image", limit)
        files = {}
        for field in extra_files:
            item = form.get(field)
            if isinstance(item, UploadFile):
                files[field] = (await read_upload(item, field, limit), item.filename or field)
        raw = form.get("options")
        if raw is not None and not isinstance(raw, str):
            raise ApiError(422, "options must be a JSON text field", "validation_error", "options")
        try:
            options = options_model.model_validate_json(raw or "{}")
        except ValidationError as exc:
            raise validation_error(exc, "options") from None
        return RequestInputs(image, files, options)
    if content_type == JSON:
        body = await request.body()
        if not body:
            raise ApiError(400, "request body is empty")
        json_limit = limit * 4 // 3 + 65536  # room for a base64 image of `limit` bytes
        if len(body) > json_limit:
            raise ApiError(413, f"JSON body exceeds {json_limit} bytes", "payload_too_large")
        try:
            payload = json.loads(body)
        except ValueError:
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(422, "JSON body must be an object", "validation_error")
        sources = [key for key in ("image_url", "image_base64") if key in payload]
        if len(sources) != 1 or not isinstance(payload[sources[0]], str):
            raise ApiError(
                422,
                "JSON body needs exactly one of 'image_url' or 'image_base64' (a string)",
                "missing_input",
                "image_url",
            )
        unknown = set(payload) - {"image_url", "image_base64", "options"}
        if unknown:
            raise ApiError(
                422, f"unknown fields: {sorted(unknown)}", "validation_error", min(unknown)
            )
        try:
            options = options_model.model_validate(payload.get("options") or {})
        except ValidationError as exc:
            raise validation_error(exc, "options") from None
        if sources[0] == "image_base64":
            image = _decode_base64(payload["image_base64"], limit)
            return RequestInputs(image, {}, options)
        url = payload["image_url"]
        if url.startswith("s3://"):
            image = await asyncio.to_thread(
                fetch_s3, url, limit, settings.s3_endpoint_url, settings.s3_input_buckets
            )
        else:
            image = await fetch_url(
                url, limit, settings.url_fetch_timeout_s, settings.url_allow_private
            )
        return RequestInputs(image, {}, options)
    if not content_type:
        raise ApiError(400, "request body is empty or has no Content-Type")
    raise ApiError(
        415,
        f"Content-Type {content_type!r} is not accepted; send {MULTIPART} or {JSON}",
        "unsupported_media_type",
    )


def openapi_body(options_schema: str, extra_files: tuple[str, ...] = ()) -> dict:
    """OpenAPI requestBody documenting both accepted content types."""
    file_props = {name: {"type": "string", "format": "binary"} for name in ("image", *extra_files)}
    return {
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            **file_props,
                            "options": {
                                "type": "string",
                                "description": f"JSON of {options_schema}",
                            },
                        },
                    }
                },
                JSON: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "image_url": {
                                "type": "string",
                                "format": "uri",
                                "description": "http(s):// or s3:// (allowed buckets)",
                            },
                            "image_base64": {
                                "type": "string",
                                "description": "the image file, base64",
                            },
                            "options": {
                                "type": "object",
                                "description": f"{options_schema} object",
                            },
                        },
                    }
                },
            },
        }
    }
