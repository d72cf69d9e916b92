# One door for people and CI: `make run` opens attnscope on the embedded default, `make lint` runs ruff,
# `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run lint test screenshots bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch 2.13.0 is pinned first so that pip never pulls a multi-GB build of a newer release
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/attnscope

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -p no:cacheprovider

screenshots: $(STAMP)
	$(BIN)/attnscope screenshots

bench: $(STAMP)
	$(BIN)/attnscope bench train
