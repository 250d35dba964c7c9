# policyd — two commands on a fresh machine:
#   make run    create .venv, install policyd, run it in the foreground (SQLite in ./var, sockets in ./run)
#   make test   install what the tests need (Debian packages, Python packages), then lint, type-check, test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the integration and end-to-end tests start for real.
DEB_PACKAGES := postfix bind9 bind9-utils bind9-dnsutils unbound iproute2 redis-server \
	libmilter-dev groff-base man-db swaks systemd util-linux ca-certificates \
	python3-venv adduser

.PHONY: run test venv deps lint typecheck unit integration bench clean tracked

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e .

run: venv
	mkdir -p var run
	$(BIN)/policyd --config etc/policyd.local.toml

# Nothing built may be tracked (a committed .venv broke every clone at another path).
tracked:
	@$(PYTHON) .ci/check_tracked.py

deps: tracked $(BIN)/python
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(BIN)/pip install --quiet -e '.[test]'
	@# Wheels of policyd and its dependencies: the install test (tests/integration/test_install.py)
	@# installs them into a venv of Debian's python3 as the README does, offline in its namespace.
	$(BIN)/pip wheel --quiet --wheel-dir $(VENV)/wheelhouse .

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: deps
	$(BIN)/mypy --strict

test: deps lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: deps
	$(BIN)/python -m pytest -q tests/unit

bench: deps
	$(BIN)/python bench/bench_lookup.py

clean:
	rm -rf var run build .mypy_cache .ruff_cache .pytest_cache
