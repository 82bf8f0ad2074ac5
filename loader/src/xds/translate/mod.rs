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
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod clusters;
mod listeners;
mod routes;
mod secrets;

use super::shared_map::SharedMap;
pub use super::snapshot::{EncodedAny, InlineHost, InlineRoutes, Packed, PackedResource, Snapshot};
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
    let version = fingerprint(&(c, options.delivery, options.validator));
    let load_assignment =
        load_assignment.map(|resource| Versioned { version: version.clone(), resource });
    (Versioned { version, resource: cluster }, load_assignment)
}

fn pack_versioned<T: Message + Name>(v: Versioned<T>) -> Arc<PackedResource> {
    Arc::new(PackedResource { resource: pack(&v.resource).into(), version: v.version })
}

/// What one listener translated to, and the digest of the IR it came from.
struct ListenerEntry {
    /// Over delta ADS without its virtual hosts, which [`Vhds::hosts`] keeps one by one.
    source: [u8; 16],
    listener: Arc<PackedResource>,
    /// Without VHDS: with every virtual host inline.
    routes: Option<Arc<PackedResource>>,
    vhds: Option<Vhds>,
}

/// A listener's route configuration over delta ADS: without virtual hosts, which come one by one
/// by VHDS.
struct Vhds {
    routes: Arc<PackedResource>,
    /// Its [`vhds_placeholder`].
    placeholder: Arc<PackedResource>,
    /// Its virtual hosts by name (`<listener>/<host>`, so in the IR's order, by host).
    hosts: SharedMap<String, InlineHost>,
    /// For state-of-the-world ADS (and the bytes `render` prints): with every virtual host
    /// inline, encoded on demand.
    inline: Arc<InlineRoutes>,
}

/// What one cluster translated to, and the digest of the IR it came from.
struct ClusterEntry {
    source: [u8; 16],
    cluster: Arc<PackedResource>,
    load_assignment: Option<Arc<PackedResource>>,
}

/// The type URLs of [`Packed`], made once per translation.
struct TypeUrls {
    listeners: String,
    routes: String,
    vhds_routes: String,
    virtual_hosts: String,
    clusters: String,
    endpoints: String,
    secrets: String,
}

impl TypeUrls {
    fn new() -> Self {
        TypeUrls {
            listeners: listener::Listener::type_url(),
            routes: route::RouteConfiguration::type_url(),
            vhds_routes: VHDS_ROUTE_CONFIGURATIONS.to_string(),
            virtual_hosts: route::VirtualHost::type_url(),
            clusters: cluster::Cluster::type_url(),
            endpoints: endpoint::ClusterLoadAssignment::type_url(),
            secrets: tls::Secret::type_url(),
        }
    }
}

/// The resources of one type in [`Packed`].
type PackedType = SharedMap<String, Arc<PackedResource>>;

/// Puts `resource` under `name`, unless that very resource is there already (which keeps the run
/// it is in shared with the previous snapshot).
fn put(map: &mut PackedType, name: &str, resource: &Arc<PackedResource>) {
    if !map.get(name).is_some_and(|r| Arc::ptr_eq(r, resource)) {
        map.insert(name.to_string(), resource.clone());
    }
}

/// `serve`'s translation: straight to encoded resources, remembering them per listener, virtual
/// host and cluster with a digest of the IR they came from ([`crate::digest::digest`]), and the
/// whole output, which each call changes where the IR did. At 100,000 backends, rebuilding,
/// encoding and fingerprinting every unchanged cluster, or even listing every resource again,
/// would dominate the time a change takes to apply; keeping Envoy's structs (kilobytes each) or
/// copies of the IR would dominate memory. The output's maps share what did not change with the
/// previous call's ([`super::shared_map`]), so that snapshots cost the change, and comparing one
/// with the previous one too. The output equals a fresh translation (tests compare them on
/// random edit sequences).
#[derive(Default)]
pub struct Translator {
    /// The options the cache was filled under; a change clears it.
    options: Option<String>,
    listeners: HashMap<String, ListenerEntry>,
    clusters: HashMap<String, ClusterEntry>,
    /// The output: what the entries above hold, and the secrets.
    out: Packed,
    /// The output's route configurations with virtual hosts inline.
    inline: BTreeMap<String, Arc<InlineRoutes>>,
}

impl Translator {
    pub fn translate(&mut self, ir: &Ir, options: &TranslateOptions) -> Packed {
        self.translate_changes(ir, options, None)
    }

    /// [`Self::translate`], told what changed in `ir` since the last call (`changes`, from an
    /// incremental resolution of the IR the last call was given): only those clusters and
    /// virtual hosts are looked at, the rest is known unchanged. Every route configuration is
    /// encoded, those with inline virtual hosts included (which [`Self::snapshot`] leaves to
    /// the first state-of-the-world stream that wants them).
    pub fn translate_changes(
        &mut self,
        ir: &Ir,
        options: &TranslateOptions,
        changes: Option<&crate::ir::IrChanges>,
    ) -> Packed {
        self.update(ir, options, changes);
        let mut out = self.out.clone();
        for (name, routes) in &self.inline {
            let rds = out.entry(route::RouteConfiguration::type_url()).or_default();
            rds.insert(name.clone(), routes.resource().clone());
        }
        out
    }

    /// `serve`'s translation: [`Self::translate_changes`] as snapshot `version`, whose route
    /// configurations with inline virtual hosts are encoded on first use.
    pub fn snapshot(
        &mut self,
        ir: &Ir,
        options: &TranslateOptions,
        changes: Option<&crate::ir::IrChanges>,
        version: u64,
    ) -> Snapshot {
        self.update(ir, options, changes);
        Snapshot::with_inline_routes(version, self.out.clone(), self.inline.clone())
    }

    fn update(
        &mut self,
        ir: &Ir,
        options: &TranslateOptions,
        changes: Option<&crate::ir::IrChanges>,
    ) {
        let options_key = serde_json::to_string(options).expect("options serialize");
        if self.options.as_ref() != Some(&options_key) {
            *self = Translator { options: Some(options_key), ..Default::default() };
        }
        let types = TypeUrls::new();
        for type_url in [
            &types.listeners,
            &types.routes,
            &types.vhds_routes,
            &types.virtual_hosts,
            &types.clusters,
            &types.endpoints,
            &types.secrets,
        ] {
            self.out.entry(type_url.clone()).or_default();
        }
        self.update_listeners(ir, options, changes, &types);
        self.update_clusters(ir, options, changes, &types);
        if options.delivery == Delivery::Ads {
            self.update_secrets(ir, &types);
        }
        self.out.retain(|_, resources| !resources.is_empty());
    }

    fn update_listeners(
        &mut self,
        ir: &Ir,
        options: &TranslateOptions,
        changes: Option<&crate::ir::IrChanges>,
        types: &TypeUrls,
    ) {
        let mut previous = std::mem::take(&mut self.listeners);
        for l in &ir.listeners {
            let with_vhds = options.delivery == Delivery::Ads && l.tcp_proxies.is_empty();
            // Without VHDS the listener (inline) or its route configuration holds every virtual
            // host: their content is part of its source.
            let host_digests: Vec<[u8; 16]> = match with_vhds {
                true => Vec::new(),
                false => l.virtual_hosts.iter().map(crate::digest::digest).collect(),
            };
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
                with_vhds,
            ));
            let entry = match previous.remove(&l.name) {
                Some(mut entry) if entry.source == source => {
                    if let Some(vhds) = &mut entry.vhds {
                        let out = self.out.get_mut(&types.virtual_hosts).expect("made above");
                        let mut len = vhds.inline.len();
                        let changed = changes.map(|c| &c.hosts);
                        if update_hosts(l, &mut vhds.hosts, &mut len, changed, out) {
                            let hosts = vhds.hosts.clone();
                            vhds.inline = Arc::new(InlineRoutes::new(l.name.clone(), hosts, len));
                            self.inline.insert(l.name.clone(), vhds.inline.clone());
                        }
                    }
                    entry
                }
                old => {
                    let old = old.and_then(|old| self.unpublish_listener(&l.name, old, types));
                    let entry = self.new_listener(l, ir, options, source, with_vhds, old, types);
                    self.publish_listener(&l.name, &entry, types);
                    entry
                }
            };
            self.listeners.insert(l.name.clone(), entry);
        }
        for (name, gone) in previous {
            if let Some((hosts, _)) = self.unpublish_listener(&name, gone, types) {
                let out = self.out.get_mut(&types.virtual_hosts).expect("made above");
                for host in hosts.keys() {
                    out.remove(host.as_str());
                }
            }
        }
    }

    /// A listener translated anew; `old`: its virtual hosts as they were (reused where their
    /// source is the same) and their inline route configuration, which it publishes (the rest
    /// of it is published by [`Self::publish_listener`]).
    #[allow(clippy::too_many_arguments)]
    fn new_listener(
        &mut self,
        l: &ir::Listener,
        ir: &Ir,
        options: &TranslateOptions,
        source: [u8; 16],
        with_vhds: bool,
        old: Option<(SharedMap<String, InlineHost>, Arc<InlineRoutes>)>,
        types: &TypeUrls,
    ) -> ListenerEntry {
        let out = self.out.get_mut(&types.virtual_hosts).expect("made above");
        let (hosts, old_inline) = old.unzip();
        let mut hosts = hosts.unwrap_or_default();
        if !with_vhds {
            for host in hosts.keys() {
                out.remove(host.as_str());
            }
            let (listener, routes) = listener_resources(l, &ir.listener_certificates, options);
            return ListenerEntry {
                source,
                listener: pack_versioned(listener),
                routes: routes.map(pack_versioned),
                vhds: None,
            };
        }
        let empty = route::RouteConfiguration::default();
        let listener = Versioned {
            version: listener_version(l, options),
            resource: gateway_listener(l, &ir.listener_certificates, options, &empty),
        };
        let mut len = 0;
        let changed = update_hosts(l, &mut hosts, &mut len, None, out);
        let inline = match old_inline {
            Some(inline) if !changed && inline.name() == l.name => inline,
            _ => {
                let len = InlineRoutes::encoded_len(&l.name, &hosts);
                Arc::new(InlineRoutes::new(l.name.clone(), hosts.clone(), len))
            }
        };
        ListenerEntry {
            source,
            listener: pack_versioned(listener),
            routes: None,
            vhds: Some(Vhds {
                routes: pack_by_content(&route::RouteConfiguration {
                    name: l.name.clone(),
                    vhds: Some(route::Vhds { config_source: Some(ads_config_source()) }),
                    ignore_port_in_host_matching: true,
                    ..Default::default()
                }),
                placeholder: vhds_placeholder(&l.name),
                hosts,
                inline,
            }),
        }
    }

    /// Puts a listener's resources in the output, its virtual hosts aside (see
    /// [`update_hosts`]).
    fn publish_listener(&mut self, name: &str, entry: &ListenerEntry, types: &TypeUrls) {
        let out = &mut self.out;
        put(out.get_mut(&types.listeners).expect("made"), name, &entry.listener);
        if let Some(routes) = &entry.routes {
            put(out.get_mut(&types.routes).expect("made"), name, routes);
        }
        if let Some(vhds) = &entry.vhds {
            put(out.get_mut(&types.vhds_routes).expect("made"), name, &vhds.routes);
            let placeholder = placeholder_name(name);
            put(out.get_mut(&types.virtual_hosts).expect("made"), &placeholder, &vhds.placeholder);
            self.inline.insert(name.to_string(), vhds.inline.clone());
        }
    }

    /// Takes a listener's resources out of the output, its virtual hosts aside: returns them,
    /// still published, and their inline route configuration.
    fn unpublish_listener(
        &mut self,
        name: &str,
        entry: ListenerEntry,
        types: &TypeUrls,
    ) -> Option<(SharedMap<String, InlineHost>, Arc<InlineRoutes>)> {
        self.inline.remove(name);
        let out = &mut self.out;
        out.get_mut(&types.listeners).expect("made").remove(name);
        out.get_mut(&types.routes).expect("made").remove(name);
        out.get_mut(&types.vhds_routes).expect("made").remove(name);
        out.get_mut(&types.virtual_hosts).expect("made").remove(placeholder_name(name).as_str());
        entry.vhds.map(|v| (v.hosts, v.inline))
    }

    fn update_clusters(
        &mut self,
        ir: &Ir,
        options: &TranslateOptions,
        changes: Option<&crate::ir::IrChanges>,
        types: &TypeUrls,
    ) {
        match changes {
            Some(changes) => {
                for name in &changes.clusters {
                    self.update_cluster(name, ir.clusters.get(name), ir, options, types);
                }
            }
            None => {
                // Everything is looked at: on both cores when there is much to translate (the
                // first build at 100,000 backends), put in place in name order either way.
                let translated = self.translate_clusters(ir, options);
                for (name, translated) in ir.clusters.keys().zip(translated) {
                    if let Some(entry) = translated {
                        self.put_cluster(name, entry, types);
                    }
                }
                let gone: Vec<String> = self
                    .clusters
                    .keys()
                    .filter(|name| !ir.clusters.contains_key(*name))
                    .cloned()
                    .collect();
                for name in gone {
                    self.update_cluster(&name, None, ir, options, types);
                }
            }
        }
    }

    /// Brings cluster `name` up to date with `cluster`, its IR (None: gone).
    fn update_cluster(
        &mut self,
        name: &str,
        cluster: Option<&ir::Cluster>,
        ir: &Ir,
        options: &TranslateOptions,
        types: &TypeUrls,
    ) {
        let Some(c) = cluster else {
            if self.clusters.remove(name).is_some() {
                self.out.get_mut(&types.clusters).expect("made").remove(name);
                self.out.get_mut(&types.endpoints).expect("made").remove(name);
            }
            return;
        };
        if let Some(entry) = self.translate_cluster(name, c, ir, options) {
            self.put_cluster(name, entry, types);
        }
    }

    /// Cluster `c` translated, unless what the cache holds for it came from the same IR.
    fn translate_cluster(
        &self,
        name: &str,
        c: &ir::Cluster,
        ir: &Ir,
        options: &TranslateOptions,
    ) -> Option<ClusterEntry> {
        let source = crate::digest::digest(c);
        if self.clusters.get(name).is_some_and(|entry| entry.source == source) {
            return None;
        }
        let (cluster, load_assignment) = cluster_resources(c, ir, options);
        Some(ClusterEntry {
            source,
            cluster: pack_versioned(cluster),
            load_assignment: load_assignment.map(pack_versioned),
        })
    }

    /// [`Self::translate_cluster`] of every cluster of `ir`, in its order: split between two
    /// threads when there are many.
    fn translate_clusters(&self, ir: &Ir, options: &TranslateOptions) -> Vec<Option<ClusterEntry>> {
        const PARALLEL_FROM: usize = 2_000;
        let clusters: Vec<(&String, &ir::Cluster)> = ir.clusters.iter().collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
        if clusters.len() < PARALLEL_FROM || threads < 2 {
            return clusters
                .iter()
                .map(|(n, c)| self.translate_cluster(n, c, ir, options))
                .collect();
        }
        let (first, second) = clusters.split_at(clusters.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                let translate =
                    |(n, c): &(&String, &ir::Cluster)| self.translate_cluster(n, c, ir, options);
                second.iter().map(translate).collect::<Vec<_>>()
            });
            let mut out: Vec<Option<ClusterEntry>> =
                first.iter().map(|(n, c)| self.translate_cluster(n, c, ir, options)).collect();
            out.extend(other.join().expect("translating clusters does not panic"));
            out
        })
    }

    fn put_cluster(&mut self, name: &str, entry: ClusterEntry, types: &TypeUrls) {
        let clusters = self.out.get_mut(&types.clusters).expect("made");
        clusters.insert(name.into(), entry.cluster.clone());
        let endpoints = self.out.get_mut(&types.endpoints).expect("made");
        match &entry.load_assignment {
            Some(load_assignment) => {
                endpoints.insert(name.into(), load_assignment.clone());
            }
            None => {
                endpoints.remove(name);
            }
        }
        self.clusters.insert(name.into(), entry);
    }

    /// CA bundles, client and listener certificates: few (CA bundles are named by their content,
    /// so that backends sharing a CA share its secret), each encoded only when its version is not
    /// the one published.
    fn update_secrets(&mut self, ir: &Ir, types: &TypeUrls) {
        let out = self.out.get_mut(&types.secrets).expect("made above");
        let mut wanted: std::collections::HashSet<&str> = std::collections::HashSet::new();
        fn update(
            out: &mut PackedType,
            name: &str,
            version: String,
            secret: &dyn Fn() -> tls::Secret,
        ) {
            if out.get(name).is_none_or(|r| r.version != version) {
                let packed = pack_versioned(Versioned { version, resource: secret() });
                out.insert(name.to_string(), packed);
            }
        }
        for (name, bundle) in &ir.ca_bundles {
            wanted.insert(name);
            update(out, name, name.clone(), &|| ca_bundle_secret(name, bundle));
        }
        for (name, certificate) in &ir.client_certificates {
            wanted.insert(name);
            update(out, name, name.clone(), &|| tls_certificate_secret(name, certificate));
        }
        for (name, certificate) in &ir.listener_certificates {
            wanted.insert(name);
            let version = listener_certificate_version(certificate);
            update(out, name, version, &|| tls_certificate_secret(name, certificate));
        }
        let gone: Vec<String> =
            out.keys().filter(|name| !wanted.contains(name.as_str())).cloned().collect();
        for name in gone {
            out.remove(name.as_str());
        }
    }
}

/// Brings a listener's virtual hosts (`hosts`, and `out`, the published ones) up to date with
/// its IR: those of the hostnames in `changed`, or all of them; and `len`, the length of its
/// inline route configuration (see [`InlineRoutes`]), when only some are looked at. Says
/// whether any changed.
fn update_hosts(
    l: &ir::Listener,
    hosts: &mut SharedMap<String, InlineHost>,
    len: &mut usize,
    changed: Option<&std::collections::BTreeSet<String>>,
    out: &mut PackedType,
) -> bool {
    let host_len = |host: &InlineHost| InlineRoutes::host_len(host.resource.resource.value.len());
    let mut any = false;
    let update = |hosts: &mut SharedMap<String, InlineHost>,
                  out: &mut PackedType,
                  len: &mut usize,
                  vh: &ir::VirtualHost| {
        let source = crate::digest::digest(vh);
        if hosts.get(vh.name.as_str()).is_some_and(|entry| entry.source == source) {
            return false;
        }
        let resource = Arc::new(PackedResource {
            version: crate::digest::hex(&source[..12]),
            resource: pack(&virtual_host(vh)).into(),
        });
        out.insert(vh.name.clone(), resource.clone());
        let host = InlineHost { source, resource };
        *len += host_len(&host);
        if let Some(old) = hosts.insert(vh.name.clone(), host) {
            *len -= host_len(&old);
        }
        true
    };
    match changed {
        Some(changed) => {
            for host in changed {
                let at = l.virtual_hosts.binary_search_by(|v| v.domains[0].as_str().cmp(host));
                match at {
                    Ok(at) => any |= update(hosts, out, len, &l.virtual_hosts[at]),
                    Err(_) => {
                        let name = format!("{}/{host}", l.name);
                        if let Some(old) = hosts.remove(name.as_str()) {
                            *len -= host_len(&old);
                            out.remove(name.as_str());
                            any = true;
                        }
                    }
                }
            }
        }
        None => {
            debug_assert!(
                l.virtual_hosts.windows(2).all(|w| w[0].name < w[1].name),
                "virtual hosts are in name order"
            );
            for vh in &l.virtual_hosts {
                any |= update(hosts, out, len, vh);
            }
            if hosts.len() > l.virtual_hosts.len() {
                let names: std::collections::HashSet<&str> =
                    l.virtual_hosts.iter().map(|vh| vh.name.as_str()).collect();
                let gone: Vec<String> =
                    hosts.keys().filter(|name| !names.contains(name.as_str())).cloned().collect();
                for name in gone {
                    if let Some(old) = hosts.remove(name.as_str()) {
                        *len -= host_len(&old);
                    }
                    out.remove(name.as_str());
                    any = true;
                }
            }
        }
    }
    any
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectKey;

    /// Past the size where clusters are translated on two threads, the output is what one-by-one
    /// translation (`translate`, into structs) gives, in the same order; and a second call with
    /// a few clusters changed, added and removed equals a fresh translation.
    #[test]
    fn many_clusters_translate_on_two_threads_as_one_by_one() {
        let cluster = |i: usize, port: u16| {
            let name = format!("kube_ns_s{i:05}_{port}");
            let address = format!("10.0.{}.{}:{port}", i / 256, i % 256).parse().unwrap();
            let cluster = ir::Cluster {
                name: name.clone(),
                service: ObjectKey::new("ns", &format!("s{i:05}")),
                port,
                endpoints: ir::Endpoints::Static(vec![address]),
                tls: None,
                protocol: Default::default(),
            };
            (name, cluster)
        };
        let mut ir =
            Ir { clusters: (0..2_500).map(|i| cluster(i, 8080)).collect(), ..Ir::default() };
        let options = TranslateOptions::default();
        let mut translator = Translator::default();
        let check = |packed: &Packed, ir: &Ir| {
            let fresh = translate(ir, &options);
            let clusters = &packed[&cluster::Cluster::type_url()];
            let endpoints = &packed[&endpoint::ClusterLoadAssignment::type_url()];
            assert_eq!(clusters.len(), fresh.clusters.len());
            for (served, expected) in clusters.values().zip(&fresh.clusters) {
                assert_eq!(served.version, expected.version);
                assert_eq!(served.resource.value, expected.resource.encode_to_vec());
            }
            for (served, expected) in endpoints.values().zip(&fresh.endpoints) {
                assert_eq!(served.version, expected.version);
                assert_eq!(served.resource.value, expected.resource.encode_to_vec());
            }
            assert_eq!(packed, &Translator::default().translate(ir, &options));
        };
        let first = translator.translate(&ir, &options);
        check(&first, &ir);
        let mut changes = ir::IrChanges::default();
        for i in [3, 1_700, 2_499] {
            let (name, c) = cluster(i, 9090);
            ir.clusters.insert(name.clone(), c);
            changes.clusters.insert(name);
        }
        for i in [0, 1_200] {
            let (name, _) = cluster(i, 8080);
            ir.clusters.remove(&name);
            changes.clusters.insert(name);
        }
        let second = translator.translate_changes(&ir, &options, Some(&changes));
        check(&second, &ir);
        // Everything else is shared with the first output.
        let mut differ = 0;
        first[&cluster::Cluster::type_url()].diff(
            &second[&cluster::Cluster::type_url()],
            Arc::ptr_eq,
            |_, _, _| differ += 1,
        );
        assert_eq!(differ, 5);
    }
}
