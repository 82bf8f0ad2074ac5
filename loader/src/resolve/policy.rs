//! BackendTLSPolicy semantics: validation as the API server would do it, targets, trust, options,
//! conflicts, and the conditions each policy reports.

use super::trust::{self, RefError};
use super::Options;
use crate::ir::{ca_secret_name, SubjectAltName, TlsParams, TlsVersion, Trust};
use crate::objects::ObjectKey;
use crate::objects::{BackendTlsPolicy, ServicePort};
use crate::status::{AncestorRef, Condition, PolicyReport};
use crate::store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Domain-prefixed `spec.options` keys this implementation understands.
pub mod option_keys {
    pub const MIN_TLS_VERSION: &str = "backendtls.dev/min-tls-version";
    pub const MAX_TLS_VERSION: &str = "backendtls.dev/max-tls-version";
    pub const CIPHER_SUITES: &str = "backendtls.dev/cipher-suites";
    pub const ALPN: &str = "backendtls.dev/alpn";
}

/// TLS 1.2 cipher suites BoringSSL (and so Envoy) accepts by name. Anything else would make Envoy
/// reject the cluster, so the loader refuses it first.
const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
];

/// A policy after validation: what it applies, or why it cannot.
pub struct ResolvedPolicy {
    pub key: ObjectKey,
    generation: i64,
    pub hostname: String,
    pub subject_alt_names: Vec<SubjectAltName>,
    pub params: TlsParams,
    pub trust: Trust,
    accepted: Condition,
    resolved_refs: Condition,
    /// The Services it targets (for status when no Gateway reaches them), sorted. (Sorted vectors
    /// rather than sets: a set spends a 500-byte node on its one element, times ten thousand.)
    targets: Vec<ObjectKey>,
    /// Gateways whose routes reach a port this policy targets, sorted.
    ancestors: Vec<ObjectKey>,
}

/// The name of a Service port, or None for the whole Service.
type Section = Option<String>;
/// A Service and a section of it.
type Target = (ObjectKey, Section);

pub struct PolicyIndex {
    policies: BTreeMap<ObjectKey, ResolvedPolicy>,
    /// Per Service, per section (port name, or None for the whole Service): the winning policy.
    /// Keyed by Service first so that lookups need no allocation.
    winners: BTreeMap<ObjectKey, Vec<(Section, ObjectKey)>>,
    /// The same targets -> every policy that names them, winners and losers.
    contenders: BTreeMap<ObjectKey, Vec<(Section, Vec<ObjectKey>)>>,
    /// Usable CA bundles by secret name.
    pub bundles: BTreeMap<String, Arc<str>>,
}

impl PolicyIndex {
    pub fn build(store: &Store, options: &Options) -> Self {
        let mut index = PolicyIndex {
            policies: BTreeMap::new(),
            winners: BTreeMap::new(),
            contenders: BTreeMap::new(),
            bundles: BTreeMap::new(),
        };
        // Contenders per target with their precedence: valid policies before invalid ones (an
        // invalid policy only governs a port no valid policy claims, and then fails it closed),
        // then the oldest creationTimestamp (a missing one sorts last), then namespace/name.
        type Precedence<'a> = (bool, bool, Option<&'a str>, ObjectKey);
        let mut contenders: BTreeMap<Target, Vec<Precedence<'_>>> = BTreeMap::new();
        for (key, policy) in &store.policies {
            let (resolved, attached) =
                resolve_policy(store, options, key, policy, &mut index.bundles);
            let created = policy.metadata.creation_timestamp.as_deref();
            let invalid = resolved.accepted.reason == "Invalid";
            for target in attached {
                let entry = contenders.entry(target).or_default();
                entry.reserve_exact(1);
                entry.push((invalid, created.is_none(), created, key.clone()));
            }
            index.policies.insert(key.clone(), resolved);
        }
        for (target, mut list) in contenders {
            list.sort();
            list.dedup();
            let winner = list[0].3.clone();
            for (invalid, _, _, loser) in &list[1..] {
                if *invalid {
                    continue; // it says why already
                }
                let port = target.1.as_ref().map(|s| format!(" port {s}")).unwrap_or_default();
                let policy = index.policies.get_mut(loser).expect("indexed above");
                policy.accepted = Condition::new(
                    "Accepted",
                    false,
                    "Conflicted",
                    format!("BackendTLSPolicy {winner} targets Service {}{port} too and takes precedence (older creationTimestamp, then namespace/name)", target.0),
                );
            }
            let (service, section) = target;
            let all = list.into_iter().map(|(_, _, _, k)| k).collect();
            let c = index.contenders.entry(service.clone()).or_default();
            c.reserve_exact(1);
            c.push((section.clone(), all));
            let w = index.winners.entry(service).or_default();
            w.reserve_exact(1);
            w.push((section, winner));
        }
        index
    }

    /// The policy that governs a Service port: one naming the port wins over a whole-Service one.
    pub fn governing(&self, service: &ObjectKey, port: &ServicePort) -> Option<&ResolvedPolicy> {
        let sections = self.winners.get(service)?;
        let find = |section: Option<&str>| sections.iter().find(|(s, _)| s.as_deref() == section);
        let (_, key) = find(Some(port.name())).or_else(|| find(None))?;
        self.policies.get(key)
    }

    /// Records that a Gateway's routes reach a Service port: an ancestor of every policy that
    /// targets it, including those that lost a conflict (their status must say so there).
    pub fn reached_from(&mut self, gateway: &ObjectKey, service: &ObjectKey, port: &ServicePort) {
        let Some(sections) = self.contenders.get(service) else { return };
        for (section, keys) in sections {
            if section.as_deref().is_some_and(|s| s != port.name()) {
                continue;
            }
            for key in keys {
                if let Some(policy) = self.policies.get_mut(key) {
                    if let Err(at) = policy.ancestors.binary_search(gateway) {
                        policy.ancestors.insert(at, gateway.clone());
                    }
                }
            }
        }
    }

    pub fn reports(self) -> Vec<PolicyReport> {
        self.policies
            .into_values()
            .map(|p| {
                // The API allows at most 16 ancestors. A policy no Gateway reaches reports on the
                // Services it targets, so that its conditions are visible before any route exists.
                let ancestors = if p.ancestors.is_empty() {
                    p.targets.iter().take(16).map(AncestorRef::service).collect()
                } else {
                    p.ancestors.iter().take(16).map(AncestorRef::gateway).collect()
                };
                PolicyReport {
                    namespace: p.key.namespace.clone(),
                    name: p.key.name.clone(),
                    ancestors,
                    conditions: p.conditions(),
                }
            })
            .collect()
    }
}

impl ResolvedPolicy {
    /// `Accepted` and `ResolvedRefs`, as the status reports them.
    pub fn conditions(&self) -> Vec<Condition> {
        vec![
            self.accepted.clone().observed(self.generation),
            self.resolved_refs.clone().observed(self.generation),
        ]
    }
}

/// Validates and resolves one policy. Returns it with the targets it attaches to. Invalid policies
/// attach too, with unusable trust: never plaintext where a policy was meant to apply. (They
/// govern only ports no valid policy claims; see [`PolicyIndex::build`].)
fn resolve_policy(
    store: &Store,
    options: &Options,
    key: &ObjectKey,
    policy: &BackendTlsPolicy,
    bundles: &mut BTreeMap<String, Arc<str>>,
) -> (ResolvedPolicy, Vec<Target>) {
    let validation = &policy.spec.validation;
    let mut resolved = ResolvedPolicy {
        key: key.clone(),
        generation: policy.metadata.generation(),
        hostname: validation.hostname.clone(),
        subject_alt_names: Vec::new(),
        params: TlsParams::default(),
        trust: Trust::Unusable { reason: String::new() },
        accepted: Condition::new("Accepted", true, "Accepted", "Policy is accepted"),
        resolved_refs: Condition::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All CA certificate references are resolved",
        ),
        targets: policy
            .spec
            .target_refs
            .iter()
            .filter(|t| t.group.is_empty() && t.kind == "Service")
            .map(|t| ObjectKey::new(&key.namespace, &t.name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        ancestors: Vec::new(),
    };
    let attachment = targets(store, key, policy);
    let attached = match &attachment {
        Ok(found) => found.targets.clone(),
        Err((_, _, fail_closed)) => fail_closed.clone(),
    };
    let invalid = |mut resolved: ResolvedPolicy, reason: &'static str, message: String| {
        resolved.accepted = Condition::new("Accepted", false, reason, message.clone());
        resolved.trust = Trust::Unusable { reason: message };
        (resolved, attached.clone())
    };
    if let Some(reason) = &policy.malformed {
        let message = format!("the policy cannot be read as written: {reason}");
        return invalid(resolved, "Invalid", message);
    }
    if let Err(error) = validate_spec(policy) {
        return invalid(resolved, "Invalid", error.to_string());
    }
    resolved.subject_alt_names = validation
        .subject_alt_names
        .iter()
        .map(|san| match &san.hostname {
            Some(h) => SubjectAltName::Hostname(h.clone()),
            None => SubjectAltName::Uri(san.uri.clone().unwrap_or_default()),
        })
        .collect();
    let unknown_options = match tls_params(&policy.spec.options) {
        Ok((params, unknown)) => {
            resolved.params = params;
            unknown
        }
        Err(error) => return invalid(resolved, "Invalid", error.to_string()),
    };

    if let Some(well_known) = &validation.well_known_ca_certificates {
        if well_known != "System" {
            let message = format!(
                "wellKnownCACertificates {well_known:?} is not supported (supported: System)"
            );
            return invalid(resolved, "Invalid", message);
        }
    }
    let notes = match attachment {
        Ok(found) => found.notes,
        Err((reason, message, _)) => return invalid(resolved, reason, message),
    };

    // Trust: the system bundle, or every usable caCertificateRef bundled together.
    let mut pems = Vec::new();
    let mut failures: Vec<RefError> = Vec::new();
    let mut skipped = Vec::new();
    if validation.well_known_ca_certificates.is_some() {
        let path = &options.system_ca_bundle;
        let system_bundle = || -> Result<_, Box<dyn std::error::Error>> {
            let pem = crate::source::read_text(path, trust::MAX_CA_BUNDLE_BYTES as u64)?;
            Ok(trust::ca_bundle(&pem)?)
        };
        match system_bundle() {
            Ok(bundle) => pems.push(bundle),
            Err(e) => {
                let message =
                    format!("the system trust bundle {} is not usable: {e}", path.display());
                return invalid(resolved, "Invalid", message);
            }
        }
    }
    for ca_ref in &validation.ca_certificate_refs {
        match trust::ca_ref(store, &key.namespace, ca_ref) {
            Ok(bundle) => {
                skipped.extend(bundle.skipped.iter().cloned());
                pems.push(bundle);
            }
            Err(failure) => failures.push(failure),
        }
    }
    let failures_text = || failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    if !failures.is_empty() {
        // InvalidKind first, as the spec orders them.
        let reason = failures
            .iter()
            .map(RefError::reason)
            .find(|&reason| reason == "InvalidKind")
            .unwrap_or("InvalidCACertificateRef");
        resolved.resolved_refs = Condition::new("ResolvedRefs", false, reason, failures_text());
    } else if !skipped.is_empty() {
        resolved.resolved_refs.message =
            format!("All CA certificate references are resolved; left out: {}", skipped.join("; "))
                .into();
    }
    if pems.is_empty() {
        let message = format!("no valid CA certificate: {}", failures_text());
        resolved.accepted =
            Condition::new("Accepted", false, "NoValidCACertificate", message.clone());
        resolved.trust = Trust::Unusable { reason: message };
        return (resolved, attached);
    }
    // One bundle (the common case) already carries its secret name.
    let (bundle, secret) = match <[_; 1]>::try_from(pems) {
        Ok([only]) => (only.pem, only.secret_name),
        Err(pems) => {
            let bundle: String = pems.iter().map(|b| &*b.pem).collect();
            let secret = ca_secret_name(&bundle);
            (bundle.into(), secret)
        }
    };
    bundles.entry(secret.clone()).or_insert(bundle);
    resolved.trust = Trust::Ca { secret };

    let mut message = std::borrow::Cow::Borrowed("Policy is accepted");
    if !unknown_options.is_empty() {
        let options = unknown_options.join(", ");
        message.to_mut().push_str(&format!("; ignored unknown options: {options}"));
    }
    if !notes.is_empty() {
        message.to_mut().push_str(&format!("; not attached: {}", notes.join("; ")));
    }
    resolved.accepted.message = message;
    (resolved, attached)
}

/// The targets a policy attaches to, and notes on those it cannot.
struct Attachment {
    targets: Vec<Target>,
    notes: Vec<String>,
}

/// Err when the policy attaches to nothing, or names a UDP port: (condition reason, message,
/// the targets it must still fail closed). A route can still send HTTP to a port declared UDP
/// (Envoy connects over TCP to its endpoints), so a policy naming one makes the policy invalid
/// but governs that port, closed, rather than leaving it in plaintext.
fn targets(
    store: &Store,
    key: &ObjectKey,
    policy: &BackendTlsPolicy,
) -> Result<Attachment, (&'static str, String, Vec<Target>)> {
    let mut attached = Vec::new();
    let mut udp_targets = Vec::new();
    let mut notes = Vec::new();
    let mut reason = "TargetNotFound";
    for target in &policy.spec.target_refs {
        if !target.group.is_empty() || target.kind != "Service" {
            notes.push(format!(
                "{} {} is not a Service (only Services are supported)",
                target.kind, target.name
            ));
            reason = "Invalid";
            continue;
        }
        let service_key = ObjectKey::new(&key.namespace, &target.name);
        let Some(service) = store.services.get(&service_key) else {
            notes.push(format!("Service {service_key} not found"));
            continue;
        };
        let udp = |p: &ServicePort| p.protocol().eq_ignore_ascii_case("UDP");
        match &target.section_name {
            Some(section) => match service.spec.ports.iter().find(|p| p.name() == section) {
                None => notes.push(format!("Service {service_key} has no port named {section:?}")),
                Some(port) if udp(port) => {
                    notes.push(format!("Service {service_key} port {section} is UDP; BackendTLSPolicy applies to TCP only"));
                    udp_targets.push((service_key, Some(section.clone())));
                }
                Some(_) => attached.push((service_key, Some(section.clone()))),
            },
            None if !service.spec.ports.is_empty() && service.spec.ports.iter().all(udp) => {
                notes.push(format!("Service {service_key} has only UDP ports; BackendTLSPolicy applies to TCP only"));
                udp_targets.push((service_key, None));
            }
            None => attached.push((service_key, None)),
        }
    }
    if !udp_targets.is_empty() {
        attached.extend(udp_targets);
        return Err(("Invalid", notes.join("; "), attached));
    }
    if attached.is_empty() {
        return Err((reason, notes.join("; "), Vec::new()));
    }
    Ok(Attachment { targets: attached, notes })
}

/// Why a policy is `Accepted=False` `Invalid` as written: what the API server's schema and CEL
/// rules would reject (with the same wording where it has one) and options this implementation
/// cannot apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum SpecError {
    #[error("must not contain both CACertificateRefs and WellKnownCACertificates")]
    BothCaSources,
    #[error("must specify either CACertificateRefs or WellKnownCACertificates")]
    NoCaSource,
    #[error("targetRefs must have at least 1 entry")]
    NoTargetRefs,
    #[error("{what} has {len} entries; at most {max} are allowed")]
    TooMany { what: &'static str, len: usize, max: usize },
    #[error("sectionName must be specified when targetRefs includes 2 or more references to the same target")]
    SectionNameMissing,
    #[error("sectionName must be unique when targetRefs includes 2 or more references to the same target")]
    SectionNameRepeated,
    #[error("hostname {0:?} is not a valid lowercase DNS name (no wildcards, no IP addresses)")]
    Hostname(String),
    #[error("subjectAltNames hostname {0:?} is not a valid DNS name")]
    SanHostname(String),
    #[error("subjectAltNames uri {0:?} is not an absolute URI (scheme://...)")]
    SanUri(String),
    #[error("SubjectAltName element must contain Hostname, if Type is set to Hostname, and only Hostname")]
    SanHostnameShape,
    #[error("SubjectAltName element must contain URI, if Type is set to URI, and only URI")]
    SanUriShape,
    #[error("subjectAltNames type {0:?} is not Hostname or URI")]
    SanType(String),
    /// A name the certificate name rules ([`backendtls_contract::Identity`]) refuse.
    #[error("hostname: {0}")]
    HostnameIdentity(backendtls_contract::IdentityError),
    #[error("subjectAltNames: {0}")]
    SanIdentity(backendtls_contract::IdentityError),
    #[error("options {0}: value longer than 4096 characters")]
    OptionTooLong(String),
    #[error("options {key}: {value:?} is not a supported TLS version (1.2 or 1.3)")]
    TlsVersion { key: String, value: String },
    #[error("options {key}: {suite:?} is not a cipher suite Envoy knows (one of {})", CIPHER_SUITES.join(", "))]
    CipherSuite { key: String, suite: String },
    #[error("options {key}: {protocol:?} is not h2 or http/1.1")]
    Alpn { key: String, protocol: String },
    #[error("options: {} is above {}", option_keys::MIN_TLS_VERSION, option_keys::MAX_TLS_VERSION)]
    VersionRange,
}

/// What the API server's schema and CEL rules would reject, with the same wording where it has one.
fn validate_spec(policy: &BackendTlsPolicy) -> Result<(), SpecError> {
    let spec = &policy.spec;
    let v = &spec.validation;
    match (v.ca_certificate_refs.is_empty(), v.well_known_ca_certificates.is_some()) {
        (false, true) => return Err(SpecError::BothCaSources),
        (true, false) => return Err(SpecError::NoCaSource),
        _ => {}
    }
    let limit = |what: &'static str, len: usize, max: usize| {
        if len > max {
            Err(SpecError::TooMany { what, len, max })
        } else {
            Ok(())
        }
    };
    if spec.target_refs.is_empty() {
        return Err(SpecError::NoTargetRefs);
    }
    limit("targetRefs", spec.target_refs.len(), 16)?;
    limit("caCertificateRefs", v.ca_certificate_refs.len(), 8)?;
    limit("subjectAltNames", v.subject_alt_names.len(), 5)?;
    limit("options", spec.options.len(), 16)?;
    for (i, a) in spec.target_refs.iter().enumerate() {
        for b in &spec.target_refs[i + 1..] {
            if (&a.group, &a.kind, &a.name) != (&b.group, &b.kind, &b.name) {
                continue;
            }
            if a.section_name.is_none() || b.section_name.is_none() {
                return Err(SpecError::SectionNameMissing);
            }
            if a.section_name == b.section_name {
                return Err(SpecError::SectionNameRepeated);
            }
        }
    }
    if !is_hostname(&v.hostname, false) {
        return Err(SpecError::Hostname(v.hostname.clone()));
    }
    for san in &v.subject_alt_names {
        match (san.kind.as_str(), &san.hostname, &san.uri) {
            ("Hostname", Some(h), None) if is_hostname(h, true) => {}
            ("URI", None, Some(u)) if is_absolute_uri(u) => {}
            ("Hostname", Some(h), None) => return Err(SpecError::SanHostname(h.clone())),
            ("URI", None, Some(u)) => return Err(SpecError::SanUri(u.clone())),
            ("Hostname", _, _) => return Err(SpecError::SanHostnameShape),
            ("URI", _, _) => return Err(SpecError::SanUriShape),
            (other, _, _) => return Err(SpecError::SanType(other.to_string())),
        }
    }
    // The certificate name rules the filter, the validator and the SAN matchers apply
    // (backendtls_contract::Identity): a name they would refuse is refused here, with status.
    use backendtls_contract::Identity;
    Identity::hostname(&v.hostname).map_err(SpecError::HostnameIdentity)?;
    for san in &v.subject_alt_names {
        let value = san.hostname.as_deref().or(san.uri.as_deref()).unwrap_or_default();
        Identity::from_san(&san.kind, value).map_err(SpecError::SanIdentity)?;
    }
    for (key, value) in &spec.options {
        if value.len() > 4096 {
            return Err(SpecError::OptionTooLong(key.clone()));
        }
    }
    Ok(())
}

/// RFC 1123 names in lowercase; `wildcard` allows a leading `*.` (Gateway API `Hostname`).
/// IP literals are not host names (RFC 1123 2.1: the top-level label is never numeric), and
/// TLS sends no SNI for them (RFC 6066 3): a policy hostname `10.0.0.5` could be met by no
/// backend and would make Envoy or the validator reject the cluster.
fn is_hostname(name: &str, wildcard: bool) -> bool {
    let name = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => name,
    };
    let top_label_numeric =
        name.rsplit('.').next().is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()));
    !name.is_empty()
        && name.len() <= 253
        && !top_label_numeric
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The CRD's pattern: a scheme, then `//` and an authority.
fn is_absolute_uri(uri: &str) -> bool {
    match uri.split_once("://") {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && !scheme.contains(['/', '?', '#'])
                && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        }
        None => false,
    }
}

/// The TLS parameters in `spec.options`, and the keys this implementation does not know.
fn tls_params(options: &BTreeMap<String, String>) -> Result<(TlsParams, Vec<String>), SpecError> {
    let mut params = TlsParams::default();
    let mut unknown = Vec::new();
    let version = |key: &str, value: &str| match value {
        "1.2" => Ok(TlsVersion::Tls12),
        "1.3" => Ok(TlsVersion::Tls13),
        other => Err(SpecError::TlsVersion { key: key.to_string(), value: other.to_string() }),
    };
    for (key, value) in options {
        match key.as_str() {
            option_keys::MIN_TLS_VERSION => params.min_version = version(key, value)?,
            option_keys::MAX_TLS_VERSION => params.max_version = version(key, value)?,
            option_keys::CIPHER_SUITES => {
                for suite in value.split(',').map(str::trim) {
                    if !CIPHER_SUITES.contains(&suite) {
                        let (key, suite) = (key.clone(), suite.to_string());
                        return Err(SpecError::CipherSuite { key, suite });
                    }
                    params.cipher_suites.push(suite.to_string());
                }
            }
            option_keys::ALPN => {
                for protocol in value.split(',').map(str::trim) {
                    if protocol != "h2" && protocol != "http/1.1" {
                        let (key, protocol) = (key.clone(), protocol.to_string());
                        return Err(SpecError::Alpn { key, protocol });
                    }
                    params.alpn.push(protocol.to_string());
                }
            }
            _ => unknown.push(key.clone()),
        }
    }
    if params.min_version > params.max_version {
        return Err(SpecError::VersionRange);
    }
    Ok((params, unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_and_uris() {
        assert!(is_hostname("example.com", false));
        assert!(!is_hostname("*.example.com", false));
        assert!(is_hostname("*.example.com", true));
        assert!(!is_hostname("Example.com", false));
        assert!(!is_hostname("", false));
        assert!(!is_hostname("10.0.0.5", false), "an IP literal is not a hostname");
        assert!(!is_hostname("*.0.0.5", true));
        assert!(is_hostname("10.example.com", false));
        assert!(!is_hostname("::1", false));
        assert!(is_absolute_uri("spiffe://example.com/backend"));
        assert!(!is_absolute_uri("example.com/backend"));
        assert!(!is_absolute_uri("://x"));
    }

    #[test]
    fn options_are_parsed_and_unknown_keys_kept() {
        let options: BTreeMap<String, String> = [
            (option_keys::MAX_TLS_VERSION, "1.2"),
            (option_keys::ALPN, "h2, http/1.1"),
            ("example.com/foo", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (params, unknown) = tls_params(&options).unwrap();
        assert_eq!(params.max_version, TlsVersion::Tls12);
        assert_eq!(params.alpn, ["h2", "http/1.1"]);
        assert_eq!(unknown, ["example.com/foo"]);
        let bad: BTreeMap<String, String> =
            [(option_keys::MIN_TLS_VERSION.to_string(), "1.0".to_string())].into();
        assert!(tls_params(&bad).unwrap_err().to_string().contains("1.0"));
    }
}
