"""Geometry stages (reconstruct, paint, convert): seconds per stage, before/after, raw vs meshline.

Scenes: the regression mask (tests/data/noisy_mask.png, a random-weights SAM2 mask: ragged,
~100 holes) on ultralytics' bus.jpg scaled to the mask's 320×240, and bus.jpg at full size
(810×1080) with that mask scaled up (a ragged random-weights-like mask at photo resolution).

Sides, each in a fresh interpreter so imports and caches do not leak between them:

* ``raw``: the meshing library calls without the service: the plain ``MeshReconstructor`` /
  ``MeshConverter`` classes called in this process, with their default configs;
* ``meshline``: the same calls as a job's stages make them (the image and mask as stored files,
  decoded in the replica), through the deployment classes
  (``ReconstructorDeployment`` / ``ConverterDeployment``, unwrapped from Serve) with their
  default process isolation: each call runs in a warm child process that a cancelled stage
  kills (deployments/meshing/isolate.py) — the replica-side cost of a job's geometry stages;
* ``before``: ``raw`` on another checkout of the code (``--before DIR``, e.g.
  ``git archive HEAD~N | tar -x -C DIR``), the same venv.

    python -m bench.geometry --before /tmp/before --out bench/results/cpu_2core_geometry.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import child_env

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("reconstruct", "paint", "convert")


def scene(name: str) -> tuple[Any, Any]:
    import numpy as np
    import ultralytics
    from PIL import Image

    bus = Image.open(Path(ultralytics.__file__).parent / "assets" / "bus.jpg").convert("RGB")
    # The checkout being measured runs in its own root (cwd): its copy of the mask.
    noisy = np.asarray(Image.open(Path.cwd() / "tests" / "data" / "noisy_mask.png")) > 0
    if name == "noisy_mask":
        return np.asarray(bus.resize((noisy.shape[1], noisy.shape[0]), Image.BILINEAR)), noisy
    if name == "bus":
        mask = Image.fromarray(noisy).resize((bus.width, bus.height), Image.NEAREST)
        return np.asarray(bus), np.asarray(mask)
    raise ValueError(name)


def scene_files(name: str) -> tuple[bytes, bytes]:
    """``scene(name)`` as the files a job stores (lossless PNGs of the same pixels, the mask
    0/255): what a job's stages send the replicas, which decode them."""
    import io

    from PIL import Image

    image, mask = scene(name)

    def png(array: Any) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    return png(image), png(mask.astype("uint8") * 255)


def _summary(reconstructed: Any, painted: Any, converted: Any) -> dict[str, Any]:
    stats = converted.stats
    return {
        "faces": reconstructed.stats["faces"],
        "grid": reconstructed.stats.get("grid"),
        "texture_size": painted.stats.get("texture_size"),
        "collision_parts": stats.get("collision", {}).get("parts"),
        "self_intersecting": stats["visual"].get("self_intersecting"),
        "budget": {
            "reconstruct": reconstructed.stats.get("budget"),
            "paint": painted.stats.get("budget"),
            "convert": stats.get("budget"),
        },
    }


def run_raw(name: str) -> dict[str, Any]:
    from deployments.configs import ConverterConfig, ReconstructorConfig
    from deployments.converter import MeshConverter
    from deployments.reconstructor import MeshReconstructor

    image, mask = scene(name)
    reconstructor = MeshReconstructor(ReconstructorConfig())
    converter = MeshConverter(ConverterConfig())
    # Imports a warm replica has done already (open3d alone is seconds): not a stage's cost.
    import coacd  # noqa: F401
    import open3d  # noqa: F401
    import xatlas  # noqa: F401

    import deployments.meshing.inflate
    import deployments.meshing.paint
    import deployments.meshing.preview
    import deployments.meshing.sim  # noqa: F401

    time.sleep(3)  # and, after, the forkserver the budgets use has started
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    reconstructed = reconstructor.reconstruct(image, mask)
    seconds["reconstruct"] = time.perf_counter() - started
    started = time.perf_counter()
    painted = reconstructor.paint(reconstructed.mesh, image, mask)
    seconds["paint"] = time.perf_counter() - started
    started = time.perf_counter()
    converted = converter.convert(painted.mesh, "glb", sim={})
    seconds["convert"] = time.perf_counter() - started
    return {"seconds": seconds, **_summary(reconstructed, painted, converted)}


async def _run_deployments(name: str) -> dict[str, Any]:
    from deployments.configs import ConverterConfig, ReconstructorConfig
    from deployments.converter import ConverterDeployment
    from deployments.reconstructor import ReconstructorDeployment

    image, mask = scene_files(name)
    reconstructor = ReconstructorDeployment.func_or_class(ReconstructorConfig())
    converter = ConverterDeployment.func_or_class(ConverterConfig())
    for deployment in (reconstructor, converter):  # warm children, as a replica's before a job
        if deployment._workers is not None:
            await deployment._workers.ready()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    reconstructed = await reconstructor.reconstruct(image, mask)
    seconds["reconstruct"] = time.perf_counter() - started
    started = time.perf_counter()
    painted = await reconstructor.paint(reconstructed.mesh, image, mask)
    seconds["paint"] = time.perf_counter() - started
    started = time.perf_counter()
    converted = await converter.convert(painted.mesh, "glb", sim={})
    seconds["convert"] = time.perf_counter() - started
    return {"seconds": seconds, **_summary(reconstructed, painted, converted)}


def child(side: str, name: str) -> dict[str, Any]:
    if side == "meshline":
        result = asyncio.run(_run_deployments(name))
    else:
        result = run_raw(name)
    result["seconds"] = {k: round(v, 3) for k, v in result["seconds"].items()}
    result["seconds"]["total"] = round(sum(result["seconds"].values()), 3)
    return result


def in_subprocess(side: str, name: str, root: Path) -> dict[str, Any]:
    env = child_env(root)
    code = (
        "import json,sys;sys.path.insert(0,sys.argv[3]);import bench_geometry_child as c;"
        "print('RESULT'+json.dumps(c.child(sys.argv[1],sys.argv[2])))"
    )
    # The child module is this file, importable from any checkout (``before`` has none).
    shim = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_geometry_shim"
    shim.mkdir(exist_ok=True)
    (shim / "bench_geometry_child.py").write_text(Path(__file__).read_text())
    out = subprocess.run(
        [sys.executable, "-c", code, side, name, str(shim)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code before the change")
    parser.add_argument("--scenes", nargs="+", default=["noisy_mask", "bus"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cpu_2core_geometry.json")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "device": f"cpu ({os.cpu_count()} cores, {platform.machine()})",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": "reconstruct + paint + convert <= 5 s on noisy_mask (issue 12 §4)",
        "load_average_at_start": os.getloadavg(),
        "scenes": {},
    }
    for name in args.scenes:
        sides: dict[str, Any] = {}
        if args.before is not None:
            sides["before"] = in_subprocess("raw", name, args.before.resolve())
        sides["raw"] = in_subprocess("raw", name, ROOT)
        sides["meshline"] = in_subprocess("meshline", name, ROOT)
        report["scenes"][name] = sides
        print(name, {side: r["seconds"] for side, r in sides.items()}, flush=True)
    report["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
