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
