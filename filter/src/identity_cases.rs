//! The contract's identity cases through the filter's entry points, with real certificates
//! (rcgen, signed by a test CA):
//!
//! - the HTTP filter's identity check, from the cluster metadata as each build reads it (the
//!   Wasm build's `subject_alt_names` structs from the serialized `Metadata`, the dynamic
//!   module's flat `identities` strings) to the leaf's PEM as the Wasm build reads
//!   `upstream.peer_certificate`;
//! - the certificate validator's `verify`, from its JSON configuration to the DER chain Envoy
//!   hands it.
//!
//! The loader runs the same table through the Envoy SAN matchers it generates
//! (`loader/tests/identity_cases.rs`).
#![forbid(unsafe_code)]

use backendtls_contract::identity_cases::{Case, CertNames, San, Verdict, CASES};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::pb::encode::{metadata, V};
use crate::policy::{Fields, LeafCheck, Policy};

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca() -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "identity cases CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A serverAuth leaf with exactly the case's subject CN and SANs.
fn leaf(ca: &Ca, names: &CertNames) -> rcgen::Certificate {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, names.common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let dns = names.dns.iter().map(|n| SanType::DnsName((*n).try_into().unwrap()));
    let uri = names.uri.iter().map(|u| SanType::URI((*u).try_into().unwrap()));
    let ip = names.ip.iter().map(|ip| SanType::IpAddress(ip.parse().unwrap()));
    params.subject_alt_names = dns.chain(uri).chain(ip).collect();
    params.signed_by(&KeyPair::generate().unwrap(), ca).unwrap()
}

/// The cluster metadata the Wasm build reads: `subject_alt_names` as Gateway API structs.
fn wasm_policy(case: &Case) -> Policy {
    let sans = case
        .policy
        .subject_alt_names
        .iter()
        .map(|san| match san {
            San::Hostname(name) => {
                V::Struct(vec![("type", V::S("Hostname")), ("hostname", V::S(name))])
            }
            San::Uri(uri) => V::Struct(vec![("type", V::S("URI")), ("uri", V::S(uri))]),
        })
        .collect();
    let md = metadata(&[(
        "backendtls",
        vec![
            ("policy", V::S("default/identity-case")),
            ("hostname", V::S(case.policy.hostname)),
            ("subject_alt_names", V::List(sans)),
            ("state", V::S("valid")),
        ],
    )]);
    Policy::from_metadata_proto(&md).expect("a backendtls struct")
}

/// The cluster metadata the dynamic module reads: the flat `identities` strings.
fn dynamic_module_policy(case: &Case) -> Policy {
    let flat: Vec<String> = case.policy.subject_alt_names.iter().map(|san| san.flat()).collect();
    Policy::from_fields(Fields {
        policy: Some("default/identity-case"),
        hostname: Some(case.policy.hostname),
        state: Some("valid"),
        identities: Some(flat.iter().map(String::as_str).collect()),
        ..Fields::default()
    })
}

fn filter_verdict(policy: &Policy, leaf_pem: &str) -> Verdict {
    if !policy.is_valid() {
        return Verdict::InvalidPolicy;
    }
    match policy.check_leaf_pem(leaf_pem.as_bytes()).expect("the leaf parses") {
        LeafCheck::Accepted => Verdict::Match,
        LeafCheck::Refused(_) => Verdict::NoMatch,
    }
}

#[test]
fn the_filter_identity_check_reaches_every_expected_verdict() {
    let ca = ca();
    let mut failures = Vec::new();
    for case in CASES {
        let pem = leaf(&ca, &case.certificate).pem();
        for (build, policy) in
            [("wasm", wasm_policy(case)), ("dynamic module", dynamic_module_policy(case))]
        {
            let got = filter_verdict(&policy, &pem);
            if got != case.verdict {
                failures.push(format!(
                    "{} ({build} metadata): expected {:?}, the filter gives {got:?} ({:?})",
                    case.name, case.verdict, policy.reason
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[cfg(feature = "validator")]
#[test]
fn the_validator_reaches_every_expected_verdict() {
    use crate::validator::{FailureReason, ValidatorConfig};
    let ca = ca();
    let mut failures = Vec::new();
    for case in CASES {
        // Written by hand rather than with the contract type, so that names the loader would
        // never send (the InvalidPolicy cases) reach the validator too.
        let identities: Vec<String> =
            case.policy.subject_alt_names.iter().map(|san| san.flat()).collect();
        let config = serde_json::json!({
            "policy": "default/identity-case",
            "hostname": case.policy.hostname,
            "identities": identities,
            "trust_anchors_pem": ca.pem(),
        });
        let got = match ValidatorConfig::parse(config.to_string().as_bytes()) {
            Err(_) => Verdict::InvalidPolicy,
            Ok(validator) => {
                let der = leaf(&ca, &case.certificate).der().to_vec();
                match validator.verify(&[&der], crate::validator::UnixTime::now()) {
                    Ok(()) => Verdict::Match,
                    Err(rejection) if rejection.reason == FailureReason::NameMismatch => {
                        Verdict::NoMatch
                    }
                    Err(rejection) => {
                        failures.push(format!(
                            "{}: refused for another reason: {rejection}",
                            case.name
                        ));
                        continue;
                    }
                }
            }
        };
        if got != case.verdict {
            failures.push(format!(
                "{}: expected {:?}, the validator gives {got:?}",
                case.name, case.verdict
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
