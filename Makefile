# Two commands do everything on a fresh machine with Python 3.11+, git and make:
#   make run    set up, then run the pipeline (dvc repro) on params.yaml
#   make test   set up, then run the test suite
#   make quick  set up, then every stage on a tiny budget in quick/ (a smoke run of a few minutes)
# Python keeps the bytecode of what it imports (in .venv/ and the project's __pycache__/ folders), also where
# the environment sets PYTHONDONTWRITEBYTECODE: the first stage compiles torch and MLflow, no later one again.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
MLFLOW_PORT ?= 5000
export PYTHONDONTWRITEBYTECODE :=

.PHONY: setup run quick test ui bench clean

setup:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --user uv || \
		$(PYTHON) -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --locked

# make run also writes outputs/run.json (commit, date, machine, time of dvc repro) for python -m diffusionlab.results
run: setup
	$(UV) run --locked python -m diffusionlab.results time -- dvc repro

# quick/ is a project of its own (params.yaml with diffusionlab.quick.QUICK merged in), built afresh each time
quick: setup
	$(UV) run --locked python -m diffusionlab.quick

test: setup
	$(UV) run --locked pytest

ui: setup
	$(UV) run --locked python -m diffusionlab.ui --port $(MLFLOW_PORT)

# Measurements, not tests: results in benchmarks/results/ (the sampler benchmark samples the models of `make run`)
bench: setup
	$(UV) run --locked python benchmarks/training.py
	$(UV) run --locked python benchmarks/features.py
	$(UV) run --locked python benchmarks/pipeline.py
	@test -f outputs/train/digits-ddpm/checkpoint.pt || { echo "benchmarks/samplers.py samples the trained models: run make run first"; exit 1; }
	$(UV) run --locked python benchmarks/samplers.py

clean:
	rm -rf outputs data/prepared quick mlflow.db mlflow.db.lock mlflow.db.partial-* mlruns
