//! Handshake-time verification of a backend's certificate against a BackendTLSPolicy: the pure
//! core of the dynamic module's certificate validator (`envoy.tls.cert_validator.dynamic_modules`),
//! tested on the host.
//!
//! Envoy 1.40 hands the module the DER chain the backend sent (leaf first) during each upstream
//! handshake and *replaces* its own validation with the module's verdict: nothing else checks
//! the CA or the names. So this checks everything Envoy's default validator would for a
//! BackendTLSPolicy cluster, with rustls-webpki:
//!
//! 1. the chain: a path from the leaf through the intermediates the backend sent to one of the
//!    policy's trust anchors, every certificate (and the anchor itself, which webpki leaves
//!    alone but BoringSSL checks) within its validity window, issuers that are CAs, signatures by
//!    [`SIGNATURE_ALGORITHMS`], and the serverAuth extended key usage when a certificate
//!    restricts its usage;
//! 2. the identity: one of the leaf's subjectAltNames matches one of the policy's identities
//!    (its subjectAltNames, or its hostname when it has none): DNS names with RFC 6125 rules (a
//!    leaf's `*.example.com` covers one label; a policy's `*.example.com` accepts any one label),
//!    URIs exactly. The subject CN is never a name.
//!
//! A failure is a [`Rejection`]: a [`FailureReason`] (the `reason` label of the counters), the
//! TLS alert Envoy sends the backend, and a one-line detail that Envoy puts into the upstream
//! transport failure reason (and so into `%UPSTREAM_TRANSPORT_FAILURE_REASON%` and 503 details).

use std::fmt;
use std::time::Duration;

use pki_types::pem::PemObject;
use pki_types::{
    CertificateDer, DnsName, ServerName, SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage};

use crate::contract::{self, stats, validator::keys, validator::DETAIL_PREFIX};
use crate::x509::{self, Validity};

/// The signature algorithms accepted in certificates: the set rustls verifies with ring. Named
/// here rather than taken from `webpki::ALL_VERIFICATION_ALGS`, whose contents follow the crate
/// features anything else in a build turns on.
pub static SIGNATURE_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PKCS1_3072_8192_SHA384,
];

/// Why a handshake was refused; the `reason` label of `handshake_failures`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// No path from the leaf to the policy's trust anchors.
    UnknownIssuer,
    /// A certificate of the path (or its anchor) is past its notAfter.
    Expired,
    /// A certificate of the path (or its anchor) is before its notBefore.
    NotYetValid,
    /// The chain is trusted, but the leaf names none of the policy's identities.
    NameMismatch,
    /// A certificate's extended key usage excludes TLS server authentication.
    BadKeyUsage,
    /// A signature does not verify, or uses an algorithm (or key) that is not accepted.
    BadSignature,
    /// The chain breaks a structural rule: an issuer that is not a CA, a CA certificate as the
    /// leaf, path length or name constraints, or a path too deep or too costly to build.
    InvalidChain,
    /// A certificate does not parse (as webpki requires: X.509 v3, DER, known critical
    /// extensions), or the backend sent none.
    Malformed,
    /// The validator could not decide (a bug, or it was used for a downstream certificate).
    Internal,
}

impl FailureReason {
    pub const ALL: [FailureReason; 9] = [
        FailureReason::UnknownIssuer,
        FailureReason::Expired,
        FailureReason::NotYetValid,
        FailureReason::NameMismatch,
        FailureReason::BadKeyUsage,
        FailureReason::BadSignature,
        FailureReason::InvalidChain,
        FailureReason::Malformed,
        FailureReason::Internal,
    ];

    /// The label value (`unknown_issuer`), from [`contract::stats::HANDSHAKE_FAILURE_REASONS`].
    pub fn label(self) -> &'static str {
        stats::HANDSHAKE_FAILURE_REASONS[self as usize]
    }
}

/// The TLS alerts the validator sends (RFC 8446 section 6), chosen as BoringSSL and rustls
/// choose them for the same failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Alert {
    BadCertificate = 42,
    UnsupportedCertificate = 43,
    CertificateExpired = 45,
    CertificateUnknown = 46,
    UnknownCa = 48,
    DecryptError = 51,
    InternalError = 80,
}

/// A refused handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: FailureReason,
    pub alert: Alert,
    /// What was wrong, naming the certificate and the policy.
    pub message: String,
}

impl Rejection {
    fn new(reason: FailureReason, alert: Alert, message: String) -> Rejection {
        Rejection { reason, alert, message }
    }
}

/// The error detail handed to Envoy: `backendtls: <reason>: <message>`.
impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DETAIL_PREFIX}{}: {}", self.reason.label(), self.message)
    }
}

/// Why a validator configuration was refused (Envoy then rejects the cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    Json(String),
    NotAnObject,
    UnknownKey(String),
    Missing(&'static str),
    WrongType { key: &'static str, expected: &'static str },
    BadIdentity { identity: String, why: &'static str },
    NoIdentity,
    Pem(String),
    NoTrustAnchors,
    BadTrustAnchor { index: usize, error: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid backendtls certificate validator configuration: ")?;
        match self {
            ConfigError::Json(e) => write!(f, "not JSON: {e}"),
            ConfigError::NotAnObject => f.write_str("not a JSON object"),
            ConfigError::UnknownKey(key) => write!(f, "unknown key {key:?}"),
            ConfigError::Missing(key) => write!(f, "{key:?} is missing"),
            ConfigError::WrongType { key, expected } => write!(f, "{key:?} must be {expected}"),
            ConfigError::BadIdentity { identity, why } => {
                write!(f, "identity {identity:?}: {why}")
            }
            ConfigError::NoIdentity => {
                write!(
                    f,
                    "neither {:?} nor {:?} names an identity",
                    keys::IDENTITIES,
                    keys::HOSTNAME
                )
            }
            ConfigError::Pem(e) => write!(f, "{}: {e}", keys::TRUST_ANCHORS_PEM),
            ConfigError::NoTrustAnchors => {
                write!(f, "{} holds no CERTIFICATE block", keys::TRUST_ANCHORS_PEM)
            }
            ConfigError::BadTrustAnchor { index, error } => {
                write!(f, "trust anchor #{} cannot be used: {error}", index + 1)
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A name the leaf must carry, prepared for matching.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    /// A DNS name without wildcard, checked by webpki itself.
    Dns(ServerName<'static>),
    /// `*.<suffix>`: any single label before `suffix` (ASCII lower case, no trailing dot).
    DnsWildcard(String),
    Uri(String),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Dns(ServerName::DnsName(name)) => {
                write!(f, "{}{}", contract::IDENTITY_DNS_PREFIX, name.as_ref())
            }
            Expected::Dns(other) => write!(f, "{other:?}"),
            Expected::DnsWildcard(suffix) => {
                write!(f, "{}*.{suffix}", contract::IDENTITY_DNS_PREFIX)
            }
            Expected::Uri(uri) => write!(f, "{}{uri}", contract::IDENTITY_URI_PREFIX),
        }
    }
}

impl Expected {
    fn parse(identity: &str) -> Result<Expected, ConfigError> {
        let bad = |why| ConfigError::BadIdentity { identity: identity.to_owned(), why };
        if let Some(name) = identity.strip_prefix(contract::IDENTITY_DNS_PREFIX) {
            Expected::dns(name).map_err(bad)
        } else if let Some(uri) = identity.strip_prefix(contract::IDENTITY_URI_PREFIX) {
            if uri.is_empty() {
                return Err(bad("empty URI"));
            }
            Ok(Expected::Uri(uri.to_owned()))
        } else {
            Err(bad("neither dns: nor uri:"))
        }
    }

    fn dns(name: &str) -> Result<Expected, &'static str> {
        let name = name.trim_end_matches('.');
        match name.strip_prefix("*.") {
            Some(suffix) => {
                // A wildcard must leave at least two labels (`*.com` is refused), like the
                // loader's regex for Envoy's default validator.
                if !suffix.contains('.') || DnsName::try_from(suffix).is_err() {
                    return Err("a wildcard must precede a DNS name of two or more labels");
                }
                Ok(Expected::DnsWildcard(suffix.to_ascii_lowercase()))
            }
            None => match ServerName::try_from(name) {
                Ok(ServerName::DnsName(dns)) => {
                    Ok(Expected::Dns(ServerName::DnsName(dns.to_owned())))
                }
                _ => Err("not a DNS name"),
            },
        }
    }

    fn matches(&self, leaf: &EndEntityCert<'_>) -> bool {
        match self {
            Expected::Dns(name) => leaf.verify_is_valid_for_subject_name(name).is_ok(),
            Expected::DnsWildcard(suffix) => leaf.valid_dns_names().any(|presented| {
                let presented = presented.trim_end_matches('.');
                presented.split_once('.').is_some_and(|(label, rest)| {
                    !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
                })
            }),
            Expected::Uri(uri) => leaf.valid_uri_names().any(|presented| presented == uri),
        }
    }
}

/// One policy's validator, built once per cluster TLS context and shared by Envoy's workers.
#[derive(Debug)]
pub struct ValidatorConfig {
    policy: String,
    hostname: String,
    identities: Vec<Expected>,
    anchors: Vec<TrustAnchor<'static>>,
    /// Each anchor's own validity window (same order as `anchors`).
    anchor_validity: Vec<Validity>,
    /// SHA-256 of the configuration bytes: Envoy mixes it into its session-id context.
    digest: [u8; 32],
}

impl ValidatorConfig {
    /// Parses the JSON configuration (see [`contract::validator`]). Unknown keys are errors, so a
    /// typo cannot silently drop a check.
    pub fn parse(bytes: &[u8]) -> Result<ValidatorConfig, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        let serde_json::Value::Object(object) = value else {
            return Err(ConfigError::NotAnObject);
        };
        const KNOWN: [&str; 4] =
            [keys::POLICY, keys::HOSTNAME, keys::IDENTITIES, keys::TRUST_ANCHORS_PEM];
        if let Some(key) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey(key.clone()));
        }
        let string = |key: &'static str| match object.get(key) {
            None => Err(ConfigError::Missing(key)),
            Some(serde_json::Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(ConfigError::WrongType { key, expected: "a string" }),
        };
        let policy = string(keys::POLICY)?.to_owned();
        let hostname = string(keys::HOSTNAME)?.to_owned();
        let pem = string(keys::TRUST_ANCHORS_PEM)?;

        let listed = match object.get(keys::IDENTITIES) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    serde_json::Value::String(s) => Expected::parse(s),
                    _ => Err(ConfigError::WrongType {
                        key: keys::IDENTITIES,
                        expected: "a list of strings",
                    }),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ConfigError::WrongType {
                    key: keys::IDENTITIES,
                    expected: "a list of strings",
                })
            }
        };
        let identities = match (listed.is_empty(), hostname.is_empty()) {
            (false, _) => listed,
            (true, true) => return Err(ConfigError::NoIdentity),
            (true, false) => vec![Expected::dns(&hostname)
                .map_err(|why| ConfigError::BadIdentity { identity: hostname.clone(), why })?],
        };

        let mut anchors = Vec::new();
        let mut anchor_validity = Vec::new();
        for (index, der) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let der = der.map_err(|e| ConfigError::Pem(e.to_string()))?;
            let bad = |error: String| ConfigError::BadTrustAnchor { index, error };
            let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| bad(e.to_string()))?;
            anchor_validity.push(x509::validity(&der).map_err(|e| bad(e.to_string()))?);
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(ConfigError::NoTrustAnchors);
        }
        Ok(ValidatorConfig {
            policy,
            hostname,
            identities,
            anchors,
            anchor_validity,
            digest: Sha256::digest(bytes).into(),
        })
    }

    /// `"<namespace>/<name>"`, the `policy` label of the counters.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The identities as `dns:`/`uri:` strings, for logs.
    pub fn identities(&self) -> Vec<String> {
        self.identities.iter().map(ToString::to_string).collect()
    }

    pub fn trust_anchor_count(&self) -> usize {
        self.anchors.len()
    }

    /// Verifies `chain` (DER, leaf first, then whatever the backend sent) at `now`.
    pub fn verify(&self, chain: &[&[u8]], now: UnixTime) -> Result<(), Rejection> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(self.reject(
                FailureReason::Malformed,
                Alert::BadCertificate,
                "the backend sent no certificate".into(),
            ));
        };
        let leaf_der = CertificateDer::from(*leaf);
        let leaf = EndEntityCert::try_from(&leaf_der).map_err(|e| {
            self.reject(
                FailureReason::Malformed,
                Alert::BadCertificate,
                format!("the leaf certificate does not parse ({e:?})"),
            )
        })?;
        let intermediates: Vec<CertificateDer<'_>> =
            rest.iter().map(|der| CertificateDer::from(*der)).collect();
        // webpki checks the validity of every certificate it chains but not of the anchor;
        // BoringSSL (Envoy's default) refuses an expired CA, and so does this.
        let anchor_in_time = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            let Some(index) = self.anchors.iter().position(|a| a == path.anchor()) else {
                return Ok(());
            };
            let window = self.anchor_validity[index];
            let at = |seconds| UnixTime::since_unix_epoch(Duration::from_secs(seconds));
            if now.as_secs() > window.not_after {
                Err(webpki::Error::CertExpired { time: now, not_after: at(window.not_after) })
            } else if now.as_secs() < window.not_before {
                Err(webpki::Error::CertNotValidYet { time: now, not_before: at(window.not_before) })
            } else {
                Ok(())
            }
        };
        leaf.verify_for_usage(
            SIGNATURE_ALGORITHMS,
            &self.anchors,
            &intermediates,
            now,
            KeyUsage::server_auth(),
            None,
            Some(&anchor_in_time),
        )
        .map_err(|e| self.chain_rejection(e, chain))?;

        if self.identities.iter().any(|expected| expected.matches(&leaf)) {
            return Ok(());
        }
        let presented: Vec<String> = leaf
            .valid_dns_names()
            .map(|n| format!("{}{n}", contract::IDENTITY_DNS_PREFIX))
            .chain(leaf.valid_uri_names().map(|u| format!("{}{u}", contract::IDENTITY_URI_PREFIX)))
            .collect();
        let message = if presented.is_empty() {
            format!(
                "the leaf has no DNS or URI subjectAltName (a subject CN is not a name); \
                 expected one of [{}]",
                self.identities().join(", ")
            )
        } else {
            format!(
                "the leaf's names [{}] match none of [{}]",
                shorten(&presented),
                self.identities().join(", ")
            )
        };
        Err(self.reject(FailureReason::NameMismatch, Alert::BadCertificate, message))
    }

    fn reject(&self, reason: FailureReason, alert: Alert, what: String) -> Rejection {
        Rejection::new(reason, alert, format!("policy {}: {what}", self.policy))
    }

    /// Classifies a webpki path-building error and says which certificate it concerns.
    fn chain_rejection(&self, error: webpki::Error, chain: &[&[u8]]) -> Rejection {
        use webpki::Error as E;
        use Alert as A;
        use FailureReason as R;
        let sent = chain.len() - 1;
        let (reason, alert, what) = match &error {
            E::UnknownIssuer => (
                R::UnknownIssuer,
                A::UnknownCa,
                format!(
                    "no chain from the leaf{} to the policy's {} trust anchor(s)",
                    match sent {
                        0 => String::new(),
                        n => format!(" through the {n} intermediate(s) the backend sent"),
                    },
                    self.anchors.len()
                ),
            ),
            E::CertExpired { time, not_after } => (
                R::Expired,
                A::CertificateExpired,
                format!(
                    "{} expired at {} (now {})",
                    self.which(chain, |v| v.not_after == not_after.as_secs()),
                    x509::format_rfc3339(not_after.as_secs()),
                    x509::format_rfc3339(time.as_secs())
                ),
            ),
            E::CertNotValidYet { time, not_before } => (
                R::NotYetValid,
                A::CertificateExpired,
                format!(
                    "{} is not valid before {} (now {})",
                    self.which(chain, |v| v.not_before == not_before.as_secs()),
                    x509::format_rfc3339(not_before.as_secs()),
                    x509::format_rfc3339(time.as_secs())
                ),
            ),
            #[allow(deprecated)]
            E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
                let present = match &error {
                    E::RequiredEkuNotFoundContext(context) => context
                        .present
                        .iter()
                        .map(|oid| eku_name(oid))
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => String::new(),
                };
                (
                    R::BadKeyUsage,
                    A::UnsupportedCertificate,
                    format!(
                        "a certificate's extended key usage [{present}] does not allow TLS \
                         server authentication (serverAuth)"
                    ),
                )
            }
            E::InvalidSignatureForPublicKey => (
                R::BadSignature,
                A::DecryptError,
                "a certificate's signature does not verify with its issuer's key".into(),
            ),
            #[allow(deprecated)]
            E::SignatureAlgorithmMismatch
            | E::UnsupportedSignatureAlgorithm
            | E::UnsupportedSignatureAlgorithmContext(_)
            | E::UnsupportedSignatureAlgorithmForPublicKey
            | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => (
                R::BadSignature,
                A::BadCertificate,
                format!(
                    "a certificate is signed with an algorithm or key that is not accepted \
                     ({error:?}; accepted: ECDSA P-256/P-384, Ed25519, RSA 2048-8192 with \
                     SHA-256/384/512)"
                ),
            ),
            E::EndEntityUsedAsCa => (
                R::InvalidChain,
                A::UnknownCa,
                "a certificate that is not a CA (basicConstraints cA is false or absent) \
                 issued another certificate of the chain"
                    .into(),
            ),
            E::CaUsedAsEndEntity => (
                R::InvalidChain,
                A::BadCertificate,
                "the leaf is a CA certificate (basicConstraints cA is true)".into(),
            ),
            E::PathLenConstraintViolated | E::NameConstraintViolation => (
                R::InvalidChain,
                A::BadCertificate,
                format!("the chain breaks an issuer's constraints ({error:?})"),
            ),
            E::MaximumPathDepthExceeded
            | E::MaximumSignatureChecksExceeded
            | E::MaximumPathBuildCallsExceeded
            | E::MaximumNameConstraintComparisonsExceeded => (
                R::InvalidChain,
                A::BadCertificate,
                format!("the chain is too deep or too costly to build ({error:?})"),
            ),
            E::BadDer
            | E::BadDerTime
            | E::InvalidCertValidity
            | E::TrailingData(_)
            | E::MalformedExtensions
            | E::ExtensionValueInvalid
            | E::UnsupportedCertVersion
            | E::UnsupportedCriticalExtension
            | E::InvalidSerialNumber
            | E::MalformedDnsIdentifier
            | E::MalformedNameConstraint
            | E::InvalidNetworkMaskConstraint => (
                R::Malformed,
                A::BadCertificate,
                format!(
                    "a certificate of the chain is malformed or unsupported ({error:?}; \
                     webpki requires X.509 v3 in DER without unknown critical extensions)"
                ),
            ),
            // Revocation is not configured, names are checked separately: anything else is
            // unexpected. Refuse, and say what it was.
            _ => (
                R::InvalidChain,
                A::CertificateUnknown,
                format!("the chain was refused ({error:?})"),
            ),
        };
        self.reject(reason, alert, what)
    }

    /// Names the certificate whose validity window satisfies `is_it`: `the leaf`, `intermediate
    /// #n` (as the backend sent them) or `trust anchor #n` (the policy's CA certificates).
    fn which(&self, chain: &[&[u8]], is_it: impl Fn(&Validity) -> bool) -> String {
        let sent = chain.iter().position(|der| x509::validity(der).is_ok_and(|v| is_it(&v)));
        match sent {
            Some(0) => "the leaf".into(),
            Some(n) => format!("intermediate #{n}"),
            None => match self.anchor_validity.iter().position(is_it) {
                Some(n) => format!("the policy's trust anchor #{}", n + 1),
                None => "a certificate of the chain".into(),
            },
        }
    }
}

/// Extended key usage OIDs by name where they have a well-known one.
fn eku_name(oid: &[usize]) -> String {
    match oid {
        [1, 3, 6, 1, 5, 5, 7, 3, 1] => "serverAuth".into(),
        [1, 3, 6, 1, 5, 5, 7, 3, 2] => "clientAuth".into(),
        [1, 3, 6, 1, 5, 5, 7, 3, 3] => "codeSigning".into(),
        [1, 3, 6, 1, 5, 5, 7, 3, 4] => "emailProtection".into(),
        [1, 3, 6, 1, 5, 5, 7, 3, 8] => "timeStamping".into(),
        [1, 3, 6, 1, 5, 5, 7, 3, 9] => "OCSPSigning".into(),
        other => other.iter().map(ToString::to_string).collect::<Vec<_>>().join("."),
    }
}

/// At most 8 names, so that a certificate with hundreds of SANs keeps the detail one line.
fn shorten(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", ... ({} more)", names.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests;
