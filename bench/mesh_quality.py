"""3D quality on synthetic ground truth: known silhouettes → reconstruct → paint → convert,
measured against the mask and loaded in real simulators.

Per shape: watertight/manifold, front-silhouette IoU vs the mask, requested size error,
collision parts (convex, covering sampled surface points), glTF-Validator errors, MuJoCo drop
test (rests on the plane), URDF parse, seconds per stage.

    python -m bench.mesh_quality --out bench/results/mesh_quality.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tests.quality import SHAPES, evaluate


def table(results: list[dict[str, Any]]) -> str:
    """The per-shape figures as a Markdown table."""
    lines = [
        (
            "| shape | IoU | faces | parts | covered | glTF errors | rest COM z (m) "
            "| reconstruct / paint / convert (s) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["seconds"]
        lines.append(
            f"| {r['shape']} | {r['silhouette_iou']:.4f} | {r['faces']} | {r['collision_parts']} | "
            f"{r['surface_covered']:.3f} | "
            f"{r['gltf_textured']['errors'] + r['gltf_visual']['errors']} | "
            f"{r['mujoco']['rest_com_z_m']:.4f} | {s['reconstruct']:.2f} / {s['paint']:.2f} / "
            f"{s['convert']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [evaluate(kind) for kind in SHAPES]
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
