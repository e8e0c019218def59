# Stillroom: `make demo` runs the distillation loop offline; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The CPU build of torch lies on local disk here; elsewhere set TORCH_LINKS to an index serving it.
TORCH_LINKS ?= $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
export STILLROOM_HOME ?= $(CURDIR)/.stillroom
# The profile whose seed section fills `make serve`'s bucket (smoke: 52 documents).
SEED_PROFILE ?= demo

.PHONY: install demo smoke test test-gpu gpu-check bench-training lint lock clean serve stop deploy status

# Idempotent: reinstalls only when a lock file changed. torch goes first, alone, so that
# nothing resolves it to a multi-GB CUDA build.
install: $(STAMP)
$(STAMP): requirements.lock requirements-data.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH_LINKS) torch==2.13.0
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps -r requirements-data.txt
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(PY) -m flows.demo

# The same loop on a tiny locally built model: about a minute.
smoke: install
	$(PY) -m flows.demo --profile smoke

# Tests keep their state apart from the demo's.
test: install
	STILLROOM_HOME=$(STILLROOM_HOME)/test-home $(PY) -m pytest -q

# Needs CUDA: the QLoRA (4-bit NF4) training path.
test-gpu: install
	$(PY) -m pytest -q -m gpu tests/gpu

# Needs CUDA: QLoRA for a few dozen steps per packaged student; prints tokens/s, memory, loss.
gpu-check: install
	$(PY) benchmarks/gpu_check.py

# Our training configuration against a stock SFTTrainer one, side by side (a few minutes).
bench-training: install
	$(PY) benchmarks/training.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Re-resolve requirements.in into requirements.lock (needs the registries).
lock:
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-header -o requirements.lock requirements.in
	sed -i '/^torch==/d' requirements.lock

# The local stack in the background (stillroom/stack.py): Prefect server and UI, a process
# worker per work pool, MLflow server and UI, moto S3 (seeded) and the replay teacher, all
# on 127.0.0.1. Ports: STILLROOM_{PREFECT,MLFLOW,S3,TEACHER}_PORT (4200, 5000, 9000, 8765).
serve: install
	$(PY) -m stillroom.stack serve --profile $(SEED_PROFILE)

# Registers prefect.yaml's deployments against it, pointed at its services.
deploy: install
	$(PY) -m stillroom.stack deploy

status: install
	$(PY) -m stillroom.stack status

# Stops exactly what `serve` recorded (by PID), SIGKILL after a grace period.
stop:
	@if [ -x $(PY) ]; then $(PY) -m stillroom.stack stop; fi

clean: stop
	rm -rf $(STILLROOM_HOME)
