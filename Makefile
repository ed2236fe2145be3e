# Two commands set everything up on a fresh machine:  make test   and   make demo
# A .venv is created on first use; CPU torch 2.13.0 is installed into it when no torch is present
# (plain `pip install torch` would pull a multi-GB CUDA build). Re-running is quick: the install
# step is redone only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.egmm-installed
TORCH_VERSION ?= 2.13.0
DEMO_OUT ?= demo-output

.PHONY: test test-slow lint demo clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[test,dask,uproot]"
	@touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tutorials
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tutorials

demo: $(STAMP)
	$(VENV)/bin/egmm demo --out $(DEMO_OUT)

clean-venv:
	rm -rf $(VENV)
