//! The contract's identity cases through the loader's entry point: each case's policy is
//! translated into a cluster, and the Envoy SAN matchers it carries are evaluated against the
//! case's certificate names the way Envoy 1.40 evaluates them (`safe_regex`: RE2 full match on
//! the SAN text, `(?i)` folding ASCII only; `exact` on a URI SAN: byte equality). The filter runs
//! the same table through its identity check, the validator through `verify`.

use backendtls_contract::identity_cases::{Case, Verdict, CASES};
use backendtls_contract::validator::Config as ValidatorConfig;
use backendtls_contract::{keys, IdentityCheck};
use backendtls_loader::ir::{self, BackendTls, Ir, SubjectAltName, Trust};
use backendtls_loader::objects::ObjectKey;
use backendtls_loader::xds::translate::{translate, Delivery, TranslateOptions, Validator};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;

const CLUSTER: &str = "kube_default_backend_443";

fn ir_for(case: &Case) -> Ir {
    use backendtls_contract::identity_cases::San;
    let tls = BackendTls {
        policy: ObjectKey::new("default", "identity-case"),
        hostname: case.policy.hostname.to_string(),
        subject_alt_names: case
            .policy
            .subject_alt_names
            .iter()
            .map(|san| match san {
                San::Hostname(name) => SubjectAltName::Hostname(name.to_string()),
                San::Uri(uri) => SubjectAltName::Uri(uri.to_string()),
            })
            .collect(),
        params: ir::TlsParams::default(),
        trust: Trust::Ca { secret: "ca".into() },
        client_certificate: None,
    };
    let mut ir = Ir::default();
    ir.ca_bundles.insert("ca".into(), ir::CaBundle { pem: "PEM".into() });
    ir.clusters.insert(
        CLUSTER.into(),
        ir::Cluster {
            name: CLUSTER.into(),
            service: ObjectKey::new("default", "backend"),
            port: 443,
            endpoints: ir::Endpoints::Static(vec!["127.0.0.1:8443".parse().unwrap()]),
            tls: Some(tls),
            protocol: Default::default(),
        },
    );
    ir
}

fn cluster(case: &Case, validator: Validator) -> Cluster {
    let options =
        TranslateOptions { delivery: Delivery::Inline, validator, ..TranslateOptions::default() };
    let resources = translate(&ir_for(case), &options);
    assert_eq!(resources.clusters.len(), 1);
    resources.clusters[0].resource.clone()
}

fn metadata_string(cluster: &Cluster, key: &str) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let fields = &cluster.metadata.as_ref()?.filter_metadata.get("backendtls")?.fields;
    match fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn tls_context(cluster: &Cluster) -> Option<tls::UpstreamTlsContext> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = cluster.transport_socket.as_ref()?.config_type.clone()
    else {
        return None;
    };
    Some(tls::UpstreamTlsContext::decode(any.value.as_slice()).expect("UpstreamTlsContext"))
}

fn validation_context(context: &tls::UpstreamTlsContext) -> tls::CertificateValidationContext {
    use tls::common_tls_context::ValidationContextType;
    match context.common_tls_context.as_ref().unwrap().validation_context_type.clone().unwrap() {
        ValidationContextType::ValidationContext(v) => v,
        other => panic!("inline delivery puts the validation context inline: {other:?}"),
    }
}

/// Whether Envoy's SAN matchers accept a certificate with these SANs: any SAN of a matcher's
/// type that the matcher matches.
fn envoy_accepts(matchers: &[tls::SubjectAltNameMatcher], case: &Case) -> bool {
    use tls::subject_alt_name_matcher::SanType;
    matchers.iter().any(|m| {
        let presented: &[&str] = match SanType::try_from(m.san_type).unwrap() {
            SanType::Dns => case.certificate.dns,
            SanType::Uri => case.certificate.uri,
            other => panic!("{}: unexpected matcher type {other:?}", case.name),
        };
        let pattern = m.matcher.as_ref().unwrap().match_pattern.as_ref().unwrap();
        presented.iter().any(|san| match pattern {
            MatchPattern::SafeRegex(r) => {
                // Envoy's RE2 matches the whole SAN; its (?i) folds ASCII only (it does not
                // match U+212A KELVIN SIGN for `k`), as this regex does with Unicode off.
                let regex = regex::bytes::RegexBuilder::new(&format!("^(?:{})$", r.regex))
                    .unicode(false)
                    .build()
                    .unwrap_or_else(|e| panic!("{}: regex {:?}: {e}", case.name, r.regex));
                regex.is_match(san.as_bytes())
            }
            MatchPattern::Exact(exact) => {
                // Envoy applies DNS rules to `exact` on DNS SANs; the loader must not use it.
                assert_eq!(m.san_type, SanType::Uri as i32, "{}: exact DNS matcher", case.name);
                exact == san
            }
            other => panic!("{}: unexpected matcher {other:?}", case.name),
        })
    })
}

#[test]
fn envoy_san_matchers_reach_every_expected_verdict() {
    let mut failures = Vec::new();
    for case in CASES {
        let cluster = cluster(case, Validator::Envoy);
        let state = metadata_string(&cluster, keys::STATE);
        let got = match tls_context(&cluster) {
            None => {
                // Failed closed: no TLS context, no hosts, and the metadata says why.
                let hosts: usize = cluster
                    .load_assignment
                    .iter()
                    .flat_map(|l| &l.endpoints)
                    .map(|e| e.lb_endpoints.len())
                    .sum();
                assert_eq!(hosts, 0, "{}: an unusable policy's cluster has hosts", case.name);
                assert_eq!(state.as_deref(), Some("invalid"), "{}", case.name);
                assert!(metadata_string(&cluster, keys::REASON).is_some(), "{}", case.name);
                Verdict::InvalidPolicy
            }
            Some(context) => {
                assert_eq!(state.as_deref(), Some("valid"), "{}", case.name);
                assert_eq!(
                    metadata_string(&cluster, keys::IDENTITY_CHECKED_BY).as_deref(),
                    Some(IdentityCheck::EnvoySanMatchers.as_str())
                );
                let matchers = validation_context(&context).match_typed_subject_alt_names;
                assert!(!matchers.is_empty(), "{}: no SAN matcher", case.name);
                if envoy_accepts(&matchers, case) {
                    Verdict::Match
                } else {
                    Verdict::NoMatch
                }
            }
        };
        if got != case.verdict {
            failures.push(format!(
                "{}: expected {:?}, Envoy's matchers give {got:?}",
                case.name, case.verdict
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// With `--validator dynamic-module` the cluster carries the validator's configuration (the
/// contract type, written with serde) with the case's identities; the validator's own run of the
/// table is in the filter crate.
#[test]
fn validator_configs_carry_the_identities() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::cert_validator::dynamic_modules::v3::DynamicModuleCertValidatorConfig;
    use envoy_types::pb::google::protobuf::StringValue;
    for case in CASES {
        let cluster = cluster(case, Validator::DynamicModule);
        let Some(context) = tls_context(&cluster) else {
            assert_eq!(case.verdict, Verdict::InvalidPolicy, "{}: failed closed", case.name);
            continue;
        };
        assert_ne!(case.verdict, Verdict::InvalidPolicy, "{}: served", case.name);
        assert_eq!(
            metadata_string(&cluster, keys::IDENTITY_CHECKED_BY).as_deref(),
            Some(IdentityCheck::BackendtlsValidator.as_str())
        );
        let validation = validation_context(&context);
        assert!(validation.match_typed_subject_alt_names.is_empty());
        let custom = validation.custom_validator_config.expect("custom validator");
        let any = custom.typed_config.expect("typed config");
        let module = DynamicModuleCertValidatorConfig::decode(any.value.as_slice()).unwrap();
        let json = StringValue::decode(module.validator_config.unwrap().value.as_slice()).unwrap();
        let config: ValidatorConfig = serde_json::from_str(&json.value).unwrap();
        assert_eq!(config.identities, case.policy.identities().unwrap(), "{}", case.name);
        assert_eq!(config.trust_anchors_pem, "PEM");
    }
}
