//! The Aggregated Discovery Service: state-of-the-world and delta, any number of Envoys.
//!
//! Each stream keeps, per resource type, what the Envoy subscribed to, which resource versions it
//! holds, and the nonce of the response it has not acknowledged yet. A NACK is logged with Envoy's
//! reason; the loader does not resend the rejected resources (Envoy keeps its previous good ones)
//! and sends again only when the resource changes.
//!
//! Every request is checked before it changes anything: its type URL must be one the loader
//! serves, its node must be the one the client certificate names ([`super::authz`]), and the
//! stream's subscriptions must stay within [`Limits`]. A request that fails ends its stream with a
//! gRPC status saying why. SDS secrets are sent only to streams that were sent a cluster
//! referencing them.

use super::authz::{self, PeerIdentity, SecretIndex};
use super::limits::{Limits, MAX_NAME_BYTES, MAX_NAME_BYTES_PER_STREAM};
use super::listener::{ConnectionInfo, ConnectionMetrics, StreamSlot};
use super::snapshot::{is_named_type, short_name, type_urls, Snapshot, VersionedResource};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use prost::Name;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
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

pub struct XdsState {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    sessions: Mutex<BTreeMap<u64, SessionInfo>>,
    next_session: AtomicU64,
    limits: Limits,
    /// Set once, when the loader is asked to stop: every stream ends with UNAVAILABLE.
    shutdown: watch::Sender<bool>,
    /// Which secrets the snapshot's clusters reference, for the SDS rule.
    secret_index: Mutex<SecretIndex>,
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
        Arc::new(XdsState {
            snapshots,
            sessions: Mutex::new(BTreeMap::new()),
            next_session: AtomicU64::new(1),
            limits,
            shutdown: watch::Sender::new(false),
            secret_index: Mutex::new(SecretIndex::default()),
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

    pub fn service(self: &Arc<Self>) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(AdsService { state: self.clone() })
            .max_decoding_message_size(self.limits.max_message_bytes)
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
}

pub struct AdsService {
    state: Arc<XdsState>,
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = self.state.admit(&request)?;
        let (tx, rx) = mpsc::channel(16);
        let session = Session::new(self.state.clone(), "sotw", peer);
        tokio::spawn(session.run_sotw(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = self.state.admit(&request)?;
        let (tx, rx) = mpsc::channel(16);
        let session = Session::new(self.state.clone(), "delta", peer);
        tokio::spawn(session.run_delta(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The client at the other end of a stream.
#[derive(Debug, Default)]
struct Peer {
    address: Option<SocketAddr>,
    /// The names in its client certificate (mTLS only).
    identity: Option<Arc<PeerIdentity>>,
    /// The stream's place on its connection, freed when the session ends.
    _slot: Option<StreamSlot>,
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
    names: BTreeSet<String>,
    /// Name -> version the Envoy holds, as far as the loader knows.
    known: BTreeMap<String, String>,
    /// The response awaiting ACK: its nonce and the snapshot version it came from.
    pending: Option<(String, u64)>,
    /// The names in that response, for delta (a state-of-the-world response holds `known`).
    pending_names: Vec<String>,
    acked_version: Option<u64>,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// How many resource names a stream holds, against [`Limits::max_names_per_stream`] and
/// [`MAX_NAME_BYTES_PER_STREAM`].
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
    peer: Peer,
    types: BTreeMap<String, TypeState>,
    next_nonce: u64,
    node: String,
    budget: NameBudget,
    /// Secrets that a cluster sent on this stream references: the only ones it may be sent.
    granted_secrets: BTreeSet<String>,
    /// A secret the Envoy subscribed to was granted after its SDS answer: answer SDS again.
    sds_follow_up: bool,
    /// The client left a response waiting for `Limits::send_timeout`: the stream is ending.
    stopped_reading: bool,
}

impl Session {
    fn new(state: Arc<XdsState>, protocol: &'static str, peer: Peer) -> Self {
        let id = state.next_session.fetch_add(1, Ordering::Relaxed);
        state.sessions.lock().unwrap().insert(
            id,
            SessionInfo {
                node: String::new(),
                protocol,
                acked_version: None,
                last_nack: None,
                address: peer.address.map(|a| a.to_string()),
                identity: peer.identity.as_deref().cloned(),
            },
        );
        Session {
            id,
            state,
            peer,
            types: BTreeMap::new(),
            next_nonce: 0,
            node: String::new(),
            budget: NameBudget::default(),
            granted_secrets: BTreeSet::new(),
            sds_follow_up: false,
            stopped_reading: false,
        }
    }

    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
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
        let max = self.state.limits.max_names_per_stream;
        let exceeded = if self.budget.names > max {
            format!("more than {max} resource names subscribed on one stream (--xds-max-names)")
        } else if self.budget.bytes > MAX_NAME_BYTES_PER_STREAM {
            format!("more than {MAX_NAME_BYTES_PER_STREAM} bytes of resource names on one stream")
        } else {
            return Ok(());
        };
        self.state.metrics.limited_streams.fetch_add(1, Ordering::Relaxed);
        Err(Status::resource_exhausted(exceeded))
    }

    fn update_info(&self, f: impl FnOnce(&mut SessionInfo)) {
        if let Some(info) = self.state.sessions.lock().unwrap().get_mut(&self.id) {
            f(info);
        }
    }

    /// Records an ACK or NACK of `nonce` for `type_url`. Returns false for a stale nonce.
    fn acknowledge(&mut self, type_url: &str, nonce: &str, error: Option<&str>) -> bool {
        let node = self.node.clone();
        let st = self.types.entry(type_url.to_string()).or_default();
        match &st.pending {
            Some((pending, version)) if pending == nonce => {
                let version = *version;
                st.pending = None;
                match error {
                    None => {
                        st.acked_version = Some(version);
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
                            resources: rejected_resources(st, message),
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

    fn count_sent(&self, resources: usize, bytes: usize) {
        let m = &self.state.metrics;
        m.responses_sent.fetch_add(1, Ordering::Relaxed);
        m.resources_sent.fetch_add(resources as u64, Ordering::Relaxed);
        m.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    // -----------------------------------------------------------------------------------------
    // Secrets

    /// Grants the secrets that `resources` (name, version) of `snapshot`, clusters or listeners
    /// as `type_url` says, reference, then forgets granted secrets that are neither in the
    /// snapshot nor subscribed (so the set stays as small as the snapshot's secrets plus the
    /// subscriptions). Other types reference no secret.
    fn grant_secrets_of<'a>(
        &mut self,
        type_url: &str,
        resources: impl IntoIterator<Item = (&'a str, &'a str)>,
        snapshot: &Snapshot,
    ) {
        let referrer = if type_url == Cluster::type_url() {
            authz::Referrer::Cluster
        } else if type_url == Listener::type_url() {
            authz::Referrer::Listener
        } else {
            return;
        };
        let sds = Secret::type_url();
        let empty = BTreeMap::new();
        let cds = snapshot.of_type(&Cluster::type_url()).unwrap_or(&empty);
        let lds = snapshot.of_type(&Listener::type_url()).unwrap_or(&empty);
        let mut index = self.state.secret_index.lock().expect("secret index lock");
        index.update(snapshot.version, cds, lds);
        let subscribed = self.types.get(&sds).map(|st| &st.names);
        for (name, version) in resources {
            for secret in index.secrets_of(referrer, name, version).unwrap_or_default() {
                if self.granted_secrets.insert(secret.clone())
                    && subscribed.is_some_and(|names| names.contains(secret))
                {
                    self.sds_follow_up = true;
                }
            }
        }
        drop(index);
        let secrets = snapshot.of_type(&sds).unwrap_or(&empty);
        self.granted_secrets
            .retain(|s| secrets.contains_key(s) || subscribed.is_some_and(|n| n.contains(s)));
    }

    /// Whether `name` of `type_url` may be sent on this stream.
    fn may_send(granted: &BTreeSet<String>, type_url: &str, name: &str) -> bool {
        type_url != Secret::type_url() || granted.contains(name)
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

    // -----------------------------------------------------------------------------------------
    // Delta

    async fn run_delta(
        self,
        requests: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        let on_request =
            |session: &mut Session, request: DeltaDiscoveryRequest, snapshot: &Snapshot| {
                let type_url = request.type_url.clone();
                session.on_delta_request(request, snapshot)?;
                Ok(session.delta_response(&type_url, snapshot))
            };
        let on_change = |session: &mut Session, type_url: &str, snapshot: &Snapshot| {
            session.delta_response(type_url, snapshot)
        };
        self.pump(requests, tx, on_request, on_change).await
    }

    /// The stream's event loop, the same for both protocols: answer each request, and push what a
    /// new snapshot changes, type by type in [`type_urls`] order. A request that is refused, or
    /// the loader shutting down, ends the stream with a status.
    async fn pump<Req, Resp>(
        mut self,
        mut requests: Streaming<Req>,
        tx: mpsc::Sender<Result<Resp, Status>>,
        on_request: fn(&mut Session, Req, &Snapshot) -> Result<Option<Resp>, Status>,
        on_change: fn(&mut Session, &str, &Snapshot) -> Option<Resp>,
    ) {
        let mut snapshots = self.state.snapshots.clone();
        let shutting_down = self.state.shutting_down();
        let mut shutting_down = std::pin::pin!(shutting_down);
        let ended: Option<Status> = loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => {
                        let snapshot = snapshots.borrow_and_update().clone();
                        match on_request(&mut self, request, &snapshot) {
                            Ok(response) => {
                                if let Some(response) = response {
                                    if let Err(ended) = self.deliver(&tx, response).await { break ended; }
                                }
                                if std::mem::take(&mut self.sds_follow_up) {
                                    if let Some(response) = on_change(&mut self, &Secret::type_url(), &snapshot) {
                                        if let Err(ended) = self.deliver(&tx, response).await { break ended; }
                                    }
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
                    let snapshot = snapshots.borrow_and_update().clone();
                    let mut ended = None;
                    for type_url in type_urls() {
                        if let Some(response) = on_change(&mut self, &type_url, &snapshot) {
                            if let Err(end) = self.deliver(&tx, response).await {
                                ended = Some(end);
                                break;
                            }
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

    fn on_delta_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<(), Status> {
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
        if request.initial_resource_versions.len() > self.state.limits.max_names_per_stream {
            self.state.metrics.limited_streams.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "more than {} initial resource versions (--xds-max-names)",
                self.state.limits.max_names_per_stream
            )));
        }
        if !request.response_nonce.is_empty() {
            let error = request.error_detail.as_ref().map(|e| e.message.as_str());
            self.acknowledge(&request.type_url, &request.response_nonce, error);
        }
        let type_url = request.type_url;
        let named = is_named_type(&type_url);
        let st = self.types.entry(type_url.clone()).or_default();
        let first = !st.subscribed;
        if first {
            st.subscribed = true;
            // Legacy wildcard: the first request for CDS/LDS names nothing.
            st.wildcard = !named && request.resource_names_subscribe.is_empty();
        }
        let mut newly_subscribed = Vec::new();
        for name in request.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else if !st.names.contains(&name) {
                self.budget.add(&name);
                if self.budget.names > self.state.limits.max_names_per_stream {
                    break; // reported by check_budget below
                }
                st.names.insert(name.clone());
                newly_subscribed.push(name);
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                if st.names.remove(name) {
                    self.budget.remove(name);
                }
                st.known.remove(name);
            }
        }
        if first {
            // What the Envoy already holds (it reconnected): named types only for what it
            // subscribes to, so that `known` never outgrows the subscriptions.
            let initial: Vec<(String, String)> = request
                .initial_resource_versions
                .into_iter()
                .filter(|(name, _)| !named || st.names.contains(name))
                .collect();
            // Holding a cluster's or listener's current version proves it was sent to this
            // Envoy before.
            if refers_to_secrets(&type_url) {
                let held: Vec<(&str, &str)> =
                    initial.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                self.grant_secrets_of(&type_url, held, snapshot);
            }
            self.types.get_mut(&type_url).expect("present").known.extend(initial);
        }
        self.check_budget()?;
        for name in &newly_subscribed {
            self.note_withheld(&type_url, name);
        }
        Ok(())
    }

    fn delta_response(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
    ) -> Option<DeltaDiscoveryResponse> {
        let empty = BTreeMap::new();
        let current = snapshot.of_type_for_delta(type_url).unwrap_or(&empty);
        let granted = &self.granted_secrets;
        let st = self.types.get_mut(type_url).filter(|st| st.subscribed)?;
        let changed: Vec<(&String, &Arc<VersionedResource>)> = current
            .iter()
            .filter(|(name, r)| {
                st.in_scope(name)
                    && Self::may_send(granted, type_url, name)
                    && st.known.get(*name) != Some(&r.version)
            })
            .collect();
        // Removals only for wildcard types: a named resource that disappears is one the Envoy
        // will stop asking for (its cluster or listener went), and keeping it meanwhile lets the
        // old cluster keep working while the new one warms.
        let removed: Vec<String> = if is_named_type(type_url) {
            Vec::new()
        } else {
            st.known.keys().filter(|name| !current.contains_key(*name)).cloned().collect()
        };
        if changed.is_empty() && removed.is_empty() && st.answered {
            self.settle(type_url, snapshot.version);
            return None;
        }
        st.answered = true;
        let mut bytes = 0;
        let resources: Vec<Resource> = changed
            .into_iter()
            .map(|(name, r)| {
                st.known.insert(name.clone(), r.version.clone());
                bytes += r.resource.value.len();
                Resource {
                    name: name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.resource.clone()),
                    ..Default::default()
                }
            })
            .collect();
        for name in &removed {
            st.known.remove(name);
        }
        if refers_to_secrets(type_url) {
            let sent: Vec<(&str, &str)> =
                resources.iter().map(|r| (r.name.as_str(), r.version.as_str())).collect();
            self.grant_secrets_of(type_url, sent, snapshot);
        }
        let count = resources.len();
        let nonce = self.nonce();
        let st = self.types.get_mut(type_url).expect("present");
        st.pending = Some((nonce.clone(), snapshot.version));
        st.pending_names = resources.iter().map(|r| r.name.clone()).collect();
        self.count_sent(count, bytes);
        tracing::debug!(node = %self.node, r#type = short_name(type_url), count, removed = removed.len(), snapshot = snapshot.version, "delta push");
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.version.to_string(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }

    // -----------------------------------------------------------------------------------------
    // State of the world

    async fn run_sotw(
        self,
        requests: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let on_request = |session: &mut Session, request: DiscoveryRequest, snapshot: &Snapshot| {
            let type_url = request.type_url.clone();
            let Some(force) = session.on_sotw_request(request)? else {
                return Ok(None);
            };
            Ok(session.sotw_response(&type_url, snapshot, force))
        };
        let on_change = |session: &mut Session, type_url: &str, snapshot: &Snapshot| {
            session.sotw_response(type_url, snapshot, false)
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
        for name in previous.into_iter().flatten() {
            self.budget.remove(name);
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        for name in &names {
            self.budget.add(name);
        }
        let st = self.types.entry(type_url.clone()).or_default();
        let wildcard = !is_named_type(&type_url) && (names.is_empty() || names.contains("*"));
        let first = !st.subscribed;
        let changed = first || names != st.names || wildcard != st.wildcard;
        let added: Vec<String> = names.difference(&st.names).cloned().collect();
        st.subscribed = true;
        st.wildcard = wildcard;
        st.names = names;
        if changed {
            st.known.clear();
        }
        self.check_budget()?;
        for name in &added {
            self.note_withheld(&type_url, name);
        }
        Ok(Some(changed))
    }

    fn sotw_response(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let empty = BTreeMap::new();
        let current = snapshot.of_type(type_url).unwrap_or(&empty);
        let granted = &self.granted_secrets;
        let st = self.types.get_mut(type_url).filter(|st| st.subscribed)?;
        let scope: BTreeMap<String, String> = current
            .iter()
            .filter(|(name, _)| st.in_scope(name) && Self::may_send(granted, type_url, name))
            .map(|(name, r)| (name.clone(), r.version.clone()))
            .collect();
        if !force && scope == st.known {
            self.settle(type_url, snapshot.version);
            return None;
        }
        let resources: Vec<_> = scope.keys().map(|name| current[name].resource.clone()).collect();
        let bytes = resources.iter().map(|r| r.value.len()).sum();
        if refers_to_secrets(type_url) {
            let sent: Vec<(&str, &str)> =
                scope.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            self.grant_secrets_of(type_url, sent, snapshot);
        }
        let st = self.types.get_mut(type_url).expect("present");
        st.known = scope;
        let count = resources.len();
        let nonce = self.nonce();
        let st = self.types.get_mut(type_url).expect("present");
        st.pending = Some((nonce.clone(), snapshot.version));
        self.count_sent(count, bytes);
        tracing::debug!(node = %self.node, r#type = short_name(type_url), count, snapshot = snapshot.version, "sotw push");
        Some(DiscoveryResponse {
            version_info: snapshot.version.to_string(),
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
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

/// What a NACK rejected: the resources of the pending response that Envoy's message names (it
/// names the cluster or secret it could not use), or all of them when it names none.
fn rejected_resources(st: &TypeState, message: &str) -> Vec<(String, String)> {
    let sent: Vec<&String> = if st.pending_names.is_empty() {
        st.known.keys().collect()
    } else {
        st.pending_names.iter().collect()
    };
    let with_version = |name: &String| st.known.get(name).map(|v| (name.clone(), v.clone()));
    let named: Vec<_> = sent
        .iter()
        .filter(|name| message.contains(name.as_str()))
        .filter_map(|n| with_version(n))
        .collect();
    if named.is_empty() {
        sent.into_iter().filter_map(with_version).collect()
    } else {
        named
    }
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::VHDS_ROUTE_CONFIGURATIONS;
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use prost::Name;

    fn snapshot(version: u64, resources: &[(&str, &str, &str)]) -> Snapshot {
        let mut snapshot = Snapshot { version, resources: BTreeMap::new() };
        for type_url in type_urls() {
            snapshot.resources.insert(type_url, BTreeMap::new());
        }
        snapshot.resources.insert(VHDS_ROUTE_CONFIGURATIONS.into(), BTreeMap::new());
        for (type_url, name, v) in resources {
            snapshot.resources.get_mut(*type_url).unwrap().insert(
                name.to_string(),
                Arc::new(VersionedResource {
                    version: v.to_string(),
                    resource: Any { type_url: type_url.to_string(), value: v.as_bytes().to_vec() },
                }),
            );
        }
        snapshot
    }

    fn session() -> Session {
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        Session::new(XdsState::new(rx), "test", Peer::default())
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
        s.on_delta_request(delta(&cds, &[], &[], ""), &Snapshot::default()).unwrap();
        let response = s.delta_response(&cds, &v1).unwrap();
        assert_eq!(names(&response), [("a", "1"), ("b", "1")]);
        assert_eq!(acked(&s), None);

        s.on_delta_request(delta(&cds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();
        assert_eq!(acked(&s), Some(1));
        assert!(s.delta_response(&cds, &v1).is_none(), "an ACK needs no answer");

        let v2 = snapshot(2, &[(&cds, "a", "2")]);
        let response = s.delta_response(&cds, &v2).unwrap();
        assert_eq!(names(&response), [("a", "2")]);
        assert_eq!(response.removed_resources, ["b"]);
        assert_eq!(response.system_version_info, "2");
        s.on_delta_request(delta(&cds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();
        assert_eq!(acked(&s), Some(2));
    }

    #[test]
    fn delta_named_types_follow_subscriptions_and_never_remove() {
        let sds = ClusterLoadAssignment::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&sds, "ca-old", "1"), (&sds, "ca-new", "1")]);
        s.on_delta_request(delta(&sds, &["ca-old"], &[], ""), &Snapshot::default()).unwrap();
        let response = s.delta_response(&sds, &v1).unwrap();
        assert_eq!(names(&response), [("ca-old", "1")]);
        s.on_delta_request(delta(&sds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();

        // The secret disappears from the snapshot while Envoy still uses it: no removal.
        let v2 = snapshot(2, &[(&sds, "ca-new", "1")]);
        assert!(s.delta_response(&sds, &v2).is_none());
        assert_eq!(acked(&s), Some(2));

        s.on_delta_request(delta(&sds, &["ca-new"], &["ca-old"], ""), &Snapshot::default())
            .unwrap();
        let response = s.delta_response(&sds, &v2).unwrap();
        assert_eq!(names(&response), [("ca-new", "1")]);
        assert!(response.removed_resources.is_empty());
    }

    #[test]
    fn delta_nack_is_recorded_and_not_resent_until_the_resource_changes() {
        let cds = Cluster::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&cds, "a", "1")]);
        s.on_delta_request(delta(&cds, &[], &[], ""), &Snapshot::default()).unwrap();
        let response = s.delta_response(&cds, &v1).unwrap();
        let mut nack = delta(&cds, &[], &[], &response.nonce);
        nack.error_detail =
            Some(RpcStatus { code: 3, message: "bad cluster".into(), details: vec![] });
        s.on_delta_request(nack, &Snapshot::default()).unwrap();
        assert_eq!(s.state.sessions()[0].last_nack.as_deref(), Some("bad cluster"));
        assert_eq!(s.state.metrics.nacks.load(Ordering::Relaxed), 1);
        assert!(s.delta_response(&cds, &v1).is_none());
        let v2 = snapshot(2, &[(&cds, "a", "2")]);
        assert_eq!(names(&s.delta_response(&cds, &v2).unwrap()), [("a", "2")]);
    }

    #[test]
    fn delta_reconnect_with_initial_versions_sends_only_what_differs() {
        let cds = Cluster::type_url();
        let mut s = session();
        let mut request = delta(&cds, &[], &[], "");
        request.initial_resource_versions.insert("a".into(), "1".into());
        request.initial_resource_versions.insert("b".into(), "old".into());
        s.on_delta_request(request, &Snapshot::default()).unwrap();
        let v1 = snapshot(1, &[(&cds, "a", "1"), (&cds, "b", "1")]);
        assert_eq!(names(&s.delta_response(&cds, &v1).unwrap()), [("b", "1")]);
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
        let first = s.sotw_response(&sds, &v1, force).unwrap();
        assert_eq!(first.resources.len(), 1);
        assert_eq!(first.version_info, "1");

        let force = s.on_sotw_request(sotw(&sds, &["x"], &first.nonce)).unwrap().unwrap();
        assert!(s.sotw_response(&sds, &v1, force).is_none(), "an ACK needs no answer");
        assert_eq!(acked(&s), Some(1));

        let force = s.on_sotw_request(sotw(&sds, &["x", "y"], &first.nonce)).unwrap().unwrap();
        let second = s.sotw_response(&sds, &v1, force).unwrap();
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
        s.on_delta_request(delta(&rds, &["rc"], &[], ""), &Snapshot::default()).unwrap();
        let response = s.delta_response(&rds, &v1).unwrap();
        assert_eq!(
            names(&response),
            [("rc", "base")],
            "delta gets the route configuration for VHDS"
        );
        // Envoy's VHDS subscription names nothing: it takes every virtual host.
        s.on_delta_request(delta(&vhds, &[], &[], ""), &Snapshot::default()).unwrap();
        let response = s.delta_response(&vhds, &v1).unwrap();
        assert_eq!(names(&response), [("rc/a.example", "1"), ("rc/b.example", "1")]);
        s.on_delta_request(delta(&vhds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();

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
        assert!(s.delta_response(&rds, &v2).is_none());
        let response = s.delta_response(&vhds, &v2).unwrap();
        assert_eq!(names(&response), [("rc/a.example", "2")]);
        assert_eq!(response.removed_resources, ["rc/b.example"]);

        // State of the world has no VHDS: it gets the route configuration with hosts inline.
        let mut sotw_session = session();
        let force = sotw_session.on_sotw_request(sotw(&rds, &["rc"], "")).unwrap().unwrap();
        let response = sotw_session.sotw_response(&rds, &v2, force).unwrap();
        assert_eq!(response.resources[0].value, b"inline-2");
    }

    #[test]
    fn delta_answers_a_new_subscription_even_with_nothing_to_send() {
        let cds = Cluster::type_url();
        let mut s = session();
        let empty = snapshot(1, &[]);
        s.on_delta_request(delta(&cds, &[], &[], ""), &Snapshot::default()).unwrap();
        let response = s.delta_response(&cds, &empty).expect("Envoy waits for a first answer");
        assert!(response.resources.is_empty() && response.removed_resources.is_empty());
        s.on_delta_request(delta(&cds, &[], &[], &response.nonce), &Snapshot::default()).unwrap();
        assert!(s.delta_response(&cds, &empty).is_none(), "then only changes");
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
            Arc::new(VersionedResource {
                version: version.into(),
                resource: super::super::translate::pack(&cluster),
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
        thief.on_delta_request(delta(&sds, &["client-cert"], &[], ""), &v1).unwrap();
        let response = thief.delta_response(&sds, &v1).expect("answered, with nothing");
        assert!(response.resources.is_empty(), "withheld: {:?}", sent_names(&response));
        assert_eq!(thief.state.metrics.secrets_withheld.load(Ordering::Relaxed), 1);

        // An Envoy: clusters first, then the secrets they name.
        let mut envoy = session();
        envoy.on_delta_request(delta(&cds, &[], &[], ""), &v1).unwrap();
        assert_eq!(sent_names(&envoy.delta_response(&cds, &v1).unwrap()), ["backend"]);
        envoy.on_delta_request(delta(&sds, &["client-cert", "ca-1"], &[], ""), &v1).unwrap();
        assert_eq!(sent_names(&envoy.delta_response(&sds, &v1).unwrap()), ["ca-1", "client-cert"]);
        assert_eq!(envoy.state.metrics.secrets_withheld.load(Ordering::Relaxed), 0);

        // State of the world follows the same rule.
        let mut sotw_thief = session();
        let force = sotw_thief.on_sotw_request(sotw(&sds, &["client-cert"], "")).unwrap().unwrap();
        assert!(sotw_thief.sotw_response(&sds, &v1, force).unwrap().resources.is_empty());
        let force = sotw_thief.on_sotw_request(sotw(&cds, &[], "")).unwrap().unwrap();
        assert_eq!(sotw_thief.sotw_response(&cds, &v1, force).unwrap().resources.len(), 1);
        assert_eq!(sotw_thief.sotw_response(&sds, &v1, false).unwrap().resources.len(), 1);
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
            Arc::new(VersionedResource {
                version: listener.version.clone(),
                resource: super::super::translate::pack(&listener.resource),
            }),
        );
        put_cluster(&mut v1, "backend", "1", "client-cert", "ca-1");

        // Clusters only, or nothing: the certificate is withheld.
        let mut other = session();
        other.on_delta_request(delta(&cds, &[], &[], ""), &v1).unwrap();
        other.delta_response(&cds, &v1).unwrap();
        other.on_delta_request(delta(&sds, &[&cert], &[], ""), &v1).unwrap();
        assert!(other.delta_response(&sds, &v1).unwrap().resources.is_empty());
        assert_eq!(other.state.metrics.secrets_withheld.load(Ordering::Relaxed), 1);

        // The listener first, then its certificate.
        let mut edge = session();
        edge.on_delta_request(delta(&lds, &[], &[], ""), &v1).unwrap();
        assert_eq!(sent_names(&edge.delta_response(&lds, &v1).unwrap()), ["gateway_infra_gw_8443"]);
        edge.on_delta_request(delta(&sds, &[&cert], &[], ""), &v1).unwrap();
        assert_eq!(sent_names(&edge.delta_response(&sds, &v1).unwrap()), [cert.as_str()]);

        // State of the world, and a reconnect that names the listener's current version.
        let mut sotw_edge = session();
        let force = sotw_edge.on_sotw_request(sotw(&sds, &[&cert], "")).unwrap().unwrap();
        assert!(sotw_edge.sotw_response(&sds, &v1, force).unwrap().resources.is_empty());
        let force = sotw_edge.on_sotw_request(sotw(&lds, &[], "")).unwrap().unwrap();
        sotw_edge.sotw_response(&lds, &v1, force).unwrap();
        assert_eq!(sotw_edge.sotw_response(&sds, &v1, false).unwrap().resources.len(), 1);
        for (claimed, granted) in [(listener.version.as_str(), true), ("forged", false)] {
            let mut s = session();
            let mut request = delta(&lds, &[], &[], "");
            request
                .initial_resource_versions
                .insert("gateway_infra_gw_8443".into(), claimed.into());
            s.on_delta_request(request, &v1).unwrap();
            assert_eq!(s.granted_secrets.contains(&cert), granted, "claimed version {claimed}");
        }
    }

    #[test]
    fn a_secret_granted_after_it_was_asked_for_follows_and_reconnects_prove_possession() {
        let (cds, sds) = (Cluster::type_url(), Secret::type_url());
        let mut v1 = snapshot(1, &[(&sds, "ca-2", "c")]);
        put_cluster(&mut v1, "backend", "1", "none", "ca-2");
        let mut s = session();
        s.on_delta_request(delta(&sds, &["ca-2"], &[], ""), &v1).unwrap();
        assert!(s.delta_response(&sds, &v1).unwrap().resources.is_empty());
        s.on_delta_request(delta(&cds, &[], &[], ""), &v1).unwrap();
        s.delta_response(&cds, &v1).unwrap();
        assert!(std::mem::take(&mut s.sds_follow_up), "SDS is answered again");
        assert_eq!(sent_names(&s.delta_response(&sds, &v1).unwrap()), ["ca-2"]);

        // After a loader restart Envoy names the cluster version it holds: only the current
        // version counts as proof.
        for (claimed, granted) in [("1", true), ("forged", false)] {
            let mut s = session();
            let mut request = delta(&cds, &[], &[], "");
            request.initial_resource_versions.insert("backend".into(), claimed.into());
            s.on_delta_request(request, &v1).unwrap();
            assert_eq!(s.granted_secrets.contains("ca-2"), granted, "claimed version {claimed}");
        }
    }

    #[test]
    fn unknown_types_and_oversized_subscriptions_end_the_stream() {
        let mut s = session();
        let error = s
            .on_delta_request(
                delta("type.googleapis.com/x.Unknown", &[], &[], ""),
                &Snapshot::default(),
            )
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("x.Unknown"), "{}", error.message());

        let eds = ClusterLoadAssignment::type_url();
        let max = s.state.limits.max_names_per_stream;
        let names: Vec<String> = (0..=max).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut s = session();
        s.on_delta_request(delta(&eds, &names[..max], &[], ""), &Snapshot::default()).unwrap();
        let error = s
            .on_delta_request(delta(&eds, &names[max..], &[], ""), &Snapshot::default())
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
        // Unsubscribing frees the budget.
        let mut s = session();
        s.on_delta_request(delta(&eds, &names[..max], &[], ""), &Snapshot::default()).unwrap();
        s.on_delta_request(delta(&eds, &names[max..], &names[..1], ""), &Snapshot::default())
            .unwrap();
        let error = s.on_sotw_request(sotw(&eds, &names, "")).unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);

        let long = "n".repeat(MAX_NAME_BYTES + 1);
        let error = session()
            .on_delta_request(delta(&eds, &[&long], &[], ""), &Snapshot::default())
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_node_its_certificate_does_not_name_is_refused() {
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let identity = PeerIdentity { dns_names: vec!["edge-1".into()], uris: vec![] };
        let peer = Peer { identity: Some(Arc::new(identity)), ..Peer::default() };
        let mut s = Session::new(XdsState::new(rx), "test", peer);
        let mut request = delta(&Cluster::type_url(), &[], &[], "");
        request.node = Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "edge-2".into(),
            cluster: "backendtls".into(),
            ..Default::default()
        });
        let error = s.on_delta_request(request.clone(), &Snapshot::default()).unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied);
        assert!(error.message().contains("edge-2"), "{}", error.message());
        request.node.as_mut().unwrap().id = "edge-1".into();
        s.on_delta_request(request, &Snapshot::default()).unwrap();
        assert_eq!(s.node, "edge-1");
    }
}
