#!/usr/bin/env bash
# Makes what compose/docker-compose.tls.yml needs, in DIR (default compose/certs, which git
# ignores: keys are never committed): a CA of its own, one server certificate it signs for
# postgres-db1, postgres-db2, kafka, localhost and 127.0.0.1, PostgreSQL's pg_hba.conf (TLS only),
# Kafka's PEM key store, and a random password for the Kafka user `pipeline` (SASL/PLAIN on the
# SASL_SSL listener) with the broker's JAAS setting that accepts it.
#
#   scripts/gen-certs.sh [DIR]
#   docker compose -f compose/docker-compose.yml -f compose/docker-compose.tls.yml up --build
#
# For a local machine only: the key store is readable by the broker's user, and nothing here is
# rotated. Needs the openssl command.
set -euo pipefail
dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/compose/certs}"
mkdir -p "$dir"
cd "$dir"
curve=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${curve[@]}" -keyout ca.key -out ca.crt -days 365 -subj "/CN=blog-outbox local CA" 2>/dev/null
openssl req "${curve[@]}" -keyout server.key -out server.csr -subj "/CN=blog-outbox" 2>/dev/null
printf '%s\n' \
    "subjectAltName=DNS:postgres-db1,DNS:postgres-db2,DNS:kafka,DNS:localhost,IP:127.0.0.1" \
    "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 365 \
    -extfile server.ext 2>/dev/null
cat server.key server.crt >kafka-keystore.pem
printf '%s\n' "local all all trust" "hostssl all all all scram-sha-256" "hostnossl all all all reject" >pg_hba.conf
password="$(openssl rand -hex 16)"
printf '%s\n' "$password" >kafka-password
# The apache/kafka image maps KAFKA_A_B to a.b, `__` to `_` and `___` to `-`.
printf '%s\n' "KAFKA_LISTENER_NAME_SASL__SSL_PLAIN_SASL_JAAS_CONFIG=org.apache.kafka.common.security.plain.PlainLoginModule required user_pipeline=\"$password\";" >kafka.env
chmod 644 server.key kafka-keystore.pem kafka-password
rm -f server.csr server.ext ca.srl
echo "certificates, key store and Kafka password written to $dir"
