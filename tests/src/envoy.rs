//! A real Envoy process with its admin API on 127.0.0.1.

pub mod config;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::http::try_http_get;
use crate::paths::{envoy_bin, unique_envoy_base_id};
use crate::process::{print_tail_if_panicking, ManagedChild};
use crate::wait::wait_until;

/// Envoy waits for its first LDS/CDS answer before it reports ready; 15 s is its own
/// initial-fetch timeout, so allow a little more.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Envoy {
    dir: TempDir,
    admin_port: u16,
    process: ManagedChild,
}

impl Envoy {
    /// Starts Envoy with `bootstrap_yaml` (whose admin listener must be 127.0.0.1:`admin_port`) and
    /// waits until `GET /ready` answers 200. Two worker threads.
    pub fn start(bootstrap_yaml: &str, admin_port: u16) -> Envoy {
        Envoy::start_with_workers(bootstrap_yaml, admin_port, 2)
    }

    /// As [`Envoy::start`], with `workers` worker threads (`--concurrency`).
    pub fn start_with_workers(bootstrap_yaml: &str, admin_port: u16, workers: u32) -> Envoy {
        Envoy::start_with_ready_timeout(bootstrap_yaml, admin_port, workers, READY_TIMEOUT)
    }

    /// As [`Envoy::start_with_workers`], waiting up to `ready_timeout` for `/ready` (benchmarks
    /// with more resources than Envoy initializes in the usual 30 s).
    pub fn start_with_ready_timeout(
        bootstrap_yaml: &str,
        admin_port: u16,
        workers: u32,
        ready_timeout: Duration,
    ) -> Envoy {
        let dir = tempfile::Builder::new().prefix("btls-envoy-").tempdir().expect("envoy temp dir");
        let bootstrap_path = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap_path, bootstrap_yaml).expect("write envoy bootstrap");
        let mut command = Command::new(envoy_bin());
        command
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["--base-id", &unique_envoy_base_id().to_string()])
            .args(["--concurrency", &workers.to_string()])
            .args(["--log-level", "info"])
            .args(["--file-flush-interval-msec", "200"]);
        let process = ManagedChild::spawn("envoy", command, &dir.path().join("envoy.log"));
        let mut envoy = Envoy { dir, admin_port, process };
        envoy.wait_until_ready(ready_timeout);
        envoy
    }

    /// The Envoy process id (benchmarks read its CPU time from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Stops Envoy gracefully (SIGTERM, then SIGKILL if it lingers).
    pub fn shutdown(&mut self) {
        self.process.stop();
    }

    /// The directory holding `bootstrap.yaml` and `envoy.log`.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// All counters and gauges from the plain-text `/stats` (histograms are skipped).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        parse_stats(&self.admin_get("/stats"))
    }

    /// One counter or gauge; 0 when Envoy does not (yet) have it.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    pub fn prometheus(&self) -> String {
        self.admin_get("/stats/prometheus")
    }

    /// Envoy's stdout and stderr.
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// `GET` on the admin API; panics unless it answers 200.
    pub fn admin_get(&self, path: &str) -> String {
        match try_http_get(self.admin_port, "127.0.0.1", path) {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("envoy admin {path}: {status} {body}"),
            Err(e) => panic!("envoy admin {path}: {e}\n{}", self.log_tail(40)),
        }
    }

    /// Non-zero `cluster.*` stats except the xDS cluster's; never panics (it runs from `Drop`).
    fn cluster_stats_summary(&self) -> String {
        let Ok((200, text)) = try_http_get(self.admin_port, "127.0.0.1", "/stats") else {
            return "(admin API not answering)".to_string();
        };
        parse_stats(&text)
            .into_iter()
            .filter(|(name, value)| {
                *value > 0 && name.starts_with("cluster.") && !name.contains("xds")
            })
            .map(|(name, value)| format!("{name}: {value}\n"))
            .collect()
    }

    fn wait_until_ready(&mut self, timeout: Duration) {
        let port = self.admin_port;
        let process = &mut self.process;
        wait_until("envoy /ready to answer 200", timeout, || {
            process.assert_running();
            match try_http_get(port, "127.0.0.1", "/ready") {
                Ok((200, _)) => Ok(()),
                other => Err(other),
            }
        });
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail_if_panicking("envoy log", &self.process.log(), 60);
            print_tail_if_panicking(
                "envoy non-zero cluster stats",
                &self.cluster_stats_summary(),
                120,
            );
        }
    }
}

/// A static Envoy bootstrap (no loader), for callers that still hold YAML fragments: one HTTP
/// listener on 127.0.0.1:`listener` that logs each request to stdout as `log_format` (YAML
/// double-quoted text, e.g. `ACCESS %RESPONSE_CODE%\n`), routes every host by `routes`, runs
/// `http_filters` before the router, and has `clusters` (each a YAML list, any indentation).
/// Built by [`config::StaticBootstrap`], which new code should use directly.
pub fn static_listener_bootstrap(
    admin: u16,
    listener: u16,
    log_format: &str,
    routes: &str,
    http_filters: &str,
    clusters: &str,
) -> String {
    let list = |what: &str, yaml: &str| -> Vec<serde_json::Value> {
        if yaml.trim().is_empty() {
            return Vec::new();
        }
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{what} are not a YAML list: {e}"))
    };
    let log_format: String = serde_norway::from_str(&format!("\"{log_format}\""))
        .unwrap_or_else(|e| panic!("log format {log_format:?}: {e}"));
    let mut bootstrap = config::StaticBootstrap::new(admin, listener, &log_format);
    for route in list("routes", routes) {
        bootstrap = bootstrap.raw_route(route);
    }
    for filter in list("http filters", http_filters) {
        bootstrap = bootstrap.http_filter(filter);
    }
    for cluster in list("clusters", clusters) {
        bootstrap = bootstrap.cluster(cluster);
    }
    bootstrap.yaml()
}

/// Runs `envoy --mode validate` on `bootstrap_yaml`; returns whether it passed and what it printed.
pub fn validate_bootstrap(bootstrap_yaml: &str) -> (bool, String) {
    let dir =
        tempfile::Builder::new().prefix("btls-validate-").tempdir().expect("validate temp dir");
    let bootstrap_path = dir.path().join("bootstrap.yaml");
    std::fs::write(&bootstrap_path, bootstrap_yaml).expect("write bootstrap to validate");
    let output = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&bootstrap_path)
        .args(["--base-id", &unique_envoy_base_id().to_string()])
        .output()
        .expect("run envoy --mode validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Parses `name: value` lines; histogram lines (`P0(...)`, `No recorded values`) do not parse as
/// integers and are skipped.
fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}
