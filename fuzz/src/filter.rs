//! Filter targets: the metadata (protobuf) decoder, the X.509 SAN and validity walker
//! (differentially against x509-parser), the leaf PEM decoder, and the filter's and the
//! validator's configuration parsers, and the validator's `verify`.

use backendtls_filter::config::FilterConfig;
use backendtls_filter::policy::Policy;
use backendtls_filter::validator::{Rejection, ValidatorConfig};
use backendtls_filter::{pb, x509};
use rustls_pki_types::UnixTime;
use std::sync::LazyLock;
use std::time::Duration;
use x509_parser::extensions::GeneralName;

/// A cluster's serialized `envoy.config.core.v3.Metadata`, as the Wasm build reads it, and the
/// input as a bare `google.protobuf.Value`.
pub fn cluster_metadata(data: &[u8]) {
    if let Some(policy) = Policy::from_metadata_proto(data) {
        // Unreadable metadata must not give a usable policy.
        if pb::filter_metadata(data, backendtls_contract::METADATA_NAMESPACE).is_err() {
            assert!(!policy.is_valid(), "{policy:?}");
        }
    }
    let _ = pb::decode_value(data);
}

/// The filter's SAN and validity walker against x509-parser: never a panic, and for a
/// well-formed certificate both read, the same DNS and URI names in the same order and the same
/// window.
///
/// "Well-formed" is what the filter actually sees (Envoy verified the leaf first): webpki accepts
/// it, and its names use the DER tags. x509-parser alone is laxer than DER in two ways the fuzzer
/// found, where the filter's stricter reading is the safe one (fewer names can only match less):
/// it takes an extensions block under any class of tag 3, and a constructed `[2]`/`[6]` as a
/// DNS name/URI.
pub fn x509_differential(data: &[u8]) {
    let ours_names = x509::walk::subject_alt_names(data);
    let ours_validity = x509::walk::validity(data);
    let Ok((_, reference)) = x509_parser::parse_x509_certificate(data) else { return };
    let der = rustls_pki_types::CertificateDer::from(data);
    if webpki::EndEntityCert::try_from(&der).is_err() {
        return;
    }
    if let Ok(ours) = &ours_names {
        let extension = reference.subject_alternative_name();
        let canonical = match &extension {
            Ok(Some(_)) => reference
                .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME)
                .ok()
                .flatten()
                .is_some_and(|e| names_use_der_tags(e.value)),
            _ => true,
        };
        if let (Ok(extension), true) = (extension, canonical) {
            let (mut dns, mut uri) = (Vec::new(), Vec::new());
            for name in extension.iter().flat_map(|e| e.value.general_names.iter()) {
                match name {
                    GeneralName::DNSName(n) => dns.push(n.to_string()),
                    GeneralName::URI(u) => uri.push(u.to_string()),
                    _ => {}
                }
            }
            assert_eq!(ours.dns, dns, "DNS names differ from x509-parser's");
            assert_eq!(ours.uri, uri, "URIs differ from x509-parser's");
        }
    }
    if let Ok(ours) = ours_validity {
        let validity = reference.validity();
        let seconds = |t: &x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
        assert_eq!(ours.not_before, seconds(&validity.not_before), "notBefore differs");
        assert_eq!(ours.not_after, seconds(&validity.not_after), "notAfter differs");
    }
}

/// Whether every dNSName (`[2]`) and URI (`[6]`) of a GeneralNames value is context-specific and
/// primitive, as DER requires.
fn names_use_der_tags(general_names: &[u8]) -> bool {
    use x509_parser::asn1_rs::{Any, Class, FromDer};
    let Ok((_, sequence)) = Any::from_der(general_names) else { return false };
    let mut rest = sequence.data;
    while !rest.is_empty() {
        let Ok((next, name)) = Any::from_der(rest) else { return false };
        let number = name.header.tag().0;
        if (number == 2 || number == 6)
            && (name.header.class() != Class::ContextSpecific || name.header.is_constructed())
        {
            return false;
        }
        rest = next;
    }
    true
}

/// Envoy's `upstream.peer_certificate` (PEM, maybe URL-encoded) to DER, then its names.
pub fn peer_certificate(data: &[u8]) {
    if let Ok(der) = x509::pem_to_der(data) {
        let _ = x509::subject_alt_names(&der);
    }
}

/// The filter's own JSON configuration.
pub fn filter_config(data: &[u8]) {
    if let Ok(config) = FilterConfig::parse(data) {
        for name in [config.request_header, config.debug_panic_header].into_iter().flatten() {
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()), "{name:?}");
        }
    }
}

/// The certificate validator's JSON configuration.
pub fn validator_config(data: &[u8]) {
    if let Ok(config) = ValidatorConfig::parse(data) {
        assert!(config.trust_anchor_count() > 0);
        assert!(!config.identities().is_empty());
    }
}

/// CA certificates whose keys were thrown away after signing the seed chains (see
/// `tests/seeds.rs`): valid from 2020 to 2100.
const CA_PEM: &str = include_str!("../data/ca.pem");
const OTHER_CA_PEM: &str = include_str!("../data/other-ca.pem");

/// The validator configurations `validator_verify` picks from (first input byte).
static CONFIGS: LazyLock<Vec<ValidatorConfig>> = LazyLock::new(|| {
    let config = |identities: &[&str], anchors: String| {
        let json = serde_json::json!({
            "policy": "fuzz/p",
            "hostname": "backend.example.com",
            "identities": identities,
            "trust_anchors_pem": anchors,
        });
        ValidatorConfig::parse(json.to_string().as_bytes()).expect("fuzz validator config")
    };
    vec![
        config(&[], CA_PEM.into()),
        config(&["dns:*.example.com", "uri:spiffe://example.com/backend"], CA_PEM.into()),
        config(&["dns:backend.example.com"], format!("{OTHER_CA_PEM}{CA_PEM}")),
    ]
});

/// Times `validator_verify` picks from (second input byte): within, before and after the
/// validity of the seed certificates.
const TIMES: [u64; 3] = [1_900_000_000, 600_000_000, 4_200_000_000];

/// `verify` on an arbitrary chain: byte 0 picks the configuration, byte 1 the time, then each
/// certificate as a 2-byte big-endian length and its DER (leaf first). A verdict of success
/// must be one the reference parser agrees names an identity of the policy.
pub fn validator_verify(data: &[u8]) {
    let Some(verdict) = verdict(data) else { return };
    match verdict {
        Ok(()) => {
            let chain = length_prefixed(&data[2..]);
            let (_, leaf) =
                x509_parser::parse_x509_certificate(chain[0]).expect("a verified leaf parses");
            let names = leaf.subject_alternative_name().ok().flatten();
            assert!(names.is_some(), "verified a leaf without subjectAltName");
        }
        Err(rejection) => {
            let detail = rejection.to_string();
            assert!(detail.starts_with("backendtls: "), "{detail}");
            assert!(!detail.contains('\n'), "one line: {detail}");
        }
    }
}

/// The validator's verdict on a `validator_verify` input; None when it is too short to say.
pub fn verdict(data: &[u8]) -> Option<Result<(), Rejection>> {
    let [config, time, rest @ ..] = data else { return None };
    let config = &CONFIGS[usize::from(*config) % CONFIGS.len()];
    let now =
        UnixTime::since_unix_epoch(Duration::from_secs(TIMES[usize::from(*time) % TIMES.len()]));
    Some(config.verify(&length_prefixed(rest), now))
}

/// Certificates as `u16` big-endian length + bytes; a short last one takes what is left.
pub fn length_prefixed(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [high, low, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}
