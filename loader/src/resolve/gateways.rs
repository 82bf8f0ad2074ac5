//! Gateways: their listeners grouped by port, which routes attach to them under which
//! hostnames, and the Gateway's backend client certificate.

use super::*;

/// The Gateway's `spec.tls.backend.clientCertificateRef`, resolved into the IR, and the
/// Gateway's `ResolvedRefs` condition. An invalid reference leaves the Gateway Accepted with
/// `ResolvedRefs=False` and no client certificate (backends that require one refuse the handshake).
pub(super) fn gateway_client_certificate(
    store: &Store,
    key: &ObjectKey,
    gateway: &Gateway,
    ir: &mut Ir,
) -> (Option<String>, Condition) {
    let resolved = || {
        Condition::new("ResolvedRefs", true, "ResolvedRefs", "All references are resolved".into())
    };
    let Some(reference) = gateway
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
    else {
        return (None, resolved());
    };
    let namespace = reference.namespace.as_deref().unwrap_or(&key.namespace);
    let secret_key = ObjectKey::new(namespace, &reference.name);
    let invalid = |reason: &'static str, message: String| {
        (None, Condition::new("ResolvedRefs", false, reason, message))
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
            (Some(name), resolved())
        }
        Err(e) => invalid(
            "InvalidClientCertificateRef",
            format!("clientCertificateRef Secret {secret_key} {e}"),
        ),
    }
}

pub(super) fn secret_reference_granted(
    store: &Store,
    gateway: &ObjectKey,
    secret: &ObjectKey,
) -> bool {
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
// Gateways, their listeners, and the routes attached to them

/// Whether the loader serves Gateways of `class`: the one `--gateway-class` names, else a class
/// whose GatewayClass object has this loader's `controllerName`, or that has no GatewayClass
/// object at all (manifests for file mode often leave it out).
pub(super) fn serves_class(store: &Store, options: &Options, class: &str) -> bool {
    match &options.gateway_class {
        Some(only) => only == class,
        None => store
            .gateway_classes
            .get(class)
            .is_none_or(|c| c.spec.controller_name == crate::status::CONTROLLER_NAME),
    }
}

/// `Accepted` for every GatewayClass of this loader's controller (other controllers' classes are
/// theirs to report on).
pub(super) fn gateway_class_reports(store: &Store) -> Vec<GatewayClassReport> {
    store
        .gateway_classes
        .iter()
        .filter(|(_, c)| c.spec.controller_name == crate::status::CONTROLLER_NAME)
        .map(|(name, class)| {
            let generation = class.metadata.generation();
            GatewayClassReport {
                name: name.clone(),
                generation,
                conditions: vec![Condition::new(
                    "Accepted",
                    true,
                    "Accepted",
                    "GatewayClass is accepted".into(),
                )
                .observed(generation)],
            }
        })
        .collect()
}

/// The route kinds the loader implements, as listeners report them.
pub(super) const HTTP_ROUTE: RouteGroupKind =
    RouteGroupKind { group: GATEWAY_GROUP, kind: "HTTPRoute" };
pub(super) const GRPC_ROUTE: RouteGroupKind =
    RouteGroupKind { group: GATEWAY_GROUP, kind: "GRPCRoute" };

/// A Gateway the loader serves, with what it concluded about each of its listeners.
pub(super) struct ServedGateway<'a> {
    pub key: &'a ObjectKey,
    pub gateway: &'a Gateway,
    /// Secret name of the Gateway's backend client certificate, when it has a valid one.
    pub client_certificate: Option<String>,
    /// The Gateway's `ResolvedRefs`: its backend client certificate.
    pub resolved_refs: Condition,
    /// In spec order.
    pub listeners: Vec<ListenerState<'a>>,
    /// Why the Gateway itself is not accepted (`InvalidParameters`); its listeners then take no
    /// port and no routes.
    pub refused: Option<(&'static str, String)>,
}

/// What the loader concluded about one spec listener.
pub(super) struct ListenerState<'a> {
    pub spec: &'a objects::GatewayListener,
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Why the listener is not Accepted: (`UnsupportedProtocol`, message).
    pub refused: Option<(&'static str, String)>,
    /// Why its references do not resolve: (`InvalidRouteKinds` or a certificate reason, message).
    pub unresolved: Option<(&'static str, String)>,
    /// Why it conflicts with a listener that came first on its port: (`HostnameConflict` or
    /// `ProtocolConflict`, message).
    pub conflicted: Option<(&'static str, String)>,
    /// Routes attached to it, each counted once.
    pub attached: BTreeSet<RouteId<'a>>,
    /// Its Gateway is accepted.
    pub gateway_accepted: bool,
}

impl ListenerState<'_> {
    /// Routes may attach: Accepted, not conflicted, and accepting some route kind.
    pub fn accepts_routes(&self) -> bool {
        self.gateway_accepted
            && self.refused.is_none()
            && self.conflicted.is_none()
            && !self.supported_kinds.is_empty()
    }

    /// Routes of `kind` may attach.
    pub fn accepts(&self, kind: RouteKind) -> bool {
        self.accepts_routes() && self.supported_kinds.contains(&kind.group_kind())
    }

    /// Served by Envoy: accepts routes and its references (other than route kinds, which only
    /// narrow `supportedKinds`) resolve.
    pub fn programmed(&self) -> bool {
        self.accepts_routes()
            && self.unresolved.as_ref().is_none_or(|(reason, _)| *reason == "InvalidRouteKinds")
    }

    /// The listener's hostname, `None` for every hostname.
    fn hostname(&self) -> Option<&str> {
        self.spec.hostname.as_deref().filter(|h| !h.is_empty())
    }
}

/// A Gateway's client certificate and the first judgement of its listeners (protocol, route
/// kinds); conflicts between listeners are settled by [`mark_conflicts`], attached routes by
/// [`attach_routes`].
pub(super) fn serve_gateway<'a>(
    store: &Store,
    key: &'a ObjectKey,
    gateway: &'a Gateway,
    ir: &mut Ir,
) -> ServedGateway<'a> {
    let (client_certificate, resolved_refs) = gateway_client_certificate(store, key, gateway, ir);
    let refused =
        gateway.spec.infrastructure.as_ref().and_then(|i| i.parameters_ref.as_ref()).map(|_| {
            (
                "InvalidParameters",
                "infrastructure.parametersRef is not supported: the loader takes no parameters"
                    .to_string(),
            )
        });
    let mut listeners: Vec<ListenerState<'_>> =
        gateway.spec.listeners.iter().map(evaluate_listener).collect();
    for listener in &mut listeners {
        listener.gateway_accepted = refused.is_none();
    }
    ServedGateway { key, gateway, client_certificate, resolved_refs, listeners, refused }
}

fn evaluate_listener(spec: &objects::GatewayListener) -> ListenerState<'_> {
    let mut state = ListenerState {
        spec,
        supported_kinds: Vec::new(),
        refused: None,
        unresolved: None,
        conflicted: None,
        attached: BTreeSet::new(),
        gateway_accepted: true,
    };
    if spec.protocol != "HTTP" {
        state.refused = Some((
            "UnsupportedProtocol",
            format!("protocol {} is not supported; supported: HTTP", spec.protocol),
        ));
        return state;
    }
    match spec.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        None => state.supported_kinds.extend([HTTP_ROUTE, GRPC_ROUTE]),
        Some(kinds) => {
            let mut invalid = Vec::new();
            for kind in kinds {
                let group = kind.group.as_deref().unwrap_or(GATEWAY_GROUP);
                let known = [HTTP_ROUTE, GRPC_ROUTE].into_iter().find(|k| k.kind == kind.kind);
                if let Some(known) = known.filter(|_| group == GATEWAY_GROUP) {
                    if !state.supported_kinds.contains(&known) {
                        state.supported_kinds.push(known);
                    }
                } else {
                    invalid.push(format!("{group}/{}", kind.kind));
                }
            }
            if !invalid.is_empty() {
                state.unresolved = Some((
                    "InvalidRouteKinds",
                    format!(
                        "route kinds {} are not supported; supported: {GATEWAY_GROUP}/HTTPRoute, {GATEWAY_GROUP}/GRPCRoute",
                        invalid.join(", ")
                    ),
                ));
            }
        }
    }
    state
}

/// Listeners that share a port, across every Gateway: the first (Gateways by creation time then
/// namespace/name, listeners in spec order) keeps a hostname; a later listener with the same
/// hostname is `Conflicted` (`HostnameConflict`), and one with another protocol than the
/// port's first listener is `Conflicted` (`ProtocolConflict`). Listeners with distinct hostnames
/// share one Envoy listener.
pub(super) fn mark_conflicts(gateways: &mut [ServedGateway<'_>]) {
    // port -> (protocol, hostname -> the listener that holds it)
    let mut ports: BTreeMap<u16, (String, BTreeMap<Option<String>, String>)> = BTreeMap::new();
    for gateway in gateways.iter_mut() {
        let key = gateway.key;
        let accepted = gateway.refused.is_none();
        for listener in gateway.listeners.iter_mut().filter(|l| accepted && l.refused.is_none()) {
            let port = listener.spec.port;
            let hostname = listener.hostname().map(str::to_string);
            let owner = format!("listener {} of Gateway {key}", listener.spec.name);
            let (protocol, hosts) = ports
                .entry(port)
                .or_insert_with(|| (listener.spec.protocol.clone(), BTreeMap::new()));
            if *protocol != listener.spec.protocol {
                let first = hosts.values().next().cloned().unwrap_or_default();
                listener.conflicted = Some((
                    "ProtocolConflict",
                    format!("port {port} is already served with protocol {protocol} by {first}"),
                ));
            } else if let Some(first) = hosts.get(&hostname) {
                listener.conflicted = Some((
                    "HostnameConflict",
                    format!(
                        "hostname {} on port {port} is already served by {first}",
                        hostname.as_deref().unwrap_or("(any)")
                    ),
                ));
            } else {
                hosts.insert(hostname, owner);
            }
        }
    }
}

/// The conditions the route's own rules give every parent: `ResolvedRefs`, and a refusal
/// (`Accepted=False`, e.g. `UnsupportedValue`) when the route uses what the loader does not
/// implement. This is the seam with `resolve/routes.rs`, whose rule resolution provides them.
pub(super) struct RouteConditions {
    pub resolved_refs: Condition,
    pub refusal: Option<Condition>,
}

pub(super) fn route_conditions(
    store: &Store,
    id: RouteId<'_>,
    route: AnyRoute<'_>,
) -> RouteConditions {
    let (resolved_refs, refusal) = super::routes::any_route_conditions(store, id, route);
    RouteConditions { resolved_refs, refusal }
}

/// A route attached to one listener, under these hostnames.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Attachment<'a> {
    pub gateway: usize,
    pub listener: usize,
    pub route: RouteId<'a>,
    pub hostnames: BTreeSet<String>,
}

/// Every route's parentRefs (HTTPRoutes and GRPCRoutes) against the served Gateways: the route's `status.parents` (one
/// entry per parentRef that names a served Gateway) and the listeners it attaches to (counted in
/// their `attachedRoutes`).
pub(super) fn attach_routes<'a>(
    store: &'a Store,
    gateways: &mut [ServedGateway<'a>],
    conditions: impl Fn(&Store, RouteId<'a>, AnyRoute<'a>) -> RouteConditions,
) -> (Vec<RouteReport>, Vec<Attachment<'a>>) {
    let index: BTreeMap<&ObjectKey, usize> =
        gateways.iter().enumerate().map(|(i, g)| (g.key, i)).collect();
    let mut reports = Vec::new();
    let mut attachments = BTreeSet::new();
    for (id, route) in all_routes(store) {
        let route_key = id.key;
        let generation = route.metadata().generation();
        let mut route_level = None;
        let mut parents = Vec::new();
        for parent in route.parent_refs() {
            let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            let namespace = parent.namespace.as_deref().unwrap_or(&route_key.namespace);
            if group != GATEWAY_GROUP || kind != "Gateway" {
                continue;
            }
            let Some(&g) = index.get(&ObjectKey::new(namespace, &parent.name)) else {
                continue;
            };
            let route_level = route_level.get_or_insert_with(|| conditions(store, id, route));
            let gateway = &mut gateways[g];
            let (accepted, attached) = evaluate_parent(store, gateway, parent, id, route);
            let accepted = match (&accepted, &route_level.refusal) {
                (Ok(_), Some(refusal)) => refusal.clone(),
                _ => match accepted {
                    Ok(message) => Condition::new("Accepted", true, "Accepted", message),
                    Err((reason, message)) => Condition::new("Accepted", false, reason, message),
                },
            };
            if accepted.status {
                for (l, hostnames) in attached {
                    gateway.listeners[l].attached.insert(id);
                    attachments.insert(Attachment {
                        gateway: g,
                        listener: l,
                        route: id,
                        hostnames,
                    });
                }
            }
            parents.push(RouteParentStatus {
                parent_ref: ParentReference {
                    group: group.to_string(),
                    kind: kind.to_string(),
                    namespace: namespace.to_string(),
                    name: parent.name.clone(),
                    section_name: parent.section_name.clone(),
                    port: parent.port,
                },
                controller_name: crate::status::CONTROLLER_NAME,
                conditions: vec![
                    accepted.observed(generation),
                    route_level.resolved_refs.clone().observed(generation),
                ],
            });
        }
        if !parents.is_empty() {
            reports.push(RouteReport {
                kind: id.kind.name(),
                namespace: route_key.namespace.clone(),
                name: route_key.name.clone(),
                generation,
                parents,
            });
        }
    }
    (reports, attachments.into_iter().collect())
}

/// One parentRef against its Gateway: accepted (with a message) and the listeners it attaches
/// to with their hostnames, or the reason it is not accepted (`NoMatchingParent`,
/// `NotAllowedByListeners`, `NoMatchingListenerHostname`).
#[allow(clippy::type_complexity)]
fn evaluate_parent(
    store: &Store,
    gateway: &ServedGateway<'_>,
    parent: &objects::ParentRef,
    id: RouteId<'_>,
    route: AnyRoute<'_>,
) -> (Result<String, (&'static str, String)>, Vec<(usize, BTreeSet<String>)>) {
    let route_key = id.key;
    let candidates: Vec<usize> = (0..gateway.listeners.len())
        .filter(|&l| {
            let spec = gateway.listeners[l].spec;
            parent.section_name.as_ref().is_none_or(|s| s == &spec.name)
                && parent.port.is_none_or(|p| p == spec.port)
        })
        .collect();
    if candidates.is_empty() {
        let which = match (&parent.section_name, parent.port) {
            (Some(s), Some(p)) => format!("named {s} on port {p}"),
            (Some(s), None) => format!("named {s}"),
            (None, Some(p)) => format!("on port {p}"),
            (None, None) => "at all".to_string(),
        };
        return (
            Err(("NoMatchingParent", format!("Gateway {} has no listener {which}", gateway.key))),
            Vec::new(),
        );
    }
    let allowed: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&l| {
            let listener = &gateway.listeners[l];
            listener.accepts(id.kind)
                && allows_namespace(store, gateway.key, listener.spec, &route_key.namespace)
        })
        .collect();
    if allowed.is_empty() {
        let names: Vec<&str> =
            candidates.iter().map(|&l| &*gateway.listeners[l].spec.name).collect();
        return (
            Err((
                "NotAllowedByListeners",
                format!(
                    "listeners {} of Gateway {} do not allow {}s from namespace {} (or are not valid)",
                    names.join(", "),
                    gateway.key,
                    id.kind.name(),
                    route_key.namespace
                ),
            )),
            Vec::new(),
        );
    }
    let attached: Vec<(usize, BTreeSet<String>)> = allowed
        .iter()
        .map(|&l| {
            let hostname = gateway.listeners[l].hostname();
            (l, intersect_hostnames(hostname, route.hostnames()).into_iter().collect())
        })
        .filter(|(_, hostnames): &(usize, BTreeSet<String>)| !hostnames.is_empty())
        .collect();
    if attached.is_empty() {
        return (
            Err((
                "NoMatchingListenerHostname",
                format!(
                    "no hostname of the route intersects the hostnames of the listeners of Gateway {}",
                    gateway.key
                ),
            )),
            Vec::new(),
        );
    }
    (Ok("Route is accepted".to_string()), attached)
}

/// One Envoy listener per port, shared by every programmed listener on it (of every Gateway),
/// with a virtual host per hostname. A hostname goes to the most specific listener that matches
/// it (exact, then the longest wildcard, then a listener without hostname), so a request is
/// served by the routes of the listener the Gateway API says it reaches.
pub(super) fn build_listeners(
    store: &Store,
    gateways: &[ServedGateway<'_>],
    attachments: &[Attachment<'_>],
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Vec<Listener> {
    // port -> programmed (gateway, listener), in precedence order
    let mut ports: BTreeMap<u16, Vec<(usize, usize)>> = BTreeMap::new();
    for (g, gateway) in gateways.iter().enumerate() {
        for (l, listener) in gateway.listeners.iter().enumerate() {
            if listener.programmed() {
                ports.entry(listener.spec.port).or_default().push((g, l));
            }
        }
    }
    let contexts: Vec<GatewayContext<'_>> = gateways
        .iter()
        .map(|g| GatewayContext { key: g.key, client_certificate: g.client_certificate.clone() })
        .collect();
    // Routes are built once per Gateway (clusters carry the Gateway's client certificate).
    let mut built: BTreeMap<(usize, RouteId<'_>), Vec<(RouteOrder<'_>, Route)>> = BTreeMap::new();
    // port -> hostname -> routes
    let mut hosts: BTreeMap<u16, BTreeMap<String, Vec<(RouteOrder<'_>, Route)>>> = BTreeMap::new();
    for attachment in attachments {
        let listener = &gateways[attachment.gateway].listeners[attachment.listener];
        if !listener.programmed() {
            continue;
        }
        let port = listener.spec.port;
        let on_port = &ports[&port];
        let route = lookup(store, attachment.route);
        for hostname in &attachment.hostnames {
            if best_listener(gateways, on_port, hostname)
                != Some((attachment.gateway, attachment.listener))
            {
                continue;
            }
            let routes = built.entry((attachment.gateway, attachment.route)).or_insert_with(|| {
                build_routes(
                    store,
                    &contexts[attachment.gateway],
                    attachment.route,
                    route,
                    policies,
                    ir,
                    problems,
                )
            });
            hosts.entry(port).or_default().entry(hostname.clone()).or_default().extend(
                routes.iter().cloned().map(|(order, mut route)| {
                    // A redirect naming neither scheme nor port goes to this listener's port
                    // (Gateway API); Envoy leaves a scheme's default port out of `Location`.
                    if let RouteAction::Redirect(redirect) = &mut route.action {
                        redirect.port.get_or_insert(port);
                    }
                    (order, route)
                }),
            );
        }
    }
    ports
        .into_iter()
        .map(|(port, on_port)| {
            let (first, _) = on_port[0];
            let key = gateways[first].key;
            let name = format!("gateway_{}_{}_{port}", key.namespace, key.name);
            let virtual_hosts = hosts
                .remove(&port)
                .unwrap_or_default()
                .into_iter()
                .map(|(hostname, mut routes)| {
                    routes.sort_by(|a, b| a.0.cmp(&b.0));
                    // Duplicates: one route attached through two parentRefs of one listener.
                    routes.dedup_by(|a, b| a.1.name == b.1.name);
                    VirtualHost {
                        // `<route configuration>/<host>`: VHDS's resource naming, which Envoy
                        // relies on to remove a virtual host by name (hostnames hold no `/`).
                        name: format!("{name}/{hostname}"),
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
            Listener { name, port, virtual_hosts }
        })
        .collect()
}

/// The listener among `candidates` that a request for `hostname` reaches: the one with that
/// exact hostname, else the longest wildcard that matches it, else one without hostname.
fn best_listener(
    gateways: &[ServedGateway<'_>],
    candidates: &[(usize, usize)],
    hostname: &str,
) -> Option<(usize, usize)> {
    let listener = |&(g, l): &(usize, usize)| &gateways[g].listeners[l];
    candidates
        .iter()
        .find(|c| listener(c).hostname() == Some(hostname))
        .or_else(|| {
            candidates
                .iter()
                .filter(|c| listener(c).hostname().is_some_and(|h| wildcard_matches(h, hostname)))
                .max_by_key(|c| listener(c).hostname().map_or(0, str::len))
        })
        .or_else(|| candidates.iter().find(|c| listener(c).hostname().is_none()))
        .copied()
}

/// A served Gateway's status: `Accepted` (`ListenersNotValid` when some listener is not valid),
/// `Programmed`, `ResolvedRefs` (the backend client certificate), and each listener's.
pub(super) fn gateway_report(
    gateway: &ServedGateway<'_>,
    addresses: &[GatewayAddress],
) -> GatewayReport {
    let generation = gateway.gateway.metadata.generation();
    let invalid: Vec<&str> = gateway
        .listeners
        .iter()
        .filter(|l| l.refused.is_some() || l.conflicted.is_some())
        .map(|l| &*l.spec.name)
        .collect();
    let accepted = if let Some((reason, message)) = &gateway.refused {
        Condition::new("Accepted", false, reason, message.clone())
    } else if invalid.is_empty() {
        Condition::new("Accepted", true, "Accepted", "Gateway is accepted".into())
    } else if invalid.len() < gateway.listeners.len() {
        Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!("listeners not valid: {}", invalid.join(", ")),
        )
    } else {
        Condition::new("Accepted", false, "ListenersNotValid", "no listener is valid".into())
    };
    let programmed = if !accepted.status {
        Condition::new("Programmed", false, "Invalid", "Gateway is not accepted".into())
    } else if gateway.listeners.iter().any(ListenerState::programmed) {
        Condition::new("Programmed", true, "Programmed", "Gateway is programmed".into())
    } else {
        Condition::new("Programmed", false, "Invalid", "no listener is programmed".into())
    };
    let listeners = gateway
        .listeners
        .iter()
        .map(|l| {
            let condition = |kind,
                             problem: &Option<(&'static str, String)>,
                             ok: (&'static str, &str)| {
                match problem {
                    Some((reason, message)) => Condition::new(kind, false, reason, message.clone()),
                    None => Condition::new(kind, true, ok.0, ok.1.to_string()),
                }
            };
            let conflicted = match &l.conflicted {
                Some((reason, message)) => {
                    Condition::new("Conflicted", true, reason, message.clone())
                }
                None => Condition::new("Conflicted", false, "NoConflicts", "No conflicts".into()),
            };
            let programmed = if l.programmed() {
                Condition::new("Programmed", true, "Programmed", "Listener is programmed".into())
            } else {
                let why = if !l.gateway_accepted {
                    "the Gateway is not accepted"
                } else if l.refused.is_some() {
                    "the listener is not accepted"
                } else if l.conflicted.is_some() {
                    "the listener is conflicted"
                } else if l.supported_kinds.is_empty() {
                    "the listener accepts no supported route kind"
                } else {
                    "the listener's references do not resolve"
                };
                Condition::new("Programmed", false, "Invalid", format!("Not programmed: {why}"))
            };
            ListenerReport {
                name: l.spec.name.clone(),
                supported_kinds: l.supported_kinds.clone(),
                attached_routes: l.attached.len() as u32,
                conditions: [
                    condition("Accepted", &l.refused, ("Accepted", "Listener is accepted")),
                    programmed,
                    condition(
                        "ResolvedRefs",
                        &l.unresolved,
                        ("ResolvedRefs", "All references are resolved"),
                    ),
                    conflicted,
                ]
                .into_iter()
                .map(|c| c.observed(generation))
                .collect(),
            }
        })
        .collect();
    GatewayReport {
        namespace: gateway.key.namespace.clone(),
        name: gateway.key.name.clone(),
        generation,
        conditions: [accepted, programmed, gateway.resolved_refs.clone()]
            .into_iter()
            .map(|c| c.observed(generation))
            .collect(),
        addresses: addresses.to_vec(),
        listeners,
    }
}

pub(super) fn allows_namespace(
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
pub(super) fn intersect_hostnames(listener: Option<&str>, route: &[String]) -> Vec<String> {
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
pub(super) fn wildcard_matches(pattern: &str, name: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|suffix| {
        suffix.starts_with('.') && name.ends_with(suffix) && name.len() > suffix.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_text(text: &str) -> Resolution {
        let parsed = crate::source::parse_file(std::path::Path::new("t.yaml"), text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let mut store = Store::default();
        parsed.objects.into_iter().for_each(|o| store.put(o));
        resolve(
            &store,
            &Options { listener_address: Some("127.0.0.2".into()), ..Default::default() },
        )
    }

    fn condition<'a>(conditions: &'a [Condition], kind: &str) -> (bool, &'static str, &'a str) {
        let c = conditions.iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("no {kind}"));
        (c.status, c.reason, &c.message)
    }

    fn gateway<'a>(r: &'a Resolution, name: &str) -> &'a GatewayReport {
        r.gateways.iter().find(|g| g.name == name).unwrap()
    }

    fn listener<'a>(g: &'a GatewayReport, name: &str) -> &'a ListenerReport {
        g.listeners.iter().find(|l| l.name == name).unwrap()
    }

    fn parent_accepted(r: &Resolution, route: &str) -> Vec<(bool, &'static str)> {
        let report = r.routes.iter().find(|x| x.name == route).unwrap();
        report
            .parents
            .iter()
            .map(|p| {
                let (status, reason, _) = condition(&p.conditions, "Accepted");
                (status, reason)
            })
            .collect()
    }

    const BACKEND: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 8080}]}
"#;

    fn route(name: &str, parent: &str, hostnames: &str) -> String {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, generation: 3}}\nspec: {{parentRefs: [{parent}], hostnames: {hostnames}, rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]}}\n"
        )
    }

    /// HTTPRouteHostnameIntersection and GatewayWithAttachedRoutes: a route without a common
    /// hostname is `NoMatchingListenerHostname` and not counted; routes count once per listener.
    #[test]
    fn attached_routes_count_only_accepted_routes() {
        let mut text = String::from(BACKEND);
        text += r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, generation: 7}
spec:
  gatewayClassName: x
  listeners:
  - {name: listener-1, protocol: HTTP, port: 8080, hostname: very.specific.com}
  - {name: listener-2, protocol: HTTP, port: 8080, hostname: "*.wildcard.io"}
"#;
        text += &route("specific", "{name: gw}", "[non.matching.com, very.specific.com]");
        text += &route("narrowed", "{name: gw}", "['*.specific.com']");
        text += &route("wild", "{name: gw}", "[foo.wildcard.io, wildcard.io]");
        text += &route("none", "{name: gw}", "[specific.but.wrong.com, wildcard.io]");
        let r = resolve_text(&text);
        let gw = gateway(&r, "gw");
        assert_eq!(gw.addresses, [GatewayAddress { kind: "IPAddress", value: "127.0.0.2".into() }]);
        assert!(condition(&gw.conditions, "Accepted").0);
        assert_eq!(condition(&gw.conditions, "Programmed").1, "Programmed");
        assert!(gw.conditions.iter().all(|c| c.observed_generation == 7));
        assert_eq!(listener(gw, "listener-1").attached_routes, 2);
        assert_eq!(listener(gw, "listener-2").attached_routes, 1);
        assert_eq!(listener(gw, "listener-1").supported_kinds, [HTTP_ROUTE, GRPC_ROUTE]);
        assert_eq!(parent_accepted(&r, "specific"), [(true, "Accepted")]);
        assert_eq!(parent_accepted(&r, "none"), [(false, "NoMatchingListenerHostname")]);
        let none = r.routes.iter().find(|x| x.name == "none").unwrap();
        assert!(none.parents[0].conditions.iter().all(|c| c.observed_generation == 3));
        assert_eq!(none.parents[0].parent_ref.group, GATEWAY_GROUP);
        assert_eq!(none.parents[0].parent_ref.kind, "Gateway");
        let domains: Vec<&str> = r.ir.listeners[0]
            .virtual_hosts
            .iter()
            .flat_map(|v| v.domains.iter().map(String::as_str))
            .collect();
        // `*.specific.com` is narrowed to the listener's hostname; nothing of `none` is served.
        assert_eq!(domains, ["foo.wildcard.io", "very.specific.com"]);
    }

    /// HTTPRouteInvalidParentRefNotMatchingSectionName and HTTPRouteInvalidCrossNamespaceParentRef.
    #[test]
    fn parent_refs_that_reach_no_listener_say_why() {
        let mut text = String::from(BACKEND);
        text += r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec: {gatewayClassName: x, listeners: [{name: http, protocol: HTTP, port: 8080}]}
"#;
        text +=
            &route("section", "{name: gw, namespace: infra, sectionName: http1, port: 8080}", "[]");
        text += &route("port", "{name: gw, namespace: infra, port: 9090}", "[]");
        text += &route("namespace", "{name: gw, namespace: infra}", "[]");
        text += &route("elsewhere", "{name: other-gw}", "[]");
        let r = resolve_text(&text);
        assert_eq!(parent_accepted(&r, "section"), [(false, "NoMatchingParent")]);
        assert_eq!(parent_accepted(&r, "port"), [(false, "NoMatchingParent")]);
        assert_eq!(parent_accepted(&r, "namespace"), [(false, "NotAllowedByListeners")]);
        assert!(r.routes.iter().all(|x| x.name != "elsewhere"), "not a served Gateway");
        assert_eq!(listener(gateway(&r, "gw"), "http").attached_routes, 0);
        assert!(r.ir.listeners[0].virtual_hosts.is_empty());
    }

    /// GatewayListenerUnsupportedProtocol and GatewayInvalidRouteKind.
    #[test]
    fn invalid_listeners_have_the_specs_reasons() {
        let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: only-invalid}
spec: {gatewayClassName: x, listeners: [{name: invalid, protocol: INVALID, port: 1111}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: mixed}
spec:
  gatewayClassName: x
  listeners:
  - {name: http, protocol: HTTP, port: 8081}
  - {name: invalid, protocol: INVALID, port: 1112}
  - {name: kinds, protocol: HTTP, port: 8082, allowedRoutes: {kinds: [{kind: InvalidRoute}]}}
  - {name: some-kinds, protocol: HTTP, port: 8083, allowedRoutes: {kinds: [{kind: InvalidRoute}, {kind: HTTPRoute}]}}
"#;
        let r = resolve_text(text);
        let only = gateway(&r, "only-invalid");
        assert!(!condition(&only.conditions, "Accepted").0);
        assert_eq!(condition(&only.conditions, "Accepted").1, "ListenersNotValid");
        let invalid = listener(only, "invalid");
        assert_eq!(condition(&invalid.conditions, "Accepted").1, "UnsupportedProtocol");
        assert!(invalid.supported_kinds.is_empty());
        let mixed = gateway(&r, "mixed");
        assert_eq!(
            condition(&mixed.conditions, "Accepted"),
            (true, "ListenersNotValid", "listeners not valid: invalid")
        );
        assert!(condition(&mixed.conditions, "Programmed").0);
        assert_eq!(condition(&listener(mixed, "http").conditions, "Accepted").1, "Accepted");
        let kinds = listener(mixed, "kinds");
        assert!(kinds.supported_kinds.is_empty());
        assert_eq!(condition(&kinds.conditions, "ResolvedRefs").1, "InvalidRouteKinds");
        assert!(!condition(&kinds.conditions, "Programmed").0);
        let some = listener(mixed, "some-kinds");
        assert_eq!(some.supported_kinds, [HTTP_ROUTE]);
        assert_eq!(condition(&some.conditions, "ResolvedRefs").1, "InvalidRouteKinds");
        let ports: Vec<u16> = r.ir.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [8081, 8083]);
    }

    /// Listeners of several Gateways on one port share one Envoy listener by hostname; the same
    /// hostname twice, or another protocol, is `Conflicted` on the later listener.
    #[test]
    fn listeners_on_one_port_merge_by_hostname_or_conflict() {
        let mut text = String::from(BACKEND);
        text += r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: a}
spec:
  gatewayClassName: x
  listeners:
  - {name: foo, protocol: HTTP, port: 8080, hostname: foo.example.com}
  - {name: foo-again, protocol: HTTP, port: 8080, hostname: foo.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: b}
spec:
  gatewayClassName: x
  listeners:
  - {name: bar, protocol: HTTP, port: 8080, hostname: bar.example.com}
  - {name: any, protocol: HTTP, port: 8080}
  - {name: foo, protocol: HTTP, port: 8080, hostname: foo.example.com}
"#;
        text += &route("to-a", "{name: a}", "[]");
        text += &route("to-b", "{name: b}", "[]");
        text += &route("to-b-foo", "{name: b, sectionName: foo}", "[]");
        let r = resolve_text(&text);
        let a = gateway(&r, "a");
        let b = gateway(&r, "b");
        assert!(!condition(&listener(a, "foo").conditions, "Conflicted").0);
        assert_eq!(
            condition(&listener(a, "foo-again").conditions, "Conflicted").1,
            "HostnameConflict"
        );
        assert_eq!(condition(&listener(b, "foo").conditions, "Conflicted").1, "HostnameConflict");
        assert!(!condition(&listener(b, "bar").conditions, "Conflicted").0);
        assert_eq!(condition(&b.conditions, "Accepted").1, "ListenersNotValid");
        assert_eq!(parent_accepted(&r, "to-b-foo"), [(false, "NotAllowedByListeners")]);
        assert_eq!(r.ir.listeners.len(), 1, "{:?}", r.ir.listeners);
        let hosts = first_listener_hosts(&r);
        assert_eq!(
            hosts,
            [
                ("*", vec!["default/to-b/rule/0/match/0"]),
                ("bar.example.com", vec!["default/to-b/rule/0/match/0"]),
                ("foo.example.com", vec!["default/to-a/rule/0/match/0"]),
            ]
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);

        let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: a, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {gatewayClassName: x, listeners: [{name: tcp, protocol: HTTPS, port: 8080}, {name: http, protocol: HTTP, port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: z, creationTimestamp: "2023-01-01T00:00:00Z"}
spec: {gatewayClassName: x, listeners: [{name: http, protocol: HTTP, port: 8080, hostname: z.example.com}]}
"#;
        let r = resolve_text(text);
        // The older Gateway comes first; an unsupported protocol takes no port.
        assert!(!condition(&listener(gateway(&r, "z"), "http").conditions, "Conflicted").0);
        assert!(!condition(&listener(gateway(&r, "a"), "http").conditions, "Conflicted").0);
        assert_eq!(r.ir.listeners[0].name, "gateway_default_z_8080");
    }

    /// GatewayInvalidParametersRef: the loader takes no parameters.
    #[test]
    fn a_gateway_with_parameters_is_not_accepted_nor_served() {
        let mut text = String::from(BACKEND);
        text += r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: x
  infrastructure: {parametersRef: {group: invalid.io, kind: InvalidParameters, name: invalid}}
  listeners: [{name: http, protocol: HTTP, port: 8080}]
"#;
        text += &route("r", "{name: gw}", "[]");
        let r = resolve_text(&text);
        let gw = gateway(&r, "gw");
        assert_eq!(condition(&gw.conditions, "Accepted").1, "InvalidParameters");
        assert!(!condition(&gw.conditions, "Accepted").0);
        assert!(!condition(&gw.conditions, "Programmed").0);
        assert!(!condition(&listener(gw, "http").conditions, "Programmed").0);
        assert_eq!(parent_accepted(&r, "r"), [(false, "NotAllowedByListeners")]);
        assert!(r.ir.listeners.is_empty());
    }

    /// HTTPRouteListenerHostnameMatching: a hostname goes to the most specific listener.
    #[test]
    fn a_hostname_is_served_by_its_most_specific_listener() {
        let mut text = String::from(BACKEND);
        text += r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: x
  listeners:
  - {name: listener-2, protocol: HTTP, port: 8080, hostname: foo.bar.com}
  - {name: listener-3, protocol: HTTP, port: 8080, hostname: "*.bar.com"}
"#;
        text += &route("v2", "{name: gw, sectionName: listener-2}", "[]");
        text += &route("v3", "{name: gw, sectionName: listener-3}", "[foo.bar.com, baz.bar.com]");
        let r = resolve_text(&text);
        assert_eq!(parent_accepted(&r, "v3"), [(true, "Accepted")]);
        let hosts = first_listener_hosts(&r);
        assert_eq!(
            hosts,
            [
                ("baz.bar.com", vec!["default/v3/rule/0/match/0"]),
                ("foo.bar.com", vec!["default/v2/rule/0/match/0"]),
            ]
        );
    }

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

    /// The first Envoy listener's virtual hosts: each domain with the names of its routes.
    fn first_listener_hosts(r: &Resolution) -> Vec<(&str, Vec<&str>)> {
        r.ir.listeners[0]
            .virtual_hosts
            .iter()
            .map(|v| (v.domains[0].as_str(), v.routes.iter().map(|r| r.name.as_str()).collect()))
            .collect()
    }
}
