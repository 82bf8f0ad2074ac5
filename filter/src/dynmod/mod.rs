//! The Envoy dynamic-module adapter (`envoy.extensions.filters.http.dynamic_modules`).
//!
//! Per request it reads the cluster's `backendtls` metadata values (pointer reads into Envoy's
//! memory, no copies; the parsed policy is cached per worker thread by a hash of those bytes) and,
//! in the response phase, the upstream TLS version, local address and leaf digest attributes.
//!
//! **Leaf certificate names.** The 1.40 HTTP-filter ABI exposes only the *first* DNS and URI SAN
//! of the upstream leaf (plus its subject and SHA-256 digest), not the certificate, and the
//! worker thread must never wait on the network to learn more. So, once per certificate digest:
//! 1. if the first DNS SAN or the first URI SAN satisfies the policy, the leaf does;
//! 2. otherwise, if the cluster's metadata says who checked the policy's identities during the
//!    handshake (`identity_checked_by`, which the loader writes beside the SAN matchers or the
//!    validator configuration it generates from the same identities by the same rule), the leaf
//!    passed that check against all of its SANs, and the filter relies on it;
//! 3. otherwise the filter fails closed (`identity_mismatch`) and logs why: a hand-written
//!    config that wants a matching SAN other than the first must state who checks it.
//!
//! **Certificate validator.** The same module is also Envoy's upstream certificate validator
//! when a cluster's TLS context names it (`cert_validator`, feature `validator`): it verifies the
//! chain and the policy's names during the handshake with rustls-webpki. It counts per policy
//! through counters this HTTP filter's config defines (`handshake_counters`), because the
//! validator ABI has no metrics callback.

#[cfg(feature = "validator")]
mod cert_validator;
mod ffi;
#[cfg(feature = "validator")]
mod handshake_counters;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use backendtls_contract::{keys, stats, tag_keys, Presented, Verification, METADATA_NAMESPACE};

use crate::config::{ConfigError, FilterConfig};
use crate::engine::{
    self, Counter, FailureClass, Metrics, PolicyCache, PolicyEntry, RejectReason, RequestDecision,
    TlsVersion, Upstream, Worker,
};
use crate::policy::{Fields, Policy};
use ffi::{Attribute, ConfigHandle, FilterHandle, HeaderStatus, LogLevel};

/// Counter ids, one labelled counter per base name.
struct CounterIds {
    requests: usize,
    handshakes: usize,
    tls_requests: usize,
    verify_failures: usize,
    rejections: usize,
}

/// The filter configuration: one per filter in a listener's HTTP connection manager.
pub(crate) struct Config {
    settings: FilterConfig,
    counters: CounterIds,
    /// Lends this config's counters to the certificate validator until the config is destroyed.
    #[cfg(feature = "validator")]
    _handshake_counters: handshake_counters::Registration,
}

impl Config {
    pub(crate) fn new(
        envoy: &ConfigHandle,
        _name: &[u8],
        config: &[u8],
    ) -> Result<Config, ConfigError> {
        let settings = FilterConfig::parse(config)?;
        let define = |name: &str, labels: &[&str]| {
            envoy.define_counter(name, labels).ok_or_else(|| {
                // Envoy refuses a definition only for bad labels or after config_new.
                ConfigError::Counter(name.to_string())
            })
        };
        let policy = [stats::LABEL_POLICY];
        let counters = CounterIds {
            requests: define(stats::REQUESTS, &policy)?,
            handshakes: define(stats::HANDSHAKES, &policy)?,
            tls_requests: define(
                stats::TLS_REQUESTS,
                &[stats::LABEL_VERSION, stats::LABEL_POLICY],
            )?,
            verify_failures: define(
                stats::VERIFY_FAILURES,
                &[stats::LABEL_REASON, stats::LABEL_POLICY],
            )?,
            rejections: define(stats::REJECTIONS, &[stats::LABEL_REASON, stats::LABEL_POLICY])?,
        };
        // The validator's counters are defined here because Envoy lets a module define metrics
        // only while an HTTP filter config is being created; see `handshake_counters`.
        #[cfg(feature = "validator")]
        let _handshake_counters = handshake_counters::register(
            envoy.counter_sink(),
            handshake_counters::HandshakeCounterIds {
                verified: define(stats::HANDSHAKES_VERIFIED, &policy)?,
                failures: define(
                    stats::HANDSHAKE_FAILURES,
                    &[stats::LABEL_REASON, stats::LABEL_POLICY],
                )?,
                not_after: envoy
                    .define_gauge(stats::BACKEND_CERTIFICATE_NOT_AFTER, &policy)
                    .ok_or_else(|| {
                        ConfigError::Counter(stats::BACKEND_CERTIFICATE_NOT_AFTER.to_string())
                    })?,
            },
        );
        Ok(Config {
            settings,
            counters,
            #[cfg(feature = "validator")]
            _handshake_counters,
        })
    }

    pub(crate) fn settings(&self) -> &FilterConfig {
        &self.settings
    }
}

/// Distinct metadata blobs remembered per worker before the cache starts over.
const CLUSTER_CACHE_CAPACITY: usize = 1024;

/// Per worker thread: caches and connection tracking. Envoy runs a stream's hooks on the worker
/// that owns its connection, and upstream connections belong to one worker too.
#[derive(Default)]
struct WorkerState {
    worker: Worker,
    /// Policies by a hash of the raw metadata values; the bytes are kept to rule out collisions.
    clusters: PolicyCache,
    /// The last metadata seen and its policy: most requests go to the cluster the previous one
    /// went to, and then the bytes are compared without hashing them.
    last: (Vec<u8>, Option<Rc<PolicyEntry>>),
    /// Scratch buffer for those bytes, reused across requests.
    scratch: Vec<u8>,
}

thread_local! {
    static WORKER: RefCell<WorkerState> = RefCell::new(WorkerState::default());
}

/// One HTTP stream.
///
/// The hooks take `&self`: `send_response` makes Envoy run the response path of this same stream
/// (this filter's `on_response_headers` among it) before it returns, so a `&mut Filter` alive
/// across it would alias. The one piece of state is a `Cell`, never borrowed across a call.
pub(crate) struct Filter {
    config: &'static Config,
    entry: Cell<Option<Rc<PolicyEntry>>>,
}

impl Filter {
    pub(crate) fn new(config: &'static Config) -> Filter {
        Filter { config, entry: Cell::new(None) }
    }

    pub(crate) fn on_request_headers(&self, envoy: &FilterHandle) -> HeaderStatus {
        if cfg!(feature = "bench-empty") {
            return HeaderStatus::Continue;
        }
        // A test hook of debug builds only (see FilterConfig::debug_panic_header).
        #[cfg(debug_assertions)]
        if let Some(header) = &self.config.settings.debug_panic_header {
            if envoy.request_header(header).is_some() {
                panic!("deliberate panic: request carries the configured debug_panic_header");
            }
        }
        let Some(entry) = WORKER.with(|w| policy_entry(&mut w.borrow_mut(), envoy)) else {
            return HeaderStatus::Continue;
        };
        let mut metrics = DynMetrics { envoy, counters: &self.config.counters };
        let decision = engine::on_request(&entry, &mut metrics);
        match decision {
            RequestDecision::Reject(reason) => {
                // Our own answer passes through on_response_headers, which finds no entry.
                reject(envoy, &entry, reason);
                HeaderStatus::StopIteration
            }
            RequestDecision::Continue => {
                if let Some(header) = &self.config.settings.request_header {
                    envoy.set_request_header(header, &entry.policy.name);
                }
                self.entry.set(Some(entry));
                HeaderStatus::Continue
            }
        }
    }

    pub(crate) fn on_response_headers(&self, envoy: &FilterHandle) -> HeaderStatus {
        if cfg!(feature = "bench-empty") {
            return HeaderStatus::Continue;
        }
        let Some(entry) = self.entry.take() else {
            return HeaderStatus::Continue;
        };
        if !entry.policy.is_valid() {
            // Our own answer to an invalid policy passes back through here.
            return HeaderStatus::Continue;
        }
        let mut metrics = DynMetrics { envoy, counters: &self.config.counters };
        let mut upstream = DynUpstream { envoy };
        let decision = WORKER.with(|w| {
            engine::on_response(&mut w.borrow_mut().worker, &entry, &mut upstream, &mut metrics)
        });
        // All tags in one call: the response phase is where every request that went upstream
        // passes (rejected requests are tagged in `reject`).
        let policy = &entry.policy;
        let verification = (tag_keys::VERIFICATION, decision.verification.as_str());
        match decision.tls {
            Some(tls) => envoy.set_dynamic_metadata(
                METADATA_NAMESPACE,
                &[
                    (tag_keys::POLICY, &policy.name),
                    (tag_keys::HOSTNAME, &policy.hostname),
                    (tag_keys::TLS_VERSION, tls.envoy_name()),
                    verification,
                ],
            ),
            None => envoy.set_dynamic_metadata(
                METADATA_NAMESPACE,
                &[
                    (tag_keys::POLICY, &policy.name),
                    (tag_keys::HOSTNAME, &policy.hostname),
                    verification,
                ],
            ),
        }
        match decision.reject {
            Some(reason) => {
                reject(envoy, &entry, reason);
                HeaderStatus::StopIteration
            }
            None => HeaderStatus::Continue,
        }
    }
}

fn reject(envoy: &FilterHandle, entry: &PolicyEntry, reason: RejectReason) {
    envoy.set_dynamic_metadata(
        METADATA_NAMESPACE,
        &[
            (tag_keys::POLICY, &entry.policy.name),
            (tag_keys::HOSTNAME, &entry.policy.hostname),
            (tag_keys::VERIFICATION, Verification::from(reason).as_str()),
        ],
    );
    envoy.send_response(
        reason.status(),
        &[("content-type", "text/plain"), (RejectReason::HEADER, reason.label())],
        &engine::reject_body(reason, &entry.policy),
        reason.details(),
    );
}

/// Reads the cluster's `backendtls` metadata and returns its cached policy entry.
///
/// Per request this makes four or five metadata reads and one list-length read through the ABI
/// (plus one per flat identity) and copies the values into a reused buffer: no allocation, and
/// no hashing when the metadata is the previous request's.
fn policy_entry(state: &mut WorkerState, envoy: &FilterHandle) -> Option<Rc<PolicyEntry>> {
    let string = |key| envoy.cluster_metadata_string(METADATA_NAMESPACE, key);
    let policy = string(keys::POLICY);
    let hostname = string(keys::HOSTNAME);
    let state_value = string(keys::STATE);
    let identity_checked_by = string(keys::IDENTITY_CHECKED_BY);
    if policy.is_none()
        && hostname.is_none()
        && state_value.is_none()
        && envoy.cluster_metadata_key_count(METADATA_NAMESPACE) == 0
    {
        return None;
    }
    // Only read what can change the outcome: the reason matters for an invalid policy, and the
    // struct list `subject_alt_names` only when the flat `identities` is missing.
    let reason = if state_value == Some(b"valid") { None } else { string(keys::REASON) };
    let identities_len = envoy.cluster_metadata_list_len(METADATA_NAMESPACE, keys::IDENTITIES);
    let sans_len = match identities_len {
        Some(_) => None,
        None => envoy.cluster_metadata_list_len(METADATA_NAMESPACE, keys::SUBJECT_ALT_NAMES),
    };
    let identity = |i| {
        envoy.cluster_metadata_list_string(METADATA_NAMESPACE, keys::IDENTITIES, i).unwrap_or(b"")
    };

    // The raw bytes identify the policy: any change in the metadata is a different key.
    let scratch = &mut state.scratch;
    scratch.clear();
    for value in [policy, hostname, state_value, reason, identity_checked_by] {
        push_part(scratch, value);
    }
    push_part(scratch, identities_len.map(|_| &b""[..]));
    for i in 0..identities_len.unwrap_or(0) {
        push_part(scratch, Some(identity(i)));
    }
    scratch.extend_from_slice(&sans_len.unwrap_or(0).to_le_bytes());
    if state.last.0 == *scratch {
        return state.last.1.clone();
    }
    let key = engine::hash_parts(&[scratch]);
    if let Some((bytes, entry)) = state.clusters.get(&key) {
        if bytes == scratch {
            state.last = (scratch.clone(), entry.clone());
            return entry.clone();
        }
    }

    // A policy not seen before (or forgotten): build it.
    let identities: Option<Vec<&str>> =
        identities_len.map(|n| (0..n).map(|i| utf8_or_marker(identity(i))).collect::<Vec<&str>>());
    let error = match (sans_len, &identities) {
        (Some(n), None) if n > 0 => Some(format!(
            "{}: the dynamic module reads the names from the flat {:?} list, which is missing",
            keys::SUBJECT_ALT_NAMES,
            keys::IDENTITIES
        )),
        _ => None,
    };
    let policy = Policy::from_fields(Fields {
        policy: policy.map(utf8_or_marker),
        hostname: hostname.map(utf8_or_marker),
        state: state_value.map(utf8_or_marker),
        reason: reason.map(utf8_or_marker),
        subject_alt_names: None,
        identities,
        identity_checked_by: identity_checked_by.map(utf8_or_marker),
        error,
    });
    if !policy.is_valid() && ffi::log_enabled(LogLevel::Warn) {
        ffi::log(
            LogLevel::Warn,
            &format!("backendtls: policy {} is not enforceable: {:?}", policy.name, policy.reason),
        );
    }
    let entry = Some(Rc::new(PolicyEntry::new(policy)));
    if state.clusters.len() >= CLUSTER_CACHE_CAPACITY {
        state.clusters.clear();
    }
    state.clusters.insert(key, (state.scratch.clone(), entry.clone()));
    state.last = (state.scratch.clone(), entry.clone());
    entry
}

/// Metadata strings are UTF-8 in protobuf; anything else would make the policy unmatchable.
fn utf8_or_marker(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("\u{fffd}")
}

/// Appends a value with a presence marker and its length, so that parts cannot run together.
fn push_part(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.len().to_le_bytes());
            out.extend_from_slice(v);
        }
    }
}

struct DynMetrics<'a> {
    envoy: &'a FilterHandle,
    counters: &'a CounterIds,
}

impl Metrics for DynMetrics<'_> {
    fn increment(&mut self, entry: &PolicyEntry, counter: Counter) {
        let c = self.counters;
        let id = match counter {
            Counter::Requests => c.requests,
            Counter::Handshakes => c.handshakes,
            Counter::TlsRequests(_) => c.tls_requests,
            Counter::VerifyFailures(_) => c.verify_failures,
            Counter::Rejections(_) => c.rejections,
        };
        let policy = entry.policy.name.as_bytes();
        match counter.label() {
            None => self.envoy.increment_counter(id, &[policy]),
            Some((_, value)) => self.envoy.increment_counter(id, &[value.as_bytes(), policy]),
        }
    }
}

struct DynUpstream<'a> {
    envoy: &'a FilterHandle,
}

impl Upstream for DynUpstream<'_> {
    fn tls_version(&mut self) -> Option<TlsVersion> {
        self.envoy.attribute(Attribute::UpstreamTlsVersion).map(TlsVersion::from_envoy)
    }

    fn response_from_upstream(&mut self) -> bool {
        self.envoy.attribute(Attribute::ResponseCodeDetails) == Some(b"via_upstream")
    }

    fn failure_class(&mut self) -> Option<FailureClass> {
        self.envoy
            .attribute(Attribute::UpstreamTransportFailureReason)
            .and_then(engine::classify_failure)
    }

    fn with_connection_key<R>(&mut self, f: impl FnOnce(&[u8], &[u8]) -> R) -> R {
        let local = self.envoy.attribute(Attribute::UpstreamLocalAddress).unwrap_or_default();
        let digest = self
            .envoy
            .attribute(Attribute::UpstreamSha256PeerCertificateDigest)
            .unwrap_or_default();
        f(local, digest)
    }

    fn leaf_satisfies(&mut self, policy: &Policy) -> bool {
        let first = |a| self.envoy.attribute(a).and_then(|v| std::str::from_utf8(v).ok());
        let dns = first(Attribute::UpstreamDnsSanPeerCertificate);
        let uri = first(Attribute::UpstreamUriSanPeerCertificate);
        let verdict = leaf_verdict(policy, dns, uri);
        match verdict {
            LeafVerdict::FirstNameMatches => true,
            LeafVerdict::CheckedDuringHandshake => {
                if ffi::log_enabled(LogLevel::Debug) {
                    ffi::log(
                        LogLevel::Debug,
                        &format!(
                            "backendtls: policy {}: the leaf's first names ({dns:?}, {uri:?}) \
                             match none of {}; relying on the handshake check ({:?})",
                            policy.name,
                            identities_text(policy),
                            policy.identity_checked_by
                        ),
                    );
                }
                true
            }
            LeafVerdict::Unverifiable => {
                ffi::log(
                    LogLevel::Warn,
                    &format!(
                        "backendtls: policy {}: the leaf's first names ({dns:?}, {uri:?}) match \
                         none of {}, and Envoy's ABI shows no other; the cluster metadata does \
                         not say that the handshake checked them ({}), so the response is \
                         refused",
                        policy.name,
                        identities_text(policy),
                        keys::IDENTITY_CHECKED_BY
                    ),
                );
                false
            }
        }
    }
}

fn identities_text(policy: &Policy) -> String {
    let names: Vec<String> = policy.identities.iter().map(ToString::to_string).collect();
    format!("[{}]", names.join(", "))
}

/// What the filter can tell about a leaf from the names Envoy's ABI shows (the first DNS SAN
/// and the first URI SAN) and the cluster metadata, without any I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeafVerdict {
    /// The first DNS or URI SAN satisfies the policy.
    FirstNameMatches,
    /// They do not, but the handshake checked all of the leaf's SANs against the same
    /// identities (`identity_checked_by`).
    CheckedDuringHandshake,
    /// Neither: the filter cannot see a matching name, so it fails closed.
    Unverifiable,
}

fn leaf_verdict(policy: &Policy, first_dns: Option<&str>, first_uri: Option<&str>) -> LeafVerdict {
    let first_matches = first_dns.is_some_and(|n| policy.accepts_name(Presented::Dns(n)))
        || first_uri.is_some_and(|u| policy.accepts_name(Presented::Uri(u)));
    if first_matches {
        LeafVerdict::FirstNameMatches
    } else if policy.identity_checked_by.is_some() {
        LeafVerdict::CheckedDuringHandshake
    } else {
        LeafVerdict::Unverifiable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(sans: Vec<(&'static str, &'static str)>, checked_by: Option<&'static str>) -> Policy {
        Policy::from_fields(Fields {
            policy: Some("default/p"),
            hostname: Some("example.com"),
            state: Some("valid"),
            subject_alt_names: Some(sans),
            identity_checked_by: checked_by,
            ..Fields::default()
        })
    }

    #[test]
    fn the_first_names_decide_when_they_match() {
        let p = policy(vec![("Hostname", "*.example.com"), ("URI", "spiffe://td/a")], None);
        assert_eq!(leaf_verdict(&p, Some("a.example.com"), None), LeafVerdict::FirstNameMatches);
        assert_eq!(
            leaf_verdict(&p, Some("other.example"), Some("spiffe://td/a")),
            LeafVerdict::FirstNameMatches
        );
    }

    #[test]
    fn other_names_rely_on_the_handshake_check_only_when_the_metadata_states_it() {
        let stated = policy(vec![("Hostname", "example.com")], Some("envoy_san_matchers"));
        assert_eq!(
            leaf_verdict(&stated, Some("first.example"), None),
            LeafVerdict::CheckedDuringHandshake
        );
        let unstated = policy(vec![("Hostname", "example.com")], None);
        assert_eq!(leaf_verdict(&unstated, Some("first.example"), None), LeafVerdict::Unverifiable);
        assert_eq!(leaf_verdict(&unstated, None, None), LeafVerdict::Unverifiable);
    }

    #[test]
    fn metadata_parts_do_not_run_together() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        push_part(&mut a, Some(b"ab"));
        push_part(&mut a, Some(b"c"));
        push_part(&mut b, Some(b"a"));
        push_part(&mut b, Some(b"bc"));
        assert_ne!(a, b);
    }
}
