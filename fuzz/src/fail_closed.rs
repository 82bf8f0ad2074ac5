//! The fail-closed property, as a checker over what the loader would send Envoy: every Service
//! port that a BackendTLSPolicy document targets (valid or not) is reached only through clusters
//! that either originate verified TLS or have no hosts at all.
//!
//! Shared by the `pipeline` fuzz target and the loader's property test
//! (`loader/tests/fail_closed_property.rs` includes this file), so it only uses the loader's public
//! API and the Envoy types. The targets come from the caller's own reading of the input (the
//! generator's knowledge, or a lenient YAML reading), never from the loader's parse: a policy the
//! loader silently dropped must still count.

use backendtls_loader::ir::Ir;
use backendtls_loader::objects::ObjectKey;
use backendtls_loader::store::Store;
use backendtls_loader::xds::translate::Resources;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};

/// One `targetRefs` entry naming a core Service, as the author of the input wrote it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyTarget {
    /// The policy's namespace (`default` when it names none).
    pub namespace: String,
    pub service: String,
    /// A Service port name; None targets every port.
    pub section: Option<String>,
}

/// `(Service, port)` pairs a target covers, given the Services the loader knows.
pub fn targeted_ports(store: &Store, targets: &[PolicyTarget]) -> BTreeSet<(ObjectKey, u16)> {
    let mut ports = BTreeSet::new();
    for target in targets {
        let key = ObjectKey::new(&target.namespace, &target.service);
        let Some(service) = store.services.get(&key) else { continue };
        for port in &service.spec.ports {
            if target.section.as_deref().is_none_or(|section| port.name() == section) {
                ports.insert((key.clone(), port.port));
            }
        }
    }
    ports
}

/// Every way traffic to a targeted Service port could leave Envoy in plaintext or unverified,
/// one line each; empty when the property holds.
pub fn violations(
    store: &Store,
    targets: &[PolicyTarget],
    ir: &Ir,
    resources: &Resources,
) -> Vec<String> {
    let targeted = targeted_ports(store, targets);
    let clusters: BTreeMap<&str, &Cluster> =
        resources.clusters.iter().map(|c| (c.resource.name.as_str(), &c.resource)).collect();
    let assignments: BTreeMap<&str, &ClusterLoadAssignment> = resources
        .endpoints
        .iter()
        .map(|e| (e.resource.cluster_name.as_str(), &e.resource))
        .collect();
    let mut found = Vec::new();
    let mut check = |name: &str, why: &str| {
        if let Some(cluster) = clusters.get(name) {
            if let Err(problem) = closed_or_verified_tls(cluster, &assignments) {
                found.push(format!("cluster {name} ({why}): {problem}"));
            }
        }
    };

    // Clusters by the contract's naming, and by what the IR says they reach.
    for (service, port) in &targeted {
        let name = backendtls_contract::cluster_name(&service.namespace, &service.name, *port);
        check(&name, &format!("named for targeted port {service}:{port}"));
    }
    for cluster in ir.clusters.values() {
        if targeted.contains(&(cluster.service.clone(), cluster.port)) {
            check(
                &cluster.name,
                &format!("IR cluster of targeted port {}:{}", cluster.service, cluster.port),
            );
        }
    }

    // Routes: a route to a cluster of a targeted port, or to a cluster the IR does not know
    // (which must then have no hosts).
    for route_configuration in route_configurations(resources) {
        for virtual_host in &route_configuration.virtual_hosts {
            for r in &virtual_host.routes {
                for name in route_clusters(r) {
                    let why = match ir.clusters.get(&name) {
                        Some(c) if targeted.contains(&(c.service.clone(), c.port)) => {
                            format!("route {} to targeted port {}:{}", r.name, c.service, c.port)
                        }
                        Some(_) => continue,
                        None => format!("route {} to a cluster the IR does not have", r.name),
                    };
                    // No such cluster: Envoy answers 503, nothing is sent.
                    let Some(cluster) = clusters.get(name.as_str()) else { continue };
                    if !ir.clusters.contains_key(&name) {
                        if hosts(cluster, &assignments) > 0 {
                            found.push(format!("cluster {name} ({why}) has hosts"));
                        }
                    } else if let Err(problem) = closed_or_verified_tls(cluster, &assignments) {
                        found.push(format!("cluster {name} ({why}): {problem}"));
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Ok when the cluster cannot reach a host, or reaches hosts only through an
/// `UpstreamTlsContext` that verifies the backend's certificate.
fn closed_or_verified_tls(
    cluster: &Cluster,
    assignments: &BTreeMap<&str, &ClusterLoadAssignment>,
) -> Result<(), String> {
    let host_count = hosts(cluster, assignments);
    if host_count == 0 {
        return Ok(());
    }
    let Some(socket) = &cluster.transport_socket else {
        return Err(format!("{host_count} host(s) and no transport socket (plaintext)"));
    };
    verified_tls(socket).map_err(|e| format!("{host_count} host(s) and {e}"))?;
    for (index, m) in cluster.transport_socket_matches.iter().enumerate() {
        let Some(socket) = &m.transport_socket else {
            return Err(format!("transport_socket_matches[{index}] selects plaintext"));
        };
        verified_tls(socket).map_err(|e| format!("transport_socket_matches[{index}]: {e}"))?;
    }
    Ok(())
}

const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

fn verified_tls(socket: &TransportSocket) -> Result<(), String> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Err(format!("transport socket {:?} has no typed config", socket.name));
    };
    if any.type_url != UPSTREAM_TLS_CONTEXT {
        return Err(format!("transport socket of type {} (not TLS)", any.type_url));
    }
    let context = tls::UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("an UpstreamTlsContext that does not decode: {e}"))?;
    use tls::common_tls_context::ValidationContextType as V;
    let validation = context.common_tls_context.and_then(|c| c.validation_context_type);
    let verifies = |v: &tls::CertificateValidationContext| {
        v.custom_validator_config.is_some()
            || (v.trusted_ca.is_some() && !v.match_typed_subject_alt_names.is_empty())
    };
    let ok = match &validation {
        None => false,
        Some(V::ValidationContext(v)) => verifies(v),
        Some(V::CombinedValidationContext(c)) => {
            c.validation_context_sds_secret_config.is_some()
                && c.default_validation_context.as_ref().is_some_and(|d| {
                    !d.match_typed_subject_alt_names.is_empty()
                        || d.custom_validator_config.is_some()
                })
        }
        Some(V::ValidationContextSdsSecretConfig(_)) => true,
        Some(_) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("TLS that does not verify the backend ({validation:?})"))
    }
}

/// Hosts a cluster can reach: its inline load assignment plus, for EDS, the assignment sent
/// under its name.
fn hosts(cluster: &Cluster, assignments: &BTreeMap<&str, &ClusterLoadAssignment>) -> usize {
    let count =
        |a: &ClusterLoadAssignment| a.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>();
    let inline = cluster.load_assignment.as_ref().map_or(0, count);
    let eds_name = match &cluster.eds_cluster_config {
        Some(eds) if !eds.service_name.is_empty() => eds.service_name.as_str(),
        _ => cluster.name.as_str(),
    };
    inline + assignments.get(eds_name).map_or(0, |a| count(a))
}

/// Route configurations sent over RDS, plus those inline in listeners (static bootstrap).
fn route_configurations(resources: &Resources) -> Vec<RouteConfiguration> {
    let mut out: Vec<RouteConfiguration> =
        resources.routes.iter().map(|r| r.resource.clone()).collect();
    for listener in &resources.listeners {
        out.extend(inline_routes(&listener.resource));
    }
    out
}

fn inline_routes(listener: &Listener) -> Vec<RouteConfiguration> {
    use envoy_types::pb::envoy::config::listener::v3::filter;
    let mut out = Vec::new();
    for chain in listener.filter_chains.iter().chain(listener.default_filter_chain.iter()) {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { continue };
            let Ok(manager) = hcm::HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
                manager.route_specifier
            {
                out.push(rc);
            }
        }
    }
    out
}

fn route_clusters(r: &envoy_types::pb::envoy::config::route::v3::Route) -> Vec<String> {
    let Some(route::Action::Route(action)) = &r.action else { return Vec::new() };
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(name)) => vec![name.clone()],
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.iter().map(|c| c.name.clone()).collect()
        }
        Some(other) => vec![format!("(unsupported cluster specifier {other:?})")],
        None => Vec::new(),
    }
}
