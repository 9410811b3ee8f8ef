# gaprune: `make quickstart` installs everything and runs the digits pipeline; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

quickstart: install  ## baseline (trained if missing) -> NSGA-II search -> KD fine-tune -> results table
	$(BIN)/python search.py

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf outputs multirun
