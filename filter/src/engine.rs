//! The per-request decisions, shared by both builds.
//!
//! An adapter (proxy-wasm or dynamic module) finds the [`PolicyEntry`] of the request's cluster,
//! calls [`on_request`] in the request-headers phase and [`on_response`] in the
//! response-headers phase, and carries out the returned decision: count, tag, answer locally.
//! Everything Envoy-specific sits behind [`Upstream`], so the logic is tested on the host.
#![forbid(unsafe_code)]

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use backendtls_contract::{self as contract, stats, Verification};
pub use backendtls_contract::{RejectReason, VerifyFailure as FailureClass};

use crate::policy::Policy;
use crate::x509::SubjectAltNames;

/// Envoy's `upstream.tls_version`, as a stat label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls1_0,
    Tls1_1,
    Tls1_2,
    Tls1_3,
    Other,
}

impl TlsVersion {
    const ALL: [TlsVersion; 5] = [
        TlsVersion::Tls1_0,
        TlsVersion::Tls1_1,
        TlsVersion::Tls1_2,
        TlsVersion::Tls1_3,
        TlsVersion::Other,
    ];

    pub fn from_envoy(version: &[u8]) -> TlsVersion {
        match version {
            b"TLSv1" => TlsVersion::Tls1_0,
            b"TLSv1.1" => TlsVersion::Tls1_1,
            b"TLSv1.2" => TlsVersion::Tls1_2,
            b"TLSv1.3" => TlsVersion::Tls1_3,
            _ => TlsVersion::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The `version` label value (`TLSv1_3`).
    pub fn label(self) -> &'static str {
        stats::TLS_VERSIONS[self.index()]
    }

    /// As Envoy spells it (`TLSv1.3`), for the request's tags.
    pub fn envoy_name(self) -> &'static str {
        ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "other"][self.index()]
    }
}

/// Classifies `upstream.transport_failure_reason` into the `reason` of `verify_failures`. Envoy
/// (BoringSSL) reports e.g. `TLS_error:|268435581:SSL routines:OPENSSL_internal:
/// CERTIFICATE_VERIFY_FAILED:verify cert failed: SAN matcher...`. `None` when the failure was not
/// a TLS one (connection refused, reset before TLS, ...), which the filter does not count as a
/// verification failure.
pub fn classify_failure(reason: &[u8]) -> Option<FailureClass> {
    if let Some(class) = from_validator_detail(reason) {
        return Some(class);
    }
    let has = |needle: &str| contains_ignore_case(reason, needle.as_bytes());
    if has("SAN matcher") || has("subject alt name") || has("hostname mismatch") {
        Some(FailureClass::SanMismatch)
    } else if has("certificate has expired") || has("not yet valid") || has("CERT_HAS_EXPIRED") {
        Some(FailureClass::Expired)
    } else if has("unable to get local issuer")
        || has("unable to get issuer")
        || has("self signed certificate")
        || has("self-signed certificate")
        || has("untrusted")
        || has("unknown ca")
        || has("X509_verify_cert")
    {
        Some(FailureClass::UnknownCa)
    } else if has("TLS_error") || has("SSL") || has("CERTIFICATE_VERIFY_FAILED") {
        Some(FailureClass::HandshakeError)
    } else {
        None
    }
}

/// The backendtls certificate validator's own detail (`...CERTIFICATE_VERIFY_FAILED:backendtls:
/// <reason>: ...`): its reason label says exactly what failed, no guessing from BoringSSL text.
fn from_validator_detail(reason: &[u8]) -> Option<FailureClass> {
    use backendtls_contract::HandshakeFailure;
    // Envoy may store the reason with its spaces turned into underscores (as its access log
    // prints it): accept either after the colon.
    let prefix = contract::validator::DETAIL_PREFIX.trim_end().as_bytes();
    let start = reason.windows(prefix.len()).position(|w| w == prefix)? + prefix.len();
    let rest = reason[start..].strip_prefix(b" ").or(reason[start..].strip_prefix(b"_"))?;
    let label = &rest[..rest.iter().position(|&b| b == b':')?];
    let label = std::str::from_utf8(label).ok()?;
    Some(match HandshakeFailure::from_label(label) {
        Some(HandshakeFailure::UnknownIssuer) => FailureClass::UnknownCa,
        Some(HandshakeFailure::NameMismatch) => FailureClass::SanMismatch,
        Some(HandshakeFailure::Expired | HandshakeFailure::NotYetValid) => FailureClass::Expired,
        _ => FailureClass::HandshakeError,
    })
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// One of the per-policy counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Requests,
    Handshakes,
    TlsRequests(TlsVersion),
    VerifyFailures(FailureClass),
    Rejections(RejectReason),
}

impl Counter {
    pub const COUNT: usize =
        2 + TlsVersion::ALL.len() + FailureClass::ALL.len() + RejectReason::ALL.len();

    pub fn index(self) -> usize {
        match self {
            Counter::Requests => 0,
            Counter::Handshakes => 1,
            Counter::TlsRequests(v) => 2 + v.index(),
            Counter::VerifyFailures(c) => 2 + TlsVersion::ALL.len() + c as usize,
            Counter::Rejections(r) => {
                2 + TlsVersion::ALL.len() + FailureClass::ALL.len() + r as usize
            }
        }
    }

    /// The counters defined eagerly for every policy (so that they read 0 rather than being
    /// absent); TLS versions appear when first seen.
    pub fn eager() -> impl Iterator<Item = Counter> {
        [Counter::Requests, Counter::Handshakes]
            .into_iter()
            .chain(FailureClass::ALL.iter().copied().map(Counter::VerifyFailures))
            .chain(RejectReason::ALL.iter().copied().map(Counter::Rejections))
    }

    /// The metric's base name (see `contract::stats`).
    pub fn base_name(self) -> &'static str {
        match self {
            Counter::Requests => stats::REQUESTS,
            Counter::Handshakes => stats::HANDSHAKES,
            Counter::TlsRequests(_) => stats::TLS_REQUESTS,
            Counter::VerifyFailures(_) => stats::VERIFY_FAILURES,
            Counter::Rejections(_) => stats::REJECTIONS,
        }
    }

    /// The label before `policy`, if any: (label name, value).
    pub fn label(self) -> Option<(&'static str, &'static str)> {
        match self {
            Counter::Requests | Counter::Handshakes => None,
            Counter::TlsRequests(v) => Some((stats::LABEL_VERSION, v.label())),
            Counter::VerifyFailures(c) => Some((stats::LABEL_REASON, c.label())),
            Counter::Rejections(r) => Some((stats::LABEL_REASON, r.label())),
        }
    }

    /// The flat stat name the Wasm build defines:
    /// `backendtls.<base>[.<label>.<value>].policy.<ns>/<name>`.
    pub fn flat_name(self, policy: &str) -> String {
        let mut name = format!("{}.{}", stats::FAMILY, self.base_name());
        if let Some((label, value)) = self.label() {
            name.push('.');
            name.push_str(label);
            name.push('.');
            name.push_str(value);
        }
        name.push('.');
        name.push_str(stats::LABEL_POLICY);
        name.push('.');
        name.push_str(policy);
        name
    }
}

/// A bounded map of recently seen keys, in two generations: when the current one fills up it
/// becomes the previous one and the oldest generation is dropped. Keys in use keep being moved
/// into the current generation, so only keys idle for a whole generation are forgotten.
#[derive(Debug)]
pub struct RecentMap<V> {
    current: HashedMap<V>,
    previous: HashedMap<V>,
    capacity: usize,
}

impl<V: Copy> RecentMap<V> {
    pub fn new(capacity: usize) -> RecentMap<V> {
        RecentMap { current: HashedMap::default(), previous: HashedMap::default(), capacity }
    }

    /// The value remembered for `key`, if it was seen and not forgotten (the key then moves to
    /// the current generation).
    pub fn get(&mut self, key: u64) -> Option<V> {
        if let Some(value) = self.current.get(&key) {
            return Some(*value);
        }
        let value = self.previous.remove(&key)?;
        self.insert(key, value);
        Some(value)
    }

    /// Remembers `value` for `key`.
    pub fn insert(&mut self, key: u64, value: V) {
        if self.current.len() >= self.capacity && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }
}

/// A 64-bit hash over several byte strings (each part's length is mixed in, so parts cannot
/// run together), for cache keys. Eight bytes per step: it runs on every request, over the
/// metadata and the upstream's address and certificate digest.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        let mut chunks = part.chunks_exact(8);
        for chunk in &mut chunks {
            h = mix(h, u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        h = mix(h, u64::from_le_bytes(tail));
        h = mix(h, part.len() as u64);
    }
    finish(h)
}

fn mix(h: u64, word: u64) -> u64 {
    (h ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

/// The final avalanche (splitmix64's), so that every input bit reaches the low bits that pick a
/// hash-table bucket.
fn finish(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Hash tables keyed by [`hash_parts`] values use them as they are, rather than hashing the
/// hash again (SipHash, the default, costs more than the rest of a cache hit).
pub type KeyHasher = BuildHasherDefault<KeyIsHash>;

/// A hash table keyed by [`hash_parts`] values.
pub type HashedMap<V> = HashMap<u64, V, KeyHasher>;

/// Policies by the hash of the metadata bytes they were read from; the bytes are kept to rule
/// out collisions (both adapters, which read the metadata differently).
pub type PolicyCache = HashedMap<(Vec<u8>, Option<Rc<PolicyEntry>>)>;

/// The [`Hasher`] of [`KeyHasher`]: takes a `u64` key as its hash.
#[derive(Default)]
pub struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by u64 keys; kept correct for any other key all the same.
        self.0 = hash_parts(&[&self.0.to_le_bytes(), bytes]);
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// What the filter remembers about one policy in one worker (Wasm VM or dynamic-module thread).
#[derive(Debug)]
pub struct PolicyEntry {
    pub policy: Policy,
    /// Adapter-owned metric handles, one per [`Counter::index`] (None = not defined yet).
    pub metric_ids: [Cell<Option<u32>>; Counter::COUNT],
    /// Leaf verdicts by the hash of the certificate digest (hex SHA-256, as Envoy reports
    /// it); the digest is kept to rule out collisions.
    verdicts: RefCell<HashedMap<(Box<[u8]>, bool)>>,
    /// Serialized tags (Wasm filter state) by (TLS version, verification).
    tag_json: [OnceCell<String>; TAG_SLOTS],
}

const VERIFICATIONS: usize = Verification::ALL.len();
const TAG_SLOTS: usize = (TlsVersion::ALL.len() + 1) * VERIFICATIONS;
/// Distinct certificates remembered per policy before the verdict cache starts over.
const VERDICT_CAPACITY: usize = 64;

impl PolicyEntry {
    pub fn new(policy: Policy) -> PolicyEntry {
        PolicyEntry {
            policy,
            metric_ids: std::array::from_fn(|_| Cell::new(None)),
            verdicts: RefCell::new(HashMap::default()),
            tag_json: std::array::from_fn(|_| OnceCell::new()),
        }
    }

    /// The request's tags as one JSON object (what the Wasm build stores in filter state).
    pub fn tag_json(&self, tls: Option<TlsVersion>, verification: Verification) -> &str {
        let slot = tls.map_or(0, |v| v.index() + 1) * VERIFICATIONS + verification as usize;
        self.tag_json[slot].get_or_init(|| {
            let mut object = serde_json::Map::new();
            let mut put = |k: &str, v: &str| object.insert(k.into(), v.into());
            put(contract::tag_keys::POLICY, &self.policy.name);
            put(contract::tag_keys::HOSTNAME, &self.policy.hostname);
            if let Some(v) = tls {
                put(contract::tag_keys::TLS_VERSION, v.envoy_name());
            }
            put(contract::tag_keys::VERIFICATION, verification.as_str());
            serde_json::Value::Object(object).to_string()
        })
    }

    fn cached_verdict(&self, digest_hash: u64, digest: &[u8]) -> Option<bool> {
        match self.verdicts.borrow().get(&digest_hash) {
            Some((seen, ok)) if **seen == *digest => Some(*ok),
            _ => None,
        }
    }

    fn remember_verdict(&self, digest_hash: u64, digest: &[u8], ok: bool) {
        let mut verdicts = self.verdicts.borrow_mut();
        if verdicts.len() >= VERDICT_CAPACITY {
            verdicts.clear();
        }
        verdicts.insert(digest_hash, (digest.into(), ok));
    }
}

/// Per-worker state that outlives requests.
#[derive(Debug)]
pub struct Worker {
    /// Upstream TLS connections seen, by (local address, peer digest), with the TLS version they
    /// negotiated: a new one is a handshake, and a known one's version needs no host call.
    connections: RecentMap<TlsVersion>,
}

impl Default for Worker {
    fn default() -> Self {
        Worker { connections: RecentMap::new(4096) }
    }
}

/// What the filter needs to know about the upstream side of a request, read lazily (each read
/// is a host call; the happy path makes two on a known connection, three on a new one).
pub trait Upstream {
    /// Envoy's `upstream.tls_version`; None when the upstream connection had no TLS (or none
    /// was made).
    fn tls_version(&mut self) -> Option<TlsVersion>;
    /// Whether the response came from the upstream (`response.code_details == via_upstream`)
    /// rather than from Envoy itself.
    fn response_from_upstream(&mut self) -> bool;
    /// `upstream.transport_failure_reason`, classified.
    fn failure_class(&mut self) -> Option<FailureClass>;
    /// Calls `f` with `upstream.local_address` and `upstream.sha256_peer_certificate_digest`.
    fn with_connection_key<R>(&mut self, f: impl FnOnce(&[u8], &[u8]) -> R) -> R;
    /// Decides whether the leaf certificate satisfies `policy`; called once per certificate
    /// digest (the result is cached). An unreadable leaf fails closed (false).
    fn leaf_satisfies(&mut self, policy: &Policy) -> bool;
}

/// Counts the per-policy counters; the adapter turns them into Envoy stats.
pub trait Metrics {
    fn increment(&mut self, entry: &PolicyEntry, counter: Counter);
}

/// The request-phase decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestDecision {
    /// Go on to the upstream.
    Continue,
    /// Answer locally; the policy cannot be enforced.
    Reject(RejectReason),
}

pub fn on_request(entry: &PolicyEntry, metrics: &mut impl Metrics) -> RequestDecision {
    metrics.increment(entry, Counter::Requests);
    if entry.policy.is_valid() {
        RequestDecision::Continue
    } else {
        metrics.increment(entry, Counter::Rejections(RejectReason::InvalidPolicy));
        RequestDecision::Reject(RejectReason::InvalidPolicy)
    }
}

/// The response-phase decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseDecision {
    pub tls: Option<TlsVersion>,
    pub verification: Verification,
    /// Replace the response with the filter's own answer.
    pub reject: Option<RejectReason>,
}

pub fn on_response(
    worker: &mut Worker,
    entry: &PolicyEntry,
    upstream: &mut impl Upstream,
    metrics: &mut impl Metrics,
) -> ResponseDecision {
    // The connection first: on a known one the TLS version is already known (it cannot change
    // within a connection), which saves a host call on most requests (a costly one in Wasm).
    let (key, has_digest, digest_hash, cached) = upstream.with_connection_key(|local, digest| {
        let digest_hash = hash_parts(&[digest]);
        let key = hash_parts(&[local, &digest_hash.to_le_bytes()]);
        let cached = entry.cached_verdict(digest_hash, digest).ok_or_else(|| digest.to_vec());
        (key, !digest.is_empty(), digest_hash, cached)
    });
    let known = worker.connections.get(key);
    // Without a digest (no TLS, or no peer certificate) the key names no connection for sure:
    // read the version.
    let remembered = known.filter(|_| has_digest);
    let Some(tls) = remembered.or_else(|| upstream.tls_version()) else {
        if upstream.response_from_upstream() {
            // The backend answered over a connection without TLS: never hand that to the client.
            metrics.increment(entry, Counter::Rejections(RejectReason::Plaintext));
            return ResponseDecision {
                tls: None,
                verification: Verification::Plaintext,
                reject: Some(RejectReason::Plaintext),
            };
        }
        // Envoy's own answer (e.g. 503 after a failed handshake): let it through, count why.
        let verification = match upstream.failure_class() {
            Some(class) => {
                metrics.increment(entry, Counter::VerifyFailures(class));
                class.into()
            }
            None => Verification::HandshakeError,
        };
        return ResponseDecision { tls: None, verification, reject: None };
    };
    metrics.increment(entry, Counter::TlsRequests(tls));
    worker.connections.insert(key, tls);
    if known.is_none() {
        metrics.increment(entry, Counter::Handshakes);
    }
    let ok = match cached {
        Ok(ok) => ok,
        Err(digest) => {
            let ok = upstream.leaf_satisfies(&entry.policy);
            // Without a digest there is nothing to key the verdict by: decide every time.
            if !digest.is_empty() {
                entry.remember_verdict(digest_hash, &digest, ok);
            }
            ok
        }
    };
    if ok {
        ResponseDecision { tls: Some(tls), verification: Verification::Verified, reject: None }
    } else {
        metrics.increment(entry, Counter::Rejections(RejectReason::IdentityMismatch));
        ResponseDecision {
            tls: Some(tls),
            verification: Verification::IdentityMismatch,
            reject: Some(RejectReason::IdentityMismatch),
        }
    }
}

/// The body of the filter's local answers: short, and saying why.
pub fn reject_body(reason: RejectReason, policy: &Policy) -> String {
    match reason {
        RejectReason::InvalidPolicy => format!(
            "backendtls: policy {} cannot be enforced: {}\n",
            policy.name,
            policy.reason.as_deref().unwrap_or("invalid")
        ),
        RejectReason::Plaintext => {
            format!(
                "backendtls: policy {} requires TLS to the backend; the connection had none\n",
                policy.name
            )
        }
        RejectReason::IdentityMismatch => {
            format!("backendtls: the backend certificate does not match policy {}\n", policy.name)
        }
    }
}

/// Whether any of a leaf's names satisfies the policy.
pub fn sans_satisfy(policy: &Policy, sans: &SubjectAltNames) -> bool {
    policy.accepts(sans)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::policy::Fields;

    fn entry(state: &str) -> PolicyEntry {
        PolicyEntry::new(Policy::from_fields(Fields {
            policy: Some("default/p"),
            hostname: Some("example.com"),
            state: Some(state),
            ..Fields::default()
        }))
    }

    #[derive(Default)]
    struct Counted(Vec<Counter>);

    impl Metrics for Counted {
        fn increment(&mut self, _: &PolicyEntry, counter: Counter) {
            self.0.push(counter);
        }
    }

    struct FakeUpstream {
        tls: Option<TlsVersion>,
        tls_reads: usize,
        via_upstream: bool,
        failure: Option<&'static str>,
        local: &'static str,
        digest: &'static str,
        leaf: SubjectAltNames,
        leaf_checks: usize,
    }

    impl FakeUpstream {
        fn tls(local: &'static str, dns: &[&str]) -> FakeUpstream {
            FakeUpstream {
                tls: Some(TlsVersion::Tls1_3),
                tls_reads: 0,
                via_upstream: true,
                failure: None,
                local,
                digest: "ab01",
                leaf: SubjectAltNames {
                    dns: dns.iter().map(|s| s.to_string()).collect(),
                    uri: vec![],
                },
                leaf_checks: 0,
            }
        }
    }

    impl Upstream for FakeUpstream {
        fn tls_version(&mut self) -> Option<TlsVersion> {
            self.tls_reads += 1;
            self.tls
        }
        fn response_from_upstream(&mut self) -> bool {
            self.via_upstream
        }
        fn failure_class(&mut self) -> Option<FailureClass> {
            self.failure.and_then(|r| classify_failure(r.as_bytes()))
        }
        fn with_connection_key<R>(&mut self, f: impl FnOnce(&[u8], &[u8]) -> R) -> R {
            f(self.local.as_bytes(), self.digest.as_bytes())
        }
        fn leaf_satisfies(&mut self, policy: &Policy) -> bool {
            self.leaf_checks += 1;
            sans_satisfy(policy, &self.leaf)
        }
    }

    #[test]
    fn valid_tls_counts_request_version_and_one_handshake_per_connection() {
        let (e, mut w, mut m) = (entry("valid"), Worker::default(), Counted::default());
        let mut up = FakeUpstream::tls("127.0.0.1:40000", &["other.example", "example.com"]);
        for _ in 0..3 {
            assert_eq!(on_request(&e, &mut m), RequestDecision::Continue);
            let d = on_response(&mut w, &e, &mut up, &mut m);
            assert_eq!(d.reject, None);
            assert_eq!(d.verification, Verification::Verified);
        }
        up.local = "127.0.0.1:40001";
        on_response(&mut w, &e, &mut up, &mut m);
        let count = |c: Counter| m.0.iter().filter(|x| **x == c).count();
        assert_eq!(count(Counter::Requests), 3);
        assert_eq!(count(Counter::TlsRequests(TlsVersion::Tls1_3)), 4);
        assert_eq!(count(Counter::Handshakes), 2);
        assert_eq!(up.leaf_checks, 1, "the verdict is cached per certificate digest");
        assert_eq!(up.tls_reads, 2, "the version is read once per connection");
    }

    #[test]
    fn a_known_connection_keeps_its_version_and_one_without_digest_is_read_every_time() {
        let (e, mut w, mut m) = (entry("valid"), Worker::default(), Counted::default());
        let mut up = FakeUpstream::tls("127.0.0.1:40000", &["example.com"]);
        up.tls = Some(TlsVersion::Tls1_2);
        on_response(&mut w, &e, &mut up, &mut m);
        up.tls = Some(TlsVersion::Tls1_3); // not asked again for the same connection
        assert_eq!(on_response(&mut w, &e, &mut up, &mut m).tls, Some(TlsVersion::Tls1_2));
        up.digest = "ab02"; // another certificate: another connection
        assert_eq!(on_response(&mut w, &e, &mut up, &mut m).tls, Some(TlsVersion::Tls1_3));
        assert_eq!(up.tls_reads, 2);

        let mut bare = FakeUpstream { digest: "", ..FakeUpstream::tls("127.0.0.1:40001", &[]) };
        for _ in 0..2 {
            on_response(&mut w, &e, &mut bare, &mut m);
        }
        assert_eq!(bare.tls_reads, 2);
        let count = |c: Counter| m.0.iter().filter(|x| **x == c).count();
        assert_eq!(count(Counter::Handshakes), 3, "two connections with digests, one without");
    }

    #[test]
    fn identity_mismatch_is_rejected_and_cached() {
        let (e, mut w, mut m) = (entry("valid"), Worker::default(), Counted::default());
        let mut up = FakeUpstream::tls("127.0.0.1:40000", &["evil.example"]);
        for _ in 0..2 {
            let d = on_response(&mut w, &e, &mut up, &mut m);
            assert_eq!(d.reject, Some(RejectReason::IdentityMismatch));
        }
        assert_eq!(up.leaf_checks, 1);
        assert!(m.0.contains(&Counter::Rejections(RejectReason::IdentityMismatch)));
    }

    #[test]
    fn plaintext_upstream_answer_is_replaced() {
        let (e, mut w, mut m) = (entry("valid"), Worker::default(), Counted::default());
        let mut up = FakeUpstream { tls: None, ..FakeUpstream::tls("l", &[]) };
        let d = on_response(&mut w, &e, &mut up, &mut m);
        assert_eq!(d.reject, Some(RejectReason::Plaintext));
        assert_eq!(d.verification, Verification::Plaintext);
        assert_eq!(m.0, [Counter::Rejections(RejectReason::Plaintext)]);
    }

    #[test]
    fn handshake_failures_pass_through_and_are_classified() {
        let (e, mut w, mut m) = (entry("valid"), Worker::default(), Counted::default());
        let mut up = FakeUpstream {
            tls: None,
            via_upstream: false,
            failure: Some("TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify cert failed: SAN matcher, certificate SANs are [other]:TLS_error_end"),
            ..FakeUpstream::tls("l", &[])
        };
        let d = on_response(&mut w, &e, &mut up, &mut m);
        assert_eq!(d.reject, None);
        assert_eq!(d.verification, Verification::SanMismatch);
        assert_eq!(m.0, [Counter::VerifyFailures(FailureClass::SanMismatch)]);
    }

    #[test]
    fn invalid_policy_is_rejected_before_upstream() {
        let (e, mut m) = (entry("invalid"), Counted::default());
        assert_eq!(on_request(&e, &mut m), RequestDecision::Reject(RejectReason::InvalidPolicy));
        assert_eq!(m.0, [Counter::Requests, Counter::Rejections(RejectReason::InvalidPolicy)]);
        assert!(reject_body(RejectReason::InvalidPolicy, &e.policy).contains("default/p"));
    }

    #[test]
    fn transport_failures_are_classified() {
        let cases: [(&str, Option<FailureClass>); 11] = [
            ("TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:backendtls:_expired:_policy_default/p:_the_leaf_expired_at_2020-01-01T00:00:00Z:TLS_error_end", Some(FailureClass::Expired)),
            ("TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:backendtls: unknown_issuer: policy default/p: no chain from the leaf to the policy's 1 trust anchor(s):TLS_error_end", Some(FailureClass::UnknownCa)),
            ("TLS_error:|CERTIFICATE_VERIFY_FAILED:backendtls: name_mismatch: policy default/p: the leaf's names [dns:x] match none of [dns:y]:TLS_error_end", Some(FailureClass::SanMismatch)),
            ("TLS_error:|CERTIFICATE_VERIFY_FAILED:backendtls: not_yet_valid: policy a/b: the leaf is not valid before 2090-01-01T00:00:00Z:TLS_error_end", Some(FailureClass::Expired)),
            ("TLS_error:|CERTIFICATE_VERIFY_FAILED:backendtls: bad_key_usage: policy a/b: a certificate's extended key usage [clientAuth] does not allow TLS server authentication (serverAuth):TLS_error_end", Some(FailureClass::HandshakeError)),
            ("TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify cert failed: X509_verify_cert: certificate verification error at depth 0: unable to get local issuer certificate:TLS_error_end", Some(FailureClass::UnknownCa)),
            ("TLS_error:|CERTIFICATE_VERIFY_FAILED:verify cert failed: X509_verify_cert: certificate verification error at depth 0: certificate has expired:TLS_error_end", Some(FailureClass::Expired)),
            ("TLS_error:|CERTIFICATE_VERIFY_FAILED:verify cert failed: SAN matcher", Some(FailureClass::SanMismatch)),
            ("TLS_error:|268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end", Some(FailureClass::HandshakeError)),
            ("delayed connect error: Connection refused", None),
            ("", None),
        ];
        for (reason, want) in cases {
            assert_eq!(classify_failure(reason.as_bytes()), want, "{reason}");
        }
    }

    #[test]
    fn counter_names_and_indices() {
        assert_eq!(
            Counter::Requests.flat_name("default/p"),
            "backendtls.requests.policy.default/p"
        );
        assert_eq!(
            Counter::TlsRequests(TlsVersion::Tls1_3).flat_name("default/p"),
            "backendtls.tls_requests.version.TLSv1_3.policy.default/p"
        );
        assert_eq!(
            Counter::Rejections(RejectReason::Plaintext).flat_name("ns/a.b"),
            "backendtls.rejections.reason.plaintext.policy.ns/a.b"
        );
        let mut seen = HashSet::new();
        for c in Counter::eager().chain(TlsVersion::ALL.into_iter().map(Counter::TlsRequests)) {
            assert!(c.index() < Counter::COUNT && seen.insert(c.index()));
        }
        assert_eq!(seen.len(), Counter::COUNT);
    }

    #[test]
    fn hashed_parts_do_not_run_together() {
        let h = |parts: &[&[u8]]| hash_parts(parts);
        assert_ne!(h(&[b"ab", b"c"]), h(&[b"a", b"bc"]));
        assert_ne!(h(&[b"", b"x"]), h(&[b"x", b""]));
        assert_ne!(h(&[b"abcdefgh"]), h(&[b"abcdefgh\0"]), "a zero byte is not padding");
        assert_ne!(h(&[b"abcdefghi"]), h(&[b"abcdefghj"]));
        assert_eq!(h(&[b"same"]), h(&[b"same"]));
    }

    #[test]
    fn verdicts_are_kept_per_digest() {
        let e = entry("valid");
        let (a, b) = (b"aa11".as_slice(), b"bb22".as_slice());
        e.remember_verdict(hash_parts(&[a]), a, true);
        e.remember_verdict(hash_parts(&[b]), b, false);
        assert_eq!(e.cached_verdict(hash_parts(&[a]), a), Some(true));
        assert_eq!(e.cached_verdict(hash_parts(&[b]), b), Some(false));
        // A hash that matches but a digest that does not (a collision) is not a verdict.
        assert_eq!(e.cached_verdict(hash_parts(&[a]), b), None);
        assert_eq!(e.cached_verdict(hash_parts(&[b"cc33"]), b"cc33"), None);
    }

    #[test]
    fn recent_set_forgets_only_idle_keys() {
        let mut s = RecentMap::new(2);
        let mut seen = |key: u64| {
            let known = s.get(key).is_some();
            s.insert(key, ());
            known
        };
        assert!(!seen(1));
        assert!(seen(1));
        assert!(!seen(2));
        assert!(!seen(3)); // generation turns over: {1, 2} become previous
        assert!(seen(1)); // still remembered, moved forward
        assert!(!seen(4)); // turns over again: 2 is dropped
        assert!(!seen(2));
    }

    #[test]
    fn tag_json_is_built_once_per_combination() {
        let e = entry("valid");
        let a = e.tag_json(Some(TlsVersion::Tls1_3), Verification::Verified) as *const str;
        let b = e.tag_json(Some(TlsVersion::Tls1_3), Verification::Verified) as *const str;
        assert_eq!(a, b);
        let v: serde_json::Value =
            serde_json::from_str(e.tag_json(Some(TlsVersion::Tls1_3), Verification::Verified))
                .unwrap();
        assert_eq!(v["policy"], "default/p");
        assert_eq!(v["tls_version"], "TLSv1.3");
        assert_eq!(v["verification"], "verified");
        let v: serde_json::Value =
            serde_json::from_str(e.tag_json(None, Verification::InvalidPolicy)).unwrap();
        assert!(v.get("tls_version").is_none());
    }
}
