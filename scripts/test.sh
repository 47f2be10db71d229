#!/usr/bin/env bash
# The whole test suite: unit tests and the end-to-end tests, which start their own PostgreSQL
# clusters, Jaeger and service binaries (nothing to start beforehand).
#
# Broker: Apache Kafka by default. One broker and one PostgreSQL cluster are started for the whole
# run (tests/src/bin/fixtures.rs) and shared by the tests that kill neither: the in-process
# component tests (tests/tests/component_*.rs) use their own databases in the shared cluster, and
# every test its own topics and group. Tests that kill or pause the broker start a private one.
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
# The end-to-end tests run the service binaries, so build them first. The relay with fail points
# (outbox-relay/src/failpoint.rs) is built into a binary of its own, before the plain build puts
# the relay without them back in place: nothing but the tests ever runs it.
cargo build -p outbox-relay --features failpoints --locked
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
install -m 755 "$target_dir/debug/outbox-relay" "$target_dir/debug/outbox-relay-failpoints"
cargo build --workspace --bins --locked
profile="default"
[ "${CI:-}" = "true" ] && profile="ci"

fixtures_pid=""
stop_fixtures() {
    if [ -n "$fixtures_pid" ]; then
        kill -TERM "$fixtures_pid" 2>/dev/null || true
        wait "$fixtures_pid" 2>/dev/null || true
        fixtures_pid=""
    fi
}
trap stop_fixtures EXIT

# run_suite BROKER NEXTEST_ARGS...: starts the shared fixtures, runs the tests against them, stops them.
run_suite() {
    local broker="$1"
    shift
    local work ready
    work="$(mktemp -d -t blog-test-run-XXXXXX)"
    ready="$work/fixtures.env"
    echo "[test] starting the shared $broker broker and PostgreSQL cluster (log: $work/fixtures.log) ..." >&2
    BROKER="$broker" "$target_dir/debug/fixtures" --ready-file "$ready" >"$work/fixtures.log" 2>&1 &
    fixtures_pid=$!
    for _ in $(seq 1 600); do
        [ -f "$ready" ] && break
        if ! kill -0 "$fixtures_pid" 2>/dev/null; then
            echo "[test] the shared fixtures did not start:" >&2
            cat "$work/fixtures.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    [ -f "$ready" ] || { echo "[test] the shared fixtures did not answer within 120 s" >&2; cat "$work/fixtures.log" >&2; exit 1; }
    echo "[test] running the tests on $broker ($(tr '\n' ' ' <"$ready"))" >&2
    local status=0
    (
        set -a
        # shellcheck disable=SC1090
        . "$ready"
        BROKER="$broker" exec cargo nextest run --workspace --locked --profile "$profile" "$@"
    ) || status=$?
    stop_fixtures
    rm -rf "$work"
    return "$status"
}

if [ "$#" -gt 0 ] || [ -n "${BROKER:-}" ]; then
    run_suite "${BROKER:-kafka}" "$@"
else
    status=0
    run_suite kafka || status=$?
    # The second, independent broker: the guarantees must not rest on one implementation.
    run_suite nisshi -E '(binary(exactly_once) - test(benchmark)) | binary(fencing) | binary(component_relay) | binary(component_relay_faults) | binary(component_broker) | binary(component_routing) | binary(operator)' || status=$?
    exit "$status"
fi
