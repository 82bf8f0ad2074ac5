//! An NGINX HTTPS backend on 127.0.0.1 that logs the SNI, status, request and scheme it saw.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::certs::CertifiedKey;
use crate::ports::{free_port, port_accepts};
use crate::process::{print_tail_if_panicking, ManagedChild};
use crate::wait::wait_until;

const NGINX_BIN: &str = "/usr/sbin/nginx";
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The body NGINX answers every request on its TLS port with.
pub const NGINX_BODY: &str = "hello from nginx\n";

/// One access log line: `$ssl_server_name|$status|$request|$scheme`.
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

/// A foreground NGINX (`master_process off`) serving HTTPS with a given certificate.
pub struct Nginx {
    dir: TempDir,
    https_port: u16,
    process: ManagedChild,
}

impl Nginx {
    /// Starts NGINX on a free port with `server_cert` and waits until the port accepts connections.
    pub fn start(server_cert: &CertifiedKey) -> Nginx {
        Nginx::start_on_port(free_port(), server_cert)
    }

    pub fn start_on_port(https_port: u16, server_cert: &CertifiedKey) -> Nginx {
        let dir = tempfile::Builder::new().prefix("btls-nginx-").tempdir().expect("nginx temp dir");
        write_certificate(dir.path(), server_cert);
        std::fs::write(dir.path().join("nginx.conf"), config(dir.path(), https_port))
            .expect("write nginx.conf");
        let process = spawn(dir.path());
        let mut nginx = Nginx { dir, https_port, process };
        nginx.wait_until_listening();
        nginx
    }

    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// The directory holding `nginx.conf`, the certificate and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops NGINX gracefully (SIGTERM, then SIGKILL if it lingers).
    pub fn shutdown(&mut self) {
        self.process.stop();
    }

    /// Replaces the served certificate. NGINX without a master process cannot reload, so this
    /// restarts it on the same port and waits until it accepts connections again.
    pub fn replace_certificate(&mut self, server_cert: &CertifiedKey) {
        self.process.stop();
        write_certificate(self.dir.path(), server_cert);
        self.process = spawn(self.dir.path());
        self.wait_until_listening();
    }

    pub fn access_log_lines(&self) -> Vec<AccessLine> {
        std::fs::read_to_string(self.access_log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(parse_access_line)
            .collect()
    }

    /// Requests that reached NGINX as plaintext (they must never happen while a policy applies).
    pub fn plaintext_requests(&self) -> Vec<AccessLine> {
        self.access_log_lines().into_iter().filter(AccessLine::is_plaintext).collect()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Error log, access log and process output, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "nginx error.log:\n{}\nnginx access.log:\n{}\nnginx output:\n{}",
            crate::process::tail(&self.error_log(), 20),
            crate::process::tail(
                &std::fs::read_to_string(self.access_log_path()).unwrap_or_default(),
                30
            ),
            self.process.log_tail(20)
        )
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn wait_until_listening(&mut self) {
        let port = self.https_port;
        let process = &mut self.process;
        wait_until(&format!("nginx to listen on 127.0.0.1:{port}"), START_TIMEOUT, || {
            process.assert_running();
            port_accepts(port).then_some(())
        });
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        print_tail_if_panicking("nginx", &self.diagnostics(), 80);
    }
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

fn write_certificate(dir: &Path, server_cert: &CertifiedKey) {
    std::fs::write(dir.join("server.crt"), &server_cert.cert_pem).expect("write server.crt");
    std::fs::write(dir.join("server.key"), &server_cert.key_pem).expect("write server.key");
}

/// Everything NGINX writes stays inside `dir`, so it runs as root without /var/lib/nginx.
fn config(dir: &Path, https_port: u16) -> String {
    let dir = dir.display();
    format!(
        r#"master_process off;
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format btls '$ssl_server_name|$status|$request|$scheme';
    access_log {dir}/access.log btls;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {dir}/server.crt;
        ssl_certificate_key {dir}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            default_type text/plain;
            return 200 "hello from nginx\n";
        }}
    }}
}}
"#
    )
}

/// Splits from both ends so a `|` inside the request line cannot shift the scheme.
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let (sni, rest) = line.split_once('|')?;
    let (status, rest) = rest.split_once('|')?;
    let (request, scheme) = rest.rsplit_once('|')?;
    Some(AccessLine {
        sni: normalize_empty(sni),
        status: status.parse().ok()?,
        request: request.to_string(),
        scheme: scheme.to_string(),
    })
}

/// NGINX logs an unset variable as `-`.
fn normalize_empty(field: &str) -> String {
    if field == "-" {
        String::new()
    } else {
        field.to_string()
    }
}
