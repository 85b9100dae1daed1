# One-command set-up: `make demo` runs the demo, `make test` runs the tests; both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch wheels pinned to the releases this project is tested with (override: make TORCH="torch torchvision").
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test test-all lint format bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,faiss,pretrained,compare,serve,loggers,tune]"
	touch $@

demo: venv
	$(BIN)/deepmetric demo

test: venv
	$(BIN)/python -m pytest

test-all: venv
	$(BIN)/python -m pytest -m "slow or not slow"

lint: venv
	$(BIN)/ruff check deepmetric tests benchmarks
	$(BIN)/ruff format --check deepmetric tests benchmarks

format: venv
	$(BIN)/ruff check --fix deepmetric tests benchmarks
	$(BIN)/ruff format deepmetric tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
