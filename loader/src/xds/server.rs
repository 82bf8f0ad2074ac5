//! The Aggregated Discovery Service: state-of-the-world and delta, any number of Envoys.
//!
//! Each stream keeps, per resource type, what the Envoy subscribed to, which resources it holds
//! (pointers to the snapshot's shared [`Entry`]s, see [`super::served`]), and the nonce of the
//! response it has not acknowledged yet. A NACK is logged with Envoy's reason; the loader does not
//! resend the rejected resources (Envoy keeps its previous good ones) and sends again only when
//! the resource changes.
//!
//! A new snapshot is compared with the previous one once ([`Served::build`]); each stream then
//! looks only at the names that changed, among those it subscribed to or holds, so a change costs
//! each stream in proportion to the change, however many resources there are. Responses hold the
//! snapshot's encoded resources and are written to the wire without copying them first
//! ([`super::wire`]).
//!
//! Every request is checked before it changes anything: its type URL must be one the loader
//! serves, its node must be the one the client certificate names ([`super::authz`]), and the
//! stream's subscriptions must stay within [`Limits`]. A request that fails ends its stream with a
//! gRPC status saying why. SDS secrets are sent only to streams that were sent a cluster
//! referencing them.

use super::authz::{self, PeerIdentity};
use super::limits::{Limits, SnapshotSize, MAX_NAME_BYTES};
use super::listener::{ConnectionInfo, ConnectionMetrics, StreamSlot};
use super::served::{Changes, Entry, Name, Served, Table};
use super::snapshot::{
    is_named_type, short_name, type_urls, PackedResource, Snapshot, VHDS_ROUTE_CONFIGURATIONS,
};
use super::wire::{DeltaCodec, DeltaResponse, SotwCodec, SotwResponse};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Name as _;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::{Request, Response, Status, Streaming};

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    pub responses_sent: AtomicU64,
    pub resources_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    /// Streams refused or ended by a limit (connections, streams, names, message size).
    pub limited_streams: AtomicU64,
    /// Streams ended because the client stopped reading (`Limits::send_timeout`).
    pub slow_streams: AtomicU64,
    /// Streams ended because the node is not the one the client certificate names.
    pub unauthorized_streams: AtomicU64,
    /// Requests with a type URL the loader does not serve.
    pub unknown_types: AtomicU64,
    /// Secret names asked for by a stream that was sent no cluster referencing them.
    pub secrets_withheld: AtomicU64,
    /// The same counters per resource type, in [`SENT_TYPES`] order, with when the type's last
    /// response was sent (so that a benchmark can tell when the loader finished an initial sync).
    pub sent_by_type: [TypeSent; SENT_TYPES.len()],
}

/// The resource types of [`XdsMetrics::sent_by_type`], by [`short_name`].
pub const SENT_TYPES: [&str; 6] = ["CDS", "EDS", "SDS", "LDS", "RDS", "VHDS"];

/// What was sent of one resource type.
#[derive(Debug, Default)]
pub struct TypeSent {
    pub responses: AtomicU64,
    pub resources: AtomicU64,
    pub bytes: AtomicU64,
    /// When the last response was built, just before it is queued for its stream (gRPC writes it
    /// out as soon as HTTP/2 flow control lets it), in microseconds since the Unix epoch; 0
    /// before the first.
    pub last_sent_unix_micros: AtomicU64,
    /// Time spent answering requests that got a response: from the decoded request until its
    /// response was built, in microseconds, summed (pushes of a new snapshot not included).
    pub answering_micros: AtomicU64,
}

impl XdsMetrics {
    /// Counts one response of `type_url` with `resources` resources of `bytes` bytes in all.
    fn count(&self, type_url: &str, resources: usize, bytes: usize) {
        self.responses_sent.fetch_add(1, Ordering::Relaxed);
        self.resources_sent.fetch_add(resources as u64, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        let short = short_name(type_url);
        let Some(t) = SENT_TYPES.iter().position(|s| *s == short) else { return };
        let t = &self.sent_by_type[t];
        t.responses.fetch_add(1, Ordering::Relaxed);
        t.resources.fetch_add(resources as u64, Ordering::Relaxed);
        t.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        t.last_sent_unix_micros.fetch_max(now, Ordering::Relaxed);
    }

    /// Adds the time since `since` to the time spent answering requests of `type_url`.
    fn answered(&self, type_url: &str, since: std::time::Instant) {
        let short = short_name(type_url);
        if let Some(t) = SENT_TYPES.iter().position(|s| *s == short) {
            let micros = since.elapsed().as_micros() as u64;
            self.sent_by_type[t].answering_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }
}

/// Clusters and listeners reference SDS secrets; no other type does.
fn refers_to_secrets(type_url: &str) -> bool {
    type_url == Cluster::type_url() || type_url == Listener::type_url()
}

/// What `/xds` shows of one connected Envoy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionInfo {
    pub node: String,
    pub protocol: &'static str,
    /// The newest snapshot version whose resources this Envoy has acknowledged, for every type it
    /// subscribed to; None until then.
    pub acked_version: Option<u64>,
    /// The last NACK's message, if any.
    pub last_nack: Option<String>,
    /// The client's address, when it came through the loader's listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The names in its client certificate (mTLS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<PeerIdentity>,
}

/// Resources an Envoy refused (a NACK), passed to whoever builds snapshots so that it can replace
/// them with ones that fail closed: Envoy keeps the previous version of a rejected resource, which
/// may be a plaintext cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub node: String,
    pub type_url: String,
    /// The rejected resources with the versions sent: those Envoy's message names, or every
    /// resource of the rejected response when it names none.
    pub resources: Vec<(String, String)>,
    pub message: String,
}

/// How many snapshot changes the server remembers for streams that fall behind; a stream further
/// behind compares everything it subscribed to once.
const CHANGES_KEPT: usize = 64;

/// The snapshot being served and the changes that led to it.
struct ServedState {
    latest: Arc<Served>,
    /// `(seq, changes from seq - 1 to seq)`, oldest first, contiguous, ending at `latest.seq`.
    history: VecDeque<(u64, Arc<Changes>)>,
}

pub struct XdsState {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    served: Mutex<ServedState>,
    sessions: Mutex<BTreeMap<u64, SessionInfo>>,
    next_session: AtomicU64,
    limits: Limits,
    /// Set once, when the loader is asked to stop: every stream ends with UNAVAILABLE.
    shutdown: watch::Sender<bool>,
    pub metrics: XdsMetrics,
    rejections: std::sync::OnceLock<Box<dyn Fn(Rejection) + Send + Sync>>,
    /// Counters of the listener in front of the service.
    pub connections: Arc<ConnectionMetrics>,
}

impl XdsState {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Arc<Self> {
        XdsState::with_limits(snapshots, Limits::default())
    }

    pub fn with_limits(snapshots: watch::Receiver<Arc<Snapshot>>, limits: Limits) -> Arc<Self> {
        let first = snapshots.borrow().clone();
        let (latest, _) = Served::build(0, first, None);
        Arc::new(XdsState {
            snapshots,
            served: Mutex::new(ServedState { latest: Arc::new(latest), history: VecDeque::new() }),
            sessions: Mutex::new(BTreeMap::new()),
            next_session: AtomicU64::new(1),
            limits,
            shutdown: watch::Sender::new(false),
            metrics: XdsMetrics::default(),
            rejections: std::sync::OnceLock::new(),
            connections: Arc::default(),
        })
    }

    /// Every NACK from now on is also passed to `sink` (once per state; later calls are ignored).
    pub fn report_rejections_to(&self, sink: impl Fn(Rejection) + Send + Sync + 'static) {
        let _ = self.rejections.set(Box::new(sink));
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.lock().unwrap().values().cloned().collect()
    }

    pub fn service(self: &Arc<Self>) -> AdsService {
        AdsService { state: self.clone() }
    }

    /// Ends every stream with UNAVAILABLE (Envoys reconnect to the next loader) and refuses new
    /// ones.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Completes once [`XdsState::shut_down`] has been called.
    pub fn shutting_down(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.subscribe();
        async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        }
    }

    /// The newest snapshot as served, and what changed since the one numbered `since` (None when
    /// the server no longer remembers: then everything may have). The first caller after a new
    /// snapshot builds it, once for every stream.
    fn catch_up(&self, since: u64) -> (Arc<Served>, Option<Vec<Arc<Changes>>>) {
        let mut served = self.served.lock().expect("served lock");
        let snapshot = self.snapshots.borrow().clone();
        if !Arc::ptr_eq(&snapshot, &served.latest.snapshot) {
            let seq = served.latest.seq + 1;
            let (next, changes) = Served::build(seq, snapshot, Some(&served.latest));
            served.latest = Arc::new(next);
            if served.history.len() == CHANGES_KEPT {
                served.history.pop_front();
            }
            served.history.push_back((seq, Arc::new(changes)));
        }
        let latest = served.latest.clone();
        if since == latest.seq {
            return (latest, Some(Vec::new()));
        }
        let missed: Vec<Arc<Changes>> = served
            .history
            .iter()
            .filter(|(seq, _)| *seq > since)
            .map(|(_, changes)| changes.clone())
            .collect();
        let complete = since < latest.seq && missed.len() as u64 == latest.seq - since;
        (latest, complete.then_some(missed))
    }

    /// Whether a new stream may start, and the client it comes from.
    fn admit<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        if *self.shutdown.borrow() {
            return Err(Status::unavailable("the loader is shutting down"));
        }
        // Absent only when the service runs without the loader's listener (unit tests).
        let Some(info) = request.extensions().get::<ConnectionInfo>() else {
            return Ok(Peer::default());
        };
        let limited = |message: String| {
            self.metrics.limited_streams.fetch_add(1, Ordering::Relaxed);
            Status::resource_exhausted(message)
        };
        if info.over_limit {
            return Err(limited(format!(
                "the loader serves at most {} xDS connections at once (--xds-max-connections) \
                 and this one is over the limit; reconnect later",
                self.limits.max_connections
            )));
        }
        let Some(slot) = info.streams.open() else {
            return Err(limited(format!(
                "at most {} ADS streams at once on one connection (--xds-max-streams-per-connection)",
                info.streams.max()
            )));
        };
        Ok(Peer { address: Some(info.peer), identity: info.identity.clone(), _slot: Some(slot) })
    }

    fn open_sotw(
        self: &Arc<Self>,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<SotwResponse>>, Status> {
        let peer = self.admit(&request)?;
        let (tx, rx) = mpsc::channel(16);
        let session = Session::new(self.clone(), Protocol::Sotw, peer);
        tokio::spawn(session.run_sotw(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    fn open_delta(
        self: &Arc<Self>,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream<DeltaResponse>>, Status> {
        let peer = self.admit(&request)?;
        let (tx, rx) = mpsc::channel(16);
        let session = Session::new(self.clone(), Protocol::Delta, peer);
        tokio::spawn(session.run_delta(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// `envoy.service.discovery.v3.AggregatedDiscoveryService` over gRPC, with the responses of
/// [`super::wire`] (envoy-types' generated server would copy every resource into each response).
#[derive(Clone)]
pub struct AdsService {
    state: Arc<XdsState>,
}

const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
/// Its methods' paths start with this.
const SERVICE_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/";

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

/// The two ADS methods, as tonic's streaming handlers.
struct SotwMethod(Arc<XdsState>);
struct DeltaMethod(Arc<XdsState>);

impl tonic::server::StreamingService<DiscoveryRequest> for SotwMethod {
    type Response = SotwResponse;
    type ResponseStream = ResponseStream<SotwResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let result = self.0.open_sotw(request);
        Box::pin(async move { result })
    }
}

impl tonic::server::StreamingService<DeltaDiscoveryRequest> for DeltaMethod {
    type Response = DeltaResponse;
    type ResponseStream = ResponseStream<DeltaResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let result = self.0.open_delta(request);
        Box::pin(async move { result })
    }
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = self.state.clone();
        // Fixed for the stream's life; a reconnecting Envoy's first request lists what it holds.
        let size = SnapshotSize::of(&state.snapshots.borrow());
        let max = Some(state.limits.message_bytes(size.largest_type));
        let method = request.uri().path().strip_prefix(SERVICE_PATH);
        match method {
            Some("StreamAggregatedResources") => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(SotwCodec::default())
                    .apply_max_message_size_config(max, None);
                Ok(grpc.streaming(SotwMethod(state), request).await)
            }),
            Some("DeltaAggregatedResources") => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(DeltaCodec::default())
                    .apply_max_message_size_config(max, None);
                Ok(grpc.streaming(DeltaMethod(state), request).await)
            }),
            _ => {
                Box::pin(async move { Ok(Status::unimplemented("not an ADS method").into_http()) })
            }
        }
    }
}

/// The client at the other end of a stream.
#[derive(Default)]
struct Peer {
    address: Option<SocketAddr>,
    /// The names in its client certificate (mTLS only).
    identity: Option<Arc<PeerIdentity>>,
    /// The stream's place on its connection, freed when the session ends.
    _slot: Option<StreamSlot>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Sotw,
    Delta,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        }
    }

    /// Where a type's resources are in a [`Served`]: delta ADS gets route configurations
    /// without virtual hosts (those come over VHDS).
    fn table_key(self, type_url: &str) -> &str {
        if self == Protocol::Delta && type_url == RouteConfiguration::type_url() {
            VHDS_ROUTE_CONFIGURATIONS
        } else {
            type_url
        }
    }
}

/// Names, sorted: a stream's subscriptions of one type, or the secrets it was granted. A name the
/// snapshot holds shares the snapshot's copy.
#[derive(Clone, Debug, Default, PartialEq)]
struct NameSet(Vec<Name>);

impl NameSet {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|n| n.as_ref().cmp(name))
    }

    fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    fn remove(&mut self, name: &str) -> bool {
        self.find(name).map(|i| self.0.remove(i)).is_ok()
    }

    /// Adds `names` (any order, any repeats) in one merge.
    fn extend(&mut self, mut names: Vec<Name>) {
        names.sort_unstable();
        names.dedup();
        names.retain(|n| !self.contains(n));
        if names.is_empty() {
            return;
        }
        let old = std::mem::take(&mut self.0);
        self.0 = merge_sorted(old, names, |a, b| a.cmp(b));
    }

    fn iter(&self) -> impl Iterator<Item = &Name> {
        self.0.iter()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Merges two sorted vectors with no key in both.
fn merge_sorted<T>(a: Vec<T>, b: Vec<T>, cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if cmp(x, y).is_le() => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

/// The resources a stream holds of one type, as far as the loader knows, sorted by name: the
/// snapshot entries it was sent (or, after a reconnect, the versions the Envoy said it has).
#[derive(Clone, Debug, Default)]
struct Held(Vec<Arc<Entry>>);

impl Held {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|e| e.name.as_ref().cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.find(name).ok().map(|i| &self.0[i])
    }

    fn version(&self, name: &str) -> Option<&str> {
        self.get(name).map(|e| e.version())
    }

    fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.0.iter()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Records `sent` (sorted by name, replacing what was held of the same names) and forgets
    /// `removed` (sorted), in one merge.
    fn apply(&mut self, sent: &[Arc<Entry>], removed: &[Name]) {
        let mut fresh = Vec::new();
        for entry in sent {
            match self.find(&entry.name) {
                Ok(i) => self.0[i] = entry.clone(),
                Err(_) => fresh.push(entry.clone()),
            }
        }
        if !removed.is_empty() {
            let mut gone = removed.iter().peekable();
            self.0.retain(|e| {
                while gone.next_if(|n| n.as_ref() < e.name.as_ref()).is_some() {}
                gone.peek().is_none_or(|n| n.as_ref() != e.name.as_ref())
            });
        }
        if !fresh.is_empty() {
            let old = std::mem::take(&mut self.0);
            self.0 = merge_sorted(old, fresh, |a, b| a.name.cmp(&b.name));
        }
    }
}

/// Per-stream, per-type bookkeeping.
#[derive(Debug, Default)]
struct TypeState {
    /// The Envoy has asked for this type at least once.
    subscribed: bool,
    /// A delta response has been sent since it asked: the first is sent even when empty, so that
    /// an Envoy waiting for a type to initialize (no clusters yet, a route configuration without
    /// virtual hosts) learns there is nothing instead of waiting out its fetch timeout.
    answered: bool,
    /// All resources of the type, not only `names`.
    wildcard: bool,
    names: NameSet,
    /// What the Envoy holds, as far as the loader knows.
    known: Held,
    /// The push awaiting acknowledgement.
    pending: Option<Pending>,
    acked_version: Option<u64>,
    /// Names whose resource, scope or permission changed since this type was last answered:
    /// the only ones the next response looks at (unless `rescan`).
    dirty: Vec<Name>,
    /// Look at every resource and every held name next time (a new subscription, a wildcard
    /// change, or a stream too far behind for the remembered changes).
    rescan: bool,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Marks `names` for the next response; past the size of what is to compare anyway, a
    /// rescan is cheaper.
    fn touch<'a>(&mut self, names: impl IntoIterator<Item = &'a Name>, table_len: usize) {
        if !self.subscribed || self.rescan {
            return;
        }
        self.dirty.extend(names.into_iter().cloned());
        if self.dirty.len() > table_len + self.known.len() + self.names.len() {
            self.dirty = Vec::new();
            self.rescan = true;
        }
    }

    /// What to look at for the next response (None: everything), consuming it.
    fn take_candidates(&mut self) -> Option<Vec<Name>> {
        let dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.rescan) {
            return None;
        }
        let mut dirty = dirty;
        dirty.sort_unstable();
        dirty.dedup();
        Some(dirty)
    }
}

/// Unanswered delta responses of one type a stream keeps track of; older ones count as stale.
const MAX_UNANSWERED_PARTS: usize = 64;

/// A push (one response, or the parts of a split delta push) not yet acknowledged.
#[derive(Debug)]
struct Pending {
    /// The snapshot version it came from.
    version: u64,
    /// Each unacknowledged response's nonce and, for delta, the resources it carried, at the
    /// versions sent (a NACK says which it rejected; a state-of-the-world response holds
    /// `known`). Parts are dropped as their ACK or NACK arrives; a delta push made before the
    /// previous one was acknowledged keeps that one's parts, which Envoy answers first.
    parts: Vec<(String, Vec<Arc<Entry>>)>,
    /// A part was rejected: the push as a whole is not acknowledged.
    rejected: bool,
}

impl Pending {
    fn one(version: u64, nonce: String) -> Self {
        Pending { version, parts: vec![(nonce, Vec::new())], rejected: false }
    }

    /// The nonce a client acknowledging everything sends last.
    #[cfg(test)]
    fn last_nonce(&self) -> &str {
        self.parts.last().map_or("", |(nonce, _)| nonce)
    }
}

/// `resources` in consecutive runs of at most `max_bytes` encoded (a larger resource alone), the
/// parts of a delta push; one (maybe empty) run when they fit.
fn split_by_bytes(resources: Vec<Arc<Entry>>, max_bytes: usize) -> Vec<Vec<Arc<Entry>>> {
    let total: usize = resources.iter().map(|e| super::wire::delta_resource_len(e)).sum();
    if total <= max_bytes {
        return vec![resources];
    }
    let mut parts = Vec::with_capacity(total / max_bytes.max(1) + 1);
    let (mut part, mut bytes) = (Vec::new(), 0);
    for entry in resources {
        let len = super::wire::delta_resource_len(&entry);
        if !part.is_empty() && bytes + len > max_bytes {
            parts.push(std::mem::take(&mut part));
            bytes = 0;
        }
        bytes += len;
        part.push(entry);
    }
    parts.push(part);
    parts
}

/// What a delta stream is to be sent for one type: the resources in scope (and permitted) whose
/// version it does not hold, and, for wildcard types, the held names no longer in `table`. Looks
/// at `candidates` only (sorted, distinct), or at everything when None: both give the same
/// answer as long as every name whose status changed is among the candidates.
fn delta_diff(
    st: &TypeState,
    granted: &NameSet,
    type_url: &str,
    table: &Table,
    candidates: Option<&[Name]>,
) -> (Vec<Arc<Entry>>, Vec<Name>) {
    let wanted = |name: &str, entry: &Entry| {
        st.in_scope(name)
            && may_send(granted, type_url, name)
            && st.known.version(name) != Some(entry.version())
    };
    // Removals only for wildcard types: a named resource that disappears is one the Envoy will
    // stop asking for (its cluster or listener went), and keeping it meanwhile lets the old
    // cluster keep working while the new one warms.
    let removals = !is_named_type(type_url);
    match candidates {
        None => {
            let changed = table.values().filter(|e| wanted(&e.name, e)).cloned().collect();
            let removed = if removals {
                st.known
                    .iter()
                    .filter(|e| !table.contains_key(&e.name))
                    .map(|e| e.name.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (changed, removed)
        }
        Some(names) => {
            let (mut changed, mut removed) = (Vec::new(), Vec::new());
            for name in names {
                match table.get(name) {
                    Some(entry) if wanted(name, entry) => changed.push(entry.clone()),
                    Some(_) => {}
                    None if removals && st.known.contains(name) => removed.push(name.clone()),
                    None => {}
                }
            }
            (changed, removed)
        }
    }
}

/// What a state-of-the-world stream is in scope for (and permitted) of one type.
fn sotw_scope(st: &TypeState, granted: &NameSet, type_url: &str, table: &Table) -> Vec<Arc<Entry>> {
    table
        .values()
        .filter(|e| st.in_scope(&e.name) && may_send(granted, type_url, &e.name))
        .cloned()
        .collect()
}

/// Whether a state-of-the-world stream's scope differs from what it holds, looking at
/// `candidates` only (or at everything when None).
fn sotw_differs(
    st: &TypeState,
    granted: &NameSet,
    type_url: &str,
    table: &Table,
    candidates: Option<&[Name]>,
) -> bool {
    match candidates {
        None => {
            let scope = sotw_scope(st, granted, type_url, table);
            scope.len() != st.known.len()
                || scope
                    .iter()
                    .zip(st.known.iter())
                    .any(|(a, b)| a.name != b.name || a.version() != b.version())
        }
        Some(names) => names.iter().any(|name| {
            let in_scope = table
                .get(name)
                .filter(|_| st.in_scope(name) && may_send(granted, type_url, name))
                .map(|e| e.version());
            in_scope != st.known.version(name)
        }),
    }
}

/// Whether `name` of `type_url` may be sent on a stream granted `granted`.
fn may_send(granted: &NameSet, type_url: &str, name: &str) -> bool {
    type_url != Secret::type_url() || granted.contains(name)
}

/// How many resource names a stream holds, against [`Limits::names_per_stream`] and
/// [`Limits::name_bytes_per_stream`].
#[derive(Debug, Default)]
struct NameBudget {
    names: usize,
    bytes: usize,
}

impl NameBudget {
    fn add(&mut self, name: &str) {
        self.names += 1;
        self.bytes += name.len();
    }

    fn remove(&mut self, name: &str) {
        self.names -= 1;
        self.bytes -= name.len();
    }
}

struct Session {
    id: u64,
    state: Arc<XdsState>,
    protocol: Protocol,
    peer: Peer,
    /// The snapshot this stream is at: requests are answered from it, and changes are pushed
    /// when it moves to a newer one.
    at: Arc<Served>,
    types: BTreeMap<String, TypeState>,
    next_nonce: u64,
    node: String,
    budget: NameBudget,
    /// Secrets that a cluster or listener sent on this stream references: the only ones it may
    /// be sent.
    granted_secrets: NameSet,
    /// Granted secrets that may have left the snapshot or the subscriptions since the last
    /// grant: the next grant forgets those that did.
    ungrant_candidates: Vec<Name>,
    /// A secret the Envoy subscribed to was granted after its SDS answer: answer SDS again.
    sds_follow_up: bool,
    /// The client left a response waiting for `Limits::send_timeout`: the stream is ending.
    stopped_reading: bool,
}

impl Session {
    fn new(state: Arc<XdsState>, protocol: Protocol, peer: Peer) -> Self {
        let id = state.next_session.fetch_add(1, Ordering::Relaxed);
        state.sessions.lock().unwrap().insert(
            id,
            SessionInfo {
                node: String::new(),
                protocol: protocol.name(),
                acked_version: None,
                last_nack: None,
                address: peer.address.map(|a| a.to_string()),
                identity: peer.identity.as_deref().cloned(),
            },
        );
        let (at, _) = state.catch_up(0);
        Session {
            id,
            state,
            protocol,
            peer,
            at,
            types: BTreeMap::new(),
            next_nonce: 0,
            node: String::new(),
            budget: NameBudget::default(),
            granted_secrets: NameSet::default(),
            ungrant_candidates: Vec::new(),
            sds_follow_up: false,
            stopped_reading: false,
        }
    }

    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
    }

    /// `name` as the snapshot holds it (shared), or a new copy when it holds no such resource.
    fn intern(&self, type_url: &str, name: &str) -> Name {
        match self.at.table(self.protocol.table_key(type_url)).get_key_value(name) {
            Some((shared, _)) => shared.clone(),
            None => name.into(),
        }
    }

    /// Moves the stream to `next`: `changes` (None: unknown) are the names to look at again.
    fn advance(&mut self, next: Arc<Served>, changes: Option<Vec<Arc<Changes>>>) {
        let sds = Secret::type_url();
        for (type_url, st) in &mut self.types {
            let key = self.protocol.table_key(type_url);
            match &changes {
                None => {
                    if st.subscribed {
                        st.dirty = Vec::new();
                        st.rescan = true;
                    }
                }
                Some(changes) => {
                    let table_len = next.table(key).len();
                    for names in changes.iter().filter_map(|c| c.get(key)) {
                        st.touch(names, table_len);
                    }
                }
            }
        }
        // Granted secrets that left the snapshot are forgotten at the next grant, unless
        // subscribed.
        match &changes {
            None => self.ungrant_candidates = self.granted_secrets.iter().cloned().collect(),
            Some(changes) => {
                let secrets = next.table(&sds);
                for names in changes.iter().filter_map(|c| c.get(&sds)) {
                    self.ungrant_candidates.extend(
                        names
                            .iter()
                            .filter(|n| {
                                !secrets.contains_key(*n) && self.granted_secrets.contains(n)
                            })
                            .cloned(),
                    );
                }
                // A stream that is sent no cluster for a long time collects repeats.
                if self.ungrant_candidates.len() > self.granted_secrets.len() {
                    self.ungrant_candidates.sort_unstable();
                    self.ungrant_candidates.dedup();
                }
            }
        }
        self.at = next;
    }

    /// Catches up with the newest snapshot.
    fn catch_up(&mut self) {
        let (next, changes) = self.state.catch_up(self.at.seq);
        if next.seq != self.at.seq {
            self.advance(next, changes);
        }
    }

    /// Checks a request's type URL and node before the request changes anything.
    fn check_request(
        &mut self,
        type_url: &str,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> Result<(), Status> {
        if !type_urls().iter().any(|served| served == type_url) {
            self.state.metrics.unknown_types.fetch_add(1, Ordering::Relaxed);
            return Err(Status::invalid_argument(format!(
                "unknown type URL {:?}: this server serves {}",
                authz::truncated(type_url),
                type_urls().join(", ")
            )));
        }
        let known = (!self.node.is_empty()).then_some(self.node.as_str());
        if let Err(refused) = authz::authorize_node(self.peer.identity.as_deref(), known, node) {
            self.state.metrics.unauthorized_streams.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(session = self.id, peer = ?self.peer.address, reason = %refused, "xDS stream refused");
            return Err(Status::permission_denied(refused.to_string()));
        }
        if let Some(node) = node {
            if self.node.is_empty() && !node.id.is_empty() {
                self.node = node.id.clone();
                tracing::info!(session = self.id, node = %self.node, peer = ?self.peer.address, "Envoy connected");
                self.update_info(|info| info.node = node.id.clone());
            }
        }
        Ok(())
    }

    /// Checks one client-supplied resource name.
    fn check_name(name: &str) -> Result<(), Status> {
        if name.len() > MAX_NAME_BYTES {
            return Err(Status::invalid_argument(format!(
                "resource name of {} bytes; at most {MAX_NAME_BYTES}",
                name.len()
            )));
        }
        Ok(())
    }

    /// Checks the stream's names against the limits after a request changed them.
    fn check_budget(&self) -> Result<(), Status> {
        let max = self.max_names();
        let max_bytes = self.state.limits.name_bytes_per_stream(self.served_resources());
        let exceeded = if self.budget.names > max {
            format!("more than {max} resource names subscribed on one stream (--xds-max-names)")
        } else if self.budget.bytes > max_bytes {
            format!("more than {max_bytes} bytes of resource names on one stream")
        } else {
            return Ok(());
        };
        self.state.metrics.limited_streams.fetch_add(1, Ordering::Relaxed);
        Err(Status::resource_exhausted(exceeded))
    }

    /// Resources the snapshot this stream is at serves: the name limits grow with it.
    fn served_resources(&self) -> usize {
        SnapshotSize::of(&self.at.snapshot).resources
    }

    /// Names this stream may hold now.
    fn max_names(&self) -> usize {
        self.state.limits.names_per_stream(self.served_resources())
    }

    fn update_info(&self, f: impl FnOnce(&mut SessionInfo)) {
        if let Some(info) = self.state.sessions.lock().unwrap().get_mut(&self.id) {
            f(info);
        }
    }

    /// Records an ACK or NACK of `nonce` for `type_url`. Returns false for a stale nonce. A split
    /// push is acknowledged once every part is, and none was rejected.
    fn acknowledge(&mut self, type_url: &str, nonce: &str, error: Option<&str>) -> bool {
        let node = self.node.clone();
        let st = self.types.entry(type_url.to_string()).or_default();
        let part = st
            .pending
            .as_ref()
            .and_then(|p| p.parts.iter().position(|(pending, _)| pending == nonce));
        match part {
            Some(part) => {
                let pending = st.pending.as_mut().expect("found in it");
                let version = pending.version;
                // What the part carried: only a NACK needs it, to say what was rejected.
                let (_, sent) = pending.parts.remove(part);
                pending.rejected |= error.is_some();
                if pending.parts.is_empty() {
                    if !pending.rejected {
                        st.acked_version = Some(version);
                    }
                    st.pending = None;
                }
                match error {
                    None => {
                        self.state.metrics.acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(message) => {
                        self.state.metrics.nacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            %node, r#type = short_name(type_url), snapshot = version, reason = %message,
                            "Envoy rejected the configuration (NACK); it keeps its previous resources"
                        );
                        let rejection = Rejection {
                            node,
                            type_url: type_url.to_string(),
                            resources: rejected_resources(st, &sent, message),
                            message: message.to_string(),
                        };
                        if let Some(sink) = self.state.rejections.get() {
                            sink(rejection.clone());
                        }
                        self.update_info(|info| info.last_nack = Some(rejection.message));
                    }
                }
                self.publish_acked();
                true
            }
            _ => false,
        }
    }

    fn publish_acked(&self) {
        let acked =
            self.types.values().filter(|t| t.subscribed).map(|t| t.acked_version).min().flatten();
        self.update_info(|info| info.acked_version = acked);
    }

    /// Marks a type as up to date at `version` when nothing needed sending.
    fn settle(&mut self, type_url: &str, version: u64) {
        let st = self.types.get_mut(type_url).expect("settled types exist");
        if st.pending.is_none() && st.acked_version != Some(version) {
            st.acked_version = Some(version);
            self.publish_acked();
        }
    }

    fn count_sent(&self, type_url: &str, resources: &[Arc<Entry>]) {
        let bytes: usize = resources.iter().map(|e| e.resource.resource.value.len()).sum();
        self.state.metrics.count(type_url, resources.len(), bytes);
    }

    // -----------------------------------------------------------------------------------------
    // Secrets

    /// Grants the secrets that `sent` (clusters or listeners) reference, then forgets granted
    /// secrets that are neither in the snapshot nor subscribed (so the set stays as small as the
    /// snapshot's secrets plus the subscriptions). Newly granted secrets are looked at again by
    /// the next SDS response.
    fn grant_secrets_of<'a>(&mut self, sent: impl IntoIterator<Item = &'a Arc<Entry>>) {
        let sds = Secret::type_url();
        let mut new: Vec<Name> = Vec::new();
        for entry in sent {
            new.extend(entry.secrets.iter().filter(|s| !self.granted_secrets.contains(s)).cloned());
        }
        new.sort_unstable();
        new.dedup();
        let secrets = self.at.table(&sds);
        let st = self.types.get_mut(&sds);
        let subscribed = |st: &Option<&mut TypeState>, name: &str| {
            st.as_ref().is_some_and(|st| st.names.contains(name))
        };
        if new.iter().any(|s| subscribed(&st, s)) {
            self.sds_follow_up = true;
        }
        self.granted_secrets.extend(new.clone());
        let mut candidates = std::mem::take(&mut self.ungrant_candidates);
        candidates.extend(new.iter().cloned());
        for name in &candidates {
            if !secrets.contains_key(name) && !subscribed(&st, name) {
                self.granted_secrets.remove(name);
            }
        }
        if let Some(st) = st {
            let len = secrets.len();
            st.touch(&new, len);
        }
    }

    /// Logs a subscription to a secret this stream has not been granted.
    fn note_withheld(&self, type_url: &str, name: &str) {
        if type_url == Secret::type_url() && !self.granted_secrets.contains(name) {
            self.state.metrics.secrets_withheld.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                session = self.id, node = %self.node, peer = ?self.peer.address,
                secret = %authz::truncated(name),
                "secret withheld: no cluster or listener sent on this stream references it"
            );
        }
    }

    /// Unsubscribing a granted secret may end its grant (see [`Session::grant_secrets_of`]).
    fn unsubscribed(&mut self, type_url: &str, name: &str) {
        if type_url == Secret::type_url() && self.granted_secrets.contains(name) {
            self.ungrant_candidates.push(self.intern(type_url, name));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Delta

    async fn run_delta(
        self,
        requests: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaResponse, Status>>,
    ) {
        let on_request = |session: &mut Session, request: DeltaDiscoveryRequest| {
            let arrived = std::time::Instant::now();
            let type_url = request.type_url.clone();
            session.on_delta_request(request)?;
            let responses = session.delta_response(&type_url);
            if !responses.is_empty() {
                session.state.metrics.answered(&type_url, arrived);
            }
            Ok(responses)
        };
        self.pump(requests, tx, on_request, Session::delta_response).await
    }

    /// The stream's event loop, the same for both protocols: answer each request, and push what a
    /// new snapshot changes, type by type in [`type_urls`] order. A request that is refused, or
    /// the loader shutting down, ends the stream with a status.
    async fn pump<Req, Resp>(
        mut self,
        mut requests: Streaming<Req>,
        tx: mpsc::Sender<Result<Resp, Status>>,
        on_request: fn(&mut Session, Req) -> Result<Vec<Resp>, Status>,
        on_change: fn(&mut Session, &str) -> Vec<Resp>,
    ) {
        let mut snapshots = self.state.snapshots.clone();
        snapshots.borrow_and_update();
        // A snapshot published between `Session::new` and the line above is caught up with here.
        self.catch_up();
        let shutting_down = self.state.shutting_down();
        let mut shutting_down = std::pin::pin!(shutting_down);
        let ended: Option<Status> = loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => {
                        // Answered from the snapshot the stream is at; a newer one is pushed
                        // as a change, to every type.
                        match on_request(&mut self, request) {
                            Ok(responses) => {
                                if let Err(ended) = self.deliver_all(&tx, responses).await { break ended; }
                                if std::mem::take(&mut self.sds_follow_up) {
                                    let responses = on_change(&mut self, &Secret::type_url());
                                    if let Err(ended) = self.deliver_all(&tx, responses).await { break ended; }
                                }
                            }
                            Err(status) => break Some(status),
                        }
                    }
                    Ok(None) => break None,
                    // A message over the size limit, or the client went away; in the first case
                    // the client learns why, in the second nobody listens.
                    Err(status) => break Some(status),
                },
                changed = snapshots.changed() => {
                    if changed.is_err() { break None; }
                    snapshots.borrow_and_update();
                    self.catch_up();
                    let mut ended = None;
                    for type_url in type_urls() {
                        let responses = on_change(&mut self, &type_url);
                        if let Err(end) = self.deliver_all(&tx, responses).await {
                            ended = Some(end);
                            break;
                        }
                    }
                    if let Some(end) = ended { break end; }
                    self.sds_follow_up = false;
                }
                () = &mut shutting_down => {
                    break Some(Status::unavailable("the loader is shutting down"));
                }
            }
        };
        if let Some(status) = &ended {
            if self.stopped_reading {
                // Its queue is full: not waited for again. The stream ends without the status.
                let _ = tx.try_send(Err(status.clone()));
            } else {
                let _ = tokio::time::timeout(
                    self.state.limits.send_timeout,
                    tx.send(Err(status.clone())),
                )
                .await;
            }
        }
        self.close(ended.as_ref());
    }

    /// Queues `responses` in order (see [`Session::deliver`]).
    async fn deliver_all<Resp>(
        &mut self,
        tx: &mpsc::Sender<Result<Resp, Status>>,
        responses: Vec<Resp>,
    ) -> Result<(), Option<Status>> {
        for response in responses {
            self.deliver(tx, response).await?;
        }
        Ok(())
    }

    /// Queues `response` for the client. Err(None): the client went away; Err(Some(status)): it
    /// has not made room for a response within `Limits::send_timeout`, so the stream ends and
    /// what was queued for it is freed; other streams never wait on it (each has its own queue
    /// and task).
    async fn deliver<Resp>(
        &mut self,
        tx: &mpsc::Sender<Result<Resp, Status>>,
        response: Resp,
    ) -> Result<(), Option<Status>> {
        let limit = self.state.limits.send_timeout;
        match tokio::time::timeout(limit, tx.send(Ok(response))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(None),
            Err(_) => {
                self.stopped_reading = true;
                self.state.metrics.slow_streams.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    session = self.id, node = %self.node,
                    "ending an xDS stream whose client has not read for {limit:?} (--xds-send-timeout)"
                );
                Err(Some(Status::resource_exhausted(format!(
                    "the client did not read for {}s (--xds-send-timeout)",
                    limit.as_secs()
                ))))
            }
        }
    }

    fn on_delta_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Status> {
        self.check_request(&request.type_url, request.node.as_ref())?;
        tracing::debug!(
            node = %self.node, r#type = short_name(&request.type_url), nonce = %request.response_nonce,
            subscribe = request.resource_names_subscribe.len(), unsubscribe = request.resource_names_unsubscribe.len(),
            nack = request.error_detail.is_some(), "delta request"
        );
        let names = request
            .resource_names_subscribe
            .iter()
            .chain(&request.resource_names_unsubscribe)
            .chain(request.initial_resource_versions.keys());
        for name in names {
            Self::check_name(name)?;
        }
        let max_names = self.max_names();
        if request.initial_resource_versions.len() > max_names {
            self.state.metrics.limited_streams.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "more than {max_names} initial resource versions (--xds-max-names)"
            )));
        }
        if !request.response_nonce.is_empty() {
            let error = request.error_detail.as_ref().map(|e| e.message.as_str());
            self.acknowledge(&request.type_url, &request.response_nonce, error);
        }
        let type_url = request.type_url;
        let named = is_named_type(&type_url);
        let st = self.types.entry(type_url.clone()).or_default();
        let mut wanted: Vec<&String> = request
            .resource_names_subscribe
            .iter()
            .filter(|name| *name != "*" && !st.names.contains(name))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut newly_subscribed = Vec::with_capacity(wanted.len());
        for name in wanted {
            self.budget.add(name);
            if self.budget.names > max_names {
                break; // reported by check_budget below
            }
            newly_subscribed.push(self.intern(&type_url, name));
        }
        let mut unsubscribed = Vec::new();
        let st = self.types.entry(type_url.clone()).or_default();
        let first = !st.subscribed;
        if first {
            st.subscribed = true;
            st.rescan = true;
            // Legacy wildcard: the first request for CDS/LDS names nothing.
            st.wildcard = !named && request.resource_names_subscribe.is_empty();
        }
        if request.resource_names_subscribe.iter().any(|n| n == "*") {
            st.rescan |= !st.wildcard;
            st.wildcard = true;
        }
        newly_subscribed.sort_unstable();
        newly_subscribed.dedup();
        st.names.extend(newly_subscribed.clone());
        let len = st.names.len();
        st.touch(&newly_subscribed, len);
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                if st.names.remove(name) {
                    self.budget.remove(name);
                    unsubscribed.push(name);
                }
                st.known.remove(name);
            }
        }
        for name in unsubscribed {
            self.unsubscribed(&type_url, name);
        }
        if first {
            // What the Envoy already holds (it reconnected): named types only for what it
            // subscribes to, so that `known` never outgrows the subscriptions.
            let at = self.at.clone();
            let table = at.table(self.protocol.table_key(&type_url));
            let st = self.types.get_mut(&type_url).expect("present");
            let mut held: Vec<Arc<Entry>> = request
                .initial_resource_versions
                .into_iter()
                .filter(|(name, _)| !named || st.names.contains(name))
                .map(|(name, version)| match table.get_key_value(name.as_str()) {
                    // The current version: hold the snapshot's entry.
                    Some((_, entry)) if entry.version() == version => entry.clone(),
                    shared => Arc::new(Entry {
                        name: shared.map_or_else(|| name.into(), |(n, _)| n.clone()),
                        resource: Arc::new(PackedResource {
                            version,
                            resource: Default::default(),
                        }),
                        secrets: Arc::new([]),
                    }),
                })
                .collect();
            held.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            st.known.apply(&held, &[]);
            // Holding a cluster's or listener's current version proves it was sent to this
            // Envoy before.
            if refers_to_secrets(&type_url) {
                let current: Vec<Arc<Entry>> = held
                    .into_iter()
                    .filter(|e| table.get(&e.name).is_some_and(|t| Arc::ptr_eq(t, e)))
                    .collect();
                self.grant_secrets_of(&current);
            }
        }
        self.check_budget()?;
        for name in &newly_subscribed {
            self.note_withheld(&type_url, name);
        }
        Ok(())
    }

    /// What to send the stream for `type_url`: nothing, one response, or the parts of a push
    /// larger than `Limits::response_bytes` (removals ride with the last).
    fn delta_response(&mut self, type_url: &str) -> Vec<DeltaResponse> {
        let at = self.at.clone();
        let table = at.table(self.protocol.table_key(type_url));
        let Some(st) = self.types.get_mut(type_url).filter(|st| st.subscribed) else {
            return Vec::new();
        };
        let candidates = st.take_candidates();
        let (changed, removed) =
            delta_diff(st, &self.granted_secrets, type_url, table, candidates.as_deref());
        if changed.is_empty() && removed.is_empty() && st.answered {
            self.settle(type_url, at.version());
            return Vec::new();
        }
        st.answered = true;
        st.known.apply(&changed, &removed);
        if refers_to_secrets(type_url) {
            self.grant_secrets_of(&changed);
        }
        self.count_sent(type_url, &changed);
        let count = changed.len();
        let parts = split_by_bytes(changed, self.state.limits.response_bytes);
        let (last, mut removed) = (parts.len() - 1, Some(removed));
        // Parts of an earlier push still unanswered stay pending: Envoy answers them first, and a
        // NACK of one must still be reported with what it carried.
        // A client that reads but never acknowledges keeps only the last few.
        let earlier = self.types.get_mut(type_url).expect("present").pending.take();
        let mut pending = Pending {
            version: at.version(),
            rejected: earlier.as_ref().is_some_and(|p| p.rejected),
            parts: earlier.map(|p| p.parts).unwrap_or_default(),
        };
        let excess = pending.parts.len().saturating_sub(MAX_UNANSWERED_PARTS);
        pending.parts.drain(..excess);
        let mut responses = Vec::with_capacity(parts.len());
        for (i, resources) in parts.into_iter().enumerate() {
            let nonce = self.nonce();
            pending.parts.push((nonce.clone(), resources.clone()));
            responses.push(DeltaResponse {
                system_version_info: at.version().to_string(),
                resources,
                type_url: type_url.to_string(),
                removed_resources: if i == last {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                nonce,
            });
        }
        tracing::debug!(node = %self.node, r#type = short_name(type_url), count, removed = responses[last].removed_resources.len(), parts = responses.len(), snapshot = at.version(), "delta push");
        self.types.get_mut(type_url).expect("present").pending = Some(pending);
        responses
    }

    // -----------------------------------------------------------------------------------------
    // State of the world

    async fn run_sotw(
        self,
        requests: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<SotwResponse, Status>>,
    ) {
        let on_request = |session: &mut Session, request: DiscoveryRequest| {
            let arrived = std::time::Instant::now();
            let type_url = request.type_url.clone();
            let Some(force) = session.on_sotw_request(request)? else {
                return Ok(Vec::new());
            };
            let response = session.sotw_response(&type_url, force);
            if response.is_some() {
                session.state.metrics.answered(&type_url, arrived);
            }
            Ok(Vec::from_iter(response))
        };
        let on_change = |session: &mut Session, type_url: &str| {
            Vec::from_iter(session.sotw_response(type_url, false))
        };
        self.pump(requests, tx, on_request, on_change).await
    }

    /// Returns whether a response must be sent even if nothing changed (a new subscription), or
    /// None for a request with a stale nonce, which the protocol says to ignore.
    fn on_sotw_request(&mut self, request: DiscoveryRequest) -> Result<Option<bool>, Status> {
        self.check_request(&request.type_url, request.node.as_ref())?;
        for name in &request.resource_names {
            Self::check_name(name)?;
        }
        let type_url = request.type_url.clone();
        if !request.response_nonce.is_empty() {
            let error = request.error_detail.as_ref().map(|e| e.message.as_str());
            let stale = !self.acknowledge(&type_url, &request.response_nonce, error)
                && self.types.get(&type_url).is_some_and(|st| st.pending.is_some());
            if stale {
                return Ok(None);
            }
        }
        // State of the world: each request lists every name, so the budget is the new list's.
        let previous = self.types.get(&type_url).map(|st| &st.names);
        for name in previous.into_iter().flat_map(|n| n.iter()) {
            self.budget.remove(name);
        }
        let mut names = NameSet::default();
        names.extend(request.resource_names.iter().map(|n| self.intern(&type_url, n)).collect());
        for name in names.iter() {
            self.budget.add(name);
        }
        let wildcard = !is_named_type(&type_url) && (names.is_empty() || names.contains("*"));
        let st = self.types.entry(type_url.clone()).or_default();
        let first = !st.subscribed;
        let changed = first || names != st.names || wildcard != st.wildcard;
        let added: Vec<Name> = names.iter().filter(|n| !st.names.contains(n)).cloned().collect();
        let removed: Vec<Name> = st.names.iter().filter(|n| !names.contains(n)).cloned().collect();
        st.subscribed = true;
        st.wildcard = wildcard;
        st.names = names;
        if changed {
            st.known = Held::default();
            st.dirty = Vec::new();
            st.rescan = true;
        }
        for name in &removed {
            self.unsubscribed(&type_url, name);
        }
        self.check_budget()?;
        for name in &added {
            self.note_withheld(&type_url, name);
        }
        Ok(Some(changed))
    }

    fn sotw_response(&mut self, type_url: &str, force: bool) -> Option<SotwResponse> {
        let at = self.at.clone();
        let table = at.table(type_url);
        let st = self.types.get_mut(type_url).filter(|st| st.subscribed)?;
        let candidates = st.take_candidates();
        let granted = &self.granted_secrets;
        if !force && !sotw_differs(st, granted, type_url, table, candidates.as_deref()) {
            self.settle(type_url, at.version());
            return None;
        }
        let scope = sotw_scope(st, granted, type_url, table);
        st.known = Held(scope.clone());
        if refers_to_secrets(type_url) {
            self.grant_secrets_of(&scope);
        }
        let nonce = self.nonce();
        let st = self.types.get_mut(type_url).expect("present");
        st.pending = Some(Pending::one(at.version(), nonce.clone()));
        self.count_sent(type_url, &scope);
        tracing::debug!(node = %self.node, r#type = short_name(type_url), count = scope.len(), snapshot = at.version(), "sotw push");
        Some(SotwResponse {
            version_info: at.version().to_string(),
            resources: scope,
            type_url: type_url.to_string(),
            nonce,
        })
    }

    fn close(&self, status: Option<&Status>) {
        match status {
            None => tracing::info!(session = self.id, node = %self.node, "Envoy disconnected"),
            Some(status) => tracing::info!(
                session = self.id, node = %self.node, peer = ?self.peer.address,
                code = ?status.code(), message = %status.message(), "xDS stream ended"
            ),
        }
        self.state.sessions.lock().unwrap().remove(&self.id);
    }
}

/// What a NACK rejected, with the versions sent: the resources of the rejected response that
/// Envoy's message names (it names the cluster or secret it could not use), or all of them when
/// it names none. A response that carried no resource list (state of the world) sent `known`.
fn rejected_resources(st: &TypeState, sent: &[Arc<Entry>], message: &str) -> Vec<(String, String)> {
    let sent: &[Arc<Entry>] = if sent.is_empty() { &st.known.0 } else { sent };
    let with_version = |e: &Arc<Entry>| (e.name.to_string(), e.version().to_string());
    let named: Vec<_> =
        sent.iter().filter(|e| message.contains(e.name.as_ref())).map(with_version).collect();
    if named.is_empty() {
        sent.iter().map(with_version).collect()
    } else {
        named
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::WireMessage;
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use prost::Message;
    use std::collections::BTreeSet;

    fn snapshot(version: u64, resources: &[(&str, &str, &str)]) -> Snapshot {
        let mut snapshot = Snapshot::new(version, Default::default());
        for (type_url, name, v) in resources {
            snapshot.resources.get_mut(*type_url).unwrap().insert(
                name.to_string(),
                Arc::new(PackedResource {
                    version: v.to_string(),
                    resource: Any { type_url: type_url.to_string(), value: v.as_bytes().to_vec() }
                        .into(),
                }),
            );
        }
        snapshot
    }

    fn session() -> Session {
        session_of(Protocol::Delta)
    }

    fn sotw_session() -> Session {
        session_of(Protocol::Sotw)
    }

    fn session_of(protocol: Protocol) -> Session {
        session_with(protocol, Limits::default())
    }

    fn session_with(protocol: Protocol, limits: Limits) -> Session {
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        Session::new(XdsState::with_limits(rx, limits), protocol, Peer::default())
    }

    /// Moves `s` to `snapshot`, as a published change would (with the changes computed once).
    fn goto(s: &mut Session, snapshot: &Snapshot) {
        let (next, changes) = Served::build(s.at.seq + 1, Arc::new(snapshot.clone()), Some(&s.at));
        s.advance(Arc::new(next), Some(vec![Arc::new(changes)]));
    }

    fn delta_req(
        s: &mut Session,
        request: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<(), Status> {
        goto(s, snapshot);
        s.on_delta_request(request)
    }

    /// The response at `snapshot`, as the client decodes it.
    fn delta_resp(
        s: &mut Session,
        type_url: &str,
        snapshot: &Snapshot,
    ) -> Option<DeltaDiscoveryResponse> {
        goto(s, snapshot);
        let mut parts = s.delta_response(type_url);
        assert!(parts.len() <= 1, "these tests' pushes fit in one response");
        Some(DeltaDiscoveryResponse::decode(&parts.pop()?.encode_to_vec()[..]).unwrap())
    }

    fn sotw_resp(
        s: &mut Session,
        type_url: &str,
        snapshot: &Snapshot,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        goto(s, snapshot);
        let response = s.sotw_response(type_url, force)?;
        Some(DiscoveryResponse::decode(&response.encode_to_vec()[..]).unwrap())
    }

    fn delta(
        type_url: &str,
        subscribe: &[&str],
        unsubscribe: &[&str],
        nonce: &str,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<(&str, &str)> {
        response.resources.iter().map(|r| (r.name.as_str(), r.version.as_str())).collect()
    }

    fn acked(session: &Session) -> Option<u64> {
        session.state.sessions()[0].acked_version
    }

    #[test]
    fn delta_wildcard_sends_only_changes_and_removals() {
        let cds = Cluster::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&cds, "a", "1"), (&cds, "b", "1")]);
        delta_req(&mut s, delta(&cds, &[], &[], ""), &Snapshot::default()).unwrap();
        let response = delta_resp(&mut s, &cds, &v1).unwrap();
        assert_eq!(names(&response), [("a", "1"), ("b", "1")]);
        assert_eq!(acked(&s), None);

        delta_req(&mut s, delta(&cds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();
        assert_eq!(acked(&s), Some(1));
        assert!(delta_resp(&mut s, &cds, &v1).is_none(), "an ACK needs no answer");

        let v2 = snapshot(2, &[(&cds, "a", "2")]);
        let response = delta_resp(&mut s, &cds, &v2).unwrap();
        assert_eq!(names(&response), [("a", "2")]);
        assert_eq!(response.removed_resources, ["b"]);
        assert_eq!(response.system_version_info, "2");
        delta_req(&mut s, delta(&cds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();
        assert_eq!(acked(&s), Some(2));
    }

    #[test]
    fn responses_are_counted_by_type_with_the_time_of_the_last() {
        let (cds, eds) = (Cluster::type_url(), ClusterLoadAssignment::type_url());
        let unix_micros = || {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
                as u64
        };
        let mut s = session();
        let v1 = snapshot(1, &[(&cds, "a", "1"), (&cds, "b", "22"), (&eds, "a", "333")]);
        let before = unix_micros();
        delta_req(&mut s, delta(&cds, &[], &[], ""), &Snapshot::default()).unwrap();
        delta_resp(&mut s, &cds, &v1).unwrap();
        let after = unix_micros();
        let state = s.state.clone();
        let m = &state.metrics;
        let by =
            |short: &str| &m.sent_by_type[SENT_TYPES.iter().position(|t| *t == short).unwrap()];
        let (c, e) = (by("CDS"), by("EDS"));
        assert_eq!(c.responses.load(Ordering::Relaxed), 1);
        assert_eq!(c.resources.load(Ordering::Relaxed), 2);
        assert_eq!(c.bytes.load(Ordering::Relaxed), 3, "the encoded values \"1\" and \"22\"");
        let sent = c.last_sent_unix_micros.load(Ordering::Relaxed);
        assert!((before..=after).contains(&sent), "{before} <= {sent} <= {after}");
        assert_eq!(e.last_sent_unix_micros.load(Ordering::Relaxed), 0, "no EDS response yet");

        delta_req(&mut s, delta(&eds, &["a"], &[], ""), &v1).unwrap();
        delta_resp(&mut s, &eds, &v1).unwrap();
        assert_eq!(e.resources.load(Ordering::Relaxed), 1);
        assert!(e.last_sent_unix_micros.load(Ordering::Relaxed) >= sent);
        let total: u64 = m.sent_by_type.iter().map(|t| t.bytes.load(Ordering::Relaxed)).sum();
        assert_eq!(total, m.bytes_sent.load(Ordering::Relaxed), "the types add up to the total");
        assert_eq!(m.responses_sent.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn delta_named_types_follow_subscriptions_and_never_remove() {
        let sds = ClusterLoadAssignment::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&sds, "ca-old", "1"), (&sds, "ca-new", "1")]);
        delta_req(&mut s, delta(&sds, &["ca-old"], &[], ""), &Snapshot::default()).unwrap();
        let response = delta_resp(&mut s, &sds, &v1).unwrap();
        assert_eq!(names(&response), [("ca-old", "1")]);
        delta_req(&mut s, delta(&sds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();

        // The secret disappears from the snapshot while Envoy still uses it: no removal.
        let v2 = snapshot(2, &[(&sds, "ca-new", "1")]);
        assert!(delta_resp(&mut s, &sds, &v2).is_none());
        assert_eq!(acked(&s), Some(2));

        delta_req(&mut s, delta(&sds, &["ca-new"], &["ca-old"], ""), &Snapshot::default()).unwrap();
        let response = delta_resp(&mut s, &sds, &v2).unwrap();
        assert_eq!(names(&response), [("ca-new", "1")]);
        assert!(response.removed_resources.is_empty());
    }

    #[test]
    fn delta_nack_is_recorded_and_not_resent_until_the_resource_changes() {
        let cds = Cluster::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&cds, "a", "1")]);
        delta_req(&mut s, delta(&cds, &[], &[], ""), &Snapshot::default()).unwrap();
        let response = delta_resp(&mut s, &cds, &v1).unwrap();
        let mut nack = delta(&cds, &[], &[], &response.nonce);
        nack.error_detail =
            Some(RpcStatus { code: 3, message: "bad cluster".into(), details: vec![] });
        delta_req(&mut s, nack, &Snapshot::default()).unwrap();
        assert_eq!(s.state.sessions()[0].last_nack.as_deref(), Some("bad cluster"));
        assert_eq!(s.state.metrics.nacks.load(Ordering::Relaxed), 1);
        assert!(delta_resp(&mut s, &cds, &v1).is_none());
        let v2 = snapshot(2, &[(&cds, "a", "2")]);
        assert_eq!(names(&delta_resp(&mut s, &cds, &v2).unwrap()), [("a", "2")]);
    }

    fn decoded(parts: &[DeltaResponse]) -> Vec<DeltaDiscoveryResponse> {
        parts
            .iter()
            .map(|p| DeltaDiscoveryResponse::decode(&p.encode_to_vec()[..]).unwrap())
            .collect()
    }

    #[test]
    fn a_push_over_the_response_limit_goes_in_parts_each_acknowledged() {
        let cds = Cluster::type_url();
        let v1 = snapshot(
            1,
            &[
                (&cds, "a", "1"),
                (&cds, "b", "1"),
                (&cds, "c", "1"),
                (&cds, "d", "1"),
                (&cds, "e", "1"),
            ],
        );
        let mut probe = session();
        goto(&mut probe, &v1);
        let entry_len =
            super::super::wire::delta_resource_len(probe.at.table(&cds).values().next().unwrap());
        // Room for two of these clusters per response.
        let limits = Limits { response_bytes: 2 * entry_len, ..Limits::default() };
        let mut s = session_with(Protocol::Delta, limits);
        let rejections = Arc::new(Mutex::new(Vec::new()));
        let sink = rejections.clone();
        s.state.report_rejections_to(move |r| sink.lock().unwrap().push(r));
        goto(&mut s, &v1);
        s.on_delta_request(delta(&cds, &[], &[], "")).unwrap();
        let parts = s.delta_response(&cds);
        let resource_bytes = |p: &DeltaResponse| {
            p.resources.iter().map(|e| super::super::wire::delta_resource_len(e)).sum::<usize>()
        };
        assert!(parts.iter().all(|p| resource_bytes(p) <= 2 * entry_len));
        let parts = decoded(&parts);
        assert_eq!(
            parts.iter().map(names).collect::<Vec<_>>(),
            [vec![("a", "1"), ("b", "1")], vec![("c", "1"), ("d", "1")], vec![("e", "1")]]
        );
        assert!(parts.iter().all(|p| p.system_version_info == "1"));
        let nonces: BTreeSet<&str> = parts.iter().map(|p| p.nonce.as_str()).collect();
        assert_eq!(nonces.len(), 3, "each part has its own nonce");
        for part in &parts {
            assert_eq!(acked(&s), None, "acknowledged before its last part");
            s.on_delta_request(delta(&cds, &[], &[], &part.nonce)).unwrap();
        }
        assert_eq!(acked(&s), Some(1));

        // Removals ride with the last part.
        let v2 = snapshot(2, &[(&cds, "a", "2"), (&cds, "b", "2"), (&cds, "c", "2")]);
        goto(&mut s, &v2);
        let parts = decoded(&s.delta_response(&cds));
        assert_eq!(
            parts.iter().map(|p| (names(p), p.removed_resources.clone())).collect::<Vec<_>>(),
            [
                (vec![("a", "2"), ("b", "2")], vec![]),
                (vec![("c", "2")], vec!["d".to_string(), "e".to_string()])
            ]
        );
        // A NACK of one part is reported with that part's resources, and the push is not
        // acknowledged even though its other part is.
        let mut nack = delta(&cds, &[], &[], &parts[0].nonce);
        nack.error_detail =
            Some(RpcStatus { code: 3, message: "cluster b: rejected".into(), details: vec![] });
        s.on_delta_request(nack).unwrap();
        s.on_delta_request(delta(&cds, &[], &[], &parts[1].nonce)).unwrap();
        assert_eq!(acked(&s), Some(1));
        let rejections = rejections.lock().unwrap();
        assert_eq!(rejections.len(), 1);
        assert_eq!(rejections[0].resources, [("b".to_string(), "2".to_string())]);
        assert_eq!(s.state.metrics.nacks.load(Ordering::Relaxed), 1);

        // A resource larger than the limit goes alone.
        let mut s =
            session_with(Protocol::Delta, Limits { response_bytes: 1, ..Limits::default() });
        goto(&mut s, &v1);
        s.on_delta_request(delta(&cds, &[], &[], "")).unwrap();
        assert_eq!(
            s.delta_response(&cds).iter().map(|p| p.resources.len()).collect::<Vec<_>>(),
            [1; 5]
        );
    }

    #[test]
    fn a_push_made_before_the_previous_was_answered_keeps_that_one_pending() {
        let cds = Cluster::type_url();
        let v1 = snapshot(1, &[(&cds, "a", "1"), (&cds, "b", "1")]);
        let v2 = snapshot(2, &[(&cds, "a", "2"), (&cds, "b", "1")]);
        for rejected in [false, true] {
            let mut s = session();
            let rejections = Arc::new(Mutex::new(Vec::new()));
            let sink = rejections.clone();
            s.state.report_rejections_to(move |r| sink.lock().unwrap().push(r));
            goto(&mut s, &v1);
            s.on_delta_request(delta(&cds, &[], &[], "")).unwrap();
            let first = decoded(&s.delta_response(&cds));
            goto(&mut s, &v2);
            let second = decoded(&s.delta_response(&cds));
            assert_eq!(names(&second[0]), [("a", "2")]);
            // Envoy answers in order: the first push, then the second.
            let mut answer = delta(&cds, &[], &[], &first[0].nonce);
            if rejected {
                answer.error_detail = Some(RpcStatus {
                    code: 3,
                    message: "cluster a: rejected".into(),
                    details: vec![],
                });
            }
            s.on_delta_request(answer).unwrap();
            assert_eq!(acked(&s), None, "the second push is not answered yet");
            s.on_delta_request(delta(&cds, &[], &[], &second[0].nonce)).unwrap();
            let rejections = rejections.lock().unwrap();
            if rejected {
                // Reported with the version that push carried, not the one sent since.
                assert_eq!(rejections.len(), 1);
                assert_eq!(rejections[0].resources, [("a".to_string(), "1".to_string())]);
                assert_eq!(acked(&s), None);
            } else {
                assert!(rejections.is_empty());
                assert_eq!(acked(&s), Some(2));
            }
        }
    }

    #[test]
    fn delta_reconnect_with_initial_versions_sends_only_what_differs() {
        let cds = Cluster::type_url();
        let mut s = session();
        let mut request = delta(&cds, &[], &[], "");
        request.initial_resource_versions.insert("a".into(), "1".into());
        request.initial_resource_versions.insert("b".into(), "old".into());
        delta_req(&mut s, request, &Snapshot::default()).unwrap();
        let v1 = snapshot(1, &[(&cds, "a", "1"), (&cds, "b", "1")]);
        assert_eq!(names(&delta_resp(&mut s, &cds, &v1).unwrap()), [("b", "1")]);
    }

    fn sotw(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sotw_sends_whole_scope_ignores_acks_and_stale_nonces() {
        let sds = ClusterLoadAssignment::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&sds, "x", "1"), (&sds, "y", "1")]);
        let force = s.on_sotw_request(sotw(&sds, &["x"], "")).unwrap().unwrap();
        let first = sotw_resp(&mut s, &sds, &v1, force).unwrap();
        assert_eq!(first.resources.len(), 1);
        assert_eq!(first.version_info, "1");

        let force = s.on_sotw_request(sotw(&sds, &["x"], &first.nonce)).unwrap().unwrap();
        assert!(sotw_resp(&mut s, &sds, &v1, force).is_none(), "an ACK needs no answer");
        assert_eq!(acked(&s), Some(1));

        let force = s.on_sotw_request(sotw(&sds, &["x", "y"], &first.nonce)).unwrap().unwrap();
        let second = sotw_resp(&mut s, &sds, &v1, force).unwrap();
        assert_eq!(second.resources.len(), 2, "a new name means the whole scope again");
        assert!(
            s.on_sotw_request(sotw(&sds, &["x"], &first.nonce)).unwrap().is_none(),
            "a request answering an older response is stale"
        );
    }

    #[test]
    fn delta_routes_leave_virtual_hosts_to_vhds_which_sends_and_removes_them() {
        let (rds, vhds) = (RouteConfiguration::type_url(), VirtualHost::type_url());
        let v1 = snapshot(
            1,
            &[
                (&rds, "rc", "inline-1"),
                (VHDS_ROUTE_CONFIGURATIONS, "rc", "base"),
                (&vhds, "rc/a.example", "1"),
                (&vhds, "rc/b.example", "1"),
            ],
        );
        let mut s = session();
        delta_req(&mut s, delta(&rds, &["rc"], &[], ""), &Snapshot::default()).unwrap();
        let response = delta_resp(&mut s, &rds, &v1).unwrap();
        assert_eq!(
            names(&response),
            [("rc", "base")],
            "delta gets the route configuration for VHDS"
        );
        // Envoy's VHDS subscription names nothing: it takes every virtual host.
        delta_req(&mut s, delta(&vhds, &[], &[], ""), &Snapshot::default()).unwrap();
        let response = delta_resp(&mut s, &vhds, &v1).unwrap();
        assert_eq!(names(&response), [("rc/a.example", "1"), ("rc/b.example", "1")]);
        delta_req(&mut s, delta(&vhds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();

        // A host goes and another changes: the route configuration stays, VHDS sends the
        // difference and the removal (the host must stop routing).
        let v2 = snapshot(
            2,
            &[
                (&rds, "rc", "inline-2"),
                (VHDS_ROUTE_CONFIGURATIONS, "rc", "base"),
                (&vhds, "rc/a.example", "2"),
            ],
        );
        assert!(delta_resp(&mut s, &rds, &v2).is_none());
        let response = delta_resp(&mut s, &vhds, &v2).unwrap();
        assert_eq!(names(&response), [("rc/a.example", "2")]);
        assert_eq!(response.removed_resources, ["rc/b.example"]);

        // State of the world has no VHDS: it gets the route configuration with hosts inline.
        let mut sotw_session = sotw_session();
        let force = sotw_session.on_sotw_request(sotw(&rds, &["rc"], "")).unwrap().unwrap();
        let response = sotw_resp(&mut sotw_session, &rds, &v2, force).unwrap();
        assert_eq!(response.resources[0].value, b"inline-2");
    }

    #[test]
    fn delta_answers_a_new_subscription_even_with_nothing_to_send() {
        let cds = Cluster::type_url();
        let mut s = session();
        let empty = snapshot(1, &[]);
        delta_req(&mut s, delta(&cds, &[], &[], ""), &Snapshot::default()).unwrap();
        let response = delta_resp(&mut s, &cds, &empty).expect("Envoy waits for a first answer");
        assert!(response.resources.is_empty() && response.removed_resources.is_empty());
        delta_req(&mut s, delta(&cds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();
        assert!(delta_resp(&mut s, &cds, &empty).is_none(), "then only changes");
        assert_eq!(acked(&s), Some(1));
    }

    /// Puts a real, encoded cluster into the snapshot: its TLS context references `client_cert`
    /// (tls_certificate_sds_secret_configs) and `ca` (combined validation context) over SDS.
    fn put_cluster(
        snapshot: &mut Snapshot,
        name: &str,
        version: &str,
        client_cert: &str,
        ca: &str,
    ) {
        use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
        let sds = |name: &str| tls::SdsSecretConfig { name: name.into(), ..Default::default() };
        let context = tls::UpstreamTlsContext {
            common_tls_context: Some(tls::CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds(client_cert)],
                validation_context_type: Some(
                    tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                        tls::common_tls_context::CombinedCertificateValidationContext {
                            validation_context_sds_secret_config: Some(sds(ca)),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cluster = Cluster {
            name: name.into(),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(
                    super::super::translate::pack(&context),
                )),
            }),
            ..Default::default()
        };
        snapshot.resources.get_mut(&Cluster::type_url()).unwrap().insert(
            name.into(),
            Arc::new(PackedResource {
                version: version.into(),
                resource: super::super::translate::pack(&cluster).into(),
            }),
        );
    }

    fn sent_names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn secrets_go_only_to_streams_sent_a_cluster_that_references_them() {
        let (cds, sds) = (Cluster::type_url(), Secret::type_url());
        let mut v1 = snapshot(1, &[(&sds, "client-cert", "k"), (&sds, "ca-1", "c")]);
        put_cluster(&mut v1, "backend", "1", "client-cert", "ca-1");

        // A client that never asked for clusters asks for the client certificate by name.
        let mut thief = session();
        delta_req(&mut thief, delta(&sds, &["client-cert"], &[], ""), &v1).unwrap();
        let response = delta_resp(&mut thief, &sds, &v1).expect("answered, with nothing");
        assert!(response.resources.is_empty(), "withheld: {:?}", sent_names(&response));
        assert_eq!(thief.state.metrics.secrets_withheld.load(Ordering::Relaxed), 1);

        // An Envoy: clusters first, then the secrets they name.
        let mut envoy = session();
        delta_req(&mut envoy, delta(&cds, &[], &[], ""), &v1).unwrap();
        assert_eq!(sent_names(&delta_resp(&mut envoy, &cds, &v1).unwrap()), ["backend"]);
        delta_req(&mut envoy, delta(&sds, &["client-cert", "ca-1"], &[], ""), &v1).unwrap();
        assert_eq!(
            sent_names(&delta_resp(&mut envoy, &sds, &v1).unwrap()),
            ["ca-1", "client-cert"]
        );
        assert_eq!(envoy.state.metrics.secrets_withheld.load(Ordering::Relaxed), 0);

        // State of the world follows the same rule.
        let mut sotw_thief = sotw_session();
        let force = sotw_thief.on_sotw_request(sotw(&sds, &["client-cert"], "")).unwrap().unwrap();
        assert!(sotw_resp(&mut sotw_thief, &sds, &v1, force).unwrap().resources.is_empty());
        let force = sotw_thief.on_sotw_request(sotw(&cds, &[], "")).unwrap().unwrap();
        assert_eq!(sotw_resp(&mut sotw_thief, &cds, &v1, force).unwrap().resources.len(), 1);
        assert_eq!(sotw_resp(&mut sotw_thief, &sds, &v1, false).unwrap().resources.len(), 1);
    }

    /// An HTTPS listener's certificate (and key) goes only to streams that were sent that
    /// listener: the Envoys serving the Gateway, not one that fetched only clusters or nothing.
    #[test]
    fn listener_certificates_go_only_to_streams_sent_their_listener() {
        use crate::ir;
        let (cds, lds, sds) = (Cluster::type_url(), Listener::type_url(), Secret::type_url());
        let cert = backendtls_contract::listener_certificate_secret_name("infra", "cert");
        let mut ir = ir::Ir::default();
        ir.listeners.push(ir::Listener {
            name: "gateway_infra_gw_8443".into(),
            port: 8443,
            virtual_hosts: Vec::new(),
            tls: vec![ir::TlsChain {
                hostname: Some("example.org".into()),
                certificates: vec![cert.clone()],
            }],
            tcp_proxies: Vec::new(),
        });
        let resources = super::super::translate::translate(&ir, &Default::default());
        let listener = &resources.listeners[0];
        assert_eq!(authz::listener_secrets(&listener.resource), std::slice::from_ref(&cert));
        let mut v1 = snapshot(1, &[(&sds, &cert, "k")]);
        v1.resources.get_mut(&lds).unwrap().insert(
            listener.resource.name.clone(),
            Arc::new(PackedResource {
                version: listener.version.clone(),
                resource: super::super::translate::pack(&listener.resource).into(),
            }),
        );
        put_cluster(&mut v1, "backend", "1", "client-cert", "ca-1");

        // Clusters only, or nothing: the certificate is withheld.
        let mut other = session();
        delta_req(&mut other, delta(&cds, &[], &[], ""), &v1).unwrap();
        delta_resp(&mut other, &cds, &v1).unwrap();
        delta_req(&mut other, delta(&sds, &[&cert], &[], ""), &v1).unwrap();
        assert!(delta_resp(&mut other, &sds, &v1).unwrap().resources.is_empty());
        assert_eq!(other.state.metrics.secrets_withheld.load(Ordering::Relaxed), 1);

        // The listener first, then its certificate.
        let mut edge = session();
        delta_req(&mut edge, delta(&lds, &[], &[], ""), &v1).unwrap();
        assert_eq!(
            sent_names(&delta_resp(&mut edge, &lds, &v1).unwrap()),
            ["gateway_infra_gw_8443"]
        );
        delta_req(&mut edge, delta(&sds, &[&cert], &[], ""), &v1).unwrap();
        assert_eq!(sent_names(&delta_resp(&mut edge, &sds, &v1).unwrap()), [cert.as_str()]);

        // State of the world, and a reconnect that names the listener's current version.
        let mut sotw_edge = sotw_session();
        let force = sotw_edge.on_sotw_request(sotw(&sds, &[&cert], "")).unwrap().unwrap();
        assert!(sotw_resp(&mut sotw_edge, &sds, &v1, force).unwrap().resources.is_empty());
        let force = sotw_edge.on_sotw_request(sotw(&lds, &[], "")).unwrap().unwrap();
        sotw_resp(&mut sotw_edge, &lds, &v1, force).unwrap();
        assert_eq!(sotw_resp(&mut sotw_edge, &sds, &v1, false).unwrap().resources.len(), 1);
        for (claimed, granted) in [(listener.version.as_str(), true), ("forged", false)] {
            let mut s = session();
            let mut request = delta(&lds, &[], &[], "");
            request
                .initial_resource_versions
                .insert("gateway_infra_gw_8443".into(), claimed.into());
            delta_req(&mut s, request, &v1).unwrap();
            assert_eq!(s.granted_secrets.contains(&cert), granted, "claimed version {claimed}");
        }
    }

    #[test]
    fn a_secret_granted_after_it_was_asked_for_follows_and_reconnects_prove_possession() {
        let (cds, sds) = (Cluster::type_url(), Secret::type_url());
        let mut v1 = snapshot(1, &[(&sds, "ca-2", "c")]);
        put_cluster(&mut v1, "backend", "1", "none", "ca-2");
        let mut s = session();
        delta_req(&mut s, delta(&sds, &["ca-2"], &[], ""), &v1).unwrap();
        assert!(delta_resp(&mut s, &sds, &v1).unwrap().resources.is_empty());
        delta_req(&mut s, delta(&cds, &[], &[], ""), &v1).unwrap();
        delta_resp(&mut s, &cds, &v1).unwrap();
        assert!(std::mem::take(&mut s.sds_follow_up), "SDS is answered again");
        assert_eq!(sent_names(&delta_resp(&mut s, &sds, &v1).unwrap()), ["ca-2"]);

        // After a loader restart Envoy names the cluster version it holds: only the current
        // version counts as proof.
        for (claimed, granted) in [("1", true), ("forged", false)] {
            let mut s = session();
            let mut request = delta(&cds, &[], &[], "");
            request.initial_resource_versions.insert("backend".into(), claimed.into());
            delta_req(&mut s, request, &v1).unwrap();
            assert_eq!(s.granted_secrets.contains("ca-2"), granted, "claimed version {claimed}");
        }
    }

    #[test]
    fn unknown_types_and_oversized_subscriptions_end_the_stream() {
        let mut s = session();
        let error =
            s.on_delta_request(delta("type.googleapis.com/x.Unknown", &[], &[], "")).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("x.Unknown"), "{}", error.message());

        let eds = ClusterLoadAssignment::type_url();
        let max = s.state.limits.max_names_per_stream;
        let names: Vec<String> = (0..=max).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut s = session();
        delta_req(&mut s, delta(&eds, &names[..max], &[], ""), &Snapshot::default()).unwrap();
        let error = s.on_delta_request(delta(&eds, &names[max..], &[], "")).unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
        // Unsubscribing frees the budget.
        let mut s = session();
        delta_req(&mut s, delta(&eds, &names[..max], &[], ""), &Snapshot::default()).unwrap();
        delta_req(&mut s, delta(&eds, &names[max..], &names[..1], ""), &Snapshot::default())
            .unwrap();
        let error = s.on_sotw_request(sotw(&eds, &names, "")).unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);

        let long = "n".repeat(MAX_NAME_BYTES + 1);
        let error = session().on_delta_request(delta(&eds, &[&long], &[], "")).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn the_name_limit_grows_with_the_snapshot_so_an_envoy_subscribing_to_all_of_it_fits() {
        // A floor of 10 names; the snapshot serves 30 endpoint assignments, so 60 are allowed.
        let limits = Limits { max_names_per_stream: 10, ..Limits::default() };
        let eds = ClusterLoadAssignment::type_url();
        let names: Vec<String> = (0..61).map(|i| format!("c{i:02}")).collect();
        let served: Vec<(&str, &str, &str)> =
            names[..30].iter().map(|n| (eds.as_str(), n.as_str(), "1")).collect();
        let big = snapshot(1, &served);
        let session_at = |snapshot: &Snapshot| {
            let (_tx, rx) = watch::channel(Arc::new(snapshot.clone()));
            let mut s = Session::new(
                XdsState::with_limits(rx, limits.clone()),
                Protocol::Delta,
                Peer::default(),
            );
            goto(&mut s, snapshot);
            s
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // Everything served and as much again that it may still hold: within the limit.
        let mut s = session_at(&big);
        s.on_delta_request(delta(&eds, &names[..60], &[], "")).unwrap();
        let error = s.on_delta_request(delta(&eds, &names[60..], &[], "")).unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
        assert!(error.message().contains("more than 60"), "{}", error.message());
        // An empty snapshot: the floor.
        let mut s = session_at(&Snapshot::default());
        let error = s.on_delta_request(delta(&eds, &names[..11], &[], "")).unwrap_err();
        assert!(error.message().contains("more than 10"), "{}", error.message());
    }

    #[test]
    fn a_node_its_certificate_does_not_name_is_refused() {
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let identity = PeerIdentity { dns_names: vec!["edge-1".into()], uris: vec![] };
        let peer = Peer { identity: Some(Arc::new(identity)), ..Peer::default() };
        let mut s = Session::new(XdsState::new(rx), Protocol::Delta, peer);
        let mut request = delta(&Cluster::type_url(), &[], &[], "");
        request.node = Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "edge-2".into(),
            cluster: "backendtls".into(),
            ..Default::default()
        });
        let error = delta_req(&mut s, request.clone(), &Snapshot::default()).unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied);
        assert!(error.message().contains("edge-2"), "{}", error.message());
        request.node.as_mut().unwrap().id = "edge-1".into();
        delta_req(&mut s, request, &Snapshot::default()).unwrap();
        assert_eq!(s.node, "edge-1");
    }

    /// A tiny deterministic generator (xorshift) for the generated changes below.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// What the next response of `type_url` would send, computed from the stream's candidate
    /// names (the shared diff) and by a full scan of the snapshot against what it holds: they
    /// must agree.
    /// Returns whether the shared diff was used (not a rescan).
    fn check_shared_diff_is_the_truth(s: &Session, type_url: &str, context: &str) -> bool {
        let Some(st) = s.types.get(type_url).filter(|st| st.subscribed) else { return false };
        let table = s.at.table(s.protocol.table_key(type_url));
        let mut dirty = st.dirty.clone();
        dirty.sort_unstable();
        dirty.dedup();
        let candidates = (!st.rescan).then_some(&dirty[..]);
        let key = |(changed, removed): (Vec<Arc<Entry>>, Vec<Name>)| {
            let changed: Vec<(String, String)> =
                changed.iter().map(|e| (e.name.to_string(), e.version().to_string())).collect();
            (changed, removed)
        };
        match s.protocol {
            Protocol::Delta => assert_eq!(
                key(delta_diff(st, &s.granted_secrets, type_url, table, candidates)),
                key(delta_diff(st, &s.granted_secrets, type_url, table, None)),
                "{context}: {}",
                short_name(type_url)
            ),
            Protocol::Sotw => assert_eq!(
                sotw_differs(st, &s.granted_secrets, type_url, table, candidates),
                sotw_differs(st, &s.granted_secrets, type_url, table, None),
                "{context}: {}",
                short_name(type_url)
            ),
        }
        candidates.is_some()
    }

    /// What a client holds, from the responses it was sent.
    #[derive(Default)]
    struct Client(BTreeMap<String, BTreeMap<String, String>>);

    impl Client {
        fn take_delta(&mut self, response: &DeltaDiscoveryResponse) {
            let held = self.0.entry(response.type_url.clone()).or_default();
            for r in &response.resources {
                held.insert(r.name.clone(), r.version.clone());
            }
            for name in &response.removed_resources {
                held.remove(name);
            }
        }
    }

    /// Generated snapshot changes, subscriptions, ACKs and streams that fall behind: before every
    /// response, the diff from the shared changes equals a full scan of the snapshot against
    /// what the stream holds; after answering every type, the client holds exactly the current
    /// version of everything in its scope (and, for wildcard types, nothing else).
    #[test]
    fn the_shared_diff_equals_a_full_scan_on_generated_changes() {
        let (cds, eds, sds, vhds) = (
            Cluster::type_url(),
            ClusterLoadAssignment::type_url(),
            Secret::type_url(),
            VirtualHost::type_url(),
        );
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            // (type, name) -> version; clusters reference secret "cert" and "ca-<version>".
            let mut model: BTreeMap<(String, String), String> = BTreeMap::new();
            let mut version = 0;
            let build = |model: &BTreeMap<(String, String), String>, version: u64| {
                let mut snap = snapshot(version, &[]);
                for ((type_url, name), v) in model {
                    if *type_url == cds {
                        put_cluster(&mut snap, name, v, "cert", &format!("ca-{v}"));
                    } else {
                        snap.resources.get_mut(type_url).unwrap().insert(
                            name.clone(),
                            Arc::new(PackedResource {
                                version: v.clone(),
                                resource: Any {
                                    type_url: type_url.clone(),
                                    value: v.clone().into_bytes(),
                                }
                                .into(),
                            }),
                        );
                    }
                }
                snap
            };
            // Half the seeds split pushes into parts of a few resources each.
            let response_bytes = if seed % 2 == 0 { 1 + rng.below(40) } else { 4 << 20 };
            let mut delta_s =
                session_with(Protocol::Delta, Limits { response_bytes, ..Limits::default() });
            let mut sotw_s = sotw_session();
            let mut client = Client::default();
            let mut shared = 0;
            // Wildcard CDS and VHDS from the start, named EDS and SDS as the steps go.
            delta_s.on_delta_request(delta(&cds, &[], &[], "")).unwrap();
            delta_s.on_delta_request(delta(&vhds, &[], &[], "")).unwrap();
            sotw_s.on_sotw_request(sotw(&cds, &[], "")).unwrap();
            for step in 0..150 {
                let context = format!("seed {seed}, step {step}");
                match rng.below(4) {
                    0 | 1 => {
                        // A new snapshot: a few resources added, changed or removed.
                        for _ in 0..1 + rng.below(3) {
                            let type_url = [&cds, &eds, &sds, &vhds][rng.below(4)].clone();
                            let name = if type_url == sds {
                                if rng.below(2) == 0 {
                                    "cert".to_string()
                                } else {
                                    format!("ca-{}", rng.below(4))
                                }
                            } else {
                                format!("r{}", rng.below(6))
                            };
                            if rng.below(4) == 0 {
                                model.remove(&(type_url, name));
                            } else {
                                model.insert((type_url, name), rng.below(4).to_string());
                            }
                        }
                        version += 1;
                        let snap = build(&model, version);
                        goto(&mut delta_s, &snap);
                        goto(&mut sotw_s, &snap);
                    }
                    2 => {
                        // Subscribe or unsubscribe some endpoints or secrets.
                        let (type_url, pool): (&String, Vec<String>) = if rng.below(2) == 0 {
                            (&eds, (0..6).map(|i| format!("r{i}")).collect())
                        } else {
                            (
                                &sds,
                                ["cert", "ca-0", "ca-1", "ca-2", "ca-3"].map(String::from).to_vec(),
                            )
                        };
                        let picked: Vec<&str> = (0..rng.below(3))
                            .map(|_| pool[rng.below(pool.len())].as_str())
                            .collect();
                        let (sub, unsub): (&[&str], &[&str]) =
                            if rng.below(3) == 0 { (&[], &picked) } else { (&picked, &[]) };
                        delta_s.on_delta_request(delta(type_url, sub, unsub, "")).unwrap();
                        let mut names: BTreeSet<String> = sotw_s
                            .types
                            .get(type_url)
                            .map(|st| st.names.iter().map(|n| n.to_string()).collect())
                            .unwrap_or_default();
                        for n in sub {
                            names.insert(n.to_string());
                        }
                        for n in unsub {
                            names.remove(*n);
                        }
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        let nonce = sotw_s
                            .types
                            .get(type_url)
                            .and_then(|st| st.pending.as_ref())
                            .map(|p| p.last_nonce().to_string())
                            .unwrap_or_default();
                        if let Some(force) =
                            sotw_s.on_sotw_request(sotw(type_url, &names, &nonce)).unwrap()
                        {
                            check_shared_diff_is_the_truth(&sotw_s, type_url, &context);
                            sotw_s.sotw_response(type_url, force);
                        }
                        check_shared_diff_is_the_truth(&delta_s, type_url, &context);
                        for r in delta_s.delta_response(type_url) {
                            client.take_delta(
                                &DeltaDiscoveryResponse::decode(&r.encode_to_vec()[..]).unwrap(),
                            );
                        }
                        if std::mem::take(&mut delta_s.sds_follow_up) {
                            check_shared_diff_is_the_truth(&delta_s, &sds, &context);
                            for r in delta_s.delta_response(&sds) {
                                client.take_delta(
                                    &DeltaDiscoveryResponse::decode(&r.encode_to_vec()[..])
                                        .unwrap(),
                                );
                            }
                        }
                    }
                    _ => {
                        // The stream pushes what changed, type by type; sometimes it falls
                        // behind instead (the next push covers several snapshots).
                        if rng.below(3) == 0 {
                            continue;
                        }
                        for type_url in type_urls() {
                            shared += usize::from(check_shared_diff_is_the_truth(
                                &delta_s, &type_url, &context,
                            ));
                            for r in delta_s.delta_response(&type_url) {
                                client.take_delta(
                                    &DeltaDiscoveryResponse::decode(&r.encode_to_vec()[..])
                                        .unwrap(),
                                );
                                if rng.below(2) == 0 {
                                    delta_s
                                        .on_delta_request(delta(&type_url, &[], &[], &r.nonce))
                                        .unwrap();
                                }
                            }
                            check_shared_diff_is_the_truth(&sotw_s, &type_url, &context);
                            sotw_s.sotw_response(&type_url, false);
                        }
                        delta_s.sds_follow_up = false;
                        // In sync: exactly what is in scope, at its current version.
                        for type_url in [&cds, &eds, &vhds] {
                            let Some(st) = delta_s.types.get(type_url.as_str()) else { continue };
                            let expected: BTreeMap<String, String> = model
                                .iter()
                                .filter(|((t, n), _)| t == type_url && st.in_scope(n))
                                .map(|((_, n), v)| (n.clone(), v.clone()))
                                .collect();
                            let held = client.0.get(type_url.as_str()).cloned().unwrap_or_default();
                            if is_named_type(type_url) {
                                for (n, v) in &expected {
                                    assert_eq!(held.get(n), Some(v), "{context}: {n}");
                                }
                            } else {
                                assert_eq!(held, expected, "{context}: {}", short_name(type_url));
                            }
                        }
                        if let Some(st) = delta_s.types.get(&sds) {
                            for ((t, n), v) in &model {
                                if *t == sds
                                    && st.in_scope(n)
                                    && delta_s.granted_secrets.contains(n)
                                {
                                    assert_eq!(
                                        client.0[&sds].get(n),
                                        Some(v),
                                        "{context}: secret {n}"
                                    );
                                }
                            }
                        }
                        let st = &sotw_s.types[&cds];
                        let held: Vec<(&str, &str)> =
                            st.known.iter().map(|e| (e.name.as_ref(), e.version())).collect();
                        let expected: Vec<(&str, &str)> = model
                            .iter()
                            .filter(|((t, _), _)| *t == cds)
                            .map(|((_, n), v)| (n.as_str(), v.as_str()))
                            .collect();
                        assert_eq!(held, expected, "{context}: state of the world");
                    }
                }
            }
            assert!(shared > 20, "seed {seed}: the shared diff was used {shared} times");
        }
    }

    /// A stream that falls behind catches up with the changes the server remembers, or with a
    /// full comparison once it is further behind than that.
    #[test]
    fn streams_behind_get_every_missed_change_or_a_rescan() {
        let cds = Cluster::type_url();
        let (tx, rx) = watch::channel(Arc::new(snapshot(1, &[(&cds, "a", "1")])));
        let state = XdsState::new(rx);
        let (first, _) = state.catch_up(0);
        for v in 2..=4 {
            tx.send_replace(Arc::new(snapshot(v, &[(&cds, "a", &v.to_string())])));
            state.catch_up(first.seq + v - 2);
        }
        let (latest, changes) = state.catch_up(first.seq);
        assert_eq!(latest.version(), 4);
        let changes = changes.expect("remembered");
        assert_eq!(changes.len(), 3);
        assert!(changes.iter().all(|c| c[&cds].iter().map(|n| n.as_ref()).eq(["a"])));
        assert_eq!(state.catch_up(latest.seq).1.map(|c| c.len()), Some(0));
        for v in 5..5 + CHANGES_KEPT as u64 {
            tx.send_replace(Arc::new(snapshot(v, &[(&cds, "a", &v.to_string())])));
            state.catch_up(latest.seq);
        }
        assert!(state.catch_up(first.seq).1.is_none(), "forgotten: everything is compared");
    }
}
