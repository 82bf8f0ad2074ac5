//! `make bench-loader`: the loader at N = 100, 1,000 and 10,000 backends (see
//! `backendtls_e2e::scale`), against a real Envoy and real TLS backends on loopback.
//!
//! For each N: `check` and `render` wall time and peak RSS; `serve` time from loader start until
//! Envoy has all N clusters warm, and the loader's peak RSS; the median time from rewriting one CA
//! ConfigMap until a new handshake with a certificate from the new CA succeeds through Envoy (20
//! changes), with the xDS bytes each change sent; the same for adding a backend. Then the same
//! convergence with ADS in plaintext and over mutual TLS, alternating, three times each. Results go
//! to `target/bench-loader/results.csv` and between the markers in BENCHMARKS.md (rows for sizes
//! not measured in a run are kept from the previous run).
#![deny(unsafe_code)]

use backendtls_e2e::loader::create_xds_certs;
use backendtls_e2e::scale::{self, ScaleSpec};
use backendtls_e2e::{
    ads_bootstrap, ads_bootstrap_secure, free_port, try_http_get, wait_until, Ads, Envoy, Loader,
    Nginx, TestCa,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHANGES: usize = 20;
/// Convergence runs per ADS transport, alternating plaintext and mTLS.
const TRANSPORT_ROUNDS: usize = 3;
const HOSTNAME: &str = "example.com";

struct Row {
    backends: usize,
    layout: scale::Layout,
    check_s: f64,
    check_rss_mb: f64,
    render_s: f64,
    render_rss_mb: f64,
    converge_s: f64,
    serve_rss_mb: f64,
    ca_change_ms: f64,
    ca_change_bytes: f64,
    add_backend_ms: f64,
    add_backend_bytes: f64,
    /// Medians of [`TRANSPORT_ROUNDS`] fresh loader + Envoy convergences, plaintext and mTLS ADS.
    converge_plaintext_s: f64,
    converge_mtls_s: f64,
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "100,1000,10000".into())
        .split(',')
        .map(|n| n.parse().expect("sizes: comma-separated numbers"))
        .collect();
    let loader_bin = std::env::var("BACKENDTLS_LOADER_BIN")
        .expect("BACKENDTLS_LOADER_BIN must name the release loader (make bench-loader sets it)");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || backendtls_e2e::paths::workspace_root().join("target"),
        std::path::PathBuf::from,
    );
    let out_dir = target.join("bench-loader");
    std::fs::create_dir_all(&out_dir).expect("create target/bench-loader");

    let ca_old = TestCa::new("bench CA one");
    let ca_new = TestCa::new("bench CA two");
    let nginx_old = Nginx::start(&ca_old.issue(&[HOSTNAME]));
    let nginx_new = Nginx::start(&ca_new.issue(&[HOSTNAME]));
    let xds_certs = out_dir.join("xds-certs");
    create_xds_certs(&xds_certs, &["bench"]);
    // BENCH_LAYOUTS: how backends are spread over namespaces (`scale::Layout`; default per100).
    let layouts: Vec<scale::Layout> = std::env::var("BENCH_LAYOUTS")
        .unwrap_or_else(|_| "per100".into())
        .split(',')
        .map(|l| l.parse().unwrap_or_else(|e| panic!("BENCH_LAYOUTS: {e}")))
        .collect();
    // BENCH_TRANSPORT_ROUNDS: plaintext/mTLS convergence rounds (default 3; 0 skips them).
    let rounds: usize = std::env::var("BENCH_TRANSPORT_ROUNDS")
        .map_or(TRANSPORT_ROUNDS, |r| r.parse().expect("BENCH_TRANSPORT_ROUNDS: a number"));
    let mut rows = Vec::new();
    for &layout in &layouts {
        for &n in &sizes {
            eprintln!("== {n} backends, layout {layout}");
            rows.push(bench(
                n,
                layout,
                rounds,
                &loader_bin,
                &out_dir,
                &xds_certs,
                [&ca_old, &ca_new],
                [&nginx_old, &nginx_new],
            ));
        }
    }
    let csv: String = std::iter::once(
        "backends,layout,check_s,check_rss_mb,render_s,render_rss_mb,converge_s,serve_rss_mb,ca_change_ms,ca_change_bytes,add_backend_ms,add_backend_bytes,converge_plaintext_s,converge_mtls_s\n".to_string(),
    )
    .chain(rows.iter().map(|r| {
        format!(
            "{},{},{:.3},{:.1},{:.3},{:.1},{:.2},{:.1},{:.0},{:.0},{:.0},{:.0},{:.2},{:.2}\n",
            r.backends, r.layout, r.check_s, r.check_rss_mb, r.render_s, r.render_rss_mb, r.converge_s,
            r.serve_rss_mb, r.ca_change_ms, r.ca_change_bytes, r.add_backend_ms, r.add_backend_bytes,
            r.converge_plaintext_s, r.converge_mtls_s
        )
    }))
    .collect();
    std::fs::write(out_dir.join("results.csv"), &csv).expect("write results.csv");
    let table = markdown(&rows);
    println!("{table}");
    update_benchmarks_md(LOADER_MARKERS, &table, &rows);
    if rounds > 0 {
        let transport = transport_markdown(&rows);
        println!("{transport}");
        update_benchmarks_md(TRANSPORT_MARKERS, &transport, &rows);
    }
}

#[allow(clippy::too_many_arguments)]
fn bench(
    n: usize,
    layout: scale::Layout,
    rounds: usize,
    loader_bin: &str,
    out_dir: &Path,
    xds_certs: &Path,
    [ca_old, ca_new]: [&TestCa; 2],
    [nginx_old, nginx_new]: [&Nginx; 2],
) -> Row {
    let dir = out_dir.join(format!("n{n}-{layout}"));
    let _ = std::fs::remove_dir_all(&dir);
    let gateway_port = free_port();
    let spec = |port| ScaleSpec {
        backends: n,
        layout,
        file_per_namespace: false,
        gateway_port,
        backend_port: port,
        ca_pem: ca_old.cert_pem(),
        hostname: HOSTNAME,
    };
    scale::write(&dir, &spec(nginx_old.https_port())).expect("write manifests");
    // The last CHANGES backends point at the NGINX whose certificate the new CA signed, while their
    // ConfigMaps still hold the old CA: they fail until their CA is changed.
    for k in 0..CHANGES.min(n) {
        write_backend(&dir, n - 1 - k, &spec(nginx_new.https_port()));
    }

    let (check_s, check_rss_mb) = timed(loader_bin, &["check", "--config-dir"], &dir);
    let (render_s, render_rss_mb) = timed(loader_bin, &["render", "--config-dir"], &dir);

    let (xds_port, envoy_admin) = (free_port(), free_port());
    let bootstrap = ads_bootstrap(xds_port, envoy_admin, "bench", Ads::Delta);
    let load_at_start = load_average();
    let started = Instant::now();
    let started_unix = unix_seconds();
    let loader = start_loader(&dir, xds_port, free_port(), &[], n);
    let loader_ready_s = started.elapsed().as_secs_f64();
    let envoy = start_envoy(&bootstrap, envoy_admin, n);
    let envoy_ready_s = started.elapsed().as_secs_f64();
    let since_acked = wait_for_all_clusters(&loader, &envoy, n);
    let converge_s = started.elapsed().as_secs_f64() - since_acked;
    eprintln!("   converged in {converge_s:.2}s (gauges confirmed {since_acked:.2}s later)");
    let at_convergence = Observed::now(&loader, &envoy, started_unix);
    // Listeners, routes and virtual hosts follow the clusters: the initial sync ends when the
    // Envoy has acknowledged them too.
    wait_until("Envoy to acknowledge its listener and virtual hosts", change_limit(n), || {
        let pushed =
            |t: &str| typed_metric(&loader, "backendtls_loader_xds_last_push_timestamp_seconds", t);
        match (pushed("LDS"), pushed("VHDS"), loader.envoy_is_current("bench")) {
            (Some(l), Some(v), Ok(())) if l > 0.0 && v > 0.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let current_s = started.elapsed().as_secs_f64();
    let after_sync = Observed::now(&loader, &envoy, started_unix);
    let envoy_report = EnvoyRun {
        backends: n,
        layout,
        started_unix,
        load_at_start,
        loader_ready_s,
        envoy_ready_s,
        converge_s,
        current_s,
        at_convergence,
        after_sync,
        log: envoy_milestones(&envoy.log()),
    };
    eprintln!("{}", envoy_report.describe());

    // The loader's part of a change: from the write until it queued the change's clusters (its
    // first push; what follows is Envoy applying them and asking for what they need).
    let loader_part_ms = |since_unix: f64| {
        let pushed =
            typed_metric(&loader, "backendtls_loader_xds_last_push_timestamp_seconds", "CDS");
        (pushed.unwrap_or(f64::NAN) - since_unix) * 1000.0
    };
    let mut ca_times = Vec::new();
    let mut ca_loader = Vec::new();
    let mut ca_bytes = Vec::new();
    for k in 0..CHANGES.min(n) {
        let index = n - 1 - k;
        let host = layout.route_host(index);
        assert_ne!(
            status(gateway_port, &host),
            200,
            "backend {index} should fail before its CA change"
        );
        let bytes_before = settled_bytes(&loader, n);
        let changed = Instant::now();
        let changed_unix = unix_seconds();
        write_backend(
            &dir,
            index,
            &ScaleSpec { ca_pem: ca_new.cert_pem(), ..spec(nginx_new.https_port()) },
        );
        wait_for_200(gateway_port, &host, n);
        ca_times.push(changed.elapsed().as_secs_f64() * 1000.0);
        ca_loader.push(loader_part_ms(changed_unix));
        ca_bytes.push(settled_bytes(&loader, n) - bytes_before);
    }
    let mut add_times = Vec::new();
    let mut add_loader = Vec::new();
    let mut add_bytes = Vec::new();
    for k in 0..CHANGES {
        let index = n + k;
        let bytes_before = settled_bytes(&loader, n);
        let added = Instant::now();
        let added_unix = unix_seconds();
        write_backend(&dir, index, &spec(nginx_old.https_port()));
        wait_for_200(gateway_port, &layout.route_host(index), n);
        add_times.push(added.elapsed().as_secs_f64() * 1000.0);
        add_loader.push(loader_part_ms(added_unix));
        add_bytes.push(settled_bytes(&loader, n) - bytes_before);
    }
    let serve_rss_mb = peak_rss_mb(loader.pid().expect("loader runs"));
    let at_end = Observed::now(&loader, &envoy, started_unix);
    envoy_report.write(
        out_dir,
        &at_end,
        [&ca_times, &add_times],
        [&ca_loader, &add_loader],
        load_average(),
    );
    drop(envoy);
    drop(loader);

    // The same convergence over plaintext and mTLS ADS, alternating so that the machine's load
    // affects both alike.
    let (mut plaintext, mut mtls) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        plaintext.push(converge(n, &dir, None));
        mtls.push(converge(n, &dir, Some(xds_certs)));
        eprintln!("   round {round}: plaintext {:.2}s, mTLS {:.2}s", plaintext[round], mtls[round]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median_or_nan = |v: &mut Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
    Row {
        backends: n,
        layout,
        check_s,
        check_rss_mb,
        render_s,
        render_rss_mb,
        converge_s,
        serve_rss_mb,
        ca_change_ms: median(&mut ca_times),
        ca_change_bytes: median(&mut ca_bytes),
        add_backend_ms: median(&mut add_times),
        add_backend_bytes: median(&mut add_bytes),
        converge_plaintext_s: median_or_nan(&mut plaintext),
        converge_mtls_s: median_or_nan(&mut mtls),
    }
}

/// Seconds from starting a loader on `dir` (ADS over mTLS with `xds_certs`, else plaintext) until
/// a new Envoy has every cluster warm. The bootstrap is made before the clock starts.
fn converge(n: usize, dir: &Path, xds_certs: Option<&Path>) -> f64 {
    let (xds_port, admin_port, envoy_admin) = (free_port(), free_port(), free_port());
    let (args, bootstrap) = match xds_certs {
        None => (Vec::new(), ads_bootstrap(xds_port, envoy_admin, "bench", Ads::Delta)),
        Some(certs) => (
            vec!["--xds-certs", certs.to_str().expect("UTF-8 path")],
            ads_bootstrap_secure(xds_port, envoy_admin, "bench", Ads::Delta, certs),
        ),
    };
    let started = Instant::now();
    let loader = start_loader(dir, xds_port, admin_port, &args, n);
    let envoy = start_envoy(&bootstrap, envoy_admin, n);
    let since_acked = wait_for_all_clusters(&loader, &envoy, n);
    let seconds = started.elapsed().as_secs_f64() - since_acked;
    drop(envoy);
    drop(loader);
    seconds
}

/// Starts the loader, allowing a minute for its first snapshot plus a minute per 10,000 backends
/// past 10,000. The xDS limits are the defaults at every size: they grow with the snapshot
/// (names per stream, request size), and the keepalive timeout outlasts Envoy applying the first
/// CDS response at 100,000 (87 s here, during which it answers no HTTP/2 PING).
fn start_loader(dir: &Path, xds_port: u16, admin_port: u16, args: &[&str], n: usize) -> Loader {
    let past = n.saturating_sub(10_000);
    let limit = Duration::from_secs(60 + past as u64 / 10_000 * 60);
    Loader::start_with_ready_timeout(dir, xds_port, admin_port, args, limit)
}

/// Starts Envoy (its `/ready` waits for the first CDS and LDS answers: 30 s, and a minute per
/// 10,000 backends past 10,000).
fn start_envoy(bootstrap: &str, admin_port: u16, n: usize) -> Envoy {
    let limit = Duration::from_secs(30 + n.saturating_sub(10_000) as u64 / 10_000 * 60);
    Envoy::start_with_ready_timeout(bootstrap, admin_port, 2, limit)
}

/// Waits until Envoy has more than `n` clusters active (the backends and the xDS cluster) and
/// none warming, with the endpoints of every cluster and every resource the loader sent it
/// acknowledged (so that no cluster counts as warm only because its initial fetch timed out).
/// Polls the loader's `/xds` until Envoy has acknowledged everything, then Envoy's
/// `cluster_manager` gauges: Envoy answers `/stats` on its main thread and walks every stat even
/// when filtered (6 s for a quiet Envoy at 100,000 clusters, 21 s for a busy one), which would
/// slow the very convergence being measured if polled throughout. Returns how long ago Envoy had
/// acknowledged everything when the gauges confirmed it (they are read again, after the next
/// acknowledged poll, only when they did not).
fn wait_for_all_clusters(loader: &Loader, envoy: &Envoy, n: usize) -> f64 {
    // Two minutes, and one more per 1,000 clusters past 10,000.
    let limit = Duration::from_secs(120 + n.saturating_sub(10_000) as u64 / 1000 * 60);
    let started = Instant::now();
    let deadline = started + limit;
    let mut observed = None;
    // Envoy acknowledges CDS before it asks for endpoints: wait for those to be sent too.
    let endpoints_sent = || {
        let sent =
            |t| typed_metric(loader, "backendtls_loader_xds_resources_sent_by_type_total", t);
        sent("EDS").is_some_and(|e| e as usize >= n) && sent("SDS").is_some_and(|s| s > 0.0)
    };
    loop {
        if endpoints_sent() && loader.envoy_is_current("bench").is_ok() {
            let acked = Instant::now();
            let gauges = cluster_gauges(envoy.admin_port(), limit);
            if matches!(gauges, Ok((active, 0)) if active as usize > n) {
                return acked.elapsed().as_secs_f64();
            }
            observed = Some(gauges);
        }
        if Instant::now() >= deadline {
            panic!("Envoy did not have every cluster warm within {limit:?}: {observed:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cluster_manager.active_clusters` and `cluster_manager.warming_clusters`.
fn cluster_gauges(admin_port: u16, timeout: Duration) -> Result<(u64, u64), String> {
    let body = slow_get(admin_port, "/stats?filter=cluster_manager", timeout)?;
    let gauge = |name: &str| {
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    };
    match (gauge("cluster_manager.active_clusters"), gauge("cluster_manager.warming_clusters")) {
        (Some(active), Some(warming)) => Ok((active, warming)),
        _ => Err(format!("no cluster_manager gauges in {body:?}")),
    }
}

/// `GET path` on Envoy's admin API, waiting up to `timeout` for the answer (the harness's client
/// gives up after 5 s; a busy Envoy with 100,000 clusters takes longer). The body of a 200.
fn slow_get(port: u16, path: &str, timeout: Duration) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(body.to_string());
    }
    // Chunked: a hex size line, that many bytes and CRLF, until a size of 0.
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).ok_or("short chunk")?);
        rest = after.get(size + 2..).ok_or("short chunk")?;
    }
}

/// One series of a loader metric by resource type (`name{type="CDS"}`).
fn typed_metric(loader: &Loader, name: &str, short: &str) -> Option<f64> {
    let (_, body) = try_http_get(loader.admin_port(), "127.0.0.1", "/metrics").ok()?;
    let prefix = format!("{name}{{type=\"{short}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// What the bench reads of both processes at one moment of a run.
#[derive(Debug)]
struct Observed {
    /// Seconds from starting the loader until its last response of each type was queued
    /// ([`SENT_TYPES`]), None for a type not sent yet.
    last_push_s: Vec<Option<f64>>,
    /// Resources sent so far, per type.
    resources: Vec<u64>,
    /// Seconds the loader spent answering requests of each type (request to response built).
    answering_s: Vec<f64>,
    loader_cpu_s: f64,
    loader_rss_mb: (f64, f64),
    envoy_cpu_s: f64,
    /// VmRSS and VmHWM.
    envoy_rss_mb: (f64, f64),
    /// Envoy's `/memory`: `allocated` and `heap_size` (tcmalloc), in MB.
    envoy_heap_mb: (f64, f64),
}

const SENT_TYPES: [&str; 6] = ["CDS", "EDS", "SDS", "LDS", "RDS", "VHDS"];

impl Observed {
    fn now(loader: &Loader, envoy: &Envoy, started_unix: f64) -> Observed {
        let metrics = try_http_get(loader.admin_port(), "127.0.0.1", "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        let by_type = |name: &str, short: &str| -> Option<f64> {
            let prefix = format!("{name}{{type=\"{short}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        };
        let last_push_s = SENT_TYPES
            .iter()
            .map(|t| {
                by_type("backendtls_loader_xds_last_push_timestamp_seconds", t)
                    .filter(|at| *at > 0.0)
                    .map(|at| at - started_unix)
            })
            .collect();
        let resources = SENT_TYPES
            .iter()
            .map(|t| {
                by_type("backendtls_loader_xds_resources_sent_by_type_total", t).unwrap_or(0.0)
                    as u64
            })
            .collect();
        let (loader_pid, envoy_pid) =
            (loader.pid().expect("loader runs"), envoy.pid().expect("envoy runs"));
        let memory: serde_json::Value =
            slow_get(envoy.admin_port(), "/memory", Duration::from_secs(600))
                .ok()
                .and_then(|body| serde_json::from_str(&body).ok())
                .unwrap_or_default();
        let heap = |field: &str| {
            memory[field].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN)
                / 1048576.0
        };
        let answering_s = SENT_TYPES
            .iter()
            .map(|t| by_type("backendtls_loader_xds_answering_seconds_total", t).unwrap_or(0.0))
            .collect();
        Observed {
            last_push_s,
            resources,
            answering_s,
            loader_cpu_s: cpu_seconds(loader_pid),
            loader_rss_mb: backendtls_e2e::xds_client::memory_mb(loader_pid),
            envoy_cpu_s: cpu_seconds(envoy_pid),
            envoy_rss_mb: backendtls_e2e::xds_client::memory_mb(envoy_pid),
            envoy_heap_mb: (heap("allocated"), heap("heap_size")),
        }
    }

    /// The loader's last push of the initial sync, in seconds from its start.
    fn last_push_s(&self) -> f64 {
        self.last_push_s.iter().flatten().copied().fold(f64::NAN, f64::max)
    }

    fn describe(&self) -> String {
        let pushes: Vec<String> = SENT_TYPES
            .iter()
            .zip(&self.last_push_s)
            .zip(&self.resources)
            .zip(&self.answering_s)
            .map(|(((t, at), count), answering)| match at {
                Some(at) => format!("{t} {count} at {at:.2}s (answering {answering:.3}s)"),
                None => format!("{t} none"),
            })
            .collect();
        format!(
            "loader: last pushes {}; CPU {:.1}s, RSS {:.0} MB (peak {:.0}); \
             Envoy: CPU {:.1}s, RSS {:.0} MB (peak {:.0}), allocated {:.0} MB, heap {:.0} MB",
            pushes.join(", "),
            self.loader_cpu_s,
            self.loader_rss_mb.0,
            self.loader_rss_mb.1,
            self.envoy_cpu_s,
            self.envoy_rss_mb.0,
            self.envoy_rss_mb.1,
            self.envoy_heap_mb.0,
            self.envoy_heap_mb.1,
        )
    }
}

/// One run's initial sync with a real Envoy (the `serve` convergence), in detail.
struct EnvoyRun {
    backends: usize,
    layout: scale::Layout,
    started_unix: f64,
    load_at_start: String,
    loader_ready_s: f64,
    envoy_ready_s: f64,
    converge_s: f64,
    current_s: f64,
    at_convergence: Observed,
    after_sync: Observed,
    /// Envoy's log lines about its xDS progress.
    log: Vec<String>,
}

impl EnvoyRun {
    fn describe(&self) -> String {
        let last = self.after_sync.last_push_s();
        let answering: f64 = self.after_sync.answering_s.iter().sum();
        let own = self.loader_ready_s + answering;
        let clock = self.started_unix % 86400.0;
        format!(
            "   loader started {:02}:{:02}:{:06.3} UTC; loader ready {:.2}s, Envoy /ready {:.2}s, every cluster warm {:.2}s, every type ACKed {:.2}s; \
             loader's last push {:.2}s = {:.1}% of convergence; loader's own time on the path \
             (ready + answering {:.3}s) {:.2}s = {:.1}%\n   at convergence: {}\n   after the sync: {}",
            (clock / 3600.0) as u32,
            (clock % 3600.0 / 60.0) as u32,
            clock % 60.0,
            self.loader_ready_s,
            self.envoy_ready_s,
            self.converge_s,
            self.current_s,
            last,
            100.0 * last / self.converge_s,
            answering,
            own,
            100.0 * own / self.converge_s,
            self.at_convergence.describe(),
            self.after_sync.describe(),
        )
    }

    /// Appends the run to `target/bench-loader/envoy.md` with the end-of-run figures.
    fn write(
        &self,
        out_dir: &Path,
        at_end: &Observed,
        [ca, add]: [&Vec<f64>; 2],
        [ca_loader, add_loader]: [&Vec<f64>; 2],
        load_at_end: String,
    ) {
        let mut ca = ca.clone();
        let mut add = add.clone();
        let mut ca_loader = ca_loader.clone();
        let mut add_loader = add_loader.clone();
        let median_or_nan = |v: &mut Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
        let text = format!(
            "## {} backends, {} ({})\nload at start: {}\nload at end: {}\n{}\n   at the end (after {} CA changes, {} added backends; \
             CA change median {:.0} ms (the loader's part, until it pushed the cluster: {:.0} ms), \
             add backend median {:.0} ms (the loader's part: {:.0} ms): {}\n   Envoy log:\n{}\n\n",
            self.backends,
            self.layout,
            std::process::Command::new("date").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
            self.load_at_start,
            load_at_end,
            self.describe(),
            ca.len(),
            add.len(),
            median_or_nan(&mut ca),
            median_or_nan(&mut ca_loader),
            median_or_nan(&mut add),
            median_or_nan(&mut add_loader),
            at_end.describe(),
            self.log.iter().map(|l| format!("     {l}")).collect::<Vec<_>>().join("\n"),
        );
        eprintln!("{text}");
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out_dir.join("envoy.md"))
            .expect("open envoy.md");
        file.write_all(text.as_bytes()).expect("write envoy.md");
    }
}

/// Envoy's log lines that mark its xDS progress (CDS updates, cluster manager and server init).
fn envoy_milestones(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            [
                "cds: ",
                "cm init",
                "all clusters initialized",
                "starting main dispatch loop",
                "lds: ",
                "all dependencies initialized",
                "initial_fetch_timeout",
                "timeout",
                "gRPC config stream",
            ]
            .iter()
            .any(|m| l.contains(m))
        })
        .take(40)
        .map(str::to_string)
        .collect()
}

/// User plus system CPU seconds of a running process (`/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / clock_ticks()
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// `uptime`'s load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Writes one backend's file atomically (a hidden temporary name, then a rename), as a deployment
/// tool would; the loader skips dotfiles.
fn write_backend(dir: &Path, index: usize, spec: &ScaleSpec<'_>) {
    let ns_dir = dir.join(spec.layout.namespace_of(index));
    std::fs::create_dir_all(&ns_dir).expect("namespace dir");
    let path = ns_dir.join(format!("{}.yaml", scale::backend_name(index)));
    let temp = ns_dir.join(format!(".{}.tmp", scale::backend_name(index)));
    std::fs::write(&temp, scale::backend(index, spec)).expect("write backend");
    std::fs::rename(&temp, &path).expect("rename backend");
}

fn status(port: u16, host: &str) -> u16 {
    try_http_get(port, host, "/").map(|(status, _)| status).unwrap_or(0)
}

/// Polls every 2 ms (the harness's `wait_until` polls every 50 ms, too coarse to time a change).
/// Gives up after 30 s, and 30 s more per 10,000 backends past 10,000 (each change rebuilds
/// everything).
fn wait_for_200(port: u16, host: &str, n: usize) {
    let limit = change_limit(n);
    let deadline = Instant::now() + limit;
    let mut last = 0;
    while Instant::now() < deadline {
        last = status(port, host);
        if last == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{host} did not answer 200 within {limit:?} (last status {last})");
}

/// 30 s, and 30 s more per 10,000 backends past 10,000.
fn change_limit(n: usize) -> Duration {
    Duration::from_secs(30 + n.saturating_sub(10_000) as u64 / 10_000 * 30)
}

/// xDS bytes sent so far, once every connected Envoy has acknowledged the current snapshot.
fn settled_bytes(loader: &Loader, n: usize) -> f64 {
    wait_until("the loader's Envoy to be current", change_limit(n), || {
        loader.envoy_is_current("bench")
    });
    loader.metric("backendtls_loader_xds_bytes_sent_total").expect("bytes metric")
}

/// Runs `loader <args> <dir>` and returns (wall seconds, peak RSS in MB), the median of three.
/// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn timed(loader_bin: &str, args: &[&str], dir: &Path) -> (f64, f64) {
    let mut runs: Vec<(f64, f64)> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let child = Command::new(loader_bin)
                .args(args)
                .arg(dir)
                .args(["-o", "json"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run the loader");
            let rss_kb = wait_for_rss(child.id());
            (started.elapsed().as_secs_f64(), rss_kb / 1024.0)
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[1]
}

/// Waits for a child with wait4 and returns its peak RSS in KB (`ru_maxrss`).
#[allow(unsafe_code)]
fn wait_for_rss(pid: u32) -> f64 {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped; both pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid as libc::pid_t, "wait4 failed");
    usage.ru_maxrss as f64
}

/// VmHWM (peak resident set) of a running process, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    backendtls_e2e::xds_client::memory_mb(pid).1
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| backends | layout | check s | check MB | render s | render MB | serve: Envoy converged s | serve: loader peak MB | CA change ms (median of 20) | CA change xDS bytes | add backend ms (median of 20) | add backend xDS bytes |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            r.backends, r.layout, r.check_s, r.check_rss_mb, r.render_s, r.render_rss_mb, r.converge_s,
            r.serve_rss_mb, r.ca_change_ms, r.ca_change_bytes, r.add_backend_ms, r.add_backend_bytes
        ));
    }
    out
}

/// The time to converge with ADS in plaintext and over mutual TLS, side by side.
fn transport_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| backends | plaintext ADS: Envoy converged s (median of 3) | mTLS ADS: Envoy converged s (median of 3) | mTLS / plaintext |\n|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.3} |\n",
            r.backends,
            r.converge_plaintext_s,
            r.converge_mtls_s,
            r.converge_mtls_s / r.converge_plaintext_s
        ));
    }
    out
}

const LOADER_MARKERS: (&str, &str) = ("<!-- bench-loader:start -->", "<!-- bench-loader:end -->");
const TRANSPORT_MARKERS: (&str, &str) =
    ("<!-- bench-loader-xds-tls:start -->", "<!-- bench-loader-xds-tls:end -->");

/// Replaces the text between `markers` in BENCHMARKS.md with `table`, keeping the previous run's
/// rows for sizes this run did not measure (marked as such).
fn update_benchmarks_md((start_marker, end_marker): (&str, &str), table: &str, rows: &[Row]) {
    let path: PathBuf = backendtls_e2e::paths::workspace_root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (Some(start), Some(end)) = (text.find(start_marker), text.find(end_marker)) else {
        eprintln!("BENCHMARKS.md has no {start_marker} markers; table printed above");
        return;
    };
    // A row is (backends, layout) in the main table, backends alone in the transport table.
    let measured = |line: &str| {
        let mut cells = line.trim_start_matches('|').split('|').map(str::trim);
        let n = cells.next().and_then(|c| c.parse::<usize>().ok());
        let layout = cells.next().and_then(|c| c.parse::<scale::Layout>().ok());
        n.is_some_and(|n| {
            rows.iter().any(|r| r.backends == n && layout.is_none_or(|l| l == r.layout))
        })
    };
    let kept: Vec<&str> = text[start..end]
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .filter(|l| !measured(l))
        .collect();
    let mut table = table.to_string();
    let mut note = String::new();
    if !kept.is_empty() {
        let mut lines: Vec<String> = table.lines().map(str::to_string).collect();
        let header = lines.drain(..2).collect::<Vec<_>>();
        lines.extend(kept.iter().map(|l| l.to_string()));
        let size = |l: &String| -> usize {
            l.trim_start_matches('|').split('|').next().unwrap_or("").trim().parse().unwrap_or(0)
        };
        lines.sort_by_key(size);
        table = header.into_iter().chain(lines).map(|l| l + "\n").collect();
        note = "Rows for sizes this run did not measure are from the previous run.\n\n".into();
    }
    let machine = Command::new("sh")
        .args(["-c", "nproc; grep -m1 'model name' /proc/cpuinfo; free -g | sed -n 2p; uptime"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', "; "))
        .unwrap_or_default();
    let updated = format!(
        "{}{start_marker}\nMachine: {machine}\n\n{note}{table}{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&path, updated).expect("write BENCHMARKS.md");
}
