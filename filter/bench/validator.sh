#!/usr/bin/env bash
# Benchmark of the backendtls certificate validator: the rate of NEW upstream TLS connections
# through Envoy with its default validator vs the dynamic-module validator (rustls-webpki).
#
# wrk -> Envoy -> NGINX over TLS with keep-alive off on both sides: wrk sends `Connection: close`,
# and the cluster allows one request per upstream connection, so every request is a new upstream
# TLS handshake that the validator checks. Two session modes: `resumed` (Envoy's default: TLS
# session resumption; Envoy re-verifies resumed sessions through the validator too) and `full`
# (`max_session_keys: 0`, every handshake a full one). Four Envoys side by side, identical but for
# the validator and the session mode, measured in interleaved rounds so machine noise hits all
# alike (per mode, default and ours run back to back and their ratio is taken per round). Both variants carry the backendtls HTTP filter, so only the validator differs. Prints a
# markdown table of medians and the ratio of ours to Envoy's default (target >= 0.95).
#
#   filter/bench/validator.sh                       # 10 rounds of 5 s per variant
#   ROUNDS=4 DURATION=3 filter/bench/validator.sh   # quicker
#
# Environment: ENVOY_BIN (default .venv/bin/envoy), ROUNDS, DURATION (s), CONNECTIONS, THREADS
# (wrk), CONCURRENCY (Envoy workers), PORT_BASE (9 consecutive loopback ports), BASE_ID_BASE,
# BUILD=0 to skip `cargo build`, SO to measure another build. Needs nginx, wrk, openssl, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ENVOY_BIN=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
CONCURRENCY=${CONCURRENCY:-2}
# Below the ephemeral range (32768+), where a run's own client ports would linger in TIME_WAIT.
PORT_BASE=${PORT_BASE:-27500}
BASE_ID_BASE=${BASE_ID_BASE:-3860}
SO=${SO:-${CARGO_TARGET_DIR:-$ROOT/target}/release/libbackendtls_filter.so}

for tool in nginx wrk openssl python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench-validator: $tool not found" >&2; exit 1; }
done
[ -x "$ENVOY_BIN" ] || { echo "bench-validator: no Envoy at $ENVOY_BIN (make setup)" >&2; exit 1; }
if [ "${BUILD:-1}" != 0 ]; then
  (cd "$ROOT" && cargo build --quiet --release -p backendtls-filter)
fi
case "$(basename "$SO")" in
  libbackendtls_filter.so) ;;
  *) echo "bench-validator: Envoy loads the validator as libbackendtls_filter.so; SO=$SO" >&2; exit 1 ;;
esac

for port in $(seq "$PORT_BASE" $((PORT_BASE + 8))); do
  # SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not make a port busy.
  python3 -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()" "$port" \
    2>/dev/null || { echo "bench-validator: port $port is busy; set PORT_BASE" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/backendtls-bench-validator.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

NGINX_PORT=$PORT_BASE
VARIANTS=(envoy-resumed backendtls-resumed envoy-full backendtls-full)
declare -A LISTEN ADMIN ENVOY_PID
i=0
for variant in "${VARIANTS[@]}"; do
  LISTEN[$variant]=$((PORT_BASE + 1 + i))
  ADMIN[$variant]=$((PORT_BASE + 5 + i))
  i=$((i + 1))
done

# --- certificates: a CA and a leaf for example.com (P-256, as most backends) ----------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=backendtls bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=example.com" \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:example.com\nextendedKeyUsage=serverAuth\n' >"$WORK/san.cnf"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/san.cnf" -out "$WORK/server.crt" 2>/dev/null

# --- NGINX: TLS 1.2/1.3 on loopback (session tickets on, its default) ------------------------
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
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

# --- Envoy: the same config four times, differing in the validator and session resumption ---
VALIDATOR_JSON=$(python3 -c '
import json, sys
print(json.dumps(json.dumps({"policy": "bench/validator", "hostname": "example.com",
    "identities": ["dns:example.com"], "trust_anchors_pem": open(sys.argv[1]).read()})))' "$WORK/ca.crt")

validation_context() {
  case "$1" in
    envoy-*) cat <<EOF
            trusted_ca: { filename: $WORK/ca.crt }
            match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: example.com } }]
EOF
    ;;
    backendtls-*) cat <<EOF
            custom_validator_config:
              name: envoy.tls.cert_validator.dynamic_modules
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.cert_validator.dynamic_modules.v3.DynamicModuleCertValidatorConfig
                dynamic_module_config: { name: backendtls_filter }
                validator_name: backendtls
                validator_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: $VALIDATOR_JSON }
EOF
    ;;
  esac
}

i=0
for variant in "${VARIANTS[@]}"; do
  case "$variant" in
    *-full) session_keys="max_session_keys: 0" ;;
    *) session_keys="" ;;
  esac
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
          - name: backendtls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: backendtls_filter, module: { local: { filename: $SO } }, metrics_namespace: backendtls }
              filter_name: backendtls
              filter_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: '{"request_header": null}' }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: kube_default_nginx_8443
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: { max_requests_per_connection: 1 }
        explicit_http_config: { http_protocol_options: {} }
    load_assignment:
      cluster_name: kube_default_nginx_8443
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $NGINX_PORT } } } }] }]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: example.com
        $session_keys
        common_tls_context:
          tls_params: { tls_maximum_protocol_version: TLSv1_3 }
          validation_context:
$(validation_context "$variant")
EOF
  # The validator is loaded by name from ENVOY_DYNAMIC_MODULES_SEARCH_PATH. Envoy exits when
  # its parent does; this script stays alive until the end.
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(dirname "$SO") "$ENVOY_BIN" -c "$WORK/envoy-$variant.yaml" \
    --base-id $((BASE_ID_BASE + i)) --concurrency "$CONCURRENCY" --log-level warn \
    >"$WORK/envoy-$variant.log" 2>&1 &
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
    echo "bench-validator: $variant does not answer 200 (got $code)" >&2
    tail -20 "$WORK/envoy-$variant.log" >&2
    exit 1
  fi
done

stat() { curl -s "http://127.0.0.1:${ADMIN[$1]}/stats?filter=$2" | awk -F': ' -v n="$2" '$1 == n {print $2}'; }

# --- interleaved rounds ---------------------------------------------------------------------
# Each round runs, per session mode, Envoy's default and ours back to back (which one first
# alternates), so each pair shares the machine's state; the table reports the median of the
# per-round ratios beside the medians of the rates.
RESULTS=$WORK/results.tsv
: >"$RESULTS"
run_one() {
  local round=$1 variant=$2
  local stat_file=/proc/${ENVOY_PID[$variant]}/stat
  local handshakes_before ticks_before out ticks handshakes requests cpu_us rps non2xx errors
  handshakes_before=$(stat "$variant" cluster.kube_default_nginx_8443.ssl.handshake)
  ticks_before=$(awk '{print $14 + $15}' "$stat_file")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -H 'host: example.com' \
    -H 'connection: close' "http://127.0.0.1:${LISTEN[$variant]}/")
  ticks=$(($(awk '{print $14 + $15}' "$stat_file") - ticks_before))
  handshakes=$(($(stat "$variant" cluster.kube_default_nginx_8443.ssl.handshake) - handshakes_before))
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu_us=$(python3 -c "print($ticks * 1e6 / $(getconf CLK_TCK) / max($requests, 1))")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  errors=$(awk '/Socket errors/ {print $4 + $6 + $8 + $10}' <<<"$out" | tr -d ,)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$variant" "$rps" "$cpu_us" "$requests" \
    "$handshakes" "${non2xx:-0}" "${errors:-0}" >>"$RESULTS"
  printf 'round %s %s: %s req/s, %s upstream handshakes for %s requests, Envoy CPU %.1f us/req\n' \
    "$round" "$variant" "$rps" "$handshakes" "$requests" "$cpu_us" >&2
}
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then modes=(resumed full); else modes=(full resumed); fi
  for mode in "${modes[@]}"; do
    if [ $(((round + 1) / 2 % 2)) = 1 ]; then pair=(envoy backendtls); else pair=(backendtls envoy); fi
    for who in "${pair[@]}"; do run_one "$round" "$who-$mode"; done
  done
done

# The module variant's counters must have seen every handshake Envoy counted.
for variant in backendtls-resumed backendtls-full; do
  verified=$(stat "$variant" backendtls.handshakes_verified.policy.bench/validator)
  total=$(stat "$variant" cluster.kube_default_nginx_8443.ssl.handshake)
  reused=$(stat "$variant" cluster.kube_default_nginx_8443.ssl.session_reused)
  echo "$variant: backendtls.handshakes_verified $verified, Envoy ssl.handshake $total (session_reused $reused)" >&2
  [ "$verified" = "$total" ] || { echo "bench-validator: counters disagree" >&2; exit 1; }
done

python3 - "$RESULTS" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$THREADS" "$CONCURRENCY" <<'EOF'
import statistics, sys
path, rounds, duration, conns, threads, conc = sys.argv[1:]
runs, problems = {}, 0
for line in open(path):
    rnd, variant, rps, cpu, requests, handshakes, non2xx, errors = line.rstrip("\n").split("\t")
    runs[(int(rnd), variant)] = (float(rps), float(cpu), int(requests), int(handshakes))
    problems += int(non2xx) + int(errors)
med = lambda xs: statistics.median(list(xs))
print(f"wrk -t{threads} -c{conns} -d{duration}s with `Connection: close`, one request per upstream "
      f"connection, Envoy --concurrency {conc}, {rounds} rounds (default and ours back to back), "
      "medians; ratios are medians of the per-round ratios")
print()
print("| sessions | validator | new connections/s | ours / default | Envoy CPU us/conn "
      "| default CPU / ours | upstream handshakes per request |")
print("|---|---|---:|---:|---:|---:|---:|")
for mode in ("resumed", "full"):
    base, ours = f"envoy-{mode}", f"backendtls-{mode}"
    paired = sorted({r for (r, v) in runs if v == base} & {r for (r, v) in runs if v == ours})
    rate_ratio = med(runs[(r, ours)][0] / runs[(r, base)][0] for r in paired)
    cpu_ratio = med(runs[(r, base)][1] / runs[(r, ours)][1] for r in paired)
    for variant, label in ((base, "Envoy default"), (ours, "backendtls (webpki)")):
        rs = [v for (r, name), v in runs.items() if name == variant]
        hs = sum(x[3] for x in rs) / max(sum(x[2] for x in rs), 1)
        mine = variant == ours
        print(f"| {mode} | {label} | {med(x[0] for x in rs):.0f} "
              f"| {rate_ratio if mine else 1.0:.3f} | {med(x[1] for x in rs):.1f} "
              f"| {cpu_ratio if mine else 1.0:.3f} | {hs:.2f} |")
if problems:
    print(f"\nWARNING: {problems} non-2xx responses or socket errors during the runs")
EOF
