PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: serve test bench clean

# The CPU build of torch is pinned for local use and CI; the Modal image installs its own CUDA build.
$(BIN)/easel: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# eas-prediction (the unmodified PAI-EAS client) and the protobuf<=3.20 its generated code needs, kept beside
	# the venv for the client's test process only, so the venv's own protobuf stays what modal needs
	$(BIN)/pip install -q --no-deps --target $(VENV)/eas-client 'protobuf==3.20.3' 'eas-prediction==0.36'
	touch $@

serve: $(BIN)/easel
	$(BIN)/easel serve --host $(HOST) --port $(PORT) --data-dir ./data

test: $(BIN)/easel
	$(BIN)/python -m pytest

bench: $(BIN)/easel
	$(BIN)/python bench/bench_http.py

clean:
	rm -rf $(VENV) data
