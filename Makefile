# Recipes everyone runs. `make help` lists them.
CARGO ?= cargo
# The commit shown in relay_build_info.
export RELAY_COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
export CARGO_TERM_COLOR ?= auto

.PHONY: help build release run run-cluster run-embedded test interop fuzz lint fmt deps bench observability clean

help:
	@echo "make run           Redis + two nodes (else one embedded node), the live page at /demo and a simulated city"
	@echo "make run-cluster   Redis, three nodes and nginx on port 3000, with /demo and the simulated city"
	@echo "make run-embedded  one node, everything in memory (no Redis)"
	@echo "make test          the whole test suite, with the vendored crates' own tests (installs redis-server when missing and possible)"
	@echo "make interop       the official JS and Python clients, direct and through nginx (part of make test)"
	@echo "make fuzz          each fuzz target for FUZZ_SECONDS (default 300) seconds; CI runs them 10 s each"
	@echo "make lint          rustfmt check and clippy with warnings as errors"
	@echo "make release       optimised binaries: target/release/relay (the server) and relay-sim (simulate, loadgen)"
	@echo "make observability  dashboard, alert rules and their unit tests through promtool (static)"
	@echo "make bench         Redis, two nodes and the load generator; writes docs/benchmarks.md"

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

run: release
	scripts/run.sh

run-embedded: release
	RELAY_EMBEDDED=1 scripts/run.sh

run-cluster: deps release
	RUN_CLUSTER=1 scripts/run.sh

deps:
	scripts/ensure-deps.sh

observability: deps
	scripts/check-observability.sh

bench: deps release
	scripts/bench.sh

# The vendored crates' own tests need their test-only feature (`__test_harness`),
# so they run on their own with all their features, as upstream's CI does.
VENDORED := -p engineioxide -p engineioxide-core
test: deps
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --exclude engineioxide --exclude engineioxide-core --all-targets --no-fail-fast && $(CARGO) test --doc --quiet && \
		$(CARGO) nextest run $(VENDORED) --all-features --all-targets --no-fail-fast; \
	else \
		$(CARGO) test --workspace --exclude engineioxide --exclude engineioxide-core --all-targets --no-fail-fast && \
		$(CARGO) test $(VENDORED) --all-features --all-targets --no-fail-fast; \
	fi

interop: deps
	$(CARGO) nextest run -p relay --test it interop

fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} scripts/fuzz.sh

# The patched upstream crates under vendor/ keep their own lint settings and
# are checked on their own, with all their features (their tests need them).
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --exclude engineioxide --exclude engineioxide-core -- -D warnings
	$(CARGO) clippy -p engineioxide -p engineioxide-core --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf target/run
