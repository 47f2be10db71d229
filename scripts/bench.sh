#!/usr/bin/env bash
# The benchmark (docs/performance.md): release build, its own stack, then a table of each figure
# against its ceiling measured in the same run; results.json and latency.svg go to target/bench/.
#   scripts/bench.sh            # full run: 100k-event backlogs, 10 s phases, 200 and 1000 writes/s (~5 min)
#   scripts/bench.sh --short    # quick run (what CI does, in a debug build, to prove it works)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "[bench] building the release binaries ..." >&2
cargo build --release --workspace --bins --locked --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
exec "$target_dir/release/bench" --out "$target_dir/bench" "$@"
