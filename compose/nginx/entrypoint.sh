#!/bin/sh
# Entrypoint of the compose file's NGINX backend (the stock `nginx` image runs it in place of its own).
#
# On first start it makes a private CA and a certificate for example.com signed by it, as the
# Backend TLS guide does by hand, so that no private key is ever committed:
#   /var/lib/backendtls-nginx/        (volume nginx-tls, NGINX only): server.key, server.crt, ca.crt
#   /generated/ca.yaml                (volume ca, also mounted into the loader's config directory):
#                                      the guide's ConfigMap `default/ca` holding the CA certificate.
# The CA key lives only for the seconds it takes to sign, then is deleted. Later starts reuse the
# certificate; `docker compose down -v` throws both volumes away and the next start makes new ones.
#
# Environment: NGINX_LISTEN (default 8443: all addresses) is where HTTPS is served, BACKEND_HOSTNAME
# (default example.com) the certificate's name.
set -eu

TLS_DIR=/var/lib/backendtls-nginx
GENERATED_DIR=/generated
LISTEN="${NGINX_LISTEN:-8443}"
HOSTNAME_="${BACKEND_HOSTNAME:-example.com}"

log() { echo "backendtls-nginx: $*" >&2; }

command -v openssl >/dev/null || { log "this image has no openssl: cannot create the certificate"; exit 1; }
mkdir -p "$TLS_DIR" "$GENERATED_DIR"

if [ ! -s "$TLS_DIR/server.crt" ] || [ ! -s "$TLS_DIR/server.key" ] || [ ! -s "$TLS_DIR/ca.crt" ]; then
    log "first start: creating a CA and a certificate for $HOSTNAME_"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    umask 077
    openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key"
    openssl req -x509 -new -sha256 -days 3650 -key "$work/ca.key" \
        -subj "/CN=backendtls compose demo CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$work/ca.crt"
    openssl ecparam -name prime256v1 -genkey -noout -out "$work/server.key"
    openssl req -new -sha256 -key "$work/server.key" -subj "/CN=$HOSTNAME_" -out "$work/server.csr"
    cat > "$work/server.ext" <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:$HOSTNAME_
authorityKeyIdentifier = keyid
EOF
    openssl x509 -req -sha256 -days 825 -in "$work/server.csr" \
        -CA "$work/ca.crt" -CAkey "$work/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
        -extfile "$work/server.ext" -out "$work/server.crt"
    umask 022
    chmod 600 "$work/server.key"
    chmod 644 "$work/server.crt" "$work/ca.crt"
    # Key first, CA certificate last: a start interrupted half-way starts over.
    mv "$work/server.key" "$TLS_DIR/server.key"
    mv "$work/server.crt" "$TLS_DIR/server.crt"
    mv "$work/ca.crt" "$TLS_DIR/ca.crt"
    rm -rf "$work"
    trap - EXIT
fi

# The CA as the guide's ConfigMap, written on every start (so it always matches the certificate
# NGINX serves) and atomically: the loader watches this directory and ignores hidden files.
{
    echo "# Written by compose/nginx/entrypoint.sh at NGINX's first start: the CA that signed its"
    echo "# certificate for $HOSTNAME_ (the Backend TLS guide's ConfigMap 'ca')."
    echo "apiVersion: v1"
    echo "kind: ConfigMap"
    echo "metadata:"
    echo "  name: ca"
    echo "  namespace: default"
    echo "data:"
    echo "  ca.crt: |"
    sed 's/^/    /' "$TLS_DIR/ca.crt"
} > "$GENERATED_DIR/.ca.yaml.tmp"
chmod 644 "$GENERATED_DIR/.ca.yaml.tmp"
mv "$GENERATED_DIR/.ca.yaml.tmp" "$GENERATED_DIR/ca.yaml"

sed -e "s|@LISTEN@|$LISTEN|g" -e "s|@TLS_DIR@|$TLS_DIR|g" -e "s|@HOSTNAME@|$HOSTNAME_|g" \
    /etc/backendtls/nginx.conf.template > /tmp/nginx.conf
log "serving https on $LISTEN for $HOSTNAME_"
exec nginx -e stderr -c /tmp/nginx.conf -g 'daemon off;'
