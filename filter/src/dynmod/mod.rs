//! The Envoy dynamic-module adapter (`envoy.extensions.filters.http.dynamic_modules`).
//!
//! Per request it reads the cluster's `backendtls` metadata values (pointer reads into Envoy's
//! memory, no copies; the parsed policy is cached per worker thread by a hash of those bytes) and,
//! in the response phase, the upstream TLS version, local address and leaf digest attributes.
//!
//! **Leaf certificate names.** The 1.40 HTTP-filter ABI exposes only the *first* DNS and URI SAN
//! of the upstream leaf (plus its subject and SHA-256 digest), not the certificate. The filter
//! therefore checks, once per certificate digest:
//! 1. the first DNS SAN and first URI SAN: if either satisfies the policy, the leaf does;
//! 2. otherwise it fetches the leaf itself ([`leaf_fetch`]: a TLS 1.2 ClientHello to the same
//!    upstream address with the policy's hostname as SNI, reading the server's Certificate
//!    message), checks that its SHA-256 equals the digest Envoy reported for the real connection,
//!    and checks all of its SANs. If that fails (e.g. a TLS-1.3-only backend, or a different
//!    certificate), the leaf is treated as not satisfying the policy: the filter fails closed.
//!
//! The verdict is cached per policy and digest, so the fetch happens once per new certificate
//! per worker; it blocks that worker for at most [`leaf_fetch::TIMEOUT`] twice.
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
mod leaf_fetch;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::config::{ConfigError, FilterConfig};
use crate::contract::{keys, stats, tag_keys, METADATA_NAMESPACE};
use crate::engine::{
    self, Counter, FailureClass, Metrics, PolicyEntry, RejectReason, RequestDecision, TlsVersion,
    Upstream, Worker,
};
use crate::policy::{Fields, Policy};
use ffi::{Attribute, ConfigHandle, FilterHandle, LogLevel};

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_headers_status`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub(crate) enum HeaderStatus {
    Continue = 0,
    StopIteration = 1,
}

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
                ConfigError::from_message(format!("Envoy refused to define counter {name}"))
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
    clusters: HashMap<u64, (Vec<u8>, Option<Rc<PolicyEntry>>)>,
    /// Scratch buffer for those bytes, reused across requests.
    scratch: Vec<u8>,
}

thread_local! {
    static WORKER: RefCell<WorkerState> = RefCell::new(WorkerState::default());
}

/// One HTTP stream.
pub(crate) struct Filter {
    config: &'static Config,
    entry: Option<Rc<PolicyEntry>>,
}

impl Filter {
    pub(crate) fn new(config: &'static Config) -> Filter {
        Filter { config, entry: None }
    }

    pub(crate) fn on_request_headers(&mut self, envoy: &FilterHandle) -> HeaderStatus {
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
        let status = match decision {
            RequestDecision::Reject(reason) => {
                reject(envoy, &entry, reason);
                HeaderStatus::StopIteration
            }
            RequestDecision::Continue => {
                if let Some(header) = &self.config.settings.request_header {
                    envoy.set_request_header(header, &entry.policy.name);
                }
                HeaderStatus::Continue
            }
        };
        self.entry = Some(entry);
        status
    }

    pub(crate) fn on_response_headers(&mut self, envoy: &FilterHandle) -> HeaderStatus {
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
            (tag_keys::VERIFICATION, reason.verification().as_str()),
        ],
    );
    envoy.send_response(
        reason.status(),
        &[("content-type", "text/plain"), ("x-backendtls-reject", reason.label())],
        &engine::reject_body(reason, &entry.policy),
        reason.details(),
    );
}

/// Reads the cluster's `backendtls` metadata and returns its cached policy entry.
fn policy_entry(state: &mut WorkerState, envoy: &FilterHandle) -> Option<Rc<PolicyEntry>> {
    let string = |key| envoy.cluster_metadata_string(METADATA_NAMESPACE, key);
    let policy = string(keys::POLICY);
    let hostname = string(keys::HOSTNAME);
    let state_value = string(keys::STATE);
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
    let identities: Vec<&[u8]> = (0..identities_len.unwrap_or(0))
        .map(|i| {
            envoy
                .cluster_metadata_list_string(METADATA_NAMESPACE, keys::IDENTITIES, i)
                .unwrap_or(b"")
        })
        .collect();

    // The raw bytes identify the policy: any change in the metadata is a different key.
    let scratch = &mut state.scratch;
    scratch.clear();
    for value in [policy, hostname, state_value, reason] {
        push_part(scratch, value);
    }
    push_part(scratch, identities_len.map(|_| &b""[..]));
    for identity in &identities {
        push_part(scratch, Some(identity));
    }
    scratch.extend_from_slice(&sans_len.unwrap_or(0).to_le_bytes());
    let key = engine::hash_parts(&[scratch]);
    if let Some((bytes, entry)) = state.clusters.get(&key) {
        if bytes == scratch {
            return entry.clone();
        }
    }

    let identities: Option<Vec<&str>> =
        identities_len.map(|_| identities.iter().map(|b| utf8_or_marker(b)).collect());
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
            .and_then(FailureClass::classify)
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
        if first(Attribute::UpstreamDnsSanPeerCertificate).is_some_and(|n| policy.accepts_dns(n))
            || first(Attribute::UpstreamUriSanPeerCertificate)
                .is_some_and(|u| policy.accepts_uri(u))
        {
            return true;
        }
        // The first names do not match: look at all of them.
        let (Some(address), Some(digest)) = (
            first(Attribute::UpstreamAddress),
            first(Attribute::UpstreamSha256PeerCertificateDigest),
        ) else {
            return false;
        };
        let verdict = leaf_fetch::fetch_leaf(address, &policy.hostname).and_then(|der| {
            if !hex_eq(&Sha256::digest(&der), digest) {
                return Err(leaf_fetch::FetchError::new(
                    "the backend presented a different certificate to the check",
                ));
            }
            crate::x509::subject_alt_names(&der)
                .map_err(|e| leaf_fetch::FetchError::new(e.to_string()))
        });
        match verdict {
            Ok(sans) => {
                let ok = policy.accepts(&sans);
                if !ok {
                    ffi::log(
                        LogLevel::Warn,
                        &format!(
                            "backendtls: policy {}: leaf names {:?} {:?} match none of {:?}",
                            policy.name, sans.dns, sans.uri, policy.identities
                        ),
                    );
                }
                ok
            }
            Err(e) => {
                ffi::log(
                    LogLevel::Warn,
                    &format!("backendtls: policy {}: cannot read all leaf names: {e}", policy.name),
                );
                false
            }
        }
    }
}

/// Whether `hex` (any case) spells `bytes`.
fn hex_eq(bytes: &[u8], hex: &str) -> bool {
    hex.len() == bytes.len() * 2
        && bytes.iter().zip(hex.as_bytes().chunks(2)).all(|(b, pair)| {
            std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok()) == Some(*b)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests_compare_case_insensitively() {
        assert!(hex_eq(&[0xab, 0x01], "ab01"));
        assert!(hex_eq(&[0xab, 0x01], "AB01"));
        assert!(!hex_eq(&[0xab, 0x01], "ab02"));
        assert!(!hex_eq(&[0xab], "ab01"));
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
