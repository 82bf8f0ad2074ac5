//! IR -> Envoy resources. The only module that knows Envoy's configuration types.
//!
//! Two shapes come out of the same code: resources for ADS (clusters with EDS endpoints and CA
//! bundles as SDS secrets) and a static bootstrap for `render` (endpoints and CAs inline).

use super::bootstrap::{static_client_certificate, PrivateKeys};
use super::identity::{checked_identities, san_matchers};
use super::snapshot::VHDS_ROUTE_CONFIGURATIONS;
use crate::ir::{self, Ir, PathMatch, RouteAction, SubjectAltName, TlsVersion, Trust};
use backendtls_contract::{self as contract, Identity, IdentityCheck, PolicyState};
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::google::protobuf::{self as pb, Any, Duration};
use prost::{Message, Name};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Where endpoints and CA bundles go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Delivery {
    /// Over the ADS stream: EDS for endpoints, SDS for CA bundles, RDS for routes.
    Ads,
    /// Inline in a static bootstrap.
    Inline,
}

/// Settings that come from the command line rather than from the manifests.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TranslateOptions {
    /// Address the Gateway listeners bind to.
    pub listener_address: String,
    pub delivery: Delivery,
    pub filter: Filter,
    pub validator: Validator,
    /// Where a static bootstrap takes client certificates' private keys from (`Inline` delivery
    /// only; over ADS they travel as SDS secrets).
    pub private_keys: PrivateKeys,
}

/// Who verifies backend certificates during the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Validator {
    /// Envoy's own validation: the CA bundle (over SDS) and SAN matchers.
    #[default]
    Envoy,
    /// The filter's dynamic module (`envoy.tls.cert_validator.dynamic_modules`, rustls-webpki),
    /// with the policy's anchors and identities in its config. Envoy finds
    /// `lib<DYNAMIC_MODULE_NAME>.so` through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    DynamicModule,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            listener_address: "127.0.0.1".into(),
            delivery: Delivery::Ads,
            filter: Filter::default(),
            validator: Validator::default(),
            private_keys: PrivateKeys::default(),
        }
    }
}

/// The backendtls HTTP filter in each Gateway listener, in one of its two builds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Filter {
    pub build: FilterBuild,
    /// Name of a request header that tells the backend which policy governs it (off when None).
    pub request_header: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub enum FilterBuild {
    #[default]
    None,
    /// The proxy-wasm module (`.wasm`).
    Wasm { path: std::path::PathBuf },
    /// The dynamic module (`lib<name>.so`): from this file, or when None found by name through
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    DynamicModule { path: Option<std::path::PathBuf> },
}

/// The dynamic module's name: Envoy looks for `lib<name>.so`.
pub const DYNAMIC_MODULE_NAME: &str = "backendtls_filter";

/// An Envoy resource with a version that changes exactly when its content does.
///
/// The version is a digest of the IR value the resource was made from, not of the encoded
/// protobuf: prost encodes maps (e.g. metadata `Struct` fields) in `HashMap` order, which differs
/// from one encoding to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub version: String,
    pub resource: T,
}

/// The Envoy resources of one IR, as structs (`render`, golden files).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<Versioned<listener::Listener>>,
    pub routes: Vec<Versioned<route::RouteConfiguration>>,
    pub clusters: Vec<Versioned<cluster::Cluster>>,
    pub endpoints: Vec<Versioned<endpoint::ClusterLoadAssignment>>,
    pub secrets: Vec<Versioned<tls::Secret>>,
}

/// Digest of the serialized form of whatever a resource was built from.
fn fingerprint(source: &impl serde::Serialize) -> String {
    digest_hex(&serde_json::to_vec(source).expect("IR values serialize"))
}

fn digest_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes)[..12])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Over ADS a listener names its route configuration and does not depend on the virtual hosts
/// (serializing ten thousand of them on every route change cost more than the change); inline, it
/// holds them.
fn listener_version(l: &ir::Listener, options: &TranslateOptions) -> String {
    if options.delivery == Delivery::Ads {
        fingerprint(&(&l.name, l.port, options))
    } else {
        fingerprint(&(l, options))
    }
}

fn versioned<T>(source: &impl serde::Serialize, resource: T) -> Versioned<T> {
    Versioned { version: fingerprint(source), resource }
}

/// Translates once, into structs.
pub fn translate(ir: &Ir, options: &TranslateOptions) -> Resources {
    let mut out = Resources::default();
    for l in &ir.listeners {
        let (listener, routes) = listener_resources(l, options);
        out.listeners.push(listener);
        out.routes.extend(routes);
    }
    for c in ir.clusters.values() {
        let (cluster, load_assignment) = cluster_resources(c, ir, options);
        out.clusters.push(cluster);
        out.endpoints.extend(load_assignment);
    }
    if options.delivery == Delivery::Ads {
        out.secrets = secrets(ir);
    }
    out
}

/// A Gateway listener and, for ADS, its route configuration.
fn listener_resources(
    l: &ir::Listener,
    options: &TranslateOptions,
) -> (Versioned<listener::Listener>, Option<Versioned<route::RouteConfiguration>>) {
    let routes = route_configuration(l);
    let listener = Versioned {
        version: listener_version(l, options),
        resource: gateway_listener(l, options, &routes),
    };
    (listener, (options.delivery == Delivery::Ads).then(|| versioned(l, routes)))
}

/// A backend cluster and, for ADS, its endpoints.
fn cluster_resources(
    c: &ir::Cluster,
    ir: &Ir,
    options: &TranslateOptions,
) -> (Versioned<cluster::Cluster>, Option<Versioned<endpoint::ClusterLoadAssignment>>) {
    let (cluster, load_assignment) = backend_cluster(c, ir, options);
    // The endpoints' version follows the whole cluster, not only the addresses: when Envoy
    // replaces a cluster it waits for EDS again before the new one warms, but does not ask for a
    // resource it already holds. A new version makes the loader resend it.
    let source = (c, options.delivery, options.validator);
    (versioned(&source, cluster), load_assignment.map(|l| versioned(&source, l)))
}

/// A resource encoded for xDS, with its version.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedResource {
    /// Changes exactly when the resource does (see [`Versioned`]).
    pub version: String,
    pub resource: Any,
}

/// Encoded resources by type URL and name: what a snapshot holds.
pub type Packed = BTreeMap<String, BTreeMap<String, Arc<PackedResource>>>;

fn pack_versioned<T: Message + Name>(v: Versioned<T>) -> Arc<PackedResource> {
    Arc::new(PackedResource { resource: pack(&v.resource), version: v.version })
}

/// What one listener translated to, and the digest of the IR it came from.
struct ListenerEntry {
    source: [u8; 16],
    listener: Arc<PackedResource>,
    /// With every virtual host inline (state-of-the-world ADS, and the bytes `render` prints).
    routes: Option<Arc<PackedResource>>,
    /// Over delta ADS: the route configuration without virtual hosts, which come by VHDS, and
    /// its [`vhds_placeholder`].
    vhds_routes: Option<(Arc<PackedResource>, Arc<PackedResource>)>,
}

/// What one cluster translated to, and the digest of the IR it came from.
struct ClusterEntry {
    source: [u8; 16],
    cluster: Arc<PackedResource>,
    load_assignment: Option<Arc<PackedResource>>,
}

/// One virtual host, encoded as a VHDS resource (a route configuration with its virtual hosts
/// inline is their concatenation).
struct VirtualHostEntry {
    source: [u8; 16],
    resource: Arc<PackedResource>,
}

/// `serve`'s translation: straight to encoded resources, remembering them per listener, virtual
/// host and cluster with a digest of the IR they came from ([`ir::digest`]). At ten thousand
/// backends, rebuilding, encoding and fingerprinting every unchanged cluster would dominate the
/// time a change takes to apply, and keeping Envoy's structs (kilobytes each) or copies of the IR
/// would dominate memory. The output equals a fresh translation (tests compare them on random edit
/// sequences).
#[derive(Default)]
pub struct Translator {
    /// The options the cache was filled under; a change clears it.
    options: Option<String>,
    listeners: HashMap<String, ListenerEntry>,
    clusters: HashMap<String, ClusterEntry>,
    virtual_hosts: HashMap<String, VirtualHostEntry>,
}

impl Translator {
    pub fn translate(&mut self, ir: &Ir, options: &TranslateOptions) -> Packed {
        let options_key = serde_json::to_string(options).expect("options serialize");
        if self.options.as_ref() != Some(&options_key) {
            *self = Translator { options: Some(options_key), ..Default::default() };
        }
        let mut out = Packed::new();
        let mut put = |type_url: String, name: &str, resource: &Arc<PackedResource>| {
            out.entry(type_url).or_default().insert(name.to_string(), resource.clone());
        };
        let mut listeners = HashMap::with_capacity(ir.listeners.len());
        let mut virtual_hosts = HashMap::new();
        for l in &ir.listeners {
            // Per virtual host first: the listener's digest is over theirs.
            let host_digests: Vec<[u8; 16]> = l.virtual_hosts.iter().map(ir::digest).collect();
            let source = ir::digest(&(&l.name, l.port, &host_digests));
            let entry = match self.listeners.remove(&l.name) {
                Some(entry) if entry.source == source => {
                    // Keep its virtual hosts' encodings for the next change.
                    for vh in &l.virtual_hosts {
                        if let Some(entry) = self.virtual_hosts.remove(&vh.name) {
                            virtual_hosts.insert(vh.name.clone(), entry);
                        }
                    }
                    entry
                }
                _ if options.delivery == Delivery::Ads => {
                    let empty = route::RouteConfiguration::default();
                    let listener = Versioned {
                        version: listener_version(l, options),
                        resource: gateway_listener(l, options, &empty),
                    };
                    let bytes = encode_route_configuration(
                        l,
                        &host_digests,
                        &mut self.virtual_hosts,
                        &mut virtual_hosts,
                    );
                    let routes = PackedResource {
                        version: digest_hex(&bytes),
                        resource: Any {
                            type_url: route::RouteConfiguration::type_url(),
                            value: bytes,
                        },
                    };
                    ListenerEntry {
                        source,
                        listener: pack_versioned(listener),
                        routes: Some(Arc::new(routes)),
                        vhds_routes: Some((
                            pack_by_content(&route::RouteConfiguration {
                                name: l.name.clone(),
                                vhds: Some(route::Vhds {
                                    config_source: Some(ads_config_source()),
                                }),
                                ..Default::default()
                            }),
                            vhds_placeholder(&l.name),
                        )),
                    }
                }
                _ => {
                    let (listener, routes) = listener_resources(l, options);
                    ListenerEntry {
                        source,
                        listener: pack_versioned(listener),
                        routes: routes.map(pack_versioned),
                        vhds_routes: None,
                    }
                }
            };
            put(listener::Listener::type_url(), &l.name, &entry.listener);
            if let Some(routes) = &entry.routes {
                put(route::RouteConfiguration::type_url(), &l.name, routes);
            }
            if let Some((routes, placeholder)) = &entry.vhds_routes {
                put(VHDS_ROUTE_CONFIGURATIONS.to_string(), &l.name, routes);
                put(route::VirtualHost::type_url(), &placeholder_name(&l.name), placeholder);
                for vh in &l.virtual_hosts {
                    let host = &virtual_hosts[&vh.name];
                    put(route::VirtualHost::type_url(), &vh.name, &host.resource);
                }
            }
            listeners.insert(l.name.clone(), entry);
        }
        self.listeners = listeners;
        self.virtual_hosts = virtual_hosts;
        let mut clusters = HashMap::with_capacity(ir.clusters.len());
        for c in ir.clusters.values() {
            let source = ir::digest(c);
            let entry = match self.clusters.remove(&c.name) {
                Some(entry) if entry.source == source => entry,
                _ => {
                    let (cluster, load_assignment) = cluster_resources(c, ir, options);
                    ClusterEntry {
                        source,
                        cluster: pack_versioned(cluster),
                        load_assignment: load_assignment.map(pack_versioned),
                    }
                }
            };
            put(cluster::Cluster::type_url(), &c.name, &entry.cluster);
            if let Some(load_assignment) = &entry.load_assignment {
                put(endpoint::ClusterLoadAssignment::type_url(), &c.name, load_assignment);
            }
            clusters.insert(c.name.clone(), entry);
        }
        self.clusters = clusters;
        if options.delivery == Delivery::Ads {
            for secret in secrets(ir) {
                let name = secret.resource.name.clone();
                put(tls::Secret::type_url(), &name, &pack_versioned(secret));
            }
        }
        out
    }
}

/// CA bundles and client certificates as SDS secrets. Their names are content-addressed, so the
/// name is the version.
fn secrets(ir: &Ir) -> Vec<Versioned<tls::Secret>> {
    let mut out = Vec::new();
    for (name, bundle) in &ir.ca_bundles {
        let context = tls::CertificateValidationContext {
            trusted_ca: Some(inline_string(&bundle.pem)),
            ..Default::default()
        };
        let secret = tls::Secret {
            name: name.clone(),
            r#type: Some(tls::secret::Type::ValidationContext(context)),
        };
        out.push(Versioned { version: name.clone(), resource: secret });
    }
    for (name, certificate) in &ir.client_certificates {
        let secret = tls::Secret {
            name: name.clone(),
            r#type: Some(tls::secret::Type::TlsCertificate(client_tls_certificate(certificate))),
        };
        out.push(Versioned { version: name.clone(), resource: secret });
    }
    out
}

fn client_tls_certificate(certificate: &ir::ClientCertificate) -> tls::TlsCertificate {
    tls::TlsCertificate {
        certificate_chain: Some(inline_string(&certificate.cert_pem)),
        private_key: Some(inline_string(&certificate.key_pem)),
        ..Default::default()
    }
}

pub fn pack<T: Message + Name>(message: &T) -> Any {
    Any { type_url: T::type_url(), value: message.encode_to_vec() }
}

pub fn ads_config_source() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub fn socket_address(address: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: address.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

fn inline_string(text: &str) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    }
}

fn seconds(s: i64) -> Option<Duration> {
    Some(Duration { seconds: s, nanos: 0 })
}

// ---------------------------------------------------------------------------------------------
// Listeners and routes

/// What the access log prints per request: enough to see which backend answered and why a
/// handshake failed.
const ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% host=%REQ(:AUTHORITY)% cluster=%UPSTREAM_CLUSTER% upstream=%UPSTREAM_HOST% tls=%UPSTREAM_TLS_VERSION% failure=\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" backendtls=%DYNAMIC_METADATA(backendtls)% backendtls_wasm=%FILTER_STATE(wasm.backendtls:PLAIN)%\n";

fn gateway_listener(
    l: &ir::Listener,
    options: &TranslateOptions,
    routes: &route::RouteConfiguration,
) -> listener::Listener {
    let route_specifier = match options.delivery {
        Delivery::Ads => hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(ads_config_source()),
            route_config_name: l.name.clone(),
        }),
        Delivery::Inline => {
            hcm::http_connection_manager::RouteSpecifier::RouteConfig(routes.clone())
        }
    };
    let access_log = envoy_types::pb::envoy::config::accesslog::v3::AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(pack(
                &StdoutAccessLog {
                    access_log_format: Some(
                        envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat::LogFormat(
                            core::SubstitutionFormatString {
                                format: Some(core::substitution_format_string::Format::TextFormatSource(
                                    inline_string(ACCESS_LOG_FORMAT),
                                )),
                                ..Default::default()
                            },
                        ),
                    ),
                },
            )),
        ),
        ..Default::default()
    };
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
        // The guide's curl sends `host: example.com:8080`; routes match on the hostname alone.
        strip_port_mode: Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true)),
        ..Default::default()
    };
    listener::Listener {
        name: l.name.clone(),
        address: Some(socket_address(&options.listener_address, l.port)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pack(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The filter's own configuration, passed to both builds as a JSON string.
pub fn filter_config_json(filter: &Filter) -> String {
    serde_json::json!({ "request_header": filter.request_header }).to_string()
}

fn backendtls_filter(filter: &Filter) -> Option<hcm::HttpFilter> {
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

fn route_configuration(l: &ir::Listener) -> route::RouteConfiguration {
    let virtual_hosts = l.virtual_hosts.iter().map(virtual_host).collect();
    route::RouteConfiguration { name: l.name.clone(), virtual_hosts, ..Default::default() }
}

fn virtual_host(vh: &ir::VirtualHost) -> route::VirtualHost {
    route::VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes: vh.routes.iter().map(envoy_route).collect(),
        ..Default::default()
    }
}

/// The host part of [`vhds_placeholder`]'s name and its one domain: not a valid Gateway API
/// hostname (those have no `_`), so no route's virtual host can take it.
const PLACEHOLDER_HOST: &str = "backendtls_placeholder";

/// `<route configuration>/<host>`, as `resolve` names virtual hosts for VHDS.
fn placeholder_name(route_configuration: &str) -> String {
    format!("{route_configuration}/{PLACEHOLDER_HOST}")
}

/// A virtual host without routes, served over VHDS for every route configuration: Envoy keeps a
/// listener warming until its VHDS subscription receives something and does not pass it an
/// empty update, so a Gateway listener without routes would wait out Envoy's fetch timeout
/// (15 s). Without routes it answers like no virtual host at all (404).
fn vhds_placeholder(route_configuration: &str) -> Arc<PackedResource> {
    let host = route::VirtualHost {
        name: placeholder_name(route_configuration),
        domains: vec![PLACEHOLDER_HOST.to_string()],
        ..Default::default()
    };
    pack_by_content(&host)
}

/// Encoded, with a digest of the encoding as its version.
fn pack_by_content<T: Message + Name>(message: &T) -> Arc<PackedResource> {
    let resource = pack(message);
    Arc::new(PackedResource { version: digest_hex(&resource.value), resource })
}

/// The encoded [`route_configuration`], built one virtual host at a time from `cache` (virtual
/// hosts by name, encoded as VHDS resources, with the digest of the IR they came from), which is
/// refilled with what this listener uses. Protobuf encodes a repeated field as its elements one
/// after the other, so the bytes are exactly those of the whole message; at ten thousand hosts
/// this avoids a struct of tens of megabytes per change and re-encoding the hosts that did not
/// change.
fn encode_route_configuration(
    l: &ir::Listener,
    host_digests: &[[u8; 16]],
    cache: &mut HashMap<String, VirtualHostEntry>,
    next_cache: &mut HashMap<String, VirtualHostEntry>,
) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut out = Vec::new();
    // RouteConfiguration: name = 1, virtual_hosts = 2.
    prost::encoding::string::encode(1, &l.name, &mut out);
    for (vh, &source) in l.virtual_hosts.iter().zip(host_digests) {
        let entry = match cache.remove(&vh.name) {
            Some(entry) if entry.source == source => entry,
            _ => {
                let resource = PackedResource {
                    version: hex(&source[..12]),
                    resource: pack(&virtual_host(vh)),
                };
                VirtualHostEntry { source, resource: Arc::new(resource) }
            }
        };
        let encoded = &entry.resource.resource.value;
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(encoded.len() as u64, &mut out);
        out.extend_from_slice(encoded);
        next_cache.insert(vh.name.clone(), entry);
    }
    out
}

fn envoy_route(r: &ir::Route) -> route::Route {
    use route::route_match::PathSpecifier;
    let path_specifier = match &r.path {
        PathMatch::Exact(path) => PathSpecifier::Path(path.clone()),
        PathMatch::Prefix(prefix) => {
            // Gateway API prefixes match whole segments; a trailing slash is insignificant.
            let trimmed = prefix.trim_end_matches('/');
            if trimmed.is_empty() {
                PathSpecifier::Prefix("/".into())
            } else {
                PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
            }
        }
    };
    let action = match &r.action {
        RouteAction::Respond { status, body } => {
            route::route::Action::DirectResponse(route::DirectResponseAction {
                status: *status,
                body: Some(inline_string(body)),
                ..Default::default()
            })
        }
        RouteAction::Forward(backends) => {
            let cluster_specifier = match backends.as_slice() {
                [only] => route::route_action::ClusterSpecifier::Cluster(only.cluster.clone()),
                many => route::route_action::ClusterSpecifier::WeightedClusters(
                    route::WeightedCluster {
                        clusters: many
                            .iter()
                            .map(|b| route::weighted_cluster::ClusterWeight {
                                name: b.cluster.clone(),
                                weight: Some(pb::UInt32Value { value: b.weight }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    },
                ),
            };
            route::route::Action::Route(route::RouteAction {
                cluster_specifier: Some(cluster_specifier),
                ..Default::default()
            })
        }
    };
    route::Route {
        name: r.name.clone(),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(path_specifier),
            ..Default::default()
        }),
        action: Some(action),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Clusters

fn backend_cluster(
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
                        eds_config: Some(ads_config_source()),
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
    if let Some((policy, identities)) = &checked {
        out.typed_extension_protocol_options =
            alpn_protocol_options(&policy.params.alpn).unwrap_or_default();
        out.transport_socket = Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
                &upstream_tls(policy, identities, ir, options),
            ))),
        });
    }
    (out, eds)
}

/// The cluster's policy as translated, with the identities its TLS context checks. A policy whose
/// names Envoy, the filter or the validator would refuse ([`checked_identities`]) is unusable
/// too: it fails closed here, rather than in a NACK that would leave Envoy's previous cluster (a
/// plaintext one, perhaps) in place.
fn checked_policy(
    policy: &ir::BackendTls,
    validator: Validator,
) -> (std::borrow::Cow<'_, ir::BackendTls>, Vec<Identity>) {
    use std::borrow::Cow;
    if let Trust::Unusable { .. } = policy.trust {
        return (Cow::Borrowed(policy), Vec::new());
    }
    match checked_identities(policy, validator) {
        Ok(identities) => (Cow::Borrowed(policy), identities),
        Err(reason) => {
            let unusable = ir::BackendTls { trust: Trust::Unusable { reason }, ..policy.clone() };
            (Cow::Owned(unusable), Vec::new())
        }
    }
}

fn upstream_tls(
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
fn module_validator(
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
fn alpn_protocol_options(alpn: &[String]) -> Option<HashMap<String, Any>> {
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
fn policy_metadata(
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
