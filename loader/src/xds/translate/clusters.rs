//! Backend clusters: endpoints, the policy's upstream TLS (or failing closed) and the filter's metadata.

use super::*;
use crate::ir::UpstreamProtocol;

pub(super) fn backend_cluster(
    c: &ir::Cluster,
    ir: &Ir,
    options: &TranslateOptions,
) -> (cluster::Cluster, Option<endpoint::ClusterLoadAssignment>) {
    let delivery = options.delivery;
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    let checked = c.tls.as_ref().map(|policy| checked_policy(policy, options.validator));
    let unusable =
        matches!(&checked, Some((policy, _)) if matches!(policy.trust, Trust::Unusable { .. }));
    let mut out = cluster::Cluster {
        name: c.name.clone(),
        connect_timeout: seconds(5),
        metadata: checked
            .as_ref()
            .map(|(policy, identities)| policy_metadata(policy, identities, options.validator)),
        ..Default::default()
    };
    let lb_endpoints = |addresses: Vec<(String, u16)>| endpoint::ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints: addresses
                .into_iter()
                .map(|(address, port)| endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket_address(&address, port)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut eds = None;
    if unusable {
        // Fail closed: a policy applies but cannot be met, so the cluster has no hosts at all and
        // Envoy answers 503 rather than ever connecting in plaintext.
        out.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        out.load_assignment = Some(lb_endpoints(Vec::new()));
        return (out, None);
    }
    match &c.endpoints {
        ir::Endpoints::Dns { hostname, port } => {
            out.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
            out.load_assignment = Some(lb_endpoints(vec![(hostname.clone(), *port)]));
        }
        ir::Endpoints::Static(addresses) => {
            let assignment =
                lb_endpoints(addresses.iter().map(|a| (a.ip().to_string(), a.port())).collect());
            match delivery {
                Delivery::Ads => {
                    out.cluster_discovery_type =
                        Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
                    out.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
                        eds_config: Some(eds_config_source()),
                        service_name: String::new(),
                    });
                    eds = Some(assignment);
                }
                Delivery::Inline => {
                    out.cluster_discovery_type =
                        Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
                    out.load_assignment = Some(assignment);
                }
            }
        }
    }
    match &checked {
        Some((policy, identities)) => {
            // HTTP/2 to the backend: offer ALPN `h2` only, so the backend cannot settle on a
            // protocol the cluster does not speak (grpc-go refuses TLS without ALPN `h2`).
            let policy = match c.protocol {
                UpstreamProtocol::Http2 => {
                    let mut policy = policy.clone().into_owned();
                    policy.params.alpn = vec!["h2".to_string()];
                    std::borrow::Cow::Owned(policy)
                }
                UpstreamProtocol::Http1 => std::borrow::Cow::Borrowed(&**policy),
            };
            out.typed_extension_protocol_options =
                alpn_protocol_options(&policy.params.alpn).unwrap_or_default();
            out.transport_socket = Some(core::TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
                    &upstream_tls(&policy, identities, ir, options),
                ))),
            });
        }
        // No policy: HTTP/2 with prior knowledge (h2c), or HTTP/1.1.
        None => {
            if c.protocol == UpstreamProtocol::Http2 {
                out.typed_extension_protocol_options =
                    alpn_protocol_options(&["h2".to_string()]).unwrap_or_default();
            }
        }
    }
    (out, eds)
}

/// The cluster's policy as translated, with the identities its TLS context checks. A policy whose
/// names Envoy, the filter or the validator would refuse ([`checked_identities`]) is unusable
/// too: it fails closed here, rather than in a NACK that would leave Envoy's previous cluster (a
/// plaintext one, perhaps) in place.
pub(super) fn checked_policy(
    policy: &ir::BackendTls,
    validator: Validator,
) -> (std::borrow::Cow<'_, ir::BackendTls>, Vec<Identity>) {
    use std::borrow::Cow;
    if let Trust::Unusable { .. } = policy.trust {
        return (Cow::Borrowed(policy), Vec::new());
    }
    match checked_identities(policy, validator) {
        Ok(identities) => (Cow::Borrowed(policy), identities),
        Err(error) => {
            let reason = error.to_string();
            let unusable = ir::BackendTls { trust: Trust::Unusable { reason }, ..policy.clone() };
            (Cow::Owned(unusable), Vec::new())
        }
    }
}

pub(super) fn upstream_tls(
    policy: &ir::BackendTls,
    identities: &[Identity],
    ir: &Ir,
    options: &TranslateOptions,
) -> tls::UpstreamTlsContext {
    use tls::common_tls_context::ValidationContextType;
    let delivery = options.delivery;
    let Trust::Ca { secret } = &policy.trust else {
        unreachable!("unusable policies get no transport socket")
    };
    let identity = tls::CertificateValidationContext {
        match_typed_subject_alt_names: san_matchers(identities),
        ..Default::default()
    };
    let validation = match (options.validator, delivery) {
        (Validator::DynamicModule, _) => {
            ValidationContextType::ValidationContext(tls::CertificateValidationContext {
                custom_validator_config: Some(module_validator(
                    policy,
                    identities,
                    &ir.ca_bundles[secret].pem,
                )),
                ..Default::default()
            })
        }
        (Validator::Envoy, Delivery::Ads) => ValidationContextType::CombinedValidationContext(
            tls::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(identity),
                validation_context_sds_secret_config: Some(tls::SdsSecretConfig {
                    name: secret.clone(),
                    sds_config: Some(ads_config_source()),
                }),
                ..Default::default()
            },
        ),
        (Validator::Envoy, Delivery::Inline) => {
            ValidationContextType::ValidationContext(tls::CertificateValidationContext {
                trusted_ca: Some(inline_string(&ir.ca_bundles[secret].pem)),
                ..identity
            })
        }
    };
    let version = |v: TlsVersion| match v {
        TlsVersion::Tls12 => tls::tls_parameters::TlsProtocol::TlSv12 as i32,
        TlsVersion::Tls13 => tls::tls_parameters::TlsProtocol::TlSv13 as i32,
    };
    let mut common = tls::CommonTlsContext {
        tls_params: Some(tls::TlsParameters {
            tls_minimum_protocol_version: version(policy.params.min_version),
            // Always explicit: Envoy's upstream default maximum is TLS 1.2.
            tls_maximum_protocol_version: version(policy.params.max_version),
            cipher_suites: policy.params.cipher_suites.clone(),
            ..Default::default()
        }),
        alpn_protocols: policy.params.alpn.clone(),
        validation_context_type: Some(validation),
        ..Default::default()
    };
    if let Some(name) = &policy.client_certificate {
        match delivery {
            Delivery::Ads => {
                common.tls_certificate_sds_secret_configs = vec![tls::SdsSecretConfig {
                    name: name.clone(),
                    sds_config: Some(ads_config_source()),
                }]
            }
            Delivery::Inline => {
                common.tls_certificates = vec![static_client_certificate(
                    &ir.client_certificates[name],
                    &options.private_keys,
                )]
            }
        }
    }
    tls::UpstreamTlsContext {
        sni: policy.hostname.clone(),
        common_tls_context: Some(common),
        ..Default::default()
    }
}

/// The dynamic-module validator with the policy's trust anchors and identities inline: a CA
/// change is then a cluster change, which Envoy applies to every new connection.
pub(super) fn module_validator(
    policy: &ir::BackendTls,
    identities: &[Identity],
    anchors_pem: &str,
) -> core::TypedExtensionConfig {
    use contract::validator::{Config, EXTENSION_NAME, VALIDATOR_NAME};
    use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::cert_validator::dynamic_modules::v3::DynamicModuleCertValidatorConfig;
    let config = Config {
        policy: policy.policy.to_string(),
        hostname: policy.hostname.clone(),
        identities: identities.to_vec(),
        trust_anchors_pem: anchors_pem.to_owned(),
    };
    let config = serde_json::to_string(&config).expect("the validator config serializes");
    core::TypedExtensionConfig {
        name: EXTENSION_NAME.into(),
        typed_config: Some(pack(&DynamicModuleCertValidatorConfig {
            dynamic_module_config: Some(DynamicModuleConfig {
                name: DYNAMIC_MODULE_NAME.into(),
                ..Default::default()
            }),
            validator_name: VALIDATOR_NAME.into(),
            validator_config: Some(pack(&pb::StringValue { value: config })),
        })),
    }
}

/// With ALPN the backend may pick HTTP/2: the cluster must then be able to speak it.
pub(super) fn alpn_protocol_options(alpn: &[String]) -> Option<HashMap<String, Any>> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options::{
            explicit_http_config::ProtocolConfig, AutoHttpConfig, ExplicitHttpConfig,
            UpstreamProtocolOptions,
        },
        HttpProtocolOptions,
    };
    let h2 = alpn.iter().any(|p| p == "h2");
    let h1 = alpn.iter().any(|p| p == "http/1.1");
    let protocol = match (h1, h2) {
        (_, false) => return None,
        (true, true) => UpstreamProtocolOptions::AutoConfig(AutoHttpConfig {
            http_protocol_options: Some(core::Http1ProtocolOptions::default()),
            http2_protocol_options: Some(core::Http2ProtocolOptions::default()),
            ..Default::default()
        }),
        (false, true) => UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                core::Http2ProtocolOptions::default(),
            )),
        }),
    };
    let options =
        HttpProtocolOptions { upstream_protocol_options: Some(protocol), ..Default::default() };
    Some(HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        pack(&options),
    )]))
}

/// `filter_metadata["backendtls"]`, the contract the filter reads (see README). `identities` are
/// the policy's checked identities (empty when it is unusable).
pub(super) fn policy_metadata(
    policy: &ir::BackendTls,
    identities: &[Identity],
    validator: Validator,
) -> core::Metadata {
    use pb::value::Kind;
    let string = |s: &str| pb::Value { kind: Some(Kind::StringValue(s.to_string())) };
    let mut fields = HashMap::new();
    fields.insert(contract::keys::POLICY.to_string(), string(&policy.policy.to_string()));
    fields.insert(contract::keys::HOSTNAME.to_string(), string(&policy.hostname));
    let sans = policy
        .subject_alt_names
        .iter()
        .map(|san| {
            let (kind, key, value) = match san {
                SubjectAltName::Hostname(h) => (contract::san_types::HOSTNAME, "hostname", h),
                SubjectAltName::Uri(u) => (contract::san_types::URI, "uri", u),
            };
            let mut entry = HashMap::new();
            entry.insert("type".to_string(), string(kind));
            entry.insert(key.to_string(), string(value));
            pb::Value { kind: Some(Kind::StructValue(pb::Struct { fields: entry })) }
        })
        .collect();
    fields.insert(
        contract::keys::SUBJECT_ALT_NAMES.to_string(),
        pb::Value { kind: Some(Kind::ListValue(pb::ListValue { values: sans })) },
    );
    // The same names as flat strings, for the dynamic-module build (see the contract); without
    // subjectAltNames the list is empty and the hostname is the identity.
    let flat = if policy.subject_alt_names.is_empty() { &[][..] } else { identities };
    let flat = flat.iter().map(|identity| string(&identity.to_string())).collect();
    fields.insert(
        contract::keys::IDENTITIES.to_string(),
        pb::Value { kind: Some(Kind::ListValue(pb::ListValue { values: flat })) },
    );
    let state = match &policy.trust {
        Trust::Ca { .. } => {
            let check = match validator {
                Validator::Envoy => IdentityCheck::EnvoySanMatchers,
                Validator::DynamicModule => IdentityCheck::BackendtlsValidator,
            };
            fields.insert(contract::keys::IDENTITY_CHECKED_BY.to_string(), string(check.as_str()));
            PolicyState::Valid
        }
        Trust::Unusable { reason } => {
            fields.insert(contract::keys::REASON.to_string(), string(reason));
            PolicyState::Invalid
        }
    };
    fields.insert(contract::keys::STATE.to_string(), string(state.as_str()));
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(contract::METADATA_NAMESPACE.to_string(), pb::Struct { fields });
    core::Metadata { filter_metadata, ..Default::default() }
}

/// Where an EDS cluster's endpoints come from: the ADS stream, with no initial-fetch timeout.
/// The loader sends a cluster's endpoints in the same snapshot as the cluster, so they always
/// come; Envoy's default timeout (15 s, started as each cluster is created) fires while Envoy is
/// still applying a large update (100,000 clusters take it 45 s here) and would make those
/// clusters active without a host until their endpoints arrive. Without it a cluster warms only
/// with its endpoints (and a changed cluster keeps serving its previous version meanwhile).
fn eds_config_source() -> core::ConfigSource {
    core::ConfigSource { initial_fetch_timeout: seconds(0), ..ads_config_source() }
}
