# bao-kms-provider — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
BUILD_DIR ?= $(CURDIR)/build
PYTHON := $(BUILD_DIR)/venv/bin/python
export BUILD_DIR

.PHONY: all build tools tools-openbao lint unit test test-rust test-system demo bench clean help
.PHONY: deb rpm package-files

all: build

help:
	@echo "make demo   - local OpenBao dev server + provider + a KMS v2 round trip (the main job)"
	@echo "make test   - install what the tests need, then lint and run every test"
	@echo "make bench  - the provider vs direct Transit calls on a real OpenBao (QUICK=1: short run)"
	@echo "make build  - cargo build"
	@echo "make deb    - Debian package (cargo-deb) into $$CARGO_TARGET_DIR/packages (default target/packages)"
	@echo "make rpm    - RPM package (cargo-generate-rpm) into the same directory"
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

# docs/performance.md: QUICK=1 for a short run; BENCH_ROUNDS, BENCH_SECONDS override.
bench: tools-openbao
	QUICK="$(QUICK)" $(CARGO) bench --locked --bench kms_latency

clean:
	$(CARGO) clean

# Distro packages (docs/packaging.md). PKG_DIR, DEB_FLAGS and RPM_FLAGS may be overridden, e.g.
# `make deb DEB_FLAGS="--deb-version 0.1.0-2"` or `make rpm RPM_FLAGS=--set-metadata=release=2`.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
PKG_DIR ?= $(TARGET_DIR)/packages
DEB_FLAGS ?=
RPM_FLAGS ?=
PKG_TOOLS_PATH := $(BUILD_DIR)/tools/bin:$(PATH)
MAN_DATE := $(shell git log -1 --format=%cs 2>/dev/null)

# Release binary, a stripped copy (cargo-generate-rpm does not strip) and man pages generated
# from the clap definitions (gzipped: cargo-deb does not compress files under target/).
package-files:
	$(CARGO) build --release --locked
	install -d $(TARGET_DIR)/release/stripped
	strip -o $(TARGET_DIR)/release/stripped/bao-kms-provider $(TARGET_DIR)/release/bao-kms-provider
	rm -rf $(TARGET_DIR)/release/man
	$(CARGO) run --release --locked --quiet --example mangen -- $(TARGET_DIR)/release/man $(MAN_DATE) >/dev/null
	gzip -9nkf $(TARGET_DIR)/release/man/*.8

deb: tools package-files
	install -d $(PKG_DIR)
	PATH=$(PKG_TOOLS_PATH) $(CARGO) deb --no-build --locked --output $(PKG_DIR)/ $(DEB_FLAGS)

rpm: tools package-files
	install -d $(PKG_DIR)
	PATH=$(PKG_TOOLS_PATH) $(CARGO) generate-rpm --output $(PKG_DIR)/ $(RPM_FLAGS)

# The kind end-to-end test (tests/e2e/kind/README.md). Needs a Docker engine and kind; without
# them the scripts say so and exit 2. Not part of `make test` (no Docker engine in CI).
.PHONY: e2e-kind e2e-kind-down
e2e-kind:
	tests/e2e/kind/up.sh

e2e-kind-down:
	tests/e2e/kind/down.sh
