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
# a running `make test` included).
RAY_PORT   ?= 6390
RAY_TMP    ?= /tmp/ray-meshline
SERVE_CONFIG ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo configs/serve.yaml || echo configs/serve.cpu.yaml)

# Ray 2.60 turns on token auth for local clusters; the CLI only reads the token
# (~/.ray/auth_token) when told to, so every Ray/Serve command here runs in token mode.
export RAY_AUTH_MODE        := token
export RAY_ADDRESS          := 127.0.0.1:$(RAY_PORT)
export MESHLINE_DATA_DIR    ?= $(CURDIR)/.data
export YOLO_OFFLINE         := 1
export YOLO_AUTOINSTALL     := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install test-tools serve ray-up stop status test bench clean

help:
	@echo "make serve   install (once) and run meshline locally on http://127.0.0.1:8000"
	@echo "make test    install (once) and run the test suite"
	@echo "make status  serve status of the local app"
	@echo "make stop    shut the local app and Ray head down"
	@echo "make bench   run every benchmark; one table of ratios in bench/RESULTS.md"

install: $(STAMP)

# Re-runs only when pyproject.toml changes. Order matters: torch/torchvision first (pinned,
# from local disk where available), then the project, then sam2 without build isolation
# (otherwise pip builds it against a second, freshly downloaded torch).
$(STAMP): pyproject.toml
	@if ! ldconfig -p | grep -q libusb-1.0.so.0; then \
	  echo ">> installing Debian libusb-1.0-0 (open3d needs it)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libusb-1.0-0 libgl1 libegl1; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libusb-1.0-0 libgl1 libegl1; fi; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[models,test]'
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation 'sam2==1.1.0'
	$(BIN)/python -c "import torch, torchvision, ray, sam2, ultralytics, open3d, trimesh; print('installed: torch', torch.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

ray-up: install
	@if $(BIN)/ray status >/dev/null 2>&1; then echo ">> Ray head already running on $(RAY_ADDRESS)"; \
	else $(BIN)/ray start --head --port=$(RAY_PORT) --temp-dir=$(RAY_TMP) --dashboard-host=127.0.0.1 --disable-usage-stats; fi

serve: ray-up
	@echo ">> serve run $(SERVE_CONFIG)  (data: $(MESHLINE_DATA_DIR)); Ctrl-C stops the app, 'make stop' stops Ray"
	$(BIN)/serve run $(SERVE_CONFIG)

status:
	$(BIN)/serve status

stop:
	@# A `serve run` left in another terminal: Ctrl-C it (it then deletes the app itself).
	-@if pkill -INT -f "$(BIN)/[s]erve run configs/"; then sleep 5; \
	  pkill -TERM -f "$(BIN)/[s]erve run configs/" || true; echo ">> stopped serve run"; fi
	-@$(BIN)/serve shutdown -y >/dev/null 2>&1 && echo ">> meshline app shut down" || true
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

test-tools: $(TOOLS_STAMP)

test: install test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark, one table of ratios → bench/RESULTS.md (GPU when there is one). BENCH_ARGS=--quick: small models.
bench: install
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .data
