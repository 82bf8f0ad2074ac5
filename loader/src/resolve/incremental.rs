//! Re-resolving only what a change touches.
//!
//! `serve` keeps an [`Incremental`] between builds: the last [`Resolution`] and indexes from
//! Services to the routes and policies that name them, and from ConfigMaps and Secrets to the
//! policies whose `caCertificateRefs` name them. A change is resolved as a **component**: the
//! changed routes, Services (with their slices) and policies, closed under
//!
//! - a policy → the Services it targets (its status lists the Gateways that reach any of them);
//! - a Service → every route that sends to it (one cluster serves them all: the first decides
//!   its client certificate, any GRPCRoute makes it HTTP/2) and every policy that targets it
//!   (they contend for it);
//! - a route → the Services it sends to, and every route on the virtual hosts it may be on
//!   (route precedence is across all routes of a host). A route may be on a host named by its
//!   `hostnames`, by a Gateway listener or `*`: those hosts count, before and after the change.
//!
//! The component is resolved by the ordinary [`resolve`] on a store holding only it (and every
//! Gateway), and its clusters, virtual hosts, reports and listener route counts replace the old
//! ones. Every other part of the resolution depends on nothing in the component, so it stays.
//!
//! Resolved in full instead: the first build; changes to Gateways, GatewayClasses,
//! ReferenceGrants, Namespaces or Secrets Gateways use; any TLSRoute (its listeners' chains are
//! per port); resolutions that report problems (their order is global); a component holding
//! half the routes or more; and a component whose result is not what was assumed (a virtual
//! host outside it). `tests/incremental.rs` checks on random edit sequences that every build
//! equals a full one.

use super::*;
use crate::objects::{BackendTlsPolicy, Object};
use crate::store::Changes;
use std::collections::HashMap;

/// What a build did, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Everything resolved, and why.
    Full(&'static str),
    /// A component of this many routes, Services and policies resolved.
    Partial { routes: usize, services: usize, policies: usize },
}

/// The last resolution and what is needed to update it; see the module documentation.
pub struct Incremental {
    options: Options,
    kept: Option<Kept>,
}

/// A route: its kind and key.
type RouteKey = (RouteKind, ObjectKey);

/// An [`ObjectKey`] in one allocation (namespace and name joined, and where they join): the
/// indexes hold several per backend, and an `ObjectKey` is two.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Name {
    joined: Box<str>,
    namespace_len: u32,
}

impl Name {
    fn of(key: &ObjectKey) -> Name {
        let joined = [key.namespace.as_str(), key.name.as_str()].concat().into_boxed_str();
        Name { joined, namespace_len: key.namespace.len() as u32 }
    }

    fn key(&self) -> ObjectKey {
        let (namespace, name) = self.joined.split_at(self.namespace_len as usize);
        ObjectKey::new(namespace, name)
    }
}

/// A [`RouteKey`] as the indexes keep it.
type RouteName = (RouteKind, Name);

fn route_name((kind, key): &RouteKey) -> RouteName {
    (*kind, Name::of(key))
}

struct Kept {
    resolution: Resolution,
    /// Routes by the Services their backendRefs and mirrors name (found or not).
    routes_by_service: HashMap<Name, Vec<RouteName>>,
    /// Policies by the Services they target (found or not).
    policies_by_service: HashMap<Name, Vec<Name>>,
    /// Policies by the ConfigMaps and Secrets their `caCertificateRefs` name (found or not).
    policies_by_ca_ref: HashMap<(&'static str, Name), Vec<Name>>,
    /// The routes attached to each listener, by Gateway and listener index.
    attached: HashMap<(ObjectKey, usize), BTreeSet<RouteName>>,
    /// Routes that send a share to [`INVALID_BACKEND_CLUSTER`]: it exists while there is one.
    invalid_cluster_users: BTreeSet<RouteKey>,
    /// How many clusters use each CA bundle of `resolution.ir.ca_bundles`.
    bundle_users: HashMap<String, usize>,
    /// What the last build changed, when it was partial.
    changes: Option<IrChanges>,
}

/// Why a change is resolved in full.
struct Full(&'static str);

impl Incremental {
    pub fn new(options: Options) -> Self {
        Incremental { options, kept: None }
    }

    /// The resolution made by the last [`Self::update`].
    ///
    /// # Panics
    /// Before the first update.
    pub fn resolution(&self) -> &Resolution {
        &self.kept.as_ref().expect("updated before").resolution
    }

    /// What the last [`Self::update`] changed in the IR, when it was partial.
    pub fn changes(&self) -> Option<&IrChanges> {
        self.kept.as_ref()?.changes.as_ref()
    }

    /// Brings the resolution up to date with `store` (see [`Self::resolution`]), from the last
    /// one where the changes recorded since ([`Store::take_changes`]) allow; says how.
    pub fn update(&mut self, store: &mut Store) -> Build {
        let changes = store.take_changes();
        let outcome = match (self.kept.as_mut(), &changes) {
            (Some(kept), Some(changes)) => kept.apply(store, &self.options, changes),
            (None, _) => Err(Full("first build")),
            (_, None) => Err(Full("changes were not recorded")),
        };
        match outcome {
            Ok(build) => build,
            Err(Full(why)) => {
                // The old state goes first: a full build must not hold two resolutions at once.
                self.kept = None;
                self.kept = Some(Kept::resolve(store, &self.options));
                Build::Full(why)
            }
        }
    }
}

impl Kept {
    fn resolve(store: &Store, options: &Options) -> Kept {
        let mut attached = HashMap::new();
        let resolution =
            resolve_observed(store, options, |served| attached = attached_routes(served));
        let mut kept = Kept {
            routes_by_service: HashMap::new(),
            policies_by_service: HashMap::new(),
            policies_by_ca_ref: HashMap::new(),
            attached,
            invalid_cluster_users: invalid_cluster_users(&resolution.ir),
            bundle_users: HashMap::new(),
            changes: None,
            resolution,
        };
        for cluster in kept.resolution.ir.clusters.values() {
            if let Some(BackendTls { trust: Trust::Ca { secret }, .. }) = &cluster.tls {
                *kept.bundle_users.entry(secret.clone()).or_default() += 1;
            }
        }
        for (id, route) in all_routes(store) {
            kept.index_route(id.kind, id.key, route, true);
        }
        for (key, policy) in &store.policies {
            kept.index_policy(key, policy, true);
        }
        kept
    }

    /// Resolves the component of `changes` and puts it in place of the old one, or says why it
    /// must be resolved in full. Nothing is modified before the component's resolution was
    /// found usable.
    fn apply(
        &mut self,
        store: &Store,
        options: &Options,
        changes: &Changes,
    ) -> Result<Build, Full> {
        if !store.tls_routes.is_empty() {
            return Err(Full("TLSRoutes are resolved in full"));
        }
        if !self.resolution.problems.is_empty() {
            return Err(Full("the last resolution reported problems"));
        }
        let gateway_secrets = gateway_secrets(store);
        let component = self.component(store, changes, &gateway_secrets)?;
        let total_routes = store.http_routes.len() + store.grpc_routes.len();
        if component.routes.len() * 2 > total_routes.max(8) {
            return Err(Full("the change reaches half the routes or more"));
        }
        let sub_store = component.store(store, &gateway_secrets);
        let mut sub_attached = HashMap::new();
        let sub = resolve_observed(&sub_store, options, |served| {
            sub_attached = attached_routes(served);
        });
        if !sub.problems.is_empty() {
            return Err(Full("the change's resolution reports problems"));
        }
        // Same Gateways, so the same Envoy listeners; the component's hosts stay inside it.
        let listeners = &self.resolution.ir.listeners;
        if sub.ir.listeners.len() != listeners.len()
            || sub.ir.listeners.iter().zip(listeners).any(|(a, b)| a.name != b.name)
        {
            return Err(Full("the listeners differ"));
        }
        for listener in &sub.ir.listeners {
            if !listener.tcp_proxies.is_empty() {
                return Err(Full("TLS listeners are resolved in full"));
            }
            for host in &listener.virtual_hosts {
                if !component.hosts.contains(&host.domains[0]) {
                    return Err(Full("the change reached a host outside its component"));
                }
            }
        }
        let build = Build::Partial {
            routes: component.routes.len(),
            services: component.services.len(),
            policies: component.policies.len(),
        };
        self.replace(&component, sub, sub_attached);
        self.reindex(store, changes);
        Ok(build)
    }

    /// The routes, Services, policies and hosts a change reaches (see the module documentation).
    fn component(
        &self,
        store: &Store,
        changes: &Changes,
        gateway_secrets: &BTreeSet<ObjectKey>,
    ) -> Result<Component, Full> {
        let mut c = Component::default();
        let mut routes = Vec::new();
        let mut services: Vec<ObjectKey> = changes.slice_services.iter().cloned().collect();
        let mut policies = Vec::new();
        // Hosts any route may be on whatever its hostnames: those of the listeners, and `*`.
        let mut hosts: Vec<String> = vec!["*".to_string()];
        for gateway in store.gateways.values() {
            hosts.extend(gateway.spec.listeners.iter().flat_map(|l| l.hostname.clone()));
        }
        for (kind, key) in &changes.objects {
            match *kind {
                "HTTPRoute" => routes.push((RouteKind::Http, key.clone())),
                "GRPCRoute" => routes.push((RouteKind::Grpc, key.clone())),
                "Service" => services.push(key.clone()),
                "EndpointSlice" => {} // `changes.slice_services`
                "BackendTLSPolicy" => policies.push(key.clone()),
                "Secret" if gateway_secrets.contains(key) => {
                    return Err(Full("a Secret a Gateway uses changed"))
                }
                "ConfigMap" | "Secret" => {
                    let named = self.policies_by_ca_ref.get(&(*kind, Name::of(key)));
                    policies.extend(named.into_iter().flatten().map(Name::key));
                }
                _ => return Err(Full("a Gateway, class, grant or namespace changed")),
            }
        }
        // What changed objects named before the change counts too.
        for old in &changes.old {
            let key = old.key();
            match old {
                Object::HttpRoute(r) => {
                    services.extend(service_refs(AnyRoute::Http(r), &key.namespace));
                    hosts.extend(r.spec.hostnames.iter().cloned());
                }
                Object::GrpcRoute(r) => {
                    services.extend(service_refs(AnyRoute::Grpc(r), &key.namespace));
                    hosts.extend(r.spec.hostnames.iter().cloned());
                }
                Object::BackendTlsPolicy(p) => services.extend(policy_targets(&key, p)),
                _ => {}
            }
        }
        // Closure: until nothing is added.
        while !(routes.is_empty() && services.is_empty() && policies.is_empty() && hosts.is_empty())
        {
            for key in std::mem::take(&mut policies) {
                if let Some(policy) = store.policies.get(&key) {
                    services.extend(policy_targets(&key, policy));
                }
                c.policies.insert(key);
            }
            for key in std::mem::take(&mut services) {
                if c.services.contains(&key) {
                    continue;
                }
                let name = Name::of(&key);
                let sending = self.routes_by_service.get(&name).into_iter().flatten();
                routes.extend(sending.map(|(kind, route)| (*kind, route.key())));
                let contenders = self.policies_by_service.get(&name).into_iter().flatten();
                let contenders = contenders.map(Name::key);
                policies.extend(contenders.filter(|p| !c.policies.contains(p)));
                c.services.insert(key);
            }
            for id in std::mem::take(&mut routes) {
                if c.routes.contains(&id) {
                    continue;
                }
                if let Some(route) = lookup_key(store, &id) {
                    services.extend(service_refs(route, &id.1.namespace));
                    hosts.extend(route.hostnames().iter().cloned());
                }
                c.routes.insert(id);
            }
            for host in std::mem::take(&mut hosts) {
                if c.hosts.contains(&host) {
                    continue;
                }
                for listener in &self.resolution.ir.listeners {
                    let vhosts = &listener.virtual_hosts;
                    let Ok(at) = vhosts.binary_search_by(|v| v.domains[0].as_str().cmp(&host))
                    else {
                        continue;
                    };
                    for route in &vhosts[at].routes {
                        let id = route_of_name(&route.name).expect("routes are named so");
                        if !c.routes.contains(&id) {
                            routes.push(id);
                        }
                    }
                }
                c.hosts.insert(host);
            }
        }
        Ok(c)
    }

    /// Puts the component's resolution `sub` in place of its old part.
    fn replace(
        &mut self,
        c: &Component,
        sub: Resolution,
        sub_attached: HashMap<(ObjectKey, usize), BTreeSet<RouteName>>,
    ) {
        let mut sub = sub;
        let mut changes = IrChanges::default();
        // Clusters: every cluster of the component's Services, and the invalid-backend one.
        for service in &c.services {
            // `kube_<namespace>_<name>_`: the contract's name without the port.
            let name_for_port_0 =
                backendtls_contract::cluster_name(&service.namespace, &service.name, 0);
            let prefix = name_for_port_0.strip_suffix('0').expect("the port ends the name");
            let names: Vec<String> = self
                .resolution
                .ir
                .clusters
                .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                .take_while(|(name, _)| name.starts_with(prefix))
                .filter(|(_, cluster)| &cluster.service == service)
                .map(|(name, _)| name.clone())
                .collect();
            for name in names {
                let cluster = self.resolution.ir.clusters.remove(&name).expect("listed");
                self.count_bundle(&cluster, -1);
                changes.clusters.insert(name);
            }
        }
        let mut sub_clusters = std::mem::take(&mut sub.ir.clusters);
        let invalid = sub_clusters.remove(INVALID_BACKEND_CLUSTER);
        for (name, cluster) in sub_clusters {
            if let Some(BackendTls { trust: Trust::Ca { secret }, .. }) = &cluster.tls {
                let pem = || sub.ir.ca_bundles[secret].clone();
                self.resolution.ir.ca_bundles.entry(secret.clone()).or_insert_with(pem);
            }
            self.count_bundle(&cluster, 1);
            changes.clusters.insert(name.clone());
            self.resolution.ir.clusters.insert(name, cluster);
        }
        changes.clusters.insert(INVALID_BACKEND_CLUSTER.to_string());
        changes.hosts = c.hosts.clone();
        self.invalid_cluster_users.retain(|r| !c.routes.contains(r));
        self.invalid_cluster_users.extend(invalid_cluster_users(&sub.ir));
        if self.invalid_cluster_users.is_empty() {
            self.resolution.ir.clusters.remove(INVALID_BACKEND_CLUSTER);
        } else if let Some(invalid) = invalid {
            self.resolution.ir.clusters.insert(INVALID_BACKEND_CLUSTER.to_string(), invalid);
        }

        // Virtual hosts: those of the component's hosts, on every listener.
        for (listener, sub_listener) in
            self.resolution.ir.listeners.iter_mut().zip(&mut sub.ir.listeners)
        {
            let vhosts = &mut listener.virtual_hosts;
            for host in &c.hosts {
                if let Ok(at) = vhosts.binary_search_by(|v| v.domains[0].cmp(host)) {
                    vhosts.remove(at);
                }
            }
            for vhost in sub_listener.virtual_hosts.drain(..) {
                let at = vhosts
                    .binary_search_by(|v| v.domains[0].cmp(&vhost.domains[0]))
                    .expect_err("removed above");
                vhosts.insert(at, vhost);
            }
        }

        // Reports: route reports are in `all_routes` order (kind, then key).
        let reports = &mut self.resolution.routes;
        for (kind, key) in &c.routes {
            let at = reports.binary_search_by(|r| {
                route_order(r.kind, &r.namespace, &r.name).cmp(&(*kind, &key.namespace, &key.name))
            });
            if let Ok(at) = at {
                reports.remove(at);
            }
        }
        for report in sub.routes {
            let at = reports
                .binary_search_by(|r| {
                    route_order(r.kind, &r.namespace, &r.name).cmp(&route_order(
                        report.kind,
                        &report.namespace,
                        &report.name,
                    ))
                })
                .expect_err("removed above");
            reports.insert(at, report);
        }
        let reports = &mut self.resolution.policies;
        let policy_at = |reports: &[crate::status::PolicyReport], namespace: &str, name: &str| {
            reports.binary_search_by(|p| (&*p.namespace, &*p.name).cmp(&(namespace, name)))
        };
        for key in &c.policies {
            if let Ok(at) = policy_at(reports, &key.namespace, &key.name) {
                reports.remove(at);
            }
        }
        for report in sub.policies {
            let at = policy_at(reports, &report.namespace, &report.name).expect_err("removed");
            reports.insert(at, report);
        }
        for ((gateway, listener), routes) in &mut self.attached {
            for route in &c.routes {
                routes.remove(&route_name(route));
            }
            if let Some(added) = sub_attached.get(&(gateway.clone(), *listener)) {
                routes.extend(added.iter().cloned());
            }
        }
        for report in &mut self.resolution.gateways {
            let gateway = ObjectKey::new(&report.namespace, &report.name);
            for (l, listener) in report.listeners.iter_mut().enumerate() {
                let count = self.attached.get(&(gateway.clone(), l)).map_or(0, BTreeSet::len);
                listener.attached_routes = count as u32;
            }
        }
        self.changes = Some(changes);
    }

    /// Updates the indexes for the changed routes and policies.
    fn reindex(&mut self, store: &Store, changes: &Changes) {
        for old in &changes.old {
            let key = old.key();
            match old {
                Object::HttpRoute(r) => {
                    self.index_route(RouteKind::Http, &key, AnyRoute::Http(r), false)
                }
                Object::GrpcRoute(r) => {
                    self.index_route(RouteKind::Grpc, &key, AnyRoute::Grpc(r), false)
                }
                Object::BackendTlsPolicy(p) => self.index_policy(&key, p, false),
                _ => {}
            }
        }
        for (kind, key) in &changes.objects {
            match *kind {
                "HTTPRoute" => {
                    if let Some(r) = store.http_routes.get(key) {
                        self.index_route(RouteKind::Http, key, AnyRoute::Http(r), true);
                    }
                }
                "GRPCRoute" => {
                    if let Some(r) = store.grpc_routes.get(key) {
                        self.index_route(RouteKind::Grpc, key, AnyRoute::Grpc(r), true);
                    }
                }
                "BackendTLSPolicy" => {
                    if let Some(p) = store.policies.get(key) {
                        self.index_policy(key, p, true);
                    }
                }
                _ => {}
            }
        }
    }

    /// Adds (`indexed`) or removes a route in `routes_by_service`.
    fn index_route(
        &mut self,
        kind: RouteKind,
        key: &ObjectKey,
        route: AnyRoute<'_>,
        indexed: bool,
    ) {
        for service in service_refs(route, &key.namespace) {
            let route = (kind, Name::of(key));
            edit(&mut self.routes_by_service, Name::of(&service), route, indexed);
        }
    }

    /// Adds (`indexed`) or removes a policy in `policies_by_service` and `policies_by_ca_ref`.
    fn index_policy(&mut self, key: &ObjectKey, policy: &BackendTlsPolicy, indexed: bool) {
        for service in policy_targets(key, policy) {
            edit(&mut self.policies_by_service, Name::of(&service), Name::of(key), indexed);
        }
        for r in &policy.spec.validation.ca_certificate_refs {
            let kind = match (r.group.as_str(), r.kind.as_str()) {
                ("", "ConfigMap") => "ConfigMap",
                ("", "Secret") => "Secret",
                _ => continue, // never looked up
            };
            let named = (kind, Name::of(&ObjectKey::new(&key.namespace, &r.name)));
            edit(&mut self.policies_by_ca_ref, named, Name::of(key), indexed);
        }
    }

    /// Counts (`by` 1) or uncounts (-1) a cluster's use of its CA bundle; an unused bundle goes.
    fn count_bundle(&mut self, cluster: &Cluster, by: isize) {
        let Some(BackendTls { trust: Trust::Ca { secret }, .. }) = &cluster.tls else { return };
        let users = self.bundle_users.entry(secret.clone()).or_default();
        *users = users.checked_add_signed(by).expect("counted before");
        if *users == 0 {
            self.bundle_users.remove(secret);
            self.resolution.ir.ca_bundles.remove(secret);
        }
    }
}

/// What a change reaches.
#[derive(Default)]
struct Component {
    routes: BTreeSet<RouteKey>,
    services: BTreeSet<ObjectKey>,
    policies: BTreeSet<ObjectKey>,
    /// Hostnames whose virtual hosts (on any listener) are the component's.
    hosts: BTreeSet<String>,
}

impl Component {
    /// A store of the component's objects, every Gateway with what Gateways use, and what
    /// routes and policies read besides (ReferenceGrants, their Namespaces, CA references).
    fn store(&self, store: &Store, gateway_secrets: &BTreeSet<ObjectKey>) -> Store {
        let mut sub = Store::default();
        let mut put = |object: Object| sub.put(object);
        store.gateways.values().for_each(|o| put(Object::Gateway(o.clone())));
        store.gateway_classes.values().for_each(|o| put(Object::GatewayClass(o.clone())));
        store.reference_grants.values().for_each(|o| put(Object::ReferenceGrant(o.clone())));
        let secret = |key: &ObjectKey| store.secrets.get(key).cloned().map(Object::Secret);
        gateway_secrets.iter().filter_map(secret).for_each(&mut put);
        let mut namespaces = BTreeSet::new();
        for id in &self.routes {
            let object = match id.0 {
                RouteKind::Http => store.http_routes.get(&id.1).cloned().map(Object::HttpRoute),
                RouteKind::Grpc => store.grpc_routes.get(&id.1).cloned().map(Object::GrpcRoute),
                RouteKind::Tls => unreachable!("TLSRoutes are resolved in full"),
            };
            if let Some(object) = object {
                namespaces.insert(id.1.namespace.as_str());
                put(object);
            }
        }
        for namespace in namespaces {
            if let Some(o) = store.namespaces.get(namespace) {
                put(Object::Namespace(o.clone()));
            }
        }
        for key in &self.services {
            if let Some(service) = store.services.get(key) {
                put(Object::Service(service.clone()));
                for name in store.endpoint_slice_names_of(key) {
                    let slice = &store.endpoint_slices[&ObjectKey::new(&key.namespace, name)];
                    put(Object::EndpointSlice(slice.clone()));
                }
            }
        }
        for key in &self.policies {
            let Some(policy) = store.policies.get(key) else { continue };
            put(Object::BackendTlsPolicy(policy.clone()));
            for r in &policy.spec.validation.ca_certificate_refs {
                let named = ObjectKey::new(&key.namespace, &r.name);
                match (r.group.as_str(), r.kind.as_str()) {
                    ("", "ConfigMap") => {
                        store.config_maps.get(&named).cloned().map(Object::ConfigMap).map(&mut put);
                    }
                    ("", "Secret") => drop(secret(&named).map(&mut put)),
                    _ => {}
                }
            }
        }
        sub
    }
}

/// Where a route report sorts (`all_routes` order).
fn route_order<'a>(kind: &str, namespace: &'a str, name: &'a str) -> (RouteKind, &'a str, &'a str) {
    (RouteKind::of_name(kind), namespace, name)
}

/// Secrets the Gateways name: listener certificates and backend client certificates.
fn gateway_secrets(store: &Store) -> BTreeSet<ObjectKey> {
    let mut secrets = BTreeSet::new();
    for (key, gateway) in &store.gateways {
        let spec = &gateway.spec;
        let client = spec.tls.iter().flat_map(|t| &t.backend);
        let client = client.flat_map(|b| &b.client_certificate_ref);
        let listeners = spec.listeners.iter().flat_map(|l| &l.tls);
        let listeners = listeners.flat_map(|t| &t.certificate_refs);
        for r in client.chain(listeners) {
            secrets
                .insert(ObjectKey::new(r.namespace.as_deref().unwrap_or(&key.namespace), &r.name));
        }
    }
    secrets
}

/// The routes attached to each listener of the served Gateways.
fn attached_routes(
    served: &[ServedGateway<'_>],
) -> HashMap<(ObjectKey, usize), BTreeSet<RouteName>> {
    let mut attached = HashMap::new();
    for gateway in served {
        for (l, listener) in gateway.listeners.iter().enumerate() {
            let routes = listener.attached.iter().map(|id| (id.kind, Name::of(id.key))).collect();
            attached.insert((gateway.key.clone(), l), routes);
        }
    }
    attached
}

/// Routes of `ir` that send to [`INVALID_BACKEND_CLUSTER`].
fn invalid_cluster_users(ir: &Ir) -> BTreeSet<RouteKey> {
    let mut users = BTreeSet::new();
    for route in ir.listeners.iter().flat_map(|l| &l.virtual_hosts).flat_map(|v| &v.routes) {
        let RouteAction::Forward(backends) = &route.action else { continue };
        if backends.iter().any(|b| b.cluster == INVALID_BACKEND_CLUSTER) {
            users.insert(route_of_name(&route.name).expect("routes are named so"));
        }
    }
    users
}

/// The Services a route's backendRefs and mirrors name, whatever their kind (more is harmless).
fn service_refs(route: AnyRoute<'_>, namespace: &str) -> Vec<ObjectKey> {
    let key = |b: &objects::BackendRef| {
        ObjectKey::new(b.namespace.as_deref().unwrap_or(namespace), &b.name)
    };
    match route {
        AnyRoute::Http(r) => r
            .spec
            .rules
            .iter()
            .flat_map(|rule| {
                let mirrors = rule.filters.iter().filter_map(|f| f.request_mirror.as_ref());
                rule.backend_refs.iter().chain(mirrors.map(|m| &m.backend_ref))
            })
            .map(key)
            .collect(),
        AnyRoute::Grpc(r) => {
            r.spec.rules.iter().flat_map(|rule| &rule.backend_refs).map(key).collect()
        }
        AnyRoute::Tls(r) => {
            r.spec.rules.iter().flat_map(|rule| &rule.backend_refs).map(key).collect()
        }
    }
}

/// The Services the `targetRefs` of policy `key` name.
fn policy_targets<'a>(
    key: &'a ObjectKey,
    policy: &'a BackendTlsPolicy,
) -> impl Iterator<Item = ObjectKey> + 'a {
    let namespace = &key.namespace;
    policy
        .spec
        .target_refs
        .iter()
        .filter(|t| t.group.is_empty() && t.kind == "Service")
        .map(move |t| ObjectKey::new(namespace, &t.name))
}

fn lookup_key<'a>(store: &'a Store, id: &RouteKey) -> Option<AnyRoute<'a>> {
    match id.0 {
        RouteKind::Http => store.http_routes.get(&id.1).map(|r| AnyRoute::Http(r)),
        RouteKind::Grpc => store.grpc_routes.get(&id.1).map(|r| AnyRoute::Grpc(r)),
        RouteKind::Tls => store.tls_routes.get(&id.1).map(|r| AnyRoute::Tls(r)),
    }
}

/// Adds (`present`) or removes `value` in the entry of `key`.
fn edit<K: std::hash::Hash + Eq, V: PartialEq>(
    index: &mut HashMap<K, Vec<V>>,
    key: K,
    value: V,
    present: bool,
) {
    if present {
        let values = index.entry(key).or_default();
        if !values.contains(&value) {
            // Most entries hold one value: a Vec grown from empty keeps room for four.
            if values.is_empty() {
                values.reserve_exact(1);
            }
            values.push(value);
        }
    } else if let Some(values) = index.get_mut(&key) {
        values.retain(|v| v != &value);
        if values.is_empty() {
            index.remove(&key);
        }
    }
}
