//! `make bench-filter`: what the backendtls filter costs, on the test harness (real Envoy 1.40,
//! NGINX and wrk on loopback). Replaces `filter/bench/run.sh` and `filter/bench/validator.sh`.
//!
//! - `throughput`: wrk -> Envoy -> NGINX over TLS, keep-alive on both sides; five Envoys side by
//!   side, identical but for the HTTP filter (none; an empty Wasm filter and the Wasm build; an
//!   empty dynamic module and the dynamic module), measured in interleaved rounds (the order
//!   rotates) so machine noise hits all alike. "Empty" is the filter crate built with feature
//!   `bench-empty`: the same hooks, loaded the same way, doing nothing per request. Medians of
//!   req/s, p50, p99 and Envoy's CPU time per request, each with its ratio to "none", and the
//!   CPU per request against "none" and against the empty build of the same ABI (medians of the
//!   per-round ratios). `BENCH_VARIANTS=none,dynamic-module-empty,dynamic-module` runs a subset.
//! - `validator`: the rate of new upstream TLS connections (wrk sends `Connection: close`, the
//!   cluster allows one request per upstream connection) with Envoy's default validator vs the
//!   module's, with TLS session resumption (`resumed`, Envoy's default) and without (`full`,
//!   `max_session_keys: 0`); all four Envoys carry the HTTP filter. Per round and mode the two
//!   run back to back; the table shows medians of the per-round ratios (ours / default), and
//!   checks that the module counted every handshake Envoy counted.
//!
//! Usage: `backendtls-bench-filter [throughput] [validator]` (both when none is named).
//! Environment: ROUNDS, DURATION (s), CONNECTIONS, THREADS (wrk), CONCURRENCY (Envoy workers);
//! BACKENDTLS_FILTER_SO and BACKENDTLS_FILTER_WASM name the builds (default: the release builds
//! under the Cargo target directory), BACKENDTLS_FILTER_SO_EMPTY and BACKENDTLS_FILTER_WASM_EMPTY
//! the empty ones (default: the `bench-empty` profile's, which `make bench-filter` builds).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use backendtls_e2e::envoy::config::{self, StaticBootstrap};
use backendtls_e2e::nginx::{Backend, TlsServer};
use backendtls_e2e::validator_support::{
    static_config, use_module_search_path, ClusterSpec, Validator,
};
use backendtls_e2e::{free_port, try_http_get, wait_until, Envoy, TestCa};
use serde_json::json;

const HOST: &str = "example.com";
const POLICY: &str = "default/nginx-tls-policy";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Copy)]
struct Settings {
    rounds: usize,
    duration: u64,
    connections: u32,
    threads: u32,
    concurrency: u32,
}

impl Settings {
    /// The load and the proxy: `wrk -t2 -c32 -d10s, Envoy --concurrency 2`.
    fn describe(&self) -> String {
        format!(
            "wrk -t{} -c{} -d{}s, Envoy --concurrency {}",
            self.threads, self.connections, self.duration, self.concurrency
        )
    }
}

fn main() {
    let modes: Vec<String> = std::env::args().skip(1).collect();
    let wants = |mode: &str| modes.is_empty() || modes.iter().any(|m| m == mode);
    for tool in ["wrk", "/usr/sbin/nginx"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        assert!(found.is_ok_and(|o| o.status.success()), "bench-filter: {tool} not found");
    }
    if wants("throughput") {
        throughput(&Settings {
            rounds: env_or("ROUNDS", 5),
            duration: env_or("DURATION", 10),
            connections: env_or("CONNECTIONS", 32),
            threads: env_or("THREADS", 2),
            concurrency: env_or("CONCURRENCY", 2),
        });
    }
    if wants("validator") {
        validator(&Settings {
            rounds: env_or("ROUNDS", 10),
            duration: env_or("DURATION", 5),
            connections: env_or("CONNECTIONS", 16),
            threads: env_or("THREADS", 1),
            concurrency: env_or("CONCURRENCY", 2),
        });
    }
}

fn artifact(env: &str, relative: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| backendtls_e2e::paths::workspace_root().join("target"));
    let path = target.join(relative);
    assert!(path.exists(), "{} is missing: run `make filter` (or set {env})", path.display());
    path
}

/// One wrk run against one Envoy.
#[derive(Clone, Copy, Debug)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Envoy's CPU time (user + system) per request.
    cpu_us: f64,
    requests: u64,
    non2xx: u64,
}

fn cpu_ticks(envoy: &Envoy) -> u64 {
    let pid = envoy.pid().expect("Envoy is running");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which may hold spaces): utime is the 14th field, stime 15th.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn wrk(settings: &Settings, envoy: &Envoy, url: &str, headers: &[&str]) -> Run {
    let before = cpu_ticks(envoy);
    let mut command = Command::new("wrk");
    command.args([
        format!("-t{}", settings.threads),
        format!("-c{}", settings.connections),
        format!("-d{}s", settings.duration),
        "--latency".into(),
    ]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().expect("run wrk");
    let ticks = cpu_ticks(envoy) - before;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "wrk failed:\n{text}");
    let line = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk output:\n{text}"))
            .to_string()
    };
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    let word = |l: String, i: usize| l.split_whitespace().nth(i).unwrap_or("").to_string();
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split_whitespace().last().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let clock_ticks = 100.0; // USER_HZ on Linux
    Run {
        rps: word(line("Requests/sec"), 1).parse().expect("req/s"),
        p50_ms: millis(&word(line("50%"), 1)),
        p99_ms: millis(&word(line("99%"), 1)),
        cpu_us: ticks as f64 * 1e6 / clock_ticks / requests.max(1) as f64,
        requests,
        non2xx,
    }
}

fn millis(text: &str) -> f64 {
    for (unit, factor) in [("us", 1e-3), ("ms", 1.0), ("s", 1e3)] {
        if let Some(number) = text.strip_suffix(unit) {
            return number.parse::<f64>().expect("latency") * factor;
        }
    }
    panic!("latency {text:?}")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn wait_for_200(listener: u16, path: &str) {
    wait_until(&format!("Envoy on {listener} to answer 200"), Duration::from_secs(30), || {
        match try_http_get(listener, HOST, path) {
            Ok((200, _)) => Some(()),
            _ => None,
        }
    });
}

// ---------------------------------------------------------------------------------------------

/// The throughput variants: (name, the empty baseline it is compared with).
const VARIANTS: [(&str, Option<&str>); 5] = [
    ("none", None),
    ("wasm-empty", None),
    ("wasm", Some("wasm-empty")),
    ("dynamic-module-empty", None),
    ("dynamic-module", Some("dynamic-module-empty")),
];

fn throughput(settings: &Settings) {
    // BENCH_VARIANTS=none,dynamic-module-empty,dynamic-module runs a subset (in that order).
    let wanted: Vec<String> = std::env::var("BENCH_VARIANTS")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_else(|_| VARIANTS.iter().map(|(name, _)| (*name).to_owned()).collect());
    for name in &wanted {
        assert!(VARIANTS.iter().any(|(n, _)| n == name), "unknown variant {name:?}");
    }
    let filter_config = r#"{"request_header": null}"#;
    let filter = |name: &str| match name {
        "none" => None,
        "wasm" => Some(config::wasm_filter(
            &artifact("BACKENDTLS_FILTER_WASM", "wasm32-wasip1/release/backendtls_filter.wasm"),
            filter_config,
        )),
        "wasm-empty" => Some(config::wasm_filter(
            &artifact(
                "BACKENDTLS_FILTER_WASM_EMPTY",
                "wasm32-wasip1/bench-empty/backendtls_filter.wasm",
            ),
            filter_config,
        )),
        "dynamic-module" => Some(config::dynamic_module_filter(
            "backendtls_filter",
            &artifact("BACKENDTLS_FILTER_SO", "release/libbackendtls_filter.so"),
            filter_config,
        )),
        "dynamic-module-empty" => Some(config::dynamic_module_filter(
            "backendtls_filter",
            &artifact("BACKENDTLS_FILTER_SO_EMPTY", "bench-empty/libbackendtls_filter.so"),
            filter_config,
        )),
        other => unreachable!("variant {other}"),
    };
    let ca = TestCa::new("backendtls bench CA");
    let nginx = Backend::start(&[TlsServer::new(&ca.issue(&[HOST])).for_benchmark()]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).expect("write ca.crt");
    let envoys: Vec<(&str, Envoy, u16)> = VARIANTS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| wanted.iter().any(|w| w == name))
        .map(|name| {
            let (listener, admin) = (free_port(), free_port());
            let mut cluster = config::static_cluster("kube_default_nginx_8443", nginx.port(0));
            cluster["metadata"] = config::backendtls_metadata(POLICY, HOST, "valid", json!({}));
            let validation = config::trusted_ca_file(&ca_path, HOST);
            cluster["transport_socket"] =
                config::upstream_tls(HOST, "TLSv1_3", validation, json!({}));
            let mut bootstrap = StaticBootstrap::new(admin, listener, "")
                .route("/", "kube_default_nginx_8443")
                .cluster(cluster);
            if let Some(filter) = filter(name) {
                bootstrap = bootstrap.http_filter(filter);
            }
            let envoy = Envoy::start_with_workers(&bootstrap.yaml(), admin, settings.concurrency);
            wait_for_200(listener, "/");
            (name, envoy, listener)
        })
        .collect();

    let warm_up = Settings { duration: 1, ..*settings };
    for (_, envoy, listener) in &envoys {
        wrk(&warm_up, envoy, &format!("http://127.0.0.1:{listener}/"), &[]);
    }
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 0..settings.rounds {
        for i in 0..envoys.len() {
            let (name, envoy, listener) = &envoys[(i + round) % envoys.len()];
            let url = format!("http://127.0.0.1:{listener}/");
            let run = wrk(settings, envoy, &url, &[&format!("host: {HOST}")]);
            eprintln!(
                "round {} {name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, Envoy CPU {:.2} us/req",
                round + 1,
                run.rps,
                run.p50_ms,
                run.p99_ms,
                run.cpu_us
            );
            runs.entry(name).or_default().push(run);
        }
    }
    // The filters did their work: their request counters cover what wrk completed.
    for (name, envoy, _) in &envoys {
        let prefix = match *name {
            "wasm" => "wasmcustom.",
            "dynamic-module" => "",
            _ => continue,
        };
        let counted = envoy.stat(&format!("{prefix}backendtls.requests.policy.{POLICY}"));
        let completed: u64 = runs[name].iter().map(|r| r.requests).sum();
        eprintln!(
            "{name}: backendtls.requests {counted} (wrk completed {completed} in the rounds)"
        );
        assert!(counted >= completed, "{name} counted fewer requests than wrk completed");
    }
    let med = |name: &str, f: fn(&Run) -> f64| median(runs[name].iter().map(f).collect());
    // CPU per request of `name` against `base`: the median of the per-round ratios, in percent.
    let cpu_vs = |name: &str, base: &str| -> Option<f64> {
        let (these, bases) = (runs.get(name)?, runs.get(base)?);
        let ratios = these.iter().zip(bases).map(|(t, b)| t.cpu_us / b.cpu_us).collect();
        Some((median(ratios) - 1.0) * 100.0)
    };
    let percent = |value: Option<f64>| value.map_or("".to_owned(), |v| format!("{v:+.1}%"));
    let metrics: [fn(&Run) -> f64; 4] = [|r| r.rps, |r| r.p50_ms, |r| r.p99_ms, |r| r.cpu_us];
    let base_name = if runs.contains_key("none") { "none" } else { envoys[0].0 };
    let base: Vec<f64> = metrics.iter().map(|f| med(base_name, *f)).collect();
    println!(
        "{}, keep-alive, {} interleaved rounds, medians; ratios to {base_name}; CPU +% are medians \
         of the per-round ratios\n",
        settings.describe(),
        settings.rounds
    );
    println!(
        "| variant | req/s | ratio | p50 ms | p50 ratio | p99 ms | p99 ratio | Envoy CPU us/req \
         | CPU vs {base_name} | CPU vs empty |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, _, _) in &envoys {
        let m: Vec<f64> = metrics.iter().map(|f| med(name, *f)).collect();
        let empty = VARIANTS.iter().find(|(n, _)| n == name).and_then(|(_, empty)| *empty);
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.2} | {:.3} | {:.2} | {:.2} | {} | {} |",
            m[0],
            m[0] / base[0],
            m[1],
            m[1] / base[1],
            m[2],
            m[2] / base[2],
            m[3],
            percent(cpu_vs(name, base_name)),
            percent(empty.and_then(|empty| cpu_vs(name, empty))),
        );
    }
    let errors: u64 = runs.values().flatten().map(|r| r.non2xx).sum();
    if errors > 0 {
        println!("\nWARNING: {errors} non-2xx responses during the runs");
    }
    println!();
}

// ---------------------------------------------------------------------------------------------

fn validator(settings: &Settings) {
    use_module_search_path();
    let ca = TestCa::new("backendtls bench CA");
    let nginx = Backend::start(&[TlsServer::new(&ca.issue(&[HOST])).for_benchmark()]);
    let spec = |validator: Validator, full: bool| ClusterSpec {
        name: "kube_default_nginx_8443".into(),
        port: nginx.port(0),
        validator,
        policy: "bench/validator".into(),
        hostname: HOST.into(),
        identities: Vec::new(),
        anchors_pem: ca.cert_pem().to_string(),
        max_requests_per_connection: Some(1),
        max_session_keys: full.then_some(0),
    };
    let mut envoys = Vec::new();
    for mode in ["resumed", "full"] {
        for (label, validator) in [("default", Validator::Default), ("ours", Validator::Module)] {
            let (listener, admin) = (free_port(), free_port());
            let config = static_config(listener, admin, true, &[spec(validator, mode == "full")]);
            let envoy = Envoy::start_with_workers(&config, admin, settings.concurrency);
            wait_for_200(listener, "/kube_default_nginx_8443/");
            envoys.push((mode, label, envoy, listener));
        }
    }
    let handshakes = |envoy: &Envoy| envoy.stat("cluster.kube_default_nginx_8443.ssl.handshake");
    // (mode, label) -> runs, with the upstream handshakes per request of each.
    let mut runs: BTreeMap<(&str, &str), Vec<(Run, f64)>> = BTreeMap::new();
    for round in 0..settings.rounds {
        for pair in [0, 2] {
            // Default and ours back to back, alternating which goes first.
            let order = if round % 2 == 0 { [pair, pair + 1] } else { [pair + 1, pair] };
            for i in order {
                let (mode, label, envoy, listener) = &envoys[i];
                let before = handshakes(envoy);
                let url = format!("http://127.0.0.1:{listener}/kube_default_nginx_8443/");
                let run =
                    wrk(settings, envoy, &url, &[&format!("host: {HOST}"), "Connection: close"]);
                let per_request = (handshakes(envoy) - before) as f64 / run.requests.max(1) as f64;
                eprintln!(
                    "round {} {mode} {label}: {:.0} conn/s, {per_request:.2} upstream handshakes \
                     per request, Envoy CPU {:.1} us/conn",
                    round + 1,
                    run.rps,
                    run.cpu_us
                );
                runs.entry((*mode, *label)).or_default().push((run, per_request));
            }
        }
    }
    println!(
        "{} with `Connection: close`, one request per upstream connection, {} rounds (default and \
         ours back to back), medians; ratios are medians of the per-round ratios\n",
        settings.describe(),
        settings.rounds
    );
    println!(
        "| sessions | validator | new connections/s | ours / default | Envoy CPU us/conn \
         | default CPU / ours | upstream handshakes per request |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for mode in ["resumed", "full"] {
        let default = &runs[&(mode, "default")];
        for label in ["default", "ours"] {
            let these = &runs[&(mode, label)];
            let rps = median(these.iter().map(|(r, _)| r.rps).collect());
            let cpu = median(these.iter().map(|(r, _)| r.cpu_us).collect());
            let per_request = median(these.iter().map(|(_, h)| *h).collect());
            let ratio = median(default.iter().zip(these).map(|(d, o)| o.0.rps / d.0.rps).collect());
            let cpu_ratio =
                median(default.iter().zip(these).map(|(d, o)| d.0.cpu_us / o.0.cpu_us).collect());
            let name = if label == "ours" { "backendtls (webpki)" } else { "Envoy default" };
            println!(
                "| {mode} | {name} | {rps:.0} | {ratio:.3} | {cpu:.1} | {cpu_ratio:.3} | \
                 {per_request:.2} |"
            );
        }
    }
    for (mode, label, envoy, _) in &envoys {
        if *label == "ours" {
            let verified = envoy.stat("backendtls.handshakes_verified.policy.bench/validator");
            let total = handshakes(envoy);
            println!(
                "\n{mode}: backendtls.handshakes_verified {verified}, Envoy ssl.handshake {total}{}",
                if verified == total { " (equal)" } else { " (DIFFERENT)" }
            );
        }
    }
    let errors: u64 = runs.values().flatten().map(|(r, _)| r.non2xx).sum();
    if errors > 0 {
        println!("\nWARNING: {errors} non-2xx responses during the runs");
    }
}
