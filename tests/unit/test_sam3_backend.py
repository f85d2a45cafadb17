"""The sam3 segmenter backend from the core venv: its real-model tests (run in the .tools/sam3
venv, where sam3's pins live), the 422 for text on SAM2, the replica's runtime_env, weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.checkpoints import CATALOGUE, _hub_auth
from deployments.configs import sam3_requirements, sam3_runtime_env
from deployments.errors import ModelLoadError, UnsupportedPrompt
from deployments.segmenter import refuse_text
from serve_app.api import create_api
from serve_app.app import deployment_options, model_table, resolve_weights, with_sam3_env
from serve_app.settings import Settings
from tests.helpers import local_services, make_scene
from tests.unit.test_bounds_json import _call

ROOT = Path(__file__).resolve().parents[2]
SAM3_PYTHON = ROOT / ".tools" / "sam3" / "bin" / "python"
PNG = make_scene().png()


def test_sam3_model_in_its_own_venv() -> None:
    """tests/sam3 (real sam3 code, random weights, one text prompt) in the venv of sam3's pins."""
    assert SAM3_PYTHON.exists(), f"{SAM3_PYTHON} missing: run `make test-tools`"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [str(SAM3_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/sam3"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout  # the sam3 tests ran there, not skipped
    pinned = subprocess.run(
        [str(SAM3_PYTHON), "-c", "import numpy, sam3; print(numpy.__version__, sam3.__version__)"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert pinned.stdout.split() == ["2.3.5", "0.1.4"]  # sam3's numpy<2.4, not the core's


def test_sam3_is_not_in_the_core_venv() -> None:
    import importlib.util

    assert importlib.util.find_spec("sam3") is None
    assert not sys.modules.get("sam3")


@pytest.mark.parametrize(
    "options",
    [{"text": "chair"}, {"text": "chair", "min_score": 0.2, "max_masks": 3}],
)
def test_text_on_sam2_is_a_422_that_says_so(tmp_path: Path, options: dict[str, Any]) -> None:
    app = create_api(local_services(tmp_path))  # segment_backend: sam2 (the default)
    data = {"options": json.dumps(options)}
    response = _call(app, "POST", "/v1/segment", files={"image": PNG}, data=data)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "unsupported_prompt" and error["param"] == "options.text"
    assert "sam3" in error["message"]
    job = _call(
        app,
        "POST",
        "/v1/jobs",
        files={"image": ("s.png", PNG)},
        data={"options": json.dumps({"prompt": {"text": "chair", "max_objects": 3}})},
    )
    assert job.status_code == 422 and job.json()["error"]["type"] == "unsupported_prompt"
    with pytest.raises(UnsupportedPrompt):  # the replica refuses too (notebook callers)
        refuse_text("chair")
    refuse_text(None)


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("/v1/segment", {"text": "x" * 201}),
        ("/v1/segment", {"text": "   "}),
        ("/v1/segment", {"text": "chair", "points": [[5, 5]]}),
        ("/v1/segment", {"text": "chair", "max_masks": 0}),
        ("/v1/jobs", {"prompt": {"text": "chair"}, "detect": True}),
        ("/v1/jobs", {"prompt": {"text": "chair", "max_objects": 51}}),
    ],
)
def test_text_prompt_bounds(tmp_path: Path, path: str, options: dict[str, Any]) -> None:
    app = create_api(local_services(tmp_path, segment_backend="sam3"))
    response = _call(
        app, "POST", path, files={"image": ("s.png", PNG)}, data={"options": json.dumps(options)}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] != "unsupported_prompt"


def test_sam3_replica_gets_its_runtime_env_and_weights(tmp_path: Path) -> None:
    packages = sam3_requirements()
    assert "sam3==0.1.4" in packages and "numpy==2.3.5" in packages
    assert any(p.startswith("open_clip_torch==") for p in packages)  # CLIP's BPE vocabulary
    options = deployment_options("cpu", {})
    with_sam3_env(options)
    actor = options["Segmenter"]["ray_actor_options"]
    assert actor["runtime_env"] == sam3_runtime_env() and actor["num_cpus"] > 0
    own = {"Segmenter": {"ray_actor_options": {"runtime_env": {"env_vars": {"A": "1"}}}}}
    with_sam3_env(own)  # a runtime_env given by the caller is kept
    assert own["Segmenter"]["ray_actor_options"]["runtime_env"] == {"env_vars": {"A": "1"}}
    makefile = (ROOT / "Makefile").read_text()
    assert "deployments/sam3-requirements.txt" in makefile  # the test venv: the same pins

    settings = Settings(data_dir=tmp_path, segment_backend="sam3")
    weights = resolve_weights(settings)
    assert weights.segmenter.checkpoint is None  # random init (with a warning in the replica)
    assert model_table(settings, weights)["Segmenter"] == {"weights": "random", "model": "sam3"}
    chosen = Settings(data_dir=tmp_path, segment_backend="sam3", sam3_checkpoint="/m/sam3.pt")
    assert resolve_weights(chosen).segmenter.checkpoint == "/m/sam3.pt"


def test_sam3_checkpoint_is_gated_behind_hf_token(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = CATALOGUE["sam3"]
    assert (
        entry.family == "sam3"
        and entry.gated
        and entry.url.endswith("facebook/sam3/resolve/main/sam3.pt")
    )
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ModelLoadError, match="HF_TOKEN"):
        _hub_auth(entry, entry.url)
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    assert _hub_auth(entry, entry.url) == {"Authorization": "Bearer hf_abc"}
    assert _hub_auth(entry, "http://mirror.internal/facebook/sam3/resolve/main/sam3.pt") == {}
    assert _hub_auth(CATALOGUE["sam2.1-tiny"], CATALOGUE["sam2.1-tiny"].url) == {}
    assert isinstance(httpx.Client(headers=_hub_auth(entry, entry.url)), httpx.Client)
