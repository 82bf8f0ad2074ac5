//! IR -> Envoy resources. The only module that knows Envoy's configuration types.
//!
//! Two shapes come out of the same code: resources for ADS (clusters with EDS endpoints and CA
//! bundles as SDS secrets) and a static bootstrap for `render` (endpoints and CAs inline).

pub use super::identity::Validator;
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
use std::collections::HashMap;
use std::sync::Arc;

mod clusters;
mod listeners;
mod routes;
mod secrets;

pub use super::snapshot::{EncodedAny, Packed, PackedResource};
use clusters::*;
use listeners::*;
use routes::*;
use secrets::*;
pub use secrets::{
    private_key_path, static_client_certificate, PrivateKeys, DEFAULT_PRIVATE_KEY_DIR,
};

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
    crate::digest::sha256_hex(bytes, 12)
}

/// Over ADS a listener names its route configuration and does not depend on the virtual hosts
/// (serializing ten thousand of them on every route change cost more than the change); inline, it
/// holds them.
fn listener_version(l: &ir::Listener, options: &TranslateOptions) -> String {
    if options.delivery == Delivery::Ads {
        fingerprint(&(&l.name, l.port, &l.tls, &l.tcp_proxies, options))
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
        let (listener, routes) = listener_resources(l, &ir.listener_certificates, options);
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

/// `render`'s translation one item at a time ([`crate::pipeline::render_document`]), so that the
/// translated structs never all live at once: a listener with its route configuration's virtual
/// hosts left out, each of those virtual hosts, and each cluster. Put back together they are
/// [`translate`]'s listeners and clusters (versions aside) under [`Delivery::Inline`].
pub(crate) mod inline {
    use super::*;

    /// The listener `translate` makes, but for the virtual hosts of its route configuration
    /// (each made by [`virtual_host`]).
    pub(crate) fn listener_without_hosts(
        l: &ir::Listener,
        ir: &Ir,
        options: &TranslateOptions,
    ) -> listener::Listener {
        let hollow = ir::Listener {
            name: l.name.clone(),
            port: l.port,
            virtual_hosts: Vec::new(),
            tls: Vec::new(),
            tcp_proxies: Vec::new(),
        };
        gateway_listener(l, &ir.listener_certificates, options, &route_configuration(&hollow))
    }

    pub(crate) fn virtual_host(vh: &ir::VirtualHost) -> route::VirtualHost {
        routes::virtual_host(vh)
    }

    pub(crate) fn cluster(
        c: &ir::Cluster,
        ir: &Ir,
        options: &TranslateOptions,
    ) -> cluster::Cluster {
        backend_cluster(c, ir, options).0
    }
}

/// A Gateway listener and, for ADS, its route configuration (none for a TLS listener, which
/// proxies TCP and has no routes).
fn listener_resources(
    l: &ir::Listener,
    certificates: &Certificates,
    options: &TranslateOptions,
) -> (Versioned<listener::Listener>, Option<Versioned<route::RouteConfiguration>>) {
    let routes = route_configuration(l);
    let listener = Versioned {
        version: listener_version(l, options),
        resource: gateway_listener(l, certificates, options, &routes),
    };
    let with_routes = options.delivery == Delivery::Ads && l.tcp_proxies.is_empty();
    (listener, with_routes.then(|| versioned(l, routes)))
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

fn pack_versioned<T: Message + Name>(v: Versioned<T>) -> Arc<PackedResource> {
    Arc::new(PackedResource { resource: pack(&v.resource).into(), version: v.version })
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
/// host and cluster with a digest of the IR they came from ([`crate::digest::digest`]). At ten thousand
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
        self.translate_changes(ir, options, None)
    }

    /// [`Self::translate`], told what changed in `ir` since the last call (`changes`, from an
    /// incremental resolution of the IR the last call was given): the rest is known unchanged
    /// and is not digested again.
    pub fn translate_changes(
        &mut self,
        ir: &Ir,
        options: &TranslateOptions,
        changes: Option<&crate::ir::IrChanges>,
    ) -> Packed {
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
            let host_digests: Vec<[u8; 16]> = l
                .virtual_hosts
                .iter()
                .map(|vh| {
                    let unchanged = changes.is_some_and(|c| !c.hosts.contains(&vh.domains[0]));
                    let known = self.virtual_hosts.get(&vh.name).filter(|_| unchanged);
                    known.map_or_else(|| crate::digest::digest(vh), |entry| entry.source)
                })
                .collect();
            // Inline, the listener holds its certificates: their content is part of its source.
            let inline_certificates: Vec<(&str, &str)> = match options.delivery {
                Delivery::Ads => Vec::new(),
                Delivery::Inline => l
                    .tls
                    .iter()
                    .flat_map(|chain| &chain.certificates)
                    .chain(l.tcp_proxies.iter().flat_map(|proxy| &proxy.certificates))
                    .filter_map(|name| ir.listener_certificates.get(name))
                    .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()))
                    .collect(),
            };
            let source = crate::digest::digest(&(
                &l.name,
                l.port,
                &l.tls,
                &l.tcp_proxies,
                &inline_certificates,
                &host_digests,
            ));
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
                _ if options.delivery == Delivery::Ads && l.tcp_proxies.is_empty() => {
                    let empty = route::RouteConfiguration::default();
                    let listener = Versioned {
                        version: listener_version(l, options),
                        resource: gateway_listener(l, &ir.listener_certificates, options, &empty),
                    };
                    let bytes = encode_route_configuration(
                        l,
                        &host_digests,
                        &mut self.virtual_hosts,
                        &mut virtual_hosts,
                    );
                    let routes = PackedResource {
                        version: digest_hex(&bytes),
                        resource: EncodedAny {
                            type_url: route::RouteConfiguration::type_url(),
                            value: bytes.into(),
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
                                ignore_port_in_host_matching: true,
                                ..Default::default()
                            }),
                            vhds_placeholder(&l.name),
                        )),
                    }
                }
                _ => {
                    let (listener, routes) =
                        listener_resources(l, &ir.listener_certificates, options);
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
            let unchanged = changes.is_some_and(|changes| !changes.clusters.contains(&c.name));
            let known = self.clusters.get(&c.name).filter(|_| unchanged);
            let source = known.map_or_else(|| crate::digest::digest(c), |entry| entry.source);
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
