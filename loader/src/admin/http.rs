//! The HTTP/1.1 server under the admin endpoints: hyper, with bounds that hold against clients
//! that open connections and send nothing, send half a request, or never read the answer.
//!
//! - A connection must deliver its request head within [`Limits::header_read_timeout`] of being
//!   accepted, or it is closed (hyper's header read timeout). One request per connection
//!   (`connection: close`), so there is no idle keep-alive state beyond that.
//! - The head may be at most [`Limits::max_request_head_bytes`]; a larger one gets 431. Bodies are
//!   never read.
//! - At most [`Limits::max_connections`] connections are open. When a new one arrives at the cap,
//!   the oldest connection still waiting for its request head is closed to make room: an idle
//!   flood then costs the flooder its own connections, while a real client, which sends its
//!   request at once, gets answered. When every open connection is busy with a request, the new
//!   one is closed at once.
//! - A connection lives at most [`Limits::max_connection_age`], so a client that never reads its
//!   answer cannot hold a slot for long.
//! - Accepting never spins: when the process is out of file descriptors, the oldest waiting
//!   connection is closed to free one; when nothing can be freed (or on any other error that is
//!   not about one connection), accepting pauses with an exponential backoff.

use super::status_text::{StatusBody, StatusText};
use http_body_util::Full;
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bounds on what clients can make the server hold.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// From accepting a connection until its request head is complete.
    pub header_read_timeout: Duration,
    /// The request line and headers; hyper needs at least 8 KiB.
    pub max_request_head_bytes: usize,
    /// From accepting a connection until it is closed, whatever it is doing.
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(5),
            max_request_head_bytes: 16 * 1024,
            max_connection_age: Duration::from_secs(60),
        }
    }
}

/// Connections the kernel completes and queues before the server accepts them. The listener comes
/// with std's 128, which a burst of connections overflows while the server is busy starting the
/// previous ones; a dropped SYN costs the client a one-second retransmission.
const ACCEPT_BACKLOG: i32 = 1024;
/// The smallest read buffer hyper accepts.
const MIN_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// The first and the longest pause after an accept error nothing could be done about.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a handler answers; always sent with `connection: close`.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: ReplyBody,
}

/// A reply's body: bytes, or `/status`'s text, decompressed as it is sent (with `probes`, a
/// JSON value added as the document's last member `probes`).
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyBody {
    Bytes(Bytes),
    Status { text: StatusText, probes: Option<String> },
}

impl From<Bytes> for ReplyBody {
    fn from(bytes: Bytes) -> Self {
        ReplyBody::Bytes(bytes)
    }
}

impl From<String> for ReplyBody {
    fn from(text: String) -> Self {
        ReplyBody::Bytes(text.into())
    }
}

/// [`ReplyBody`] as hyper sends it.
pub enum SentBody {
    Full(Full<Bytes>),
    /// Boxed: a decompressor's state is a few hundred bytes.
    Status(Box<StatusBody>),
}

impl hyper::body::Body for SentBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            SentBody::Full(full) => {
                std::pin::Pin::new(full).poll_frame(cx).map_err(|never| match never {})
            }
            SentBody::Status(status) => std::pin::Pin::new(&mut **status).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SentBody::Full(full) => full.is_end_stream(),
            SentBody::Status(status) => status.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            SentBody::Full(full) => full.size_hint(),
            SentBody::Status(status) => status.size_hint(),
        }
    }
}

impl Reply {
    fn into_response(self) -> Response<SentBody> {
        // The same head, byte for byte, as the hand-written server before it.
        let body = match self.body {
            ReplyBody::Bytes(bytes) => SentBody::Full(Full::new(bytes)),
            ReplyBody::Status { text, probes } => SentBody::Status(Box::new(
                probes
                    .and_then(|probes| text.body_with_member("probes", &probes))
                    .unwrap_or_else(|| text.body()),
            )),
        };
        let length = body.size_hint().exact().expect("every body here has a known length");
        let mut response = Response::new(body);
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, self.content_type.parse().expect("a valid content type"));
        headers.insert(CONTENT_LENGTH, length.into());
        headers.insert(CONNECTION, "close".parse().expect("a valid header value"));
        response
    }
}

/// Answers a request from its method and path (without the query).
pub trait Handler: Fn(&Method, &str) -> Reply + Send + Sync + 'static {}
impl<F: Fn(&Method, &str) -> Reply + Send + Sync + 'static> Handler for F {}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, limits: Limits, handler: impl Handler) {
    assert!(limits.max_request_head_bytes >= MIN_HEAD_BYTES, "hyper needs at least 8 KiB");
    assert!(limits.max_connections > 0);
    // On Linux, `listen` on a listening socket only changes its backlog.
    if let Err(e) = socket2::SockRef::from(&listener).listen(ACCEPT_BACKLOG) {
        tracing::warn!(error = %e, "admin: cannot widen the accept queue");
    }
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(false)
        .max_buf_size(limits.max_request_head_bytes)
        .max_headers(MAX_HEADERS)
        .auto_date_header(false);
    let server = Arc::new(Server { http, limits, handler, connections: Connections::default() });
    let mut failures = AcceptFailures::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                failures.recovered();
                stream
            }
            Err(e) if is_about_one_connection(&e) => continue,
            Err(e) => {
                if is_out_of_descriptors(&e) && server.connections.close_oldest_waiting().await {
                    // A descriptor is free again: accept the pending connection now.
                    continue;
                }
                tokio::time::sleep(failures.next_pause(&e)).await;
                continue;
            }
        };
        if server.connections.len() >= server.limits.max_connections
            && !server.connections.close_oldest_waiting().await
        {
            // Every slot is serving a request: refuse this one (dropping it closes it).
            tracing::debug!("admin: connection limit reached, closing a new connection");
            continue;
        }
        server.clone().spawn(stream);
    }
}

struct Server<H> {
    http: hyper::server::conn::http1::Builder,
    limits: Limits,
    handler: H,
    connections: Connections,
}

impl<H: Handler> Server<H> {
    fn spawn(self: Arc<Self>, stream: TcpStream) {
        let waiting = Arc::new(AtomicBool::new(true));
        // Held while spawning, so that the task cannot finish and unregister before it is
        // registered.
        let mut open = self.connections.open.lock().unwrap();
        let id = self.connections.next_id.fetch_add(1, Ordering::Relaxed);
        let server = self.clone();
        let task = tokio::spawn(server.connection(id, stream, waiting.clone()));
        open.insert(id, Open { waiting, task });
    }

    async fn connection(self: Arc<Self>, id: u64, stream: TcpStream, waiting: Arc<AtomicBool>) {
        // Unregisters however the task ends: done, timed out, panicked or aborted.
        let _registration = Registration { server: &self, id };
        let service = hyper::service::service_fn(|request: Request<Incoming>| {
            // The head is in: from now on this connection is busy, not idle.
            waiting.store(false, Ordering::Relaxed);
            let reply = (self.handler)(request.method(), request.uri().path());
            std::future::ready(Ok::<_, Infallible>(reply.into_response()))
        });
        let connection = self.http.serve_connection(TokioIo::new(stream), service);
        // Timing out drops the connection, which closes the socket.
        let _ = tokio::time::timeout(self.limits.max_connection_age, connection).await;
    }
}

struct Registration<'a, H> {
    server: &'a Server<H>,
    id: u64,
}

impl<H> Drop for Registration<'_, H> {
    fn drop(&mut self) {
        self.server.connections.open.lock().unwrap().remove(&self.id);
    }
}

/// The open connections, oldest first.
#[derive(Default)]
struct Connections {
    open: Mutex<BTreeMap<u64, Open>>,
    /// Never reused: a closed connection's late unregistration must not remove a newer one.
    next_id: AtomicU64,
}

struct Open {
    /// True until the request head has arrived.
    waiting: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Connections {
    fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    /// Closes the oldest connection that has not sent its request head yet, and returns once its
    /// socket is closed. False when every open connection is busy.
    async fn close_oldest_waiting(&self) -> bool {
        let task = {
            let mut open = self.open.lock().unwrap();
            let oldest =
                open.iter().find(|(_, c)| c.waiting.load(Ordering::Relaxed)).map(|(id, _)| *id);
            oldest.and_then(|id| open.remove(&id)).map(|c| c.task)
        };
        let Some(task) = task else {
            return false;
        };
        task.abort();
        // Resolves once the task's future, and with it the socket, has been dropped.
        let _ = task.await;
        true
    }
}

/// Errors that concern only the connection being accepted (it was reset while queued): the next
/// one may well succeed.
fn is_about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A run of accept errors: the pause before the next attempt, and logging that says when a run
/// starts and ends rather than repeating every error.
#[derive(Default)]
struct AcceptFailures {
    count: u64,
    pause: Duration,
}

impl AcceptFailures {
    fn next_pause(&mut self, e: &io::Error) -> Duration {
        if self.count == 0 {
            tracing::warn!(error = %e, "admin: cannot accept connections; backing off");
            self.pause = FIRST_BACKOFF;
        } else {
            self.pause = (self.pause * 2).min(MAX_BACKOFF);
        }
        self.count += 1;
        self.pause
    }

    fn recovered(&mut self) {
        if self.count > 0 {
            tracing::info!(failures = self.count, "admin: accepting connections again");
            *self = AcceptFailures::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::time::Instant;

    fn hello(method: &Method, path: &str) -> Reply {
        Reply {
            status: if method == Method::GET { 200 } else { 405 },
            content_type: "text/plain",
            body: format!("{method} {path}\n").into(),
        }
    }

    /// Starts a server with `limits` on a runtime of its own; returns its address.
    fn start(limits: Limits) -> (SocketAddr, tokio::runtime::Runtime) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(serve(listener, limits, hello));
        (address, runtime)
    }

    fn connect(address: SocketAddr) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = connect(address);
        stream.write_all(request).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// Reads until the server closes the connection; returns how long that took.
    fn time_until_closed(stream: &mut std::net::TcpStream, since: Instant) -> Duration {
        let mut sink = Vec::new();
        match stream.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
        since.elapsed()
    }

    fn quick(header_read_timeout: Duration) -> Limits {
        Limits { header_read_timeout, ..Limits::default() }
    }

    #[test]
    fn answers_with_status_type_length_and_close() {
        let (address, _runtime) = start(Limits::default());
        let answer = exchange(address, b"GET /healthz?x=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        assert_eq!(
            answer,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\
             connection: close\r\n\r\nGET /healthz\n"
        );
        let answer = exchange(address, b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{answer}");
    }

    #[test]
    fn a_partial_request_line_is_closed_after_the_header_timeout() {
        let timeout = Duration::from_millis(400);
        let (address, _runtime) = start(quick(timeout));
        let mut partial = connect(address);
        let sent = Instant::now();
        partial.write_all(b"GET /heal").unwrap();
        let mut silent = connect(address);
        let took = time_until_closed(&mut partial, sent);
        assert!(took >= timeout && took < timeout * 5, "closed after {took:?}");
        let took = time_until_closed(&mut silent, sent);
        assert!(took >= timeout && took < timeout * 5, "silent connection closed after {took:?}");
        // And the server still answers.
        assert!(exchange(address, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
    }

    #[test]
    fn a_request_head_over_the_limit_is_refused() {
        let (address, _runtime) = start(Limits::default());
        let huge = format!("GET / HTTP/1.1\r\nx-pad: {}\r\n\r\n", "a".repeat(64 * 1024));
        let mut stream = connect(address);
        // The server may close before taking everything; what it answered is what counts.
        let _ = stream.write_all(huge.as_bytes());
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[test]
    fn idle_connections_at_the_cap_make_room_for_new_requests() {
        let limits = Limits { max_connections: 8, ..Limits::default() };
        let (address, _runtime) = start(limits);
        let mut idle: Vec<_> = (0..50).map(|_| connect(address)).collect();
        let started = Instant::now();
        for _ in 0..5 {
            let answer = exchange(address, b"GET /healthz HTTP/1.1\r\n\r\n");
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        }
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        // All but the newest few idle connections have been closed; the oldest first.
        let closed = idle.iter_mut().take(40).all(|s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            match s.read(&mut [0u8; 1]) {
                Ok(0) => true,
                Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        });
        assert!(closed, "the oldest idle connections are still open");
    }
}
