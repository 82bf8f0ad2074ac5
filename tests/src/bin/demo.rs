//! `make demo`: the kgateway "Backend TLS" guide on this machine, in the foreground.
//!
//! NGINX serves HTTPS on 127.0.0.1:8443 with a certificate for example.com from a local CA
//! (created once, kept in `.demo/`), the loader watches `examples/backend-tls/` (plus the
//! `ca.yaml` this writes there) and serves ADS over mutual TLS with the certificates
//! `backendtls-loader certs` creates once in `.demo/xds/`, and Envoy runs `envoy/bootstrap.yaml`
//! (which reads its client certificate from there). Ctrl-C stops all three.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use backendtls_e2e::guide::{GUIDE_HOST, HOSTNAME, NGINX_CLUSTER};
use backendtls_e2e::loader::create_xds_certs;
use backendtls_e2e::manifests::{ca_config_map, CA_FILE};
use backendtls_e2e::paths::{examples_dir, workspace_root};
use backendtls_e2e::{
    port_accepts, try_http_get, wait_until, CertifiedKey, Envoy, Loader, Nginx, TestCa,
};

const GATEWAY_PORT: u16 = 8080;
const NGINX_HTTPS_PORT: u16 = 8443;
const LOADER_XDS_PORT: u16 = 18000;
const LOADER_ADMIN_PORT: u16 = 18001;
const ENVOY_ADMIN_PORT: u16 = 19000;
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Under `.demo/`: what `backendtls-loader certs` writes, and `envoy/bootstrap.yaml` reads.
const XDS_CERTS_DIR: &str = "xds";
/// The node id in `envoy/bootstrap.yaml`, named by Envoy's client certificate.
const ENVOY_NODE_ID: &str = "backendtls-envoy";

fn main() -> ExitCode {
    if let Err(message) = check_ports_free() {
        eprintln!("{message}");
        return ExitCode::FAILURE;
    }
    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .expect("install the Ctrl-C handler");

    // envoy/bootstrap.yaml names its certificate files relative to the repository root.
    std::env::set_current_dir(workspace_root()).expect("cd to the repository root");
    let demo_dir = workspace_root().join(".demo");
    let (ca_pem, server_cert) = demo_certificates(&demo_dir);
    // The xDS CA, the loader's certificate and Envoy's (kept if they exist).
    let xds_certs = demo_dir.join(XDS_CERTS_DIR);
    create_xds_certs(&xds_certs, &[ENVOY_NODE_ID]);
    let ca_yaml = examples_dir().join(CA_FILE);
    std::fs::write(&ca_yaml, ca_config_map(&ca_pem))
        .unwrap_or_else(|e| panic!("write {}: {e}", ca_yaml.display()));

    let mut nginx = Nginx::start_on_port(NGINX_HTTPS_PORT, &server_cert);
    // The filter's dynamic-module build (`make demo` builds it first): per-policy counters in
    // Envoy's /stats.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from);
    let filter = target.join("release/libbackendtls_filter.so");
    let filter = filter.to_str().expect("UTF-8 path");
    let xds_certs = xds_certs.to_str().expect("UTF-8 path");
    let filter_args =
        ["--filter", "dynamic-module", "--filter-path", filter, "--xds-certs", xds_certs];
    let mut loader =
        Loader::start_with_args(&examples_dir(), LOADER_XDS_PORT, LOADER_ADMIN_PORT, &filter_args);
    let bootstrap_path = workspace_root().join("envoy/bootstrap.yaml");
    let bootstrap = std::fs::read_to_string(&bootstrap_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", bootstrap_path.display()));
    let mut envoy = Envoy::start(&bootstrap, ENVOY_ADMIN_PORT);

    print_banner(&demo_dir, &nginx, &loader, &envoy);
    wait_for_first_success(&envoy);
    println!("\nCtrl-C stops Envoy, the loader and NGINX.");

    let _ = stop_rx.recv();
    println!("\nstopping Envoy, the loader and NGINX");
    envoy.shutdown();
    loader.shutdown();
    nginx.shutdown();
    ExitCode::SUCCESS
}

/// Fails early with a clear message instead of letting a component die on a taken port.
fn check_ports_free() -> Result<(), String> {
    let taken: Vec<String> =
        [GATEWAY_PORT, NGINX_HTTPS_PORT, LOADER_XDS_PORT, LOADER_ADMIN_PORT, ENVOY_ADMIN_PORT]
            .into_iter()
            .filter(|port| port_accepts(*port))
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
    if taken.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the demo needs these ports, but something already listens on {} (another demo?)",
            taken.join(", ")
        ))
    }
}

/// The demo CA's PEM and NGINX's certificate for example.com: read from `dir`, or created there on
/// first run (keys stay in `.demo/`, which git ignores).
fn demo_certificates(dir: &Path) -> (String, CertifiedKey) {
    let files = DemoFiles::in_dir(dir);
    if let Some(existing) = files.read() {
        return existing;
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let ca = TestCa::new("backendtls demo CA");
    let server_cert = ca.issue(&[HOSTNAME]);
    files.write(&ca, &server_cert);
    println!("created a demo CA and a certificate for {HOSTNAME} in {}", dir.display());
    (ca.cert_pem().to_string(), server_cert)
}

struct DemoFiles {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl DemoFiles {
    fn in_dir(dir: &Path) -> DemoFiles {
        DemoFiles {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("tls.crt"),
            server_key: dir.join("tls.key"),
        }
    }

    /// `None` unless every file is there (then they are all made anew).
    fn read(&self) -> Option<(String, CertifiedKey)> {
        let read = |path: &PathBuf| std::fs::read_to_string(path).ok();
        read(&self.ca_key)?;
        Some((
            read(&self.ca_cert)?,
            CertifiedKey { cert_pem: read(&self.server_cert)?, key_pem: read(&self.server_key)? },
        ))
    }

    fn write(&self, ca: &TestCa, server_cert: &CertifiedKey) {
        write_file(&self.ca_cert, ca.cert_pem(), 0o644);
        write_file(&self.ca_key, ca.key_pem(), 0o600);
        write_file(&self.server_cert, &server_cert.cert_pem, 0o644);
        write_file(&self.server_key, &server_cert.key_pem, 0o600);
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn print_banner(demo_dir: &Path, nginx: &Nginx, loader: &Loader, envoy: &Envoy) {
    println!(
        "\nbackendtls demo: the kgateway \"Backend TLS\" guide on 127.0.0.1\n\
         \x20 NGINX   https://127.0.0.1:{NGINX_HTTPS_PORT} (certificate for {HOSTNAME}, CA {ca})\n\
         \x20 loader  xDS 127.0.0.1:{LOADER_XDS_PORT} over mutual TLS (certificates in {xds}), \
         status http://127.0.0.1:{LOADER_ADMIN_PORT}/status, watching {examples}\n\
         \x20 Envoy   gateway http://127.0.0.1:{GATEWAY_PORT}, admin http://127.0.0.1:{ENVOY_ADMIN_PORT}\n\
         \x20 logs    {nginx_logs}/, {loader_log}, {envoy_log}\n\
         \nTry:\n\
         \x20 curl -i http://127.0.0.1:{GATEWAY_PORT}/ -H \"host: {GUIDE_HOST}\"\n\
         \x20 curl -s http://127.0.0.1:{ENVOY_ADMIN_PORT}/stats | grep {NGINX_CLUSTER}.ssl.handshake\n\
         \x20 curl -s http://127.0.0.1:{ENVOY_ADMIN_PORT}/stats | grep '^backendtls\\.'   # the filter's per-policy counters",
        ca = demo_dir.join("ca.crt").display(),
        xds = demo_dir.join(XDS_CERTS_DIR).display(),
        examples = examples_dir().display(),
        nginx_logs = nginx.dir().display(),
        loader_log = loader.log_path().display(),
        envoy_log = envoy.dir().join("envoy.log").display(),
    );
}

/// The guide's request, repeated until it succeeds; then the handshake counter that proves TLS.
fn wait_for_first_success(envoy: &Envoy) {
    let body = wait_until(
        "the guide's request through Envoy to answer 200",
        FIRST_REQUEST_TIMEOUT,
        || match try_http_get(GATEWAY_PORT, GUIDE_HOST, "/") {
            Ok((200, body)) => Ok(body),
            other => Err(other),
        },
    );
    let handshakes = envoy.stat(&format!("cluster.{NGINX_CLUSTER}.ssl.handshake"));
    println!(
        "\nIt works: GET / with host {GUIDE_HOST} answered 200 {:?} through Envoy, \
         which spoke TLS to NGINX ({NGINX_CLUSTER}.ssl.handshake: {handshakes}).",
        body.trim_end()
    );
}
