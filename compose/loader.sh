#!/bin/sh
# Entrypoint of the compose file's loader: turns BACKENDTLS_FILTER into `serve` flags and hands the
# filter to Envoy.
#
# The loader image carries both builds of the filter in /usr/local/lib/backendtls. This copies them
# into the `filters` volume, which Envoy mounts at the same path (/filters), so the path the loader
# writes into Envoy's configuration is the file Envoy loads, and a rebuilt image always brings its
# own filter. The loader checks the file exists before it starts serving.
#
#   BACKENDTLS_FILTER           wasm (default) | dynamic-module | none
#   BACKENDTLS_LISTEN_ADDRESS   address Envoy binds the Gateway listeners to (default 0.0.0.0)
#   BACKENDTLS_XDS_ADDRESS      where the loader serves ADS (default 0.0.0.0:18000), mutual TLS only
#   BACKENDTLS_XDS_CERTS        its certificates, as `backendtls-loader certs` names them (default
#                               /xds: server.crt, server.key, ca.crt; the xds-certs service writes them)
#   BACKENDTLS_ADMIN_ADDRESS    the loader's /healthz, /readyz, /status, /metrics (default 0.0.0.0:18001)
# Any arguments are appended to `backendtls-loader serve` (e.g. --filter-header x-backendtls-policy).
set -eu

SHIPPED=/usr/local/lib/backendtls
FILTERS=/filters
filter="${BACKENDTLS_FILTER:-wasm}"

install_filter() {
    if [ ! -f "$SHIPPED/$1" ]; then
        echo "backendtls-loader: BACKENDTLS_FILTER=$filter but this image has no $SHIPPED/$1" >&2
        exit 2
    fi
    cp "$SHIPPED/$1" "$FILTERS/.$1.tmp"
    chmod 644 "$FILTERS/.$1.tmp"
    mv -f "$FILTERS/.$1.tmp" "$FILTERS/$1"
}

case "$filter" in
    wasm)
        install_filter backendtls_filter.wasm
        set -- --filter wasm --filter-path "$FILTERS/backendtls_filter.wasm" "$@" ;;
    dynamic-module)
        install_filter libbackendtls_filter.so
        set -- --filter dynamic-module --filter-path "$FILTERS/libbackendtls_filter.so" "$@" ;;
    none)
        ;;
    *)
        echo "backendtls-loader: BACKENDTLS_FILTER must be wasm, dynamic-module or none (got '$filter')" >&2
        exit 2 ;;
esac

exec backendtls-loader serve \
    --config-dir /config \
    --listener-address "${BACKENDTLS_LISTEN_ADDRESS:-0.0.0.0}" \
    --xds-address "${BACKENDTLS_XDS_ADDRESS:-0.0.0.0:18000}" \
    --xds-certs "${BACKENDTLS_XDS_CERTS:-/xds}" \
    --admin-address "${BACKENDTLS_ADMIN_ADDRESS:-0.0.0.0:18001}" \
    "$@"
