# The two commands a newcomer needs: `make run` (install, fetch the default model, serve) and
# `make test` (install with test extras, lint, run the whole suite). CI runs `make test`.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev  # the image: `make install EXTRAS=cloud` (no test tools; s3fs/gcsfs)
BIN := $(VENV)/bin

.PHONY: install browser run test test-fast lint bench clean

$(BIN)/upscaler: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '$(if $(strip $(EXTRAS)),.[$(strip $(EXTRAS))],.)'
	touch $@

install: $(BIN)/upscaler $(if $(findstring dev,$(EXTRAS)),browser)

# The browser test (tests/test_browser.py) drives Debian's chromium through Playwright, which
# cannot download a browser of its own here. Installed when missing and apt-get is usable.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	else \
		echo "note: the browser test needs chromium and is skipped without it;" \
		     "install it with: sudo apt-get install chromium (or set UPSCALER_CHROMIUM)"; \
	fi

run: install
	$(BIN)/upscaler models pull default
	$(BIN)/upscaler serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The in-process tests on two workers, then the tests that start Ray (marked slow) on two
# workers: the session service's tests on one, each other module's tests together
# (tests/conftest.py groups them), so at most two Ray clusters run at once.
test: lint test-fast
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m slow

# The inner loop: everything but the tests that start Ray (marked slow), on two workers with
# one torch thread each: 52-83 s here.
test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow"

# Every bench, then one table of every figure beside its goal (bench/run_all.py; ~15 min).
bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
