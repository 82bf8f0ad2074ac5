//! An in-process echo backend, like the Gateway API conformance suite's `echo-basic`: every
//! request gets a 200 whose JSON body ([`EchoReport`]) says what the backend saw (method, raw
//! path, Host, protocol, headers, the namespace and pod name it was configured with, and for TLS
//! the SNI, ALPN, version and client certificate), and every request is also recorded in memory.
//!
//! One [`EchoServer`] has one or more ports on 127.0.0.1, each plaintext or TLS ([`TlsOptions`]).
//! A plaintext port speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c); a TLS port speaks
//! whatever ALPN agreed on (HTTP/2 also without ALPN if the client starts with its preface). A TLS
//! port that receives anything but a TLS handshake records it as [`Seen::PlaintextOnTls`] and
//! closes the connection without answering, so "no plaintext ever reached the backend" is an
//! assertion on [`EchoServer::plaintext_on_tls`]. Failed handshakes are recorded too, with the SNI
//! the client sent. gRPC requests (`content-type: application/grpc`) get the upstream gRPC echo
//! service ([`grpc`]).
//!
//! The servers run on a tokio runtime owned by the [`EchoServer`]; dropping it stops them and
//! closes their ports. [`tcp`] is the upstream TCP echo (TLSRoute tests), on the same TLS options.

pub mod grpc;
pub mod report;
pub mod tcp;
pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

pub use report::{CertificateNames, EchoReport, TlsReport, HTTP_1_1, HTTP_2};
pub use tls::TlsOptions;

/// The response header list the upstream harness asks the echo to set: `Name:value,Name2:value2`.
pub const ECHO_SET_HEADER: &str = "x-echo-set-header";
/// How long a connection may stay silent before its first byte (TLS ports peek at it).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `?delay=` honoured (upstream timeout tests use 1 s).
const MAX_DELAY: Duration = Duration::from_secs(30);

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the echo sends: JSON or gRPC frames.
pub(crate) type EchoBody = UnsyncBoxBody<Bytes, BoxError>;

/// Something that arrived at an echo port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A request, answered with 200 and this report (gRPC ones too).
    Request(Box<EchoReport>),
    /// A connection to a TLS port that did not start with a TLS handshake.
    PlaintextOnTls(PlaintextAttempt),
    /// A TLS handshake that failed.
    HandshakeFailed(HandshakeFailure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaintextAttempt {
    pub port: u16,
    /// The first line the client sent (e.g. `GET /x HTTP/1.1`), lossily decoded, at most 1 KiB.
    pub first_line: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFailure {
    pub port: u16,
    /// The SNI of the ClientHello, when one arrived and carried it.
    pub sni: Option<String>,
    pub alpn_offered: Vec<String>,
    /// rustls' reason, e.g. `received fatal alert: UnknownCA` or `peer sent no certificates`.
    pub error: String,
}

/// How one port of an echo serves.
#[derive(Clone, Debug)]
enum Transport {
    Plain,
    Tls(TlsOptions),
}

/// Sets up an [`EchoServer`]: its identity and its ports, in order.
pub struct EchoBuilder {
    namespace: String,
    pod: String,
    transports: Vec<Transport>,
}

impl EchoBuilder {
    /// Adds a plaintext HTTP/1.1 + h2c port.
    pub fn plain(mut self) -> EchoBuilder {
        self.transports.push(Transport::Plain);
        self
    }

    /// Adds a TLS port.
    pub fn tls(mut self, options: TlsOptions) -> EchoBuilder {
        self.transports.push(Transport::Tls(options));
        self
    }

    /// Binds every port on 127.0.0.1 (free ports chosen by the kernel, so nothing races for them)
    /// and starts serving; the ports accept connections when this returns.
    pub fn start(self) -> EchoServer {
        assert!(!self.transports.is_empty(), "an echo server needs at least one port");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("echo")
            .enable_all()
            .build()
            .expect("echo runtime");
        let shared = Arc::new(Shared {
            namespace: self.namespace,
            pod: self.pod,
            seen: Mutex::new(Vec::new()),
        });
        let mut ports = Vec::new();
        for transport in self.transports {
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .expect("bind an echo port on 127.0.0.1");
            listener.set_nonblocking(true).expect("non-blocking echo listener");
            let port = listener.local_addr().expect("echo port").port();
            ports.push(port);
            let tls = match transport {
                Transport::Plain => None,
                Transport::Tls(options) => Some(options.server()),
            };
            let listener = {
                let _entered = runtime.enter();
                TcpListener::from_std(listener).expect("register echo listener")
            };
            runtime.spawn(accept_loop(listener, port, tls, shared.clone()));
        }
        EchoServer { runtime: Some(runtime), ports, shared }
    }
}

/// A running echo backend; see the module documentation.
pub struct EchoServer {
    runtime: Option<Runtime>,
    ports: Vec<u16>,
    shared: Arc<Shared>,
}

impl EchoServer {
    /// An echo that reports `namespace` and `pod` (upstream tests match the pod name's prefix,
    /// e.g. pod `infra-backend-v1-7d9f-x2` is backend `infra-backend-v1`).
    pub fn builder(namespace: &str, pod: &str) -> EchoBuilder {
        EchoBuilder { namespace: namespace.into(), pod: pod.into(), transports: Vec::new() }
    }

    /// One plaintext port.
    pub fn plain(namespace: &str, pod: &str) -> EchoServer {
        EchoServer::builder(namespace, pod).plain().start()
    }

    /// One TLS port.
    pub fn tls(namespace: &str, pod: &str, options: TlsOptions) -> EchoServer {
        EchoServer::builder(namespace, pod).tls(options).start()
    }

    /// The first port.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// Every port, in the order the builder added them.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    pub fn pod(&self) -> &str {
        &self.shared.pod
    }

    /// Everything seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("echo record lock").clone()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<EchoReport> {
        self.seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Request(report) => Some(*report),
                _ => None,
            })
            .collect()
    }

    /// Requests answered on port `port` whose path (query included) is `path`.
    pub fn requests_to(&self, port: u16, path: &str) -> Vec<EchoReport> {
        let port = port.to_string();
        self.requests().into_iter().filter(|r| r.http_port == port && r.path == path).collect()
    }

    /// Connections that sent something other than a TLS handshake to a TLS port.
    pub fn plaintext_on_tls(&self) -> Vec<PlaintextAttempt> {
        self.seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::PlaintextOnTls(attempt) => Some(attempt),
                _ => None,
            })
            .collect()
    }

    pub fn handshake_failures(&self) -> Vec<HandshakeFailure> {
        self.seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::HandshakeFailed(failure) => Some(failure),
                _ => None,
            })
            .collect()
    }

    /// Forgets everything seen so far.
    pub fn clear(&self) {
        self.shared.seen.lock().expect("echo record lock").clear();
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let seen = self.seen();
            let start = seen.len().saturating_sub(20);
            eprintln!(
                "----- echo {}/{} on {:?}: last {} of {} things seen -----",
                self.shared.namespace,
                self.shared.pod,
                self.ports,
                seen.len() - start,
                seen.len()
            );
            for item in &seen[start..] {
                eprintln!("{item:?}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            // Cancels every task, so the listeners and connections are closed on return. Inside
            // another runtime blocking is not allowed; they then close a moment later.
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }
}

/// What every connection task of one echo needs.
struct Shared {
    namespace: String,
    pod: String,
    seen: Mutex<Vec<Seen>>,
}

impl Shared {
    fn record(&self, seen: Seen) {
        self.seen.lock().expect("echo record lock").push(seen);
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    tls: Option<tls::TlsServer>,
    shared: Arc<Shared>,
) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(connection(tcp, port, tls.clone(), shared.clone()));
            }
            // E.g. out of file descriptors: wait instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn connection(tcp: TcpStream, port: u16, tls: Option<tls::TlsServer>, shared: Arc<Shared>) {
    let Some(config) = tls else {
        serve_http(TokioIo::new(tcp), port, None, shared).await;
        return;
    };
    match first_byte(&tcp).await {
        // Connected and closed (or stayed silent): a port probe, nothing to record.
        None => {}
        Some(tls::TLS_HANDSHAKE_RECORD) => match tls::handshake(tcp, config).await {
            Ok((stream, report)) => {
                serve_http(TokioIo::new(stream), port, Some(report), shared).await
            }
            Err((hello, error)) => shared.record(Seen::HandshakeFailed(HandshakeFailure {
                port,
                sni: hello.sni,
                alpn_offered: hello.alpn_offered,
                error,
            })),
        },
        Some(_) => {
            let mut tcp = tcp;
            let first_line = first_line(&mut tcp).await;
            shared.record(Seen::PlaintextOnTls(PlaintextAttempt { port, first_line }));
            // Dropping the stream closes the connection: a plaintext client gets no answer.
            drop(tcp);
        }
    }
}

pub(crate) async fn first_byte(tcp: &TcpStream) -> Option<u8> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut byte)).await {
        Ok(Ok(1)) => Some(byte[0]),
        _ => None,
    }
}

/// The first line of what a plaintext client sent (up to 1 KiB, waiting at most 2 s for it).
/// Reads the first line a client sent. Takes the stream by reference: the caller records what it
/// saw before dropping the stream closes the connection, so a client that saw the close finds it
/// recorded.
pub(crate) async fn first_line(tcp: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        while buffer.len() < 1024 && !buffer.contains(&b'\n') {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    buffer.truncate(1024);
    let text = String::from_utf8_lossy(&buffer);
    text.lines().next().unwrap_or_default().to_string()
}

/// Serves HTTP/1.1 or HTTP/2 (chosen by the connection preface) until the client closes.
async fn serve_http<I>(io: TokioIo<I>, port: u16, tls: Option<TlsReport>, shared: Arc<Shared>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = Arc::new(tls);
    let service = hyper::service::service_fn(move |request| {
        handle(request, port, tls.clone(), shared.clone())
    });
    // Errors are the client's business (resets, half requests); the record says what arrived.
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

async fn handle(
    request: Request<Incoming>,
    port: u16,
    tls: Arc<Option<TlsReport>>,
    shared: Arc<Shared>,
) -> Result<Response<EchoBody>, Infallible> {
    let report = report(&request, port, (*tls).clone(), &shared);
    shared.record(Seen::Request(Box::new(report.clone())));
    if grpc::is_grpc(&request) {
        return Ok(grpc::serve(request, report).await);
    }
    let (parts, body) = request.into_parts();
    // Read the body so an HTTP/1.1 client that sent one is not cut off; its content is not echoed.
    let _ = body.collect().await;
    if let Some(delay) = requested_delay(&report.path) {
        tokio::time::sleep(delay).await;
    }
    let json = serde_json::to_vec(&report).expect("echo report serializes");
    let mut response =
        Response::new(Full::new(Bytes::from(json)).map_err(BoxError::from).boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in echo_set_headers(&parts.headers) {
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

fn report(
    request: &Request<Incoming>,
    port: u16,
    tls: Option<TlsReport>,
    shared: &Shared,
) -> EchoReport {
    let uri = request.uri();
    let host_header = request.headers().get(hyper::header::HOST).map(|h| lossy(h.as_bytes()));
    let authority = uri.authority().map(|a| a.as_str().to_string());
    let host = match request.version() {
        Version::HTTP_2 => authority.or(host_header),
        _ => host_header.or(authority),
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        if name != hyper::header::HOST {
            headers.entry(name.as_str().to_string()).or_default().push(lossy(value.as_bytes()));
        }
    }
    EchoReport {
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| uri.to_string()),
        host: host.unwrap_or_default(),
        method: request.method().as_str().to_string(),
        proto: match request.version() {
            Version::HTTP_2 => HTTP_2.to_string(),
            Version::HTTP_10 => "HTTP/1.0".to_string(),
            _ => HTTP_1_1.to_string(),
        },
        headers,
        namespace: shared.namespace.clone(),
        pod: shared.pod.clone(),
        http_port: port.to_string(),
        tls,
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `?delay=500ms` / `?delay=1s` (upstream echo's knob for timeout tests), at most [`MAX_DELAY`].
fn requested_delay(path: &str) -> Option<Duration> {
    let (_, query) = path.split_once('?')?;
    let value = query.split('&').find_map(|pair| pair.strip_prefix("delay="))?;
    let delay = if let Some(ms) = value.strip_suffix("ms") {
        Duration::from_millis(ms.parse().ok()?)
    } else {
        Duration::from_secs_f64(value.strip_suffix('s')?.parse().ok()?)
    };
    Some(delay.min(MAX_DELAY))
}

/// The response headers an `X-Echo-Set-Header: Name:value,Name2:value2` request header asks for.
fn echo_set_headers(headers: &hyper::HeaderMap) -> Vec<(hyper::header::HeaderName, HeaderValue)> {
    headers
        .get_all(ECHO_SET_HEADER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|item| {
            let (name, value) = item.split_once(':')?;
            let name = hyper::header::HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            Some((name, HeaderValue::from_str(value.trim()).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_accepts_milliseconds_and_seconds() {
        assert_eq!(requested_delay("/x?delay=250ms"), Some(Duration::from_millis(250)));
        assert_eq!(requested_delay("/x?a=b&delay=1s"), Some(Duration::from_secs(1)));
        assert_eq!(requested_delay("/x?delay=1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(requested_delay("/x?delay=1h"), None);
        assert_eq!(requested_delay("/delay=1s"), None);
        assert_eq!(requested_delay("/x?delay=100s"), Some(MAX_DELAY));
    }

    #[test]
    fn echo_set_header_lists_name_value_pairs() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(ECHO_SET_HEADER, HeaderValue::from_static("X-One: 1, X-Two:two,broken,"));
        let set: Vec<(String, String)> = echo_set_headers(&headers)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(set, [("x-one".into(), "1".into()), ("x-two".into(), "two".into())]);
    }
}
