//! Limits on what xDS clients can make the loader hold. Each is answered with a gRPC status that
//! names it (README, "Secure xDS"), so that a misbehaving or hostile client costs bounded memory
//! and a well-behaved one learns what it hit.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, handshaking ones included. One more is answered with
    /// RESOURCE_EXHAUSTED on every stream and closed after [`OVER_LIMIT_LINGER`]; beyond
    /// [`OVER_LIMIT_CONNECTIONS`] more it is closed at once.
    pub max_connections: usize,
    /// ADS streams at once on one HTTP/2 connection (Envoy uses one). One more is answered with
    /// RESOURCE_EXHAUSTED.
    pub max_streams_per_connection: usize,
    /// Resource names one stream may subscribe to, over all types (initial versions included).
    /// More end the stream with RESOURCE_EXHAUSTED.
    pub max_names_per_stream: usize,
    /// Size of one request message. The largest real request, a reconnecting delta Envoy listing
    /// every cluster it holds with its version, is about 60 bytes per backend: 4 MiB covers about
    /// 60,000 backends. Larger messages end the stream with OUT_OF_RANGE (tonic's check, made on
    /// the length prefix before the message is buffered).
    pub max_message_bytes: usize,
    /// A connection with no open stream for this long is closed; a connection that has not
    /// finished its TLS handshake within this (or 10 s, whichever is shorter) too.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval; a peer that does not answer within [`Limits::keepalive_timeout`] is
    /// disconnected, which frees its streams.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// How long a response may wait for room in a stream's queue (16 responses, then HTTP/2 flow
    /// control). A client that stops reading for longer has its stream ended with
    /// RESOURCE_EXHAUSTED, which frees what was queued for it; the other streams never wait on it.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_streams_per_connection: 4,
            max_names_per_stream: 100_000,
            max_message_bytes: 4 << 20,
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// Length of one resource name (cluster names and `<route configuration>/<host>` are far shorter).
/// A longer one ends the stream with INVALID_ARGUMENT.
pub const MAX_NAME_BYTES: usize = 1024;

/// Bytes of resource names one stream may hold, over all types: with [`Limits::max_names_per_stream`]
/// it bounds a stream's subscriptions whatever the names' lengths. More end the stream with
/// RESOURCE_EXHAUSTED.
pub const MAX_NAME_BYTES_PER_STREAM: usize = 8 << 20;

/// Upper bound on the TLS handshake time.
pub const MAX_HANDSHAKE_TIME: Duration = Duration::from_secs(10);

/// Connections over [`Limits::max_connections`] that are still answered (with
/// RESOURCE_EXHAUSTED) rather than closed at once.
pub const OVER_LIMIT_CONNECTIONS: usize = 64;

/// How long a connection over the limit stays open to be told so.
pub const OVER_LIMIT_LINGER: Duration = Duration::from_secs(2);

/// HTTP/2 streams the server lets a connection open beyond
/// [`Limits::max_streams_per_connection`], so that the extra ones are answered with
/// RESOURCE_EXHAUSTED instead of waiting in the client for a slot. HTTP/2 enforces the sum.
pub const EXTRA_HTTP2_STREAMS: u32 = 64;

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        self.idle_timeout.min(MAX_HANDSHAKE_TIME)
    }

    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub fn http2_max_concurrent_streams(&self) -> u32 {
        u32::try_from(self.max_streams_per_connection)
            .unwrap_or(u32::MAX)
            .saturating_add(EXTRA_HTTP2_STREAMS)
    }
}
