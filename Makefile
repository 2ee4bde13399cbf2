# The same commands the README and CI use.
CARGO ?= cargo
VENV  := target/py-venv
PY    := $(VENV)/bin/python
BIN   := target/debug/aigw

.PHONY: build run test test-rust test-python lint fmt docs bench fuzz loadtest soak release clean setup-run setup-test vendor-check

# What the build and the tests need besides Rust, installed when missing (scripts/setup.sh:
# apt, with sudo when not root; elsewhere it names the packages). A no-op in milliseconds
# once everything is there.
setup-run:
	scripts/setup.sh run
setup-test:
	scripts/setup.sh test

build: setup-run
	$(CARGO) build --bins

## Start the mock upstream and the gateway with conf/aigw.yaml; prints what to try.
run: build
	scripts/run.sh $(BIN)

## The whole test suite: Rust unit and end-to-end tests, then the Python SDK tests.
test: test-rust test-python

test-rust: setup-test
	$(CARGO) nextest run --no-fail-fast

# One venv, cached under target/ and rebuilt when the pinned SDKs change.
$(VENV)/.installed: tests/python/requirements.txt | setup-test
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

# Built as the Rust tests build it (dev-dependencies in the feature set), so after
# test-rust nothing is compiled again.
test-python: setup-test $(VENV)/.installed
	$(CARGO) build --bins --tests
	AIGW_BIN=$(BIN) $(PY) -m pytest -q tests/python

lint: setup-test
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## The book (docs/, mdBook) into target/book, then a check of every internal link and anchor.
docs:
	scripts/setup.sh docs
	mdbook build docs
	python3 scripts/check-book.py target/book docs

bench:
	$(CARGO) bench --bench hot_paths

# Each fuzz target for FUZZ_SECONDS, growing fuzz/corpus/<target>. Needs a nightly
# toolchain (libFuzzer instrumentation); not part of `make test`, which replays the
# corpus and past crashes through the same checks (tests/fuzz_corpus.rs).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := config sse translate body guard
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	for t in $(FUZZ_TARGETS); do \
	  $(CARGO) +nightly fuzz run -O $$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 || exit 1; \
	done

release: setup-run
	$(CARGO) build --release --bins

# The load kit also measures a bare Pingora proxy (examples/bare_proxy.rs): the floor
# of what Pingora costs, to split the gateway's cost into Pingora's and aigw's own.
loadtest: release
	$(CARGO) build --release --example bare_proxy
	loadtest/run.sh

# Mixed traffic, failures and disconnects for SOAK_SECONDS (default 300); checks nothing
# stays in flight and RSS stays flat, and measures memory per idle connection.
soak: release
	loadtest/soak.sh

# The vendored Pingora crates are exactly the published ones plus vendor/patches/, in order.
# Needs the published .crate files (cargo's cache or crates.io); skips, saying so, without them.
vendor-check:
	scripts/vendor-pingora.sh check

clean:
	$(CARGO) clean
