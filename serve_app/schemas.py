"""Request and response schemas shared by the API's features: limits, the strict base model,
the point/box prompt, the error body. Each feature's own models are in its ``schemas.py``
(serve_app/jobs, videos, predict, admin)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from deployments.protocol import MAX_TEXT_CHARS

# Limits of request models (issue 13). Lists carry a static max_length (what pydantic refuses
# whatever the settings say); the configurable limits (max_prompt_points) come in through the
# validation context built by ``request_context`` — validating without one (stored job options
# read back) applies only the static bounds.
PROMPT_POINTS_CEILING = 4096  # the most max_prompt_points can usefully be set to
MAX_CLASSES = 1000  # detector class filters
MAX_NAME_CHARS = 128  # model ids, class names
MAX_URL_CHARS = 2048
MAX_FRAME_URLS = 2000
MAX_INDEX = 2**31 - 1  # frame indices, object ids: what SAM2 and the store keep as int32
LIMIT_ERROR = "limit_exceeded"  # pydantic error type (and API error type) of a configured limit


def request_context(max_prompt_points: int) -> dict[str, Any]:
    """The validation context that carries the configured request limits (settings)."""
    return {"max_prompt_points": max_prompt_points}


def _context_limit(info: ValidationInfo, name: str) -> int | None:
    context = info.context if isinstance(info.context, dict) else {}
    value = context.get(name)
    return int(value) if value is not None else None


class Strict(BaseModel):
    # NaN and ±Infinity are refused in every number of every request model.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Prompt(Strict):
    points: list[tuple[float, float]] | None = Field(
        None,
        max_length=PROMPT_POINTS_CEILING,
        description="[[x, y], ...] in pixels, inside the image; at most max_prompt_points "
        "(default 64).",
    )
    labels: list[Literal[0, 1]] | None = Field(
        None,
        max_length=PROMPT_POINTS_CEILING,
        description="1 = object, 0 = background (one per point).",
    )
    box: tuple[float, float, float, float] | None = Field(
        None, description="[x0, y0, x1, y1] in pixels, inside the image."
    )
    text: str | None = Field(
        None,
        max_length=MAX_TEXT_CHARS,
        pattern=r"\S",
        description='A noun phrase ("chair"): a mask for every instance (segment_backend=sam3; '
        "422 unsupported_prompt on sam2). Not combined with points or a box.",
    )

    @field_validator("points", "labels", mode="before")
    @classmethod
    def _at_most_max_points(cls, value: Any, info: ValidationInfo) -> Any:
        """Counted before a single item is validated: 200,000 points cost a len()."""
        limit = _context_limit(info, "max_prompt_points") or PROMPT_POINTS_CEILING
        if isinstance(value, list | tuple) and len(value) > limit:
            raise PydanticCustomError(
                LIMIT_ERROR,
                "{count} {field}; a prompt may carry at most {limit} (max_prompt_points)",
                {"count": len(value), "field": info.field_name, "limit": limit},
            )
        return value

    @model_validator(mode="after")
    def _labels_match_points(self) -> Prompt:
        if self.labels is not None and (
            self.points is None or len(self.labels) != len(self.points)
        ):
            raise ValueError("labels needs exactly one entry per point")
        if self.box is not None and not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
            raise ValueError("box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        if self.text is not None and (self.points or self.box is not None):
            raise ValueError("a text prompt cannot be combined with points or a box")
        return self

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None and self.text is None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
