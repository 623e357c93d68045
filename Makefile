# Two commands on a fresh machine:  `make run`  and  `make test`.
# Both create .venv when it is missing (torch==2.13.0 first, so nothing pulls a CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

# Keep every tool's state inside the project.
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: run test lint bench ui screenshots clean env

env: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV): $(TORCH) first (pip knows this machine's wheel folder), then the stack"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q "$(TORCH)"
	@# uv resolves and installs the rest in seconds; plain pip is the fallback. Bytecode is
	@# compiled up front: imports of the stack take 2-3x longer without it.
	@if $(BIN)/pip install -q uv 2>/dev/null; then \
	  VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install -q --compile-bytecode -e ".[dev]"; \
	else \
	  $(BIN)/pip install -q -e ".[dev]"; \
	fi
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/learn2tune run

# Two pytest processes, a file each at a time (a file's module fixtures stay in one process), the
# files that start services first (tests/conftest.py): much of the suite's wall time waits on real
# services (Ray actors, servers, subprocesses), so the two overlap on 2 cores. TEST_WORKERS=0 runs
# it in this one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# ruff's rules, mypy, then ruff's formatting, as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/learn2tune bench

ui: $(STAMP)
	$(BIN)/learn2tune ui

# The README's MLflow screenshots, from a fresh small run (needs a system chromium).
screenshots: $(STAMP)
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/pip install -q -e ".[screenshots]"
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) runs mlflow.db mlartifacts .pytest_cache .mypy_cache .ruff_cache
