"""``meshline backends check sam3``: is the Segmenter's sam3 backend usable on this node?

Lists what it needs (the sam3 package and its pins, CLIP's BPE vocabulary, the checkpoint) in
plain words, then builds it as a Segmenter replica would and runs one synthetic text prompt.
Exits 1 when something required is missing or the prompt fails, 0 when it ran.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import typer
from PIL import Image
from rich.console import Console
from rich.markup import escape

from deployments.configs import SegmenterConfig
from deployments.sam3_needs import INSTALL, blocking, sam3_findings

console = Console(stderr=True, soft_wrap=True)
PROMPT = "a red disk"


def sam3_config(checkpoint: Path | None, options: dict[str, Any] | None) -> SegmenterConfig:
    """The Segmenter config the service would build (MESHLINE_* settings), with the command
    line's checkpoint and options in place of the settings' when given."""
    from deployments.checkpoints import fetched_checkpoint
    from serve_app.settings import Settings

    settings = Settings()
    configured = str(checkpoint) if checkpoint is not None else settings.sam3_checkpoint
    if configured is None and settings.use_fetched_weights:
        found = fetched_checkpoint(settings.resolved_weights_dir, "sam3", "sam3")
        configured = str(found.path) if found is not None else None
    return SegmenterConfig.model_validate(
        {
            **settings.config_values(SegmenterConfig),
            "backend": "sam3",
            "backend_options": settings.segment_backend_options if options is None else options,
            "checkpoint": configured,
            "weights_dir": settings.resolved_weights_dir,
        }
    )


def check_sam3(config: SegmenterConfig) -> None:
    console.print(f"[bold]sam3[/bold] (the Segmenter's text-prompt backend): {INSTALL}")
    findings = sam3_findings(config)
    for finding in findings:
        colour = "green" if finding.ok else "yellow" if finding.optional else "red"
        console.print(f"  [{colour}]{escape(finding.sentence())}[/{colour}]")
    required = blocking(findings)
    if required:
        console.print(
            f"[red]sam3 cannot run here: {len(required)} required thing(s) missing.[/red] "
            "See README (the Segmenter's backends)."
        )
        raise typer.Exit(1)
    _run_once(config)


def _run_once(config: SegmenterConfig) -> None:
    """Build SAM 3 as the replica does (GPU when this process sees one), one text prompt."""
    from clients.backends import synthetic_scene
    from deployments.protocol import image_id_of
    from deployments.sam3_segmenter import Sam3Segmenter

    image, _mask = synthetic_scene()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    data = buffer.getvalue()
    started = time.perf_counter()
    try:
        model = Sam3Segmenter(config)
        loaded = time.perf_counter()
        info = model.info()
        console.print(
            f"  loaded {info['model']} ({info['weights']} weights) in {loaded - started:.1f} s "
            f"on {model.device}"
        )
        result = model.segment_image(
            image_id_of(data), data, text=PROMPT, min_score=0.0, max_masks=3
        )
    except Exception as exc:  # noqa: BLE001 — whatever the model raises, said plainly
        console.print(f"[red]sam3 failed: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    shape = tuple(result.masks.shape[1:])
    if not len(result.scores) or shape != image.shape[:2]:
        console.print(f"[red]sam3 gave no usable mask for {PROMPT!r}: masks {shape}[/red]")
        raise typer.Exit(1)
    console.print(
        f"  one synthetic text prompt {PROMPT!r} → {len(result.scores)} masks "
        f"{shape[1]}x{shape[0]}, scores {', '.join(f'{s:.3f}' for s in result.scores)}, "
        f"{time.perf_counter() - loaded:.1f} s"
    )
    if info["weights"] == "random":
        console.print("  [yellow]random weights: the scores say nothing about quality[/yellow]")
    console.print("[green]sam3 works here.[/green]")
