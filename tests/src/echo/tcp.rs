//! A TCP echo backend speaking the protocol of the Gateway API conformance suite's TCP echo
//! (`echo-basic` with `TCP_ECHO_SERVER`), which the TLSRoute tests talk to, and a client for it.
//!
//! On connect the server sends [`WELCOME_MESSAGE`]; then, line by line, `PING` gets `PONG`,
//! `IS_TLS` gets `true` or `false`, and `TEST` gets one line of JSON ([`TcpAssertions`]: the
//! namespace and pod it was configured with, whether the connection is TLS and, for TLS, the
//! version, the SNI it saw, the ALPN protocol and the cipher suite). Other lines get no answer.
//!
//! A TLS port is served with the HTTP echo's [`TlsOptions`] (pass `.alpn(&[])` for the upstream
//! server's behaviour: no ALPN) and records, like the HTTP echo, connections that did not start
//! with a TLS handshake ([`Seen::PlaintextOnTls`]) and failed handshakes; so "no plaintext ever
//! reached the backend" is an assertion on [`TcpEchoServer::plaintext_on_tls`].

use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use super::report::TlsReport;
use super::{tls, HandshakeFailure, PlaintextAttempt, TlsOptions};

/// The first line the server sends on every connection.
pub const WELCOME_MESSAGE: &str = "Gateway API Test TCP Server\n";

/// The answer to `TEST`, with the upstream server's JSON field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpAssertions {
    pub namespace: String,
    #[serde(default)]
    pub ingress: String,
    #[serde(default)]
    pub service: String,
    pub pod: String,
    /// The port the connection arrived on (upstream: the configured TCP port).
    #[serde(rename = "tcpport")]
    pub tcp_port: String,
    #[serde(rename = "isTLS")]
    pub is_tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TcpTlsAssertions>,
}

/// The TLS side of [`TcpAssertions`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpTlsAssertions {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The SNI the client sent ("" without SNI).
    pub server_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub negotiated_protocol: String,
    pub cipher_suite: String,
}

impl From<&TlsReport> for TcpTlsAssertions {
    fn from(report: &TlsReport) -> Self {
        TcpTlsAssertions {
            version: report.version.clone(),
            server_name: report.server_name.clone(),
            negotiated_protocol: report.negotiated_protocol.clone(),
            cipher_suite: report.cipher_suite.clone(),
        }
    }
}

/// Something that arrived at a TCP echo port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A connection that got the welcome line: what it said about itself and the lines the
    /// client sent (recorded when the connection opens, lines added as they arrive).
    Session { assertions: Box<TcpAssertions>, lines: Vec<String> },
    /// A connection to a TLS port that did not start with a TLS handshake.
    PlaintextOnTls(PlaintextAttempt),
    /// A TLS handshake that failed.
    HandshakeFailed(HandshakeFailure),
}

/// A running TCP echo; dropping it stops it and closes its port.
pub struct TcpEchoServer {
    runtime: Option<Runtime>,
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TcpEchoServer {
    /// A plaintext port on 127.0.0.1.
    pub fn plain(namespace: &str, pod: &str) -> TcpEchoServer {
        TcpEchoServer::start(namespace, pod, None)
    }

    /// A TLS port on 127.0.0.1.
    pub fn tls(namespace: &str, pod: &str, options: TlsOptions) -> TcpEchoServer {
        TcpEchoServer::start(namespace, pod, Some(options.server()))
    }

    fn start(namespace: &str, pod: &str, tls: Option<tls::TlsServer>) -> TcpEchoServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tcp-echo")
            .enable_all()
            .build()
            .expect("tcp echo runtime");
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind a tcp echo port on 127.0.0.1");
        listener.set_nonblocking(true).expect("non-blocking tcp echo listener");
        let port = listener.local_addr().expect("tcp echo port").port();
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener).expect("register tcp echo listener")
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let context = TcpAssertions {
            namespace: namespace.into(),
            pod: pod.into(),
            tcp_port: port.to_string(),
            ..Default::default()
        };
        runtime.spawn(accept_loop(listener, port, tls, context, seen.clone()));
        TcpEchoServer { runtime: Some(runtime), port, seen }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("tcp echo record lock").clone()
    }

    /// The connections that got the welcome line.
    pub fn sessions(&self) -> Vec<(TcpAssertions, Vec<String>)> {
        self.seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Session { assertions, lines } => Some((*assertions, lines)),
                _ => None,
            })
            .collect()
    }

    /// Connections that sent something other than a TLS handshake to the TLS port.
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
        self.seen.lock().expect("tcp echo record lock").clear();
    }
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- tcp echo on port {}: {:#?}", self.port, self.seen());
        }
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    tls: Option<tls::TlsServer>,
    context: TcpAssertions,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(connection(tcp, port, tls.clone(), context.clone(), seen.clone()));
            }
            // E.g. out of file descriptors: wait instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn connection(
    tcp: TcpStream,
    port: u16,
    tls: Option<tls::TlsServer>,
    context: TcpAssertions,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let record = |item: Seen| seen.lock().expect("tcp echo record lock").push(item);
    let Some(config) = tls else {
        serve(tcp, context, &seen).await;
        return;
    };
    match super::first_byte(&tcp).await {
        // Connected and closed (or stayed silent): a port probe, nothing to record.
        None => {}
        Some(tls::TLS_HANDSHAKE_RECORD) => match tls::handshake(tcp, config).await {
            Ok((stream, report)) => {
                let assertions = TcpAssertions {
                    is_tls: true,
                    tls: Some(TcpTlsAssertions::from(&report)),
                    ..context
                };
                serve(stream, assertions, &seen).await
            }
            Err((hello, error)) => record(Seen::HandshakeFailed(HandshakeFailure {
                port,
                sni: hello.sni,
                alpn_offered: hello.alpn_offered,
                error,
            })),
        },
        Some(_) => {
            let mut tcp = tcp;
            let first_line = super::first_line(&mut tcp).await;
            record(Seen::PlaintextOnTls(PlaintextAttempt { port, first_line }));
            drop(tcp);
        }
    }
}

/// The echo protocol on an established connection, until the client closes it.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    assertions: TcpAssertions,
    seen: &Mutex<Vec<Seen>>,
) {
    let index = {
        let mut seen = seen.lock().expect("tcp echo record lock");
        seen.push(Seen::Session { assertions: Box::new(assertions.clone()), lines: Vec::new() });
        seen.len() - 1
    };
    let payload = serde_json::to_string(&assertions).expect("assertions serialize");
    let (read, mut write) = tokio::io::split(stream);
    if write.write_all(WELCOME_MESSAGE.as_bytes()).await.is_err() {
        return;
    }
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(Seen::Session { lines, .. }) =
            seen.lock().expect("tcp echo record lock").get_mut(index)
        {
            lines.push(line.clone());
        }
        let answer = match line.as_str() {
            "TEST" => format!("{payload}\n"),
            "IS_TLS" => format!("{}\n", assertions.is_tls),
            "PING" => "PONG\n".to_string(),
            _ => continue,
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client side (upstream `tcp.MakeTCPRequestAndExpectEventuallyValidResponse`, one attempt)

/// What one conversation with the echo through a Gateway got: the welcome line, the answers to
/// `PING`, `IS_TLS` and `TEST` (each with its line end), and `TEST` parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub welcome: String,
    pub ping: String,
    pub is_tls: String,
    pub test: TcpAssertions,
}

/// A TLS client as upstream's: TLS 1.2 or later, this SNI, trusting only `root_pem`.
pub fn tls_client(root_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tls::certificates(root_pem) {
        roots.add(cert).expect("root certificate is usable");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// One conversation over TLS (SNI `server_name`) with `address`: connect, read the welcome line,
/// then `PING`, `IS_TLS` and `TEST`, each answer read before the next line is sent; `timeout` for
/// the whole. Any failure (refused, handshake, closed early, not JSON) is an error naming the step.
pub fn converse_tls(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<Conversation, String> {
    let tcp =
        StdTcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("server name {server_name}: {e}"))?;
    let connection =
        rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS client: {e}"))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    // The handshake first, so that its failure reads as one.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).map_err(|e| format!("TLS handshake: {e}"))?;
    }
    converse(stream)
}

/// The echo protocol over an established stream (see [`converse_tls`]).
pub fn converse<S: io::Read + io::Write>(stream: S) -> Result<Conversation, String> {
    let mut reader = BufReader::new(stream);
    let welcome = read_line(&mut reader, "welcome")?;
    let mut ask = |question: &str| -> Result<String, String> {
        let stream = reader.get_mut();
        stream
            .write_all(format!("{question}\n").as_bytes())
            .and_then(|()| stream.flush())
            .map_err(|e| format!("{question}: {e}"))?;
        read_line(&mut reader, question)
    };
    let ping = ask("PING")?;
    let is_tls = ask("IS_TLS")?;
    let test = ask("TEST")?;
    let test: TcpAssertions =
        serde_json::from_str(&test).map_err(|e| format!("TEST answer {test:?}: {e}"))?;
    Ok(Conversation { welcome, ping, is_tls, test })
}

/// One whole line (with its `\n`); a connection closed before it ends is an error.
fn read_line(reader: &mut impl BufRead, step: &str) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(format!("{step}: connection closed")),
        Ok(_) if !line.ends_with('\n') => Err(format!("{step}: closed mid-line ({line:?})")),
        Ok(_) => Ok(line),
        Err(e) => Err(format!("{step}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::TestCa;
    use std::io::Write as _;

    /// The server speaks the upstream protocol in plaintext and over TLS, reporting the SNI.
    #[test]
    fn speaks_the_upstream_tcp_echo_protocol() {
        let plain = TcpEchoServer::plain("ns", "tcp-backend-1");
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, plain.port()));
        let tcp = StdTcpStream::connect(address).unwrap();
        let talk = converse(tcp).unwrap();
        assert_eq!(talk.welcome, WELCOME_MESSAGE);
        assert_eq!((talk.ping.as_str(), talk.is_tls.as_str()), ("PONG\n", "false\n"));
        assert_eq!((talk.test.namespace.as_str(), talk.test.pod.as_str()), ("ns", "tcp-backend-1"));
        assert!(!talk.test.is_tls && talk.test.tls.is_none());
        assert_eq!(plain.sessions()[0].1, ["PING", "IS_TLS", "TEST"]);

        let ca = TestCa::new("tcp echo test CA");
        let cert = ca.issue(&["abc.example.com"]);
        let server = TcpEchoServer::tls("ns", "tcp-backend-2", TlsOptions::new(&cert).alpn(&[]));
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
        let talk = converse_tls(
            address,
            tls_client(ca.cert_pem()),
            "abc.example.com",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(talk.is_tls, "true\n");
        let tls = talk.test.tls.expect("TLS assertions");
        assert_eq!(tls.server_name, "abc.example.com");
        assert_eq!(tls.negotiated_protocol, "");
        // Plaintext to the TLS port is recorded, and gets nothing.
        let mut tcp = StdTcpStream::connect(address).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(b"PING\n").unwrap();
        assert!(read_line(&mut BufReader::new(&tcp), "answer").is_err());
        let recorded =
            crate::wait_until("the plaintext attempt recorded", Duration::from_secs(5), || {
                let attempts = server.plaintext_on_tls();
                if attempts.is_empty() {
                    Err("none yet".to_string())
                } else {
                    Ok(attempts)
                }
            });
        assert_eq!(recorded[0].first_line, "PING");
    }
}
