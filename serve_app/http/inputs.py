"""Read a request's image (multipart upload, or JSON with image_url / image_base64), options."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from serve_app.http.errors import ApiError
from serve_app.http.fetch import fetch_input
from serve_app.schemas import LIMIT_ERROR, request_context
from serve_app.settings import Settings

OptionsT = TypeVar("OptionsT", bound=BaseModel)
T = TypeVar("T")

MULTIPART = "multipart/form-data"
JSON = "application/json"

# Small JSON bodies (a video prompt, propagate options) are read at most this far.
MAX_SMALL_JSON_BYTES = 256 * 1024

# A JSON string: a quote, then non-quote/non-backslash runs or escaped characters, up to the
# closing quote — or to the end of the input (an unterminated string must not make the scan
# restart inside it: that would be quadratic). Possessive, so it never backtracks.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_CHUNK = 1 << 20
# Below this many brackets a Python loop beats numpy's per-call overhead (an options field's
# few brackets: ~2 µs instead of ~150 µs of numpy calls on every submit, on the event loop).
_SMALL_BRACKETS = 256


@dataclass(frozen=True)
class JsonShape:
    depth: int  # deepest bracket nesting outside strings
    strings: int  # number of strings
    structure_bytes: int  # bytes outside strings


def json_shape(data: bytes) -> JsonShape:
    """Nesting depth, string count and structure size of a JSON text, in one linear pass at C
    speed (no recursion, no Python loop per character), before anything parses it.

    Strings are cut out first (escapes honoured), then only brackets are kept and their running
    depth is a cumulative sum. For any text json.loads accepts, the depth is exact; for others
    the scan may over-count, and those fail to parse anyway.
    """
    outside, strings = _JSON_STRING.subn(b"", data)
    brackets = outside.translate(None, _NOT_A_BRACKET)
    depth = best = 0
    if len(brackets) <= _SMALL_BRACKETS:
        for bracket in brackets:
            depth += 1 if bracket in b"[{" else -1
            best = max(best, depth)
    elif brackets.count(b"[") + brackets.count(b"{") > 0:
        # In chunks, carrying the running depth: memory stays small whatever the body's size.
        for start in range(0, len(brackets), _DEPTH_CHUNK):
            steps = np.frombuffer(brackets[start : start + _DEPTH_CHUNK], dtype=np.uint8)
            opens = (steps == ord("[")) | (steps == ord("{"))
            delta = opens.astype(np.int32) * 2 - 1
            running = np.cumsum(delta, dtype=np.int64) + depth
            best = max(best, int(running.max()))
            depth = int(running[-1])
    return JsonShape(best, strings, len(outside))


class NonFiniteNumber(ValueError):
    pass


class IntegerOutOfRange(ValueError):
    pass


# Integers a client may send: 64-bit ids (a database's, a Label Studio import's) pass; nothing
# the service counts or measures comes near, and a 400-digit one overflows float() downstream
# (a percent, a duration: OverflowError, a 500).
MAX_JSON_INT = 2**64
_MAX_JSON_INT_DIGITS = len(str(MAX_JSON_INT))


def _refuse_constant(name: str) -> float:
    raise NonFiniteNumber(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise NonFiniteNumber(f"{text[:32]} is out of the range of a finite number")
    return value


def _bounded_int(text: str) -> int:
    # JSON has no leading zeros: the digit count bounds the value before int() converts it
    # (int() is quadratic in the digits and refuses more than 4300).
    if len(text.lstrip("-")) <= _MAX_JSON_INT_DIGITS:
        value = int(text)
        if abs(value) <= MAX_JSON_INT:
            return value
    shown = text if len(text) <= 24 else f"{text[:16]}… ({len(text)} characters)"
    raise IntegerOutOfRange(f"integer {shown} is outside [-2**64, 2**64]")


def load_json(data: bytes | str, settings: Settings, param: str, bad_status: int = 400) -> Any:
    """Parse client JSON after bounding its depth (max_json_depth), string count and structure
    size; NaN, Infinity, numbers that overflow to infinity and integers beyond 2**64 are
    refused (422).

    ``bad_status``: the status of text that is not JSON (400 for a body, 422 for a field).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    shape = json_shape(raw)
    if shape.depth > settings.max_json_depth:
        raise ApiError(
            422,
            f"{param} is nested {shape.depth} levels deep; the limit is "
            f"{settings.max_json_depth} (max_json_depth)",
            LIMIT_ERROR,
            param,
        )
    # Besides its strings' characters: the structure (brackets, numbers, literals) and the number
    # of strings. A base64 image is one string; no legitimate options come near either bound.
    if shape.strings > settings.max_json_strings:
        raise ApiError(
            413,
            f"{param} holds {shape.strings} strings; the limit is {settings.max_json_strings} "
            "(max_json_strings)",
            "payload_too_large",
            param,
        )
    if shape.structure_bytes > settings.max_json_structure_kb * 1024:
        raise ApiError(
            413,
            f"{param} has {shape.structure_bytes} bytes outside its strings; the limit is "
            f"{settings.max_json_structure_kb * 1024} (max_json_structure_kb)",
            "payload_too_large",
            param,
        )
    try:
        return json.loads(
            raw,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except NonFiniteNumber as exc:
        raise ApiError(
            422, f"{param}: {exc} (NaN and Infinity are refused)", "validation_error", param
        ) from None
    except IntegerOutOfRange as exc:
        raise ApiError(
            422, f"{param}: {exc} (64-bit integers)", "validation_error", param
        ) from None
    except RecursionError:  # unreachable below max_json_depth's bound (512): belt and braces
        raise ApiError(
            422, f"{param} is nested too deeply (max_json_depth)", LIMIT_ERROR, param
        ) from None
    except ValueError:  # JSONDecodeError, bad UTF-8
        what = "request body" if param == "body" else param
        raise ApiError(bad_status, f"{what} is not valid JSON", "invalid_request", param) from None


def validate_model(model: type[OptionsT], value: Any, settings: Settings, prefix: str) -> OptionsT:
    """``model`` from parsed JSON with the configured limits (max_prompt_points) in force."""
    try:
        return model.model_validate(value, context=request_context(settings.max_prompt_points))
    except ValidationError as exc:
        raise validation_error(exc, prefix) from None


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The body, read at most ``limit`` bytes far (413 beyond: the rest is never buffered)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"{what} exceeds {limit} bytes", "payload_too_large")
        chunks.append(chunk)
    if size >= OFF_LOOP_BYTES and len(chunks) > 1:
        # A 33 MB body is ~40 ms of copying and page faults: in a thread (join drops the GIL).
        return await asyncio.to_thread(b"".join, chunks)
    return b"".join(chunks)


async def read_json_model(
    request: Request,
    settings: Settings,
    model: type[OptionsT],
    limit: int = MAX_SMALL_JSON_BYTES,
    allow_empty: bool = False,
) -> OptionsT:
    """A small JSON body as ``model`` (video prompts, propagate options): bounded size, depth
    and numbers, configured limits in force. An empty body is ``model()`` if ``allow_empty``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != JSON and not content_type.endswith("+json"):
        raise ApiError(
            415,
            f"Content-Type {content_type!r} is not accepted; send {JSON}",
            "unsupported_media_type",
        )
    body = await read_body(request, limit)
    if not body.strip():
        if allow_empty:
            return validate_model(model, {}, settings, "body")
        raise ApiError(400, "request body is empty")
    payload = await _off_loop(load_json, body, settings, "body")
    return validate_model(model, payload, settings, "body")


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower-case ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass
class RequestInputs:
    image: bytes  # b"" when the JSON body named an image by ``id_field`` instead
    extra_uploads: dict[str, tuple[bytes, str]]  # by field: (data, file name)
    options: BaseModel
    image_id: str | None = None  # the ``id_field`` value of a JSON body


def validation_error(exc: ValidationError, prefix: str) -> ApiError:
    """The first error as a 422; a limit (configured or a static max_length) is typed
    ``limit_exceeded``."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    param = f"{prefix}.{loc}" if loc else prefix
    kind = LIMIT_ERROR if first.get("type") in (LIMIT_ERROR, "too_long") else "validation_error"
    return ApiError(422, f"{param}: {first.get('msg')}", kind, param)


OFF_LOOP_BYTES = 64 * 1024  # smaller inputs parse in well under a millisecond: stay on the loop


async def _off_loop(function: Callable[..., T], data: bytes | str, *args: Any) -> T:
    """``function(data, *args)``, in a thread when ``data`` is large."""
    if len(data) < OFF_LOOP_BYTES:
        return function(data, *args)
    return await asyncio.to_thread(function, data, *args)


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
    # Closed now, in the thread pool when spooled to disk (over 1 MB): left to the request's
    # end, the temporary file is closed and deleted on the event loop (~15 ms for 12 MB).
    await upload.close()
    if len(data) > limit:
        raise ApiError(413, f"{field} exceeds {limit} bytes", "payload_too_large", field)
    return data


async def read_form(request: Request, max_files: int, max_fields: int) -> FormData:
    """The multipart form; text fields (``options``) are bounded by MAX_SMALL_JSON_BYTES
    (files are spooled, bounded by the body limit and ``read_upload``)."""
    try:
        return await request.form(
            max_files=max_files, max_fields=max_fields, max_part_size=MAX_SMALL_JSON_BYTES
        )
    except Exception as exc:  # noqa: BLE001 — multipart parsers raise their own error types
        detail = str(getattr(exc, "detail", "") or "")
        if "maximum size" in detail:
            raise ApiError(
                413,
                f"a multipart text field exceeds {MAX_SMALL_JSON_BYTES} bytes",
                "payload_too_large",
                "options",
            ) from None
        reason = detail or exc.__class__.__name__
        raise ApiError(400, f"malformed multipart body ({reason})") from None


def options_field(raw: object, settings: Settings, options_model: type[OptionsT]) -> OptionsT:
    """The multipart ``options`` text field: bounded JSON, then the model (limits in force)."""
    if raw is None or raw == "":
        raw = "{}"
    if not isinstance(raw, str):
        raise ApiError(422, "options must be a JSON text field", "validation_error", "options")
    value = load_json(raw, settings, "options", bad_status=422)
    return validate_model(options_model, value, settings, "options")


async def read_inputs(
    request: Request,
    settings: Settings,
    options_model: type[OptionsT],
    extra_files: tuple[str, ...] = (),
    id_field: str | None = None,
) -> RequestInputs:
    """Multipart: ``image`` file, optional ``options`` JSON field and extra files.

    JSON: ``{"image_url": ..., "options": {...}}``; the URL is fetched with SSRF checks. With
    ``id_field``, a JSON body may name an image the API already has instead (``image_id``).
    """
    limit = int(settings.max_upload_mb * 1024 * 1024)
    content_type = media_type(request)
    if content_type == MULTIPART:
        form = await read_form(request, max_files=1 + len(extra_files), max_fields=8)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                422, "multipart body needs an 'image' file field", "missing_input", "image"
            )
        image = await read_upload(upload, "image", limit)
        extra_uploads = {}
        for field in extra_files:
            item = form.get(field)
            if isinstance(item, UploadFile):
                extra_uploads[field] = (
                    await read_upload(item, field, limit),
                    item.filename or field,
                )
        raw = form.get("options")
        if isinstance(raw, str) and len(raw) >= OFF_LOOP_BYTES:  # up to MAX_SMALL_JSON_BYTES
            options = await asyncio.to_thread(options_field, raw, settings, options_model)
        else:
            options = options_field(raw, settings, options_model)
        return RequestInputs(image, extra_uploads, options)
    if content_type == JSON:
        json_limit = limit * 4 // 3 + 65536  # room for a base64 image of `limit` bytes
        body = await read_body(request, json_limit, "JSON body")
        if not body:
            raise ApiError(400, "request body is empty")
        # A body of up to ~33 MB (a base64 image): parse it off the event loop, so /healthz
        # and cheap reads on this replica are not held up.
        payload = await _off_loop(load_json, body, settings, "body")
        if not isinstance(payload, dict):
            raise ApiError(422, "JSON body must be an object", "validation_error")
        keys = ("image_url", "image_base64", *((id_field,) if id_field else ()))
        sources = [key for key in keys if key in payload]
        if len(sources) != 1 or not isinstance(payload[sources[0]], str):
            named = ", ".join(repr(key) for key in keys[:-1]) + f" or {keys[-1]!r}"
            raise ApiError(
                422,
                f"JSON body needs exactly one of {named} (a string)",
                "missing_input",
                "image_url",
            )
        unknown = set(payload) - {*keys, "options"}
        if unknown:
            raise ApiError(
                422, f"unknown fields: {sorted(unknown)}", "validation_error", min(unknown)
            )
        options = validate_model(options_model, payload.get("options") or {}, settings, "options")
        if sources[0] == id_field:
            return RequestInputs(b"", {}, options, image_id=payload[id_field])
        if sources[0] == "image_base64":
            image = await _off_loop(_decode_base64, payload["image_base64"], limit)
            return RequestInputs(image, {}, options)
        image = await fetch_input(settings, payload["image_url"], limit, "image_url")
        return RequestInputs(image, {}, options)
    if not content_type:
        raise ApiError(400, "request body is empty or has no Content-Type")
    raise ApiError(
        415,
        f"Content-Type {content_type!r} is not accepted; send {MULTIPART} or {JSON}",
        "unsupported_media_type",
    )


# Request-body models the routes read themselves (no FastAPI body parameter): their schemas
# are added to components/schemas by ``add_body_schemas`` so that the bodies documented here
# are exact (generated clients and schemathesis then send what the API accepts).
BODY_MODELS: dict[str, type[BaseModel]] = {}


def _schema_ref(model: type[BaseModel]) -> dict[str, str]:
    BODY_MODELS[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def add_body_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Put every model named in a documented body (and its nested models) in components."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, model in BODY_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for nested, definition in schema.pop("$defs", {}).items():
            components.setdefault(nested, definition)
        components.setdefault(name, schema)
    return openapi


def openapi_body(
    options_model: type[BaseModel],
    extra_files: tuple[str, ...] = (),
    file_field: str = "image",
    json_body: type[BaseModel] | None = None,
    id_field: dict[str, Any] | None = None,
) -> dict:
    """OpenAPI requestBody documenting both accepted content types: multipart (the file, and
    ``options`` as a JSON text part) or JSON (a URL or base64 image, and ``options``)."""
    options = _schema_ref(options_model)
    file_props = {
        name: {"type": "string", "format": "binary"} for name in (file_field, *extra_files)
    }
    if json_body is not None:
        json_schema: dict[str, Any] = _schema_ref(json_body)
    else:
        json_schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "image_url": {
                    "type": "string",
                    "format": "uri",
                    "description": "http(s):// or s3:// (allowed buckets)",
                },
                "image_base64": {"type": "string", "description": "the image file, base64"},
                **(id_field or {}),  # read_inputs(id_field=...): an image the API already has
                "options": options,
            },
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "required": [file_field],
                        "properties": {**file_props, "options": options},
                    },
                    # The options part is JSON text: its schema is the options model.
                    "encoding": {"options": {"contentType": JSON}},
                },
                JSON: {"schema": json_schema},
            },
        }
    }


def openapi_json_body(model: type[BaseModel], required: bool = True) -> dict:
    """OpenAPI requestBody for a route that reads its JSON body itself (read_json_model)."""
    return {
        "requestBody": {"required": required, "content": {JSON: {"schema": _schema_ref(model)}}}
    }
