# The two commands: `make run` serves the demo, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv run lint fmt test test-asgi browser-deps docs bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,redis,bench]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(BIN)/wshub serve wshub.demo:app --host 127.0.0.1 --port 8000 --broker memory://

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

# The suites that drive the writer again, with the transport fast path off: every send
# through plain ASGI, as on servers other than uvicorn (hypercorn, granian, daphne).
# test_connections_follow_the_environment checks that the servers here really are on ASGI.
ASGI_SUITES := tests/integration/test_fanout.py tests/integration/test_backpressure.py \
	tests/integration/test_shutdown.py tests/integration/test_recovery.py

test-asgi: venv
	WSHUB_TRANSPORT_FAST_PATH=false $(BIN)/pytest $(ASGI_SUITES) \
		tests/integration/test_transport.py::test_connections_follow_the_environment

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
