# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.backlens-installed

.PHONY: setup demo test test-all bench lint readme notebooks clean

setup: $(STAMP)

# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build
# where the CPU wheel of 2.13.0 is on local disk; override with `make TORCH=...`.
# The pin is repeated with the extras: backpack pulls torchvision, whose newest
# release would otherwise upgrade torch.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/backlens demo --out results/demo --overwrite

# The suite without the `slow` tests (minutes, not tens of minutes); test-all runs them too.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

# README's figures from the code as it is (tests/test_readme.py fails when they are stale).
readme: $(STAMP)
	$(BIN)/python tools/readme_figures.py

# examples/*.ipynb rebuilt and executed, stored with their outputs (make test runs them again).
notebooks: $(STAMP)
	$(BIN)/python tools/make_notebooks.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy src
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) results build *.egg-info src/*.egg-info
