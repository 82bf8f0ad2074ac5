//! Support for the BackendTLSPolicy end-to-end tests (`tests/tests/policy.rs`), which mirror the
//! Gateway API conformance tests and this implementation's own promises.
//!
//! - [`Pki`]: the conformance certificates (a CA, a backend certificate with CN `default`, DNS
//!   SANs `abc.example.com` and `other.example.com` and URI SAN
//!   `spiffe://abc.example.com/test-identity`, an unrelated "mismatch" CA) plus a client CA and a
//!   client certificate for backend mTLS.
//! - [`Backend`]: one NGINX process with one or more HTTPS servers (TLS versions,
//!   client-certificate requirement and HTTP/2 per server) that logs SNI, TLS version, cipher,
//!   client subject and HTTP version of every request.
//! - [`ConfigDir`] and the YAML builders ([`gateway_yaml`], [`Route`], [`service_yaml`],
//!   [`Policy`], ...): the loader's input, written atomically.
//! - [`PolicyStack`]: NGINX, the loader and an Envoy fed over ADS, with request helpers.
//! - [`Status`]: reading `/status` (and `check -o json`) as the Kubernetes status it stands for.
//! - [`run_check`]: `backendtls-loader check`.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::certs::CertifiedKey;
use crate::envoy::Envoy;
use crate::http::try_http_get;
use crate::loader::{ads_bootstrap, Ads, Loader};
use crate::paths::loader_bin;
use crate::ports::{free_port, port_accepts};
use crate::process::{print_tail_if_panicking, tail, ManagedChild};
use crate::wait::wait_until;

/// The namespace every object lives in, as in the conformance suite.
pub const NS: &str = "gateway-conformance-infra";
/// The Gateway the routes attach to (HTTP listener), as in the conformance suite.
pub const GATEWAY: &str = "same-namespace";
/// The route hostname and the Host header of every request the tests send.
pub const ROUTE_HOST: &str = "abc.example.com";
/// ConfigMap holding the CA that signed the backend certificate.
pub const CA_CONFIG_MAP: &str = "tls-checks-ca-certificate";
/// ConfigMap holding an unrelated CA.
pub const MISMATCH_CA_CONFIG_MAP: &str = "mismatch-ca-certificate";
/// The `controllerName` the loader writes into every ancestor entry.
pub const CONTROLLER_NAME: &str = "backendtls.dev/loader";
/// The body prefix of the loader's fail-closed answers.
pub const FAIL_CLOSED_PREFIX: &str = "backendtls: ";
/// File watching, debouncing, an xDS push and Envoy applying it, on a busy machine.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many requests make an outcome "consistent".
pub const CONSISTENT_REQUESTS: usize = 10;

/// The Service port every single-port test Service has (named `btls`, as in conformance).
pub const BTLS_PORT: u16 = 443;
pub const BTLS_PORT_NAME: &str = "btls";

// ---------------------------------------------------------------------------------------------
// Certificates

/// The harness's CA, which issues server certificates with any SANs and client certificates.
pub use crate::certs::TestCa as Ca;

/// The subject NGINX logs (`$ssl_client_s_dn`) for [`Pki::client_cert`].
pub const CLIENT_COMMON_NAME: &str = "backendtls e2e gateway client";
pub const BACKEND_DNS_SANS: [&str; 2] = ["abc.example.com", "other.example.com"];
pub const BACKEND_URI_SAN: &str = "spiffe://abc.example.com/test-identity";

/// The conformance suite's certificates, plus a client CA and a client certificate.
pub struct Pki {
    /// Signed the backend certificate; held by ConfigMap [`CA_CONFIG_MAP`].
    pub ca: Ca,
    /// Trusts nothing the backend presents; held by ConfigMap [`MISMATCH_CA_CONFIG_MAP`].
    pub mismatch_ca: Ca,
    /// CN `default`, DNS SANs abc.example.com and other.example.com, URI SAN
    /// spiffe://abc.example.com/test-identity.
    pub backend_cert: CertifiedKey,
    /// Signed [`Pki::client_cert`]; NGINX requires client certificates from it when asked to.
    pub client_ca: Ca,
    pub client_cert: CertifiedKey,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("backendtls e2e conformance CA");
        let backend_cert = ca.issue_server("default", &BACKEND_DNS_SANS, &[BACKEND_URI_SAN]);
        let client_ca = Ca::new("backendtls e2e client CA");
        let client_cert = client_ca.issue_client(CLIENT_COMMON_NAME);
        Pki {
            ca,
            mismatch_ca: Ca::new("backendtls e2e mismatch CA"),
            backend_cert,
            client_ca,
            client_cert,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

// ---------------------------------------------------------------------------------------------
// NGINX backend

const NGINX_START_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTPS server block of a [`Backend`].
#[derive(Clone, Debug)]
pub struct TlsServer {
    cert: CertifiedKey,
    protocols: &'static str,
    client_ca_pem: Option<String>,
    http2: bool,
}

impl TlsServer {
    /// TLS 1.2 and 1.3, no client certificate, HTTP/1.1 only.
    pub fn new(cert: &CertifiedKey) -> TlsServer {
        TlsServer {
            cert: cert.clone(),
            protocols: "TLSv1.2 TLSv1.3",
            client_ca_pem: None,
            http2: false,
        }
    }

    /// Accepts TLS 1.2 only.
    pub fn tls12_only(mut self) -> TlsServer {
        self.protocols = "TLSv1.2";
        self
    }

    /// `ssl_verify_client on` with `ca_pem` as the client CA: requests without a valid client
    /// certificate get 400 from NGINX.
    pub fn require_client_certificate(mut self, ca_pem: &str) -> TlsServer {
        self.client_ca_pem = Some(ca_pem.to_string());
        self
    }

    /// Offers `h2` by ALPN (and HTTP/1.1 without ALPN or with `http/1.1`).
    pub fn http2(mut self) -> TlsServer {
        self.http2 = true;
        self
    }
}

/// One access log line of a [`Backend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRequest {
    /// The NGINX port the request arrived on.
    pub port: u16,
    /// The SNI the client sent ("" when none).
    pub sni: String,
    pub status: u16,
    pub scheme: String,
    /// `TLSv1.2`, `TLSv1.3`, or "" for a request that did not arrive over TLS.
    pub tls_version: String,
    /// OpenSSL cipher name ("" without TLS).
    pub cipher: String,
    /// The verified client certificate's subject (RFC 2253), "" when none was presented.
    pub client_subject: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: String,
    /// The request line.
    pub request: String,
}

impl BackendRequest {
    /// A request that reached NGINX without TLS: it must never happen while a policy applies.
    pub fn is_plaintext(&self) -> bool {
        self.scheme != "https" || self.tls_version.is_empty()
    }

    /// The request path, from the request line.
    pub fn path(&self) -> &str {
        self.request.split_whitespace().nth(1).unwrap_or("")
    }
}

/// `$server_port|$ssl_server_name|$status|$scheme|$ssl_protocol|$ssl_cipher|$ssl_client_s_dn|
/// $server_protocol|$request`; the request line is last so a `|` in it cannot shift fields.
const LOG_FORMAT: &str = concat!(
    "$server_port|$ssl_server_name|$status|$scheme|$ssl_protocol|$ssl_cipher|",
    "$ssl_client_s_dn|$server_protocol|$request"
);
const LOG_FIELDS: usize = 9;

/// A foreground NGINX (`master_process off`) with one HTTPS server per [`TlsServer`], each on its
/// own free port, every server answering `200 hello from nginx` to any path.
pub struct Backend {
    dir: TempDir,
    ports: Vec<u16>,
    process: ManagedChild,
}

impl Backend {
    pub fn start(servers: &[TlsServer]) -> Backend {
        assert!(!servers.is_empty(), "a backend needs at least one server");
        let dir = tempfile::Builder::new().prefix("btls-backend-").tempdir().expect("temp dir");
        let ports: Vec<u16> = servers.iter().map(|_| free_port()).collect();
        let mut blocks = String::new();
        for (index, (server, port)) in servers.iter().zip(&ports).enumerate() {
            blocks.push_str(&server_block(dir.path(), index, server, *port));
        }
        std::fs::write(dir.path().join("nginx.conf"), nginx_config(dir.path(), &blocks))
            .expect("write nginx.conf");
        let process = crate::nginx::spawn(dir.path());
        let mut backend = Backend { dir, ports, process };
        for port in backend.ports.clone() {
            let process = &mut backend.process;
            wait_until(
                &format!("nginx to listen on 127.0.0.1:{port}"),
                NGINX_START_TIMEOUT,
                || {
                    process.assert_running();
                    port_accepts(port).then_some(())
                },
            );
        }
        backend
    }

    /// The port of server `index` (in the order given to [`Backend::start`]).
    pub fn port(&self, index: usize) -> u16 {
        self.ports[index]
    }

    pub fn requests(&self) -> Vec<BackendRequest> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(parse_backend_line)
            .collect()
    }

    /// Requests whose path is `path` or starts with `path/`.
    pub fn requests_to(&self, path: &str) -> Vec<BackendRequest> {
        self.requests()
            .into_iter()
            .filter(|request| {
                let got = request.path();
                got == path || got.starts_with(&format!("{path}/"))
            })
            .collect()
    }

    pub fn plaintext_requests(&self) -> Vec<BackendRequest> {
        self.requests().into_iter().filter(BackendRequest::is_plaintext).collect()
    }

    pub fn diagnostics(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "nginx error.log:\n{}\nnginx access.log:\n{}\nnginx output:\n{}",
            tail(&read("error.log"), 20),
            tail(&read("access.log"), 40),
            self.process.log_tail(20)
        )
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        print_tail_if_panicking("nginx backend", &self.diagnostics(), 90);
    }
}

fn server_block(dir: &Path, index: usize, server: &TlsServer, port: u16) -> String {
    let write = |name: String, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.display().to_string()
    };
    let cert = write(format!("server-{index}.crt"), &server.cert.cert_pem);
    let key = write(format!("server-{index}.key"), &server.cert.key_pem);
    let http2 = if server.http2 { " http2" } else { "" };
    let mut block = format!(
        "    server {{\n        listen 127.0.0.1:{port} ssl{http2};\n        \
         ssl_certificate {cert};\n        ssl_certificate_key {key};\n        \
         ssl_protocols {};\n",
        server.protocols
    );
    if let Some(client_ca) = &server.client_ca_pem {
        let client_ca = write(format!("client-ca-{index}.crt"), client_ca);
        let _ = write!(
            block,
            "        ssl_verify_client on;\n        ssl_client_certificate {client_ca};\n"
        );
    }
    block.push_str(
        "        location / {\n            default_type text/plain;\n            \
         return 200 \"hello from nginx\\n\";\n        }\n    }\n",
    );
    block
}

/// Everything NGINX writes stays inside `dir`, so it runs as root without /var/lib/nginx.
fn nginx_config(dir: &Path, servers: &str) -> String {
    let dir = dir.display();
    format!(
        "master_process off;\nworker_processes 1;\nerror_log {dir}/error.log info;\n\
         pid {dir}/nginx.pid;\nevents {{ worker_connections 256; }}\nhttp {{\n    \
         log_format btls '{LOG_FORMAT}';\n    access_log {dir}/access.log btls;\n    \
         client_body_temp_path {dir}/client_body;\n    proxy_temp_path {dir}/proxy;\n    \
         fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n    \
         scgi_temp_path {dir}/scgi;\n{servers}}}\n"
    )
}

fn parse_backend_line(line: &str) -> Option<BackendRequest> {
    let fields: Vec<&str> = line.splitn(LOG_FIELDS, '|').collect();
    let [port, sni, status, scheme, tls_version, cipher, client_subject, http_version, request] =
        fields[..]
    else {
        return None;
    };
    let field = |value: &str| if value == "-" { String::new() } else { value.to_string() };
    Some(BackendRequest {
        port: port.parse().ok()?,
        sni: field(sni),
        status: status.parse().ok()?,
        scheme: field(scheme),
        tls_version: field(tls_version),
        cipher: field(cipher),
        client_subject: field(client_subject),
        http_version: field(http_version),
        request: request.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// The loader's input

/// A temporary directory of manifests the loader reads and watches.
pub struct ConfigDir {
    dir: TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir {
            dir: tempfile::Builder::new()
                .prefix("btls-policy-config-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` atomically: a hidden temporary file (the loader skips
    /// dotfiles) renamed into place, so the loader never reads half a file.
    pub fn write(&self, name: &str, contents: &str) {
        let temporary = self.dir.path().join(format!(".tmp-{name}"));
        std::fs::write(&temporary, contents)
            .unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
        let path = self.dir.path().join(name);
        std::fs::rename(&temporary, &path).unwrap_or_else(|e| {
            panic!("rename {} to {}: {e}", temporary.display(), path.display())
        });
    }

    pub fn remove(&self, name: &str) {
        let path = self.dir.path().join(name);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("delete {}: {e}", path.display()));
    }
}

impl Default for ConfigDir {
    fn default() -> Self {
        ConfigDir::new()
    }
}

/// Joins YAML documents into one multi-document file.
pub fn documents<S: AsRef<str>>(documents: &[S]) -> String {
    documents
        .iter()
        .map(|document| document.as_ref().trim_end().to_string() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A Gateway in [`NS`] with one HTTP listener on `port` (routes from its own namespace).
pub fn gateway_yaml(name: &str, port: u16) -> String {
    gateway_yaml_with_client_certificate(name, port, None)
}

/// Like [`gateway_yaml`], with `spec.tls.backend.clientCertificateRef` naming Secret
/// `client_certificate_secret` when given.
pub fn gateway_yaml_with_client_certificate(
    name: &str,
    port: u16,
    client_certificate_secret: Option<&str>,
) -> String {
    let tls = match client_certificate_secret {
        Some(secret) => format!(
            "  tls:\n    backend:\n      clientCertificateRef:\n        kind: Secret\n        \
             name: {secret}\n"
        ),
        None => String::new(),
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  \
         namespace: {NS}\nspec:\n  gatewayClassName: backendtls\n{tls}  listeners:\n  \
         - name: http\n    protocol: HTTP\n    port: {port}\n    allowedRoutes:\n      \
         namespaces:\n        from: Same\n"
    )
}

/// An HTTPRoute in [`NS`] for host [`ROUTE_HOST`]: one `PathPrefix` rule per backend.
pub struct Route {
    name: String,
    parents: Vec<String>,
    rules: Vec<(String, String, u16)>,
}

impl Route {
    /// A route attached to Gateway [`GATEWAY`].
    pub fn new(name: &str) -> Route {
        Route { name: name.to_string(), parents: vec![GATEWAY.to_string()], rules: Vec::new() }
    }

    /// Attaches to Gateway `gateway` instead of (or, called again, besides) the default.
    pub fn parents(mut self, gateways: &[&str]) -> Route {
        self.parents = gateways.iter().map(|gateway| gateway.to_string()).collect();
        self
    }

    /// `PathPrefix path` -> Service `service` port `port`.
    pub fn rule(mut self, path: &str, service: &str, port: u16) -> Route {
        self.rules.push((path.to_string(), service.to_string(), port));
        self
    }

    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {}\n  \
             namespace: {NS}\nspec:\n  parentRefs:\n",
            self.name
        );
        for parent in &self.parents {
            let _ = writeln!(yaml, "  - name: {parent}");
        }
        let _ = write!(yaml, "  hostnames:\n  - {ROUTE_HOST}\n  rules:\n");
        for (path, service, port) in &self.rules {
            let _ = write!(
                yaml,
                "  - matches:\n    - path:\n        type: PathPrefix\n        value: {path}\n    \
                 backendRefs:\n    - name: {service}\n      port: {port}\n"
            );
        }
        yaml
    }
}

/// A Service in [`NS`] with the named `ports` (name, Service port) and, unless `backend_port` is
/// `None`, an EndpointSlice sending every one of those port names to 127.0.0.1:`backend_port`.
pub fn service_yaml(name: &str, ports: &[(&str, u16)], backend_port: Option<u16>) -> String {
    let mut service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  \
         selector:\n    app: tls-backend\n  ports:\n"
    );
    for (port_name, port) in ports {
        let _ = write!(
            service,
            "  - name: {port_name}\n    port: {port}\n    targetPort: 8443\n    protocol: TCP\n"
        );
    }
    let Some(backend_port) = backend_port else {
        return service;
    };
    let mut slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-local\n  \
         namespace: {NS}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\n\
         endpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions:\n    ready: true\nports:\n"
    );
    for (port_name, _) in ports {
        let _ = write!(slice, "- name: {port_name}\n  port: {backend_port}\n  protocol: TCP\n");
    }
    documents(&[service, slice])
}

/// The usual single-port test Service: port [`BTLS_PORT`] named [`BTLS_PORT_NAME`].
pub fn btls_service_yaml(name: &str, backend_port: u16) -> String {
    service_yaml(name, &[(BTLS_PORT_NAME, BTLS_PORT)], Some(backend_port))
}

/// A ConfigMap in [`NS`] with the given `data` entries (values written as YAML block or quoted
/// scalars as needed); no entries gives `data: {}`.
pub fn config_map_yaml(name: &str, data: &[(&str, &str)]) -> String {
    let mut yaml =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {NS}\n");
    if data.is_empty() {
        yaml.push_str("data: {}\n");
        return yaml;
    }
    yaml.push_str("data:\n");
    for (key, value) in data {
        yaml.push_str(&yaml_entry(key, value, 2));
    }
    yaml
}

/// ConfigMap `name` with the PEM bundle `ca_pem` under `ca.crt`.
pub fn ca_config_map_yaml(name: &str, ca_pem: &str) -> String {
    config_map_yaml(name, &[("ca.crt", ca_pem)])
}

/// A Secret in [`NS`] with `ca_pem` under `ca.crt` (base64 in `data`, as the API stores it).
pub fn ca_secret_yaml(name: &str, ca_pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         type: Opaque\ndata:\n  ca.crt: {}\n",
        base64(ca_pem.as_bytes())
    )
}

/// A `kubernetes.io/tls` Secret in [`NS`] with `tls.crt` and `tls.key` (base64 in `data`).
pub fn tls_secret_yaml(name: &str, cert: &CertifiedKey) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        base64(cert.cert_pem.as_bytes()),
        base64(cert.key_pem.as_bytes())
    )
}

/// `key: value` at `indent`, as a literal block for multi-line values and a quoted scalar else.
fn yaml_entry(key: &str, value: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    if value.contains('\n') {
        let body: String = value.lines().map(|line| format!("{pad}  {line}\n")).collect();
        format!("{pad}{key}: |\n{body}")
    } else {
        format!("{pad}{key}: {}\n", serde_json::to_string(value).expect("JSON string"))
    }
}

/// Standard base64 with padding (Secret `data` values).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, byte)| acc | (u32::from(*byte) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((triple >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A BackendTLSPolicy (`gateway.networking.k8s.io/v1`) in [`NS`], built field by field.
#[derive(Clone, Debug)]
pub struct Policy {
    name: String,
    generation: Option<i64>,
    creation_timestamp: Option<String>,
    targets: Vec<(String, Option<String>)>,
    ca_refs: Vec<(String, String, String)>,
    well_known_ca_certificates: Option<String>,
    hostname: String,
    subject_alt_names: Vec<(&'static str, String)>,
    options: Vec<(String, String)>,
}

impl Policy {
    /// A policy for the whole Service `service`, hostname [`ROUTE_HOST`], CA [`CA_CONFIG_MAP`].
    pub fn new(name: &str, service: &str) -> Policy {
        Policy {
            name: name.to_string(),
            generation: None,
            creation_timestamp: None,
            targets: vec![(service.to_string(), None)],
            ca_refs: vec![(String::new(), "ConfigMap".to_string(), CA_CONFIG_MAP.to_string())],
            well_known_ca_certificates: None,
            hostname: ROUTE_HOST.to_string(),
            subject_alt_names: Vec::new(),
            options: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Targets only port `section_name` of the (first) Service.
    pub fn section(mut self, section_name: &str) -> Policy {
        self.targets[0].1 = Some(section_name.to_string());
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Policy {
        self.hostname = hostname.to_string();
        self
    }

    /// Replaces the CA refs with one ConfigMap ref.
    pub fn ca_config_map(self, name: &str) -> Policy {
        self.ca_ref("", "ConfigMap", name)
    }

    /// Replaces the CA refs with one ref of any group and kind.
    pub fn ca_ref(mut self, group: &str, kind: &str, name: &str) -> Policy {
        self.ca_refs = vec![(group.to_string(), kind.to_string(), name.to_string())];
        self
    }

    /// Adds a CA ref after the ones already there.
    pub fn also_ca_ref(mut self, group: &str, kind: &str, name: &str) -> Policy {
        self.ca_refs.push((group.to_string(), kind.to_string(), name.to_string()));
        self
    }

    /// Replaces the CA refs with `wellKnownCACertificates: <value>`.
    pub fn well_known_ca_certificates(mut self, value: &str) -> Policy {
        self.ca_refs.clear();
        self.well_known_ca_certificates = Some(value.to_string());
        self
    }

    pub fn generation(mut self, generation: i64) -> Policy {
        self.generation = Some(generation);
        self
    }

    pub fn created(mut self, timestamp: &str) -> Policy {
        self.creation_timestamp = Some(timestamp.to_string());
        self
    }

    pub fn san_hostname(mut self, hostname: &str) -> Policy {
        self.subject_alt_names.push(("Hostname", hostname.to_string()));
        self
    }

    pub fn san_uri(mut self, uri: &str) -> Policy {
        self.subject_alt_names.push(("URI", uri.to_string()));
        self
    }

    pub fn option(mut self, key: &str, value: &str) -> Policy {
        self.options.push((key.to_string(), value.to_string()));
        self
    }

    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata:\n  \
             name: {}\n  namespace: {NS}\n",
            self.name
        );
        if let Some(generation) = self.generation {
            let _ = writeln!(yaml, "  generation: {generation}");
        }
        if let Some(timestamp) = &self.creation_timestamp {
            let _ = writeln!(yaml, "  creationTimestamp: \"{timestamp}\"");
        }
        yaml.push_str("spec:\n  targetRefs:\n");
        for (service, section) in &self.targets {
            let _ = write!(yaml, "  - group: \"\"\n    kind: Service\n    name: {service}\n");
            if let Some(section) = section {
                let _ = writeln!(yaml, "    sectionName: {section}");
            }
        }
        yaml.push_str("  validation:\n");
        if let Some(value) = &self.well_known_ca_certificates {
            let _ = writeln!(yaml, "    wellKnownCACertificates: \"{value}\"");
        }
        if !self.ca_refs.is_empty() {
            yaml.push_str("    caCertificateRefs:\n");
        }
        for (group, kind, name) in &self.ca_refs {
            let _ =
                write!(yaml, "    - group: \"{group}\"\n      kind: {kind}\n      name: {name}\n");
        }
        let _ = writeln!(yaml, "    hostname: {}", self.hostname);
        if !self.subject_alt_names.is_empty() {
            yaml.push_str("    subjectAltNames:\n");
            for (kind, value) in &self.subject_alt_names {
                let field = if *kind == "URI" { "uri" } else { "hostname" };
                let _ = write!(yaml, "    - type: {kind}\n      {field}: \"{value}\"\n");
            }
        }
        if !self.options.is_empty() {
            yaml.push_str("  options:\n");
            for (key, value) in &self.options {
                let _ = writeln!(yaml, "    {key}: \"{value}\"");
            }
        }
        yaml
    }
}

/// The objects most tests start from: Gateway [`GATEWAY`] on `gateway_port` and the two CA
/// ConfigMaps, written to `gateway.yaml` and `cas.yaml`.
pub fn write_base(config: &ConfigDir, pki: &Pki, gateway_port: u16) {
    config.write("gateway.yaml", &gateway_yaml(GATEWAY, gateway_port));
    config.write(
        "cas.yaml",
        &documents(&[
            ca_config_map_yaml(CA_CONFIG_MAP, pki.ca.cert_pem()),
            ca_config_map_yaml(MISMATCH_CA_CONFIG_MAP, pki.mismatch_ca.cert_pem()),
        ]),
    );
}

/// The cluster the loader makes for Service `service` port `port` in [`NS`].
pub fn cluster(service: &str, port: u16) -> String {
    format!("kube_{NS}_{service}_{port}")
}

// ---------------------------------------------------------------------------------------------
// Status

/// One condition as reported, with the ancestor entry it came from.
#[derive(Clone, Debug)]
pub struct Condition {
    pub ancestor_ref: Value,
    pub controller_name: Value,
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Value,
}

/// The loader's status document (`GET /status`, or `check -o json`).
#[derive(Clone, Debug)]
pub struct Status(pub Value);

impl Status {
    /// The policy entry `{namespace, name, status}` for [`NS`]/`name`.
    pub fn policy(&self, name: &str) -> Result<&Value, String> {
        self.0["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|policy| policy["namespace"] == NS && policy["name"] == name)
            .ok_or_else(|| format!("policy {NS}/{name} is not in the status: {}", self.0))
    }

    pub fn ancestors(&self, name: &str) -> Result<Vec<Value>, String> {
        let policy = self.policy(name)?;
        policy["status"]["ancestors"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("policy {NS}/{name} has no status.ancestors array: {policy}"))
    }

    /// Every condition of every ancestor entry of policy `name`.
    pub fn conditions(&self, name: &str) -> Result<Vec<Condition>, String> {
        let mut conditions = Vec::new();
        for ancestor in self.ancestors(name)? {
            for condition in ancestor["conditions"].as_array().into_iter().flatten() {
                conditions.push(Condition {
                    ancestor_ref: ancestor["ancestorRef"].clone(),
                    controller_name: ancestor["controllerName"].clone(),
                    kind: text(&condition["type"]),
                    status: text(&condition["status"]),
                    reason: text(&condition["reason"]),
                    message: text(&condition["message"]),
                    observed_generation: condition["observedGeneration"].clone(),
                });
            }
        }
        Ok(conditions)
    }

    /// Policy `name`'s condition `kind` in its ancestor entry for Gateway [`NS`]/[`GATEWAY`],
    /// the entry the conformance suite reads.
    pub fn gateway_condition(&self, name: &str, kind: &str) -> Result<Condition, String> {
        let conditions = self.conditions(name)?;
        conditions
            .iter()
            .find(|condition| {
                condition.kind == kind && is_gateway_ref(&condition.ancestor_ref, GATEWAY)
            })
            .cloned()
            .ok_or_else(|| {
                format!(
                    "policy {NS}/{name} has no {kind} condition for Gateway {GATEWAY}: {}",
                    self.policy(name).map(Value::to_string).unwrap_or_default()
                )
            })
    }

    /// The `gateways` entry for [`NS`]/`name`.
    pub fn gateway(&self, name: &str) -> Result<&Value, String> {
        self.0["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|gateway| gateway["namespace"] == NS && gateway["name"] == name)
            .ok_or_else(|| format!("gateway {NS}/{name} is not in the status gateways: {}", self.0))
    }

    /// Gateway `name`'s condition `kind`.
    pub fn gateway_status_condition(&self, name: &str, kind: &str) -> Result<Condition, String> {
        let gateway = self.gateway(name)?;
        gateway["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|condition| condition["type"] == kind)
            .map(|condition| Condition {
                ancestor_ref: Value::Null,
                controller_name: Value::Null,
                kind: kind.to_string(),
                status: text(&condition["status"]),
                reason: text(&condition["reason"]),
                message: text(&condition["message"]),
                observed_generation: condition["observedGeneration"].clone(),
            })
            .ok_or_else(|| format!("gateway {NS}/{name} has no {kind} condition: {gateway}"))
    }
}

fn text(value: &Value) -> String {
    value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string())
}

/// Whether `ancestor_ref` names Gateway [`NS`]/`gateway` (group and namespace may be defaulted).
pub fn is_gateway_ref(ancestor_ref: &Value, gateway: &str) -> bool {
    ancestor_ref["name"] == gateway
        && (ancestor_ref["kind"] == "Gateway" || ancestor_ref["kind"].is_null())
        && (ancestor_ref["namespace"] == NS || ancestor_ref["namespace"].is_null())
}

/// `Ok` when `condition` has `status` and (if given) `reason`; else a message saying what it has.
pub fn expect_condition(
    condition: &Condition,
    status: &str,
    reason: Option<&str>,
) -> Result<(), String> {
    let reason_ok = reason.is_none_or(|reason| condition.reason == reason);
    if condition.status == status && reason_ok {
        Ok(())
    } else {
        Err(format!(
            "expected {} {status}{}, got {} {} (message {:?})",
            condition.kind,
            reason.map(|r| format!("/{r}")).unwrap_or_default(),
            condition.status,
            condition.reason,
            condition.message
        ))
    }
}

/// Polls the loader's `/status` until policy `name` has condition `kind` = `status` (with `reason`
/// when given) under Gateway [`GATEWAY`]; returns that condition.
pub fn wait_for_policy_condition(
    loader: &Loader,
    name: &str,
    kind: &str,
    status: &str,
    reason: Option<&str>,
) -> Condition {
    wait_until(
        &format!(
            "policy {NS}/{name} to report {kind}={status}{} under Gateway {GATEWAY}",
            reason.map(|r| format!("/{r}")).unwrap_or_default()
        ),
        CONVERGE_TIMEOUT,
        || {
            let status_json = Status(loader.status());
            let condition = status_json.gateway_condition(name, kind)?;
            expect_condition(&condition, status, reason).map(|()| condition)
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The running stack

/// What a test prepares before anything runs: certificates, the NGINX backend, a config
/// directory holding the base objects ([`write_base`]) and the Gateway's port.
pub struct Fixture {
    pub pki: Pki,
    pub backend: Backend,
    pub config: ConfigDir,
    pub gateway_port: u16,
}

impl Fixture {
    /// One NGINX server presenting the conformance backend certificate.
    pub fn conformance() -> Fixture {
        Fixture::with_servers(|pki| vec![TlsServer::new(&pki.backend_cert)])
    }

    /// NGINX with the servers `servers` makes from the certificates.
    pub fn with_servers(servers: impl FnOnce(&Pki) -> Vec<TlsServer>) -> Fixture {
        let pki = Pki::new();
        let backend = Backend::start(&servers(&pki));
        let config = ConfigDir::new();
        let gateway_port = free_port();
        write_base(&config, &pki, gateway_port);
        Fixture { pki, backend, config, gateway_port }
    }

    /// The port of NGINX server `index`.
    pub fn backend_port(&self, index: usize) -> u16 {
        self.backend.port(index)
    }

    /// Starts the loader and Envoy on what has been written.
    pub fn start(self, node_id: &str) -> PolicyStack {
        PolicyStack::start(node_id, self.pki, self.backend, self.config, self.gateway_port)
    }
}

/// NGINX, the loader on a config directory and an Envoy fed by it over delta ADS.
/// Fields drop in declaration order: Envoy first, so it never reports a vanished loader.
pub struct PolicyStack {
    pub envoy: Envoy,
    pub loader: Loader,
    pub config: ConfigDir,
    pub backend: Backend,
    pub pki: Pki,
    pub gateway_port: u16,
}

impl PolicyStack {
    /// Starts the loader on `config` (already written) and an Envoy, and waits until Envoy is
    /// ready; `node_id` names this Envoy in the loader's `/xds`.
    pub fn start(
        node_id: &str,
        pki: Pki,
        backend: Backend,
        config: ConfigDir,
        gateway_port: u16,
    ) -> PolicyStack {
        let loader = Loader::start(config.path());
        let envoy_admin_port = free_port();
        let envoy = Envoy::start(
            &ads_bootstrap(loader.xds_port(), envoy_admin_port, node_id, Ads::Delta),
            envoy_admin_port,
        );
        PolicyStack { envoy, loader, config, backend, pki, gateway_port }
    }

    /// `GET path` (Host [`ROUTE_HOST`]) through the Gateway on a new connection.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        try_http_get(self.gateway_port, ROUTE_HOST, path)
    }

    /// Waits until `GET path` answers `status`; returns the body.
    pub fn wait_for_status(&self, path: &str, status: u16) -> String {
        wait_for_gateway_status(self.gateway_port, path, status)
    }

    /// Waits until `GET path` answers `status`, then asserts [`CONSISTENT_REQUESTS`] more do too;
    /// returns the bodies.
    pub fn assert_consistent_status(&self, path: &str, status: u16) -> Vec<String> {
        self.wait_for_status(path, status);
        (0..CONSISTENT_REQUESTS)
            .map(|round| match self.get(path) {
                Ok((got, body)) if got == status => body,
                other => panic!(
                    "GET {path}: request {round} after it first answered {status} got {other:?}; \
                     the outcome must be consistent"
                ),
            })
            .collect()
    }

    /// Polls `/status` until policy `name`'s condition `kind` is `status` (and `reason`).
    pub fn wait_for_condition(
        &self,
        name: &str,
        kind: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Condition {
        wait_for_policy_condition(&self.loader, name, kind, status, reason)
    }

    pub fn status(&self) -> Status {
        Status(self.loader.status())
    }

    /// `cluster.<kube_NS_service_port>.<suffix>` from Envoy's stats.
    pub fn cluster_stat(&self, service: &str, port: u16, suffix: &str) -> u64 {
        self.envoy.stat(&format!("cluster.{}.{suffix}", cluster(service, port)))
    }

    /// Backend requests whose path is `path`, after waiting until at least one arrived.
    pub fn wait_for_backend_requests(&self, path: &str) -> Vec<BackendRequest> {
        wait_until(&format!("nginx to log a request to {path}"), CONVERGE_TIMEOUT, || {
            let requests = self.backend.requests_to(path);
            (!requests.is_empty()).then_some(requests)
        })
    }

    pub fn assert_no_plaintext(&self) {
        assert_eq!(self.backend.plaintext_requests(), vec![], "plaintext reached the backend");
    }
}

/// Waits until `GET path` (Host [`ROUTE_HOST`]) on 127.0.0.1:`gateway_port` answers `status`.
pub fn wait_for_gateway_status(gateway_port: u16, path: &str, status: u16) -> String {
    wait_until(
        &format!("GET {path} (Host: {ROUTE_HOST}) on 127.0.0.1:{gateway_port} to answer {status}"),
        CONVERGE_TIMEOUT,
        || match try_http_get(gateway_port, ROUTE_HOST, path) {
            Ok((got, body)) if got == status => Ok(body),
            other => Err(other),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// `backendtls-loader check`

/// What one `backendtls-loader` run printed and how it exited.
#[derive(Debug)]
pub struct CheckRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CheckRun {
    /// stdout parsed as JSON; panics with both streams when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "check did not print JSON ({e}):\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `backendtls-loader <args>` and captures its exit code and output.
pub fn run_loader_command(args: &[&str]) -> CheckRun {
    let output = Command::new(loader_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("run backendtls-loader {args:?}: {e}"));
    CheckRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `backendtls-loader check --config-dir <dir> -o <format>`.
pub fn run_check(dir: &Path, format: &str) -> CheckRun {
    let dir = dir.to_str().expect("UTF-8 path");
    run_loader_command(&["check", "--config-dir", dir, "-o", format])
}

/// Parses YAML (the `check -o yaml` output) into JSON values.
pub fn yaml_to_json(yaml: &str) -> Value {
    serde_norway::from_str(yaml)
        .unwrap_or_else(|e| panic!("the output is not YAML: {e}\n--- input ---\n{yaml}"))
}

/// A path that certainly does not exist.
pub fn missing_dir() -> PathBuf {
    std::env::temp_dir().join(format!("btls-no-such-dir-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "base64({input:?})");
        }
    }

    #[test]
    fn backend_lines_parse_with_a_pipe_in_the_request() {
        let line = concat!(
            "40443|abc.example.com|200|https|TLSv1.3|TLS_AES_128_GCM_SHA256|-|HTTP/1.1|",
            "GET /a|b HTTP/1.1"
        );
        let request = parse_backend_line(line).expect("parses");
        assert_eq!(request.port, 40443);
        assert_eq!(request.client_subject, "");
        assert_eq!(request.request, "GET /a|b HTTP/1.1");
        assert_eq!(request.path(), "/a|b");
        assert!(!request.is_plaintext());
    }

    #[test]
    fn policy_yaml_has_every_field() {
        let yaml = Policy::new("p", "svc")
            .section("btls")
            .generation(2)
            .created("2024-01-01T00:00:00Z")
            .san_uri("spiffe://x/y")
            .option("backendtls.dev/min-tls-version", "1.3")
            .yaml();
        for needle in [
            "  generation: 2\n",
            "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n",
            "    sectionName: btls\n",
            "    - type: URI\n      uri: \"spiffe://x/y\"\n",
            "    backendtls.dev/min-tls-version: \"1.3\"\n",
            "    hostname: abc.example.com\n",
        ] {
            assert!(yaml.contains(needle), "{needle:?} missing from:\n{yaml}");
        }
    }
}
