//! Envoy bootstraps: the ADS one that points a stock Envoy at the loader (`bootstrap`,
//! `envoy/bootstrap.yaml`), and a complete static one from the translation (`render`), which
//! leaves private keys out unless asked ([`PrivateKeys`]).

use super::translate::{ads_config_source, pack, socket_address, Resources};
pub use super::translate::{
    private_key_path, static_client_certificate, PrivateKeys, DEFAULT_PRIVATE_KEY_DIR,
};
use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::google::protobuf::Duration;
use std::collections::HashMap;
use std::net::SocketAddr;

/// The name of the static cluster through which Envoy reaches the loader.
pub const XDS_CLUSTER: &str = "backendtls_xds";

#[derive(Clone, Debug)]
pub struct AdsBootstrapOptions {
    pub xds_address: SocketAddr,
    pub admin_address: SocketAddr,
    pub node_id: String,
    /// Delta xDS (the default) or state of the world.
    pub delta: bool,
    /// Mutual TLS to the loader; None for plaintext (loopback only).
    pub tls: Option<XdsClientTls>,
}

/// How Envoy authenticates the loader and itself on the xDS connection. The paths are written as
/// given: Envoy reads the files when it starts and resolves relative paths against its working
/// directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsClientTls {
    /// CA bundle that signed the loader's certificate.
    pub ca: String,
    /// Envoy's client certificate chain and key.
    pub cert: String,
    pub key: String,
    /// SNI, and the DNS name Envoy requires in the loader's certificate.
    pub server_name: String,
}

impl XdsClientTls {
    /// The files `backendtls-loader certs --out-dir DIR` writes for Envoy `node_id`.
    pub fn in_dir(dir: &str, node_id: &str, server_name: &str) -> XdsClientTls {
        use super::tls::file_names;
        let join = |name: &str| {
            if dir.is_empty() || dir.ends_with('/') {
                format!("{dir}{name}")
            } else {
                format!("{dir}/{name}")
            }
        };
        XdsClientTls {
            ca: join(file_names::CA_CERT),
            cert: join(&file_names::envoy_cert(node_id)),
            key: join(&file_names::envoy_key(node_id)),
            server_name: server_name.to_string(),
        }
    }

    fn transport_socket(&self) -> core::TransportSocket {
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
        use envoy_types::pb::envoy::r#type::matcher::v3::{
            string_matcher::MatchPattern, StringMatcher,
        };
        let file = |path: &str| core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(path.to_string())),
            ..Default::default()
        };
        let context = tls::UpstreamTlsContext {
            sni: self.server_name.clone(),
            common_tls_context: Some(tls::CommonTlsContext {
                tls_params: Some(tls::TlsParameters {
                    // Envoy's upstream default maximum is TLS 1.2; both ends support 1.3.
                    tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                    tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                    ..Default::default()
                }),
                alpn_protocols: vec!["h2".into()],
                tls_certificates: vec![tls::TlsCertificate {
                    certificate_chain: Some(file(&self.cert)),
                    private_key: Some(file(&self.key)),
                    ..Default::default()
                }],
                validation_context_type: Some(
                    tls::common_tls_context::ValidationContextType::ValidationContext(
                        tls::CertificateValidationContext {
                            trusted_ca: Some(file(&self.ca)),
                            match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
                                san_type: tls::subject_alt_name_matcher::SanType::Dns as i32,
                                matcher: Some(StringMatcher {
                                    match_pattern: Some(MatchPattern::Exact(
                                        self.server_name.clone(),
                                    )),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(&context))),
        }
    }
}

fn admin(address: SocketAddr) -> bootstrap::Admin {
    bootstrap::Admin {
        address: Some(socket_address(&address.ip().to_string(), address.port())),
        ..Default::default()
    }
}

/// Tag rules that give the filter's Wasm stats their Prometheus labels (see
/// `backendtls_contract::stats`); harmless without the filter.
fn stats_config() -> envoy_types::pb::envoy::config::metrics::v3::StatsConfig {
    use envoy_types::pb::envoy::config::metrics::v3::{
        tag_specifier::TagValue, StatsConfig, TagSpecifier,
    };
    StatsConfig {
        stats_tags: backendtls_contract::stats::TAG_RULES
            .iter()
            .map(|(name, regex)| TagSpecifier {
                tag_name: name.to_string(),
                tag_value: Some(TagValue::Regex(regex.to_string())),
            })
            .collect(),
        ..Default::default()
    }
}

fn node(id: &str) -> core::Node {
    core::Node { id: id.to_string(), cluster: "backendtls".into(), ..Default::default() }
}

pub fn ads_bootstrap(options: &AdsBootstrapOptions) -> bootstrap::Bootstrap {
    let api_type = if options.delta {
        core::api_config_source::ApiType::DeltaGrpc
    } else {
        core::api_config_source::ApiType::Grpc
    };
    let ads = core::ApiConfigSource {
        api_type: api_type as i32,
        transport_api_version: core::ApiVersion::V3 as i32,
        grpc_services: vec![core::GrpcService {
            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                core::grpc_service::EnvoyGrpc {
                    cluster_name: XDS_CLUSTER.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        set_node_on_first_message_only: true,
        ..Default::default()
    };
    // gRPC needs HTTP/2 to the loader.
    let http2 = upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            upstream_http::http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        core::Http2ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    let mut protocol_options = HashMap::new();
    protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(), pack(&http2));
    let xds_cluster = cluster::Cluster {
        name: XDS_CLUSTER.into(),
        connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        typed_extension_protocol_options: protocol_options,
        transport_socket: options.tls.as_ref().map(XdsClientTls::transport_socket),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: XDS_CLUSTER.into(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket_address(
                                &options.xds_address.ip().to_string(),
                                options.xds_address.port(),
                            )),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    bootstrap::Bootstrap {
        node: Some(node(&options.node_id)),
        admin: Some(admin(options.admin_address)),
        stats_config: Some(stats_config()),
        dynamic_resources: Some(bootstrap::bootstrap::DynamicResources {
            ads_config: Some(ads),
            cds_config: Some(ads_config_source()),
            lds_config: Some(ads_config_source()),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::bootstrap::StaticResources {
            clusters: vec![xds_cluster],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A complete static bootstrap: every listener, route and cluster inline.
pub fn static_bootstrap(resources: &Resources, admin_address: SocketAddr) -> bootstrap::Bootstrap {
    bootstrap::Bootstrap {
        node: Some(node("backendtls-static")),
        admin: Some(admin(admin_address)),
        stats_config: Some(stats_config()),
        static_resources: Some(bootstrap::bootstrap::StaticResources {
            listeners: resources.listeners.iter().map(|l| l.resource.clone()).collect(),
            clusters: resources.clusters.iter().map(|c| c.resource.clone()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
