//! The request side of the conformance harness: one HTTP/1.1 request per TCP connection
//! (`Connection: close`, as the upstream client disables keep-alive), over plaintext or TLS, with a
//! 10 s budget for the whole exchange; the answer's status, every header and the body.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::certs::CertifiedKey;
use crate::echo::tls::certificates;
use crate::echo::EchoReport;

/// The upstream harness's per-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger bodies are cut (the echo's answers are a few KiB).
const MAX_BODY: usize = 4 << 20;

/// A Gateway listener to send requests to: an address, and for HTTPS listeners the trust root.
#[derive(Clone)]
pub struct Gateway {
    address: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
}

impl Gateway {
    /// A plaintext HTTP listener.
    pub fn http(address: SocketAddr) -> Gateway {
        Gateway { address, tls: None }
    }

    /// An HTTPS listener whose certificate chains to `root_pem` (the upstream client trusts
    /// only the listener Secret's `tls.crt`). The SNI is the request's host without its port,
    /// unless the request sets one ([`Request::sni`]).
    pub fn https(address: SocketAddr, root_pem: &str) -> Gateway {
        Gateway::tls(address, root_pem, None)
    }

    /// An HTTPS listener that asks for client certificates: as [`Gateway::https`], presenting
    /// `client` (chain PEM and key) when asked.
    pub fn https_with_client_certificate(
        address: SocketAddr,
        root_pem: &str,
        client: &CertifiedKey,
    ) -> Gateway {
        Gateway::tls(address, root_pem, Some(client))
    }

    fn tls(address: SocketAddr, root_pem: &str, client: Option<&CertifiedKey>) -> Gateway {
        let mut roots = RootCertStore::empty();
        for cert in certificates(root_pem) {
            roots.add(cert).expect("trust root is usable");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
                    .expect("client key is PEM");
                builder
                    .with_client_auth_cert(certificates(&client.cert_pem), key)
                    .expect("client certificate matches its key")
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Gateway { address, tls: Some(Arc::new(config)) }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The Host a request without one gets: the address, with the port unless it is the
    /// scheme's default (the upstream client's `CalculateHost`).
    pub fn default_host(&self) -> String {
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let ip = match self.address.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        if self.address.port() == default_port {
            ip
        } else {
            format!("{ip}:{}", self.address.port())
        }
    }
}

/// 127.0.0.1:`port`, plaintext.
impl From<u16> for Gateway {
    fn from(port: u16) -> Gateway {
        Gateway::http(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }
}

impl From<SocketAddr> for Gateway {
    fn from(address: SocketAddr) -> Gateway {
        Gateway::http(address)
    }
}

impl From<&Gateway> for Gateway {
    fn from(gateway: &Gateway) -> Gateway {
        gateway.clone()
    }
}

/// One request, as the upstream `Request` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The Host header; `None`: [`Gateway::default_host`].
    pub host: Option<String>,
    /// The raw request target, query included, sent as written.
    pub path: String,
    /// Sent in order, names as written (so a test can send lower-case or odd-case names).
    pub headers: Vec<(String, String)>,
    /// The SNI for HTTPS listeners; `None`: the host without its port.
    pub sni: Option<String>,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            host: None,
            path: path.into(),
            headers: Vec::new(),
            sni: None,
        }
    }

    pub fn method(mut self, method: &str) -> Request {
        self.method = method.into();
        self
    }

    pub fn host(mut self, host: &str) -> Request {
        self.host = Some(host.into());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn sni(mut self, sni: &str) -> Request {
        self.sni = Some(sni.into());
        self
    }

    /// The path without its query (what a redirect keeps by default).
    pub fn path_without_query(&self) -> &str {
        self.path.split_once('?').map_or(self.path.as_str(), |(path, _)| path)
    }
}

/// One answer: status, headers in arrival order, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Every value of header `name` (any case), joined with `,` as the upstream harness compares
    /// them; `None` when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// What the echo backend saw, when this is an echo answer: like the upstream round tripper,
    /// only a `Content-Type` of exactly `application/json` is read.
    pub fn echo(&self) -> Result<EchoReport, String> {
        match self.header("content-type") {
            Some(kind) if kind == "application/json" => {
                serde_json::from_slice(&self.body).map_err(|e| {
                    format!("echo body is not an echo report ({e}): {}", self.body_text())
                })
            }
            other => Err(format!(
                "not an echo answer (content-type {other:?}), body {:?}",
                self.body_text()
            )),
        }
    }
}

/// Sends `request` to `gateway` on a new connection and reads the whole answer.
pub fn send(gateway: &Gateway, request: &Request) -> io::Result<Response> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let tcp = TcpStream::connect_timeout(&gateway.address, REQUEST_TIMEOUT)?;
    let socket = DeadlineSocket { tcp, deadline };
    let host = request.host.clone().unwrap_or_else(|| gateway.default_host());
    match &gateway.tls {
        None => exchange(socket, request, &host),
        Some(config) => {
            let sni = request.sni.clone().unwrap_or_else(|| host_without_port(&host).to_string());
            let name = ServerName::try_from(sni.clone()).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("SNI {sni:?}: {e}"))
            })?;
            let connection =
                ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
            exchange(StreamOwned::new(connection, socket), request, &host)
        }
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `::1`.
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn exchange<S: Read + Write>(mut stream: S, request: &Request, host: &str) -> io::Result<Response> {
    let mut head = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", request.method, request.path);
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if matches!(request.method.as_str(), "POST" | "PUT" | "PATCH") {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    read_response(&mut BufReader::new(stream), &request.method)
}

fn read_response(reader: &mut impl BufRead, method: &str) -> io::Result<Response> {
    let status_line = read_line(reader)?;
    let status = parse_status_line(&status_line)?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut response = Response { status, headers, body: Vec::new() };
    if method == "HEAD" || status < 200 || status == 204 || status == 304 {
        return Ok(response);
    }
    let chunked =
        response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = response.header("content-length").and_then(|v| v.parse::<usize>().ok());
    response.body = if chunked {
        read_chunked(reader)?
    } else if let Some(length) = length {
        let mut body = vec![0; length.min(MAX_BODY)];
        reader.read_exact(&mut body)?;
        body
    } else {
        let mut body = Vec::new();
        reader.take(MAX_BODY as u64).read_to_end(&mut body)?;
        body
    };
    Ok(response)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(reader)?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("chunk size {size_line:?}")))?;
        if size == 0 {
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("body larger than 4 MiB".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader)?;
    }
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    if reader.take(64 * 1024).read_until(b'\n', &mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the response ended",
        ));
    }
    Ok(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string())
}

fn parse_status_line(line: &str) -> io::Result<u16> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(invalid(format!("bad status line {line:?}"))),
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A TCP stream whose every read and write must finish before one deadline, so one request
/// takes at most [`REQUEST_TIMEOUT`] however the peer dribbles its answer.
struct DeadlineSocket {
    tcp: TcpStream,
    deadline: Instant,
}

impl DeadlineSocket {
    fn time_left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "no answer within 10 s"))
        } else {
            Ok(left)
        }
    }
}

impl Read for DeadlineSocket {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.time_left()?))?;
        self.tcp.read(buffer)
    }
}

impl Write for DeadlineSocket {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.time_left()?))?;
        self.tcp.write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_without_port_keeps_names_and_ipv6() {
        assert_eq!(host_without_port("very.specific.com:1234"), "very.specific.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn default_host_omits_the_schemes_default_port() {
        assert_eq!(Gateway::from(80).default_host(), "127.0.0.1");
        assert_eq!(Gateway::from(8080).default_host(), "127.0.0.1:8080");
    }

    #[test]
    fn reads_chunked_and_repeated_headers() {
        let raw = "HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nabc\r\n0\r\n\r\n";
        let response = read_response(&mut raw.as_bytes(), "GET").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("X-A").as_deref(), Some("1,2"));
        assert_eq!(response.body, b"abc");
    }
}
