//! The proxy-wasm adapter (Envoy `envoy.filters.http.wasm`, one VM per worker thread).
//!
//! Per request it reads `xds.cluster_metadata` once (the policy is cached by a hash of those
//! bytes, so a changed cluster is seen at once), and in the response phase
//! `upstream.tls_version`, `upstream.local_address` and `upstream.sha256_peer_certificate_digest`.
//! The leaf PEM (`upstream.peer_certificate`) is read only for a certificate not seen before.
//!
//! Envoy 1.40 offers Wasm filters no call that sets dynamic metadata: the request's tags go into
//! the filter state `wasm.backendtls` as a JSON object instead (access log:
//! `%FILTER_STATE(wasm.backendtls:PLAIN)%`).
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::config::FilterConfig;
use crate::engine::{
    self, Counter, FailureClass, Metrics, PolicyCache, PolicyEntry, RequestDecision, TlsVersion,
    Upstream, Worker,
};
use crate::policy::{LeafCheck, Policy};
use backendtls_contract::{self as contract, RejectReason, Verification};

/// Distinct cluster metadata blobs remembered before the cache starts over.
const CLUSTER_CACHE_CAPACITY: usize = 1024;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Shared {
    config: FilterConfig,
    worker: Worker,
    /// Policies by a hash of the cluster's serialized metadata; the bytes are kept to rule out
    /// collisions.
    clusters: PolicyCache,
    /// The last metadata seen and its policy: most requests go to the cluster the previous one
    /// went to, and then the bytes are compared without hashing them.
    last: (Vec<u8>, Option<Rc<PolicyEntry>>),
}

impl Shared {
    fn policy_for(&mut self, metadata: Vec<u8>) -> Option<Rc<PolicyEntry>> {
        if self.last.0 == metadata {
            return self.last.1.clone();
        }
        let key = engine::hash_parts(&[&metadata]);
        if let Some((bytes, entry)) = self.clusters.get(&key) {
            if *bytes == metadata {
                let entry = entry.clone();
                self.last = (metadata, entry.clone());
                return entry;
            }
        }
        let entry = Policy::from_metadata_proto(&metadata).map(|policy| {
            let entry = Rc::new(PolicyEntry::new(policy));
            for counter in Counter::eager() {
                define(&entry, counter);
            }
            entry
        });
        if self.clusters.len() >= CLUSTER_CACHE_CAPACITY {
            self.clusters.clear();
        }
        self.clusters.insert(key, (metadata.clone(), entry.clone()));
        self.last = (metadata, entry.clone());
        entry
    }
}

/// The metric id of `counter` for this policy, defined on first use.
fn define(entry: &PolicyEntry, counter: Counter) -> Option<u32> {
    let cell = &entry.metric_ids[counter.index()];
    if cell.get().is_none() {
        let name = counter.flat_name(&entry.policy.name);
        match hostcalls::define_metric(MetricType::Counter, &name) {
            Ok(id) => cell.set(Some(id)),
            Err(e) => log::warn!("backendtls: cannot define {name}: {e:?}"),
        }
    }
    cell.get()
}

struct WasmMetrics;

impl Metrics for WasmMetrics {
    fn increment(&mut self, entry: &PolicyEntry, counter: Counter) {
        if let Some(id) = define(entry, counter) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

#[derive(Default)]
struct Root {
    shared: Rc<RefCell<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match FilterConfig::parse(&bytes) {
            Ok(config) => {
                self.shared.borrow_mut().config = config;
                true
            }
            Err(e) => {
                log::error!("backendtls: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { shared: self.shared.clone(), entry: None }))
    }
}

struct Filter {
    shared: Rc<RefCell<Shared>>,
    /// The policy of the request's cluster; None for clusters without `backendtls` metadata.
    entry: Option<Rc<PolicyEntry>>,
}

impl Context for Filter {}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Upstream properties of the current request, read on demand.
struct WasmUpstream;

impl Upstream for WasmUpstream {
    fn tls_version(&mut self) -> Option<TlsVersion> {
        property(&["upstream", "tls_version"]).map(|v| TlsVersion::from_envoy(&v))
    }

    fn response_from_upstream(&mut self) -> bool {
        property(&["response", "code_details"]).is_some_and(|d| d == b"via_upstream")
    }

    fn failure_class(&mut self) -> Option<FailureClass> {
        property(&["upstream", "transport_failure_reason"])
            .and_then(|r| engine::classify_failure(&r))
    }

    fn with_connection_key<R>(&mut self, f: impl FnOnce(&[u8], &[u8]) -> R) -> R {
        let local = property(&["upstream", "local_address"]).unwrap_or_default();
        let digest = property(&["upstream", "sha256_peer_certificate_digest"]).unwrap_or_default();
        f(&local, &digest)
    }

    fn leaf_satisfies(&mut self, policy: &Policy) -> bool {
        let Some(pem) = property(&["upstream", "peer_certificate"]) else {
            log::warn!("backendtls: policy {}: no upstream peer certificate", policy.name);
            return false;
        };
        match policy.check_leaf_pem(&pem) {
            Ok(LeafCheck::Accepted) => true,
            Ok(LeafCheck::Refused(sans)) => {
                log::warn!(
                    "backendtls: policy {}: leaf names {:?} {:?} match none of {:?}",
                    policy.name,
                    sans.dns,
                    sans.uri,
                    policy.identities.iter().map(ToString::to_string).collect::<Vec<_>>()
                );
                false
            }
            Err(e) => {
                log::warn!("backendtls: policy {}: {e}", policy.name);
                false
            }
        }
    }
}

impl Filter {
    fn tag(&self, entry: &PolicyEntry, tls: Option<TlsVersion>, verification: Verification) {
        let json = entry.tag_json(tls, verification);
        if let Err(e) =
            hostcalls::set_property(vec![contract::METADATA_NAMESPACE], Some(json.as_bytes()))
        {
            log::debug!("backendtls: cannot set filter state: {e:?}");
        }
    }

    fn reject(&self, entry: &PolicyEntry, reason: RejectReason) -> Action {
        let body = engine::reject_body(reason, &entry.policy);
        self.send_http_response(
            reason.status(),
            vec![("content-type", "text/plain"), (RejectReason::HEADER, reason.label())],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if cfg!(feature = "bench-empty") {
            return Action::Continue;
        }
        let Some(metadata) = property(&["xds", "cluster_metadata"]) else {
            return Action::Continue;
        };
        let Some(entry) = self.shared.borrow_mut().policy_for(metadata) else {
            return Action::Continue;
        };
        self.entry = Some(entry.clone());
        match engine::on_request(&entry, &mut WasmMetrics) {
            RequestDecision::Reject(reason) => {
                self.tag(&entry, None, Verification::from(reason));
                self.reject(&entry, reason)
            }
            RequestDecision::Continue => {
                if let Some(header) = &self.shared.borrow().config.request_header {
                    self.set_http_request_header(header, Some(&entry.policy.name));
                }
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if cfg!(feature = "bench-empty") {
            return Action::Continue;
        }
        let Some(entry) = self.entry.take() else {
            return Action::Continue;
        };
        if !entry.policy.is_valid() {
            // Our own local reply for an invalid policy passes back through here.
            return Action::Continue;
        }
        let decision = {
            let mut shared = self.shared.borrow_mut();
            engine::on_response(&mut shared.worker, &entry, &mut WasmUpstream, &mut WasmMetrics)
        };
        self.tag(&entry, decision.tls, decision.verification);
        match decision.reject {
            Some(reason) => self.reject(&entry, reason),
            None => Action::Continue,
        }
    }
}
