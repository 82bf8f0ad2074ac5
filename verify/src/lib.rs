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
//!    (its subjectAltNames, or its hostname when it has none), by the contract's one rule,
//!    [`backendtls_contract::Identity::matches`] (the loader's Envoy SAN matchers and the HTTP
//!    filter use the same). The subject CN is never a name.
//!
//! A failure is a [`Rejection`]: a [`FailureReason`] (the `reason` label of the counters), the
//! TLS alert Envoy sends the backend, and a one-line detail that Envoy puts into the upstream
//! transport failure reason (and so into `%UPSTREAM_TRANSPORT_FAILURE_REASON%` and 503 details).

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use backendtls_contract::identity::{any_matches, DNS_PREFIX, URI_PREFIX};
use backendtls_contract::validator::{Config, DETAIL_PREFIX};
use backendtls_contract::{Identity, IdentityError};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor};
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage};

pub mod x509;
use x509::Validity;

/// The clock type of [`ValidatorConfig::verify`].
pub use pki_types::UnixTime;

/// Why a handshake was refused; the `reason` label of `handshake_failures`.
pub use backendtls_contract::HandshakeFailure as FailureReason;

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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not the contract's JSON object (syntax, a missing or unknown key, a wrong type, or an
    /// identity that is not one: serde's message says which).
    #[error("{PREFIX}{0}")]
    Json(String),
    /// The hostname, which stands for the identity when `identities` is empty, is not one.
    #[error("{PREFIX}hostname: {0}")]
    BadHostname(IdentityError),
    #[error("{PREFIX}trust_anchors_pem: {0}")]
    Pem(String),
    #[error("{PREFIX}trust_anchors_pem holds no CERTIFICATE block")]
    NoTrustAnchors,
    #[error("{PREFIX}trust anchor #{} cannot be used: {error}", index + 1)]
    BadTrustAnchor { index: usize, error: AnchorError },
}

const PREFIX: &str = "invalid backendtls certificate validator configuration: ";

/// Why one trust anchor cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    #[error("{0}")]
    Webpki(webpki::Error),
    #[error("{0}")]
    Certificate(#[from] crate::x509::CertError),
}

/// One policy's validator, built once per cluster TLS context and shared by Envoy's workers.
#[derive(Debug)]
pub struct ValidatorConfig {
    policy: String,
    hostname: String,
    identities: Vec<Identity>,
    anchors: Vec<TrustAnchor<'static>>,
    /// Each anchor's own validity window (same order as `anchors`).
    anchor_validity: Vec<Validity>,
    /// SHA-256 of the configuration bytes: Envoy mixes it into its session-id context.
    digest: [u8; 32],
}

impl ValidatorConfig {
    /// Parses the JSON configuration ([`Config`], written by the loader).
    pub fn parse(bytes: &[u8]) -> Result<ValidatorConfig, ConfigError> {
        let config: Config =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        let identities = config.effective_identities().map_err(ConfigError::BadHostname)?;
        let Config { policy, hostname, trust_anchors_pem: pem, .. } = config;

        let mut anchors = Vec::new();
        let mut anchor_validity = Vec::new();
        for (index, der) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let der = der.map_err(|e| ConfigError::Pem(e.to_string()))?;
            let bad = |error: AnchorError| ConfigError::BadTrustAnchor { index, error };
            let anchor =
                webpki::anchor_from_trusted_cert(&der).map_err(|e| bad(AnchorError::Webpki(e)))?;
            anchor_validity.push(x509::validity(&der).map_err(|e| bad(e.into()))?);
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

    /// The identities in their flat form (`dns:`/`uri:`), for logs.
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

        // The names, by the contract's rule, over every DNS and URI SAN of the leaf.
        let sans = x509::subject_alt_names(leaf_der.as_ref()).map_err(|e| {
            self.reject(
                FailureReason::Malformed,
                Alert::BadCertificate,
                format!("the leaf's subjectAltName extension does not parse ({e})"),
            )
        })?;
        if any_matches(&self.identities, sans.presented()) {
            return Ok(());
        }
        let presented: Vec<String> = sans
            .dns
            .iter()
            .map(|n| format!("{DNS_PREFIX}{n}"))
            .chain(sans.uri.iter().map(|u| format!("{URI_PREFIX}{u}")))
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
