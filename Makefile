# The two commands: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch is installed first and pinned to the release the tests ran on; requirements.txt only
# sets a floor. Override for another build, e.g. make run TORCH="torch==2.11.0".
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
PORT ?= 7860

.PHONY: run test test-gpu lint bench screenshot clean

$(STAMP): requirements.txt pyproject.toml Makefile
	@echo "setting up $(VENV) (first run only; a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python app.py --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/onnx_overhead.py

# Refresh the README's screenshot from the running app (real headless Chromium).
screenshot: $(STAMP)
	AB_SCREENSHOT_TO=$(CURDIR)/assets/screenshot.png $(BIN)/python -m pytest -q tests/test_app.py -k page

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
