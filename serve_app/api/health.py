"""/healthz: the app's and each deployment's Serve status, and real vs random weights."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from ray import serve

from serve_app.schemas import DeploymentHealth, Health
from serve_app.services import ServicesDep

router = APIRouter(tags=["health"])
HEALTHY = {"HEALTHY", "UPSCALING", "DOWNSCALING", "AUTOSCALING"}


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(services: ServicesDep) -> JSONResponse:
    status = await asyncio.to_thread(serve.status)
    app = status.applications.get(services.app_name)
    deployments: dict[str, DeploymentHealth] = {}
    app_status = (
        str(app.status.value if hasattr(app.status, "value") else app.status)
        if app
        else "NOT_FOUND"
    )
    for name, info in services.models.items():
        deployment = app.deployments.get(name) if app else None
        replicas = {}
        state = "NOT_FOUND"
        if deployment is not None:
            state = str(getattr(deployment.status, "value", deployment.status))
            replicas = {
                str(getattr(k, "value", k)): int(v) for k, v in deployment.replica_states.items()
            }
        deployments[name] = DeploymentHealth(
            status=state, replicas=replicas, weights=info["weights"], model=info.get("model")
        )
    healthy = all(d.status in HEALTHY for d in deployments.values())
    keyed = bool(services.settings.api_keys or services.settings.api_keys_file)
    body = Health(
        status="ok" if healthy else "degraded",
        app_status=app_status,
        deployments=deployments,
        auth="keys" if keyed else "open",
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
