# openai-cache-proxy: the same steps CI runs (.ci/run), one target each.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help run release test test-deps lint fmt bench soak fuzz docker container-check audit

help:
	@echo "make run    - build (as make release) and run the proxy on :8080 (reads .env if present)"
	@echo "make release - the shipped binary, profile-guided (PGO=0: plain), in target/dist"
	@echo "make test   - install test dependencies, then run every test"
	@echo "make lint   - cargo fmt --check and clippy with warnings denied"
	@echo "make fmt    - format the code"
	@echo "make bench  - cache-hit throughput vs a bare actix-web handler, and added stream TTFB (release, wrk)"
	@echo "make soak   - loopback load soak (release): mixed traffic, 1M client IPs, dropped streams; nothing lost, nothing leaked"
	@echo "make fuzz   - property tests (cache key, config parser, stream recorder, Redis value codec) with many more cases"
	@echo "make docker - build the container image (needs a Docker engine)"
	@echo "make container-check - hadolint, and the runtime image built and run with buildah (no engine needed)"

# Built before .env is read: .env configures the proxy, not the build.
run: release
	@set -a; [ -f .env ] && . ./.env; set +a; exec target/dist/openai-cache-proxy

# PGO=0 builds without profile-guided optimisation, PGO=1 fails where it cannot be had
# (default: with it where a matching llvm-profdata is or can be installed); .ci/release says more.
release:
	@bash .ci/release >/dev/null

# Tools the tests use from the system. Installed with apt when running as root.
test-deps:
	@bash .ci/test-deps

# Every test; the proxy's own logs of the whole run go to target/test-logs at trace level
# (the tests' HTTP client and mock server are left out) and are scanned for secrets.
TEST_LOG_DIR := $(CURDIR)/target/test-logs
SCAN_LEVEL := trace,hyper=off,hyper_util=off,reqwest=off,wiremock=off,h2=off
test: test-deps
	@rm -rf $(TEST_LOG_DIR)
	@if cargo nextest --version >/dev/null 2>&1; then \
		OCP_TEST_LOG_DIR=$(TEST_LOG_DIR) RUST_LOG='$(SCAN_LEVEL)' cargo nextest run --no-fail-fast; \
	else \
		echo "cargo-nextest not found; using cargo test"; \
		OCP_TEST_LOG_DIR=$(TEST_LOG_DIR) RUST_LOG='$(SCAN_LEVEL)' cargo test --no-fail-fast; \
	fi
	@SCAN_LEVEL='$(SCAN_LEVEL)' bash .ci/secret-scan $(TEST_LOG_DIR)

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench:
	bash tests/bench/run.sh

# SOAK_SECONDS (mixed-traffic phase, default 60) and SOAK_CLIENTS (default 200) tune it.
soak:
	bash tests/soak/run.sh

# cargo-fuzz needs a nightly toolchain, which this project does not assume; the same
# targets run as proptest properties, here with FUZZ_CASES cases each, bounded in time.
FUZZ_CASES ?= 200000
FUZZ_SECONDS ?= 600
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) timeout $(FUZZ_SECONDS) cargo test --release --lib -- properties arbitrary_values_never_panic

docker:
	docker build -t openai-cache-proxy .

container-check:
	bash .ci/container-check

# Needs the RustSec advisory database from GitHub, which is not reachable everywhere.
audit:
	cargo audit
