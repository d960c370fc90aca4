# The two commands a newcomer needs: `make run` (install, fetch the default model, serve) and
# `make test` (install with test extras, lint, run the whole suite). CI runs `make test`.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev  # the image: `make install EXTRAS=cloud` (no test tools; s3fs/gcsfs)
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint bench clean

$(BIN)/upscaler: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '$(if $(strip $(EXTRAS)),.[$(strip $(EXTRAS))],.)'
	touch $@

install: $(BIN)/upscaler

run: install
	$(BIN)/upscaler models pull default
	$(BIN)/upscaler serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

# The inner loop: everything but the tests that start Ray (marked slow).
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Every bench, then one table of every figure beside its goal (bench/run_all.py; ~15 min).
bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
