//! A versioned set of encoded Envoy resources, by type URL and name.
//!
//! Every resource carries its own version, a digest of what it was built from. Delta xDS sends
//! only resources whose version the Envoy does not have yet, so a CA change sends one cluster, its
//! endpoints and one secret, however many backends there are, and an Envoy that reconnects after a
//! loader restart is not sent what it already holds.

use super::shared_map::SharedMap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::bytes::Bytes;
use prost::Name;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A resource encoded for xDS, with its version.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedResource {
    /// Changes exactly when the resource does (see [`super::translate::Versioned`]).
    pub version: String,
    pub resource: EncodedAny,
}

/// A `google.protobuf.Any` whose value is shared: cloning it, or sending it to any number of
/// Envoys, never copies the encoded resource (the ADS server writes these bytes straight into
/// each response, see [`super::wire`]). Same wire format as `Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl From<Any> for EncodedAny {
    fn from(any: Any) -> Self {
        EncodedAny { type_url: any.type_url, value: any.value.into() }
    }
}

impl EncodedAny {
    /// A copy as envoy-types' `Any` (tests and tools; the server never copies).
    pub fn to_any(&self) -> Any {
        Any { type_url: self.type_url.clone(), value: self.value.to_vec() }
    }
}

/// Encoded resources by type URL and name: what a snapshot holds. Each type's map shares what
/// did not change with the previous snapshot's ([`SharedMap`]).
pub type Packed = BTreeMap<String, Resources>;

/// One type's resources by name.
pub type Resources = SharedMap<String, Arc<PackedResource>>;

/// The name the server uses for a [`PackedResource`].
pub type VersionedResource = PackedResource;

/// The xDS resource types the loader serves, in the order changes are pushed: clusters before
/// their endpoints, listeners before their routes and routes before their virtual hosts (the
/// ordering the xDS protocol recommends to avoid dropping traffic).
pub fn type_urls() -> [String; 6] {
    [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Secret::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
        VirtualHost::type_url(),
    ]
}

/// Where a snapshot keeps the route configurations served over delta ADS: without virtual hosts,
/// which come one by one over VHDS, so that adding a backend sends one virtual host instead of
/// every virtual host of its listener. State-of-the-world ADS (which VHDS does not support) gets
/// them inline, from the `RouteConfiguration` type URL.
pub const VHDS_ROUTE_CONFIGURATIONS: &str =
    "backendtls.internal/envoy.config.route.v3.RouteConfiguration+vhds";

/// Types whose resources Envoy asks for by name (the others it takes whole: wildcard). VHDS
/// subscribes to a route configuration's name, but Envoy does not send it: it asks for virtual
/// hosts as a wildcard and keeps those named `<route configuration>/<host>` of the route
/// configurations it has.
pub fn is_named_type(type_url: &str) -> bool {
    type_url != Cluster::type_url()
        && type_url != Listener::type_url()
        && type_url != VirtualHost::type_url()
}

/// Short name for logs and metrics: `CDS`, `EDS`, `SDS`, `LDS`, `RDS`, `VHDS`.
pub fn short_name(type_url: &str) -> &'static str {
    match type_url.rsplit('.').next() {
        Some("Cluster") => "CDS",
        Some("ClusterLoadAssignment") => "EDS",
        Some("Secret") => "SDS",
        Some("Listener") => "LDS",
        Some("RouteConfiguration") => "RDS",
        Some("VirtualHost") => "VHDS",
        _ => "unknown",
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Increases by one whenever any resource changes.
    pub version: u64,
    pub resources: Packed,
}

impl Snapshot {
    pub fn new(version: u64, mut resources: Packed) -> Self {
        for type_url in type_urls() {
            resources.entry(type_url).or_default();
        }
        resources.entry(VHDS_ROUTE_CONFIGURATIONS.to_string()).or_default();
        Snapshot { version, resources }
    }

    pub fn of_type(&self, type_url: &str) -> Option<&Resources> {
        self.resources.get(type_url)
    }

    /// What a delta ADS stream is served for `type_url`: route configurations rely on VHDS.
    pub fn of_type_for_delta(&self, type_url: &str) -> Option<&Resources> {
        if type_url == RouteConfiguration::type_url() {
            self.resources.get(VHDS_ROUTE_CONFIGURATIONS)
        } else {
            self.resources.get(type_url)
        }
    }

    /// Same resources (by name and resource version), whatever the snapshot versions. What the
    /// two share (a snapshot and the next one translated from it, see [`SharedMap::diff`]) is not
    /// looked at again.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.resources.len() == other.resources.len()
            && self.resources.iter().zip(&other.resources).all(|((ta, a), (tb, b))| {
                let mut same = ta == tb && a.len() == b.len();
                if same {
                    a.diff(
                        b,
                        |ra, rb| Arc::ptr_eq(ra, rb) || ra.version == rb.version,
                        |_, _, _| same = false,
                    );
                }
                same
            })
    }

    /// Bytes of all resources as state-of-the-world ADS serves them, for metrics and benchmarks.
    pub fn total_bytes(&self) -> usize {
        self.resources
            .iter()
            .filter(|(type_url, _)| {
                *type_url != VHDS_ROUTE_CONFIGURATIONS && **type_url != VirtualHost::type_url()
            })
            .flat_map(|(_, m)| m.values())
            .map(|r| r.resource.value.len())
            .sum()
    }
}
