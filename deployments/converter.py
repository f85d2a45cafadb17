"""Converter: mesh → OBJ/STL/GLB/PLY, visual + collision variants, turntable preview."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import BaseModel, Field
from ray import serve

from deployments.common import placement
from deployments.errors import InvalidInput


class ConverterConfig(BaseModel):
    preview_frames: int = Field(12, ge=2, le=72)
    preview_size_px: int = Field(256, ge=64, le=1024)


class MeshConverter:
    def __init__(self, config: ConverterConfig) -> None:
        self.config = config

    def info(self) -> dict[str, Any]:
        return {"backend": "trimesh", "weights": "none (geometric)", **placement("cpu")}

    def convert(
        self,
        mesh: bytes,
        mesh_format: str = "glb",
        formats: list[str] | None = None,
        collision: bool = True,
        preview: bool = True,
        prefix: str = "",
    ) -> dict[str, Any]:
        """Returns ``files``: a list of {name, data, media_type}, and ``stats``.

        ``prefix`` namespaces every file name (``obj2_visual.obj``…) for multi-object jobs.
        """
        from deployments.meshing.export import (
            MEDIA_TYPES,
            MESH_FORMATS,
            FileOut,
            collision_hull,
            export_mesh,
            load_mesh,
        )
        from deployments.meshing.preview import turntable_gif

        started = time.perf_counter()
        formats = list(formats or MESH_FORMATS)
        unknown = sorted(set(formats) - set(MESH_FORMATS))
        if unknown:
            raise InvalidInput(f"unknown formats {unknown}; choose from {list(MESH_FORMATS)}", "formats")
        visual = load_mesh(mesh, mesh_format)
        files: list[FileOut] = []
        for fmt in formats:
            files += export_mesh(visual, fmt, f"{prefix}visual")
        stats: dict[str, Any] = {
            "visual": _mesh_stats(visual),
        }
        if collision:
            hull = collision_hull(visual)
            for fmt in ("obj", "stl"):
                files += export_mesh(hull, fmt, f"{prefix}collision")
            stats["collision"] = {**_mesh_stats(hull), "parts": 1, "method": "convex_hull"}
        if preview:
            gif = turntable_gif(visual, self.config.preview_frames, self.config.preview_size_px)
            files.append(FileOut(f"{prefix}preview.gif", gif, MEDIA_TYPES["gif"]))
        stats["seconds"] = round(time.perf_counter() - started, 3)
        files.append(FileOut(f"{prefix}mesh_stats.json", json.dumps(stats, indent=2).encode(), MEDIA_TYPES["json"]))
        return {
            "files": [{"name": f.name, "data": f.data, "media_type": f.media_type} for f in files],
            "stats": stats,
        }


def _mesh_stats(mesh: Any) -> dict[str, Any]:
    return {
        "faces": int(len(mesh.faces)),
        "vertices": int(len(mesh.vertices)),
        "watertight": bool(mesh.is_watertight),
        **_topology(mesh),
        "volume": round(float(mesh.volume), 8) if mesh.is_watertight else None,
        "area": round(float(mesh.area), 8),
        "bounds": [[round(float(v), 6) for v in row] for row in mesh.bounds],
    }


def _topology(mesh: Any) -> dict[str, bool]:
    """Checks simulators care about that trimesh lacks: manifoldness and self-intersection."""
    import numpy as np
    import open3d as o3d

    o3d_mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(mesh.vertices, dtype=np.float64)),
        o3d.utility.Vector3iVector(np.asarray(mesh.faces, dtype=np.int32)),
    )
    return {
        "edge_manifold": bool(o3d_mesh.is_edge_manifold(allow_boundary_edges=False)),
        "vertex_manifold": bool(o3d_mesh.is_vertex_manifold()),
        "self_intersecting": bool(o3d_mesh.is_self_intersecting()),
    }


@serve.deployment(
    name="Converter",
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
    autoscaling_config={"min_replicas": 0, "initial_replicas": 1, "max_replicas": 2},
)
class ConverterDeployment:
    def __init__(self, config: ConverterConfig) -> None:
        self._converter = MeshConverter(config)

    async def info(self) -> dict[str, Any]:
        return self._converter.info()

    async def convert(
        self,
        mesh: bytes,
        mesh_format: str = "glb",
        formats: list[str] | None = None,
        collision: bool = True,
        preview: bool = True,
        prefix: str = "",
    ) -> dict[str, Any]:
        return await asyncio.to_thread(
            self._converter.convert, mesh, mesh_format, formats, collision, preview, prefix
        )
