//! A versioned set of Envoy resources, by type URL and name.
//!
//! Every resource carries its own version, a digest of its content. Delta xDS sends only
//! resources whose digest the Envoy does not have yet, so a CA change sends one secret and one
//! cluster, however many backends there are, and an Envoy that reconnects after a loader restart
//! is not sent what it already holds.

use super::translate::{pack, Resources, Versioned};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Name;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The xDS resource types the loader serves, in the order changes are pushed: clusters before
/// their endpoints, listeners before their routes (the ordering the xDS protocol recommends to
/// avoid dropping traffic).
pub fn type_urls() -> [String; 5] {
    [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Secret::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
    ]
}

/// Types whose resources Envoy asks for by name (the others it takes whole: wildcard).
pub fn is_named_type(type_url: &str) -> bool {
    type_url != Cluster::type_url() && type_url != Listener::type_url()
}

/// Short name for logs and metrics: `CDS`, `EDS`, `SDS`, `LDS`, `RDS`.
pub fn short_name(type_url: &str) -> &'static str {
    match type_url.rsplit('.').next() {
        Some("Cluster") => "CDS",
        Some("ClusterLoadAssignment") => "EDS",
        Some("Secret") => "SDS",
        Some("Listener") => "LDS",
        Some("RouteConfiguration") => "RDS",
        _ => "unknown",
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct VersionedResource {
    /// Changes exactly when the resource does (see [`super::translate::Versioned`]).
    pub version: String,
    /// Shared with the previous snapshot when the version is the same.
    pub resource: Arc<Any>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Increases by one whenever any resource changes.
    pub version: u64,
    pub resources: BTreeMap<String, BTreeMap<String, VersionedResource>>,
}

impl Snapshot {
    /// Packs `resources`, reusing the encoded form of every resource `previous` has at the same
    /// version.
    pub fn new(version: u64, resources: &Resources, previous: &Snapshot) -> Self {
        let mut by_type: BTreeMap<String, BTreeMap<String, VersionedResource>> = BTreeMap::new();
        for type_url in type_urls() {
            by_type.insert(type_url, BTreeMap::new());
        }
        fn add<T: prost::Message + Name>(
            by_type: &mut BTreeMap<String, BTreeMap<String, VersionedResource>>,
            previous: &Snapshot,
            name: &str,
            versioned: &Versioned<T>,
        ) {
            let type_url = T::type_url();
            let reused = previous
                .of_type(&type_url)
                .and_then(|m| m.get(name))
                .filter(|r| r.version == versioned.version)
                .map(|r| r.resource.clone());
            let resource = reused.unwrap_or_else(|| Arc::new(pack(&versioned.resource)));
            by_type.get_mut(&type_url).expect("every served type is listed in type_urls").insert(
                name.to_string(),
                VersionedResource { version: versioned.version.clone(), resource },
            );
        }
        resources.clusters.iter().for_each(|r| add(&mut by_type, previous, &r.resource.name, r));
        resources
            .endpoints
            .iter()
            .for_each(|r| add(&mut by_type, previous, &r.resource.cluster_name, r));
        resources.secrets.iter().for_each(|r| add(&mut by_type, previous, &r.resource.name, r));
        resources.listeners.iter().for_each(|r| add(&mut by_type, previous, &r.resource.name, r));
        resources.routes.iter().for_each(|r| add(&mut by_type, previous, &r.resource.name, r));
        Snapshot { version, resources: by_type }
    }

    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, VersionedResource>> {
        self.resources.get(type_url)
    }

    /// Same resources (by name and resource version), whatever the snapshot versions.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.resources.len() == other.resources.len()
            && self.resources.iter().zip(&other.resources).all(|((ta, a), (tb, b))| {
                ta == tb
                    && a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((na, ra), (nb, rb))| na == nb && ra.version == rb.version)
            })
    }

    /// Bytes of all resources, for metrics and benchmarks.
    pub fn total_bytes(&self) -> usize {
        self.resources.values().flat_map(|m| m.values()).map(|r| r.resource.value.len()).sum()
    }
}
