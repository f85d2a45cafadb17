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


def idle_without_geometry(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The app's deployment options, with the Reconstructor starting no replica where the
    geometry libraries are absent (it loads its backend when it starts, and fails there); the
    benchmarks that run without them call no geometry stage. The Converter needs them only
    inside a conversion, so it stays as it is."""
    if geometry_installed():
        return options
    from deployments.configs import MODEL_AUTOSCALING

    idle = {"autoscaling_config": {**MODEL_AUTOSCALING, "initial_replicas": 0}}
    return {**options, "Reconstructor": {**options.get("Reconstructor", {}), **idle}}
