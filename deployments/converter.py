"""Converter: mesh → OBJ/STL/GLB/PLY, visual + collision variants, turntable preview."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
from ray import serve

from deployments import logtail
from deployments.common import placement, set_torch_threads
from deployments.configs import MODEL_AUTOSCALING, ConverterConfig
from deployments.errors import InvalidInput
from deployments.protocol import ConvertResult

USD_FORMATS = ("usd", "usdz")
# open3d's exact self-intersection test, run cell by cell (meshing/checks.py: 0.1-0.4 s at 20k
# faces where all pairs took 0.6-7 s); above this many faces, or past checks.py's limits on
# the pairs it would test, it is skipped (mesh_stats.json says so).
SELF_INTERSECTION_MAX_FACES = 200_000


class MeshConverter:
    def __init__(self, config: ConverterConfig) -> None:
        self.config = config
        if config.budget_s is not None:  # CoACD runs against the budget in forked children
            from deployments.meshing import budget

            budget.warm()

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
        sim: dict[str, Any] | None = None,
        voxels: dict[str, Any] | None = None,
    ) -> ConvertResult:
        """``files`` (``OutputFile``s, ``mesh_stats.json`` last) and ``stats`` (its content), for
        ``ConvertRequest``'s fields.

        ``prefix`` namespaces every file name (``obj2_visual.obj``…) for multi-object jobs.
        ``sim`` (SimOptions fields) sets real size, up axis, origin, density and the collision
        decomposition; with it come ``object.json`` (physical properties), ``object.urdf`` and
        ``object.xml`` (MJCF), which reference the visual OBJ and the collision part STLs.
        ``voxels`` (VoxelOptionsIn fields) adds the voxel build: ``voxels.{vox,npz,json,schem}``,
        ``voxels_commands.json`` and ``voxels_preview.png`` (deployments/meshing/voxels.py).
        """
        from deployments.meshing.budget import Budget
        from deployments.meshing.export import MESH_FORMATS, load_mesh
        from deployments.meshing.sim import (
            SimOptions,
            check_solid,
            decimate,
            repair,
            sim_transform,
            textured_like,
        )

        started = time.perf_counter()
        budget = Budget(self.config.budget_s)
        formats = list(dict.fromkeys(formats or MESH_FORMATS))
        unknown = sorted(set(formats) - set(MESH_FORMATS) - set(USD_FORMATS))
        if unknown:
            raise InvalidInput(
                f"unknown formats {unknown}; choose from {[*MESH_FORMATS, *USD_FORMATS]}", "formats"
            )
        try:  # without sim options: the mesh as given, one convex hull
            options = SimOptions(**sim) if sim is not None else SimOptions(decomposition=False)
        except TypeError as exc:
            raise InvalidInput(f"bad sim options: {exc}", "sim") from None
        voxel_options = None
        if voxels is not None:
            from deployments.meshing.voxels import VoxelOptions

            voxel_options = VoxelOptions.parse(voxels)
        # Counted before repair, decimation or any check: their cost grows with the faces.
        source = load_mesh(mesh, mesh_format, max_faces=self.config.max_mesh_faces)
        # Geometry (welded, closed, maybe decimated) drives STL, collision and physics; the
        # textured mesh (split along UV seams, or coloured per vertex once decimated) is what
        # OBJ/GLB/PLY/USD carry, in the same frame.
        repaired = repair(source)  # InvalidInput when no face has an area
        if collision or sim is not None:  # both need a volume: refused before any work
            check_solid(repaired)
        camera_frame = decimate(repaired, options.target_faces)
        textured_camera = textured_like(camera_frame, source)
        transform = sim_transform(camera_frame, options) if sim is not None else np.eye(4)
        visual, textured = camera_frame.copy(), textured_camera.copy()
        visual.apply_transform(transform)
        textured.apply_transform(transform)
        if voxel_options is not None:  # the grid's size is known now: refuse before any work
            from deployments.meshing.voxels import check_voxel_limit, plan_grid

            grid = plan_grid(visual.bounds, voxel_options.size, voxel_options.stretch)
            check_voxel_limit(grid, self.config.max_voxels)
        if sim is not None and "obj" not in formats:
            formats.append("obj")  # URDF and MJCF reference the visual OBJ
        stats: dict[str, Any] = {"visual": _mesh_stats(visual)}
        if sim is not None:
            stats |= {"units": "m", "up_axis": options.up_axis, "origin": options.origin}
        files, parts = [], []
        if collision:
            parts, collision_files, stats["collision"] = self._collision(
                visual, options, prefix, budget
            )
            files += collision_files
        props = None
        if sim is not None:
            sim_files, props = _sim_files(visual, parts, options, prefix)
            files += sim_files
            stats["physical"] = {"mass_kg": props.mass_kg, "volume_m3": props.volume_m3}
        files = (
            _visual_files(visual, textured, formats, prefix, options.up_axis, parts, props) + files
        )
        if preview:
            files += self._previews(textured_camera, prefix, budget)
        if voxel_options is not None:
            coloured = source.copy()  # the texture / vertex colours, in the output frame
            coloured.apply_transform(transform)
            up_axis = options.up_axis if sim is not None else "y"
            units = "m" if sim is not None else "mesh units"
            voxel_files, stats["voxels"] = self._voxels(
                visual, coloured, voxel_options, prefix, up_axis, units
            )
            files += voxel_files
        stats["seconds"] = round(time.perf_counter() - started, 3)
        stats["budget"] = budget.stats()
        files.append(_json_file(f"{prefix}mesh_stats.json", stats))
        return ConvertResult(files=files, stats=stats)

    def _collision(
        self, visual: Any, options: Any, prefix: str, budget: Any = None
    ) -> tuple[list[Any], list[Any], dict[str, Any]]:
        """Convex parts (or the one hull), their union's hull, and the files: one STL per part
        (what URDF/MJCF reference) plus the part set as one GLB and one OBJ."""
        import trimesh

        from deployments.meshing.export import MEDIA_TYPES, FileOut, export_mesh
        from deployments.meshing.sim import bounded_hull, convex_parts

        parts = convex_parts(visual, options, seed=self.config.seed, budget=budget)
        hull = parts[0] if len(parts) == 1 else bounded_hull(np.vstack([p.vertices for p in parts]))
        files = export_mesh(hull, "obj", f"{prefix}collision") + export_mesh(
            hull, "stl", f"{prefix}collision"
        )
        if options.decomposition:
            scene = trimesh.Scene({f"part_{k:02d}": p for k, p in enumerate(parts)})
            files.append(
                FileOut(
                    f"{prefix}collision_parts.glb",
                    scene.export(file_type="glb"),
                    MEDIA_TYPES["glb"],
                )
            )
            obj_text = trimesh.exchange.obj.export_obj(scene, include_normals=True)
            files.append(
                FileOut(f"{prefix}collision_parts.obj", obj_text.encode(), MEDIA_TYPES["obj"])
            )
        for name, part in zip(part_names(prefix, len(parts)), parts):
            files.append(FileOut(name, part.export(file_type="stl"), MEDIA_TYPES["stl"]))
        stats = {
            "parts": len(parts),
            "method": "coacd" if options.decomposition and len(parts) > 1 else "convex_hull",
            "hull": _mesh_stats(hull),
            "part_faces": [len(p.faces) for p in parts],
        }
        return parts, files, stats

    def _voxels(
        self, visual: Any, coloured: Any, options: Any, prefix: str, up_axis: str, units: str
    ) -> tuple[list[Any], dict[str, Any]]:
        """The voxel build's files (those in ``options.outputs``, plus the JSON sidecar)."""
        from deployments.meshing import minecraft
        from deployments.meshing.export import MEDIA_TYPES, FileOut
        from deployments.meshing.voxels import (
            build_voxels,
            npz_bytes,
            render_png,
            sidecar,
            to_z_up,
            vox_bytes,
        )

        started = time.perf_counter()
        build = build_voxels(visual, coloured, options, self.config.max_voxels)
        wanted, stem = set(options.outputs), f"{prefix}voxels"
        binary = "application/octet-stream"
        files: list[Any] = []
        names: dict[str, Any] = {"sidecar": f"{stem}.json"}
        z_up = to_z_up(build.index, up_axis)
        if "vox" in wanted:
            names["vox"] = f"{stem}.vox"
            files.append(FileOut(names["vox"], vox_bytes(z_up, build.palette), binary))
        if "npz" in wanted:
            names["npz"] = f"{stem}.npz"
            files.append(FileOut(names["npz"], npz_bytes(build), binary))
        stats: dict[str, Any] = {
            "dims": list(build.grid.dims),
            "filled": int(build.filled.sum()),
            "surface": int(build.surface.sum()),
            "colors": len(build.palette),
            "color_source": build.color_source,
        }
        minecraft_info: dict[str, Any] = {}
        if wanted & {"schem", "commands"}:
            # rgb is in argwhere order of the mesh-frame grid; reorder it for the z-up one.
            rgb_grid = np.zeros((*build.grid.dims, 3), dtype=np.uint8)
            rgb_grid[build.filled] = build.rgb
            z_up_rgb = to_z_up(rgb_grid, up_axis)
            z_up_filled = z_up > 0
            grid, block_names = minecraft.block_grid(
                z_up_filled, z_up_rgb[z_up_filled], options.blocks
            )
            minecraft_info = {
                "size_xyz": list(grid.shape),
                "frame": "y up; the camera-facing side faces south (+Z)",
                "blocks": minecraft.build_summary(grid, block_names),
            }
            if "schem" in wanted:
                names["schem"] = f"{stem}.schem"
                files.append(
                    FileOut(names["schem"], minecraft.schem_bytes(grid, block_names, stem), binary)
                )
            if "commands" in wanted:
                batches, command_stats = minecraft.commands(
                    grid, block_names, options.anchor, options.batch_size
                )
                names["commands"] = f"{stem}_commands.json"
                files.append(
                    FileOut(
                        names["commands"],
                        json.dumps(batches, separators=(",", ":")).encode(),
                        MEDIA_TYPES["json"],
                    )
                )
                minecraft_info["commands"] = {
                    **command_stats,
                    "anchor": list(options.anchor) if options.anchor else "~ ~ ~ (relative)",
                    "batch_size": options.batch_size,
                }
        if "preview" in wanted:
            names["preview"] = f"{stem}_preview.png"
            png = render_png(z_up, build.palette, self.config.preview_size_px)
            files.append(FileOut(names["preview"], png, MEDIA_TYPES["png"]))
        payload = sidecar(build, units, up_axis, names)
        if minecraft_info:
            payload["minecraft"] = minecraft_info
            stats["minecraft"] = {
                k: v for k, v in minecraft_info.items() if k in ("size_xyz", "commands")
            } | {"block_types": len(minecraft_info["blocks"])}
        stats["seconds"] = {**build.seconds, "total": round(time.perf_counter() - started, 3)}
        payload["seconds"] = stats["seconds"]
        files.insert(0, _json_file(names["sidecar"], payload))
        return files, stats

    def _previews(self, mesh: Any, prefix: str, budget: Any = None) -> list[Any]:
        """Turntable GIF and PNG thumbnail of the (textured) camera view, whatever the file axes."""
        from deployments.meshing.export import MEDIA_TYPES, FileOut
        from deployments.meshing.preview import previews

        frames, size = self.config.preview_frames, self.config.preview_size_px
        gif, png = previews(mesh, frames, size, budget)
        return [
            FileOut(f"{prefix}preview.gif", gif, MEDIA_TYPES["gif"]),
            FileOut(f"{prefix}thumbnail.png", png, MEDIA_TYPES["png"]),
        ]


def part_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}collision_part{k:02d}.stl" for k in range(count)]


def _json_file(name: str, payload: dict[str, Any]) -> Any:
    from deployments.meshing.export import MEDIA_TYPES, FileOut

    return FileOut(name, json.dumps(payload, indent=2).encode(), MEDIA_TYPES["json"])


def _visual_files(
    visual: Any,
    textured: Any,
    formats: list[str],
    prefix: str,
    up_axis: str,
    parts: list[Any],
    props: Any,
) -> list[Any]:
    from deployments.meshing.export import FileOut, export_mesh

    files: list[FileOut] = []
    for fmt in formats:
        if fmt in USD_FORMATS:
            from deployments.meshing.usd import export_usd

            files += export_usd(textured, fmt, f"{prefix}visual", up_axis, parts, props)
        else:  # STL has no texture; the rest carry the textured mesh
            files += export_mesh(visual if fmt == "stl" else textured, fmt, f"{prefix}visual")
    unique = {f.name: f for f in files}  # OBJ and USD may both bring the same texture PNG
    return list(unique.values())


def _sim_files(visual: Any, parts: list[Any], options: Any, prefix: str) -> tuple[list[Any], Any]:
    """object.json (physical properties), object.urdf and object.xml (MJCF)."""
    from deployments.meshing.export import FileOut
    from deployments.meshing.sim import mjcf, physical_properties, urdf

    props = physical_properties(visual, options.density_kg_m3)
    names = part_names(prefix, len(parts))
    name = f"{prefix}object".rstrip("_") or "object"
    sidecar = {
        "units": "m",
        "up_axis": options.up_axis,
        "origin": options.origin,
        "size_m": options.size_m,
        "size_axis": options.size_axis,
        "density_kg_m3": options.density_kg_m3,
        **vars(props),
        "faces": {
            "visual": len(visual.faces),
            "collision": [len(p.faces) for p in parts],
        },
        "parts": len(parts),
        "files": {"visual": f"{prefix}visual.obj", "collision": names},
    }
    sidecar.pop("extra", None)
    visual_file = f"{prefix}visual.obj"
    return [
        _json_file(f"{prefix}object.json", sidecar),
        FileOut(
            f"{prefix}object.urdf",
            urdf(name, visual_file, names, props, options.up_axis).encode(),
            "application/xml",
        ),
        FileOut(
            f"{prefix}object.xml",
            mjcf(name, visual_file, names, props, options.up_axis).encode(),
            "application/xml",
        ),
    ], props


def _mesh_stats(mesh: Any) -> dict[str, Any]:
    return {
        "faces": len(mesh.faces),
        "vertices": len(mesh.vertices),
        "watertight": bool(mesh.is_watertight),
        **_topology(mesh),
        "volume": round(float(mesh.volume), 8) if mesh.is_watertight else None,
        "area": round(float(mesh.area), 8),
        "bounds": [[round(float(v), 6) for v in row] for row in mesh.bounds],
    }


def _topology(mesh: Any) -> dict[str, Any]:
    """Checks simulators care about that trimesh lacks: manifoldness and self-intersection.

    The self-intersection test is exact but bounded: above SELF_INTERSECTION_MAX_FACES faces,
    or past checks.py's limits on the pairs of triangles it would test (triangles packed into
    few grid cells), it is skipped, ``self_intersecting`` is null and
    ``self_intersection_check`` says why (decimate with ``sim.target_faces`` to have it
    checked)."""
    import numpy as np
    import open3d as o3d

    from deployments.meshing.checks import MAX_CELL_ENTRIES, MAX_PAIRS, self_intersection

    o3d_mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.asarray(mesh.vertices, dtype=np.float64)),
        o3d.utility.Vector3iVector(np.asarray(mesh.faces, dtype=np.int32)),
    )
    faces = len(mesh.faces)
    if faces > SELF_INTERSECTION_MAX_FACES:
        intersecting, check = None, f"skipped: {faces} faces > {SELF_INTERSECTION_MAX_FACES}"
    else:
        intersecting = self_intersection(mesh.vertices, mesh.faces, MAX_PAIRS)
        check = (
            "exact, triangles sharing a grid cell"
            if intersecting is not None
            else f"skipped: over {MAX_PAIRS} triangle pairs or {MAX_CELL_ENTRIES} cell entries "
            "to test (triangles packed into few grid cells)"
        )
    return {
        "edge_manifold": bool(o3d_mesh.is_edge_manifold(allow_boundary_edges=False)),
        "vertex_manifold": bool(o3d_mesh.is_vertex_manifold()),
        "self_intersecting": intersecting,
        "self_intersection_check": check,
    }


@serve.deployment(  # resources: set by the builder for the accelerator (deployments/configs.py)
    name="Converter",
    max_ongoing_requests=4,
    max_queued_requests=128,  # beyond this Serve answers 503 at once
    autoscaling_config=MODEL_AUTOSCALING,
)
class ConverterDeployment:
    def __init__(self, config: ConverterConfig) -> None:
        logtail.install()  # this replica's log lines on the admin page
        set_torch_threads()  # torch/OpenMP threads = this replica's num_cpus
        self._bound = config
        self._converter = MeshConverter(config)
        self._workers = _workers_for(config)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's ``user_config``: ConverterConfig fields over the bound ones."""
        config = ConverterConfig.model_validate({**self._bound.model_dump(), **user_config})
        old = self._converter.config
        self._converter = MeshConverter(config)
        if (config.isolation, config.workers) != (old.isolation, old.workers):
            if self._workers is not None:
                self._workers.close()
            # Started by the first call, on the replica's event loop (this may run in a pool
            # thread, and a child dies with the thread that started it: isolate.py).
            self._workers = _workers_for(config, start=False)

    def __del__(self) -> None:
        if getattr(self, "_workers", None) is not None:
            self._workers.close()

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
        sim: dict[str, Any] | None = None,
        voxels: dict[str, Any] | None = None,
    ) -> ConvertResult:
        args = (mesh, mesh_format, formats, collision, preview, prefix, sim, voxels)
        if self._workers is None:
            return await asyncio.to_thread(self._converter.convert, *args)
        # In a child process: a cancelled call (stage time-out, job cancel) is killed there.
        return await self._workers.run(_convert_in_child, self._converter.config, *args)


def _workers_for(config: ConverterConfig, start: bool = True) -> Any:
    if config.isolation != "process":
        return None
    from deployments.meshing.isolate import ProcessWorkers

    workers = ProcessWorkers(config.workers, warm=_warm_child)
    if start:
        workers.start()
    return workers


_CHILD_CONVERTERS: dict[str, MeshConverter] = {}


def _convert_in_child(config: ConverterConfig, *args: Any) -> ConvertResult:
    key = config.model_dump_json()
    if key not in _CHILD_CONVERTERS:
        _CHILD_CONVERTERS.clear()
        _CHILD_CONVERTERS[key] = MeshConverter(config)
    return _CHILD_CONVERTERS[key].convert(*args)


def _warm_child() -> None:
    """Imports a convert call needs, done while the child waits for its first call."""
    import coacd  # noqa: F401
    import open3d  # noqa: F401

    from deployments.meshing import budget

    budget.warm(wait=True)  # the forkserver that runs CoACD against the budget's deadline

    import deployments.meshing.export
    import deployments.meshing.preview
    import deployments.meshing.sim
    import deployments.meshing.voxels  # noqa: F401
