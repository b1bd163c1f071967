# The two commands: `make run` and `make test`. Both create .venv on first use. `make run` installs the
# runtime dependencies only (requirements.txt); `make test` adds the test tools (pyproject.toml's `test`
# extra: pytest, playwright, ruff, librosa). Every version is pinned: requirements.txt and constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The PyTorch build, installed along with the rest; requirements.txt only allows the range the tests ran
# on. Override for another build, e.g. make run TORCH="torch==2.11.0".
TORCH ?= torch==2.13.0
PORT ?= $(or $(GRADIO_SERVER_PORT),7860)
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt
DEPS := requirements.txt constraints.txt pyproject.toml Makefile
# What has been installed into $(VENV): the runtime dependencies, then the test tools as well.
RUNTIME := $(VENV)/.installed-runtime
TESTDEPS := $(VENV)/.installed-test

.PHONY: run test test-gpu lint bench screenshot clean

# The suite ran on Python 3.11 to 3.13 (pyproject.toml's requires-python says the same; 3.10 has no wheels).
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null || { \
	  echo "avatarbench needs Python 3.11 to 3.13 ($(PYTHON): $$($(PYTHON) --version 2>/dev/null || echo 'not found'))." >&2; \
	  echo "Name one with PYTHON, e.g. make $(or $(MAKECMDGOALS),run) PYTHON=python3.12" >&2; exit 1; }
	@echo "setting up $(VENV) with $$($(PYTHON) --version) (first run only; a few minutes)"
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "could not create $(VENV); on Debian or Ubuntu: apt-get install python3-venv" >&2; exit 1; }

$(RUNTIME): $(DEPS) | $(BIN)/python
	$(PIP) "$(TORCH)" -e .
	@touch $@

$(TESTDEPS): $(RUNTIME)
	$(PIP) "$(TORCH)" -e ".[test]"
	@touch $@

run: $(RUNTIME)
	$(BIN)/python app.py --port $(PORT)

test: $(TESTDEPS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-gpu: $(TESTDEPS)
	$(BIN)/python -m pytest -m gpu

lint: $(TESTDEPS)
	$(BIN)/ruff check .

bench: $(RUNTIME)
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/onnx_overhead.py
	$(BIN)/python scripts/results_readme.py  # the results README's figures, from the files just written

# Refresh the README's pictures of the five tabs from the running app (real headless Chromium, about a minute).
screenshot: $(TESTDEPS)
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
