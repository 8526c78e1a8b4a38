PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 7860
# What each target needs installed: serving needs the runtime dependencies only; the suite adds the test extra
# (moto, schemathesis, playwright, cfn-lint, modal...).
RUNTIME := $(VENV)/.easel-runtime
TESTING := $(VENV)/.easel-test

.PHONY: serve test test-fullsize bench clean

# torch is pinned for local use and CI; the Modal image installs its own CUDA build. Where no GPU is present,
# see the README for the CPU-only build.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0

# The `upscalers` and `annotators` extras go in without their declared torchvision, which would pull a CUDA torch
# (see pyproject.toml)
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c "import tomllib; x = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print(' '.join(x['upscalers'] + x['annotators']))")
	touch $@

$(TESTING): pyproject.toml $(RUNTIME)
	$(BIN)/pip install -q -e '.[test]'
	# eas-prediction (the unmodified PAI-EAS client) and the protobuf<=3.20 its generated code needs, kept beside
	# the venv for the client's test process only, so the venv's own protobuf stays what modal needs
	$(BIN)/pip install -q --no-deps --target $(VENV)/eas-client 'protobuf==3.20.3' 'eas-prediction==0.36'
	touch $@

serve: $(RUNTIME)
	$(BIN)/easel serve --host $(HOST) --port $(PORT) --data-dir ./data

# Two workers on CI's two cores, whole test files each (a file's tests share fixtures and build/ files); the
# suite is mostly Python and subprocess waits, which one process leaves a core idle for. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(TESTING)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# every full-size architecture, SDXL and its refiner included (about 20 GB of files in build/fullsize, many minutes)
test-fullsize: $(TESTING)
	EASEL_FULLSIZE_XL=1 $(BIN)/python -m pytest -m fullsize

bench: $(RUNTIME)
	$(BIN)/python bench/bench_http.py

clean:
	rm -rf $(VENV) data
