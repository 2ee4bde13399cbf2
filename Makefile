# The same commands the README and CI use.
CARGO ?= cargo
VENV  := target/py-venv
PY    := $(VENV)/bin/python
BIN   := target/debug/aigw

.PHONY: build run test test-rust test-python lint fmt bench loadtest release clean

build:
	$(CARGO) build --bins

## Start the mock upstream and the gateway with conf/aigw.yaml; prints what to try.
run: build
	scripts/run.sh $(BIN)

## The whole test suite: Rust unit and end-to-end tests, then the Python SDK tests.
test: test-rust test-python

test-rust:
	$(CARGO) nextest run --no-fail-fast

# One venv, cached under target/ and rebuilt when the pinned SDKs change.
$(VENV)/.installed: tests/python/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

# Built as the Rust tests build it (dev-dependencies in the feature set), so after
# test-rust nothing is compiled again.
test-python: $(VENV)/.installed
	$(CARGO) build --bins --tests
	AIGW_BIN=$(BIN) $(PY) -m pytest -q tests/python

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench:
	$(CARGO) bench --bench hot_paths

release:
	$(CARGO) build --release --bins

loadtest: release
	loadtest/run.sh

clean:
	$(CARGO) clean
