#!/usr/bin/env bash
# The benchmark (docs/performance.md): release build, then one run per broker, each on a stack of
# its own with every ceiling measured on that same broker; then both side by side. Results go to
# target/bench/<broker>/ (results.json, latency.svg).
#   scripts/bench.sh                       # Apache Kafka, then nisshi (~5 min each)
#   scripts/bench.sh --short               # quick run (what CI does, in a debug build, to prove it works)
#   BROKER=kafka scripts/bench.sh          # one broker only
#   scripts/bench.sh --sink-fetch-wait-ms 500   # other options go to the bench binary (--help)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "[bench] building the release binaries ..." >&2
cargo build --release --workspace --bins --locked --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
brokers="${BROKER:-kafka nisshi}"
for broker in $brokers; do
    echo "[bench] ===== $broker =====" >&2
    BROKER="$broker" "$target_dir/release/bench" --out "$target_dir/bench/$broker" "$@"
done
python3 - "$target_dir/bench" $brokers <<'PY'
import json, sys, os
out, brokers = sys.argv[1], sys.argv[2:]
runs = {b: json.load(open(os.path.join(out, b, "results.json"))) for b in brokers}
def rows(r):
    yield "broker", r["broker"]
    for a in r["api_writes"]:
        yield f"API creates/s, {a['connections']} conns (ratio to pgbench)", f"{a['api_per_s']:,.0f} ({a['ratio']:.2f})"
    d = r["relay_drain"]
    yield "relay drain/s (ratio to bare producer)", f"{d['relay_per_s']:,.0f} ({d['ratio']:.2f})"
    s = r["sink_apply"]
    yield "sink apply/s, 1 sink (ratio to its lower ceiling; to bare consumer)", f"{s['sink_per_s']:,.0f} ({s['ratio']:.2f}; {s['consumer_ratio']:.2f})"
    for drain in s.get("drains", []):
        yield f"sink drain/s, {drain['sinks']} sink(s)", f"{drain['per_s']:,.0f}"
    for e in r["end_to_end"]:
        yield f"e2e at {e['rate']} writes/s p50 / p99 ms", f"{e['p50_ms']:.1f} / {e['p99_ms']:.1f}"
    for name, mib in r["peak_rss_mib"].items():
        yield f"peak RSS {name} MiB", "n/a" if mib is None else f"{mib:.1f}"
table = {}
for b, r in runs.items():
    for label, value in rows(r):
        table.setdefault(label, {})[b] = value
width = max(len(label) for label in table)
print("\n" + " | ".join([f"{'figure':<{width}}"] + [f"{b:>24}" for b in brokers]))
for label, values in table.items():
    print(" | ".join([f"{label:<{width}}"] + [f"{values.get(b, ''):>24}" for b in brokers]))
PY
