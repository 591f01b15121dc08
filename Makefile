# bao-kms-provider — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
BUILD_DIR ?= $(CURDIR)/build
PYTHON := $(BUILD_DIR)/venv/bin/python
export BUILD_DIR

.PHONY: all build tools tools-openbao lint unit test test-rust test-system demo bench clean help

all: build

help:
	@echo "make demo   - local OpenBao dev server + provider + a KMS v2 round trip (the main job)"
	@echo "make test   - install what the tests need, then lint and run every test"
	@echo "make bench  - latency/throughput benchmarks against a real OpenBao"
	@echo "make build  - cargo build"
	@echo "make e2e-kind      - kind cluster + .deb + Ansible roles: Secrets encrypted in etcd (needs Docker, kind)"
	@echo "make e2e-kind-down - remove the kind cluster and OpenBao container of make e2e-kind"

build:
	$(CARGO) build --locked

tools:
	scripts/tools.sh all

tools-openbao:
	scripts/tools.sh openbao

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Rust unit and integration tests (real OpenBao dev servers on loopback).
test-rust: tools
	$(CARGO) test --locked

# System tests: systemd in systemd-nspawn, packages, Ansible, etcd (pytest).
test-system: tools build
	$(PYTHON) -m pytest -v tests/system

test: tools lint test-rust test-system

demo: tools-openbao build
	scripts/demo.sh

bench: tools-openbao
	$(CARGO) bench --locked --bench kms_latency

clean:
	$(CARGO) clean

# The kind end-to-end test (tests/e2e/kind/README.md). Needs a Docker engine and kind; without
# them the scripts say so and exit 2. Not part of `make test` (no Docker engine in CI).
.PHONY: e2e-kind e2e-kind-down
e2e-kind:
	tests/e2e/kind/up.sh

e2e-kind-down:
	tests/e2e/kind/down.sh
