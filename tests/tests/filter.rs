//! Acceptance tests of the backendtls filter, each run against both builds (the proxy-wasm
//! module and the dynamic module) with the same assertions, in a real Envoy 1.40 with a real NGINX.
//!
//! - Through the loader (the kgateway guide's route): exact request counts, TLS version and
//!   handshake counters, the Prometheus `policy` label, verification failures by reason (wrong CA,
//!   SAN mismatch), no false rejection when the matching SAN is not the leaf's first.
//! - Through a hand-written static Envoy config (no loader): plaintext to a governed cluster is
//!   answered by the filter, an invalid policy is refused before any upstream connection, and the
//!   access log shows the request's tags.
//! - The dynamic module survives a panic inside its own logic.
//!
//! The filter artifacts are built (release) on first use, like the harness builds the loader;
//! `BACKENDTLS_FILTER_SO` / `BACKENDTLS_FILTER_WASM` point at prebuilt ones instead.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};

use backendtls_e2e::envoy::config::{self, StaticBootstrap};
use backendtls_e2e::guide::{wait_for_gateway_status, GUIDE_HOST, HOSTNAME};
use backendtls_e2e::paths::{loader_bin, workspace_root};
use backendtls_e2e::process::ManagedChild;
use backendtls_e2e::{
    ads_bootstrap, free_port, try_http_get, wait_until, Ads, Envoy, HttpConnection, Manifests,
    Nginx, TestCa, NGINX_BODY,
};

const POLICY: &str = "default/nginx-tls-policy";
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    Wasm,
    DynamicModule,
    /// The dynamic module built with debug assertions: the only build with the test hook
    /// `debug_panic_header`.
    DebugDynamicModule,
}

impl Build {
    fn artifact(self) -> PathBuf {
        match self {
            Build::Wasm => {
                artifact("BACKENDTLS_FILTER_WASM", Some("wasm32-wasip1"), "backendtls_filter.wasm")
            }
            Build::DynamicModule => {
                artifact("BACKENDTLS_FILTER_SO", None, "libbackendtls_filter.so")
            }
            Build::DebugDynamicModule => debug_dynamic_module(),
        }
    }

    fn loader_flag(self) -> &'static str {
        match self {
            Build::Wasm => "wasm",
            Build::DynamicModule | Build::DebugDynamicModule => "dynamic-module",
        }
    }

    /// The full `/stats` name of a filter counter: `<base>[.<label>.<value>].policy.<policy>`.
    fn stat(self, base_and_label: &str) -> String {
        let prefix = match self {
            Build::Wasm => "wasmcustom.",
            Build::DynamicModule | Build::DebugDynamicModule => "",
        };
        format!("{prefix}backendtls.{base_and_label}.policy.{POLICY}")
    }

    /// The HTTP filter entry for a static config, with `config_json` as the filter's config.
    fn http_filter(self, config_json: &str) -> Value {
        let path = self.artifact();
        match self {
            Build::Wasm => config::wasm_filter(&path, config_json),
            Build::DynamicModule | Build::DebugDynamicModule => {
                config::dynamic_module_filter("backendtls_filter", &path, config_json)
            }
        }
    }
}

/// A filter artifact from `$env`, or built once per test process with `cargo build --release`.
fn artifact(env: &str, target: Option<&str>, file: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    static SO: OnceLock<PathBuf> = OnceLock::new();
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    let cell = if target.is_some() { &WASM } else { &SO };
    cell.get_or_init(|| {
        let root = workspace_root();
        let mut command = Command::new(env!("CARGO"));
        command.args(["build", "--release", "-p", "backendtls-filter"]).current_dir(&root);
        if let Some(target) = target {
            command.args(["--target", target]);
        }
        let output = command.output().expect("run cargo build -p backendtls-filter");
        assert!(
            output.status.success(),
            "cargo build -p backendtls-filter failed (set {env} to use a prebuilt one):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let target_dir =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let path = match target {
            Some(target) => target_dir.join(target).join("release").join(file),
            None => target_dir.join("release").join(file),
        };
        assert!(path.is_file(), "built the filter but {} is missing", path.display());
        path
    })
    .clone()
}

/// `libbackendtls_filter.so` built with debug assertions (`cargo build`, dev profile), once per
/// test process; `BACKENDTLS_FILTER_DEBUG_SO` points at a prebuilt one instead.
fn debug_dynamic_module() -> PathBuf {
    if let Some(path) = std::env::var_os("BACKENDTLS_FILTER_DEBUG_SO") {
        return PathBuf::from(path);
    }
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let root = workspace_root();
        let output = Command::new(env!("CARGO"))
            .args(["build", "-p", "backendtls-filter"])
            .current_dir(&root)
            .output()
            .expect("run cargo build -p backendtls-filter");
        assert!(
            output.status.success(),
            "cargo build -p backendtls-filter (debug) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let target_dir =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let path = target_dir.join("debug").join("libbackendtls_filter.so");
        assert!(path.is_file(), "built the filter but {} is missing", path.display());
        path
    })
    .clone()
}

/// The guide's stack with the filter: NGINX, the manifests, `backendtls-loader serve --filter`,
/// and Envoy on the loader's ADS bootstrap. Fields drop in order: Envoy first.
struct FilterStack {
    envoy: Envoy,
    _loader: ManagedChild,
    manifests: Manifests,
    nginx: Nginx,
    ca: TestCa,
    gateway_port: u16,
    build: Build,
}

impl FilterStack {
    fn start(build: Build, node_id: &str) -> FilterStack {
        let ca = TestCa::new("backendtls filter e2e CA");
        let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
        let gateway_port = free_port();
        let manifests = Manifests::write(gateway_port, nginx.https_port(), ca.cert_pem());
        let (xds_port, admin_port) = (free_port(), free_port());
        let filter_path = build.artifact();
        let mut command = Command::new(loader_bin());
        command
            .arg("serve")
            .arg("--config-dir")
            .arg(manifests.dir())
            .args(["--xds-address", &format!("127.0.0.1:{xds_port}")])
            .args(["--admin-address", &format!("127.0.0.1:{admin_port}")])
            .args(["--filter", build.loader_flag()])
            .arg("--filter-path")
            .arg(&filter_path)
            .env("RUST_LOG", "info");
        let log_path = manifests.dir().join("loader.log");
        let mut loader = ManagedChild::spawn("loader", command, &log_path);
        wait_until("loader /readyz to answer 200", TIMEOUT, || {
            loader.assert_running();
            match try_http_get(admin_port, "127.0.0.1", "/readyz") {
                Ok((200, _)) => Ok(()),
                other => Err(other),
            }
        });
        let envoy_admin = free_port();
        let envoy =
            Envoy::start(&ads_bootstrap(xds_port, envoy_admin, node_id, Ads::Delta), envoy_admin);
        FilterStack { envoy, _loader: loader, manifests, nginx, ca, gateway_port, build }
    }

    fn counter(&self, base_and_label: &str) -> u64 {
        self.envoy.stat(&self.build.stat(base_and_label))
    }

    /// Serves `cert` from NGINX (a restart, so pooled upstream connections end).
    fn serve_certificate(&mut self, cert: &backendtls_e2e::CertifiedKey) {
        self.nginx.replace_certificate(cert);
    }
}

fn guide_through_loader(build: Build, node_id: &str) {
    let mut stack = FilterStack::start(build, node_id);
    assert_eq!(stack.wait_for(200), NGINX_BODY);

    // N requests on one keep-alive connection: exactly N more in the policy's request counter.
    const N: u64 = 25;
    let before = stack.counter("requests");
    let handshakes_before = stack.counter("handshakes");
    let mut connection = HttpConnection::connect(stack.gateway_port).expect("connect");
    for _ in 0..N {
        assert_eq!(connection.get(GUIDE_HOST, "/").expect("GET").0, 200);
    }
    wait_until("the request counter to settle", TIMEOUT, || {
        let delta = stack.counter("requests") - before;
        (delta == N).then_some(()).ok_or(delta)
    });
    let tls = stack.counter("tls_requests.version.TLSv1_2")
        + stack.counter("tls_requests.version.TLSv1_3");
    assert!(tls >= N, "TLS version counters moved by {tls}, expected at least {N}");
    assert!(stack.counter("handshakes") >= 1, "no handshake counted");
    assert!(
        stack.counter("handshakes") - handshakes_before <= 2,
        "one pooled connection per worker"
    );
    assert_eq!(stack.counter("rejections.reason.identity_mismatch"), 0);

    let prometheus = stack.envoy.prometheus();
    let requests_line = prometheus.lines().find(|l| {
        l.contains("backendtls_requests{") && l.contains(&format!("policy=\"{POLICY}\""))
    });
    assert!(
        requests_line.is_some(),
        "no backendtls_requests with the policy label in:\n{}",
        backendtls_lines(&prometheus)
    );
    assert!(
        prometheus.lines().any(|l| l.contains("backendtls_tls_requests{")
            && l.contains("version=\"TLSv1_")
            && l.contains(&format!("policy=\"{POLICY}\""))),
        "no tls_requests with version and policy labels in:\n{}",
        backendtls_lines(&prometheus)
    );

    // Wrong CA: Envoy's handshake fails, the filter counts why.
    let stranger = TestCa::new("not the policy's CA");
    stack.serve_certificate(&stranger.issue(&[HOSTNAME]));
    stack.wait_for(503);
    wait_until("an unknown_ca verification failure", TIMEOUT, || {
        let n = stack.counter("verify_failures.reason.unknown_ca");
        (n >= 1).then_some(()).ok_or(n)
    });

    // The policy's CA, but a certificate for another name.
    let wrong_name = stack.ca.issue(&["other.example"]);
    stack.serve_certificate(&wrong_name);
    stack.wait_for(503);
    wait_until("a san_mismatch verification failure", TIMEOUT, || {
        let n = stack.counter("verify_failures.reason.san_mismatch");
        (n >= 1).then_some(()).ok_or(n)
    });
    assert_eq!(stack.counter("verify_failures.reason.expired"), 0);

    // The matching SAN is the second one: accepted, never rejected by the filter.
    let second = stack.ca.issue(&["first.example", HOSTNAME]);
    stack.serve_certificate(&second);
    assert_eq!(stack.wait_for(200), NGINX_BODY);
    for _ in 0..5 {
        assert_eq!(stack.get().0, 200);
    }
    assert_eq!(stack.counter("rejections.reason.identity_mismatch"), 0);
    assert_eq!(stack.nginx.plaintext_requests(), vec![], "plaintext reached nginx");
}

impl FilterStack {
    fn wait_for(&self, status: u16) -> String {
        wait_for_gateway_status(self.gateway_port, status)
    }

    fn get(&self) -> (u16, String) {
        try_http_get(self.gateway_port, GUIDE_HOST, "/").expect("GET through the gateway")
    }
}

fn backendtls_lines(text: &str) -> String {
    text.lines().filter(|l| l.contains("backendtls")).collect::<Vec<_>>().join("\n")
}

#[test]
fn wasm_guide_through_loader() {
    guide_through_loader(Build::Wasm, "e2e-filter-guide-wasm");
}

#[test]
fn dynamic_module_guide_through_loader() {
    guide_through_loader(Build::DynamicModule, "e2e-filter-guide-dm");
}

/// A plaintext HTTP/1.1 server on 127.0.0.1 that answers every request 200 (keep-alive), standing
/// in for a backend that a hand-written config reaches without TLS. It keeps the request header
/// lines it received.
struct PlainBackend {
    port: u16,
    received: Arc<Mutex<Vec<String>>>,
}

impl PlainBackend {
    fn start() -> PlainBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind plaintext backend");
        let port = listener.local_addr().expect("local addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve_plaintext(stream, &log));
            }
        });
        PlainBackend { port, received }
    }

    fn received_header(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}:");
        self.received.lock().expect("lock").iter().find_map(|line| {
            line.to_ascii_lowercase()
                .starts_with(&prefix)
                .then(|| line[prefix.len()..].trim().to_string())
        })
    }
}

fn serve_plaintext(stream: std::net::TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut writer = stream;
    loop {
        let mut head_done = false;
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line == "\r\n" {
                head_done = true;
                break;
            }
            log.lock().expect("lock").push(line.trim_end().to_string());
            line.clear();
        }
        if !head_done {
            return;
        }
        let body = "plaintext backend\n";
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A static Envoy config (no loader) with three routes: `/tls` to NGINX over TLS, `/plain` to a
/// governed cluster without TLS, `/invalid` to a cluster whose policy is invalid.
fn static_config(
    build: Build,
    filter_json: &str,
    listener: u16,
    admin: u16,
    ca_path: &Path,
    nginx: u16,
    plain: u16,
) -> String {
    let metadata =
        |state: &str, extra: Value| config::backendtls_metadata(POLICY, HOSTNAME, state, extra);
    let valid = metadata("valid", json!({}));
    let invalid = metadata("invalid", json!({ "reason": "CA ConfigMap default/ca has no ca.crt" }));
    let mut tls = config::static_cluster("governed_tls", nginx);
    tls["metadata"] = valid.clone();
    let validation = config::trusted_ca_file(ca_path, HOSTNAME);
    tls["transport_socket"] = config::upstream_tls(HOSTNAME, "TLSv1_3", validation, json!({}));
    let mut plaintext = config::static_cluster("governed_plaintext", plain);
    plaintext["metadata"] = valid;
    let mut broken = config::static_cluster("governed_invalid", plain);
    broken["metadata"] = invalid;
    StaticBootstrap::new(
        admin,
        listener,
        "ACCESS %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% \
         dm=%DYNAMIC_METADATA(backendtls)% wasm=%FILTER_STATE(wasm.backendtls:PLAIN)%\n",
    )
    .route("/tls", "governed_tls")
    .route("/plain", "governed_plaintext")
    .route("/invalid", "governed_invalid")
    .http_filter(build.http_filter(filter_json))
    .cluster(tls)
    .cluster(plaintext)
    .cluster(broken)
    .yaml()
}

struct StaticStack {
    envoy: Envoy,
    plain: PlainBackend,
    _nginx: Nginx,
    _dir: tempfile::TempDir,
    listener: u16,
    build: Build,
}

impl StaticStack {
    fn start(build: Build, filter_json: &str) -> StaticStack {
        let ca = TestCa::new("backendtls static e2e CA");
        let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
        let plain = PlainBackend::start();
        let dir =
            tempfile::Builder::new().prefix("btls-filter-static-").tempdir().expect("temp dir");
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca.cert_pem()).expect("write ca.crt");
        let (listener, admin) = (free_port(), free_port());
        let config = static_config(
            build,
            filter_json,
            listener,
            admin,
            &ca_path,
            nginx.https_port(),
            plain.port,
        );
        let envoy = Envoy::start(&config, admin);
        StaticStack { envoy, plain, _nginx: nginx, _dir: dir, listener, build }
    }

    fn get(&self, path: &str) -> (u16, String) {
        try_http_get(self.listener, HOSTNAME, path).expect("GET through the static listener")
    }

    fn counter(&self, base_and_label: &str) -> u64 {
        self.envoy.stat(&self.build.stat(base_and_label))
    }

    /// Waits until the access log has a line for `path` and returns it.
    fn access_line(&self, path: &str, code: u16) -> String {
        let prefix = format!("ACCESS {path} {code} ");
        wait_until(&format!("an access log line for {path} {code}"), TIMEOUT, || {
            self.envoy.log().lines().find(|l| l.starts_with(&prefix)).map(str::to_string)
        })
    }

    /// The request's tags from an access log line (dynamic metadata or Wasm filter state).
    fn tags(&self, line: &str) -> serde_json::Value {
        let field = match self.build {
            Build::DynamicModule | Build::DebugDynamicModule => "dm=",
            Build::Wasm => "wasm=",
        };
        let start = line.find(field).expect("tag field") + field.len();
        let json = line[start..].split_whitespace().next().expect("tag value");
        serde_json::from_str(json).unwrap_or_else(|e| panic!("tags {json:?} in {line:?}: {e}"))
    }
}

fn static_config_without_loader(build: Build) {
    let stack = StaticStack::start(build, r#"{"request_header": "x-backendtls-policy"}"#);

    let (status, body) = stack.get("/tls");
    assert_eq!((status, body.as_str()), (200, NGINX_BODY));
    let tags = stack.tags(&stack.access_line("/tls", 200));
    assert_eq!(tags["policy"], POLICY);
    assert_eq!(tags["hostname"], HOSTNAME);
    assert!(tags["tls_version"].as_str().is_some_and(|v| v.starts_with("TLSv1.")), "{tags}");
    assert_eq!(tags["verification"], "verified");

    // The cluster carries the policy but has no TLS: the filter answers instead of the backend.
    let (status, body) = stack.get("/plain");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("requires TLS"), "{body}");
    assert_eq!(stack.counter("rejections.reason.plaintext"), 1);
    let tags = stack.tags(&stack.access_line("/plain", 502));
    assert_eq!(tags["verification"], "plaintext");
    // The optional request header told the backend which policy governs it.
    assert_eq!(stack.plain.received_header("x-backendtls-policy").as_deref(), Some(POLICY));

    // An invalid policy: refused before any upstream connection, with the reason.
    let (status, body) = stack.get("/invalid");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("has no ca.crt"), "{body}");
    assert_eq!(stack.counter("rejections.reason.invalid_policy"), 1);
    assert_eq!(stack.envoy.stat("cluster.governed_invalid.upstream_cx_total"), 0);
    let tags = stack.tags(&stack.access_line("/invalid", 503));
    assert_eq!(tags["verification"], "invalid_policy");

    assert_eq!(stack.counter("requests"), 3);
}

#[test]
fn wasm_static_config_without_loader() {
    static_config_without_loader(Build::Wasm);
}

#[test]
fn dynamic_module_static_config_without_loader() {
    static_config_without_loader(Build::DynamicModule);
}

/// `debug_panic_header` makes the dynamic module (debug build) panic inside its request logic:
/// the panic is caught at the FFI boundary, the request gets a 500, and Envoy goes on serving.
#[test]
fn dynamic_module_survives_a_panic() {
    let stack = StaticStack::start(
        Build::DebugDynamicModule,
        r#"{"request_header": null, "debug_panic_header": "x-backendtls-test-panic"}"#,
    );
    assert_eq!(stack.get("/tls").0, 200);
    let (status, body) = get_with_header(stack.listener, "/tls", "x-backendtls-test-panic: 1");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("internal error"), "{body}");
    assert!(stack.envoy.log().contains("backendtls: panic in request_headers"));
    for _ in 0..5 {
        assert_eq!(stack.get("/tls").0, 200, "Envoy stopped serving after the panic");
    }
    assert!(stack.envoy.admin_get("/ready").contains("LIVE"));
}

/// `GET path` with one extra header on a new connection (the harness client sends only Host):
/// the status and the body (`Connection: close`, so the body runs to the end of the stream).
fn get_with_header(port: u16, path: &str, header: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {HOSTNAME}\r\n{header}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The hand-written example in `filter/examples/static-envoy.yaml` (the README's) stays a config
/// Envoy 1.40 accepts. It binds fixed ports, so it is validated rather than run; the static-config
/// tests above run the same shape on free ports.
#[test]
fn static_example_config_is_valid() {
    let example = workspace_root().join("filter/examples/static-envoy.yaml");
    let text = std::fs::read_to_string(&example).expect("read the static example");
    let dir = tempfile::Builder::new().prefix("btls-filter-example-").tempdir().expect("temp dir");
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, TestCa::new("example CA").cert_pem()).expect("write ca.crt");
    let config = text
        .replace("<FILTER_SO>", &Build::DynamicModule.artifact().display().to_string())
        .replace("<CA_PEM_FILE>", &ca_path.display().to_string());
    let (ok, output) = backendtls_e2e::validate_bootstrap(&config);
    assert!(ok, "envoy --mode validate rejected {}:\n{output}", example.display());
}

/// A release build has no test hook: a filter config that asks for the panic header is refused
/// (as an unknown key), so Envoy rejects the configuration.
#[test]
fn release_dynamic_module_has_no_panic_hook() {
    let dir = tempfile::Builder::new().prefix("btls-filter-hook-").tempdir().expect("temp dir");
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, TestCa::new("hook CA").cert_pem()).expect("write ca.crt");
    let config = static_config(
        Build::DynamicModule,
        r#"{"debug_panic_header": "x-backendtls-test-panic"}"#,
        free_port(),
        free_port(),
        &ca_path,
        free_port(),
        free_port(),
    );
    let (ok, output) = backendtls_e2e::validate_bootstrap(&config);
    assert!(!ok, "Envoy accepted a release filter config with debug_panic_header:\n{output}");
    assert!(output.contains("unknown field `debug_panic_header`"), "{output}");
}

/// Issue 11: a policy whose subjectAltNames hold a wildcard, with the filter on. A backend
/// certificate one label below the wildcard answers 200 (Envoy's SAN matchers, the loader's
/// metadata and the filter agree); one that is not answers 5xx and never reaches the client.
fn wildcard_policy_through_loader(build: Build, node_id: &str) {
    let mut stack = FilterStack::start(build, node_id);
    assert_eq!(stack.wait_for(200), NGINX_BODY);
    let path = stack.manifests.path(backendtls_e2e::manifests::POLICY_FILE);
    let policy = std::fs::read_to_string(&path).expect("read policy.yaml");
    let hostname_line = format!("    hostname: {HOSTNAME}\n");
    assert_eq!(policy.matches(&hostname_line).count(), 1, "policy.yaml changed:\n{policy}");
    let wildcard = policy.replace(
        &hostname_line,
        &format!("{hostname_line}    subjectAltNames:\n    - type: Hostname\n      hostname: \"*.{HOSTNAME}\"\n"),
    );
    stack.manifests.write_file(backendtls_e2e::manifests::POLICY_FILE, &wildcard);
    // The guide's certificate names example.com itself, which `*.example.com` does not cover:
    // refused during the handshake once the new policy applies.
    stack.wait_for(503);

    let one_below = stack.ca.issue(&[&format!("a.{HOSTNAME}")]);
    stack.serve_certificate(&one_below);
    assert_eq!(stack.wait_for(200), NGINX_BODY);
    for _ in 0..5 {
        assert_eq!(stack.get(), (200, NGINX_BODY.to_string()));
    }
    assert_eq!(stack.counter("rejections.reason.identity_mismatch"), 0);

    // Two labels below: the wildcard does not cover it.
    let two_below = stack.ca.issue(&[&format!("a.b.{HOSTNAME}")]);
    stack.serve_certificate(&two_below);
    stack.wait_for(503);
    for _ in 0..3 {
        let (status, body) = stack.get();
        assert!((500..600).contains(&status), "{status}: {body}");
    }
    assert_eq!(stack.nginx.plaintext_requests(), vec![], "plaintext reached nginx");
}

#[test]
fn wasm_wildcard_policy_through_loader() {
    wildcard_policy_through_loader(Build::Wasm, "e2e-filter-wildcard-wasm");
}

#[test]
fn dynamic_module_wildcard_policy_through_loader() {
    wildcard_policy_through_loader(Build::DynamicModule, "e2e-filter-wildcard-dm");
}

/// A governed TLS cluster of a hand-written config, verified by Envoy with `trusted_ca` and a
/// SAN matcher for `HOSTNAME`; `identity_checked_by` states that in the metadata when given.
fn governed_cluster(name: &str, port: u16, ca_path: &Path, checked_by: Option<&str>) -> Value {
    let extra = checked_by.map(|c| json!({ "identity_checked_by": c })).unwrap_or(json!({}));
    let mut cluster = config::static_cluster(name, port);
    cluster["metadata"] = config::backendtls_metadata(POLICY, HOSTNAME, "valid", extra);
    let validation = config::trusted_ca_file(ca_path, HOSTNAME);
    cluster["transport_socket"] = config::upstream_tls(HOSTNAME, "TLSv1_2", validation, json!({}));
    cluster
}

/// Issue 11: no Envoy worker waits on the network. The backend's matching SAN is not its first
/// (which is all Envoy's ABI shows the dynamic module), and a second connection to it would only
/// ever get empty TLS records, one every 100 ms. With one worker thread, a request to that
/// backend and then one to another backend both answer at once: the filter opens no connection
/// of its own (the old leaf fetch did, and held the worker). Without `identity_checked_by` the
/// filter cannot see a matching name and fails closed.
#[test]
fn dynamic_module_never_waits_on_a_backend() {
    let ca = TestCa::new("backendtls drip e2e CA");
    // TLS 1.2 is what the old leaf fetch needed to read a certificate; offer it.
    let nginx = Nginx::start(&ca.issue(&["first.example", HOSTNAME]));
    let drip = backendtls_e2e::drip::DripFront::start(nginx.https_port());
    let dir = tempfile::Builder::new().prefix("btls-filter-drip-").tempdir().expect("temp dir");
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).expect("write ca.crt");
    let (listener, admin) = (free_port(), free_port());
    let checked = Some(backendtls_contract::IdentityCheck::EnvoySanMatchers.as_str());
    let config = StaticBootstrap::new(
        admin,
        listener,
        "ACCESS %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n",
    )
    .route("/drip", "drip")
    .route("/direct", "direct")
    .route("/unstated", "unstated")
    .http_filter(Build::DynamicModule.http_filter("{}"))
    .cluster(governed_cluster("drip", drip.port(), &ca_path, checked))
    .cluster(governed_cluster("direct", nginx.https_port(), &ca_path, checked))
    .cluster(governed_cluster("unstated", nginx.https_port(), &ca_path, None))
    .yaml();
    let envoy = Envoy::start_with_workers(&config, admin, 1);

    let to_drip = std::thread::spawn(move || try_http_get(listener, HOSTNAME, "/drip"));
    wait_until("Envoy to connect to the dripping backend", TIMEOUT, || {
        (drip.connections() >= 1).then_some(()).ok_or(drip.connections())
    });
    // The one worker answers another backend meanwhile (the client gives up after 5 s).
    let direct = try_http_get(listener, HOSTNAME, "/direct").expect("the worker answers /direct");
    assert_eq!(direct, (200, NGINX_BODY.to_string()));
    let dripped = to_drip.join().expect("the /drip client").expect("the worker answers /drip");
    assert_eq!(dripped, (200, NGINX_BODY.to_string()));
    assert_eq!(drip.connections(), 1, "the filter connected to the backend on its own");

    let (status, body) = try_http_get(listener, HOSTNAME, "/unstated").expect("GET /unstated");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("does not match"), "{body}");
    assert!(
        envoy.log().contains("does not say that the handshake checked them"),
        "the refusal is explained in Envoy's log"
    );
}
