# The two commands: `make run` and `make test` each do all set-up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint format clean bytecode

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: bytecode
	$(BIN)/nightshift up $(ARGS)

# Lint and format are checked first: a second or two, and CI runs only this command.
test: lint bytecode
	$(BIN)/pytest $(PYTEST_ARGS)

# Bytecode of our own modules, as pip writes it for every package it installs: an editable
# install has none, and where PYTHONDONTWRITEBYTECODE is set (as on our machines) every process
# compiled them again, ~65 ms of each start (bench/PROFILE.md, session 13). Python checks each
# file's timestamp, so an edited module is never run from stale bytecode; only changed files
# are compiled again here.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q src bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
	find src bench tests -name __pycache__ -type d -prune -exec rm -rf {} +

# Benchmarks (bench/README.md): never part of `make test`.
.PHONY: bench bench-quick bench-peers

bench: bytecode
	$(BIN)/python bench/run.py --full $(BENCH_ARGS)

bench-quick: bytecode
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

bench-peers: bytecode
	$(BIN)/python bench/peers.py $(BENCH_ARGS)
