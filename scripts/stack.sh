#!/usr/bin/env bash
# Starts the whole stack on this machine, without Docker: DB1 (PostgreSQL, port 5432), DB2
# (port 5433), the broker (Apache Kafka 4.1.1, or nisshi with BROKER=nisshi; 9092), Jaeger (OTLP
# 4317/4318, query API 16686), the API (5000), the outbox relay (9101) and the replica sink
# (9102). Data and logs live in .stack/ (delete it to start afresh). Ctrl-C stops it all.
# Arguments go to the `stack` binary (see `scripts/stack.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "[stack] building the services ..." >&2
cargo build --workspace --bins --locked --quiet
exec cargo run --quiet --locked -p e2e --bin stack -- "$@"
