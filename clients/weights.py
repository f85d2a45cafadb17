"""``meshline weights``: fetch official SAM 2.1 and YOLO checkpoints into the weights cache.

Only this command downloads weights (the service never does): the files come from their
publishers (Meta's Hugging Face model repos, Ultralytics' GitHub release assets), resume after
an interruption, are verified by SHA-256 and then loaded by ``make serve`` when no checkpoint is
configured (see ``serve_app.app.resolve_weights``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from deployments.checkpoints import (
    CATALOGUE,
    MIRROR_ENV,
    KnownCheckpoint,
    download_url,
    entry_for_config,
    fetch,
    status,
)
from deployments.errors import ModelLoadError

weights_app = typer.Typer(
    help="Official model checkpoints: fetch them into the weights cache, list what is there.",
    no_args_is_help=True,
)
console = Console(stderr=True)

WeightsDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights-dir",
        help="Weights cache (default: the service's, MESHLINE_WEIGHTS_CACHE_DIR or "
        "MESHLINE_DATA_DIR/weights).",
    ),
]


def _settings_weights_dir() -> tuple[Path, list[KnownCheckpoint]]:
    """The service's weights cache, and the checkpoints its configured models would load."""
    from serve_app.settings import Settings

    settings = Settings()
    wanted = [
        entry
        for entry in (
            entry_for_config(settings.sam2_config, "sam2"),
            entry_for_config(settings.detector_model, "yolo"),
        )
        if entry is not None
    ]
    return settings.resolved_weights_dir, wanted


def _size(n: object) -> str:
    return f"{int(n) / 2**20:.1f} MiB" if isinstance(n, int) else ""


@weights_app.command("list")
def list_weights(
    weights_dir: WeightsDirOpt = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Hash fetched files to verify them.")
    ] = True,
) -> None:
    """Known checkpoints: which are fetched, and whether they verify."""
    default_dir, configured = _settings_weights_dir()
    weights_dir = (weights_dir or default_dir).expanduser().resolve()
    table = Table(
        title=f"checkpoints in {weights_dir}",
        caption="* fits the configured model. digest: pinned in meshline; hub: stated by "
        "Hugging Face at fetch; TOFU: recorded at the first fetch; recorded: enforced.",
    )
    for column in ("name", "config", "state", "size", "digest"):
        table.add_column(column, overflow="fold")
    colours = {"verified": "green", "MISMATCH": "red", "unverifiable": "yellow"}
    for row in status(weights_dir, verify=verify):
        entry = CATALOGUE[str(row["name"])]
        state = str(row["state"])
        colour = colours.get(state)
        digest = str(row["digest"])
        if digest == "at first fetch":
            digest = "hub" if entry.hub_digest else "TOFU"
        table.add_row(
            entry.name + (" *" if entry in configured else ""),
            ", ".join(entry.configs),
            f"[{colour}]{state}[/{colour}]" if colour else state,
            _size(row["size"]),
            digest,
        )
    Console().print(table)


@weights_app.command("fetch")
def fetch_weights(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Checkpoints (see `meshline weights list`), e.g. sam2.1-tiny yolov8n; "
            "default: the ones the configured models fit (MESHLINE_SAM2_CONFIG, "
            "MESHLINE_DETECTOR_MODEL)."
        ),
    ] = None,
    weights_dir: WeightsDirOpt = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            envvar=MIRROR_ENV,
            help="Base URL that replaces the publishers' hosts (same paths).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Download again, forgetting a recorded (not pinned) digest."),
    ] = False,
) -> None:
    """Download official checkpoints (resumable), verify their SHA-256, keep them for serving."""
    default_dir, wanted = _settings_weights_dir()
    weights_dir = (weights_dir or default_dir).expanduser().resolve()
    if names:
        unknown = [name for name in names if name not in CATALOGUE]
        if unknown:
            console.print(
                f"[red]unknown checkpoint(s): {', '.join(unknown)}[/red]; known: "
                + ", ".join(CATALOGUE)
            )
            raise typer.Exit(2)
        wanted = [CATALOGUE[name] for name in dict.fromkeys(names)]
    if not wanted:
        console.print("[red]no known checkpoint fits the configured models: name them[/red]")
        raise typer.Exit(2)
    failed = False
    for entry in wanted:
        console.print(f"{entry.name}: {download_url(entry, mirror)}", soft_wrap=True)
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            ) as progress:
                task = progress.add_task(entry.filename, total=None)

                def on_progress(done: int, total: int | None, task: object = task) -> None:
                    progress.update(task, completed=done, total=total)  # type: ignore[arg-type]

                result = fetch(
                    entry, weights_dir, mirror=mirror, force=force, on_progress=on_progress
                )
        except ModelLoadError as exc:
            console.print(f"[red]{entry.name}: {exc}[/red]", soft_wrap=True)
            failed = True
            continue
        how = {
            "pinned": "matches the pinned digest",
            "hub": "matches the digest the hub states",
            "recorded": "digest recorded now (first fetch) and enforced from now on"
            if result.downloaded_bytes
            else "matches the digest recorded at its first fetch",
        }[result.digest_source]
        if result.downloaded_bytes == 0:
            note = "already fetched"
        elif result.resumed_from:
            note = f"resumed at {_size(result.resumed_from)}"
        else:
            note = "downloaded"
        console.print(
            f"[green]{entry.name}[/green]: {result.path} ({note}; SHA-256 {result.sha256}, {how})",
            soft_wrap=True,
        )
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    weights_app()
