# meshline: two commands on a fresh machine — `make serve` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON     ?= $(shell command -v python3.11 || command -v python3)
VENV       ?= .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.meshline-installed
# Tools only the tests use: Debian chromium (admin page in a real browser), promtool (metrics
# format) and the Khronos glTF validator from npm, kept in .tools/.
TOOLS      := .tools
TOOLS_STAMP := $(TOOLS)/.installed
APT_GET    := $(if $(filter 0,$(shell id -u)),,sudo) apt-get
# Ray's default GCS port 6379 is Redis's: keep the head off it. Its own temp dir lets
# `make stop` end this head alone (`ray stop` would end every Ray instance on the machine,
# a running `make test` included). Every port can be moved, so that a second instance (the
# fresh-machine test in tests/cluster/test_fresh_machine.py) never meets this one.
RAY_PORT   ?= 6390
RAY_TMP    ?= /tmp/ray-meshline
RAY_DASHBOARD_PORT ?= 8265
RAY_CLIENT_PORT    ?= 10001
RAY_AGENT_PORT     ?= 52365
# HAProxy's own listeners in Serve's high-throughput mode (Prometheus metrics, stats page).
HAPROXY_METRICS_PORT ?= 9101
HAPROXY_STATS_PORT   ?= 8404
# The HTTP port of the app (http_options.port of the config); the CLI reads the same variable.
MESHLINE_PORT ?= 8000
# One config for GPU and CPU machines: the builder sizes the deployments for what it finds
# (the `accelerator` setting, MESHLINE_ACCELERATOR: auto by default).
SERVE_CONFIG ?= configs/serve.yaml

# Ray 2.60 turns on token auth for local clusters. The head, every node that joins it and
# every ray/serve CLI call need the same token: Ray looks in $RAY_AUTH_TOKEN, then
# $RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. `make ray-token` writes the last one once
# (`ray get-auth-token --generate`, mode 600) when none of the three is there.
export RAY_AUTH_MODE        := token
export RAY_ADDRESS          := 127.0.0.1:$(RAY_PORT)
export RAY_DASHBOARD_ADDRESS := http://127.0.0.1:$(RAY_DASHBOARD_PORT)
export MESHLINE_DATA_DIR    ?= $(CURDIR)/.data
export MESHLINE_PORT
export YOLO_OFFLINE         := 1
export YOLO_AUTOINSTALL     := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install test-tools ray-token weights serve ray-up stop status lint test bench device-kit clean

help:
	@echo "make serve   install (once) and run meshline locally on http://127.0.0.1:8000"
	@echo "make test    install (once) and run the test suite"
	@echo "make weights fetch official SAM 2.1 + YOLO checkpoints once (needs internet); make serve uses them"
	@echo "make status  serve status of the local app"
	@echo "make stop    shut the local app and Ray head down"
	@echo "make bench   run every benchmark; one table of ratios in bench/RESULTS.md"
	@echo "make device-kit  build .kit/ for a GPU machine without registry access (bench/device/run.sh)"

# Studio's 3D library (GET /studio): three.js from the npm registry, the pinned tarball checked
# against its SHA-256, unpacked into a git-ignored folder the app serves (the files the page
# loads, and the licence). cluster/Dockerfile does the same. Nothing is fetched at run time.
THREE_VERSION := 0.180.0
THREE_SHA256  := ad66d724565ee29a2467277fa84daa5ed0211d6b8d446e9ef29f6bae0cd14144
STUDIO_VENDOR := serve_app/static/studio/vendor/three
STUDIO_STAMP  := $(STUDIO_VENDOR)/.three-$(THREE_VERSION)
THREE_FILES   := package/LICENSE package/build/three.module.min.js package/build/three.core.min.js \
  package/examples/jsm/controls/OrbitControls.js package/examples/jsm/loaders/GLTFLoader.js \
  package/examples/jsm/loaders/STLLoader.js package/examples/jsm/utils/BufferGeometryUtils.js
$(STUDIO_STAMP):
	@echo ">> fetching three@$(THREE_VERSION) from the npm registry (Studio's 3D viewer)"
	rm -rf $(STUDIO_VENDOR) && mkdir -p $(STUDIO_VENDOR)
	curl -fsSL --retry 3 -o $(STUDIO_VENDOR)/three.tgz https://registry.npmjs.org/three/-/three-$(THREE_VERSION).tgz
	echo "$(THREE_SHA256)  $(STUDIO_VENDOR)/three.tgz" | sha256sum -c --quiet
	tar -xzf $(STUDIO_VENDOR)/three.tgz -C $(STUDIO_VENDOR) --strip-components=1 $(THREE_FILES)
	rm $(STUDIO_VENDOR)/three.tgz && touch $(STUDIO_STAMP)

# After the stamps it names: make expands a rule's prerequisites when it reads the rule.
install: $(STAMP) $(STUDIO_STAMP)

# Re-runs only when pyproject.toml or constraints.txt changes. Order matters: torch/torchvision
# first (pinned, from local disk where available), then the project, then sam2 without build
# isolation (otherwise pip builds it against a second, freshly downloaded torch). Every step holds
# to constraints.txt, the versions the tests last passed on.
CONSTRAINTS := constraints.txt
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@if ! ldconfig -p | grep -q libusb-1.0.so.0; then \
	  echo ">> installing Debian libusb-1.0-0 (open3d needs it)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libusb-1.0-0 libgl1 libegl1; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libusb-1.0-0 libgl1 libegl1; fi; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -U pip setuptools wheel
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[models,test,hunyuan3d]'
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q -c $(CONSTRAINTS) --no-build-isolation 'sam2==1.1.0'
	@# Hunyuan3D-2 (the hunyuan3d backend, tested with random weights): its deps are the extra.
	$(BIN)/pip install -q -c $(CONSTRAINTS) --no-deps 'hy3dgen==2.0.2'
	$(BIN)/python -c "import torch, torchvision, ray, sam2, ultralytics, open3d, trimesh, hy3dgen.shapegen; print('installed: torch', torch.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

ray-token: install
	@if [ -n "$$RAY_AUTH_TOKEN" ]; then exit 0; fi; \
	if [ -n "$$RAY_AUTH_TOKEN_PATH" ]; then \
	  test -s "$$RAY_AUTH_TOKEN_PATH" || { echo "RAY_AUTH_TOKEN_PATH=$$RAY_AUTH_TOKEN_PATH: no such token file" >&2; exit 1; }; \
	elif [ ! -s "$$HOME/.ray/auth_token" ]; then \
	  umask 077 && $(BIN)/ray get-auth-token --generate >/dev/null 2>&1 && test -s "$$HOME/.ray/auth_token" \
	  && echo ">> created the Ray auth token: $$HOME/.ray/auth_token (nodes that join this head need the same file)"; \
	fi

# Official checkpoints from their publishers into $(MESHLINE_DATA_DIR)/weights/fetched (resumable,
# SHA-256 checked); `make serve` then loads them instead of random weights. Never run implicitly.
WEIGHTS ?= sam2.1-tiny yolov8n
weights: install
	$(BIN)/meshline weights fetch $(WEIGHTS)

# Ray Serve's high-throughput mode for every process of the head (deployments/configs.py
# SERVE_PROCESS_ENV, kept equal by tests/unit/test_cluster_manifests.py).
SERVE_PROCESS_ENV := RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
  RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1 RAY_SERVE_USE_GRPC_BY_DEFAULT=0
# One node: the Ingress drains 5 s on shutdown, not direct ingress's 30 s (long enough for
# HAProxy on other nodes to stop routing to it; `make stop` would wait that out).
HAPROXY_PORTS_ENV := RAY_SERVE_HAPROXY_METRICS_PORT=$(HAPROXY_METRICS_PORT) \
  RAY_SERVE_HAPROXY_STATS_PORT=$(HAPROXY_STATS_PORT) \
  RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=5

ray-up: install ray-token
	@if $(BIN)/ray status >/dev/null 2>&1; then echo ">> Ray head already running on $(RAY_ADDRESS)"; \
	else env $(SERVE_PROCESS_ENV) $(HAPROXY_PORTS_ENV) $(BIN)/ray start --head --port=$(RAY_PORT) --temp-dir=$(RAY_TMP) --dashboard-host=127.0.0.1 \
	  --dashboard-port=$(RAY_DASHBOARD_PORT) --ray-client-server-port=$(RAY_CLIENT_PORT) \
	  --dashboard-agent-listen-port=$(RAY_AGENT_PORT) --disable-usage-stats; fi

# cluster/serve_local.py runs `serve run` and ends it (exit 3, with a message) if the head dies.
serve: ray-up
	@echo ">> serve run $(SERVE_CONFIG) on http://127.0.0.1:$(MESHLINE_PORT)  (data: $(MESHLINE_DATA_DIR)); Ctrl-C stops the app, 'make stop' stops Ray"
	$(BIN)/python cluster/serve_local.py $(SERVE_CONFIG) --temp-dir $(RAY_TMP) --http-port $(MESHLINE_PORT)

status:
	$(BIN)/serve status

stop:
	@# make serve's foreground process (in any terminal): SIGINT, as Ctrl-C; it passes it to
	@# `serve run`, which deletes the app. Only the one for this head: its command line names
	@# the temp dir.
	-@pattern="cluster/[s]erve_local.py .* --temp-dir $(RAY_TMP) "; \
	if pkill -INT -f "$$pattern"; then \
	  for _ in $$(seq 40); do pgrep -f "$$pattern" >/dev/null || break; sleep 0.5; done; \
	  pkill -KILL -f "$$pattern" || true; echo ">> stopped serve run"; fi
	@# Only when the head's GCS port answers: against a dead head `serve shutdown` retries for a
	@# minute before it gives up.
	-@if (exec 3<>/dev/tcp/127.0.0.1/$(RAY_PORT)) 2>/dev/null; then \
	  $(BIN)/serve shutdown -y >/dev/null 2>&1 && echo ">> meshline app shut down" || true; fi
	@# Only the processes of this head: their command lines name its temp dir. ("[/]" keeps
	@# pkill from matching this recipe's own shell.)
	-@pattern="$$(echo $(RAY_TMP) | sed 's/^./[&]/')/"; \
	if pkill -TERM -f "$$pattern"; then sleep 3; pkill -KILL -f "$$pattern" || true; echo ">> Ray head stopped"; fi

$(TOOLS_STAMP): Makefile
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then echo ">> installing Debian$$missing (test tools)"; \
	  $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends $$missing; fi
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) gltf-validator@2.0.0-dev.3.10
	touch $(TOOLS_STAMP)

# Label Studio (tests/labelstudio drive a real one): pinned, in its own virtualenv (its pins clash
# with meshline's: numpy, opencv), with every dependency held to its constraints file (its own
# loose ranges let a new release break it), installed again when the version or that file changes.
LABEL_STUDIO_VERSION := 1.23.2
LS_VENV  := $(TOOLS)/labelstudio
LS_CONSTRAINTS := tests/labelstudio/constraints.txt
LS_STAMP := $(LS_VENV)/.installed-$(LABEL_STUDIO_VERSION)
$(LS_STAMP): $(LS_CONSTRAINTS)
	@echo ">> installing label-studio==$(LABEL_STUDIO_VERSION) into $(LS_VENV) (test tool)"
	rm -rf $(LS_VENV) && $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q -c $(LS_CONSTRAINTS) 'label-studio==$(LABEL_STUDIO_VERSION)'
	touch $(LS_STAMP)

# SAM 3 (the Segmenter's sam3 backend; tests/sam3 run here): sam3 0.1.4 caps numpy, tqdm,
# typing_extensions and huggingface_hub below the core's, so its pins go into a venv that sees
# the core's packages (torch included) through a .pth after its own: they shadow, nothing moves.
# The same file is the replica's pip runtime_env (deployments/configs.py sam3_runtime_env).
SAM3_VENV  := $(TOOLS)/sam3
SAM3_REQS  := deployments/sam3-requirements.txt
SAM3_STAMP := $(SAM3_VENV)/.installed
$(SAM3_STAMP): $(SAM3_REQS) | $(STAMP)
	@echo ">> installing $(SAM3_REQS) into $(SAM3_VENV) (over the core venv)"
	rm -rf $(SAM3_VENV) && $(PYTHON) -m venv $(SAM3_VENV)
	$(BIN)/python -c "import os, sysconfig; print(os.path.realpath(sysconfig.get_paths()['purelib']))" \
	  > "$$($(SAM3_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_meshline_core.pth"
	$(SAM3_VENV)/bin/pip install -q -r $(SAM3_REQS)
	$(SAM3_VENV)/bin/python -c "import sam3, numpy, torch; print('sam3', sam3.__version__, 'numpy', numpy.__version__)"
	touch $(SAM3_STAMP)

test-tools: $(TOOLS_STAMP) $(LS_STAMP) $(SAM3_STAMP)

# ruff (pinned in the test extras) with the rules in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install test-tools ray-token lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark, one table of ratios → bench/RESULTS.md (GPU when there is one). BENCH_ARGS=--quick: small models.
bench: install
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

# What a GPU machine without registry access lacks for the GPU rows: .kit/ (~53 MiB; bench/device/run.sh runs them there).
device-kit: install
	$(BIN)/python -m bench.device.kit

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .data $(STUDIO_VENDOR)
