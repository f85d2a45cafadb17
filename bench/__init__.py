"""meshline's benchmarks (`make bench`). Each starts its own Ray instance, with the Serve
process settings every meshline cluster runs with (deployments/configs.py SERVE_PROCESS_ENV):
set here, before any benchmark starts Ray, so every figure is the shipped configuration's.
HAProxy's ports are free ones: the previous benchmark's HAProxy may still be draining."""

import os
from typing import Any

from deployments.configs import serve_process_env
from tests.helpers import free_ports

os.environ.update(serve_process_env(*free_ports(2)))


def child_env(root: str | os.PathLike[str] | None = None, **extra: str) -> dict[str, str]:
    """This environment for a benchmark's child process: ``root`` (this checkout by default)
    first on PYTHONPATH, what was there kept (the GPU kit's packages: bench/device/run.sh)."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [os.fspath(root), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def geometry_installed() -> bool:
    """open3d is here: not on a GPU machine running the kit (bench/device/kit.py)."""
    import importlib.util

    return importlib.util.find_spec("open3d") is not None


# Load their geometry backend when they start (and fail there without it). The Converter needs
# the geometry libraries only inside a conversion.
START_WITH_GEOMETRY = ("Reconstructor",)


def startable(deployment: str) -> bool:
    """Whether a deployment of the app can start a replica here."""
    return deployment not in START_WITH_GEOMETRY or geometry_installed()


def at_zero(options: dict[str, dict[str, Any]], names: Any) -> dict[str, dict[str, Any]]:
    """The app's deployment options with deployments ``names`` at zero replicas (Serve starts
    one on their first request)."""
    from deployments.configs import MODEL_AUTOSCALING

    zero = {"autoscaling_config": {**MODEL_AUTOSCALING, "initial_replicas": 0}}
    return {**options, **{name: {**options.get(name, {}), **zero} for name in names}}


def idle_without_geometry(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The app's deployment options, with the deployments that cannot start here
    (``startable``) at zero replicas; the benchmarks that run without the geometry libraries
    call no geometry stage."""
    return at_zero(options, [name for name in START_WITH_GEOMETRY if not startable(name)])
