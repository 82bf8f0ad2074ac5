//! The Aggregated Discovery Service: state-of-the-world and delta, any number of Envoys.
//!
//! Each stream keeps, per resource type, what the Envoy subscribed to, which resource versions it
//! holds, and the nonce of the response it has not acknowledged yet. A NACK is logged with Envoy's
//! reason; the loader does not resend the rejected resources (Envoy keeps its previous good ones)
//! and sends again only when the resource changes.

use super::snapshot::{is_named_type, short_name, type_urls, Snapshot, VersionedResource};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use std::collections::{BTreeMap, BTreeSet};
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
    pub metrics: XdsMetrics,
    rejections: std::sync::OnceLock<Box<dyn Fn(Rejection) + Send + Sync>>,
}

impl XdsState {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Arc<Self> {
        Arc::new(XdsState {
            snapshots,
            sessions: Mutex::new(BTreeMap::new()),
            next_session: AtomicU64::new(1),
            metrics: XdsMetrics::default(),
            rejections: std::sync::OnceLock::new(),
        })
    }

    /// Every NACK from now on is also passed to `sink` (once per state; later calls are ignored).
    pub fn report_rejections_to(&self, sink: impl Fn(Rejection) + Send + Sync + 'static) {
        let _ = self.rejections.set(Box::new(sink));
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.lock().unwrap().values().cloned().collect()
    }

    pub fn service(self: &Arc<Self>) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(AdsService { state: self.clone() })
            .max_decoding_message_size(64 << 20)
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
        let (tx, rx) = mpsc::channel(16);
        let session = Session::new(self.state.clone(), "sotw");
        tokio::spawn(session.run_sotw(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let session = Session::new(self.state.clone(), "delta");
        tokio::spawn(session.run_delta(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
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

struct Session {
    id: u64,
    state: Arc<XdsState>,
    types: BTreeMap<String, TypeState>,
    next_nonce: u64,
    node: String,
}

impl Session {
    fn new(state: Arc<XdsState>, protocol: &'static str) -> Self {
        let id = state.next_session.fetch_add(1, Ordering::Relaxed);
        state.sessions.lock().unwrap().insert(
            id,
            SessionInfo { node: String::new(), protocol, acked_version: None, last_nack: None },
        );
        Session { id, state, types: BTreeMap::new(), next_nonce: 0, node: String::new() }
    }

    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
    }

    fn set_node(&mut self, node: Option<&envoy_types::pb::envoy::config::core::v3::Node>) {
        if let Some(node) = node {
            if self.node.is_empty() && !node.id.is_empty() {
                self.node = node.id.clone();
                tracing::info!(session = self.id, node = %self.node, "Envoy connected");
                self.update_info(|info| info.node = node.id.clone());
            }
        }
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
    // Delta

    async fn run_delta(
        self,
        requests: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        let on_request =
            |session: &mut Session, request: DeltaDiscoveryRequest, snapshot: &Snapshot| {
                let type_url = request.type_url.clone();
                session.on_delta_request(request);
                session.delta_response(&type_url, snapshot)
            };
        let on_change = |session: &mut Session, type_url: &str, snapshot: &Snapshot| {
            session.delta_response(type_url, snapshot)
        };
        self.pump(requests, tx, on_request, on_change).await
    }

    /// The stream's event loop, the same for both protocols: answer each request, and push what a
    /// new snapshot changes, type by type in [`type_urls`] order.
    async fn pump<Req, Resp>(
        mut self,
        mut requests: Streaming<Req>,
        tx: mpsc::Sender<Result<Resp, Status>>,
        on_request: fn(&mut Session, Req, &Snapshot) -> Option<Resp>,
        on_change: fn(&mut Session, &str, &Snapshot) -> Option<Resp>,
    ) {
        let mut snapshots = self.state.snapshots.clone();
        loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => {
                        let snapshot = snapshots.borrow_and_update().clone();
                        if let Some(response) = on_request(&mut self, request, &snapshot) {
                            if tx.send(Ok(response)).await.is_err() { break; }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(node = %self.node, %status, "xDS stream ended");
                        break;
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() { break; }
                    let snapshot = snapshots.borrow_and_update().clone();
                    for type_url in type_urls() {
                        if let Some(response) = on_change(&mut self, &type_url, &snapshot) {
                            if tx.send(Ok(response)).await.is_err() { return self.close(); }
                        }
                    }
                }
            }
        }
        self.close();
    }

    fn on_delta_request(&mut self, request: DeltaDiscoveryRequest) {
        self.set_node(request.node.as_ref());
        tracing::debug!(
            node = %self.node, r#type = short_name(&request.type_url), nonce = %request.response_nonce,
            subscribe = ?request.resource_names_subscribe, unsubscribe = ?request.resource_names_unsubscribe,
            nack = request.error_detail.is_some(), "delta request"
        );
        if !request.response_nonce.is_empty() {
            let error = request.error_detail.as_ref().map(|e| e.message.as_str());
            self.acknowledge(&request.type_url, &request.response_nonce, error);
        }
        let st = self.types.entry(request.type_url.clone()).or_default();
        if !st.subscribed {
            st.subscribed = true;
            // Legacy wildcard: the first request for CDS/LDS names nothing.
            st.wildcard =
                !is_named_type(&request.type_url) && request.resource_names_subscribe.is_empty();
            st.known.extend(request.initial_resource_versions);
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(&name);
                st.known.remove(&name);
            }
        }
    }

    fn delta_response(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
    ) -> Option<DeltaDiscoveryResponse> {
        let empty = BTreeMap::new();
        let current = snapshot.of_type_for_delta(type_url).unwrap_or(&empty);
        let st = self.types.get_mut(type_url).filter(|st| st.subscribed)?;
        let changed: Vec<(&String, &Arc<VersionedResource>)> = current
            .iter()
            .filter(|(name, r)| st.in_scope(name) && st.known.get(*name) != Some(&r.version))
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
            let force = session.on_sotw_request(request)?;
            session.sotw_response(&type_url, snapshot, force)
        };
        let on_change = |session: &mut Session, type_url: &str, snapshot: &Snapshot| {
            session.sotw_response(type_url, snapshot, false)
        };
        self.pump(requests, tx, on_request, on_change).await
    }

    /// Returns whether a response must be sent even if nothing changed (a new subscription), or
    /// None for a request with a stale nonce, which the protocol says to ignore.
    fn on_sotw_request(&mut self, request: DiscoveryRequest) -> Option<bool> {
        self.set_node(request.node.as_ref());
        let type_url = request.type_url.clone();
        if !request.response_nonce.is_empty() {
            let error = request.error_detail.as_ref().map(|e| e.message.as_str());
            let stale = !self.acknowledge(&type_url, &request.response_nonce, error)
                && self.types.get(&type_url).is_some_and(|st| st.pending.is_some());
            if stale {
                return None;
            }
        }
        let st = self.types.entry(type_url.clone()).or_default();
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        let wildcard = !is_named_type(&type_url) && (names.is_empty() || names.contains("*"));
        let first = !st.subscribed;
        let changed = first || names != st.names || wildcard != st.wildcard;
        st.subscribed = true;
        st.wildcard = wildcard;
        st.names = names;
        if changed {
            st.known.clear();
        }
        Some(changed)
    }

    fn sotw_response(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let empty = BTreeMap::new();
        let current = snapshot.of_type(type_url).unwrap_or(&empty);
        let st = self.types.get_mut(type_url).filter(|st| st.subscribed)?;
        let scope: BTreeMap<String, String> = current
            .iter()
            .filter(|(name, _)| st.in_scope(name))
            .map(|(name, r)| (name.clone(), r.version.clone()))
            .collect();
        if !force && scope == st.known {
            self.settle(type_url, snapshot.version);
            return None;
        }
        let resources: Vec<_> = scope.keys().map(|name| current[name].resource.clone()).collect();
        let bytes = resources.iter().map(|r| r.value.len()).sum();
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

    fn close(&self) {
        tracing::info!(session = self.id, node = %self.node, "Envoy disconnected");
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
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
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
        Session::new(XdsState::new(rx), "test")
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
        s.on_delta_request(delta(&cds, &[], &[], ""));
        let response = s.delta_response(&cds, &v1).unwrap();
        assert_eq!(names(&response), [("a", "1"), ("b", "1")]);
        assert_eq!(acked(&s), None);

        s.on_delta_request(delta(&cds, &[], &[], &response.nonce));
        assert_eq!(acked(&s), Some(1));
        assert!(s.delta_response(&cds, &v1).is_none(), "an ACK needs no answer");

        let v2 = snapshot(2, &[(&cds, "a", "2")]);
        let response = s.delta_response(&cds, &v2).unwrap();
        assert_eq!(names(&response), [("a", "2")]);
        assert_eq!(response.removed_resources, ["b"]);
        assert_eq!(response.system_version_info, "2");
        s.on_delta_request(delta(&cds, &[], &[], &response.nonce));
        assert_eq!(acked(&s), Some(2));
    }

    #[test]
    fn delta_named_types_follow_subscriptions_and_never_remove() {
        let sds = Secret::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&sds, "ca-old", "1"), (&sds, "ca-new", "1")]);
        s.on_delta_request(delta(&sds, &["ca-old"], &[], ""));
        let response = s.delta_response(&sds, &v1).unwrap();
        assert_eq!(names(&response), [("ca-old", "1")]);
        s.on_delta_request(delta(&sds, &[], &[], &response.nonce));

        // The secret disappears from the snapshot while Envoy still uses it: no removal.
        let v2 = snapshot(2, &[(&sds, "ca-new", "1")]);
        assert!(s.delta_response(&sds, &v2).is_none());
        assert_eq!(acked(&s), Some(2));

        s.on_delta_request(delta(&sds, &["ca-new"], &["ca-old"], ""));
        let response = s.delta_response(&sds, &v2).unwrap();
        assert_eq!(names(&response), [("ca-new", "1")]);
        assert!(response.removed_resources.is_empty());
    }

    #[test]
    fn delta_nack_is_recorded_and_not_resent_until_the_resource_changes() {
        let cds = Cluster::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&cds, "a", "1")]);
        s.on_delta_request(delta(&cds, &[], &[], ""));
        let response = s.delta_response(&cds, &v1).unwrap();
        let mut nack = delta(&cds, &[], &[], &response.nonce);
        nack.error_detail =
            Some(RpcStatus { code: 3, message: "bad cluster".into(), details: vec![] });
        s.on_delta_request(nack);
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
        s.on_delta_request(request);
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
        let sds = Secret::type_url();
        let mut s = session();
        let v1 = snapshot(1, &[(&sds, "x", "1"), (&sds, "y", "1")]);
        let force = s.on_sotw_request(sotw(&sds, &["x"], "")).unwrap();
        let first = s.sotw_response(&sds, &v1, force).unwrap();
        assert_eq!(first.resources.len(), 1);
        assert_eq!(first.version_info, "1");

        let force = s.on_sotw_request(sotw(&sds, &["x"], &first.nonce)).unwrap();
        assert!(s.sotw_response(&sds, &v1, force).is_none(), "an ACK needs no answer");
        assert_eq!(acked(&s), Some(1));

        let force = s.on_sotw_request(sotw(&sds, &["x", "y"], &first.nonce)).unwrap();
        let second = s.sotw_response(&sds, &v1, force).unwrap();
        assert_eq!(second.resources.len(), 2, "a new name means the whole scope again");
        assert!(
            s.on_sotw_request(sotw(&sds, &["x"], &first.nonce)).is_none(),
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
        s.on_delta_request(delta(&rds, &["rc"], &[], ""));
        let response = s.delta_response(&rds, &v1).unwrap();
        assert_eq!(
            names(&response),
            [("rc", "base")],
            "delta gets the route configuration for VHDS"
        );
        // Envoy's VHDS subscription names nothing: it takes every virtual host.
        s.on_delta_request(delta(&vhds, &[], &[], ""));
        let response = s.delta_response(&vhds, &v1).unwrap();
        assert_eq!(names(&response), [("rc/a.example", "1"), ("rc/b.example", "1")]);
        s.on_delta_request(delta(&vhds, &[], &[], &response.nonce));

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
        let force = sotw_session.on_sotw_request(sotw(&rds, &["rc"], "")).unwrap();
        let response = sotw_session.sotw_response(&rds, &v2, force).unwrap();
        assert_eq!(response.resources[0].value, b"inline-2");
    }

    #[test]
    fn delta_answers_a_new_subscription_even_with_nothing_to_send() {
        let cds = Cluster::type_url();
        let mut s = session();
        let empty = snapshot(1, &[]);
        s.on_delta_request(delta(&cds, &[], &[], ""));
        let response = s.delta_response(&cds, &empty).expect("Envoy waits for a first answer");
        assert!(response.resources.is_empty() && response.removed_resources.is_empty());
        s.on_delta_request(delta(&cds, &[], &[], &response.nonce));
        assert!(s.delta_response(&cds, &empty).is_none(), "then only changes");
        assert_eq!(acked(&s), Some(1));
    }
}
