//! The loader binary as a subprocess: `serve`, `bootstrap` and `render`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::http::try_http_get;
use crate::paths::loader_bin;
use crate::ports::free_port;
use crate::process::{print_tail_if_panicking, ManagedChild};
use crate::wait::wait_until;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `backendtls-loader serve` on a config directory, with its xDS and admin ports on 127.0.0.1.
///
/// ADS is plaintext (allowed on loopback) unless started with [`Loader::start_secure`], which
/// serves it over mutual TLS; the tests of that (tests/secure_xds.rs) use the real
/// `backendtls-loader certs` and `bootstrap --xds-certs` ([`ads_bootstrap_secure`]).
pub struct Loader {
    config_dir: PathBuf,
    xds_port: u16,
    admin_port: u16,
    /// Holds the log file, which outlives restarts so one log tells the whole story.
    log_dir: TempDir,
    process: Option<ManagedChild>,
    /// More `serve` arguments, e.g. `--filter ...`.
    extra_args: Vec<String>,
    /// Whether starting waits for `/readyz` (else only for `/healthz`).
    wait_for_ready: bool,
    /// How long starting waits for it.
    ready_timeout: Duration,
}

impl Loader {
    /// Starts the loader on free ports and waits until `/readyz` answers 200.
    pub fn start(config_dir: &Path) -> Loader {
        Loader::start_on_ports(config_dir, free_port(), free_port())
    }

    pub fn start_on_ports(config_dir: &Path, xds_port: u16, admin_port: u16) -> Loader {
        Loader::start_with_args(config_dir, xds_port, admin_port, &[])
    }

    /// Starts the loader on free ports serving ADS over mutual TLS with the certificates in
    /// `certs` (`serve --xds-certs DIR`), plus `extra_args`.
    pub fn start_secure(config_dir: &Path, certs: &Path, extra_args: &[&str]) -> Loader {
        let certs = certs.to_str().expect("UTF-8 certs dir");
        let mut args = vec!["--xds-certs", certs];
        args.extend_from_slice(extra_args);
        Loader::start_with_args(config_dir, free_port(), free_port(), &args)
    }

    /// Like [`Loader::start_on_ports`], with more `serve` arguments (e.g. the filter flags).
    pub fn start_with_args(
        config_dir: &Path,
        xds_port: u16,
        admin_port: u16,
        extra_args: &[&str],
    ) -> Loader {
        Loader::launch(config_dir, xds_port, admin_port, extra_args, true)
    }

    /// Like [`Loader::start_with_args`], waiting up to `ready_timeout` for `/readyz` (benchmarks
    /// at sizes where the first snapshot takes longer than the usual 30 s).
    pub fn start_with_ready_timeout(
        config_dir: &Path,
        xds_port: u16,
        admin_port: u16,
        extra_args: &[&str],
        ready_timeout: Duration,
    ) -> Loader {
        Loader::launch_with(config_dir, xds_port, admin_port, extra_args, true, ready_timeout)
    }

    /// Starts the loader on free ports and waits only until it answers `/healthz`: for inputs
    /// on which it must not become ready.
    pub fn start_unready(config_dir: &Path) -> Loader {
        Loader::launch(config_dir, free_port(), free_port(), &[], false)
    }

    fn launch(
        config_dir: &Path,
        xds_port: u16,
        admin_port: u16,
        extra_args: &[&str],
        wait_for_ready: bool,
    ) -> Loader {
        Loader::launch_with(
            config_dir,
            xds_port,
            admin_port,
            extra_args,
            wait_for_ready,
            READY_TIMEOUT,
        )
    }

    fn launch_with(
        config_dir: &Path,
        xds_port: u16,
        admin_port: u16,
        extra_args: &[&str],
        wait_for_ready: bool,
        ready_timeout: Duration,
    ) -> Loader {
        let log_dir =
            tempfile::Builder::new().prefix("btls-loader-").tempdir().expect("loader temp dir");
        let mut loader = Loader {
            config_dir: config_dir.to_path_buf(),
            xds_port,
            admin_port,
            log_dir,
            process: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            wait_for_ready,
            ready_timeout,
        };
        loader.start_again();
        loader
    }

    /// `GET /readyz`'s status code.
    pub fn readyz(&self) -> Option<u16> {
        try_http_get(self.admin_port, "127.0.0.1", "/readyz").ok().map(|(status, _)| status)
    }

    pub fn xds_port(&self) -> u16 {
        self.xds_port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Kills the loader (SIGKILL, as a crash would) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Stops the loader gracefully (SIGTERM, then SIGKILL if it lingers).
    pub fn shutdown(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the loader to exit; returns its exit status
    /// and how long it took, or None if it still runs (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let mut process = self.process.take()?;
        process.pid()?;
        let started = std::time::Instant::now();
        process.sigterm();
        while started.elapsed() < timeout {
            if let Some(status) = process.exit_status() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        process.kill();
        None
    }

    /// Starts the loader (again) on the same ports and waits until `/readyz` answers 200.
    pub fn start_again(&mut self) {
        self.stop();
        let mut command = Command::new(loader_bin());
        command
            .arg("serve")
            .arg("--config-dir")
            .arg(&self.config_dir)
            .args(["--xds-address", &format!("127.0.0.1:{}", self.xds_port)])
            .args(["--admin-address", &format!("127.0.0.1:{}", self.admin_port)])
            .args(&self.extra_args)
            .env("RUST_LOG", "info");
        let mut process = ManagedChild::spawn("loader", command, &self.log_path());
        let port = self.admin_port;
        let path = if self.wait_for_ready { "/readyz" } else { "/healthz" };
        wait_until(&format!("loader {path} to answer 200"), self.ready_timeout, || {
            process.assert_running();
            match try_http_get(port, "127.0.0.1", path) {
                Ok((200, _)) => Ok(()),
                other => Err(other),
            }
        });
        self.process = Some(process);
    }

    /// `GET /status`: snapshot version, per-policy status, input errors and problems.
    pub fn status(&self) -> Value {
        self.admin_json("/status")
    }

    /// `GET /xds`: snapshot version and, per connected Envoy, the newest fully ACKed version.
    pub fn xds(&self) -> Value {
        self.admin_json("/xds")
    }

    /// Whether Envoy `node_id` is connected and has ACKed the loader's current snapshot.
    pub fn envoy_is_current(&self, node_id: &str) -> Result<(), Value> {
        let xds = self.try_admin_json("/xds").map_err(Value::String)?;
        let current = xds["snapshot_version"].as_u64();
        let acked = xds["envoys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|envoy| envoy["node"] == node_id)
            .and_then(|envoy| envoy["acked_version"].as_u64());
        match (current, acked) {
            (Some(current), Some(acked)) if acked == current => Ok(()),
            _ => Err(xds),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// One log file across restarts, so it tells the whole story.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("loader.log")
    }

    /// The loader's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ManagedChild::pid)
    }

    /// A counter or gauge from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = try_http_get(self.admin_port, "127.0.0.1", "/metrics").ok()?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub fn admin_json(&self, path: &str) -> Value {
        self.try_admin_json(path).unwrap_or_else(|e| panic!("loader admin {path}: {e}"))
    }

    fn try_admin_json(&self, path: &str) -> Result<Value, String> {
        match try_http_get(self.admin_port, "127.0.0.1", path) {
            Ok((200, body)) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail_if_panicking("loader log", &self.log(), 60);
            for path in ["/status", "/xds"] {
                let answer = self.try_admin_json(path).map(|json| json.to_string());
                eprintln!("----- loader {path} -----\n{}", answer.unwrap_or_else(|e| e));
            }
        }
        self.stop();
    }
}

/// Which ADS protocol Envoy speaks to the loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ads {
    /// Incremental xDS, what the shipped bootstrap uses.
    Delta,
    /// State of the world.
    Sotw,
}

/// The ADS bootstrap the loader prints for an Envoy that talks to it.
pub fn ads_bootstrap(xds_port: u16, admin_port: u16, node_id: &str, ads: Ads) -> String {
    let xds_address = format!("127.0.0.1:{xds_port}");
    let admin_address = format!("127.0.0.1:{admin_port}");
    let mut args =
        vec!["bootstrap", "--xds-address", &xds_address, "--admin-address", &admin_address];
    args.extend(["--node-id", node_id]);
    if ads == Ads::Sotw {
        args.push("--sotw");
    }
    run_loader(&args)
}

/// Like [`ads_bootstrap`], connecting over mutual TLS with the files `backendtls-loader certs`
/// wrote into `certs` for `node_id` (`bootstrap --xds-certs DIR`).
pub fn ads_bootstrap_secure(
    xds_port: u16,
    admin_port: u16,
    node_id: &str,
    ads: Ads,
    certs: &Path,
) -> String {
    let xds_address = format!("127.0.0.1:{xds_port}");
    let admin_address = format!("127.0.0.1:{admin_port}");
    let certs = certs.to_str().expect("UTF-8 certs dir");
    let mut args =
        vec!["bootstrap", "--xds-address", &xds_address, "--admin-address", &admin_address];
    args.extend(["--node-id", node_id, "--xds-certs", certs]);
    if ads == Ads::Sotw {
        args.push("--sotw");
    }
    run_loader(&args)
}

/// `backendtls-loader certs --out-dir DIR --envoy-id ID...`: a CA, the loader's certificate and
/// one client certificate per Envoy node id.
pub fn create_xds_certs(out_dir: &Path, envoy_ids: &[&str]) {
    let out_dir = out_dir.to_str().expect("UTF-8 certs dir");
    let mut args = vec!["certs", "--out-dir", out_dir];
    for id in envoy_ids {
        args.extend(["--envoy-id", id]);
    }
    run_loader(&args);
}

/// A static Envoy bootstrap (no xDS) rendered from a config directory, as YAML.
pub fn render_bootstrap(config_dir: &Path, admin_port: u16) -> String {
    let config_dir = config_dir.to_str().expect("UTF-8 config dir");
    run_loader(&[
        "render",
        "--config-dir",
        config_dir,
        "-o",
        "yaml",
        "--admin-address",
        &format!("127.0.0.1:{admin_port}"),
    ])
}

/// Runs a one-shot loader subcommand and returns its stdout; panics with stderr when it fails.
pub fn run_loader(args: &[&str]) -> String {
    let output = Command::new(loader_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run backendtls-loader {args:?}: {e}"));
    assert!(
        output.status.success(),
        "backendtls-loader {args:?} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("loader prints UTF-8")
}
