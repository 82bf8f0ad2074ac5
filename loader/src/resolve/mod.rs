//! Gateway API semantics: from the objects in a [`Store`] to the [`Ir`] and each policy's status.
//!
//! Order of work: BackendTLSPolicies first (validate, resolve CA refs, settle conflicts), then
//! Gateways and the HTTPRoutes attached to them; each backendRef becomes a cluster governed by the
//! policy that targets its Service port, if any.

mod policy;
/// Public for the fuzz targets (`fuzz/`): CA bundle and key-pair parsing.
#[doc(hidden)]
pub mod trust;

pub use policy::option_keys;

use crate::ir::*;
use crate::objects::{self, Gateway, HttpRoute, ServicePort};
use crate::status::{Condition, GatewayReport, PolicyReport};
use crate::store::{ObjectKey, Store};
use policy::PolicyIndex;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A cluster without hosts that receives the weighted share of invalid backendRefs.
pub const INVALID_BACKEND_CLUSTER: &str = "backendtls_invalid_backend";

#[derive(Clone, Debug)]
pub struct Options {
    /// Serve only Gateways of this class; every Gateway when unset.
    pub gateway_class: Option<String>,
    /// The trust bundle behind `wellKnownCACertificates: System`.
    pub system_ca_bundle: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway_class: None,
            system_ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        }
    }
}

/// A problem that is not about one policy: a Gateway or route the loader cannot serve as written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `Kind namespace/name`.
    pub object: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct Resolution {
    pub ir: Ir,
    pub policies: Vec<PolicyReport>,
    pub gateways: Vec<GatewayReport>,
    pub problems: Vec<Problem>,
}

pub fn resolve(store: &Store, options: &Options) -> Resolution {
    let mut policies = PolicyIndex::build(store, options);
    let mut problems = Vec::new();
    let mut ir = Ir::default();
    let mut gateways = Vec::new();

    for (gateway_key, gateway) in &store.gateways {
        if let Some(class) = &options.gateway_class {
            if &gateway.spec.gateway_class_name != class {
                continue;
            }
        }
        let (client_certificate, report) =
            gateway_client_certificate(store, gateway_key, gateway, &mut ir);
        gateways.push(report);
        let context = GatewayContext { key: gateway_key, gateway, client_certificate };
        for listener in gateway_listeners(gateway_key, gateway, &mut problems) {
            let listener =
                build_listener(store, &context, listener, &mut policies, &mut ir, &mut problems);
            ir.listeners.push(listener);
        }
    }
    // Two Gateways cannot share a port on one Envoy: the first by namespace/name keeps it.
    let mut ports = BTreeMap::new();
    ir.listeners.retain(|l| match ports.insert(l.port, l.name.clone()) {
        None => true,
        Some(first) => {
            ports.insert(l.port, first.clone());
            problems.push(Problem {
                object: format!("Envoy listener {}", l.name),
                reason: format!("port {} is already used by {first}; not served", l.port),
            });
            false
        }
    });
    for cluster in ir.clusters.values() {
        if let Some(BackendTls { trust: Trust::Ca { secret }, .. }) = &cluster.tls {
            let pem = policies.bundles[secret].to_string();
            ir.ca_bundles.insert(secret.clone(), CaBundle { pem });
        }
    }
    Resolution { ir, policies: policies.reports(), gateways, problems }
}

/// What routes need to know of the Gateway they are attached to.
struct GatewayContext<'a> {
    key: &'a ObjectKey,
    gateway: &'a Gateway,
    /// Secret name of the Gateway's backend client certificate, when it has a valid one.
    client_certificate: Option<String>,
}

/// The Gateway's `spec.tls.backend.clientCertificateRef`, resolved into the IR, and the
/// Gateway's conditions. An invalid reference leaves the Gateway Accepted with
/// `ResolvedRefs=False` and no client certificate (backends that require one refuse the handshake).
fn gateway_client_certificate(
    store: &Store,
    key: &ObjectKey,
    gateway: &Gateway,
    ir: &mut Ir,
) -> (Option<String>, GatewayReport) {
    let generation = gateway.metadata.generation();
    let accepted = Condition::new("Accepted", true, "Accepted", "Gateway is accepted".into())
        .observed(generation);
    let report = |resolved: Condition| GatewayReport {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        conditions: vec![accepted.clone(), resolved.observed(generation)],
    };
    let Some(reference) = gateway
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
    else {
        return (
            None,
            report(Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "All references are resolved".into(),
            )),
        );
    };
    let namespace = reference.namespace.as_deref().unwrap_or(&key.namespace);
    let secret_key = ObjectKey::new(namespace, &reference.name);
    let invalid = |reason: &'static str, message: String| {
        (None, report(Condition::new("ResolvedRefs", false, reason, message)))
    };
    if !reference.group.as_deref().unwrap_or("").is_empty()
        || reference.kind.as_deref().unwrap_or("Secret") != "Secret"
    {
        return invalid(
            "InvalidClientCertificateRef",
            format!("clientCertificateRef {} must be a core Secret", reference.name),
        );
    }
    if namespace != key.namespace && !secret_reference_granted(store, key, &secret_key) {
        return invalid("RefNotPermitted", format!("clientCertificateRef Secret {secret_key} is in another namespace and no ReferenceGrant allows it"));
    }
    let Some(secret) = store.secrets.get(&secret_key) else {
        return invalid(
            "InvalidClientCertificateRef",
            format!("clientCertificateRef Secret {secret_key} not found"),
        );
    };
    match trust::tls_key_pair(secret) {
        Ok(pair) => {
            let name = client_certificate_secret_name(&pair.cert_pem, &pair.key_pem);
            ir.client_certificates.insert(
                name.clone(),
                ClientCertificate {
                    source: secret_key,
                    cert_pem: pair.cert_pem,
                    key_pem: pair.key_pem,
                },
            );
            (
                Some(name),
                report(Condition::new(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "All references are resolved".into(),
                )),
            )
        }
        Err(e) => invalid(
            "InvalidClientCertificateRef",
            format!("clientCertificateRef Secret {secret_key} {e}"),
        ),
    }
}

fn secret_reference_granted(store: &Store, gateway: &ObjectKey, secret: &ObjectKey) -> bool {
    store.reference_grants.iter().any(|(key, grant)| {
        key.namespace == secret.namespace
            && grant.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP && f.kind == "Gateway" && f.namespace == gateway.namespace
            })
            && grant.spec.to.iter().any(|t| {
                t.group.is_empty()
                    && t.kind == "Secret"
                    && t.name.as_ref().is_none_or(|n| n == &secret.name)
            })
    })
}

// ---------------------------------------------------------------------------------------------
// Gateways and routes

struct ListenerGroup<'a> {
    name: String,
    port: u16,
    listeners: Vec<&'a objects::GatewayListener>,
}

/// HTTP listeners of a Gateway, grouped by port (one Envoy listener per port).
fn gateway_listeners<'a>(
    key: &ObjectKey,
    gateway: &'a Gateway,
    problems: &mut Vec<Problem>,
) -> Vec<ListenerGroup<'a>> {
    let mut by_port: BTreeMap<u16, Vec<&objects::GatewayListener>> = BTreeMap::new();
    for listener in &gateway.spec.listeners {
        if listener.protocol != "HTTP" {
            problems.push(Problem {
                object: format!("Gateway {key}"),
                reason: format!(
                    "listener {} has protocol {}; only HTTP listeners are served",
                    listener.name, listener.protocol
                ),
            });
            continue;
        }
        by_port.entry(listener.port).or_default().push(listener);
    }
    by_port
        .into_iter()
        .map(|(port, listeners)| ListenerGroup {
            name: format!("gateway_{}_{}_{port}", key.namespace, key.name),
            port,
            listeners,
        })
        .collect()
}

fn build_listener(
    store: &Store,
    gw: &GatewayContext<'_>,
    group: ListenerGroup<'_>,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Listener {
    // hostname -> routes (with their precedence keys) for that virtual host.
    let mut hosts: BTreeMap<String, Vec<(RouteOrder<'_>, Route)>> = BTreeMap::new();
    for (route_key, route) in &store.http_routes {
        let hostnames = attached_hostnames(store, gw.key, gw.gateway, &group, route_key, route);
        if hostnames.is_empty() {
            continue;
        }
        let routes = build_routes(store, gw, route_key, route, policies, ir, problems);
        for hostname in hostnames {
            hosts.entry(hostname).or_default().extend(routes.iter().cloned());
        }
    }
    let virtual_hosts = hosts
        .into_iter()
        .map(|(hostname, mut routes)| {
            routes.sort_by(|a, b| a.0.cmp(&b.0));
            VirtualHost {
                // `<route configuration>/<host>`: VHDS's resource naming, which Envoy relies on
                // to remove a virtual host by name (hostnames hold no `/`).
                name: format!("{}/{}", group.name, hostname),
                domains: vec![hostname],
                // Not collected in place: that would keep room for the orders too.
                routes: {
                    let mut only_routes = Vec::with_capacity(routes.len());
                    only_routes.extend(routes.into_iter().map(|(_, r)| r));
                    only_routes
                },
            }
        })
        .collect();
    Listener { name: group.name, port: group.port, virtual_hosts }
}

/// The hostnames under which `route` is served on this listener group; empty if not attached.
fn attached_hostnames(
    store: &Store,
    gateway_key: &ObjectKey,
    gateway: &Gateway,
    group: &ListenerGroup<'_>,
    route_key: &ObjectKey,
    route: &HttpRoute,
) -> BTreeSet<String> {
    let mut result = BTreeSet::new();
    for parent in &route.spec.parent_refs {
        let group_name = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        let namespace = parent.namespace.as_deref().unwrap_or(&route_key.namespace);
        if group_name != GATEWAY_GROUP
            || kind != "Gateway"
            || namespace != gateway_key.namespace
            || parent.name != gateway_key.name
        {
            continue;
        }
        for listener in &group.listeners {
            if parent.section_name.as_ref().is_some_and(|s| s != &listener.name)
                || parent.port.is_some_and(|p| p != listener.port)
                || !allows_namespace(store, gateway_key, listener, &route_key.namespace)
            {
                continue;
            }
            result.extend(intersect_hostnames(listener.hostname.as_deref(), &route.spec.hostnames));
        }
    }
    let _ = gateway;
    result
}

fn allows_namespace(
    store: &Store,
    gateway_key: &ObjectKey,
    listener: &objects::GatewayListener,
    route_namespace: &str,
) -> bool {
    let namespaces = listener.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Same" => route_namespace == gateway_key.namespace,
        "Selector" => namespaces
            .and_then(|n| n.selector.as_ref())
            .is_some_and(|s| s.matches(&store.namespace_labels(route_namespace))),
        _ => false,
    }
}

/// Gateway API hostname intersection of a listener hostname and a route's hostnames.
fn intersect_hostnames(listener: Option<&str>, route: &[String]) -> Vec<String> {
    match (listener, route.is_empty()) {
        (None, true) => vec!["*".into()],
        (Some(l), true) => vec![l.to_string()],
        (None, false) => route.to_vec(),
        (Some(l), false) => route
            .iter()
            .filter_map(|r| {
                if r == l || wildcard_matches(l, r) {
                    Some(r.clone())
                } else if wildcard_matches(r, l) {
                    Some(l.to_string())
                } else {
                    None
                }
            })
            .collect(),
    }
}

/// `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|suffix| {
        suffix.starts_with('.') && name.ends_with(suffix) && name.len() > suffix.len()
    })
}

/// Gateway API route precedence: Exact before PathPrefix, longer paths first, then the older
/// route, then namespace/name, then rule and match order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RouteOrder<'a> {
    exact_first: u8,
    longer_first: std::cmp::Reverse<usize>,
    created_missing: bool,
    created: Option<&'a str>,
    route: &'a ObjectKey,
    rule: usize,
    matched: usize,
}

fn build_routes<'a>(
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

fn route_action(
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
fn backend_cluster(
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

fn reference_granted(store: &Store, from: &ObjectKey, to: &ObjectKey) -> bool {
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
fn slice_endpoints(store: &Store, service: &ObjectKey, port: &ServicePort) -> Vec<SocketAddr> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_intersection_follows_gateway_api() {
        assert_eq!(intersect_hostnames(None, &[]), ["*"]);
        assert_eq!(
            intersect_hostnames(
                Some("*.example.com"),
                &["a.example.com".into(), "other.org".into()]
            ),
            ["a.example.com"]
        );
        assert_eq!(
            intersect_hostnames(Some("a.example.com"), &["*.example.com".into()]),
            ["a.example.com"]
        );
        assert!(intersect_hostnames(Some("example.com"), &["*.example.com".into()]).is_empty());
    }

    /// A route can send HTTP to a port declared UDP (Envoy connects to its endpoints over TCP):
    /// a policy naming that port is invalid, and fails it closed rather than leaving it plaintext.
    #[test]
    fn a_policy_on_a_udp_port_fails_it_closed() {
        let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec: {gatewayClassName: x, listeners: [{name: http, protocol: HTTP, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec: {ports: [{name: tcp, port: 443}, {name: udp, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-x, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints: [{addresses: ["127.0.0.1"]}]
ports: [{name: tcp, port: 8443}, {name: udp, port: 8053}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: dns, port: 53}, {name: dns, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: p}
spec:
  targetRefs: [{group: "", kind: Service, name: dns, sectionName: udp}]
  validation: {hostname: example.com, wellKnownCACertificates: System}
"#;
        let parsed = crate::source::parse_file(std::path::Path::new("udp.yaml"), text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let mut store = Store::default();
        parsed.objects.into_iter().for_each(|o| store.put(o));
        let resolution = resolve(&store, &Options::default());
        let udp = &resolution.ir.clusters["kube_default_dns_53"];
        assert!(
            matches!(&udp.tls, Some(BackendTls { trust: Trust::Unusable { reason }, .. }) if reason.contains("is UDP")),
            "{udp:?}"
        );
        let tcp = &resolution.ir.clusters["kube_default_dns_443"];
        assert!(tcp.tls.is_none(), "the policy does not target the TCP port: {tcp:?}");
        let accepted = &resolution.policies[0].conditions[0];
        assert_eq!(
            (accepted.kind, accepted.status, accepted.reason),
            ("Accepted", false, "Invalid")
        );
    }
}
