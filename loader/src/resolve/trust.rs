//! Trust material from Kubernetes objects: CA bundles for BackendTLSPolicies and the Gateway's
//! client certificate, each checked the way Envoy will use it, so that a bad certificate is reported
//! with the check that failed instead of being pushed and rejected by Envoy.

use crate::objects::ObjectKey;
use crate::objects::{LocalObjectRef, Secret};
use crate::store::Store;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a caCertificateRef cannot be used; [`RefError::reason`] is the spec's reason for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("caCertificateRef {kind} {name} (group {group}) is not a supported kind (ConfigMap or Secret in the core group)")]
    UnsupportedKind { kind: String, name: String, group: String },
    /// `kind` is `ConfigMap` or `Secret`.
    #[error("{kind} {key} not found")]
    NotFound { kind: &'static str, key: ObjectKey },
    #[error("ConfigMap {0} has no key ca.crt")]
    NoCaKey(ObjectKey),
    #[error("Secret {key}: {error}")]
    SecretValue { key: ObjectKey, error: SecretValueError },
    #[error("{kind} {key}: ca.crt {error}")]
    Bundle { kind: &'static str, key: ObjectKey, error: Box<BundleError> },
}

impl RefError {
    /// `ResolvedRefs=False` reason: `InvalidKind` for an unsupported group/kind, else (missing
    /// object, missing key, unusable content) `InvalidCACertificateRef`.
    pub fn reason(&self) -> &'static str {
        match self {
            RefError::UnsupportedKind { .. } => "InvalidKind",
            _ => "InvalidCACertificateRef",
        }
    }
}

/// Why a CA bundle cannot be used (each message follows "ca.crt" or the bundle's path).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("is {0} bytes; CA bundles of at most {max} bytes are read", max = MAX_CA_BUNDLE_BYTES)]
    TooLarge(usize),
    #[error("holds more than {max} certificates; at most {max} are read", max = MAX_CA_BUNDLE_CERTIFICATES)]
    TooManyCertificates,
    /// `index` counts from 1.
    #[error("certificate {index}: is not valid PEM: {detail}")]
    Pem { index: usize, detail: String },
    #[error("certificate {index}: is not a valid X.509 certificate: {detail}")]
    X509 { index: usize, detail: String },
    /// `label` is `certificate N (subject)`.
    #[error("{label}: cannot be used as a trust anchor: {error:?}")]
    NotTrustAnchor { label: String, error: webpki::Error },
    #[error("is empty")]
    Empty,
    #[error("contains no PEM CERTIFICATE block")]
    NoCertificate,
    /// Every certificate is expired or not yet valid: why, for each.
    #[error("has no usable certificate: {}", .0.join("; "))]
    NoUsableCertificate(Vec<String>),
}

/// Why a Secret value cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretValueError {
    #[error("has no key {0}")]
    Missing(&'static str),
    #[error("{key} is not valid base64: {error}")]
    Base64 { key: &'static str, error: base64::DecodeError },
    #[error("{0} is not UTF-8 PEM")]
    NotUtf8(&'static str),
}

/// Why a Secret is not a usable `kubernetes.io/tls` key pair.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyPairError {
    #[error("has type {0}, not kubernetes.io/tls")]
    Type(String),
    #[error(transparent)]
    Value(#[from] SecretValueError),
    #[error("tls.crt is not valid PEM: {0}")]
    CertificatePem(String),
    #[error("tls.crt is not a valid X.509 certificate: {0}")]
    CertificateX509(String),
    #[error("tls.crt holds no certificate")]
    NoCertificate,
    /// The parser's error quotes the offending bytes, which are the key's: never shown.
    #[error("tls.key is not a PEM private key (it needs a PRIVATE KEY block, one base64 line after another; YAML's folded `>` style joins the lines and breaks it)")]
    Key,
    /// Checked for listener certificates only (the Gateway's `tls.certificateRefs`).
    #[error("tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
}

/// A usable CA bundle and what was left out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaCertificates {
    /// PEM of the usable certificates only (shared with the parse cache).
    pub pem: Arc<str>,
    /// [`crate::ir::ca_secret_name`] of `pem`, computed once per bundle content.
    pub secret_name: String,
    /// Certificates left out, with the reason (e.g. expired); the others still work.
    pub skipped: Vec<String>,
}

/// Resolves one caCertificateRef in `namespace` (ConfigMap or Secret, key `ca.crt`).
pub fn ca_ref(
    store: &Store,
    namespace: &str,
    r: &LocalObjectRef,
) -> Result<CaCertificates, RefError> {
    let key = ObjectKey::new(namespace, &r.name);
    let (pem, kind) = match (r.group.as_str(), r.kind.as_str()) {
        ("", "ConfigMap") => {
            let Some(cm) = store.config_maps.get(&key) else {
                return Err(RefError::NotFound { kind: "ConfigMap", key });
            };
            let Some(pem) = cm.data.get("ca.crt") else {
                return Err(RefError::NoCaKey(key));
            };
            (Cow::Borrowed(pem), "ConfigMap")
        }
        ("", "Secret") => {
            let Some(secret) = store.secrets.get(&key) else {
                return Err(RefError::NotFound { kind: "Secret", key });
            };
            match secret_value(secret, "ca.crt") {
                Ok(pem) => (Cow::Owned(pem), "Secret"),
                Err(error) => return Err(RefError::SecretValue { key, error }),
            }
        }
        (group, kind) => {
            let group = if group.is_empty() { "core" } else { group };
            return Err(RefError::UnsupportedKind {
                kind: kind.to_string(),
                name: r.name.clone(),
                group: group.to_string(),
            });
        }
    };
    ca_bundle(&pem).map_err(|error| RefError::Bundle { kind, key, error: Box::new(error) })
}

/// Checks a PEM bundle certificate by certificate: it must parse as X.509, be usable as a trust
/// anchor and be within its validity period. Expired or not-yet-valid certificates are left out
/// (a bundle mid-rotation keeps working); a bundle with no usable certificate is an error that says
/// which check failed.
pub fn ca_bundle(pem: &str) -> Result<CaCertificates, BundleError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let parsed = parse_bundle_cached(pem);
    let parsed = parsed.as_ref().as_ref().map_err(Clone::clone)?;
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for cert in &parsed.certificates {
        if cert.not_after < now {
            skipped.push(format!("{} expired on {}", cert.label, cert.not_after_text));
        } else if cert.not_before > now {
            skipped.push(format!("{} is not valid before {}", cert.label, cert.not_before_text));
        } else {
            usable.push(cert.der.clone());
        }
    }
    if usable.is_empty() {
        return Err(BundleError::NoUsableCertificate(skipped));
    }
    if skipped.is_empty() {
        let (pem, secret_name) = (parsed.pem.clone(), parsed.secret_name.clone());
        return Ok(CaCertificates { pem, secret_name, skipped });
    }
    let pem = to_pem(&usable);
    Ok(CaCertificates { secret_name: crate::ir::ca_secret_name(&pem), pem: pem.into(), skipped })
}

/// What does not change with time: the certificates of a bundle and their validity periods.
struct ParsedBundle {
    certificates: Vec<ParsedCertificate>,
    /// All certificates re-encoded as clean PEM (comments and other blocks dropped).
    pem: Arc<str>,
    secret_name: String,
}

struct ParsedCertificate {
    der: CertificateDer<'static>,
    /// `certificate N (subject)`, for messages.
    label: String,
    not_before: i64,
    not_after: i64,
    not_before_text: String,
    not_after_text: String,
}

/// Parsing X.509 is the costliest part of resolving policies, and thousands of policies commonly
/// share a few CA bundles, so parses are kept by content (bounded: cleared when it grows large).
type Parsed = Arc<Result<ParsedBundle, BundleError>>;

fn parse_bundle_cached(pem: &str) -> Parsed {
    /// The cached bundles and the bytes of their keys.
    static CACHE: LazyLock<Mutex<(HashMap<String, Parsed>, usize)>> =
        LazyLock::new(Default::default);
    const MAX_ENTRIES: usize = 50_000;
    const MAX_BYTES: usize = 64 * 1024 * 1024;
    if let Some(hit) = CACHE.lock().unwrap().0.get(pem) {
        return hit.clone();
    }
    let parsed = Arc::new(parse_bundle(pem));
    let mut cache = CACHE.lock().unwrap();
    let (entries, bytes) = &mut *cache;
    if entries.len() >= MAX_ENTRIES || *bytes + pem.len() > MAX_BYTES {
        entries.clear();
        *bytes = 0;
    }
    if entries.insert(pem.to_string(), parsed.clone()).is_none() {
        *bytes += pem.len();
    }
    parsed
}

/// Limits on one CA bundle, far above real bundles (a system bundle holds about 150 certificates
/// in about 200 KB), so that a hostile bundle costs bounded time and memory.
pub const MAX_CA_BUNDLE_BYTES: usize = 2 * 1024 * 1024;
pub const MAX_CA_BUNDLE_CERTIFICATES: usize = 1000;

fn parse_bundle(pem: &str) -> Result<ParsedBundle, BundleError> {
    if pem.len() > MAX_CA_BUNDLE_BYTES {
        return Err(BundleError::TooLarge(pem.len()));
    }
    let mut certificates = Vec::new();
    for (index, der) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        if index == MAX_CA_BUNDLE_CERTIFICATES {
            return Err(BundleError::TooManyCertificates);
        }
        let index = index + 1;
        let der = der.map_err(|e| BundleError::Pem { index, detail: e.to_string() })?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| BundleError::X509 { index, detail: e.to_string() })?;
        let label = format!("certificate {index} ({})", cert.subject());
        if let Err(error) = webpki::anchor_from_trusted_cert(&der) {
            return Err(BundleError::NotTrustAnchor { label, error });
        }
        let validity = cert.validity();
        certificates.push(ParsedCertificate {
            label,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            not_before_text: validity.not_before.to_string(),
            not_after_text: validity.not_after.to_string(),
            der: der.clone(),
        });
    }
    if certificates.is_empty() {
        return Err(if pem.trim().is_empty() {
            BundleError::Empty
        } else {
            BundleError::NoCertificate
        });
    }
    let pem = to_pem(&certificates.iter().map(|c| c.der.clone()).collect::<Vec<_>>());
    Ok(ParsedBundle { certificates, secret_name: crate::ir::ca_secret_name(&pem), pem: pem.into() })
}

fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for cert in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in encoded.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// A Secret value: `stringData` as written, else `data` base64-decoded (as the API server stores it).
pub fn secret_value(secret: &Secret, key: &'static str) -> Result<String, SecretValueError> {
    use base64::Engine;
    if let Some(value) = secret.string_data.get(key) {
        return Ok(value.to_string());
    }
    let encoded = secret.data.get(key).ok_or(SecretValueError::Missing(key))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|error| SecretValueError::Base64 { key, error })?;
    String::from_utf8(bytes).map_err(|_| SecretValueError::NotUtf8(key))
}

/// A `kubernetes.io/tls` Secret's certificate chain and key, checked to parse.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

pub fn tls_key_pair(secret: &Secret) -> Result<KeyPair, KeyPairError> {
    if let Some(kind) = &secret.kind {
        if kind != "kubernetes.io/tls" {
            return Err(KeyPairError::Type(kind.clone()));
        }
    }
    let cert_pem = secret_value(secret, "tls.crt")?;
    let key_pem = secret_value(secret, "tls.key")?;
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        let der = cert.map_err(|e| KeyPairError::CertificatePem(e.to_string()))?;
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| KeyPairError::CertificateX509(e.to_string()))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(KeyPairError::NoCertificate);
    }
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| KeyPairError::Key)?;
    Ok(KeyPair { cert_pem, key_pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_CA: &str = include_str!("../../tests/golden/ca.pem");

    #[test]
    fn usable_bundles_pass_and_bad_ones_say_which_check_failed() {
        let bundle = ca_bundle(GOLDEN_CA).unwrap();
        assert!(bundle.skipped.is_empty());
        assert!(bundle.pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(ca_bundle("").unwrap_err().to_string(), "is empty");
        assert_eq!(
            ca_bundle("hello").unwrap_err().to_string(),
            "contains no PEM CERTIFICATE block"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = ca_bundle(garbage).unwrap_err();
        assert!(matches!(err, BundleError::X509 { index: 1, .. }), "{err:?}");
        assert!(err.to_string().starts_with("certificate 1: is not a valid X.509 certificate: "));
    }

    /// 10,000 certificates or 50 MB: refused in bounded time, before parsing them all.
    #[test]
    fn huge_bundles_are_refused() {
        let many = GOLDEN_CA.repeat(MAX_CA_BUNDLE_CERTIFICATES + 1);
        assert!(many.len() < MAX_CA_BUNDLE_BYTES, "the count limit is what this case checks");
        let started = std::time::Instant::now();
        let err = ca_bundle(&many).unwrap_err().to_string();
        assert_eq!(err, "holds more than 1000 certificates; at most 1000 are read");
        let huge = GOLDEN_CA.repeat(50 * 1024 * 1024 / GOLDEN_CA.len());
        let err = ca_bundle(&huge).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("is {} bytes; CA bundles of at most 2097152 bytes are read", huge.len())
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }

    fn ca_valid_between(from: (i32, u8, u8), to: (i32, u8, u8)) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("ca {from:?}"));
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn expired_and_future_certificates_are_left_out_and_named() {
        let expired = ca_valid_between((2000, 1, 1), (2001, 1, 1));
        let future = ca_valid_between((2999, 1, 1), (3000, 1, 1));
        let err = ca_bundle(&expired).unwrap_err().to_string();
        assert!(err.starts_with("has no usable certificate: certificate 1 (CN=ca (2000"), "{err}");
        assert!(err.contains("expired on"), "{err}");
        assert!(ca_bundle(&future).unwrap_err().to_string().contains("is not valid before"));
        let mixed = format!("{expired}{GOLDEN_CA}");
        let bundle = ca_bundle(&mixed).unwrap();
        assert_eq!(bundle.skipped.len(), 1);
        assert_eq!(
            bundle.pem,
            ca_bundle(GOLDEN_CA).unwrap().pem,
            "only the valid certificate stays"
        );
    }
}
