"""`make serve`'s foreground process: `serve run CONFIG` on the local Ray head, ended with a
clear message when that head is gone.

Why not a bare `serve run`: once its cluster dies (`ray stop --force`, an OOM kill of the GCS) a
`serve run` driver never exits. It keeps retrying the GCS at about half a core, and when a new
head comes up on the same port it loads that one's GCS about as much. Here `serve run` is a
child in its own session; this process watches the head's GCS (the `gcs_server` of the newest
session under the head's temp dir) and, when that process is gone, stops the child and exits 3.
Ctrl-C (or `make stop`, which sends SIGINT here) is passed on once, so `serve run` deletes the
app as usual.

    python cluster/serve_local.py CONFIG --temp-dir /tmp/ray-meshline [--http-port 8000]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

CLUSTER_GONE_EXIT = 3
CHILD_STOP_GRACE_S = 30.0


def head_gcs_process(temp_dir: Path) -> psutil.Process:
    """The GCS server of the head whose session is newest under ``temp_dir``."""
    session = (temp_dir / "session_latest").resolve()
    if not session.is_dir():
        raise SystemExit(f"no Ray head under {temp_dir} (start one with `make serve`)")
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if (
            cmdline
            and Path(cmdline[0]).name == "gcs_server"
            and any(session.name in arg for arg in cmdline)
        ):
            return proc
    raise SystemExit(f"the Ray head of {session} is not running (start it with `make serve`)")


def effective_config(config: Path, http_port: int | None, temp_dir: Path) -> Path:
    """``config`` itself, or a copy beside the head's files with another HTTP port."""
    if http_port is None:
        return config
    data = yaml.safe_load(config.read_text())
    data.setdefault("http_options", {})["port"] = http_port
    fd, name = tempfile.mkstemp(prefix=f"serve-{http_port}-", suffix=".yaml", dir=temp_dir)
    with open(fd, "w") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    return Path(name)


def is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def end_child(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: with its cluster gone, `serve run` has nothing to clean up."""
    child.terminate()
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--temp-dir", type=Path, required=True, help="the head's --temp-dir")
    parser.add_argument("--http-port", type=int, help="override http_options.port")
    parser.add_argument("--check-interval-s", type=float, default=2.0)
    args = parser.parse_args()

    gcs = head_gcs_process(args.temp_dir)
    config = effective_config(args.config, args.http_port, args.temp_dir)
    serve = Path(sys.executable).with_name("serve")
    child = subprocess.Popen([str(serve), "run", str(config)], start_new_session=True)

    stop_requested_at: float | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested_at
        if stop_requested_at is None:  # pass Ctrl-C / make stop on once
            stop_requested_at = time.monotonic()
            child.send_signal(signal.SIGINT)  # serve run then deletes the app

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while True:
            try:
                code = child.wait(timeout=args.check_interval_s)
            except subprocess.TimeoutExpired:
                pass
            else:
                return 0 if stop_requested_at is not None else code
            if stop_requested_at is not None:
                if time.monotonic() - stop_requested_at > CHILD_STOP_GRACE_S:
                    end_child(child)
                    return 0
                continue
            if not is_alive(gcs):
                print(
                    f"\nmeshline: the Ray head this app ran on is gone (its GCS, pid {gcs.pid}, "
                    "exited). Stopping `serve run`; run `make serve` again to start a new head.",
                    file=sys.stderr,
                    flush=True,
                )
                end_child(child)
                return CLUSTER_GONE_EXIT
    finally:
        if config != args.config:
            config.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
