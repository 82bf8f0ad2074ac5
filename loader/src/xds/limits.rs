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
    /// Resource names one stream may subscribe to, over all types (initial versions included),
    /// at the least: the limit grows with the snapshot ([`Limits::names_per_stream`]). More end
    /// the stream with RESOURCE_EXHAUSTED.
    pub max_names_per_stream: usize,
    /// Size of one request message, at the least: the limit grows with the snapshot
    /// ([`Limits::message_bytes`]). Larger messages end the stream with OUT_OF_RANGE (tonic's
    /// check, made on the length prefix before the message is buffered).
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
    /// Encoded resources in one delta response, at most: a push past it is sent as several
    /// responses ("parts"), each acknowledged on its own, so that neither the loader nor the
    /// client holds the whole of a large first answer at once (75 MB of clusters at 100,000
    /// backends). A resource larger than this goes alone. State-of-the-world responses are
    /// never split (the protocol has no parts).
    pub response_bytes: usize,
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
            // Envoy answers no PING while its main thread applies an update: up to 87 s for
            // 100,000 clusters here (BENCHMARKS.md, "A real Envoy at 100,000 clusters"). A peer
            // that is gone costs the loader little (its streams share the snapshot's bytes).
            keepalive_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(30),
            // Envoy takes responses of any size. 8 MiB keeps a 10,000-backend first answer
            // (about 6 MB) whole: split in two it measured 0.5 MB more per connected client
            // (`make bench-fleet`), while 100,000 backends' 75 MB goes in 10 parts. Clients with
            // gRPC's usual 4 MiB receive limit want `--xds-max-response-bytes 4194304`.
            response_bytes: 8 << 20,
        }
    }
}

/// Length of one resource name (cluster names and `<route configuration>/<host>` are far shorter).
/// A longer one ends the stream with INVALID_ARGUMENT.
pub const MAX_NAME_BYTES: usize = 1024;

/// Bytes of resource names one stream may hold, over all types, at the least: with
/// [`Limits::names_per_stream`] it bounds a stream's subscriptions whatever the names' lengths.
/// More end the stream with RESOURCE_EXHAUSTED. Grows with the snapshot
/// ([`Limits::name_bytes_per_stream`]).
pub const MAX_NAME_BYTES_PER_STREAM: usize = 8 << 20;

/// How many times what the current snapshot serves a stream may subscribe to: an Envoy
/// subscribes to at most every resource it is served, plus names it still holds from an older
/// snapshot, so a well-behaved client never reaches the limit however large the configuration,
/// and any client's cost stays proportional to what is served anyway.
pub const SNAPSHOT_HEADROOM: usize = 2;

/// Request bytes allowed per served resource of the request's type: a reconnecting delta Envoy
/// lists every resource of the type it holds with its version, about 60 bytes each (5.8 MB for
/// 100,000 clusters).
pub const REQUEST_BYTES_PER_RESOURCE: usize = 128;

/// Name bytes allowed per name a stream may hold (names here are 20 to 80 bytes long).
pub const NAME_BYTES_PER_NAME: usize = 64;

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
    /// Names one stream may hold while the current snapshot serves `served` resources (all types
    /// together): the configured floor, or [`SNAPSHOT_HEADROOM`] times what is served.
    pub fn names_per_stream(&self, served: usize) -> usize {
        self.max_names_per_stream.max(served.saturating_mul(SNAPSHOT_HEADROOM))
    }

    /// Bytes of names one stream may hold while `served` resources are served.
    pub fn name_bytes_per_stream(&self, served: usize) -> usize {
        MAX_NAME_BYTES_PER_STREAM
            .max(self.names_per_stream(served).saturating_mul(NAME_BYTES_PER_NAME))
    }

    /// Size of one request message on a stream opened while the snapshot serves at most
    /// `largest_type` resources of one type (a request is about one type).
    pub fn message_bytes(&self, largest_type: usize) -> usize {
        self.max_message_bytes.max(largest_type.saturating_mul(REQUEST_BYTES_PER_RESOURCE))
    }

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

/// How much a snapshot serves, as the limits that grow with it count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotSize {
    /// Resources of every type together.
    pub resources: usize,
    /// Resources of the type that has the most.
    pub largest_type: usize,
}

impl SnapshotSize {
    /// Counted from the maps' lengths: a few operations, whatever the snapshot's size.
    pub fn of(snapshot: &super::snapshot::Snapshot) -> Self {
        let sizes = snapshot.resources.values().map(|of_type| of_type.len());
        SnapshotSize { resources: sizes.clone().sum(), largest_type: sizes.max().unwrap_or(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_never_fall_below_the_configured_floor_and_grow_with_the_snapshot() {
        let limits = Limits::default();
        assert_eq!(limits.names_per_stream(0), limits.max_names_per_stream);
        assert_eq!(
            limits.name_bytes_per_stream(0),
            MAX_NAME_BYTES_PER_STREAM.max(limits.max_names_per_stream * NAME_BYTES_PER_NAME)
        );
        assert_eq!(limits.message_bytes(0), limits.max_message_bytes);
        // 100,000 backends: about 400,000 resources, 100,000 of the largest type. The Envoy
        // measured here subscribed to 100,001 names and sent a 5,761,152-byte request.
        let served = SnapshotSize { resources: 400_005, largest_type: 100_000 };
        assert!(limits.names_per_stream(served.resources) >= 2 * 100_001);
        assert!(limits.message_bytes(served.largest_type) >= 2 * 5_761_152);
        assert!(limits.name_bytes_per_stream(served.resources) >= 200_002 * 80);
        // Nothing overflows.
        assert_eq!(limits.names_per_stream(usize::MAX), usize::MAX);
        assert_eq!(limits.message_bytes(usize::MAX), usize::MAX);
    }
}
