//! Accepting xDS connections: the connection limit, the TLS handshake (off the accept loop, with a
//! deadline), the client's identity from its certificate, and closing idle connections.
//!
//! The result is a stream of [`XdsConnection`]s for tonic; each carries a [`ConnectionInfo`] that
//! tonic puts into every request's extensions, where the ADS service finds the client's identity
//! and the connection's stream slots.

use super::authz::PeerIdentity;
use super::limits::{Limits, OVER_LIMIT_CONNECTIONS, OVER_LIMIT_LINGER};
use super::tls::ServerTls;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;

/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What the ADS service knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    /// The names in the client certificate; None over plaintext.
    pub identity: Option<Arc<PeerIdentity>>,
    /// Over [`Limits::max_connections`]: every stream is refused.
    pub over_limit: bool,
    pub streams: Arc<StreamSlots>,
}

/// The ADS streams open on one connection.
#[derive(Debug)]
pub struct StreamSlots {
    open: AtomicUsize,
    max: usize,
    /// When the last stream closed (or the connection opened): the idle clock.
    idle_since: Mutex<Instant>,
}

impl StreamSlots {
    fn new(max: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            open: AtomicUsize::new(0),
            max,
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// A slot for one more stream, or None when all `max` are taken.
    pub fn open(self: &Arc<Self>) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }

    pub fn max(&self) -> usize {
        self.max
    }

    fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// A stream's place on its connection, given back when the stream ends.
#[derive(Debug)]
pub struct StreamSlot(Arc<StreamSlots>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let slots = &self.0;
        // The clock restarts before the count drops, so the connection never looks idle since
        // before this stream ended.
        *slots.idle_since.lock().expect("idle clock") = Instant::now();
        slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Plaintext (loopback) or TLS.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection, as tonic serves it.
pub struct XdsConnection {
    transport: Transport,
    info: ConnectionInfo,
    idle_timeout: Duration,
    /// Fires when the connection may have become idle long enough, or its time over the limit
    /// is up; checked, then rearmed or acted on, in `poll_read`.
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl XdsConnection {
    /// When the connection should close unless a stream opens meanwhile.
    fn deadline(&self, now: Instant) -> Instant {
        if self.info.over_limit {
            return self.timer.deadline();
        }
        if self.info.streams.open_count() > 0 {
            return now + self.idle_timeout;
        }
        *self.info.streams.idle_since.lock().expect("idle clock") + self.idle_timeout
    }

    /// Ready with an error once the connection is to be closed; hyper then drops it.
    fn poll_expiry(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            let deadline = self.deadline(now);
            if deadline <= now {
                let why = if self.info.over_limit { "over the connection limit" } else { "idle" };
                tracing::debug!(connection = self.info.id, peer = %self.info.peer, why, "closing xDS connection");
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl tonic::transport::server::Connected for XdsConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for XdsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Pending => this.poll_expiry(cx).map(Err),
            ready => ready,
        }
    }
}

impl AsyncWrite for XdsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections for tonic's `serve_with_incoming_shutdown`. Dropping it (tonic does when shutting
/// down) stops the accept loop and closes the listening socket.
pub struct XdsIncoming {
    connections: mpsc::Receiver<XdsConnection>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Stream for XdsIncoming {
    type Item = Result<XdsConnection, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl Drop for XdsIncoming {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Counters of what happened before a connection reached the ADS service.
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    pub accepted: AtomicU64,
    pub over_limit: AtomicU64,
    pub handshake_failures: AtomicU64,
}

/// Accepts on `listener`, with TLS when `tls` is given.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    limits: &Limits,
    metrics: Arc<ConnectionMetrics>,
) -> XdsIncoming {
    let (tx, connections) = mpsc::channel(64);
    let accept_loop = tokio::spawn(accept_loop(listener, tls, limits.clone(), metrics, tx));
    XdsIncoming { connections, accept_loop }
}

enum Admission {
    Admitted(OwnedSemaphorePermit),
    OverLimit(OwnedSemaphorePermit),
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    limits: Limits,
    metrics: Arc<ConnectionMetrics>,
    tx: mpsc::Sender<XdsConnection>,
) {
    let admitted = Arc::new(Semaphore::new(limits.max_connections));
    let over_limit = Arc::new(Semaphore::new(OVER_LIMIT_CONNECTIONS));
    let next_id = AtomicU64::new(1);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cannot accept an xDS connection");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let admission = match admitted.clone().try_acquire_owned() {
            Ok(permit) => Admission::Admitted(permit),
            Err(_) => {
                metrics.over_limit.fetch_add(1, Ordering::Relaxed);
                match over_limit.clone().try_acquire_owned() {
                    Ok(permit) => Admission::OverLimit(permit),
                    Err(_) => continue, // dropped: closed at once
                }
            }
        };
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let setup = ConnectionSetup { id, peer, limits: limits.clone(), metrics: metrics.clone() };
        tokio::spawn(setup.run(tcp, tls.clone(), admission, tx.clone()));
    }
}

struct ConnectionSetup {
    id: u64,
    peer: SocketAddr,
    limits: Limits,
    metrics: Arc<ConnectionMetrics>,
}

impl ConnectionSetup {
    async fn run(
        self,
        tcp: TcpStream,
        tls: Option<Arc<ServerTls>>,
        admission: Admission,
        tx: mpsc::Sender<XdsConnection>,
    ) {
        let (transport, identity) = match tls {
            None => (Transport::Plain(tcp), None),
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let handshake =
                    tokio::time::timeout(self.limits.handshake_timeout(), acceptor.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return self.refused(&error.to_string()),
                    Err(_) => return self.refused("no TLS handshake in time"),
                };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| Arc::new(PeerIdentity::from_certificate(leaf)));
                (Transport::Tls(Box::new(stream)), identity)
            }
        };
        let (over_limit, permit) = match admission {
            Admission::Admitted(permit) => (false, permit),
            Admission::OverLimit(permit) => {
                tracing::warn!(
                    peer = %self.peer, max = self.limits.max_connections,
                    "xDS connection over the limit: its streams are refused"
                );
                (true, permit)
            }
        };
        let first_deadline =
            Instant::now() + if over_limit { OVER_LIMIT_LINGER } else { self.limits.idle_timeout };
        let info = ConnectionInfo {
            id: self.id,
            peer: self.peer,
            identity,
            over_limit,
            streams: StreamSlots::new(self.limits.max_streams_per_connection),
        };
        tracing::debug!(connection = self.id, peer = %self.peer, identity = ?info.identity, "xDS connection");
        let connection = XdsConnection {
            transport,
            info,
            idle_timeout: self.limits.idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(first_deadline)),
            _permit: permit,
        };
        let _ = tx.send(connection).await;
    }

    fn refused(&self, reason: &str) {
        self.metrics.handshake_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %self.peer, %reason, "xDS TLS handshake failed; connection refused");
    }
}
