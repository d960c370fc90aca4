# The two commands a newcomer needs: `make run` (install the service, fetch the default model,
# serve) and `make test` (install with the test extras and the programs the tests drive, lint, run the whole
# suite). CI runs `make test`.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?=  # the service's extras only; the image: `make install EXTRAS=cloud` (s3fs/gcsfs)
BIN := $(VENV)/bin

.PHONY: install install-test system-tools run test test-fast lint bench clean

# One stamp per set of extras installed: `make run` after `make test` installs nothing more, and
# `make test` after `make run` adds the test tools to the same venv.
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q \
		-e '.$(if $(filter-out service,$*),[$*])'
	touch $@

# The service and its own dependencies: no test tools, no browser.
install: $(VENV)/.installed-$(or $(strip $(EXTRAS)),service)

# The test tools (pytest, ruff, moto, playwright...: the `test` extra) and the system programs
# the tests drive.
install-test: $(VENV)/.installed-test system-tools

# Debian's chromium (tests/test_browser.py drives it through Playwright, which cannot download
# a browser of its own here) and redis-server (the GCS fault-tolerance test of
# tests/test_cluster.py). Installed when missing and apt-get is usable; each test that needs one
# is skipped without it, saying so.
system-tools:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q $$missing || { apt-get update -q && apt-get install -y -q $$missing; }; \
	else \
		echo "note: some tests need$$missing and are skipped without it;" \
		     "install with: sudo apt-get install$$missing"; \
	fi

run: install
	$(BIN)/upscaler models pull default
	$(BIN)/upscaler serve

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The in-process tests on two workers, then the tests that start Ray (marked slow) on two
# workers: the session service's tests on one, each other module's tests together
# (tests/conftest.py groups them), so at most two Ray clusters run at once.
test: lint test-fast
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m slow

# The inner loop: everything but the tests that start Ray (marked slow), on two workers with
# one torch thread each, no network: 84-114 s on a fresh clone here (2 cores), up to 192 s busy.
test-fast: install-test
	$(BIN)/python -m pytest -n 2 -m "not slow"

# Every bench, then one table of every figure beside its goal (bench/run_all.py; ~15 min).
bench: $(VENV)/.installed-test
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
