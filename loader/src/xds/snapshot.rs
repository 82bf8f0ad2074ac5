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
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

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

/// One virtual host of a route configuration, encoded as a VHDS resource, with the digest of the
/// IR it came from.
#[derive(Clone, Debug)]
pub struct InlineHost {
    pub source: [u8; 16],
    pub resource: Arc<PackedResource>,
}

/// A route configuration with every virtual host inline, as state-of-the-world ADS serves it
/// (VHDS is delta-only): encoded on first use, since only state-of-the-world streams want it, and
/// at 100,000 hosts it is megabytes to concatenate and digest again on every added backend.
/// Its version is a digest of its hosts' versions, so it changes exactly when one of them does.
#[derive(Debug)]
pub struct InlineRoutes {
    name: String,
    /// Its virtual hosts by name, in order.
    hosts: SharedMap<String, InlineHost>,
    /// Length of the encoding.
    len: usize,
    encoded: OnceLock<Arc<PackedResource>>,
}

impl InlineRoutes {
    /// Route configuration `name` with `hosts` inline; `len` must be [`Self::encoded_len`]'s.
    pub fn new(name: String, hosts: SharedMap<String, InlineHost>, len: usize) -> Self {
        debug_assert_eq!(len, Self::encoded_len(&name, &hosts));
        InlineRoutes { name, hosts, len, encoded: OnceLock::new() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hosts(&self) -> &SharedMap<String, InlineHost> {
        &self.hosts
    }

    /// The bytes a virtual host of `len` bytes adds to the encoding.
    pub fn host_len(len: usize) -> usize {
        1 + prost::encoding::encoded_len_varint(len as u64) + len
    }

    /// The length of the encoding of route configuration `name` with `hosts`, without encoding it.
    pub fn encoded_len(name: &str, hosts: &SharedMap<String, InlineHost>) -> usize {
        Self::host_len(name.len())
            + hosts.values().map(|h| Self::host_len(h.resource.resource.value.len())).sum::<usize>()
            + 2
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The route configuration, encoded (the first call encodes it). Protobuf encodes a repeated
    /// field as its elements one after the other, so these are exactly the bytes of the whole
    /// message, made from the hosts' encodings without decoding or re-encoding any.
    pub fn resource(&self) -> &Arc<PackedResource> {
        self.encoded.get_or_init(|| {
            use prost::encoding::{encode_key, encode_varint, WireType};
            // Sized exactly: a buffer grown by doubling keeps up to twice its length.
            let mut out = Vec::with_capacity(self.len);
            // RouteConfiguration: name = 1, virtual_hosts = 2.
            prost::encoding::string::encode(1, &self.name, &mut out);
            let mut versions = sha2::Sha256::new();
            versions.update((self.name.len() as u64).to_be_bytes());
            versions.update(self.name.as_bytes());
            for (name, host) in &self.hosts {
                let encoded = &host.resource.resource.value;
                encode_key(2, WireType::LengthDelimited, &mut out);
                encode_varint(encoded.len() as u64, &mut out);
                out.extend_from_slice(encoded);
                for part in [name.as_bytes(), host.resource.version.as_bytes()] {
                    versions.update((part.len() as u64).to_be_bytes());
                    versions.update(part);
                }
            }
            // ignore_port_in_host_matching = 14 (see translate's `route_configuration`).
            prost::encoding::bool::encode(14, &true, &mut out);
            debug_assert_eq!(out.len(), self.len);
            Arc::new(PackedResource {
                version: crate::digest::hex(&versions.finalize()[..12]),
                resource: EncodedAny {
                    type_url: RouteConfiguration::type_url(),
                    value: out.into(),
                },
            })
        })
    }

    /// Same content: the same name and hosts (by name and version).
    pub fn same_content(&self, other: &InlineRoutes) -> bool {
        let mut same = self.name == other.name && self.hosts.len() == other.hosts.len();
        if same {
            self.hosts.diff(
                &other.hosts,
                |a, b| a.resource.version == b.resource.version,
                |_, _, _| same = false,
            );
        }
        same
    }
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one whenever any resource changes.
    pub version: u64,
    /// Every resource but the route configurations of [`Self::inline_routes`].
    pub resources: Packed,
    /// Route configurations with every virtual host inline (state-of-the-world ADS), by name,
    /// encoded on first use: [`Self::of_type`] and [`Self::types`] include them.
    pub inline_routes: BTreeMap<String, Arc<InlineRoutes>>,
    /// `resources`' route configurations and the inline ones, once asked for.
    all_routes: OnceLock<Resources>,
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.same_content(other)
    }
}

impl Snapshot {
    pub fn new(version: u64, resources: Packed) -> Self {
        Snapshot::with_inline_routes(version, resources, BTreeMap::new())
    }

    pub fn with_inline_routes(
        version: u64,
        mut resources: Packed,
        inline_routes: BTreeMap<String, Arc<InlineRoutes>>,
    ) -> Self {
        for type_url in type_urls() {
            resources.entry(type_url).or_default();
        }
        resources.entry(VHDS_ROUTE_CONFIGURATIONS.to_string()).or_default();
        Snapshot { version, resources, inline_routes, all_routes: OnceLock::new() }
    }

    /// Every type's resources, the inline route configurations encoded.
    pub fn types(&self) -> impl Iterator<Item = (&String, &Resources)> {
        self.resources.keys().map(|type_url| (type_url, self.of_type(type_url).expect("listed")))
    }

    /// `type_url`'s resources (for route configurations, the inline ones are encoded now if
    /// they were not yet).
    pub fn of_type(&self, type_url: &str) -> Option<&Resources> {
        let resources = self.resources.get(type_url);
        if self.inline_routes.is_empty() || type_url != RouteConfiguration::type_url() {
            return resources;
        }
        Some(self.all_routes.get_or_init(|| {
            let mut all = resources.cloned().unwrap_or_default();
            for (name, routes) in &self.inline_routes {
                all.insert(name.clone(), routes.resource().clone());
            }
            all
        }))
    }

    /// What a delta ADS stream is served for `type_url`: route configurations rely on VHDS.
    pub fn of_type_for_delta(&self, type_url: &str) -> Option<&Resources> {
        if type_url == RouteConfiguration::type_url() {
            self.resources.get(VHDS_ROUTE_CONFIGURATIONS)
        } else {
            self.of_type(type_url)
        }
    }

    /// Same resources (by name and resource version), whatever the snapshot versions. What the
    /// two share (a snapshot and the next one translated from it, see [`SharedMap::diff`]) is not
    /// looked at again.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        let inline = |a: &Snapshot, b: &Snapshot| {
            a.inline_routes.len() == b.inline_routes.len()
                && a.inline_routes.iter().zip(&b.inline_routes).all(|((na, ra), (nb, rb))| {
                    na == nb && (Arc::ptr_eq(ra, rb) || ra.same_content(rb))
                })
        };
        inline(self, other)
            && self.resources.len() == other.resources.len()
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
            .sum::<usize>()
            + self.inline_routes.values().map(|r| r.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn host(name: &str, routes: usize) -> InlineHost {
        let host = VirtualHost {
            name: name.to_string(),
            domains: vec![name.rsplit('/').next().unwrap().to_string()],
            routes: (0..routes)
                .map(|i| envoy_types::pb::envoy::config::route::v3::Route {
                    name: format!("r{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let value = host.encode_to_vec();
        InlineHost {
            source: [routes as u8; 16],
            resource: Arc::new(PackedResource {
                version: format!("v{routes}"),
                resource: EncodedAny { type_url: VirtualHost::type_url(), value: value.into() },
            }),
        }
    }

    /// The inline route configuration is the message with those hosts, its length is known
    /// without encoding it, comparing and counting bytes do not encode it, and its version
    /// changes exactly when a host's does.
    #[test]
    fn inline_routes_encode_on_demand_as_the_whole_message() {
        let hosts: SharedMap<String, InlineHost> =
            (0..300).map(|i| (format!("l/h{i:03}"), host(&format!("l/h{i:03}"), i % 3))).collect();
        let len = InlineRoutes::encoded_len("l", &hosts);
        let routes = Arc::new(InlineRoutes::new("l".into(), hosts.clone(), len));
        let inline = BTreeMap::from([("l".to_string(), routes.clone())]);
        let snapshot = Snapshot::with_inline_routes(1, Packed::new(), inline.clone());
        let same = Snapshot::with_inline_routes(2, Packed::new(), inline);
        assert!(snapshot.same_content(&same));
        assert_eq!(snapshot.total_bytes(), len);
        assert!(routes.encoded.get().is_none(), "encoded before anyone asked");
        let encoded = &snapshot.of_type(&RouteConfiguration::type_url()).unwrap()["l"];
        assert_eq!(encoded.resource.value.len(), len);
        let expected = RouteConfiguration {
            name: "l".into(),
            virtual_hosts: hosts
                .values()
                .map(|h| VirtualHost::decode(&h.resource.resource.value[..]).unwrap())
                .collect(),
            ignore_port_in_host_matching: true,
            ..Default::default()
        };
        assert_eq!(RouteConfiguration::decode(&encoded.resource.value[..]).unwrap(), expected);

        let version = |hosts: &SharedMap<String, InlineHost>| {
            let len = InlineRoutes::encoded_len("l", hosts);
            InlineRoutes::new("l".into(), hosts.clone(), len).resource().version.clone()
        };
        let mut rebuilt = hosts.clone();
        rebuilt.insert("l/h007".into(), host("l/h007", 7 % 3));
        assert_eq!(version(&rebuilt), encoded.version, "same hosts, same version");
        let mut changed = hosts.clone();
        changed.insert("l/h007".into(), host("l/h007", 2));
        assert_ne!(version(&changed), encoded.version);
        let mut removed = hosts.clone();
        removed.remove("l/h007");
        assert_ne!(version(&removed), encoded.version);
        let other = Snapshot::with_inline_routes(
            3,
            Packed::new(),
            BTreeMap::from([(
                "l".to_string(),
                Arc::new(InlineRoutes::new(
                    "l".into(),
                    changed.clone(),
                    InlineRoutes::encoded_len("l", &changed),
                )),
            )]),
        );
        assert!(!snapshot.same_content(&other));
    }
}
