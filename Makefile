PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 7860
# What each target needs installed: serving needs the runtime dependencies only; the suite adds the test extra
# (moto, schemathesis, playwright, cfn-lint, modal...).
RUNTIME := $(VENV)/.easel-runtime
TESTING := $(VENV)/.easel-test

.PHONY: serve test bench clean

# torch is pinned for local use and CI; the Modal image installs its own CUDA build. Where no GPU is present,
# see the README for the CPU-only build.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TESTING): pyproject.toml $(RUNTIME)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

serve: $(RUNTIME)
	$(BIN)/easel serve --host $(HOST) --port $(PORT) --data-dir ./data

test: $(TESTING)
	$(BIN)/python -m pytest

bench: $(RUNTIME)
	$(BIN)/python bench/bench_http.py

clean:
	rm -rf $(VENV) data
