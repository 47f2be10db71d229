#!/usr/bin/env bash
# The whole test suite: unit tests and the end-to-end tests, which start their own PostgreSQL
# clusters, nisshi broker and service binaries (nothing to start beforehand). Extra arguments go
# to `cargo nextest run` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The end-to-end tests run the service binaries, so build them first.
cargo build --workspace --bins --locked
profile="default"
[ "${CI:-}" = "true" ] && profile="ci"
cargo nextest run --workspace --locked --profile "$profile" "$@"
