#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (token, client_payload, stream_entry,
# presence_query), each for FUZZ_SECONDS (default 10: the CI smoke run;
# `make fuzz` runs longer).
#
#   FUZZ_SECONDS=300 scripts/fuzz.sh            every target, 5 minutes each
#   FUZZ_TARGETS="token" scripts/fuzz.sh        one target
#   FUZZ_SANITIZER=address, FUZZ_TARGET_DIR=..., FUZZ_PROFILE=dev  see below
#
# Exits non-zero when a target crashes, panics, times out or runs out of
# memory, after printing where the input that did it was written. Installs
# cargo-fuzz when missing. One target at a time: libFuzzer uses one core.
#
# The seeds in fuzz/seeds/<target>/ are committed and only read. What a run
# discovers goes to fuzz/corpus/<target>/ (kept between local runs, so long
# runs build on each other) and crashes to fuzz/artifacts/<target>/; both
# are ignored by git, so a CI run leaves the tree as it found it.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-10}
FUZZ_TARGETS=${FUZZ_TARGETS:-token client_payload stream_entry presence_query}
CARGO_FUZZ_VERSION=${CARGO_FUZZ_VERSION:-0.13.2}
# No AddressSanitizer by default: the relay forbids unsafe code, so what the
# fuzzers find in it is panics, failed assertions, hangs and memory blow-ups,
# which libFuzzer catches by itself, at several times the executions a second.
# FUZZ_SANITIZER=address (works on stable too) also watches the dependencies'
# unsafe code.
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# cargo-fuzz passes nightly-only flags (-Z sanitizer, sancov options); the
# stable toolchain takes them with RUSTC_BOOTSTRAP. Only for these commands.
export RUSTC_BOOTSTRAP=1

# Fuzz exactly the dependency versions the relay ships with: the fuzz
# workspace's lock file starts from the relay's, plus libFuzzer's own crates.
cp Cargo.lock fuzz/Cargo.lock

# FUZZ_PROFILE=dev builds without optimisations: a fraction of the build
# time for a tenth of the speed, the right trade for CI's seconds-long runs.
if [ "${FUZZ_PROFILE:-release}" = dev ]; then
    build=(--fuzz-dir fuzz --dev --sanitizer "$FUZZ_SANITIZER")
else
    build=(--fuzz-dir fuzz --release --debug-assertions --sanitizer "$FUZZ_SANITIZER")
fi
# Default fuzz/target. A build from scratch takes about 8 minutes of both
# cores (the whole relay and its dependencies, instrumented), so a machine
# that fuzzes often may keep it elsewhere.
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
    build+=(--target-dir "$FUZZ_TARGET_DIR")
fi
echo "fuzz: building the targets ($FUZZ_SANITIZER sanitizer)"
cargo fuzz build "${build[@]}"

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
for target in $FUZZ_TARGETS; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    log=$logs/$target.log
    echo "fuzz: $target for ${FUZZ_SECONDS}s"
    status=0
    cargo fuzz run "${build[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -max_len=8192 -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    echo "fuzz: $target: ${runs:-?} runs, ${rate:-?} exec/s, corpus $(find "$corpus" -type f | wc -l) inputs"
    if [ "$status" -ne 0 ]; then
        # Everything libFuzzer said about the failure, then where the input is.
        grep -E -A4 "panicked at|ERROR: libFuzzer" "$log" | head -30 || true
        input=$(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log" | tail -1)
        echo "fuzz: $target FAILED (exit $status); full log: $log"
        if [ -n "$input" ]; then
            echo "fuzz: the input is in $input"
            # CI's clone is gone afterwards: the input itself, for a unit test.
            echo "fuzz:   base64: $(base64 -w0 "$input" | head -c 4000)"
            echo "fuzz:   reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build[*]} $target $input"
            echo "fuzz:   minimise:  RUSTC_BOOTSTRAP=1 cargo fuzz tmin ${build[*]} $target $input"
            echo "fuzz:   then add it as a unit test next to the parser it broke"
        fi
        failed+=("$target")
    fi
done

total=$(wc -w <<<"$FUZZ_TARGETS")
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}"
fi
echo "fuzz: $((total - ${#failed[@]})) passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
