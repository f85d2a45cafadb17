"""The ``meshline`` command: submit images, follow jobs with per-stage progress, download.

Every command takes ``--api-key`` (or ``MESHLINE_API_KEY``) for a service with API keys; the
key is sent as ``Authorization: Bearer`` and never printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from clients.backends import backends_app
from clients.client import AuthenticationError, MeshlineClient, MeshlineError
from clients.weights import weights_app

# No local variables in tracebacks, ever: they would show the API key.
app = typer.Typer(
    help="meshline: photos → masks, detections and 3D meshes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(weights_app, name="weights")
app.add_typer(backends_app, name="backends")
console = Console(stderr=True)

HostOpt = Annotated[str, typer.Option("--host", envvar="MESHLINE_HOST", help="Service host.")]
PortOpt = Annotated[int, typer.Option("--port", envvar="MESHLINE_PORT", help="Service port.")]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="MESHLINE_API_KEY",
        show_default=False,
        help="API key of a service with keys (sent as a Bearer header; prefer the env var, "
        "which stays out of the shell history and the process list).",
    ),
]
NEEDS_KEY = "the service needs an API key: pass --api-key or set MESHLINE_API_KEY"


def _client(host: str, port: int, api_key: str | None = None) -> MeshlineClient:
    base = host if host.startswith(("http://", "https://")) else f"http://{host}:{port}"
    try:
        return MeshlineClient(base, api_key=api_key)
    except ValueError as exc:  # a malformed key; the message does not contain it
        _fail(str(exc))


def _fail(error: Exception | str) -> NoReturn:
    """Print the error in red on stderr and exit 2. Messages come from the service, the client
    or httpx (which never puts headers in its messages), so they never contain the key."""
    message = str(error)
    if isinstance(error, AuthenticationError) and not error.key_sent:
        message = f"HTTP {error.status}: {NEEDS_KEY}"
    elif isinstance(error, httpx.HTTPError):
        message = f"could not reach the service: {error}"
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
    raise typer.Exit(2)


def _follow(client: MeshlineClient, job_id: str, timeout_s: float | None) -> dict[str, Any]:
    """Show one progress bar per stage until the job ends."""
    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.fields[state]:<10}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:

        def update(status: dict[str, Any]) -> None:
            for stage in status["stages"]:
                if stage["name"] not in bars:
                    bars[stage["name"]] = progress.add_task(
                        stage["name"], total=100, state="pending"
                    )
                progress.update(
                    bars[stage["name"]], completed=stage["progress"], state=stage["status"]
                )

        return client.wait(job_id, timeout_s=timeout_s, on_update=update)


@app.command()
def submit(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Image file.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Download artifacts here (implies --wait).")
    ] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", exists=True, help="Mask PNG (skips segment).")
    ] = None,
    options: Annotated[str | None, typer.Option("--options", help="Job options as JSON.")] = None,
    stages: Annotated[
        str | None, typer.Option("--stages", help="Comma list, e.g. segment,reconstruct.")
    ] = None,
    detect: Annotated[
        bool, typer.Option("--detect", help="Prompt SAM2 with the detector's top box.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait at most.")
    ] = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: KeyOpt = None,
) -> None:
    """Submit IMAGE as a job; print its id (and follow it with --wait)."""
    job_options: dict[str, Any] = json.loads(options) if options else {}
    if stages:
        job_options["stages"] = [s.strip() for s in stages.split(",") if s.strip()]
    if detect:
        job_options["detect"] = True
    with _client(host, port, api_key) as client:
        try:
            job_id = client.submit(image, options=job_options, mask=mask)
            console.print(f"job [bold]{job_id}[/bold] queued")
            # Its page (progress, masks, 3D, downloads); the key is typed there, never in a URL.
            console.print(f"Studio: {client.base_url}/studio#job={job_id}", soft_wrap=True)
            if not (wait or out):
                typer.echo(job_id)
                return
            status = _follow(client, job_id, timeout)
            _print_status(status)
            if out is not None and status["status"] == "succeeded":
                saved = client.download(job_id, out)
                console.print(f"saved {len(saved)} files to {out}")
        except (MeshlineError, httpx.HTTPError) as exc:
            _fail(exc)
    typer.echo(job_id)
    if status["status"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def status(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: KeyOpt = None,
) -> None:
    """Show a job's state, stages and artifacts."""
    with _client(host, port, api_key) as client:
        try:
            job = client.job(job_id)
        except (MeshlineError, httpx.HTTPError) as exc:
            _fail(exc)
    if as_json:
        typer.echo(json.dumps(job, indent=2))
    else:
        _print_status(job)


@app.command()
def cancel(
    job_id: str, host: HostOpt = "127.0.0.1", port: PortOpt = 8000, api_key: KeyOpt = None
) -> None:
    """Cancel a queued or running job."""
    with _client(host, port, api_key) as client:
        try:
            _print_status(client.cancel(job_id))
        except (MeshlineError, httpx.HTTPError) as exc:
            _fail(exc)


@app.command()
def download(
    job_id: str,
    out: Annotated[Path, typer.Option("--out", help="Target directory.")] = Path("out"),
    name: Annotated[list[str] | None, typer.Option("--name", help="Only these artifacts.")] = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: KeyOpt = None,
) -> None:
    """Download a job's artifacts."""
    with _client(host, port, api_key) as client:
        try:
            saved = client.download(job_id, out, names=name)
        except (MeshlineError, httpx.HTTPError) as exc:
            _fail(exc)
    for path in saved:
        typer.echo(str(path))


@app.command("reload-model")
def reload_model(
    model_id: str,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: KeyOpt = None,
) -> None:
    """Make every Detector replica load MODEL_ID's current file (needs an admin key)."""
    with _client(host, port, api_key) as client:
        try:
            reloaded = client.reload_model(model_id)
        except (MeshlineError, httpx.HTTPError) as exc:
            _fail(exc)
    console.print(f"model {reloaded['model_id']}: generation {reloaded['generation']}")


def _print_status(job: dict[str, Any]) -> None:
    table = Table(title=f"job {job['job_id']}: {job['status']} ({job['progress']:.0f}%)")
    for column in ("stage", "status", "attempts", "seconds", "error"):
        table.add_column(column)
    for stage in job["stages"]:
        seconds = "" if stage["seconds"] is None else f"{stage['seconds']:.2f}"
        # Server text is shown as text: "[/]" in an error is no Rich markup (it crashed the
        # CLI) and "[link=…]" no link.
        table.add_row(
            stage["name"],
            stage["status"],
            str(stage["attempts"]),
            seconds,
            Text(stage["error"] or ""),
        )
    console.print(table)
    if job.get("error"):
        console.print(Text(job["error"], style="red"))
    if job["artifacts"]:
        console.print("artifacts: " + ", ".join(a["name"] for a in job["artifacts"]))


if __name__ == "__main__":
    app()
