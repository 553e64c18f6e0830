# The two set-up commands of the README work on a fresh clone:
#   make demo   create .venv if needed, then build the CPU-sized RAMba, run it, generate (hsa demo)
#   make test   create .venv if needed, then run the test suite on 2 workers (what CI runs)
#   make test-fast   the same without the tests marked slow (interpreter kernels, fla on CPU)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-run the installer when any file it reads changes.
STAMP := $(VENV)/.hsa-setup-stamp
PYTEST_ARGS ?= -n 2 -q
LINT_PATHS ?= .

.PHONY: setup demo test test-fast lint info clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml plugins/hsa-minlstm/pyproject.toml scripts/setup-env.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup-env.sh
	touch $@

demo: setup
	$(BIN)/hsa demo

test: setup
	# Everything is installed by setup, so a missing optional piece is a failure here, not a skip.
	HSA_TESTS_REQUIRE_ALL=1 $(BIN)/python -m pytest $(PYTEST_ARGS) tests plugins/hsa-minlstm/tests

test-fast: setup
	HSA_TESTS_REQUIRE_ALL=1 $(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow" tests plugins/hsa-minlstm/tests

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)

info: setup
	$(BIN)/hsa info

clean-venv:
	rm -rf $(VENV)
