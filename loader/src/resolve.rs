//! Gateway API semantics: from the objects in a [`Store`] to the [`Ir`] and each policy's status.
//!
//! Order of work: BackendTLSPolicies first (validate, resolve CA refs, settle conflicts), then
//! Gateways and the HTTPRoutes attached to them; each backendRef becomes a cluster governed by the
//! policy that targets its Service port, if any.

use crate::ir::*;
use crate::objects::{self, BackendTlsPolicy, Gateway, HttpRoute, ServicePort};
use crate::status::{Condition, PolicyAncestor, PolicyReport};
use crate::store::{ObjectKey, Store};
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
    pub problems: Vec<Problem>,
}

pub fn resolve(store: &Store, options: &Options) -> Resolution {
    let mut policies = PolicyIndex::build(store, options);
    let mut problems = Vec::new();
    let mut ir = Ir::default();

    for (gateway_key, gateway) in &store.gateways {
        if let Some(class) = &options.gateway_class {
            if &gateway.spec.gateway_class_name != class {
                continue;
            }
        }
        for listener in gateway_listeners(gateway_key, gateway, &mut problems) {
            let listener =
                build_listener(store, gateway_key, gateway, listener, &mut policies, &mut ir);
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
            let pem = policies.bundles[secret].clone();
            ir.ca_bundles.insert(secret.clone(), CaBundle { pem });
        }
    }
    Resolution { ir, policies: policies.reports(), problems }
}

// ---------------------------------------------------------------------------------------------
// Policies

/// A policy after validation: what it would apply, or why it cannot.
struct ResolvedPolicy {
    key: ObjectKey,
    generation: i64,
    hostname: String,
    subject_alt_names: Vec<SubjectAltName>,
    trust: Trust,
    accepted: Condition,
    resolved_refs: Condition,
    /// Gateways whose routes reach a port this policy governs.
    ancestors: BTreeSet<ObjectKey>,
}

/// A Service, and the name of one of its ports or None for the whole Service.
type Target = (ObjectKey, Option<String>);

struct PolicyIndex {
    policies: BTreeMap<ObjectKey, ResolvedPolicy>,
    /// (Service, port name or None for the whole Service) -> the winning policy.
    by_target: BTreeMap<Target, ObjectKey>,
    /// The same targets -> every policy that names them, winners and losers.
    contenders: BTreeMap<Target, Vec<ObjectKey>>,
    /// CA bundles by secret name.
    bundles: BTreeMap<String, String>,
}

impl PolicyIndex {
    fn build(store: &Store, options: &Options) -> Self {
        let mut index = PolicyIndex {
            policies: BTreeMap::new(),
            by_target: BTreeMap::new(),
            contenders: BTreeMap::new(),
            bundles: BTreeMap::new(),
        };
        // Candidates per target, in precedence order: oldest creationTimestamp, then namespace/name.
        let mut candidates: BTreeMap<Target, Vec<(Option<&str>, ObjectKey)>> = BTreeMap::new();
        for (key, policy) in &store.policies {
            let resolved = resolve_policy(store, options, key, policy, &mut index.bundles);
            if resolved.accepted.status || resolved.accepted.reason == "NoValidCACertificate" {
                for target in &policy.spec.target_refs {
                    if target.group.is_empty() && target.kind == "Service" {
                        let service = ObjectKey::new(&key.namespace, &target.name);
                        let created = policy.metadata.creation_timestamp.as_deref();
                        candidates
                            .entry((service, target.section_name.clone()))
                            .or_default()
                            .push((created, key.clone()));
                    }
                }
            }
            index.policies.insert(key.clone(), resolved);
        }
        for (target, mut contenders) in candidates {
            // None (no timestamp) sorts after every timestamp.
            contenders.sort_by(|a, b| (a.0.is_none(), a.0, &a.1).cmp(&(b.0.is_none(), b.0, &b.1)));
            let winner = contenders[0].1.clone();
            for (_, loser) in &contenders[1..] {
                let policy = index.policies.get_mut(loser).expect("indexed above");
                policy.accepted = Condition::new(
                    "Accepted",
                    false,
                    "Conflicted",
                    format!(
                        "{} targets the same Service{} and takes precedence (older creationTimestamp, then namespace/name)",
                        winner,
                        target.1.as_ref().map(|s| format!(" port {s}")).unwrap_or_default()
                    ),
                );
            }
            index
                .contenders
                .insert(target.clone(), contenders.into_iter().map(|(_, k)| k).collect());
            index.by_target.insert(target, winner);
        }
        index
    }

    /// The policy that governs a Service port: one naming the port wins over a whole-Service one.
    fn governing(
        &mut self,
        service: &ObjectKey,
        port: &ServicePort,
    ) -> Option<&mut ResolvedPolicy> {
        let key = self
            .by_target
            .get(&(service.clone(), Some(port.name().to_string())))
            .or_else(|| self.by_target.get(&(service.clone(), None)))?;
        let policy = self.policies.get_mut(key)?;
        // A conflicted policy does not govern; the winner is in by_target already.
        Some(policy)
    }

    /// Records that a Gateway's routes reach a Service port: an ancestor of every policy that
    /// targets it, including those that lost a conflict (their status must say so there).
    fn reached_from(&mut self, gateway: &ObjectKey, service: &ObjectKey, port: &ServicePort) {
        for section in [Some(port.name().to_string()), None] {
            for key in self.contenders.get(&(service.clone(), section)).into_iter().flatten() {
                if let Some(policy) = self.policies.get_mut(key) {
                    policy.ancestors.insert(gateway.clone());
                }
            }
        }
    }

    fn reports(self) -> Vec<PolicyReport> {
        self.policies
            .into_values()
            .map(|p| PolicyReport {
                namespace: p.key.namespace.clone(),
                name: p.key.name.clone(),
                ancestors: PolicyAncestor::for_gateways(&p.ancestors),
                conditions: vec![
                    p.accepted.observed(p.generation),
                    p.resolved_refs.observed(p.generation),
                ],
            })
            .collect()
    }
}

fn resolve_policy(
    store: &Store,
    options: &Options,
    key: &ObjectKey,
    policy: &BackendTlsPolicy,
    bundles: &mut BTreeMap<String, String>,
) -> ResolvedPolicy {
    let validation = &policy.spec.validation;
    let subject_alt_names = validation
        .subject_alt_names
        .iter()
        .filter_map(|san| match (san.kind.as_str(), &san.hostname, &san.uri) {
            ("Hostname", Some(h), None) => Some(SubjectAltName::Hostname(h.clone())),
            ("URI", None, Some(u)) => Some(SubjectAltName::Uri(u.clone())),
            _ => None,
        })
        .collect::<Vec<_>>();
    let mut resolved = ResolvedPolicy {
        key: key.clone(),
        generation: policy.metadata.generation(),
        hostname: validation.hostname.clone(),
        subject_alt_names,
        trust: Trust::Unusable { reason: String::new() },
        accepted: Condition::new("Accepted", true, "Accepted", "Policy is accepted".into()),
        resolved_refs: Condition::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All CA certificate references are resolved".into(),
        ),
        ancestors: BTreeSet::new(),
    };
    if let Err(reason) = validate_spec(policy) {
        resolved.accepted = Condition::new("Accepted", false, "Invalid", reason.clone());
        resolved.trust = Trust::Unusable { reason };
        return resolved;
    }

    let mut pems = Vec::new();
    if let Some(well_known) = &validation.well_known_ca_certificates {
        if well_known != "System" {
            let reason = format!(
                "wellKnownCACertificates {well_known:?} is not supported (supported: System)"
            );
            resolved.accepted = Condition::new("Accepted", false, "Invalid", reason.clone());
            resolved.trust = Trust::Unusable { reason };
            return resolved;
        }
        match std::fs::read_to_string(&options.system_ca_bundle)
            .map_err(|e| e.to_string())
            .and_then(|pem| check_ca_pem(&pem).map(|_| pem))
        {
            Ok(pem) => pems.push(pem),
            Err(e) => {
                let reason = format!(
                    "the system trust bundle {} is not usable: {e}",
                    options.system_ca_bundle.display()
                );
                resolved.accepted = Condition::new("Accepted", false, "Invalid", reason.clone());
                resolved.trust = Trust::Unusable { reason };
                return resolved;
            }
        }
    }

    let mut failures = Vec::new();
    let mut invalid_kind = false;
    for ca_ref in &validation.ca_certificate_refs {
        let ref_key = ObjectKey::new(&key.namespace, &ca_ref.name);
        let pem = match (ca_ref.group.as_str(), ca_ref.kind.as_str()) {
            ("", "ConfigMap") => match store.config_maps.get(&ref_key) {
                None => Err(format!("ConfigMap {ref_key} not found")),
                Some(cm) => cm
                    .data
                    .get("ca.crt")
                    .cloned()
                    .ok_or_else(|| format!("ConfigMap {ref_key} has no key ca.crt")),
            },
            ("", "Secret") => match store.secrets.get(&ref_key) {
                None => Err(format!("Secret {ref_key} not found")),
                Some(secret) => secret_value(secret, "ca.crt")
                    .ok_or_else(|| format!("Secret {ref_key} has no usable key ca.crt")),
            },
            (group, kind) => {
                invalid_kind = true;
                let group = if group.is_empty() { "core" } else { group };
                failures.push(format!(
                    "caCertificateRef {kind} {} (group {group}) is not a supported kind (ConfigMap or Secret in the core group)",
                    ca_ref.name
                ));
                continue;
            }
        };
        match pem.and_then(|pem| {
            check_ca_pem(&pem)
                .map(|_| pem)
                .map_err(|e| format!("{} {ref_key}: ca.crt {e}", ca_ref.kind))
        }) {
            Ok(pem) => pems.push(pem),
            Err(reason) => failures.push(reason),
        }
    }
    if !failures.is_empty() {
        let reason = if invalid_kind { "InvalidKind" } else { "InvalidCACertificateRef" };
        resolved.resolved_refs = Condition::new("ResolvedRefs", false, reason, failures.join("; "));
    }
    if pems.is_empty() {
        let reason = format!("no valid CA certificate: {}", failures.join("; "));
        resolved.accepted =
            Condition::new("Accepted", false, "NoValidCACertificate", reason.clone());
        resolved.trust = Trust::Unusable { reason };
        return resolved;
    }
    let mut bundle = String::new();
    for pem in pems {
        bundle.push_str(pem.trim_end());
        bundle.push('\n');
    }
    let secret = ca_secret_name(&bundle);
    bundles.insert(secret.clone(), bundle);
    resolved.trust = Trust::Ca { secret };
    resolved
}

/// What the API server's schema and CEL rules would reject.
fn validate_spec(policy: &BackendTlsPolicy) -> Result<(), String> {
    let v = &policy.spec.validation;
    match (v.ca_certificate_refs.is_empty(), v.well_known_ca_certificates.is_some()) {
        (false, true) => {
            return Err("must not contain both caCertificateRefs and wellKnownCACertificates".into())
        }
        (true, false) => {
            return Err("must specify either caCertificateRefs or wellKnownCACertificates".into())
        }
        _ => {}
    }
    if !is_precise_hostname(&v.hostname) {
        return Err(format!(
            "hostname {:?} is not a valid lowercase DNS name without wildcards",
            v.hostname
        ));
    }
    for san in &v.subject_alt_names {
        match (san.kind.as_str(), &san.hostname, &san.uri) {
            ("Hostname", Some(h), None) if !h.is_empty() => {}
            ("URI", None, Some(u)) if u.contains("://") => {}
            _ => {
                return Err(format!(
                    "subjectAltNames entry {{type: {}, hostname: {:?}, uri: {:?}}}: type Hostname needs only hostname, type URI needs only an absolute uri",
                    san.kind, san.hostname, san.uri
                ))
            }
        }
    }
    if policy.spec.target_refs.is_empty() {
        return Err("targetRefs must name at least one target".into());
    }
    Ok(())
}

fn is_precise_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn secret_value(secret: &objects::Secret, key: &str) -> Option<String> {
    use base64::Engine;
    if let Some(value) = secret.string_data.get(key) {
        return Some(value.clone());
    }
    let encoded = secret.data.get(key)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// A CA bundle must be PEM with at least one certificate and nothing unparsable.
pub fn check_ca_pem(pem: &str) -> Result<usize, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        cert.map_err(|e| format!("is not valid PEM: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err(if pem.trim().is_empty() {
            "is empty".into()
        } else {
            "contains no PEM CERTIFICATE block".into()
        });
    }
    Ok(count)
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
    gateway_key: &ObjectKey,
    gateway: &Gateway,
    group: ListenerGroup<'_>,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
) -> Listener {
    // hostname -> routes (with their precedence keys) for that virtual host.
    let mut hosts: BTreeMap<String, Vec<(RouteOrder, Route)>> = BTreeMap::new();
    for (route_key, route) in &store.http_routes {
        let hostnames = attached_hostnames(store, gateway_key, gateway, &group, route_key, route);
        if hostnames.is_empty() {
            continue;
        }
        let routes = build_routes(store, gateway_key, route_key, route, policies, ir);
        for hostname in hostnames {
            hosts.entry(hostname).or_default().extend(routes.iter().cloned());
        }
    }
    let virtual_hosts = hosts
        .into_iter()
        .map(|(hostname, mut routes)| {
            routes.sort_by(|a, b| a.0.cmp(&b.0));
            VirtualHost {
                name: format!("{}~{}", group.name, hostname),
                domains: vec![hostname],
                routes: routes.into_iter().map(|(_, r)| r).collect(),
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
struct RouteOrder {
    exact_first: u8,
    longer_first: std::cmp::Reverse<usize>,
    created_missing: bool,
    created: Option<String>,
    route: ObjectKey,
    rule: usize,
    matched: usize,
}

fn build_routes(
    store: &Store,
    gateway_key: &ObjectKey,
    route_key: &ObjectKey,
    route: &HttpRoute,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
) -> Vec<(RouteOrder, Route)> {
    let mut out = Vec::new();
    for (rule_index, rule) in route.spec.rules.iter().enumerate() {
        let action = route_action(store, gateway_key, route_key, rule, policies, ir);
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
                created: route.metadata.creation_timestamp.clone(),
                route: route_key.clone(),
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
    gateway_key: &ObjectKey,
    route_key: &ObjectKey,
    rule: &objects::HttpRouteRule,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
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
        match backend_cluster(store, gateway_key, route_key, backend, policies, ir) {
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
    gateway_key: &ObjectKey,
    route_key: &ObjectKey,
    backend: &objects::BackendRef,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
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
    let name = backendtls_filter::contract::cluster_name(namespace, &backend.name, port_number);
    if !ir.clusters.contains_key(&name) {
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
            trust: policy.trust.clone(),
        });
        ir.clusters.insert(
            name.clone(),
            Cluster {
                name: name.clone(),
                service: service_key.clone(),
                port: port_number,
                endpoints,
                tls,
            },
        );
    }
    policies.reached_from(gateway_key, &service_key, port);
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

    #[test]
    fn precise_hostnames() {
        assert!(is_precise_hostname("example.com"));
        assert!(!is_precise_hostname("*.example.com"));
        assert!(!is_precise_hostname("Example.com"));
        assert!(!is_precise_hostname(""));
    }
}
