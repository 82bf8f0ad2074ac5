#!/usr/bin/env bash
# Benchmark of the backendtls filter: wrk -> Envoy -> NGINX over TLS (keep-alive on both sides),
# three Envoys side by side (no filter, Wasm build, dynamic-module build), measured in interleaved
# rounds so that machine noise hits all three alike. Prints a markdown table of medians and the
# ratios to "no filter".
#
#   filter/bench/run.sh                       # 5 rounds of 10 s per variant
#   ROUNDS=3 DURATION=5 filter/bench/run.sh   # quicker
#
# Environment: ENVOY_BIN (default .venv/bin/envoy), ROUNDS, DURATION (s), CONNECTIONS, THREADS
# (wrk), CONCURRENCY (Envoy workers), PORT_BASE (7 consecutive loopback ports), BASE_ID_BASE,
# BUILD=0 to skip `cargo build`, SO / WASM to measure other builds of the two filters (e.g. an empty
# proxy-wasm filter, to see the runtime's own cost). Needs nginx, wrk, openssl and python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ENVOY_BIN=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
CONCURRENCY=${CONCURRENCY:-2}
PORT_BASE=${PORT_BASE:-47400}
BASE_ID_BASE=${BASE_ID_BASE:-3840}
SO=${SO:-${CARGO_TARGET_DIR:-$ROOT/target}/release/libbackendtls_filter.so}
WASM=${WASM:-${CARGO_TARGET_DIR:-$ROOT/target}/wasm32-wasip1/release/backendtls_filter.wasm}

for tool in nginx wrk openssl python3; do
  command -v "$tool" >/dev/null || { echo "bench-filter: $tool not found" >&2; exit 1; }
done
[ -x "$ENVOY_BIN" ] || { echo "bench-filter: no Envoy at $ENVOY_BIN (make setup)" >&2; exit 1; }
if [ "${BUILD:-1}" != 0 ]; then
  (cd "$ROOT" && cargo build --quiet --release -p backendtls-filter \
    && cargo build --quiet --release -p backendtls-filter --target wasm32-wasip1)
fi

for port in $(seq "$PORT_BASE" $((PORT_BASE + 6))); do
  python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" \
    2>/dev/null || { echo "bench-filter: port $port is busy; set PORT_BASE" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/backendtls-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

NGINX_PORT=$PORT_BASE
declare -A ENVOY_PID
declare -A LISTEN=([none]=$((PORT_BASE + 1)) [wasm]=$((PORT_BASE + 2)) [dynamic-module]=$((PORT_BASE + 3)))
declare -A ADMIN=([none]=$((PORT_BASE + 4)) [wasm]=$((PORT_BASE + 5)) [dynamic-module]=$((PORT_BASE + 6)))
VARIANTS=(none wasm dynamic-module)

# --- certificates: a CA and a leaf for example.com ----------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=backendtls bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=example.com" \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:example.com\n' >"$WORK/san.cnf"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/san.cnf" -out "$WORK/server.crt" 2>/dev/null

# --- NGINX: TLS 1.2/1.3 on loopback, keep-alive --------------------------------------------
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_certificate $WORK/server.crt;
    ssl_certificate_key $WORK/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { return 200 "hello from nginx\n"; }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)

# --- Envoy: the same config three times, differing only in the HTTP filter -----------------
filter_block() {
  case "$1" in
    none) ;;
    wasm) cat <<EOF
          - name: backendtls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: backendtls
                root_id: backendtls
                configuration: { "@type": type.googleapis.com/google.protobuf.StringValue, value: '{"request_header": null}' }
                vm_config:
                  vm_id: backendtls
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: $WASM } }
EOF
    ;;
    dynamic-module) cat <<EOF
          - name: backendtls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: backendtls_filter, module: { local: { filename: $SO } }, metrics_namespace: backendtls }
              filter_name: backendtls
              filter_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: '{"request_header": null}' }
EOF
    ;;
  esac
}

i=0
for variant in "${VARIANTS[@]}"; do
  cat >"$WORK/envoy-$variant.yaml" <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: ${ADMIN[$variant]} } } }
static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: ${LISTEN[$variant]} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            virtual_hosts:
            - name: example
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: kube_default_nginx_8443 } }]
          http_filters:
$(filter_block "$variant")
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: kube_default_nginx_8443
    type: STATIC
    load_assignment:
      cluster_name: kube_default_nginx_8443
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $NGINX_PORT } } } }] }]
    metadata:
      filter_metadata:
        backendtls: { policy: default/nginx-tls-policy, hostname: example.com, subject_alt_names: [], identities: [], state: valid }
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: example.com
        common_tls_context:
          tls_params: { tls_maximum_protocol_version: TLSv1_3 }
          validation_context:
            trusted_ca: { filename: $WORK/ca.crt }
            match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: example.com } }]
EOF
  # Envoy exits when its parent does; this script stays alive until the end.
  "$ENVOY_BIN" -c "$WORK/envoy-$variant.yaml" --base-id $((BASE_ID_BASE + i)) \
    --concurrency "$CONCURRENCY" --log-level warn >"$WORK/envoy-$variant.log" 2>&1 &
  PIDS+=($!)
  ENVOY_PID[$variant]=$!
  i=$((i + 1))
done

for variant in "${VARIANTS[@]}"; do
  for _ in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'host: example.com' \
      "http://127.0.0.1:${LISTEN[$variant]}/" || true)
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  if [ "$code" != 200 ]; then
    echo "bench-filter: $variant does not answer 200 (got $code)" >&2
    tail -20 "$WORK/envoy-$variant.log" >&2
    exit 1
  fi
done

# --- interleaved rounds ---------------------------------------------------------------------
RESULTS=$WORK/results.tsv
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
  # Rotate the order each round so that no variant always runs first (or last).
  order=("${VARIANTS[@]:$(((round - 1) % 3))}" "${VARIANTS[@]:0:$(((round - 1) % 3))}")
  for variant in "${order[@]}"; do
    # Envoy's own CPU time per request (utime + stime, in clock ticks): steadier than req/s on a
    # shared machine, since other load shifts throughput more than the work per request.
    stat=/proc/${ENVOY_PID[$variant]}/stat
    ticks_before=$(awk '{print $14 + $15}' "$stat")
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H 'host: example.com' \
      "http://127.0.0.1:${LISTEN[$variant]}/")
    ticks=$(($(awk '{print $14 + $15}' "$stat") - ticks_before))
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu_us=$(python3 -c "print($ticks * 1e6 / $(getconf CLK_TCK) / $requests)")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$variant" "$rps" "$p50" "$p99" "$cpu_us" \
      "${non2xx:-0}" >>"$RESULTS"
    printf 'round %s %s: %s req/s, p50 %s, p99 %s, Envoy CPU %.1f us/req\n' \
      "$round" "$variant" "$rps" "$p50" "$p99" "$cpu_us" >&2
  done
done

python3 - "$RESULTS" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$THREADS" "$CONCURRENCY" <<'EOF'
import statistics, sys
path, rounds, duration, conns, threads, conc = sys.argv[1:]
def ms(text):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * f
    return float(text)
rows = {}
errors = 0
for line in open(path):
    _, variant, rps, p50, p99, cpu, non2xx = line.split("\t")
    rows.setdefault(variant, []).append((float(rps), ms(p50), ms(p99), float(cpu)))
    errors += int(non2xx)
med = {v: [statistics.median(x[i] for x in r) for i in range(4)] for v, r in rows.items()}
base = med["none"]
print(f"wrk -t{threads} -c{conns} -d{duration}s, keep-alive, Envoy --concurrency {conc}, "
      f"{rounds} interleaved rounds, medians")
print()
print("| variant | req/s | ratio | p50 ms | p50 ratio | p99 ms | p99 ratio "
      "| Envoy CPU us/req | no-filter CPU / this |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for v in ("none", "wasm", "dynamic-module"):
    rps, p50, p99, cpu = med[v]
    print(f"| {v} | {rps:.0f} | {rps / base[0]:.3f} | {p50:.3f} | {p50 / base[1]:.2f} "
          f"| {p99:.3f} | {p99 / base[2]:.2f} | {cpu:.1f} | {base[3] / cpu:.3f} |")
if errors:
    print(f"\nWARNING: {errors} non-2xx responses during the runs")
EOF
