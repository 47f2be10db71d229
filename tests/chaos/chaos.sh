#!/usr/bin/env bash
# The chaos script: writes through the API at a steady rate while SIGKILLing the broker, the relay
# and the sink and restarting them, and pausing the relay and the broker (SIGSTOP for 4-6 s, longer
# than the relay's lease, then SIGCONT), then prints a verdict (acknowledged writes, events on the topic,
# duplicates, missing, per-article order violations, DB1 vs DB2, API errors) and exits non-zero on
# any loss, duplicate, reorder or difference.
#
#   tests/chaos/chaos.sh                   # a stack of its own (nothing else needed)
#   tests/chaos/chaos.sh --short           # CI's quick run
#   tests/chaos/chaos.sh --target local    # against `scripts/stack.sh` (run it first, in another terminal)
#   tests/chaos/chaos.sh --target compose  # against compose/docker-compose.yml
#   tests/chaos/chaos.sh --help            # rate, duration, kill interval
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --bins --locked --quiet
exec "$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/chaos" "$@"
