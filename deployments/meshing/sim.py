"""Simulation-ready meshes: metres, axis convention, origin, convex decomposition, physical
properties, and URDF/MJCF snippets that reference the files.

Reconstructed meshes come in the camera frame (x right, y up, +z towards the camera) with the
longest side 1. ``sim_transform`` puts them in metres at a requested real size, in the
requested up-axis convention (Z-up for ROS/MuJoCo: the camera-facing side then faces -Y;
Y-up for glTF), with the origin at the base centre or the centre of mass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

import numpy as np
import trimesh

from deployments.errors import InvalidInput
from deployments.meshing.budget import Budget, DeadlineExceeded, run_with_deadline

UpAxis = Literal["z", "y"]
COACD_MAX_FACES = 4_000
# CoACD's tree search (defaults 150 iterations, 20 nodes) dominates convert time on ragged
# outlines: 47 s for 16 parts of a noisy mask; these settings took 60 % of that time and
# gave the same parts on the synthetic shapes (the coverage pass below makes them cover).
COACD_SEARCH = {"mcts_iterations": 60, "mcts_nodes": 12}
# The budget's second try: a coarser input and a shallow search (budget.py).
COACD_COARSE_FACES = 1_500
COACD_COARSE = {"mcts_iterations": 20, "mcts_nodes": 8, "mcts_max_depth": 2, "resolution": 1000}
# The full search's time over the coarse one's on the same mesh (CoACD's own seconds, 2 cores):
# a disk or a box 1.9-2.2x, a ring 4.9-5.8x, an L 5.9-8.2x, the ragged regression mask 19x. At
# 6x, a full search that fits its deadline is started; a ragged outline's is not.
FINE_OVER_COARSE = 6.0
COARSE_SHARE = FINE_SHARE = 0.45  # of the convert budget (budget.py), never more than left
HULL_MAX_VERTICES = 250


@dataclass(frozen=True)
class SimOptions:
    size_m: float = 0.2  # real size of the object
    size_axis: Literal["longest", "height"] = "longest"
    up_axis: UpAxis = "z"
    origin: Literal["base", "com"] = "base"
    density_kg_m3: float = 500.0
    decomposition: bool = True  # CoACD parts (else the single convex hull)
    max_parts: int = 16
    concavity: float = 0.05  # CoACD threshold: smaller → more, tighter parts
    target_faces: int | None = None  # decimate the visual mesh to at most this many faces

    def __post_init__(self) -> None:
        """SimOptionsIn's bounds again: a call through a handle skips the ingress's pydantic,
        and a NaN size or concavity reached CoACD (whose child then aborted). Concavity only
        needs to be positive here (callers in-process may ask CoACD for finer parts)."""
        highs = {"size_m": 1000.0, "density_kg_m3": 30000.0, "concavity": 1.0}
        for name, high in highs.items():
            number = _number(getattr(self, name))
            if number is None or not 0.0 < number <= high:
                raise InvalidInput(
                    f"sim.{name} must be a finite number in (0, {high:g}]", f"sim.{name}"
                )
        choices = {
            "size_axis": ("longest", "height"),
            "up_axis": ("z", "y"),
            "origin": ("base", "com"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InvalidInput(f"sim.{name} must be one of {list(allowed)}", f"sim.{name}")
        if not isinstance(self.decomposition, bool):
            raise InvalidInput("sim.decomposition must be true or false", "sim.decomposition")
        if not _is_int(self.max_parts) or not 1 <= self.max_parts <= 64:
            raise InvalidInput("sim.max_parts must be an integer in [1, 64]", "sim.max_parts")
        if self.target_faces is not None and not (
            _is_int(self.target_faces) and 100 <= self.target_faces <= 1_000_000
        ):
            raise InvalidInput(
                "sim.target_faces must be null or an integer in [100, 1000000]", "sim.target_faces"
            )


def _number(value: object) -> float | None:
    """A finite real number (bools are not), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sim_transform(mesh: trimesh.Trimesh, options: SimOptions) -> np.ndarray:
    """The 4x4 transform to metres, the up-axis convention and the requested origin."""
    matrix = np.eye(4)
    if options.up_axis == "z":  # camera frame y-up → z-up: rotate +90° about X
        matrix = trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0])
    out = mesh.copy()
    out.apply_transform(matrix)
    up = 2 if options.up_axis == "z" else 1
    extents = out.extents
    current = float(extents.max() if options.size_axis == "longest" else extents[up])
    if current <= 0:
        raise InvalidInput("mesh has no extent along the sizing axis", param="size_axis")
    scale = options.size_m / current
    out.apply_scale(scale)
    if options.origin == "com" and out.is_watertight and out.volume > 0:
        anchor = out.center_mass
    else:
        lo, hi = out.bounds
        anchor = (lo + hi) / 2.0
        anchor[up] = lo[up]  # base centre: resting on the ground plane at the origin
    return (
        trimesh.transformations.translation_matrix(-anchor)
        @ np.diag([scale, scale, scale, 1.0])
        @ matrix
    )


def weld(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Geometry only, vertices merged by position: a UV-unwrapped mesh is split along its
    texture seams, which a simulator (and any closedness check) must not see."""
    return trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), process=True)


def textured_like(geometry: trimesh.Trimesh, source: trimesh.Trimesh) -> trimesh.Trimesh:
    """What OBJ/GLB/PLY/USD carry: the textured source when ``geometry`` kept its faces (only
    the UV seams were welded), else ``geometry`` coloured per vertex from the source's texture
    at the closest surface point (decimation invalidates the UV atlas, not the colours)."""
    if not isinstance(source.visual, trimesh.visual.TextureVisuals):
        return geometry
    if len(geometry.faces) == len(source.faces):
        return source
    colours = source.visual.to_color().vertex_colors.astype(np.float64)
    closest, _distance, triangle = trimesh.proximity.closest_point(source, geometry.vertices)
    weights = trimesh.triangles.points_to_barycentric(source.triangles[triangle], closest)
    sampled = np.einsum("nk,nkc->nc", np.clip(weights, 0.0, 1.0), colours[source.faces[triangle]])
    out = geometry.copy()
    out.visual = trimesh.visual.ColorVisuals(
        out, vertex_colors=np.clip(np.rint(sampled), 0, 255).astype(np.uint8)
    )
    return out


def decimate(mesh: trimesh.Trimesh, target_faces: int | None) -> trimesh.Trimesh:
    """At most ``target_faces`` faces, keeping the mesh closed (else the input is kept)."""
    from deployments.meshing.simplify import reduce_closed

    if target_faces is None or len(mesh.faces) <= target_faces:
        return mesh
    return reduce_closed(mesh, target_faces) or mesh


def repair(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Close small holes and make normals consistent and outward (a supplied mesh may lack both)."""
    out = weld(mesh)
    out.update_faces(out.nondegenerate_faces())
    out.update_faces(out.unique_faces())
    out.remove_unreferenced_vertices()
    if len(out.faces) == 0:  # nothing left to bound, hull or voxelise: bounds are None
        raise InvalidInput(
            "mesh has no non-degenerate faces (every face has zero area once vertices closer "
            "than 1e-8 are merged)",
            param="mesh",
        )
    if not out.is_watertight:
        trimesh.repair.fill_holes(out)
    trimesh.repair.fix_normals(out)
    return out


# Flat: the smallest spread of the vertices (singular value of the centred points) below this
# fraction of the largest. Exactly coplanar points, rotated, measure ~1e-16; a sheet 1e-6 of
# its width thick still has a finite hull, mass and inertia.
FLAT_RATIO = 1e-9


def check_solid(mesh: trimesh.Trimesh) -> None:
    """Collision hulls and mass properties need a volume. Vertices on one plane (a line, a
    point) have none: qhull fails on fewer than 4 of them, and a flat hull gave mass 0, a NaN
    centre of mass and inertia in URDF/MJCF, and a LinAlgError in USD."""
    points = np.asarray(mesh.vertices, dtype=np.float64)
    spread = (
        np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
        if len(points) >= 4
        else np.zeros(3)
    )
    if spread[2] <= FLAT_RATIO * spread[0]:
        raise InvalidInput(
            "mesh is flat (its vertices lie on one plane, line or point): no volume for a "
            "collision hull or mass/inertia; give it thickness, or convert it with collision "
            "off and no sim options",
            param="mesh",
        )


def _run_coacd(
    vertices: np.ndarray,
    faces: np.ndarray,
    threshold: float,
    max_parts: int,
    seed: int,
    search: dict,
) -> list[np.ndarray]:
    """CoACD's parts as vertex clouds (module level: it may run in a deadline child)."""
    import coacd

    coacd.set_log_level("error")
    raw = coacd.run_coacd(
        coacd.Mesh(vertices, faces),
        threshold=threshold,
        max_convex_hull=max_parts,
        seed=seed,
        **search,
    )
    return [np.asarray(v, dtype=np.float64) for v, _f in raw if len(v) >= 4]


def _timed_coacd(*args: Any) -> tuple[list[np.ndarray], float]:
    """``_run_coacd`` and its own seconds (a deadline child's fork and pickling left out)."""
    started = time.perf_counter()
    clouds = _run_coacd(*args)
    return clouds, time.perf_counter() - started


def _coacd_args(
    mesh: trimesh.Trimesh, options: SimOptions, seed: int, coarse: bool
) -> tuple[Any, ...]:
    """``_run_coacd``'s arguments for the full search, or the coarse one (coarser input, a
    concavity threshold of at least 0.2, a shallow tree)."""
    faces, threshold, search = (
        (COACD_COARSE_FACES, max(options.concavity, 0.2), COACD_COARSE)
        if coarse
        else (COACD_MAX_FACES, options.concavity, COACD_SEARCH)
    )
    decimated = decimate(mesh, faces)  # CoACD's cost grows with its input
    return (
        np.asarray(decimated.vertices, dtype=np.float64),
        np.asarray(decimated.faces, dtype=np.int64),
        threshold,
        options.max_parts,
        seed,
        search,
    )


def _decompose(
    mesh: trimesh.Trimesh, options: SimOptions, seed: int, budget: Budget | None
) -> list[np.ndarray]:
    """CoACD's clouds. Unbounded: the full search. With a bounded budget the coarse search
    runs first (coarser input, higher concavity threshold, shallow tree), against a deadline;
    its time predicts the full search's (FINE_OVER_COARSE times it), which runs, against its
    own deadline, only where that fits, and replaces the coarse parts only if it finishes. A
    coarse search past its deadline leaves none (the single hull). The full search first, as
    before, spent its whole deadline on every ragged outline before the coarse one even began
    (1.35 of a 3 s convert budget on the regression mask)."""
    if budget is None or not budget.bounded:
        return _run_coacd(*_coacd_args(mesh, options, seed, coarse=False))
    coarse_args = _coacd_args(mesh, options, seed, coarse=True)
    deadline = budget.share(COARSE_SHARE)
    try:
        coarse, took = run_with_deadline(_timed_coacd, coarse_args, deadline)
    except DeadlineExceeded:
        budget.degrade(
            "collision",
            f"coacd_coarse did not finish within {deadline:.2f} s of the convert budget",
            fallback="convex_hull",
        )
        return []
    deadline = budget.share(FINE_SHARE)
    predicted = FINE_OVER_COARSE * took
    if predicted > deadline:
        budget.degrade(
            "collision",
            f"coacd would take about {predicted:.1f} s ({FINE_OVER_COARSE:g}x the coarse "
            f"search's {took:.2f} s), more than its {deadline:.2f} s of the convert budget",
            fallback="coacd_coarse",
        )
        return coarse
    fine_args = _coacd_args(mesh, options, seed, coarse=False)
    deadline = budget.share(FINE_SHARE)  # what the decimation left of it
    try:
        return run_with_deadline(_run_coacd, fine_args, deadline)
    except DeadlineExceeded:
        budget.degrade(
            "collision",
            f"coacd did not finish within {deadline:.2f} s of the convert budget",
            fallback="coacd_coarse",
        )
        return coarse


def convex_parts(
    mesh: trimesh.Trimesh, options: SimOptions, seed: int = 0, budget: Budget | None = None
) -> list[trimesh.Trimesh]:
    """Convex parts whose union covers the mesh: CoACD, then each part's hull is grown to take
    in the surface samples no part contains (assigned to the nearest part), so a physics engine
    never lets anything pass through the visual surface. With a bounded ``budget`` the
    decomposition degrades (budget.py) down to the single hull."""
    if not options.decomposition:
        return [bounded_hull(mesh.vertices)]
    clouds = _decompose(mesh, options, seed, budget)
    if not clouds:
        return [bounded_hull(mesh.vertices)]
    samples = np.vstack(
        [mesh.vertices, trimesh.sample.sample_surface_even(mesh, 4000, seed=seed)[0]]
    )
    for _ in range(3):
        hulls = [bounded_hull(c) for c in clouds]
        outside = ~np.any([_inside_convex(h, samples) for h in hulls], axis=0)
        if not outside.any():
            break
        centres = np.array([h.centroid for h in hulls])
        nearest = np.argmin(((samples[outside, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        for index in np.unique(nearest):
            clouds[index] = np.vstack([clouds[index], samples[outside][nearest == index]])
    return [bounded_hull(c) for c in clouds]


def bounded_hull(points: np.ndarray) -> trimesh.Trimesh:
    """The convex hull of ``points`` with at most HULL_MAX_VERTICES vertices (physics engines
    cap hull size: PhysX 255), grown just enough to still contain every point."""
    from deployments.meshing.export import collision_hull

    return collision_hull(trimesh.PointCloud(points), max_vertices=HULL_MAX_VERTICES)


def _inside_convex(hull: trimesh.Trimesh, points: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Points on the inner side of every face plane of a convex hull (in blocks: bounded memory)."""
    normals = hull.face_normals
    offsets = np.einsum("ij,ij->i", normals, hull.triangles[:, 0])
    scale = max(float(np.abs(hull.vertices).max()), 1e-12)
    inside = np.empty(len(points), dtype=bool)
    for start in range(0, len(points), 8192):
        block = points[start : start + 8192]
        inside[start : start + 8192] = np.all(
            block @ normals.T - offsets[None, :] <= tol * scale, axis=1
        )
    return inside


def inside_union(parts: list[trimesh.Trimesh], points: np.ndarray, tol: float) -> np.ndarray:
    return np.any([_inside_convex(p, points, tol) for p in parts], axis=0)


@dataclass
class PhysicalProperties:
    mass_kg: float
    volume_m3: float
    area_m2: float
    center_of_mass: list[float]
    inertia_kg_m2: list[list[float]]  # about the centre of mass, axes of the mesh frame
    bounds: list[list[float]]
    extents: list[float]
    watertight: bool
    extra: dict[str, object] = field(default_factory=dict)


def physical_properties(mesh: trimesh.Trimesh, density: float) -> PhysicalProperties:
    """Mass properties of the closed visual mesh at ``density`` (hull's when it is not closed)."""
    solid = mesh if mesh.is_watertight and mesh.volume > 0 else mesh.convex_hull
    props = trimesh.triangles.mass_properties(solid.triangles, density=density)
    values = np.concatenate([[props.mass, props.volume], props.center_mass, props.inertia.ravel()])
    if not (np.isfinite(values).all() and props.mass > 0):  # URDF/MJCF/USD must not get them
        raise InvalidInput(
            f"mesh gives no finite mass properties (volume {float(props.volume):.3g}): it is "
            "too thin or too small to simulate",
            param="mesh",
        )
    return PhysicalProperties(
        mass_kg=float(props.mass),
        volume_m3=float(props.volume),
        area_m2=float(mesh.area),
        center_of_mass=[float(v) for v in props.center_mass],
        inertia_kg_m2=[[float(v) for v in row] for row in props.inertia],
        bounds=[[float(v) for v in row] for row in mesh.bounds],
        extents=[float(v) for v in mesh.extents],
        watertight=bool(mesh.is_watertight),
    )


def _fmt(values: list[float] | np.ndarray) -> str:
    return " ".join(f"{float(v):.9g}" for v in values)


def mjcf(
    name: str, visual_file: str, part_files: list[str], props: PhysicalProperties, up_axis: UpAxis
) -> str:
    """A MuJoCo model of the object as a free body: one collision geom per convex part (MuJoCo
    collides every mesh as its convex hull), the visual mesh in a non-colliding group."""
    inertia = np.array(props.inertia_kg_m2)
    full = [
        inertia[0, 0],
        inertia[1, 1],
        inertia[2, 2],
        inertia[0, 1],
        inertia[0, 2],
        inertia[1, 2],
    ]
    quat = (
        "" if up_axis == "z" else ' quat="0.70710678 0.70710678 0 0"'
    )  # y-up files in a z-up world
    meshes = [f'    <mesh name="visual" file={quoteattr(visual_file)}/>'] + [
        f'    <mesh name="collision_{i}" file={quoteattr(f)}/>' for i, f in enumerate(part_files)
    ]
    geoms = [
        '      <geom type="mesh" mesh="visual" contype="0" conaffinity="0" group="1" density="0"/>'
    ] + [
        f'      <geom type="mesh" mesh="collision_{i}" group="3" density="0"/>'
        for i in range(len(part_files))
    ]
    return "\n".join(
        [
            f"<mujoco model={quoteattr(name)}>",
            '  <compiler angle="radian" meshdir="."/>',
            "  <asset>",
            *meshes,
            "  </asset>",
            "  <worldbody>",
            f'    <body name={quoteattr(name)} pos="0 0 0"{quat}>',
            "      <freejoint/>",
            (
                f'      <inertial pos="{_fmt(props.center_of_mass)}" mass="{props.mass_kg:.9g}" '
                f'fullinertia="{_fmt(full)}"/>'
            ),
            *geoms,
            "    </body>",
            "  </worldbody>",
            "</mujoco>",
            "",
        ]
    )


def urdf(
    name: str, visual_file: str, part_files: list[str], props: PhysicalProperties, up_axis: UpAxis
) -> str:
    """A one-link URDF: the visual mesh, one collision element per convex part, inertial."""
    i = props.inertia_kg_m2
    rpy = "0 0 0" if up_axis == "z" else f"{math.pi / 2:.9g} 0 0"
    x, y, z = props.center_of_mass
    com = [x, y, z] if up_axis == "z" else [x, -z, y]  # rpy rotates the inertia axes, not xyz
    collisions = [
        f'    <collision name="part_{k}"><origin xyz="0 0 0" rpy="{rpy}"/>'
        f"<geometry><mesh filename={quoteattr(f)}/></geometry></collision>"
        for k, f in enumerate(part_files)
    ]
    return "\n".join(
        [
            '<?xml version="1.0"?>',
            f"<robot name={quoteattr(name)}>",
            f"  <link name={quoteattr(name)}>",
            "    <inertial>",
            f'      <origin xyz="{_fmt(com)}" rpy="{rpy}"/>',
            f'      <mass value="{props.mass_kg:.9g}"/>',
            (
                f'      <inertia ixx="{i[0][0]:.9g}" ixy="{i[0][1]:.9g}" ixz="{i[0][2]:.9g}" '
                f'iyy="{i[1][1]:.9g}" iyz="{i[1][2]:.9g}" izz="{i[2][2]:.9g}"/>'
            ),
            "    </inertial>",
            (
                f'    <visual><origin xyz="0 0 0" rpy="{rpy}"/><geometry><mesh '
                f"filename={quoteattr(visual_file)}/></geometry></visual>"
            ),
            *collisions,
            "  </link>",
            "</robot>",
            "",
        ]
    )
