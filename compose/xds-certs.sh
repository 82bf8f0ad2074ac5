#!/bin/sh
# Entrypoint of the compose file's one-shot `xds-certs` service (the loader image, run as root):
# the certificates for mutual TLS between Envoy and the loader's ADS server.
#
# `backendtls-loader certs` makes, on first start only (later starts keep them), a private CA, the
# loader's server certificate (name backendtls-loader, which Envoy checks) and Envoy's client
# certificate (naming its node id), all in the xds-pki volume, which only this service mounts.
# Each side then gets just what it needs, owned by the user it runs as, keys mode 0600:
#
#   /out/loader  (volume loader-xds, the loader's /xds)        server.crt server.key ca.crt
#   /out/envoy   (volume envoy-xds, Envoy's /etc/envoy/xds)    envoy-<node id>.crt/.key ca.crt
#
#   LOADER_UID     the loader image's user (10001)
#   ENVOY_UID      the official Envoy image's `envoy` user (101); ENVOY_GID likewise
#   ENVOY_NODE_ID  node id in compose/envoy-bootstrap.yaml (backendtls-envoy)
set -eu

PKI=/pki
LOADER_OUT=/out/loader
ENVOY_OUT=/out/envoy
LOADER_UID="${LOADER_UID:-10001}"
ENVOY_UID="${ENVOY_UID:-101}"
ENVOY_GID="${ENVOY_GID:-$ENVOY_UID}"
NODE_ID="${ENVOY_NODE_ID:-backendtls-envoy}"

backendtls-loader certs --out-dir "$PKI" --server-name backendtls-loader --envoy-id "$NODE_ID"

# Copies SOURCE to DIR/NAME owned by OWNER with MODE, atomically (the loader re-reads its files
# when they change, and must never see half of one).
place() {
    source="$1" dir="$2" name="$3" owner="$4" mode="$5"
    cp "$source" "$dir/.$name.tmp"
    chown "$owner" "$dir/.$name.tmp"
    chmod "$mode" "$dir/.$name.tmp"
    mv -f "$dir/.$name.tmp" "$dir/$name"
}

mkdir -p "$LOADER_OUT" "$ENVOY_OUT"
# Key before certificate, so a reader that sees the new certificate finds its key.
place "$PKI/server.key" "$LOADER_OUT" server.key "$LOADER_UID:$LOADER_UID" 600
place "$PKI/server.crt" "$LOADER_OUT" server.crt "$LOADER_UID:$LOADER_UID" 644
place "$PKI/ca.crt" "$LOADER_OUT" ca.crt "$LOADER_UID:$LOADER_UID" 644
place "$PKI/envoy-$NODE_ID.key" "$ENVOY_OUT" "envoy-$NODE_ID.key" "$ENVOY_UID:$ENVOY_GID" 600
place "$PKI/envoy-$NODE_ID.crt" "$ENVOY_OUT" "envoy-$NODE_ID.crt" "$ENVOY_UID:$ENVOY_GID" 644
place "$PKI/ca.crt" "$ENVOY_OUT" ca.crt "$ENVOY_UID:$ENVOY_GID" 644
echo "backendtls xds-certs: certificates for the loader and Envoy $NODE_ID are in place" >&2
