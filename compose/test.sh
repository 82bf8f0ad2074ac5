#!/usr/bin/env bash
# make compose-test: docker-compose.yaml, run for real on this machine.
#
#  1. checks that the compose file's copies agree with their sources (Envoy bootstrap, manifests);
#  2. installs what is missing: Debian's docker.io, nginx-light, and the Compose v2 CLI plugin
#     (Debian bookworm packages only Compose v1, so the plugin comes from Debian trixie's
#     docker-compose package, fetched with apt-get into a private cache and not installed);
#  3. starts a private dockerd (own data root, exec root, pidfile, socket) inside a network
#     namespace of its own that has nothing but loopback;
#  4. builds, from local files only (there is no registry), stand-ins for the images the compose
#     file names (compose/standins/build.sh);
#  5. `docker compose up -d --wait` with docker-compose.yaml plus compose/sandbox.yaml (every service
#     on that namespace's loopback), then the README's verify steps: a 200 through Envoy, the
#     handshake stat and the filter's per-policy counter in Envoy's /stats; that xDS runs over
#     mutual TLS (Envoy's xDS cluster did a TLS handshake; a plaintext connection and a TLS one
#     without a client certificate are refused by the loader's container, one with Envoy's
#     certificate is served); then the same with the other build of the filter, switched as README
#     says (BACKENDTLS_FILTER=dynamic-module);
#  6. always: `docker compose down -v`, stops its dockerd by PID, removes its state.
# Any failure, including an engine that cannot start, fails the run with the reason.
#
# Needs root (installs packages, runs dockerd), `make setup` (Envoy from PyPI) and the filter's
# two builds (target/release/libbackendtls_filter.so, target/wasm32-wasip1/release/
# backendtls_filter.wasm; under $CARGO_TARGET_DIR when set). Builds the loader (release) itself
# when needed.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
started=$SECONDS
passed=0
failed=0

say() { printf '\n== compose-test: %s (%ds)\n' "$*" "$((SECONDS - started))"; }
die() {
    printf '\ncompose-test FAILED: %s\n' "$*" >&2
    failed=$((failed + 1))
    exit 1
}
ok() {
    printf 'ok: %s\n' "$*"
    passed=$((passed + 1))
}

run=
compose=(docker compose --project-directory "$repo" -f docker-compose.yaml -f compose/sandbox.yaml)
dockerd_pid=
unshare_pid=
composed=
# A route this test adds to the mounted manifests for a while (see "live edit" below).
live="$repo/compose/manifests/compose-test-live.yaml"

cleanup() {
    local status=$?
    set +e
    rm -f "$live"
    if [ -n "$composed" ]; then
        if [ "$status" != 0 ]; then
            echo "--- docker compose ps / logs (tail) ---"
            "${compose[@]}" ps -a
            "${compose[@]}" logs --no-color --tail 40
        fi
        say "docker compose down -v"
        timeout 120 "${compose[@]}" down -v --timeout 10
    fi
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        say "stopping dockerd (pid $dockerd_pid)"
        kill -TERM "$dockerd_pid"
        for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$dockerd_pid" 2>/dev/null && kill -KILL "$dockerd_pid"
    fi
    [ -n "$unshare_pid" ] && wait "$unshare_pid" 2>/dev/null
    if [ "$status" != 0 ] && [ -n "$run" ] && [ -f "$run/dockerd.log" ]; then
        echo "--- dockerd log (tail) ---"
        tail -n 20 "$run/dockerd.log"
    fi
    if [ -n "$run" ]; then
        # Whatever the engine left mounted under its data root, then the rest.
        grep -o " $run/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
        rm -rf "$run"
    fi
    [ "$status" = 0 ] || [ "$failed" -gt 0 ] || failed=1
    printf '\ncompose-test took %ds\ncompose-test: %d passed, %d failed\n' \
        "$((SECONDS - started))" "$passed" "$failed"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and runs its own dockerd)"

# --- 1. static checks ---------------------------------------------------------------------------
say "building the loader (release)"
cargo build --release -p backendtls-loader
target_dir="$(cd "${CARGO_TARGET_DIR:-$repo/target}" && pwd)"
loader_bin="$target_dir/release/backendtls-loader"
wasm="$target_dir/wasm32-wasip1/release/backendtls_filter.wasm"
dynmod="$target_dir/release/libbackendtls_filter.so"
for f in "$wasm" "$dynmod"; do
    [ -f "$f" ] || die "the filter build $f is missing: build the filter first (make compose-test does)"
done
envoy_bin="$(ls "$repo"/.venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1)"
[ -x "$envoy_bin" ] || die "no Envoy binary under .venv: run make setup"

say "the compose file's copies agree with their sources"
expected="$("$loader_bin" bootstrap --xds-address 127.0.0.1:18000 --admin-address 0.0.0.0:19000 \
        --xds-certs /etc/envoy/xds |
    sed -e 's/^    type: STATIC$/    type: STRICT_DNS/' \
        -e 's/^                address: "\{0,1\}127\.0\.0\.1"\{0,1\}$/                address: loader/')"
if ! diff -u <(echo "$expected") <(grep -v '^#' compose/envoy-bootstrap.yaml); then
    die "compose/envoy-bootstrap.yaml no longer matches 'backendtls-loader bootstrap' (diff above): regenerate it as its header says"
fi
ok "compose/envoy-bootstrap.yaml = backendtls-loader bootstrap --xds-certs /etc/envoy/xds, but for the xds cluster's STRICT_DNS address 'loader'"
for f in gateway.yaml policy.yaml route.yaml; do
    diff -u "examples/backend-tls/$f" "compose/manifests/$f" ||
        die "compose/manifests/$f differs from examples/backend-tls/$f (diff above): copy it over"
done
ok "compose/manifests/{gateway,policy,route}.yaml = examples/backend-tls"
# The stand-in Envoy runs on this machine's glibc; the official image is Ubuntu (22.04: glibc 2.35),
# and Envoy loads the dynamic module into its own process, so the module must ask for no more.
glibc_max=2.35
needed="$(objdump -T "$dynmod" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
[ "$(printf '%s\n%s\n' "$needed" "$glibc_max" | sort -V | tail -n 1)" = "$glibc_max" ] ||
    die "$dynmod needs glibc $needed, more than the $glibc_max of the official Envoy image's Ubuntu"
ok "the dynamic module asks for glibc $needed at most (the official Envoy image has $glibc_max or later)"

# --- 2. tools -----------------------------------------------------------------------------------
state="$target_dir/compose-test"
mkdir -p "$state"
apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq || die "apt-get update failed"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}
if ! command -v dockerd >/dev/null || ! command -v containerd >/dev/null || ! command -v runc >/dev/null; then
    say "installing Debian's docker.io"
    apt_install docker.io
fi
[ -x /usr/sbin/nginx ] || { say "installing nginx-light"; apt_install nginx-light; }

# The Compose v2 plugin, private to this run: DOCKER_CONFIG/cli-plugins/docker-compose.
export DOCKER_CONFIG="$state/docker-config"
plugin="$DOCKER_CONFIG/cli-plugins/docker-compose"
if ! "$plugin" version >/dev/null 2>&1; then
    say "fetching the Compose v2 plugin (Debian trixie's docker-compose package)"
    apt_dir="$state/apt-trixie"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$DOCKER_CONFIG/cli-plugins"
    echo "deb http://deb.debian.org/debian trixie main" > "$apt_dir/sources.list"
    apt_opts=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir" -o APT::Sandbox::User=root
        -o Debug::NoLocking=1)
    apt-get "${apt_opts[@]}" update -qq || die "apt-get update (trixie, private lists) failed"
    (cd "$apt_dir" && rm -f docker-compose_*.deb && apt-get "${apt_opts[@]}" download docker-compose) ||
        die "apt-get download docker-compose (trixie) failed"
    rm -rf "$apt_dir/x"
    dpkg-deb -x "$apt_dir"/docker-compose_*.deb "$apt_dir/x"
    install -m 755 "$apt_dir/x/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
    rm -rf "$apt_dir/x" "$apt_dir/lists"
fi
docker compose version >/dev/null 2>&1 || die "docker compose (v2 plugin at $plugin) does not run"
echo "$(docker --version); $(docker compose version); $(dockerd --version)"

# --- 3. a private engine ------------------------------------------------------------------------
run="$(mktemp -d /tmp/btls-compose.XXXXXX)"
export DOCKER_HOST="unix://$run/docker.sock"

say "starting a private dockerd in its own network namespace"
unshare --net --fork -- sh -c 'ip link set lo up && exec "$@"' sh \
    dockerd --iptables=false --ip6tables=false --bridge=none \
        --data-root "$run/data" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
        -H "$DOCKER_HOST" >"$run/dockerd.log" 2>&1 &
unshare_pid=$!
for _ in $(seq 1 120); do
    if [ -s "$run/dockerd.pid" ] && docker version >/dev/null 2>&1; then break; fi
    if ! kill -0 "$unshare_pid" 2>/dev/null; then
        die "the Docker engine cannot start: dockerd exited ($(tail -n 3 "$run/dockerd.log" | tr '\n' ' '))"
    fi
    sleep 0.5
done
docker version >/dev/null 2>&1 ||
    die "the Docker engine cannot start: no answer on $DOCKER_HOST within 60s ($(tail -n 3 "$run/dockerd.log" | tr '\n' ' '))"
dockerd_pid="$(cat "$run/dockerd.pid")"
netns=(nsenter --net="/proc/$dockerd_pid/ns/net")
ok "private dockerd $(docker version --format '{{.Server.Version}}') up (pid $dockerd_pid), network namespace: $("${netns[@]}" ip -o link | awk -F': ' '{print $2}' | tr '\n' ' ')"

# --- 4. stand-in images -------------------------------------------------------------------------
say "building stand-in images from local files"
bash compose/standins/build.sh "$envoy_bin" "$loader_bin" "$wasm" "$dynmod"
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}'

# --- 5. up, verify ------------------------------------------------------------------------------
# Inside the engine's namespace: the compose file's published ports, on its loopback.
in_ns() { "${netns[@]}" "$@"; }
stat_value() { awk -v n="$1" -F': ' '$1 == n {print $2}' <<<"$2"; }

verify() {
    local filter="$1" prefix="$2" response stats handshakes requests policy_stat
    say "verify ($filter): curl -i http://localhost:8080/ -H \"host: example.com:8080\""
    for _ in $(seq 1 20); do
        response="$(in_ns curl -si --max-time 5 http://127.0.0.1:8080/ -H "host: example.com:8080" || true)"
        head -n 1 <<<"$response" | grep -q ' 200 ' && break
        sleep 0.5
    done
    echo "$response"
    head -n 1 <<<"$response" | grep -q '^HTTP/1.1 200 ' || die "expected 200 through Envoy ($filter)"
    grep -q 'SNI example.com' <<<"$response" || die "NGINX did not see SNI example.com ($filter)"
    ok "200 through the composed Envoy to NGINX over TLS with SNI example.com ($filter)"

    say "verify ($filter): http://localhost:19000/stats"
    stats="$(in_ns curl -sf --max-time 5 http://127.0.0.1:19000/stats)" || die "Envoy's /stats did not answer"
    grep -E '^cluster\.kube_default_nginx_8443\.ssl\.(handshake|connection_error|fail_verify_error|fail_verify_san):' <<<"$stats"
    handshakes="$(stat_value cluster.kube_default_nginx_8443.ssl.handshake "$stats")"
    [ "${handshakes:-0}" -ge 1 ] || die "cluster.kube_default_nginx_8443.ssl.handshake is '${handshakes:-absent}', expected >= 1"
    ok "cluster.kube_default_nginx_8443.ssl.handshake: $handshakes"
    if [ "$filter" != none ]; then
        policy_stat="${prefix}backendtls.requests.policy.default/nginx-tls-policy"
        grep -F "${prefix}backendtls." <<<"$stats" || true
        requests="$(stat_value "$policy_stat" "$stats")"
        [ "${requests:-0}" -ge 1 ] || die "$policy_stat is '${requests:-absent}', expected >= 1"
        ok "$policy_stat: $requests"
    fi
}

say "docker compose up -d --wait (docker-compose.yaml + compose/sandbox.yaml, BACKENDTLS_FILTER=wasm)"
composed=1
export BACKENDTLS_FILTER=wasm
timeout 300 "${compose[@]}" up -d --wait --no-build ||
    die "docker compose up -d --wait did not bring every service to healthy"
"${compose[@]}" ps
ok "docker compose up -d --wait: nginx, loader and envoy healthy"
verify wasm wasmcustom.

say "xDS is mutual TLS only"
stats="$(in_ns curl -sf --max-time 5 http://127.0.0.1:19000/stats)" || die "Envoy's /stats did not answer"
xds_handshakes="$(stat_value cluster.backendtls_xds.ssl.handshake "$stats")"
[ "${xds_handshakes:-0}" -ge 1 ] || die "Envoy's xDS cluster did no TLS handshake (cluster.backendtls_xds.ssl.handshake: '${xds_handshakes:-absent}')"
ok "Envoy reached the loader over TLS (cluster.backendtls_xds.ssl.handshake: $xds_handshakes)"
# The files the xds-certs service made; it has exited, `docker cp` reads its volume all the same.
certs_container="$("${compose[@]}" ps -a -q xds-certs)"
[ -n "$certs_container" ] || die "no xds-certs container"
for f in ca.crt envoy-backendtls-envoy.crt envoy-backendtls-envoy.key; do
    docker cp "$certs_container:/pki/$f" "$run/xds-$f" >/dev/null || die "docker cp xds-certs:/pki/$f failed"
done
ads_path=/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources
# Prints the HTTP status (000 when refused) of one empty gRPC call to the loader's container.
ads_call() {
    in_ns curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST \
        -H 'content-type: application/grpc' -H 'te: trailers' "$@" || true
}
code="$(ads_call --http2-prior-knowledge "http://127.0.0.1:18000$ads_path")"
[ "$code" = 000 ] || die "a plaintext xDS call to the loader answered HTTP $code; it must be refused"
ok "a plaintext xDS connection to the loader's container is refused"
tls=(--http2 --cacert "$run/xds-ca.crt" --resolve backendtls-loader:18000:127.0.0.1 "https://backendtls-loader:18000$ads_path")
code="$(ads_call "${tls[@]}")"
[ "$code" = 000 ] || die "an xDS call over TLS without a client certificate answered HTTP $code; it must be refused"
ok "an xDS connection over TLS without a client certificate is refused"
code="$(ads_call --cert "$run/xds-envoy-backendtls-envoy.crt" --key "$run/xds-envoy-backendtls-envoy.key" "${tls[@]}")"
[ "$code" = 200 ] || die "an xDS call with Envoy's client certificate answered HTTP $code, expected 200"
ok "with Envoy's client certificate the same call is served (HTTP 200)"
refusals="$("${compose[@]}" logs --no-color loader | grep -c 'xDS TLS handshake failed' || true)"
[ "$refusals" -ge 2 ] || die "the loader logged $refusals refused xDS handshakes, expected 2"
ok "the loader logged both refusals"

say "live edit: a new HTTPRoute file in the mounted compose/manifests/ (host live.example)"
http_code() {
    in_ns curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:8080/ -H "host: $1" || true
}
wait_for_code() {
    local host="$1" want="$2" code=
    for _ in $(seq 1 40); do
        code="$(http_code "$host")"
        [ "$code" = "$want" ] && return 0
        sleep 0.5
    done
    die "host $host: expected $want after the edit, got $code"
}
[ "$(http_code live.example:8080)" = 404 ] || die "live.example answered before its route existed"
cat > "$live" <<'EOF'
# Written, and removed again, by compose/test.sh while it runs.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: compose-test-live
  namespace: default
spec:
  parentRefs:
  - name: http
    namespace: kgateway-system
  hostnames: ["live.example"]
  rules:
  - backendRefs:
    - name: nginx
      port: 8443
EOF
wait_for_code live.example:8080 200
ok "a route added to compose/manifests/ serves within seconds, no restart: live.example -> 200"
rm -f "$live"
wait_for_code live.example:8080 404
ok "and its removal applies too: live.example -> 404"

say "switching to the dynamic module: BACKENDTLS_FILTER=dynamic-module docker compose up -d --wait"
export BACKENDTLS_FILTER=dynamic-module
timeout 300 "${compose[@]}" up -d --wait --no-build ||
    die "docker compose up -d --wait with BACKENDTLS_FILTER=dynamic-module failed"
verify dynamic-module ""

say "all checks passed"
