//! Gateway listeners: the HTTP connection manager, its access log and the backendtls filter; and
//! TLS listeners (TLSRoutes), whose filter chains proxy the decrypted stream over TCP.

use super::*;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;

/// The IR's listener certificates by secret name.
pub(super) type Certificates = std::collections::BTreeMap<String, ir::ClientCertificate>;

/// What the access log prints per request: enough to see which backend answered and why a
/// handshake failed.
pub(super) const ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% host=%REQ(:AUTHORITY)% cluster=%UPSTREAM_CLUSTER% upstream=%UPSTREAM_HOST% tls=%UPSTREAM_TLS_VERSION% failure=\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" backendtls=%DYNAMIC_METADATA(backendtls)% backendtls_wasm=%FILTER_STATE(wasm.backendtls:PLAIN)%\n";

/// What the access log prints per TCP connection of a TLS listener.
pub(super) const TCP_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] tcp sni=%REQUESTED_SERVER_NAME% %RESPONSE_FLAGS% chain=%FILTER_CHAIN_NAME% cluster=%UPSTREAM_CLUSTER% upstream=%UPSTREAM_HOST% tls=%UPSTREAM_TLS_VERSION% failure=\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" received=%BYTES_RECEIVED% sent=%BYTES_SENT%\n";

fn stdout_access_log(format: &str) -> envoy_types::pb::envoy::config::accesslog::v3::AccessLog {
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat;
    envoy_types::pb::envoy::config::accesslog::v3::AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(
                pack(&StdoutAccessLog {
                    access_log_format: Some(AccessLogFormat::LogFormat(
                        core::SubstitutionFormatString {
                            format: Some(
                                core::substitution_format_string::Format::TextFormatSource(
                                    inline_string(format),
                                ),
                            ),
                            ..Default::default()
                        },
                    )),
                }),
            ),
        ),
        ..Default::default()
    }
}

pub(super) fn gateway_listener(
    l: &ir::Listener,
    certificates: &Certificates,
    options: &TranslateOptions,
    routes: &route::RouteConfiguration,
) -> listener::Listener {
    if !l.tcp_proxies.is_empty() {
        return tls_proxy_listener(l, certificates, options);
    }
    let route_specifier = match options.delivery {
        Delivery::Ads => hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(ads_config_source()),
            route_config_name: l.name.clone(),
        }),
        Delivery::Inline => {
            hcm::http_connection_manager::RouteSpecifier::RouteConfig(routes.clone())
        }
    };
    let access_log = stdout_access_log(ACCESS_LOG_FORMAT);
    let manager = hcm::HttpConnectionManager {
        stat_prefix: l.name.clone(),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(route_specifier),
        http_filters: backendtls_filter(&options.filter)
            .into_iter()
            .chain([hcm::HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
                    &Router::default(),
                ))),
                ..Default::default()
            }])
            .collect(),
        access_log: vec![access_log],
        // The port in Host is ignored by the route configuration (`ignore_port_in_host_matching`)
        // and reaches the backend as the client sent it.
        ..Default::default()
    };
    let filters = vec![listener::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pack(&manager))),
    }];
    if l.tls.is_empty() {
        return listener::Listener {
            name: l.name.clone(),
            address: Some(socket_address(&options.listener_address, l.port)),
            filter_chains: vec![listener::FilterChain { filters, ..Default::default() }],
            ..Default::default()
        };
    }
    // HTTPS: the TLS inspector reads the SNI, which picks the chain of the listener with that
    // hostname (Envoy prefers an exact name to the longest wildcard); the chain without hostname
    // takes any other SNI or none. Certificates come over SDS under names that do not change with
    // their content, so a rotation updates the secret and never this listener.
    let filter_chains = l
        .tls
        .iter()
        .map(|chain| listener::FilterChain {
            name: chain.hostname.clone().unwrap_or_else(|| "default".into()),
            filter_chain_match: chain.hostname.as_ref().map(|hostname| {
                listener::FilterChainMatch {
                    server_names: vec![hostname.clone()],
                    ..Default::default()
                }
            }),
            filters: filters.clone(),
            transport_socket: Some(core::TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
                    &downstream_tls_context(
                        &chain.certificates,
                        &["h2", "http/1.1"],
                        certificates,
                        options,
                    ),
                ))),
            }),
            ..Default::default()
        })
        .collect();
    listener::Listener {
        name: l.name.clone(),
        address: Some(socket_address(&options.listener_address, l.port)),
        listener_filters: vec![tls_inspector()],
        filter_chains,
        ..Default::default()
    }
}

/// A TLS listener (protocol TLS, TLSRoutes): the TLS inspector reads the SNI, which picks the
/// chain of the route hostname (exact before the longest wildcard, as Envoy matches
/// `server_names`); each chain terminates TLS with its listener's certificate (over SDS) and hands
/// the stream to a TCP proxy to the route's clusters. These are the Service ports' own clusters,
/// so a BackendTLSPolicy re-encrypts there. An SNI no chain takes gets no handshake: Envoy closes
/// the connection. The HTTP filter does not run here (no HTTP); the clusters' `ssl.*` stats count.
fn tls_proxy_listener(
    l: &ir::Listener,
    certificates: &Certificates,
    options: &TranslateOptions,
) -> listener::Listener {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    let filter_chains = l
        .tcp_proxies
        .iter()
        .map(|proxy| {
            let cluster_specifier = match &proxy.clusters[..] {
                [one] => tcp::tcp_proxy::ClusterSpecifier::Cluster(one.cluster.clone()),
                several => tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(
                    tcp::tcp_proxy::WeightedCluster {
                        clusters: several
                            .iter()
                            .map(|c| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                                name: c.cluster.clone(),
                                weight: c.weight,
                                ..Default::default()
                            })
                            .collect(),
                    },
                ),
            };
            let proxy_config = tcp::TcpProxy {
                stat_prefix: l.name.clone(),
                cluster_specifier: Some(cluster_specifier),
                access_log: vec![stdout_access_log(TCP_ACCESS_LOG_FORMAT)],
                ..Default::default()
            };
            listener::FilterChain {
                name: proxy.hostname.clone().unwrap_or_else(|| "default".into()),
                filter_chain_match: proxy.hostname.as_ref().map(|hostname| {
                    listener::FilterChainMatch {
                        server_names: vec![hostname.clone()],
                        ..Default::default()
                    }
                }),
                filters: vec![listener::Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(listener::filter::ConfigType::TypedConfig(pack(
                        &proxy_config,
                    ))),
                }],
                transport_socket: Some(core::TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
                        // No ALPN: the stream is opaque to the Gateway.
                        &downstream_tls_context(&proxy.certificates, &[], certificates, options),
                    ))),
                }),
                ..Default::default()
            }
        })
        .collect();
    listener::Listener {
        name: l.name.clone(),
        address: Some(socket_address(&options.listener_address, l.port)),
        listener_filters: vec![tls_inspector()],
        filter_chains,
        ..Default::default()
    }
}

fn tls_inspector() -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pack(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The TLS a listener terminates: its certificates (over SDS; inline with `render`) and the ALPN
/// protocols it offers.
fn downstream_tls_context(
    chain_certificates: &[String],
    alpn: &[&str],
    certificates: &Certificates,
    options: &TranslateOptions,
) -> tls::DownstreamTlsContext {
    let mut common = tls::CommonTlsContext {
        alpn_protocols: alpn.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    match options.delivery {
        Delivery::Ads => {
            common.tls_certificate_sds_secret_configs = chain_certificates
                .iter()
                .map(|name| tls::SdsSecretConfig {
                    name: name.clone(),
                    sds_config: Some(ads_config_source()),
                })
                .collect()
        }
        Delivery::Inline => {
            common.tls_certificates = chain_certificates
                .iter()
                .filter_map(|name| certificates.get(name))
                .map(|c| static_client_certificate(c, &options.private_keys))
                .collect()
        }
    }
    tls::DownstreamTlsContext { common_tls_context: Some(common), ..Default::default() }
}

/// The filter's own configuration, passed to both builds as a JSON string.
pub fn filter_config_json(filter: &Filter) -> String {
    serde_json::json!({ "request_header": filter.request_header }).to_string()
}

pub(super) fn backendtls_filter(filter: &Filter) -> Option<hcm::HttpFilter> {
    use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
    use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    use envoy_types::pb::envoy::extensions::wasm::v3::{plugin_config, PluginConfig, VmConfig};
    let configuration = Some(pack(&pb::StringValue { value: filter_config_json(filter) }));
    let local_file = |path: &std::path::Path| core::AsyncDataSource {
        specifier: Some(core::async_data_source::Specifier::Local(core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(path.display().to_string())),
            ..Default::default()
        })),
    };
    let (name, config) = match &filter.build {
        FilterBuild::None => return None,
        FilterBuild::Wasm { path } => (
            "envoy.filters.http.wasm",
            pack(&Wasm {
                config: Some(PluginConfig {
                    name: contract::stats::FAMILY.into(),
                    root_id: contract::stats::FAMILY.into(),
                    configuration,
                    vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                        vm_id: contract::stats::FAMILY.into(),
                        runtime: "envoy.wasm.runtime.v8".into(),
                        code: Some(local_file(path)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
            }),
        ),
        FilterBuild::DynamicModule { path } => (
            "envoy.extensions.filters.http.dynamic_modules",
            pack(&DynamicModuleFilter {
                dynamic_module_config: Some(DynamicModuleConfig {
                    name: DYNAMIC_MODULE_NAME.into(),
                    module: path.as_deref().map(local_file),
                    metrics_namespace: contract::stats::FAMILY.into(),
                    ..Default::default()
                }),
                filter_name: contract::stats::FAMILY.into(),
                filter_config: configuration,
                ..Default::default()
            }),
        ),
    };
    Some(hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    })
}
