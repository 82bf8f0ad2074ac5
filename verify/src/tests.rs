//! The validator core against certificates made with rcgen: every case of the end-to-end matrix,
//! plus the ones a real backend cannot easily present (tampered signatures, garbage).

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use super::*;

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn root(name: &str) -> Ca {
    CertifiedIssuer::self_signed(ca_params(name), KeyPair::generate().unwrap()).unwrap()
}

fn intermediate(parent: &Ca, name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
    let mut params = ca_params(name);
    edit(&mut params);
    CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), parent).unwrap()
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn uri(value: &str) -> SanType {
    SanType::URI(value.try_into().unwrap())
}

/// A serverAuth leaf for `sans`, signed by `issuer`, after `edit`.
fn leaf(issuer: &Ca, sans: Vec<SanType>, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "backend");
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    edit(&mut params);
    params.signed_by(&KeyPair::generate().unwrap(), issuer).unwrap().der().to_vec()
}

/// The configuration as the loader writes it (the contract type, serialized).
fn config_json(anchors_pem: &str, identities: &[&str]) -> String {
    let config = Config {
        policy: "default/p".into(),
        hostname: "example.com".into(),
        identities: identities.iter().map(|i| i.parse().unwrap()).collect(),
        trust_anchors_pem: anchors_pem.into(),
    };
    serde_json::to_string(&config).unwrap()
}

fn config(ca: &Ca, identities: &[&str]) -> ValidatorConfig {
    ValidatorConfig::parse(config_json(&ca.pem(), identities).as_bytes()).unwrap()
}

fn verify(config: &ValidatorConfig, chain: &[&[u8]]) -> Result<(), Rejection> {
    config.verify(chain, UnixTime::now())
}

fn reason(result: Result<(), Rejection>) -> FailureReason {
    result.expect_err("the chain must be refused").reason
}

#[test]
fn a_leaf_from_the_policy_ca_for_the_hostname_is_verified() {
    let ca = root("policy CA");
    let config = config(&ca, &[]);
    assert_eq!(config.identities(), ["dns:example.com"], "the hostname is the identity");
    verify(&config, &[&leaf(&ca, vec![dns("example.com")], |_| {})]).unwrap();
    // Without the extended key usage extension any usage is allowed (RFC 5280).
    verify(&config, &[&leaf(&ca, vec![dns("example.com")], |p| p.extended_key_usages.clear())])
        .unwrap();
    // Names compare case-insensitively; any SAN may be the matching one.
    verify(&config, &[&leaf(&ca, vec![dns("first.example"), dns("EXAMPLE.com")], |_| {})]).unwrap();
}

#[test]
fn a_chain_through_an_intermediate_needs_the_intermediate() {
    let ca = root("policy CA");
    let mid = intermediate(&ca, "intermediate", |_| {});
    let config = config(&ca, &[]);
    let leaf = leaf(&mid, vec![dns("example.com")], |_| {});
    verify(&config, &[&leaf, mid.der()]).unwrap();
    let missing = verify(&config, &[&leaf]).unwrap_err();
    assert_eq!(missing.reason, FailureReason::UnknownIssuer);
    assert_eq!(missing.alert, Alert::UnknownCa);
}

#[test]
fn a_leaf_from_another_ca_is_an_unknown_issuer() {
    let (ca, stranger) = (root("policy CA"), root("stranger"));
    let rejection =
        verify(&config(&ca, &[]), &[&leaf(&stranger, vec![dns("example.com")], |_| {})])
            .unwrap_err();
    assert_eq!(rejection.reason, FailureReason::UnknownIssuer);
    assert_eq!(rejection.alert, Alert::UnknownCa);
    assert_eq!(
        rejection.to_string(),
        "backendtls: unknown_issuer: policy default/p: no chain from the leaf to the policy's 1 \
         trust anchor(s)"
    );
}

#[test]
fn validity_windows_name_the_certificate() {
    let ca = root("policy CA");
    let config = config(&ca, &[]);
    let expired = leaf(&ca, vec![dns("example.com")], |p| {
        p.not_before = date_time_ymd(2019, 1, 1);
        p.not_after = date_time_ymd(2020, 1, 1);
    });
    let rejection = verify(&config, &[&expired]).unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.alert),
        (FailureReason::Expired, Alert::CertificateExpired)
    );
    assert!(
        rejection
            .message
            .starts_with("policy default/p: the leaf expired at 2020-01-01T00:00:00Z (now "),
        "{rejection}"
    );

    let future = leaf(&ca, vec![dns("example.com")], |p| p.not_before = date_time_ymd(2090, 1, 1));
    let rejection = verify(&config, &[&future]).unwrap_err();
    assert_eq!(rejection.reason, FailureReason::NotYetValid);
    assert!(
        rejection.message.contains("the leaf is not valid before 2090-01-01T00:00:00Z"),
        "{rejection}"
    );

    let old_mid = intermediate(&ca, "old intermediate", |p| {
        p.not_before = date_time_ymd(2019, 1, 1);
        p.not_after = date_time_ymd(2021, 6, 1);
    });
    let rejection =
        verify(&config, &[&leaf(&old_mid, vec![dns("example.com")], |_| {}), old_mid.der()])
            .unwrap_err();
    assert_eq!(rejection.reason, FailureReason::Expired);
    assert!(rejection.message.contains("intermediate #1 expired at 2021-06-01"), "{rejection}");
}

#[test]
fn an_expired_trust_anchor_is_refused_as_boringssl_does() {
    let mut params = ca_params("expired CA");
    params.not_before = date_time_ymd(2018, 1, 1);
    params.not_after = date_time_ymd(2022, 1, 1);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let rejection =
        verify(&config(&ca, &[]), &[&leaf(&ca, vec![dns("example.com")], |_| {})]).unwrap_err();
    assert_eq!(rejection.reason, FailureReason::Expired);
    assert!(
        rejection.message.contains("the policy's trust anchor #1 expired at 2022-01-01"),
        "{rejection}"
    );
}

#[test]
fn names_are_checked_against_every_san_and_never_the_cn() {
    let ca = root("policy CA");
    let config = config(&ca, &[]);
    let other =
        verify(&config, &[&leaf(&ca, vec![dns("other.example"), uri("spiffe://x/y")], |_| {})])
            .unwrap_err();
    assert_eq!((other.reason, other.alert), (FailureReason::NameMismatch, Alert::BadCertificate));
    assert!(
        other.message.ends_with(
            "the leaf's names [dns:other.example, uri:spiffe://x/y] match none of [dns:example.com]"
        ),
        "{other}"
    );
    let cn_only = leaf(&ca, vec![], |p| {
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "example.com");
    });
    let rejection = verify(&config, &[&cn_only]).unwrap_err();
    assert_eq!(rejection.reason, FailureReason::NameMismatch);
    assert!(rejection.message.contains("no DNS or URI subjectAltName"), "{rejection}");
}

#[test]
fn a_leaf_wildcard_covers_exactly_one_label() {
    let ca = root("policy CA");
    let wildcard = leaf(&ca, vec![dns("*.example.com")], |_| {});
    verify(&config(&ca, &["dns:a.example.com"]), &[&wildcard]).unwrap();
    assert_eq!(
        reason(verify(&config(&ca, &["dns:a.b.example.com"]), &[&wildcard])),
        FailureReason::NameMismatch
    );
    assert_eq!(
        reason(verify(&config(&ca, &["dns:example.com"]), &[&wildcard])),
        FailureReason::NameMismatch
    );
}

#[test]
fn a_policy_wildcard_accepts_any_one_label() {
    let ca = root("policy CA");
    let config = config(&ca, &["dns:*.example.com"]);
    assert_eq!(config.identities(), ["dns:*.example.com"]);
    verify(&config, &[&leaf(&ca, vec![dns("a.example.com")], |_| {})]).unwrap();
    verify(&config, &[&leaf(&ca, vec![dns("*.example.com")], |_| {})]).unwrap();
    for name in ["a.b.example.com", "example.com", "a.example.org"] {
        assert_eq!(
            reason(verify(&config, &[&leaf(&ca, vec![dns(name)], |_| {})])),
            FailureReason::NameMismatch,
            "{name}"
        );
    }
}

#[test]
fn uris_match_exactly() {
    let ca = root("policy CA");
    let config = config(&ca, &["uri:spiffe://cluster.local/ns/default/sa/nginx", "dns:b.example"]);
    verify(&config, &[&leaf(&ca, vec![uri("spiffe://cluster.local/ns/default/sa/nginx")], |_| {})])
        .unwrap();
    verify(&config, &[&leaf(&ca, vec![dns("b.example")], |_| {})]).unwrap();
    for presented in
        ["spiffe://cluster.local/ns/default/sa/other", "SPIFFE://cluster.local/ns/default/sa/nginx"]
    {
        assert_eq!(
            reason(verify(&config, &[&leaf(&ca, vec![uri(presented)], |_| {})])),
            FailureReason::NameMismatch,
            "{presented}"
        );
    }
}

#[test]
fn a_client_only_leaf_has_the_wrong_key_usage() {
    let ca = root("policy CA");
    let client = leaf(&ca, vec![dns("example.com")], |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    let rejection = verify(&config(&ca, &[]), &[&client]).unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.alert),
        (FailureReason::BadKeyUsage, Alert::UnsupportedCertificate)
    );
    assert!(rejection.message.contains("[clientAuth]"), "{rejection}");
}

#[test]
fn an_issuer_that_is_not_a_ca_breaks_the_chain() {
    let ca = root("policy CA");
    let not_a_ca = intermediate(&ca, "not a CA", |p| {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    });
    let rejection = verify(
        &config(&ca, &[]),
        &[&leaf(&not_a_ca, vec![dns("example.com")], |_| {}), not_a_ca.der()],
    )
    .unwrap_err();
    assert_eq!(rejection.reason, FailureReason::InvalidChain);
    assert!(rejection.message.contains("is not a CA"), "{rejection}");
}

#[test]
fn a_self_signed_leaf_outside_the_anchors_is_an_unknown_issuer() {
    let ca = root("policy CA");
    let mut params = CertificateParams::new(vec!["example.com".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let own = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
    assert_eq!(reason(verify(&config(&ca, &[]), &[own.der()])), FailureReason::UnknownIssuer);
}

#[test]
fn a_tampered_signature_is_a_bad_signature() {
    let ca = root("policy CA");
    let mut der = leaf(&ca, vec![dns("example.com")], |_| {});
    // The last bytes are the ECDSA signature's S value.
    let last = der.len() - 2;
    der[last] ^= 0x01;
    let rejection = verify(&config(&ca, &[]), &[&der]).unwrap_err();
    assert_eq!(
        (rejection.reason, rejection.alert),
        (FailureReason::BadSignature, Alert::DecryptError)
    );
}

#[test]
fn garbage_and_empty_chains_are_malformed() {
    let config = config(&root("policy CA"), &[]);
    assert_eq!(reason(verify(&config, &[])), FailureReason::Malformed);
    assert_eq!(reason(verify(&config, &[b"\x30\x03\x02\x01\x00"])), FailureReason::Malformed);
    let ca = root("policy CA");
    let good = leaf(&ca, vec![dns("example.com")], |_| {});
    for cut in [0, 1, 10, good.len() / 2, good.len() - 1] {
        assert!(verify(&config, &[&good[..cut]]).is_err());
    }
}

#[test]
fn a_bundle_trusts_each_of_its_certificates() {
    let (a, b) = (root("old CA"), root("new CA"));
    let bundle = format!("{}{}", a.pem(), b.pem());
    let config = ValidatorConfig::parse(config_json(&bundle, &[]).as_bytes()).unwrap();
    assert_eq!(config.trust_anchor_count(), 2);
    verify(&config, &[&leaf(&a, vec![dns("example.com")], |_| {})]).unwrap();
    verify(&config, &[&leaf(&b, vec![dns("example.com")], |_| {})]).unwrap();
}

#[test]
fn configurations_are_checked_strictly() {
    let pem = root("policy CA").pem();
    let parse = |v: serde_json::Value| ValidatorConfig::parse(v.to_string().as_bytes());
    let base = || {
        serde_json::json!({
            "policy": "default/p",
            "hostname": "example.com",
            "trust_anchors_pem": pem,
        })
    };
    assert!(parse(base()).is_ok());
    let with = |key: &str, value: serde_json::Value| {
        let mut v = base();
        v[key] = value;
        parse(v)
    };
    let json_error = |result: Result<ValidatorConfig, ConfigError>| match result {
        Err(ConfigError::Json(e)) => e,
        other => panic!("expected a JSON error, got {other:?}"),
    };
    assert!(json_error(with("hostnme", "x".into())).contains("unknown field `hostnme`"));
    assert!(json_error(with("identities", "dns:x".into())).contains("invalid type"));
    for bad in ["ip:10.0.0.1", "dns:*.com", "dns:a b", "dns:10.0.0.5"] {
        let e = json_error(with("identities", serde_json::json!([bad])));
        assert!(e.contains(bad.split_once(':').unwrap().1), "{bad}: {e}");
    }
    assert!(matches!(with("hostname", "".into()), Err(ConfigError::BadHostname(_))));
    assert!(matches!(with("hostname", "*.example.com".into()), Err(ConfigError::BadHostname(_))));
    assert!(with("identities", serde_json::json!(["dns:a.example"])).is_ok());
    assert_eq!(
        with("trust_anchors_pem", "no pem".into()).unwrap_err(),
        ConfigError::NoTrustAnchors
    );
    let mut missing = base();
    missing.as_object_mut().unwrap().remove("policy");
    assert!(json_error(parse(missing)).contains("missing field `policy`"));
    assert!(matches!(ValidatorConfig::parse(b"[]"), Err(ConfigError::Json(_))));
    assert!(matches!(ValidatorConfig::parse(b"{"), Err(ConfigError::Json(_))));
    // Display says which configuration and what.
    assert_eq!(
        ConfigError::NoTrustAnchors.to_string(),
        "invalid backendtls certificate validator configuration: trust_anchors_pem holds no \
         CERTIFICATE block"
    );
}

#[test]
fn the_digest_follows_the_configuration() {
    let ca = root("policy CA");
    let a = config(&ca, &["dns:a.example"]);
    let b = config(&ca, &["dns:b.example"]);
    assert_ne!(a.digest(), b.digest());
    assert_eq!(a.digest(), config(&ca, &["dns:a.example"]).digest());
}
