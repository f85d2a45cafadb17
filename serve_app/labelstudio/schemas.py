"""The Label Studio ML-backend protocol's bodies, as Label Studio 1.23 sends and reads them
(label_studio/ml/api_connector.py). Request models accept keys they do not name (newer Label
Studio versions add some); every list and string is bounded."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve_app.labelstudio.config import MAX_CONFIG_CHARS

MAX_PROJECT_CHARS = 64
MAX_CONTEXT_RESULTS = 256  # annotator clicks/boxes in one interactive request
PROJECT_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,12})?$"  # "<project id>.<created_at timestamp>"


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class SetupIn(Lenient):
    project: str = Field(max_length=MAX_PROJECT_CHARS, pattern=PROJECT_PATTERN)
    schema_: str = Field(alias="schema", max_length=MAX_CONFIG_CHARS, description="Label config.")
    hostname: str | None = Field(None, max_length=2048)
    access_token: str | None = Field(None, max_length=4096)
    extra_params: dict[str, Any] | None = Field(
        None,
        description='The backend\'s "extra params" in Label Studio: {"model": "<meshline model '
        'id>", "conf": 0.25}.',
    )


class SetupOut(BaseModel):
    model_version: str


class HealthOut(BaseModel):
    status: str = "UP"
    model_class: str = "meshline"


class VersionsIn(Lenient):
    project: str | None = Field(None, max_length=MAX_PROJECT_CHARS, pattern=PROJECT_PATTERN)


class VersionsOut(BaseModel):
    versions: list[str]


class ContextIn(Lenient):
    result: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_CONTEXT_RESULTS)


class PredictParams(Lenient):
    login: str | None = Field(None, max_length=1024)
    password: str | None = Field(None, max_length=1024)
    context: ContextIn | None = None


class PredictIn(Lenient):
    tasks: list[dict[str, Any]] = Field(
        min_length=1, description="At most labelstudio_max_tasks (413)."
    )
    project: str | None = Field(None, max_length=MAX_PROJECT_CHARS, pattern=PROJECT_PATTERN)
    label_config: str = Field(max_length=MAX_CONFIG_CHARS)
    params: PredictParams | None = None


class TaskPrediction(BaseModel):
    result: list[dict[str, Any]]
    score: float | None = None
    model_version: str
    skipped_classes: dict[str, int] = Field(
        default_factory=dict,
        description="Detected classes no Label of the config stands for: class name → count.",
    )


class PredictOut(BaseModel):
    results: list[TaskPrediction] = Field(description="One prediction per task, in task order.")
    model_version: str
