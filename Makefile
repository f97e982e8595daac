# The two commands: `make run` serves the demo, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv run lint fmt test test-asgi test-wheel dist browser-deps docs bench clean

# make run HOST=0.0.0.0 PORT=8001 BROKER=redis://localhost:6379/0; each falls back to its
# WSHUB_* variable (WSHUB_PORT=8001 make run), then to the default. Plain HOST or PORT
# variables of the environment (a shell's HOST is the machine's name) are not used.
ifneq ($(origin HOST),command line)
HOST := $(or $(WSHUB_HOST),127.0.0.1)
endif
ifneq ($(origin PORT),command line)
PORT := $(or $(WSHUB_PORT),8000)
endif
ifneq ($(origin BROKER),command line)
BROKER := $(or $(WSHUB_BROKER),memory://)
endif

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,redis,bench]'
	touch $(STAMP)

venv: $(STAMP)

# Every other WSHUB_* variable (WSHUB_LOG_LEVEL, WSHUB_JWT_SECRET, ...) reaches the app as is.
# A busy port is one line naming it, and exit status 1.
run: venv
	WSHUB_PORT_HINT="make run PORT=..." $(BIN)/wshub serve wshub.demo:app \
		--host '$(HOST)' --port '$(PORT)' --broker '$(BROKER)'

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# pytest includes tests/integration/test_js_package.py: `npm pack` of the JS client,
# installed and imported from node (it fails under CI=true when node is missing).
test: browser-deps lint
	$(BIN)/pytest
	$(MAKE) --no-print-directory test-asgi
	$(MAKE) --no-print-directory docs
	$(MAKE) --no-print-directory test-wheel

# The suites that drive the writer again, with the transport fast path off: every send
# through plain ASGI, as on servers other than uvicorn (hypercorn, granian, daphne).
# test_connections_follow_the_environment checks that the servers here really are on ASGI.
ASGI_SUITES := tests/integration/test_fanout.py tests/integration/test_backpressure.py \
	tests/integration/test_shutdown.py tests/integration/test_recovery.py

test-asgi: venv
	WSHUB_TRANSPORT_FAST_PATH=false $(BIN)/pytest $(ASGI_SUITES) \
		tests/integration/test_transport.py::test_connections_follow_the_environment

# The sdist and the wheel, into dist/ (the version is wshub.__version__).
dist: venv
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# What users get: the wheel, installed with its dependencies into a clean venv, then
# tests/wheel_smoke.py run from outside the checkout with `python -P`, so it imports the
# installed wshub and fails on any file the wheel lacks (static JS, demo pages, .d.ts).
WHEEL_VENV ?= /tmp/wshub-wheel-venv
test-wheel: dist
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check dist/*.whl
	cd $(WHEEL_VENV) && env -u PYTHONPATH bin/python -P $(CURDIR)/tests/wheel_smoke.py

# Browser tests drive Debian's chromium through Playwright (never a downloaded browser),
# tests/js runs on node, and the package test runs `npm pack` (Debian's nodejs has no npm).
# As root, install what is missing; otherwise say what to install (the tests then skip with
# the same hint, and fail under CI=true).
browser-deps:
	@missing=""; \
	test -x /usr/bin/chromium || missing=" chromium"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing$$missing for the browser and JS tests"; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	else \
		echo "browser/JS tests will skip: run  sudo apt-get install$$missing"; \
	fi

# The docs site (mkdocs.yml: docs/ and the API reference from docstrings) into site/;
# --strict turns every warning (a broken link, a bad docstring) into a failure.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Side-by-side figures (medians of 3 interleaved runs); see README "Benchmarks".
bench: venv
	$(BIN)/wshub bench compare --runs 3

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site dist
