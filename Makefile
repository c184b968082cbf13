# The two commands of the README. Each sets up .venv first (idempotent: only when requirements.txt or
# pyproject.toml changed since the last install), then runs its job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format

$(VENV)/.installed: requirements.txt requirements-no-deps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-no-deps.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

demo: setup  ## the offline end-to-end demo (writes demo-output/)
	HF_HUB_OFFLINE=1 $(BIN)/gram-demo --output-dir demo-output --overwrite

test: setup lint  ## lint, then the tests (offline)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
