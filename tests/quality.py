"""Mesh quality on synthetic ground truth: known silhouettes → reconstruct → paint → convert,
measured against the mask and loaded in real simulators (MuJoCo, yourdfpy) and the Khronos
glTF validator. The proof (tests/unit/test_mesh_quality.py, test_sim_outputs.py) and the
figures (bench/mesh_quality.py) use these same functions."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from deployments.meshing.silhouette import silhouette_on_mask

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / ".tools" / "node_modules" / "gltf-validator"
SHAPES = ("sphere", "box", "cylinder", "torus_side", "L")


def silhouette(kind: str, height: int = 240, width: int = 320) -> np.ndarray:
    """The mask a camera sees of each solid."""
    yy, xx = np.mgrid[:height, :width]
    cx, cy, r = width / 2, height / 2, min(height, width) * 0.3
    if kind == "sphere":
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    if kind == "box":
        return (np.abs(xx - cx) < r * 1.2) & (np.abs(yy - cy) < r * 0.8)
    if kind == "cylinder":  # side-on: a rectangle, taller than wide
        return (np.abs(xx - cx) < r * 0.6) & (np.abs(yy - cy) < r * 1.1)
    if kind == "torus_side":  # a torus seen edge-on: a stadium (rounded ends)
        half, tube = r * 1.3, r * 0.35
        dx = np.clip(np.abs(xx - cx) - (half - tube), 0, None)
        return dx**2 + (yy - cy) ** 2 < tube**2
    if kind == "L":
        vertical = (xx > cx - r) & (xx < cx - r / 3) & (yy > cy - r) & (yy < cy + r)
        foot = (xx > cx - r) & (xx < cx + r) & (yy > cy + r / 3) & (yy < cy + r)
        return vertical | foot
    raise ValueError(kind)


def scene(kind: str) -> tuple[np.ndarray, np.ndarray]:
    mask = silhouette(kind)
    height, width = mask.shape
    xx = np.mgrid[:height, :width][1]
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    shade = (0.6 + 0.4 * (xx / width))[..., None]
    image[mask] = (shade * np.array([60, 140, 220], dtype=np.float32))[mask].astype(np.uint8)
    return image, mask


def validate_gltf(data: bytes) -> dict[str, int]:
    script = (
        "const v=require(process.argv[1]);const c=[];process.stdin.on('data',d=>c.push(d));"
        "process.stdin.on('end',()=>v.validateBytes(new Uint8Array(Buffer.concat(c))).then(r=>"
        "console.log(JSON.stringify({errors:r.issues.numErrors,warnings:r.issues.numWarnings}))))"
    )
    done = subprocess.run(
        ["node", "-e", script, str(VALIDATOR)], input=data, capture_output=True, check=True
    )
    return json.loads(done.stdout)


def drop_in_mujoco(
    folder: Path, mjcf_name: str, height_m: float, seconds: float = 8.0
) -> dict[str, float]:
    """Add a floor, lift the body, let it fall; report where and how still it ends up."""
    import mujoco

    xml = (folder / mjcf_name).read_text()
    xml = xml.replace(
        "<worldbody>", '<worldbody>\n    <geom name="floor" type="plane" size="5 5 0.1"/>', 1
    )
    xml = xml.replace('pos="0 0 0"', f'pos="0 0 {height_m}"', 1)
    scene_file = folder / "drop_scene.xml"
    scene_file.write_text(xml)
    model = mujoco.MjModel.from_xml_path(str(scene_file))
    data = mujoco.MjData(model)
    body = model.nbody - 1
    steps = int(seconds / model.opt.timestep)
    heights = []
    for step in range(steps):
        mujoco.mj_step(model, data)
        if step >= steps - int(0.5 / model.opt.timestep):
            heights.append(float(data.xipos[body][2]))
    # At rest on the plane: the centre of mass no longer moves up or down (a sphere may roll).
    return {
        "rest_com_z_m": float(data.xipos[body][2]),
        "rest_z_range_last_half_s_m": max(heights) - min(heights),
        "rest_speed": float(np.abs(data.qvel).max()),
        "lowest_contact_z_m": float(
            min((data.contact[i].pos[2] for i in range(data.ncon)), default=np.nan)
        ),
    }


def evaluate(
    kind: str, size_m: float = 0.25, grid: int = 64, budgets: bool = True
) -> dict[str, Any]:
    """The quality row of one synthetic shape. ``budgets``: the stages' default time budgets
    (the service's behaviour, what bench/mesh_quality.py reports); False: unbounded, so the
    quality bar does not depend on the machine's load (the unit test)."""
    import trimesh
    import yourdfpy

    from deployments.converter import ConverterConfig, MeshConverter
    from deployments.meshing.sim import inside_union
    from deployments.reconstructor import MeshReconstructor, ReconstructorConfig

    image, mask = scene(kind)
    unbounded: dict[str, Any] = (
        {} if budgets else {"reconstruct_budget_s": None, "paint_budget_s": None}
    )
    reconstructor = MeshReconstructor(ReconstructorConfig(grid=grid, max_faces=6000, **unbounded))
    started = time.perf_counter()
    shape = reconstructor.reconstruct(image, mask)
    t_shape = time.perf_counter() - started
    mesh = trimesh.load(trimesh.util.wrap_as_stream(shape.mesh), file_type="ply", force="mesh")
    started = time.perf_counter()
    painted = reconstructor.paint(shape.mesh, image, mask)
    t_paint = time.perf_counter() - started
    converter = MeshConverter(
        ConverterConfig(
            preview_frames=4, preview_size_px=96, **({} if budgets else {"budget_s": None})
        )
    )
    started = time.perf_counter()
    out = converter.convert(
        painted.mesh,
        "glb",
        formats=["obj", "glb", "stl"],
        sim={"size_m": size_m, "up_axis": "z", "origin": "base"},
    )
    t_convert = time.perf_counter() - started
    files = {f.name: f.data for f in out.files}
    stats = out.stats
    sidecar = json.loads(files["object.json"])
    predicted = silhouette_on_mask(mesh, mask)
    iou = float((predicted & mask).sum() / (predicted | mask).sum())
    visual = trimesh.load(
        trimesh.util.wrap_as_stream(files["visual.stl"]), file_type="stl", force="mesh"
    )
    parts = [
        trimesh.load(trimesh.util.wrap_as_stream(files[name]), file_type="stl", force="mesh")
        for name in sidecar["files"]["collision"]
    ]
    samples = trimesh.sample.sample_surface(visual, 3000, seed=7)[0]
    covered = float(inside_union(parts, samples, tol=1e-3).mean())
    convex = all(p.is_convex for p in parts)
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        drop = drop_in_mujoco(Path(folder), "object.xml", height_m=size_m)
        robot = yourdfpy.URDF.load(str(Path(folder) / "object.urdf"), mesh_dir=folder)
        urdf_links = len(robot.link_map)
    return {
        "shape": kind,
        "watertight": bool(stats["visual"]["watertight"]),
        "edge_manifold": bool(stats["visual"]["edge_manifold"]),
        "vertex_manifold": bool(stats["visual"]["vertex_manifold"]),
        "self_intersecting": bool(stats["visual"]["self_intersecting"]),
        "faces": int(stats["visual"]["faces"]),
        "silhouette_iou": round(iou, 4),
        "size_error": round(abs(max(sidecar["extents"]) - size_m) / size_m, 5),
        "collision_parts": int(sidecar["parts"]),
        "parts_convex": bool(convex),
        "surface_covered": round(covered, 4),
        "mass_kg": round(sidecar["mass_kg"], 4),
        "gltf_textured": validate_gltf(painted.mesh),
        "gltf_visual": validate_gltf(files["visual.glb"]),
        "mujoco": {k: round(v, 5) for k, v in drop.items()},
        "urdf_links": urdf_links,
        "degraded": [
            entry["what"]
            for stage in (shape.stats, painted.stats, stats)
            for entry in stage["budget"]["degraded"]
        ],
        "seconds": {
            "reconstruct": round(t_shape, 3),
            "paint": round(t_paint, 3),
            "convert": round(t_convert, 3),
        },
    }
