"""What Label Studio told meshline at ``/setup`` about a project, kept for its predictions.

Label Studio sends the backend's extra params (the meshline model the project uses) only at
``/setup``; ``/predict`` names just the project. So the setup is stored — in the artifact store,
which every ingress replica shares and which outlives restarts — as a small JSON file per
project in one pseudo-job folder (``PROJECTS_POOL``: job ids are uuid4 hex, whose 13th digit is
4, so it is never one). Tokens are never stored: the one sent at setup is held in memory only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from serve_app.http.errors import ApiError
from serve_app.storage.artifacts import ArtifactStore

PROJECTS_POOL = "0" * 31 + "1"
MAX_EXTRA_PARAMS_BYTES = 16 * 1024


@dataclass(frozen=True)
class ProjectSetup:
    # "<API key scope>-<Label Studio project id>": two Label Studios (two keys) both have a
    # project 1.
    project_id: str
    hostname: str | None = None
    extra_params: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None  # what /setup answered last


def project_id(uid: str, owner: str | None) -> str:
    """``uid`` is Label Studio's "<project id>.<created_at timestamp>" (checked by the schema);
    ``owner`` the calling key's scope (KEY_ID characters)."""
    return f"{owner or 'open'}-{uid.split('.', 1)[0]}"


def _name(pid: str) -> str:
    return f"project-{pid}.json"


def check_extra_params(extra: dict[str, Any] | None) -> dict[str, Any]:
    extra = extra or {}
    if len(json.dumps(extra)) > MAX_EXTRA_PARAMS_BYTES:
        raise ApiError(
            413,
            f"extra_params exceed {MAX_EXTRA_PARAMS_BYTES} bytes",
            "limit_exceeded",
            "extra_params",
        )
    return extra


def save(files: ArtifactStore, setup: ProjectSetup) -> None:
    """Blocking (call in a thread); rewritten only when it changed (setup comes often)."""
    data = json.dumps(asdict(setup), sort_keys=True).encode()
    name = _name(setup.project_id)
    if files.exists(PROJECTS_POOL, name) and files.get(PROJECTS_POOL, name) == data:
        return
    files.put(PROJECTS_POOL, name, data, "application/json")


def load(files: ArtifactStore, pid: str) -> ProjectSetup:
    """The stored setup, or an empty one (a project whose setup this store never saw)."""
    name = _name(pid)
    if not files.exists(PROJECTS_POOL, name):
        return ProjectSetup(pid)
    try:
        data = json.loads(files.get(PROJECTS_POOL, name))
        return ProjectSetup(
            pid,
            data.get("hostname"),
            dict(data.get("extra_params") or {}),
            data.get("model_version"),
        )
    except (ValueError, TypeError, AttributeError):
        return ProjectSetup(pid)
