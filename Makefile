# The two commands of the README. Both create or refresh the virtual environment first.
#   make demo   the main job: set up a local instance from nothing and show it working
#   make test   ruff, mypy and the whole test suite (SQLite always, PostgreSQL when it answers)
#   make check  the edit loop: ruff, mypy, unit and functional tests on SQLite only, 2 workers,
#               without the whole training runs
#   make system the hardening scenarios of tests/system in full (60 s soak) and their report
#   make bench-tools  what the benchmarks need beyond the venv (wrk, a C load generator)
#   make browser-deps the console's browser tests' Chromium and its driver (Debian packages)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CODE   := secure_maas migrations tests $(wildcard bench)

.PHONY: demo test check system venv lint clean bench-tools browser-deps

venv: $(STAMP)

# Reinstall whenever pyproject.toml changes (new or re-pinned dependency).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --prefer-binary -e '.[dev,postgres]'
	@touch $(STAMP)

demo: venv
	$(BIN)/secure-maas demo

lint: venv
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy secure_maas

# Unit and functional tests on both cores (pytest-xdist, one module per worker at a time), then
# the system scenarios alone: their load and fault timings assume the machine is theirs. The
# console's browser tests are among them, so a missing Chromium fails here rather than skips.
test: lint browser-deps
	$(BIN)/pytest -n 2 --dist loadfile tests/unit tests/functional
	SMAAS_TEST_REQUIRE_BROWSER=1 $(BIN)/pytest tests/system

# The edit loop, without the whole training runs (marked slow: a few dozen tests, a third of
# the time); CI (make test) still runs everything on both databases.
check: lint
	SMAAS_TEST_DATABASES=sqlite $(BIN)/pytest -q -n 2 --dist loadfile -m "not slow" tests/unit tests/functional

# The regular suite runs these too, with a shorter soak.
system: venv browser-deps
	SMAAS_SOAK_SECONDS=$${SMAAS_SOAK_SECONDS:-60} $(BIN)/pytest tests/system

# bench/serve.py drives its servers with wrk (Debian's package) so the client does not hold
# the faster server back.
bench-tools: venv
	@command -v wrk >/dev/null || (apt-get install -y wrk || (apt-get update && apt-get install -y wrk))

# tests/system/test_console_browser.py drives Debian's Chromium through its matching
# chromedriver (same package version), so nothing is downloaded when the tests run. Installs
# only what is missing; apt-get needs root (CI runs as root).
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get install -y chromium chromium-driver || \
		(apt-get update && apt-get install -y chromium chromium-driver))

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
