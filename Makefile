# omni-r1: two commands do all set-up on a fresh machine.
#   make demo   builds .venv if missing, then runs the whole pipeline (dvc repro) on synthetic data
#   make test   builds .venv if missing, then runs the tests (all but slow/gpu/weights)
#   make server starts a local Prefect server (state in .prefect/) for `omni-r1 serve`, the cron schedule
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-omni-r1
# dvc.yaml's `python -m stages.<name>` and the tests' subprocesses must find the venv first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_LOGGING_LEVEL ?= WARNING
# Only the pipeline flow (flows/) starts Prefect's temporary API, once per run; no stage does.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: venv demo test test-all bench clean

venv: $(STAMP)

# torch first (served from local disk here), then sam2 built against it without isolation
# (design.md section 4), then the package itself with its pinned dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==26.3 setuptools==80.9.0 wheel==0.45.1
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install -q --no-build-isolation sam2==1.1.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# dvc needs a git repository; a fresh clone has one, a tarball does not.
demo: venv
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "make demo must run inside the omni-r1 git checkout"; exit 1; }
	$(BIN)/dvc repro
	$(BIN)/omni-r1 inspect data

test: venv
	$(BIN)/python -m pytest -m "not slow and not gpu and not weights" -q

test-all: venv
	$(BIN)/python -m pytest -q --hypothesis-profile=thorough

bench: venv
	$(BIN)/python bench/shard_throughput.py
	$(BIN)/python bench/metrics_speed.py
	$(BIN)/python bench/grpo_step.py
	$(BIN)/python bench/scaleout.py
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/gpu_step.py --tiny --out reports/bench/gpu_step_tiny.json  # smoke; one GPU: bench/gpu_step.py

# Schedules need a real Prefect server (the ephemeral API cannot schedule). Blocks until Ctrl-C;
# serve the nightly deployment from a second shell with the URL printed here.
PREFECT_PORT ?= 4200
.PHONY: server
server: venv
	@echo "Prefect server on http://127.0.0.1:$(PREFECT_PORT) (state in $(PREFECT_HOME)). In another shell:"
	@echo "  export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api"
	@echo "  $(BIN)/omni-r1 serve --cron '0 3 * * *'"
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

clean:
	rm -rf .prefect .pytest_cache
