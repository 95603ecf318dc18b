# Every target makes the virtual environment on first use: a fresh clone needs nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# moto's S3 server runs from an environment of its own: it needs `cryptography`, which PyJWT would then load into
# every server started from ours (the benchmarks measure those).
MOTO := .venv-moto
MOTO_STAMP := $(MOTO)/.installed-stamp

.PHONY: serve test lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing Conveyor and its dependencies into $(VENV) (first run only)..."
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

$(MOTO_STAMP):
	@test -x $(MOTO)/bin/python || $(PYTHON) -m venv $(MOTO)
	$(MOTO)/bin/python -m pip install -q --disable-pip-version-check 'moto[server]>=5.0'
	@touch $(MOTO_STAMP)

serve: $(STAMP)  ## migrate, seed the demo recipes and serve on CONVEYOR_HOST:CONVEYOR_PORT (127.0.0.1:1688)
	$(BIN)/conveyor serve

test: $(STAMP) $(MOTO_STAMP) lint  ## the whole suite
	@sh scripts/ensure-node.sh
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP)  ## print figures and write docs/benchmarks.md
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(MOTO) .conveyor .pytest_cache .mypy_cache .ruff_cache
