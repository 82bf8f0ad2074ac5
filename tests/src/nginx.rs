//! The one NGINX wrapper of the tests: a foreground NGINX (`master_process off`) on 127.0.0.1 with
//! one HTTPS server per [`TlsServer`] (TLS versions, client-certificate requirement and HTTP/2 per
//! server), each on its own port and answering `200 hello from nginx` to any path, logging the
//! port, SNI, status, scheme, TLS version, cipher, client subject, HTTP version and request line
//! of every request ([`BackendRequest`]).
//!
//! [`Backend`] is the wrapper; [`Nginx`] is the same process with one server and the
//! single-server API most tests use.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::certs::CertifiedKey;
use crate::ports::{free_port, port_accepts};
use crate::process::{print_tail_if_panicking, tail, ManagedChild};
use crate::wait::wait_until;

const NGINX_BIN: &str = "/usr/sbin/nginx";
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The body NGINX answers every request on its TLS ports with.
pub const NGINX_BODY: &str = "hello from nginx\n";

/// One HTTPS server block of a [`Backend`].
#[derive(Clone, Debug)]
pub struct TlsServer {
    cert: CertifiedKey,
    protocols: &'static str,
    client_ca_pem: Option<String>,
    http2: bool,
    benchmark: bool,
    /// No TLS at all: a port a policy wrongly points at.
    plaintext: bool,
}

impl TlsServer {
    /// TLS 1.2 and 1.3, no client certificate, HTTP/1.1 only.
    pub fn new(cert: &CertifiedKey) -> TlsServer {
        TlsServer {
            cert: cert.clone(),
            protocols: "TLSv1.2 TLSv1.3",
            client_ca_pem: None,
            http2: false,
            benchmark: false,
            plaintext: false,
        }
    }

    /// A plain HTTP server (no TLS): what a backend that was never given a certificate is.
    pub fn plaintext() -> TlsServer {
        let none = CertifiedKey { cert_pem: String::new(), key_pem: String::new() };
        TlsServer { plaintext: true, ..TlsServer::new(&none) }
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

    /// For benchmarks: no access log, and keep-alive connections never closed after a number of
    /// requests (`keepalive_requests 1000000`).
    pub fn for_benchmark(mut self) -> TlsServer {
        self.benchmark = true;
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

/// A foreground NGINX with one HTTPS server per [`TlsServer`], each on its own port.
pub struct Backend {
    dir: TempDir,
    servers: Vec<TlsServer>,
    ports: Vec<u16>,
    process: ManagedChild,
}

impl Backend {
    /// Each server on a free port; waits until every port accepts connections.
    pub fn start(servers: &[TlsServer]) -> Backend {
        Backend::start_on_ports(servers, servers.iter().map(|_| free_port()).collect())
    }

    /// Server `i` on `ports[i]`.
    pub fn start_on_ports(servers: &[TlsServer], ports: Vec<u16>) -> Backend {
        assert!(!servers.is_empty(), "a backend needs at least one server");
        assert_eq!(servers.len(), ports.len(), "one port per server");
        let dir = tempfile::Builder::new().prefix("btls-nginx-").tempdir().expect("nginx temp dir");
        let process = start_process(dir.path(), servers, &ports);
        Backend { dir, servers: servers.to_vec(), ports, process }
    }

    /// The port of server `index` (in the order given to [`Backend::start`]).
    pub fn port(&self, index: usize) -> u16 {
        self.ports[index]
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The directory holding `nginx.conf`, the certificates and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops NGINX gracefully (SIGTERM, then SIGKILL if it lingers).
    pub fn shutdown(&mut self) {
        self.process.stop();
    }

    /// Replaces server `index`'s certificate. NGINX without a master process cannot reload, so
    /// this restarts it on the same ports and waits until they accept connections again.
    pub fn replace_certificate(&mut self, index: usize, cert: &CertifiedKey) {
        self.process.stop();
        self.servers[index].cert = cert.clone();
        self.process = start_process(self.dir.path(), &self.servers, &self.ports);
    }

    pub fn requests(&self) -> Vec<BackendRequest> {
        self.read("access.log").lines().filter_map(parse_line).collect()
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

    pub fn error_log(&self) -> String {
        self.read("error.log")
    }

    /// Error log, access log and process output, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "nginx error.log:\n{}\nnginx access.log:\n{}\nnginx output:\n{}",
            tail(&self.read("error.log"), 20),
            tail(&self.read("access.log"), 40),
            self.process.log_tail(20)
        )
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        print_tail_if_panicking("nginx", &self.diagnostics(), 90);
    }
}

/// Writes the certificates and `nginx.conf` into `dir`, starts NGINX and waits for every port.
fn start_process(dir: &Path, servers: &[TlsServer], ports: &[u16]) -> ManagedChild {
    let mut blocks = String::new();
    for (index, (server, port)) in servers.iter().zip(ports).enumerate() {
        blocks.push_str(&server_block(dir, index, server, *port));
    }
    std::fs::write(dir.join("nginx.conf"), config(dir, &blocks)).expect("write nginx.conf");
    let mut process = spawn(dir);
    for port in ports {
        wait_until(&format!("nginx to listen on 127.0.0.1:{port}"), START_TIMEOUT, || {
            process.assert_running();
            port_accepts(*port).then_some(())
        });
    }
    process
}

/// Starts NGINX on the `nginx.conf` in `dir`, in the foreground, logging inside `dir`.
pub fn spawn(dir: &Path) -> ManagedChild {
    let mut command = Command::new(NGINX_BIN);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        // The error log named here is used before the config is read (the default is under /var).
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"]);
    ManagedChild::spawn("nginx", command, &dir.join("nginx.out"))
}

fn server_block(dir: &Path, index: usize, server: &TlsServer, port: u16) -> String {
    if server.plaintext {
        return format!(
            "    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n            \
             default_type text/plain;\n            return 200 {NGINX_BODY:?};\n        }}\n    }}\n"
        );
    }
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
    if server.benchmark {
        block.push_str("        access_log off;\n        keepalive_requests 1000000;\n");
    }
    if let Some(client_ca) = &server.client_ca_pem {
        let client_ca = write(format!("client-ca-{index}.crt"), client_ca);
        let _ = write!(
            block,
            "        ssl_verify_client on;\n        ssl_client_certificate {client_ca};\n"
        );
    }
    let _ = write!(
        block,
        "        location / {{\n            default_type text/plain;\n            \
         return 200 {NGINX_BODY:?};\n        }}\n    }}\n"
    );
    block
}

/// Everything NGINX writes stays inside `dir`, so it runs as root without /var/lib/nginx.
fn config(dir: &Path, servers: &str) -> String {
    let dir = dir.display();
    format!(
        "master_process off;\nworker_processes 1;\nerror_log {dir}/error.log info;\n\
         pid {dir}/nginx.pid;\nevents {{ worker_connections 1024; }}\nhttp {{\n    \
         log_format btls '{LOG_FORMAT}';\n    access_log {dir}/access.log btls;\n    \
         client_body_temp_path {dir}/client_body;\n    proxy_temp_path {dir}/proxy;\n    \
         fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n    \
         scgi_temp_path {dir}/scgi;\n{servers}}}\n"
    )
}

fn parse_line(line: &str) -> Option<BackendRequest> {
    let fields: Vec<&str> = line.splitn(LOG_FIELDS, '|').collect();
    let [port, sni, status, scheme, tls_version, cipher, client_subject, http_version, request] =
        fields[..]
    else {
        return None;
    };
    // NGINX logs an unset variable as `-`.
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

/// One request as the single-server [`Nginx`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLine {
    /// The SNI the client sent ("" when none, or when the request was not TLS).
    pub sni: String,
    pub status: u16,
    pub request: String,
    /// `https` for requests that arrived over TLS, `http` for plaintext sent to the TLS port.
    pub scheme: String,
}

impl AccessLine {
    /// True for a request that reached NGINX without TLS (NGINX answers those with 400).
    pub fn is_plaintext(&self) -> bool {
        self.scheme != "https" || self.status == 400
    }
}

impl From<BackendRequest> for AccessLine {
    fn from(r: BackendRequest) -> AccessLine {
        AccessLine { sni: r.sni, status: r.status, request: r.request, scheme: r.scheme }
    }
}

/// A [`Backend`] with one HTTPS server (TLS 1.2 and 1.3) and the single-server API.
pub struct Nginx(Backend);

impl Nginx {
    /// Starts NGINX on a free port with `server_cert` and waits until the port accepts connections.
    pub fn start(server_cert: &CertifiedKey) -> Nginx {
        Nginx::start_on_port(free_port(), server_cert)
    }

    pub fn start_on_port(https_port: u16, server_cert: &CertifiedKey) -> Nginx {
        Nginx(Backend::start_on_ports(&[TlsServer::new(server_cert)], vec![https_port]))
    }

    pub fn https_port(&self) -> u16 {
        self.0.port(0)
    }

    /// The directory holding `nginx.conf`, the certificate and the logs.
    pub fn dir(&self) -> &Path {
        self.0.dir()
    }

    /// Stops NGINX gracefully (SIGTERM, then SIGKILL if it lingers).
    pub fn shutdown(&mut self) {
        self.0.shutdown();
    }

    /// Replaces the served certificate (a restart on the same port, see
    /// [`Backend::replace_certificate`]).
    pub fn replace_certificate(&mut self, server_cert: &CertifiedKey) {
        self.0.replace_certificate(0, server_cert);
    }

    pub fn access_log_lines(&self) -> Vec<AccessLine> {
        self.0.requests().into_iter().map(AccessLine::from).collect()
    }

    /// Requests that reached NGINX as plaintext (they must never happen while a policy applies).
    pub fn plaintext_requests(&self) -> Vec<AccessLine> {
        self.access_log_lines().into_iter().filter(AccessLine::is_plaintext).collect()
    }

    pub fn error_log(&self) -> String {
        self.0.error_log()
    }

    /// Error log, access log and process output, for failure messages.
    pub fn diagnostics(&self) -> String {
        self.0.diagnostics()
    }

    /// The underlying [`Backend`] (every field of every request).
    pub fn backend(&self) -> &Backend {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_a_pipe_in_the_request() {
        let line = concat!(
            "40443|abc.example.com|200|https|TLSv1.3|TLS_AES_128_GCM_SHA256|-|HTTP/1.1|",
            "GET /a|b HTTP/1.1"
        );
        let request = parse_line(line).expect("parses");
        assert_eq!(request.port, 40443);
        assert_eq!(request.client_subject, "");
        assert_eq!(request.request, "GET /a|b HTTP/1.1");
        assert_eq!(request.path(), "/a|b");
        assert!(!request.is_plaintext());
    }
}
