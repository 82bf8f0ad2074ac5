//! Route configurations and virtual hosts (inline, or one by one over VHDS).

use super::*;

pub(super) fn route_configuration(l: &ir::Listener) -> route::RouteConfiguration {
    let virtual_hosts = l.virtual_hosts.iter().map(virtual_host).collect();
    route::RouteConfiguration { name: l.name.clone(), virtual_hosts, ..Default::default() }
}

pub(super) fn virtual_host(vh: &ir::VirtualHost) -> route::VirtualHost {
    route::VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes: vh.routes.iter().map(envoy_route).collect(),
        ..Default::default()
    }
}

/// The host part of [`vhds_placeholder`]'s name and its one domain: not a valid Gateway API
/// hostname (those have no `_`), so no route's virtual host can take it.
pub(super) const PLACEHOLDER_HOST: &str = "backendtls_placeholder";

/// `<route configuration>/<host>`, as `resolve` names virtual hosts for VHDS.
pub(super) fn placeholder_name(route_configuration: &str) -> String {
    format!("{route_configuration}/{PLACEHOLDER_HOST}")
}

/// A virtual host without routes, served over VHDS for every route configuration: Envoy keeps a
/// listener warming until its VHDS subscription receives something and does not pass it an
/// empty update, so a Gateway listener without routes would wait out Envoy's fetch timeout
/// (15 s). Without routes it answers like no virtual host at all (404).
pub(super) fn vhds_placeholder(route_configuration: &str) -> Arc<PackedResource> {
    let host = route::VirtualHost {
        name: placeholder_name(route_configuration),
        domains: vec![PLACEHOLDER_HOST.to_string()],
        ..Default::default()
    };
    pack_by_content(&host)
}

/// Encoded, with a digest of the encoding as its version.
pub(super) fn pack_by_content<T: Message + Name>(message: &T) -> Arc<PackedResource> {
    let resource = pack(message);
    Arc::new(PackedResource { version: digest_hex(&resource.value), resource })
}

/// The encoded [`route_configuration`], built one virtual host at a time from `cache` (virtual
/// hosts by name, encoded as VHDS resources, with the digest of the IR they came from), which is
/// refilled with what this listener uses. Protobuf encodes a repeated field as its elements one
/// after the other, so the bytes are exactly those of the whole message; at ten thousand hosts
/// this avoids a struct of tens of megabytes per change and re-encoding the hosts that did not
/// change.
pub(super) fn encode_route_configuration(
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
                    version: crate::digest::hex(&source[..12]),
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

pub(super) fn envoy_route(r: &ir::Route) -> route::Route {
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
