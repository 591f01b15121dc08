# bao-kms-provider — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
BUILD_DIR ?= $(CURDIR)/build
PYTHON := $(BUILD_DIR)/venv/bin/python
export BUILD_DIR
# promtool, unpacked from Debian's prometheus package by scripts/tools.sh (tests/prometheus_rules.rs).
PROMTOOL ?= $(BUILD_DIR)/tools/prometheus/promtool
export PROMTOOL

.PHONY: all build tools tools-openbao kube lint unit test test-rust test-prometheus test-system demo bench bench-kube clean help
.PHONY: deb rpm package-files

all: build

help:
	@echo "make demo   - local OpenBao dev server + provider + a KMS v2 round trip (the main job)"
	@echo "make test   - install what the tests need, then lint and run every test"
	@echo "make test-prometheus - promtool check and unit tests of docs/prometheus/bao-kms-provider.rules.yml"
	@echo "make bench  - the provider vs direct Transit calls on a real OpenBao (QUICK=1: short run)"
	@echo "make bench-kube - Secrets through a real kube-apiserver: this provider vs aesgcm vs identity (QUICK=1: short)"
	@echo "make fuzz   - run every fuzz target for FUZZ_SECONDS (default 60) each (nightly, cargo-fuzz)"
	@echo "make kube   - build the real kube-apiserver, kubeadm, kubectl and etcd for the tests (KUBE_VERSION)"
	@echo "make build  - cargo build"
	@echo "make deb    - Debian package (cargo-deb) into $$CARGO_TARGET_DIR/packages (default target/packages)"
	@echo "make rpm    - RPM package (rpmbuild, packaging/rpm/bao-kms-provider.spec) into the same directory"
	@echo "make repo   - signed apt and RPM repository in target/repo (needs REPO_SIGNING_KEY=<fingerprint>)"
	@echo "make repro  - build twice from clean clones and compare the package payloads"
	@echo "make e2e-kind      - kind cluster + .deb + Ansible roles: Secrets encrypted in etcd (needs Docker, kind)"
	@echo "make e2e-kind-down - remove the kind cluster and OpenBao container of make e2e-kind"

build:
	$(CARGO) build --locked

tools:
	scripts/tools.sh all

tools-openbao:
	scripts/tools.sh openbao

# The real Kubernetes binaries (scripts/kube.sh): built once per version, cached in KUBE_CACHE_DIR
# (default ~/.cache/bao-kms-provider/kube), outside the clone.
kube:
	scripts/kube.sh

# cargo-deny (deny.toml): licenses, banned or duplicate crates, crates.io as the only source.
# Advisories are not checked here: `cargo deny check advisories` clones the RustSec database from
# github.com, which the machines that run `make test` cannot reach (docs/security.md,
# "Dependencies"). cargo-deny is installed by `make tools` into $(BUILD_DIR)/tools/bin.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	PATH=$(BUILD_DIR)/tools/bin:$$PATH $(CARGO) deny --locked check --hide-inclusion-graph licenses bans sources

# Rust unit and integration tests (real OpenBao dev servers on loopback).
test-rust: tools
	$(CARGO) test --locked

# The alert rules alone: promtool check rules, promtool test rules tests/prometheus/*.test.yml
# (also part of test-rust).
test-prometheus: tools
	$(CARGO) test --locked --test prometheus_rules

# System tests: systemd in systemd-nspawn, packages, Ansible, etcd, the real kube-apiserver (pytest).
test-system: tools build
	$(CARGO) build --locked --example seed_writer
	kube_bin=$$(scripts/kube.sh) && BAO_KUBE_BIN_DIR="$$kube_bin" $(PYTHON) -m pytest -v --durations=20 tests/system

# The release build the package tests need (package-files) runs at the lowest CPU priority beside
# lint, the Rust tests and the fuzz smoke, which leave a core idle much of the time; the package
# tests then find it done. Its output goes to $(TARGET_DIR)/package-files.log.
test: tools
	@mkdir -p $(TARGET_DIR)
	@nice -n 19 $(MAKE) --no-print-directory package-files > $(TARGET_DIR)/package-files.log 2>&1 & release=$$!; \
	$(MAKE) --no-print-directory lint test-rust fuzz-smoke; rc=$$?; \
	if ! wait $$release; then echo "make package-files failed:"; tail -n 60 $(TARGET_DIR)/package-files.log; exit 1; fi; \
	exit $$rc
	@echo "make test: lint, Rust tests, fuzz smoke and the release build done at $$(date +%T)"
	$(MAKE) --no-print-directory test-system

# Fuzzing (docs/reliability.md): every cargo-fuzz target for FUZZ_SECONDS; make test runs a smoke.
FUZZ_SECONDS ?= 60
.PHONY: fuzz fuzz-smoke
fuzz: tools
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke: tools
	FUZZ_BUILD_FLAGS="--dev -s none" FUZZ_KEEP_CORPUS=0 scripts/fuzz.sh 10

demo: tools-openbao build
	scripts/demo.sh

# docs/performance.md: QUICK=1 for a short run; BENCH_ROUNDS, BENCH_SECONDS override.
bench: tools-openbao
	QUICK="$(QUICK)" $(CARGO) bench --locked --bench kms_latency

# docs/performance.md, "Through kube-apiserver": Secrets through the real kube-apiserver with this
# provider, aesgcm and identity side by side (QUICK=1: a short run; BENCH_KUBE_* override).
bench-kube: tools-openbao
	$(CARGO) build --release --locked
	kube_bin=$$(scripts/kube.sh) && BAO_KUBE_BIN_DIR="$$kube_bin" QUICK="$(QUICK)" $(PYTHON) benches/kube/bench_kube.py

clean:
	$(CARGO) clean

# Distro packages (docs/packaging.md). PKG_DIR, DEB_FLAGS, RPM_RELEASE and RPM_FLAGS may be
# overridden, e.g. `make deb DEB_FLAGS="--deb-version 0.1.0-2"` or `make rpm RPM_RELEASE=2`.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
PKG_DIR ?= $(TARGET_DIR)/packages
DEB_FLAGS ?=
RPM_RELEASE ?= 1
RPM_FLAGS ?=
PKG_TOOLS_PATH := $(BUILD_DIR)/tools/bin:$(PATH)
PKG_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
MAN_DATE := $(shell git log -1 --format=%cs 2>/dev/null)
# Reproducible packages: every timestamp is the commit's, paths of this checkout, the target dir
# and the cargo registry are remapped out of the binary, and cargo-auditable embeds the
# dependency tree (section .dep-v0) for distro scanners.
# Evaluated once per make run (a recursive `?=` would re-run git for every recipe, and a commit
# made while a build runs would give the .deb and the .rpm different timestamps).
ifeq ($(origin SOURCE_DATE_EPOCH),undefined)
SOURCE_DATE_EPOCH := $(shell git log -1 --format=%ct 2>/dev/null)
endif
PKG_CARGO_HOME := $(or $(CARGO_HOME),$(HOME)/.cargo)
RELEASE_RUSTFLAGS := $(RUSTFLAGS) --remap-path-prefix=$(CURDIR)=/usr/src/bao-kms-provider \
	--remap-path-prefix=$(TARGET_DIR)=/usr/src/bao-kms-provider/target \
	--remap-path-prefix=$(PKG_CARGO_HOME)=/usr/src/cargo
RELEASE_ENV := PATH=$(PKG_TOOLS_PATH) SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) RUSTFLAGS="$(RELEASE_RUSTFLAGS)"

# Release binary, a stripped copy (for the .rpm) and man pages generated from the clap
# definitions and docs/configuration.md (gzipped without timestamps: cargo-deb does not compress files under target/).
package-files: tools
	$(RELEASE_ENV) $(CARGO) auditable build --release --locked
	install -d $(TARGET_DIR)/release/stripped
	strip -o $(TARGET_DIR)/release/stripped/bao-kms-provider $(TARGET_DIR)/release/bao-kms-provider
	rm -rf $(TARGET_DIR)/release/man
	$(RELEASE_ENV) $(CARGO) auditable run --release --locked --quiet --example mangen -- $(TARGET_DIR)/release/man $(MAN_DATE) >/dev/null
	gzip -9nkf $(TARGET_DIR)/release/man/*.8 $(TARGET_DIR)/release/man/*.5
	touch -d @$(SOURCE_DATE_EPOCH) $(TARGET_DIR)/release/man/*.[58].gz

deb: tools package-files
	install -d $(PKG_DIR)
	$(RELEASE_ENV) $(CARGO) deb --no-build --locked --output $(PKG_DIR)/ $(DEB_FLAGS)

# rpmbuild with packaging/rpm/bao-kms-provider.spec (it only installs the files built above).
rpm: tools package-files
	install -d $(PKG_DIR)
	rm -rf $(TARGET_DIR)/rpmbuild
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) rpmbuild -bb --quiet \
		--define "_topdir $(TARGET_DIR)/rpmbuild" --define "_rpmdir $(PKG_DIR)" \
		--define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
		--define "srcroot $(CURDIR)" --define "targetdir $(TARGET_DIR)" \
		--define "pkg_version $(PKG_VERSION)" --define "pkg_release $(RPM_RELEASE)" \
		$(RPM_FLAGS) packaging/rpm/bao-kms-provider.spec

# Signed apt + RPM repository in REPO_DIR from the packages in PKG_DIR (docs/repositories.md):
# `make repo REPO_SIGNING_KEY=<fingerprint> [GNUPGHOME=...]`. Packages already in REPO_DIR stay,
# so older versions remain installable.
REPO_DIR ?= $(TARGET_DIR)/repo
ifneq ($(filter repo,$(MAKECMDGOALS)),)
ifeq ($(strip $(REPO_SIGNING_KEY)),)
$(error make repo: set REPO_SIGNING_KEY to the fingerprint of the signing key (a secret key in GNUPGHOME, default ~/.gnupg); see docs/repositories.md)
endif
endif
.PHONY: repo repro
repo: deb rpm
	PKG_DIR=$(PKG_DIR) REPO_DIR=$(REPO_DIR) REPO_SIGNING_KEY=$(REPO_SIGNING_KEY) scripts/repo.sh

# Two clean clones of HEAD built in different directories must give byte-identical payloads
# (slow: two full release builds; not part of `make test`, which checks the same build twice).
repro:
	scripts/repro.sh

# The kind end-to-end test (tests/e2e/kind/README.md). Needs a Docker engine and kind; without
# them the scripts say so and exit 2. Not part of `make test` (no Docker engine in CI).
.PHONY: e2e-kind e2e-kind-down
e2e-kind:
	tests/e2e/kind/up.sh

e2e-kind-down:
	tests/e2e/kind/down.sh
