"""``meshline backends check NAME``: on a node, is this learned shape backend usable here?
(``sam3``, the Segmenter's text-prompt backend: clients/sam3_check.py.)

Imports what it needs for real, looks for its weight files, then loads it and reconstructs one
synthetic image (a shaded disk) the way the Reconstructor does, and paints it. Prints what is
missing in plain words; exits 1 when the backend cannot run, 0 when it did.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape

backends_app = typer.Typer(
    help="Learned backends (shape: hunyuan3d, trellis, sam3d; segment: sam3): check one on "
    "this node.",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)


def synthetic_scene(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A shaded red disk on grey, and its mask: enough for a backend to produce a shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(yy - size / 2, xx - size / 2) / (size * 0.3)
    mask = r <= 1.0
    shade = np.clip(1.0 - 0.5 * r, 0.0, 1.0)
    image = np.full((size, size, 3), 128, dtype=np.uint8)
    image[mask] = (np.stack([220 * shade, 60 * shade, 50 * shade], -1)[mask]).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


@backends_app.command("check")
def check(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="hunyuan3d, trellis, sam3d or sam3.")],
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            envvar="MESHLINE_RECONSTRUCT_WEIGHTS",
            help="The backend's local weights folder (sam3: its sam3.pt; default "
            "MESHLINE_SAM3_CHECKPOINT or the fetched one).",
        ),
    ] = None,
    options: Annotated[
        str | None,
        typer.Option(
            "--options",
            envvar="MESHLINE_RECONSTRUCT_BACKEND_OPTIONS",
            help='Backend options as JSON, e.g. \'{"steps": 30}\' or \'{"repo": "/opt/sam3d"}\' '
            "(sam3: '{\"arch\": {}}'; default MESHLINE_SEGMENT_BACKEND_OPTIONS).",
        ),
    ] = None,
) -> None:
    """Import NAME's packages and extensions, look for its weights, load it, run one image."""
    from deployments.backends import diagnose, spec_for
    from deployments.errors import ModelLoadError

    if name == "sam3":  # the Segmenter's: the MESHLINE_RECONSTRUCT_* defaults are not its own
        _check_sam3(_typed(ctx, "weights", weights), _typed(ctx, "options", options))
        return
    try:
        spec = spec_for(name)
    except ModelLoadError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    try:
        backend_options: dict[str, Any] = json.loads(options) if options else {}
    except json.JSONDecodeError as exc:
        console.print(f"[red]--options is not JSON: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"[bold]{name}[/bold]: {spec.install}")
    missing = diagnose(spec, weights, backend_options)
    absent = {m.need for m in missing}
    for need in spec.needs_for(backend_options):
        if need not in absent:
            console.print(f"  [green]ok[/green]      {need.kind} {need.name}")
    required = [m for m in missing if m.need.optional is None]
    for item in missing:
        colour = "yellow" if item.need.optional else "red"
        console.print(f"  [{colour}]{escape(item.sentence())}[/{colour}]")
    if required:
        console.print(
            f"[red]{name} cannot run here: {len(required)} required thing(s) missing.[/red] "
            f"Weights: {escape(spec.weights_hint)}; install: cluster/backends/README.md"
        )
        raise typer.Exit(1)
    _run_once(name, weights, backend_options)


def _typed(ctx: typer.Context, param: str, value: Any) -> Any:
    """``value`` when it was given on the command line (not from an environment variable)."""
    source = ctx.get_parameter_source(param)  # typer's own click: compared by name
    return value if getattr(source, "name", None) == "COMMANDLINE" else None


def _check_sam3(checkpoint: Path | None, options: str | None) -> None:
    from clients.sam3_check import check_sam3, sam3_config

    try:
        parsed: dict[str, Any] | None = json.loads(options) if options else None
    except json.JSONDecodeError as exc:
        console.print(f"[red]--options is not JSON: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    if parsed is not None and not isinstance(parsed, dict):
        console.print("[red]--options must be a JSON object[/red]")
        raise typer.Exit(2)
    check_sam3(sam3_config(checkpoint, parsed))


def _run_once(name: str, weights: Path | None, options: dict[str, Any]) -> None:
    """Load and run it as a Reconstructor replica would (GPU when this process sees one)."""
    from deployments.configs import ReconstructorConfig
    from deployments.reconstructor import MeshReconstructor

    config = ReconstructorConfig.model_validate(
        {"backend": name, "weights": weights, "backend_options": options, "isolation": "thread"}
    )
    image, mask = synthetic_scene()
    started = time.perf_counter()
    try:
        model = MeshReconstructor(config)
        loaded = time.perf_counter()
        console.print(f"  loaded in {loaded - started:.1f} s on {model.device}")
        shape = model.reconstruct(image, mask)
        shaped = time.perf_counter()
        stats = shape.stats
        console.print(
            f"  one synthetic image → {stats['faces']} faces, "
            f"{'watertight' if stats['watertight'] else 'NOT watertight'}, "
            f"{shaped - loaded:.1f} s"
        )
        painted = model.paint(shape.mesh, image, mask)
        console.print(
            f"  painted ({model.info().get('paint', 'built-in projection')}): texture "
            f"{painted.stats['texture_size']}, {time.perf_counter() - shaped:.1f} s"
        )
    except Exception as exc:  # noqa: BLE001 — whatever the backend raises, said plainly
        console.print(f"[red]{name} failed: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    if not stats["watertight"]:
        raise typer.Exit(1)
    console.print(f"[green]{name} works here.[/green]")
