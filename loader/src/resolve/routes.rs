//! HTTPRoute rules: their matches in the spec's precedence, and each backendRef's cluster with
//! the policy that governs it.

use super::*;

/// Gateway API route precedence: Exact before PathPrefix, longer paths first, then the older
/// route, then namespace/name, then rule and match order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RouteOrder<'a> {
    exact_first: u8,
    longer_first: std::cmp::Reverse<usize>,
    created_missing: bool,
    created: Option<&'a str>,
    route: &'a ObjectKey,
    rule: usize,
    matched: usize,
}

pub(super) fn build_routes<'a>(
    store: &Store,
    gw: &GatewayContext<'_>,
    route_key: &'a ObjectKey,
    route: &'a HttpRoute,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Vec<(RouteOrder<'a>, Route)> {
    let mut out = Vec::new();
    for (rule_index, rule) in route.spec.rules.iter().enumerate() {
        let action = route_action(store, gw, route_key, rule, policies, ir, problems);
        let default_match = [objects::HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches };
        for (match_index, m) in matches.iter().enumerate() {
            let kind = m.path.as_ref().and_then(|p| p.kind.as_deref()).unwrap_or("PathPrefix");
            let value = m.path.as_ref().and_then(|p| p.value.clone()).unwrap_or_else(|| "/".into());
            let path = if kind == "Exact" {
                PathMatch::Exact(value.clone())
            } else {
                PathMatch::Prefix(value.clone())
            };
            let order = RouteOrder {
                exact_first: u8::from(kind != "Exact"),
                longer_first: std::cmp::Reverse(value.len()),
                created_missing: route.metadata.creation_timestamp.is_none(),
                created: route.metadata.creation_timestamp.as_deref(),
                route: route_key,
                rule: rule_index,
                matched: match_index,
            };
            let name = format!("{route_key}/rule/{rule_index}/match/{match_index}");
            out.push((order, Route { name, path, action: action.clone() }));
        }
    }
    out
}

pub(super) fn route_action(
    store: &Store,
    gw: &GatewayContext<'_>,
    route_key: &ObjectKey,
    rule: &objects::HttpRouteRule,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> RouteAction {
    let mut forward = Vec::new();
    let mut invalid = Vec::new();
    let mut unusable = Vec::new();
    let mut invalid_weight = 0;
    for backend in &rule.backend_refs {
        let weight = backend.weight.unwrap_or(1);
        if weight == 0 {
            continue;
        }
        match backend_cluster(store, gw, route_key, backend, policies, ir, problems) {
            Ok(cluster) => {
                if let Some(BackendTls { trust: Trust::Unusable { reason }, policy, .. }) =
                    &ir.clusters[&cluster].tls
                {
                    unusable.push(format!("BackendTLSPolicy {policy} cannot be met: {reason}"));
                }
                forward.push(WeightedCluster { cluster, weight });
            }
            Err(reason) => {
                invalid_weight += weight;
                invalid.push(reason);
            }
        }
    }
    if forward.is_empty() {
        if !unusable.is_empty() {
            return RouteAction::Respond {
                status: 503,
                body: format!("backendtls: {}\n", unusable.join("; ")),
            };
        }
        let reason =
            if invalid.is_empty() { "no backendRefs".to_string() } else { invalid.join("; ") };
        return RouteAction::Respond { status: 500, body: format!("backendtls: {reason}\n") };
    }
    if forward.len() == unusable.len() && invalid.is_empty() {
        return RouteAction::Respond {
            status: 503,
            body: format!("backendtls: {}\n", unusable.join("; ")),
        };
    }
    if invalid_weight > 0 {
        // The share of invalid backendRefs must fail, not move to the valid ones. Envoy cannot
        // answer locally for part of a weighted split, so that share goes to a cluster without
        // hosts (503).
        ir.clusters.entry(INVALID_BACKEND_CLUSTER.to_string()).or_insert_with(|| Cluster {
            name: INVALID_BACKEND_CLUSTER.to_string(),
            service: ObjectKey::new("", ""),
            port: 0,
            endpoints: Endpoints::Static(Vec::new()),
            tls: None,
        });
        forward.push(WeightedCluster {
            cluster: INVALID_BACKEND_CLUSTER.to_string(),
            weight: invalid_weight,
        });
    }
    RouteAction::Forward(forward)
}

/// The cluster of a backendRef, created on first use.
pub(super) fn backend_cluster(
    store: &Store,
    gw: &GatewayContext<'_>,
    route_key: &ObjectKey,
    backend: &objects::BackendRef,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Result<String, String> {
    let group = backend.group.as_deref().unwrap_or("");
    let kind = backend.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(format!("backendRef {kind} {} is not a Service", backend.name));
    }
    let namespace = backend.namespace.as_deref().unwrap_or(&route_key.namespace);
    let service_key = ObjectKey::new(namespace, &backend.name);
    if namespace != route_key.namespace && !reference_granted(store, route_key, &service_key) {
        return Err(format!("backendRef Service {service_key} is in another namespace and no ReferenceGrant allows it"));
    }
    let port_number =
        backend.port.ok_or_else(|| format!("backendRef Service {service_key} has no port"))?;
    let service = store
        .services
        .get(&service_key)
        .ok_or_else(|| format!("Service {service_key} not found"))?;
    let port = service
        .spec
        .ports
        .iter()
        .find(|p| p.port == port_number)
        .ok_or_else(|| format!("Service {service_key} has no port {port_number}"))?;
    let name = backendtls_contract::cluster_name(namespace, &backend.name, port_number);
    let client_certificate = gw.client_certificate.clone();
    match ir.clusters.get(&name) {
        // Checked object names make this impossible (see `kube_names`); should it happen anyway,
        // the route fails rather than sending one Service's traffic to another's cluster.
        Some(existing) if existing.service != service_key => {
            return Err(format!(
                "Service {service_key} port {port_number} would share Envoy cluster {name} with Service {}",
                existing.service
            ));
        }
        None => {
            let endpoints = if service.spec.kind.as_deref() == Some("ExternalName") {
                let hostname = service.spec.external_name.clone().unwrap_or_default();
                Endpoints::Dns { hostname, port: port_number }
            } else {
                Endpoints::Static(slice_endpoints(store, &service_key, port))
            };
            let tls = policies.governing(&service_key, port).map(|policy| BackendTls {
                policy: policy.key.clone(),
                hostname: policy.hostname.clone(),
                subject_alt_names: policy.subject_alt_names.clone(),
                params: policy.params.clone(),
                trust: policy.trust.clone(),
                client_certificate,
            });
            let cluster = Cluster {
                name: name.clone(),
                service: service_key.clone(),
                port: port_number,
                endpoints,
                tls,
            };
            ir.clusters.insert(name.clone(), cluster);
        }
        // One cluster serves every Gateway that routes to this port, so it can present only one
        // client certificate.
        Some(Cluster { tls: Some(tls), .. }) if tls.client_certificate != client_certificate => {
            problems.push(Problem {
                object: format!("Gateway {}", gw.key),
                reason: format!(
                    "routes to Service {service_key} port {port_number}, which another Gateway with a different backend client certificate also uses; the first Gateway's certificate is presented"
                ),
            });
        }
        Some(_) => {}
    }
    policies.reached_from(gw.key, &service_key, port);
    Ok(name)
}

pub(super) fn reference_granted(store: &Store, from: &ObjectKey, to: &ObjectKey) -> bool {
    store.reference_grants.iter().any(|(key, grant)| {
        key.namespace == to.namespace
            && grant.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP && f.kind == "HTTPRoute" && f.namespace == from.namespace
            })
            && grant.spec.to.iter().any(|t| {
                t.group.is_empty()
                    && t.kind == "Service"
                    && t.name.as_ref().is_none_or(|n| n == &to.name)
            })
    })
}

/// Ready addresses of a Service port, matched to slice ports by port name (as kube-proxy does),
/// with the slice's port number.
pub(super) fn slice_endpoints(
    store: &Store,
    service: &ObjectKey,
    port: &ServicePort,
) -> Vec<SocketAddr> {
    let mut addresses = BTreeSet::new();
    for slice in store.endpoint_slices_of(service) {
        if !matches!(slice.address_type.as_deref(), Some("IPv4") | Some("IPv6") | None) {
            continue;
        }
        let Some(number) = slice
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == port.name())
            .and_then(|p| p.port)
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| e.is_ready()) {
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    addresses.insert(SocketAddr::new(ip, number));
                }
            }
        }
    }
    addresses.into_iter().collect()
}
