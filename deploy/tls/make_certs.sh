#!/usr/bin/env bash
# Make a private certificate authority and one key pair per Dask role
# (scheduler, worker, client), for mutual TLS between them. Needs openssl.
#
#   deploy/tls/make_certs.sh [OUT_DIR] [DAYS]
#
# OUT_DIR (default ./dask-certs) receives:
#   ca.pem                       the CA certificate: give it to every role
#   ca-key.pem                   the CA key: keep it offline, it signs new certs
#   scheduler.pem scheduler-key.pem
#   worker.pem    worker-key.pem
#   client.pem    client-key.pem
# plus a .gitignore so the keys never land in version control. Keys are
# readable by their owner only. Dask checks that a peer's certificate is signed
# by the CA, not its host name; SCHEDULER_NAMES (comma-separated DNS names) is
# still written in the scheduler's certificate for other tools.
set -euo pipefail

OUT_DIR=${1:-dask-certs}
DAYS=${2:-365}
SCHEDULER_NAMES=${SCHEDULER_NAMES:-scheduler}

if [ -e "$OUT_DIR/ca.pem" ] && [ "${FORCE:-0}" != "1" ]; then
    echo "$OUT_DIR/ca.pem exists; set FORCE=1 to replace every certificate" >&2
    exit 1
fi
mkdir -p "$OUT_DIR"
chmod 700 "$OUT_DIR"
printf '*\n' > "$OUT_DIR/.gitignore"
umask 077

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

# certificate authority
new_key "$OUT_DIR/ca-key.pem"
openssl req -x509 -new -sha256 -days "$DAYS" \
    -key "$OUT_DIR/ca-key.pem" -out "$OUT_DIR/ca.pem" \
    -subj "/O=specufex-dask/CN=specufex-dask CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"

# one key and CA-signed certificate per role; each role both serves and
# connects, so each certificate is good for both ends of a connection
san="DNS:localhost,IP:127.0.0.1"
for name in ${SCHEDULER_NAMES//,/ }; do
    san="$san,DNS:$name"
done

for role in scheduler worker client; do
    new_key "$OUT_DIR/$role-key.pem"
    openssl req -new -sha256 -key "$OUT_DIR/$role-key.pem" \
        -subj "/O=specufex-dask/CN=dask-$role" -out "$OUT_DIR/$role.csr"
    cat > "$OUT_DIR/$role.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san
EXT
    openssl x509 -req -sha256 -days "$DAYS" -in "$OUT_DIR/$role.csr" \
        -CA "$OUT_DIR/ca.pem" -CAkey "$OUT_DIR/ca-key.pem" -CAcreateserial \
        -extfile "$OUT_DIR/$role.ext" -out "$OUT_DIR/$role.pem" 2>/dev/null
    rm -f "$OUT_DIR/$role.csr" "$OUT_DIR/$role.ext"
done
rm -f "$OUT_DIR/ca.srl"

# certificates are public; keys stay private to their owner
chmod 644 "$OUT_DIR"/ca.pem "$OUT_DIR"/scheduler.pem "$OUT_DIR"/worker.pem "$OUT_DIR"/client.pem
chmod 600 "$OUT_DIR"/*-key.pem
openssl verify -CAfile "$OUT_DIR/ca.pem" \
    "$OUT_DIR/scheduler.pem" "$OUT_DIR/worker.pem" "$OUT_DIR/client.pem"
echo "certificates in $OUT_DIR (valid $DAYS days)"
