"""Jobs complete on a two-node Ray cluster with deployments spread over both nodes, the
PostgreSQL job store and S3 artifacts (run in a subprocess: one Ray instance per process)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from tests.helpers import ARTIFACT_BUCKET, POSTGRES_URL

ROOT = Path(__file__).resolve().parents[2]


def test_two_node_cluster_with_postgres(s3_endpoint: str, tmp_path: Path) -> None:
    schema = f"meshline_two_node_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        db_url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.cluster.two_node_app",
                db_url,
                s3_endpoint,
                ARTIFACT_BUCKET,
                str(tmp_path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        assert result.returncode == 0 and lines, result.stderr[-4000:]
        seen = json.loads(lines[-1].removeprefix("RESULT "))
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            statuses = conn.execute(f'SELECT status, runs FROM "{schema}".jobs').fetchall()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    assert len(seen["cluster_nodes"]) == 2
    nodes = seen["nodes"]
    assert len(set(nodes.values())) == 2, nodes  # deployments really are on both nodes
    assert nodes["Segmenter"] == nodes["Detector"] == nodes["Converter"] != nodes["Reconstructor"]
    assert [job["status"] for job in seen["jobs"]] == ["succeeded", "succeeded"], seen["jobs"]
    assert all(job["glb_magic"] == "glTF" for job in seen["jobs"])
    assert statuses == [("succeeded", 1), ("succeeded", 1)]  # the state lives in PostgreSQL
