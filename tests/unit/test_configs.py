"""configs/serve.yaml and its CPU variant: valid Serve configs that agree with the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import DEPLOYMENT_NAMES, MeshlineArgs, build_app
from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MODEL_DEPLOYMENTS = ("Segmenter", "Reconstructor", "Converter", "Detector")


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


@pytest.mark.parametrize("name", ["serve.yaml", "serve.cpu.yaml"])
def test_config_is_a_valid_serve_config(name: str) -> None:
    config = ServeDeploySchema.model_validate(_load(name))
    (app,) = config.applications
    assert app.name == "meshline" and app.import_path == "serve_app.app:build_app"
    MeshlineArgs.model_validate(app.args)
    assert {d.name for d in app.deployments} == set(DEPLOYMENT_NAMES)


def test_gpu_config_shares_one_gpu_and_scales_to_zero() -> None:
    deployments = {d["name"]: d for d in _load("serve.yaml")["applications"][0]["deployments"]}
    gpus = [deployments[name]["ray_actor_options"]["num_gpus"] for name in MODEL_DEPLOYMENTS]
    assert all(0 < g < 1 for g in gpus) and sum(gpus) <= 1.0
    for name in MODEL_DEPLOYMENTS:
        assert deployments[name]["autoscaling_config"]["min_replicas"] == 0
    assert deployments["Ingress"]["autoscaling_config"]["min_replicas"] == 1
    assert deployments["Ingress"]["ray_actor_options"]["num_gpus"] == 0


def test_cpu_config_differs_only_in_resources() -> None:
    gpu, cpu = _load("serve.yaml"), _load("serve.cpu.yaml")
    for config in (gpu, cpu):
        for deployment in config["applications"][0]["deployments"]:
            deployment.pop("ray_actor_options")
    assert gpu == cpu
    for deployment in _load("serve.cpu.yaml")["applications"][0]["deployments"]:
        assert deployment["ray_actor_options"]["num_gpus"] == 0


def test_builder_validates_its_args() -> None:
    with pytest.raises(ValueError):
        build_app({"no_such_arg": 1})
    with pytest.raises(ValueError, match="unknown deployments"):
        build_app({"deployment_options": {"Nope": {}}})
    with pytest.raises(ValueError):
        build_app({"settings": {"reconstruct_grid": 2}})


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHLINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESHLINE_SAM2_OVERRIDES", "++a=1,++b=2")
    monkeypatch.setenv("MESHLINE_URL_ALLOW_PRIVATE", '["10.0.0.0/8"]')
    settings = Settings()
    assert settings.data_dir == tmp_path.resolve()
    assert settings.sam2_overrides == ["++a=1", "++b=2"]
    assert settings.url_allow_private == ["10.0.0.0/8"]
    assert settings.resolved_db_url == f"sqlite:///{tmp_path.resolve() / 'meshline.db'}"
    assert Settings(data_dir=tmp_path, stage_timeout_s=5).stage_timeout_s == 5


def test_ingress_never_imports_torch() -> None:
    """The ingress process stays light: building the app and importing the API pulls no torch."""
    import subprocess
    import sys

    code = (
        "import sys; from serve_app.app import build_app; import serve_app.ingress, serve_app.api; "
        "build_app({}); assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
