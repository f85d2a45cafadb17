"""configs/serve.yaml, the builder's deployment options and the settings → config mapping: one
YAML for GPU and CPU machines that only overrides, each default written once, the effective
options of every deployment on either accelerator."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from ray.serve import Application
from ray.serve.deployment import Deployment
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

from deployments.configs import (
    REPLICA_RESOURCES,
    ConverterConfig,
    DetectorConfig,
    ReconstructorConfig,
    SegmenterConfig,
)
from serve_app.app import (
    DEPLOYMENT_NAMES,
    MODEL_DEPLOYMENTS,
    MeshlineArgs,
    build_app,
    model_configs,
    resolve_accelerator,
)
from serve_app.settings import Settings, filled_fields, fills

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = (SegmenterConfig, ReconstructorConfig, ConverterConfig, DetectorConfig)

# What each deployment runs with, per accelerator: the values configs/serve.yaml and
# configs/serve.cpu.yaml held before issue 16 moved them into code.
MODEL_AUTOSCALING = {
    "min_replicas": 0,
    "initial_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 2,
    "downscale_to_zero_delay_s": 600,
}
EXPECTED: dict[str, dict[str, Any]] = {
    "Ingress": {
        "max_ongoing_requests": 64,
        "max_queued_requests": 512,
        "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2},
    },
    "Segmenter": {
        "max_ongoing_requests": 4,
        "max_queued_requests": 128,
        "autoscaling_config": MODEL_AUTOSCALING,
        "graceful_shutdown_timeout_s": 120,
    },
    "Reconstructor": {
        "max_ongoing_requests": 4,
        "max_queued_requests": 128,
        "autoscaling_config": MODEL_AUTOSCALING,
        "graceful_shutdown_timeout_s": 120,
    },
    "Converter": {
        "max_ongoing_requests": 4,
        "max_queued_requests": 128,
        "autoscaling_config": MODEL_AUTOSCALING,
    },
    "Detector": {
        "max_ongoing_requests": 8,
        "max_queued_requests": 256,
        "autoscaling_config": {**MODEL_AUTOSCALING, "target_ongoing_requests": 4},
    },
}
RESOURCES = {
    "gpu": {"num_cpus": 1, "num_gpus": 0.25},
    "cpu": {"num_cpus": 0.25, "num_gpus": 0},
}
INGRESS_RESOURCES = {"num_cpus": 0.25, "num_gpus": 0}
# Geometry does no GPU work: CPU only on GPU clusters (issue 12 §6).
GEOMETRY = {"num_cpus": 1, "num_gpus": 0}


def resources_of(name: str, accelerator: str) -> dict[str, float]:
    if name == "Ingress":
        return INGRESS_RESOURCES
    if accelerator == "gpu" and name in ("Converter", "Reconstructor"):
        return GEOMETRY
    return RESOURCES[accelerator]


def _load(name: str = "serve.yaml") -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def deployments_of(app: Application) -> dict[str, Deployment]:
    """Every deployment of a built (not deployed) application, by name."""
    found: dict[str, Deployment] = {}

    def walk(node: object) -> None:
        if isinstance(node, Application):
            deployment = node._bound_deployment
            found[deployment.name] = deployment
            for arg in (*deployment.init_args, *deployment.init_kwargs.values()):
                walk(arg)

    walk(app)
    return found


def effective(deployment: Deployment) -> dict[str, Any]:
    """The options Serve would run ``deployment`` with, before a config file's overrides."""
    config = deployment._deployment_config
    autoscaling = config.autoscaling_config
    return {
        "ray_actor_options": {
            key: deployment.ray_actor_options[key] for key in ("num_cpus", "num_gpus")
        },
        "max_ongoing_requests": config.max_ongoing_requests,
        "max_queued_requests": config.max_queued_requests,
        "autoscaling_config": autoscaling.model_dump(include=set(MODEL_AUTOSCALING))
        if autoscaling
        else None,
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
    }


def _built(tmp_path: Path, accelerator: str, **args: Any) -> dict[str, Deployment]:
    settings = {"data_dir": str(tmp_path), "accelerator": accelerator}
    return deployments_of(build_app({"settings": settings, **args}))


# The one YAML -------------------------------------------------------------------------------


def test_config_is_a_valid_serve_config() -> None:
    config = ServeDeploySchema.model_validate(_load())
    (app,) = config.applications
    assert app.name == "meshline" and app.import_path == "serve_app.app:build_app"
    MeshlineArgs.model_validate(app.args)
    assert {d.name for d in app.deployments} <= set(DEPLOYMENT_NAMES)
    assert not (ROOT / "configs" / "serve.cpu.yaml").exists()  # one file for GPU and CPU


def test_the_yaml_carries_only_overrides(tmp_path: Path) -> None:
    """Serve applies a config file's options after the builder's: one restating a default
    would pin it there (and on both accelerators), so each option listed must change one."""
    entries = _load()["applications"][0].get("deployments") or []
    built = {acc: _built(tmp_path, acc) for acc in ("gpu", "cpu")}
    for entry in entries:
        for option, value in entry.items():
            if option == "name":
                continue
            for deployments in built.values():
                assert effective(deployments[entry["name"]]).get(option) != value, (entry, option)


def test_backend_overlays_are_deployment_entries() -> None:
    for path in sorted((ROOT / "configs" / "backends").glob("*.yaml")):
        entry = yaml.safe_load(path.read_text())
        DeploymentSchema.model_validate(entry)
        assert entry["name"] == "Reconstructor", path
        # An overlay replaces ray_actor_options whole: it must size the replica itself.
        assert {"num_cpus", "num_gpus"} <= set(entry["ray_actor_options"]), path


# Effective deployment options ------------------------------------------------------------


@pytest.mark.parametrize("accelerator", ["gpu", "cpu"])
def test_effective_options_of_every_deployment(tmp_path: Path, accelerator: str) -> None:
    deployments = _built(tmp_path, accelerator)
    assert set(deployments) == set(DEPLOYMENT_NAMES)
    for name, expected in EXPECTED.items():
        options = effective(deployments[name])
        assert options["ray_actor_options"] == resources_of(name, accelerator), name
        for option, value in expected.items():
            if option == "autoscaling_config":  # Serve's defaults fill the fields not given
                assert {k: options[option][k] for k in value} == value, name
            else:
                assert options[option] == value, (name, option)
    segmenter, detector = (deployments[n].init_args[0] for n in ("Segmenter", "Detector"))
    assert isinstance(segmenter, SegmenterConfig) and isinstance(detector, DetectorConfig)
    assert detector.max_batch_size == {"gpu": 8, "cpu": 1}[accelerator]


def test_the_gpu_sizing_shares_one_gpu() -> None:
    """All four model deployments still fit one GPU (co-residency) when each holds a share."""
    assert REPLICA_RESOURCES == RESOURCES
    assert len(MODEL_DEPLOYMENTS) * REPLICA_RESOURCES["gpu"]["num_gpus"] <= 1
    assert REPLICA_RESOURCES["cpu"]["num_gpus"] == 0


def test_gpu_shares_only_for_gpu_work(tmp_path: Path) -> None:
    """Converter and the inflate Reconstructor use no GPU: none reserved on GPU clusters; a
    learned Reconstructor backend gets the share (the builder knows the backend)."""
    from deployments.configs import replica_resources

    assert replica_resources("Converter", "gpu") == GEOMETRY
    assert replica_resources("Reconstructor", "gpu", "inflate") == GEOMETRY
    assert replica_resources("Reconstructor", "gpu", "trellis") == RESOURCES["gpu"]
    assert replica_resources("Segmenter", "gpu") == RESOURCES["gpu"]
    assert replica_resources("Converter", "cpu") == RESOURCES["cpu"]
    built = _built(tmp_path, "gpu")
    gpus = {name: built[name].ray_actor_options["num_gpus"] for name in MODEL_DEPLOYMENTS}
    assert gpus == {"Segmenter": 0.25, "Reconstructor": 0, "Converter": 0, "Detector": 0.25}
    from serve_app.app import deployment_options

    learned = deployment_options("gpu", {}, reconstruct_backend="trellis")
    assert learned["Reconstructor"]["ray_actor_options"] == RESOURCES["gpu"]


def test_auto_follows_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    assert resolve_accelerator("gpu") == "gpu" and resolve_accelerator("cpu") == "cpu"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert resolve_accelerator("auto") == "cpu"  # no cluster to ask (e.g. `serve build`)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    assert resolve_accelerator("auto") == "cpu"
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    assert resolve_accelerator("auto") == "gpu"


def test_python_deployment_options_still_override(tmp_path: Path) -> None:
    deployments = _built(
        tmp_path,
        "gpu",
        deployment_options={
            "Segmenter": {"ray_actor_options": {"resources": {"node_a": 1}}},
            "Detector": {"max_ongoing_requests": 2, "ray_actor_options": {"num_gpus": 0}},
            "Ingress": {"ray_actor_options": {"num_cpus": 0.5}},
        },
    )
    segmenter = deployments["Segmenter"].ray_actor_options
    assert segmenter["num_gpus"] == 0.25 and segmenter["resources"] == {"node_a": 1}  # merged
    detector = effective(deployments["Detector"])
    assert detector["max_ongoing_requests"] == 2 and detector["ray_actor_options"] == {
        "num_cpus": 1,
        "num_gpus": 0,
    }
    assert effective(deployments["Ingress"])["ray_actor_options"] == {
        "num_cpus": 0.5,
        "num_gpus": 0,
    }
    assert effective(deployments["Converter"])["max_ongoing_requests"] == 4  # untouched


def test_yaml_overrides_win_over_the_builder(tmp_path: Path) -> None:
    """Serve's own override step (what `serve run/deploy` does after building the app) applied
    to what the builder made: a deployments entry replaces what it names, nothing else."""
    from ray.serve._private.application_state import override_deployment_info
    from ray.serve._private.deployment_info import DeploymentInfo

    config = _load()
    config["applications"][0]["deployments"] = [
        {
            "name": "Segmenter",
            "max_ongoing_requests": 1,
            "ray_actor_options": {"num_cpus": 2, "num_gpus": 0.5},
        },
        {"name": "Detector", "autoscaling_config": {"min_replicas": 1, "max_replicas": 8}},
    ]
    (app,) = ServeDeploySchema.model_validate(config).applications
    infos = {
        name: DeploymentInfo(
            deployment._deployment_config,
            deployment._replica_config,
            start_time_ms=0,
            deployer_job_id="test",
        )
        for name, deployment in _built(tmp_path, "gpu").items()
    }
    final = override_deployment_info(infos, app)
    segmenter = final["Segmenter"]
    assert segmenter.deployment_config.max_ongoing_requests == 1
    assert segmenter.replica_config.ray_actor_options["num_gpus"] == 0.5
    assert segmenter.replica_config.ray_actor_options["num_cpus"] == 2
    assert segmenter.deployment_config.max_queued_requests == 128  # not named: the code's
    detector = final["Detector"].deployment_config
    assert (detector.autoscaling_config.min_replicas, detector.autoscaling_config.max_replicas) == (
        1,
        8,
    )
    assert final["Detector"].replica_config.ray_actor_options["num_gpus"] == 0.25
    assert final["Converter"].replica_config.ray_actor_options["num_gpus"] == 0  # CPU work


def test_builder_validates_its_args() -> None:
    with pytest.raises(ValueError):
        build_app({"no_such_arg": 1})
    with pytest.raises(ValueError, match="unknown deployments"):
        build_app({"deployment_options": {"Nope": {}}})
    with pytest.raises(ValueError):
        build_app({"settings": {"reconstruct_grid": 2}})
    with pytest.raises(ValueError):
        build_app({"settings": {"accelerator": "tpu"}})


# Settings → deployment configs ------------------------------------------------------------

# Config fields no setting fills: the builder derives them, or they are set per call site,
# through Serve's user_config, or left at their default. A new config field must be added to a
# `fills` marker in serve_app/settings.py, to model_configs in serve_app/app.py, or here.
DERIVED = {
    SegmenterConfig: {"checkpoint", "checkpoint_sha256", "weights_dir", "scratch_dir"},
    DetectorConfig: {
        "checkpoint",
        "checkpoint_sha256",
        "weights_dir",
        "config_dir",
        "max_batch_size",
        "max_cache_bytes",
    },
    ReconstructorConfig: set(),
    ConverterConfig: set(),
}
NOT_SETTINGS = {
    SegmenterConfig: {"device"},
    DetectorConfig: {"device", "allow_private"},
    ReconstructorConfig: {"profile_power", "texture_px", "isolation", "workers"},
    ConverterConfig: {"seed", "isolation", "workers"},
}


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MESHLINE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_one_source(config: type) -> None:
    filled = [field for _, cls, field in filled_fields() if cls is config]
    assert len(filled) == len(set(filled)), "a config field filled by two settings"
    sources = [set(filled), DERIVED[config], NOT_SETTINGS[config]]
    assert set.union(*sources) == set(config.model_fields)
    assert sum(len(s) for s in sources) == len(config.model_fields), "a field in two places"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_settings_defaults_are_the_config_defaults(
    config: type, clean_env: None, tmp_path: Path
) -> None:
    """A config built from default Settings equals one built with its own defaults, on every
    field settings fill: each default is written once."""
    built = {type(c): c for c in model_configs(Settings(data_dir=tmp_path), accelerator="cpu")}
    plain = config()
    for setting, cls, field in filled_fields():
        if cls is config:
            assert getattr(built[config], field) == getattr(plain, field), (setting, field)
            assert Settings.model_fields[setting].get_default(call_default_factory=True) == (
                getattr(plain, field)
            ), setting


def test_settings_reach_the_configs(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        sam2_overrides=["++a=1"],
        seed=7,
        model_precision="fp32",
        max_mesh_faces=4000,
        reconstruct_grid=40,
        preview_frames=3,
        video_sessions_per_replica=5,
        detector_batch_size=3,
        weights_cache_max_mb=1.5,
    )
    segmenter, reconstructor, converter, detector = model_configs(settings, accelerator="gpu")
    assert segmenter.overrides == ["++a=1"] and segmenter.seed == detector.seed == 7
    assert segmenter.precision == detector.precision == "fp32"
    assert reconstructor.max_mesh_faces == converter.max_mesh_faces == 4000
    assert reconstructor.grid == 40 and converter.preview_frames == 3
    assert segmenter.max_video_sessions == 5
    assert detector.max_batch_size == 3 and detector.max_cache_bytes == int(1.5 * 2**20)
    assert segmenter.scratch_dir == tmp_path.resolve() / "scratch"
    assert detector.config_dir == tmp_path.resolve() / "ultralytics"
    assert segmenter.weights_dir == detector.weights_dir == settings.resolved_weights_dir


def test_a_setting_takes_its_config_fields_bounds() -> None:
    with pytest.raises(ValueError):
        Settings(preview_frames=1)  # ConverterConfig.preview_frames: ge=2
    with pytest.raises(ValueError):
        Settings(max_prompt_points=5000)  # the setting's own, stricter bound (le=4096)
    with pytest.raises(TypeError, match="disagree"):
        fills((ReconstructorConfig, "grid"), (ConverterConfig, "preview_frames"))


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHLINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESHLINE_SAM2_OVERRIDES", "++a=1,++b=2")
    monkeypatch.setenv("MESHLINE_URL_ALLOW_PRIVATE", '["10.0.0.0/8"]')
    monkeypatch.setenv("MESHLINE_ACCELERATOR", "gpu")
    settings = Settings()
    assert settings.data_dir == tmp_path.resolve()
    assert settings.sam2_overrides == ["++a=1", "++b=2"]
    assert settings.url_allow_private == ["10.0.0.0/8"]
    assert settings.accelerator == "gpu"
    assert settings.resolved_db_url == f"sqlite:///{tmp_path.resolve() / 'meshline.db'}"
    assert Settings(data_dir=tmp_path, stage_timeout_s=5).stage_timeout_s == 5


# Stages --------------------------------------------------------------------------------------


def test_the_stage_declaration_is_the_only_table() -> None:
    from serve_app.jobs import pipeline, schemas, stages

    names = tuple(stage.name for stage in stages.STAGES)
    assert get_args(stages.StageName) == names
    assert schemas.StageName is stages.StageName
    assert schemas.STAGE_ORDER == ("segment", "reconstruct", "paint", "convert")
    assert schemas.VIDEO_STAGES == ("propagate",)
    assert set(schemas.STAGE_ORDER) | set(schemas.VIDEO_STAGES) == set(names)
    for stage in stages.STAGES:
        assert pipeline.STAGE_RUNNERS[stage.name] is getattr(pipeline, stage.runner)
        assert pipeline.STAGE_NEEDS[stage.name] == stage.needs
        assert pipeline.STAGE_MAKES[stage.name] == stage.makes
        assert stage.deployment in DEPLOYMENT_NAMES
    assert list(pipeline.STAGE_RUNNERS) == list(names)


def _stage_tables(path: Path) -> list[str]:
    """Module-level assignments of a literal holding two or more stage names."""
    from serve_app.jobs.stages import STAGES

    names = {stage.name for stage in STAGES}
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            strings = {
                n.value
                for n in ast.walk(node.value)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            }
            if len(strings & names) >= 2:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_other_module_lists_the_stages() -> None:
    stages_py = ROOT / "serve_app" / "jobs" / "stages.py"
    tables = [
        table
        for package in ("serve_app", "deployments")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != stages_py
        for table in _stage_tables(path)
    ]
    assert not tables, f"stage tables outside serve_app/jobs/stages.py: {tables}"


def test_ingress_never_imports_torch() -> None:
    """The ingress process stays light: building the app and importing the API pulls no torch;
    the configs and settings pull neither torch nor Ray."""
    import subprocess
    import sys

    code = (
        "import sys; import deployments.configs, serve_app.settings, serve_app.jobs.stages; "
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'heavy configs'; "
        "from serve_app.app import build_app; import serve_app.ingress, serve_app.api; "
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
