#!/usr/bin/env bash
# The whole test suite: unit tests and the end-to-end tests, which start their own PostgreSQL
# clusters, Jaeger and service binaries (nothing to start beforehand).
#
# Broker: Apache Kafka by default. One broker is started for the whole run and shared by the
# tests that do not kill it (each with its own topics and group; see tests/src/bin/broker.rs);
# tests that kill or pause the broker start a private one.
#
#   scripts/test.sh                    # everything on Apache Kafka, then the exactly-once tests
#                                      # and the chaos short mode again on nisshi
#   scripts/test.sh FILTER...          # only matching tests, on $BROKER (default kafka); the
#                                      # arguments go to `cargo nextest run`
#   BROKER=nisshi scripts/test.sh      # everything on nisshi
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The end-to-end tests run the service binaries, so build them first.
cargo build --workspace --bins --locked
profile="default"
[ "${CI:-}" = "true" ] && profile="ci"
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

shared_broker_pid=""
stop_shared_broker() {
    if [ -n "$shared_broker_pid" ]; then
        kill -TERM "$shared_broker_pid" 2>/dev/null || true
        wait "$shared_broker_pid" 2>/dev/null || true
        shared_broker_pid=""
    fi
}
trap stop_shared_broker EXIT

# run_suite BROKER NEXTEST_ARGS...: starts the shared broker, runs the tests against it, stops it.
run_suite() {
    local broker="$1"
    shift
    local work ready
    work="$(mktemp -d -t blog-test-run-XXXXXX)"
    ready="$work/bootstrap"
    echo "[test] starting the shared $broker broker (log: $work/broker.log) ..." >&2
    BROKER="$broker" "$target_dir/debug/broker" --ready-file "$ready" >"$work/broker.log" 2>&1 &
    shared_broker_pid=$!
    for _ in $(seq 1 600); do
        [ -f "$ready" ] && break
        if ! kill -0 "$shared_broker_pid" 2>/dev/null; then
            echo "[test] the shared broker did not start:" >&2
            cat "$work/broker.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    [ -f "$ready" ] || { echo "[test] the shared broker did not answer within 120 s" >&2; cat "$work/broker.log" >&2; exit 1; }
    echo "[test] running the tests on $broker (shared broker at $(cat "$ready"))" >&2
    local status=0
    BROKER="$broker" E2E_SHARED_BROKER="$(cat "$ready")" \
        cargo nextest run --workspace --locked --profile "$profile" "$@" || status=$?
    stop_shared_broker
    rm -rf "$work"
    return "$status"
}

if [ "$#" -gt 0 ] || [ -n "${BROKER:-}" ]; then
    run_suite "${BROKER:-kafka}" "$@"
else
    status=0
    run_suite kafka || status=$?
    # The second, independent broker: the guarantees must not rest on one implementation.
    run_suite nisshi -E 'binary(exactly_once) - test(benchmark)' || status=$?
    exit "$status"
fi
