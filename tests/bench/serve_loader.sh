# Sourced by the bench scripts: `serve_loader LOADER DIR LOG` starts `LOADER serve` on DIR with
# debug logs in LOG, on free loopback ports, and returns once /readyz answers. Sets `pid` (the
# loader's) and `admin` (its admin port); the caller kills `pid` on exit.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
serve_loader() {
    local loader=$1 dir=$2 log=$3
    admin=$(port)
    RUST_LOG=backendtls_loader=debug "$loader" serve --config-dir "$dir" \
        --xds-address "127.0.0.1:$(port)" --admin-address "127.0.0.1:$admin" >"$log" 2>&1 &
    pid=$!
    until curl -sf "127.0.0.1:$admin/readyz" >/dev/null; do
        kill -0 $pid || { cat "$log"; exit 1; }
        sleep 0.05
    done
}
