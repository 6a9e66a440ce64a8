# The two set-up commands: `make run` and `make test`. Both build the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest train evaluate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/cds-service dev

test: $(STAMP) lint typecheck chart-check pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Helm chart checks (helm/README.md): installs pinned helm, kubernetes-validate and checkov into
# .cache/chart-tools on first use, then lints, renders, validates and scans every scenario.
.PHONY: chart-check
chart-check:
	PYTHON=$(PYTHON) bash tools/chart-checks/check.sh

# Reproduce model_artifacts/ from ../shared/data (features are cached in .cache/training).
train: $(STAMP)
	$(BIN)/python -m training train
	$(BIN)/python -m training verify

evaluate: $(STAMP)
	$(BIN)/python -m training evaluate

clean:
	rm -rf $(VENV) .dev .mypy_cache .pytest_cache .ruff_cache
