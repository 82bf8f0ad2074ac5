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
    let resolved =
        || Condition::new("ResolvedRefs", true, "ResolvedRefs", "All references are resolved");
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
                    "GatewayClass is accepted",
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
pub(super) const TLS_ROUTE: RouteGroupKind =
    RouteGroupKind { group: GATEWAY_GROUP, kind: "TLSRoute" };

/// The route kinds a listener of `protocol` takes (none for protocols the loader does not serve).
fn route_kinds_of(protocol: &str) -> &'static [RouteGroupKind] {
    match protocol {
        "HTTP" | "HTTPS" => &[HTTP_ROUTE, GRPC_ROUTE],
        "TLS" => &[TLS_ROUTE],
        _ => &[],
    }
}

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
    /// HTTPS and TLS: the secret names of its certificates (all of its `certificateRefs`
    /// resolved).
    pub certificates: Vec<String>,
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
    for listener in listeners.iter_mut().filter(|l| l.refused.is_none()) {
        let terminates = matches!(listener.spec.protocol.as_str(), "HTTPS" | "TLS");
        if let Some(tls) = listener.spec.tls.as_ref().filter(|_| terminates) {
            match listener_certificates(store, key, tls, ir) {
                Ok(names) => listener.certificates = names,
                // A bad certificate outranks a bad route kind: both leave ResolvedRefs False.
                Err(problem) => listener.unresolved = Some((problem.reason(), problem.to_string())),
            }
        }
    }
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
        certificates: Vec::new(),
        gateway_accepted: true,
    };
    let kinds_of_protocol = route_kinds_of(&spec.protocol);
    if kinds_of_protocol.is_empty() {
        state.refused = Some((
            "UnsupportedProtocol",
            format!("protocol {} is not supported; supported: HTTP, HTTPS, TLS", spec.protocol),
        ));
        return state;
    }
    if let Some(why) = tls_refusal(spec) {
        state.refused = Some(("UnsupportedValue", why));
        return state;
    }
    match spec.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        None => state.supported_kinds.extend_from_slice(kinds_of_protocol),
        Some(kinds) => {
            let mut invalid = Vec::new();
            for kind in kinds {
                let group = kind.group.as_deref().unwrap_or(GATEWAY_GROUP);
                let known = kinds_of_protocol.iter().find(|k| k.kind == kind.kind).cloned();
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
                        "route kinds {} are not supported on protocol {}; supported: {}",
                        invalid.join(", "),
                        spec.protocol,
                        kinds_of_protocol
                            .iter()
                            .map(|k| format!("{}/{}", k.group, k.kind))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    state
}

/// Why a listener's `tls` cannot be served as written, naming the field: HTTPS and TLS need `tls`
/// in mode `Terminate` (`Passthrough` is not implemented); HTTP takes none; no `tls.options` key
/// is implemented.
fn tls_refusal(spec: &objects::GatewayListener) -> Option<String> {
    let tls = spec.tls.as_ref();
    if spec.protocol == "HTTP" {
        return tls.map(|_| "tls: an HTTP listener takes no tls (use protocol HTTPS)".into());
    }
    let protocol = &spec.protocol;
    let Some(tls) = tls else {
        return Some(format!("tls: protocol {protocol} needs tls with certificateRefs"));
    };
    let mode = tls.mode.as_deref().unwrap_or("Terminate");
    if mode != "Terminate" {
        return Some(format!(
            "tls.mode: {mode} is not supported on protocol {protocol}; supported: Terminate"
        ));
    }
    if let Some(option) = tls.options.keys().next() {
        return Some(format!("tls.options: option {option} is not supported; none is implemented"));
    }
    None
}

/// Why an HTTPS listener's `certificateRefs` cannot be used; [`CertificateRefError::reason`] is
/// the listener's `ResolvedRefs` reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum CertificateRefError {
    #[error("tls.certificateRefs is empty: a listener that terminates TLS needs a certificate")]
    Empty,
    #[error("certificateRef {name} is a {group}/{kind}; only core Secrets are supported")]
    NotASecret { name: String, group: String, kind: String },
    #[error("certificateRef Secret {0} is in another namespace and no ReferenceGrant allows it")]
    NotPermitted(ObjectKey),
    #[error("certificateRef Secret {0} not found")]
    NotFound(ObjectKey),
    #[error("certificateRef Secret {secret} {error}")]
    KeyPair { secret: ObjectKey, error: trust::KeyPairError },
}

impl CertificateRefError {
    fn reason(&self) -> &'static str {
        match self {
            CertificateRefError::NotPermitted(_) => "RefNotPermitted",
            _ => "InvalidCertificateRef",
        }
    }
}

/// An HTTPS listener's `certificateRefs`, each a `kubernetes.io/tls` Secret whose PEM pair
/// parses (and whose key matches the certificate), put into the IR under their secret names.
/// The first reference that fails gives the reason: `InvalidCertificateRef` (wrong group or kind,
/// missing or malformed Secret, no reference at all) or `RefNotPermitted` (another namespace
/// without a ReferenceGrant).
fn listener_certificates(
    store: &Store,
    gateway: &ObjectKey,
    tls: &objects::ListenerTls,
    ir: &mut Ir,
) -> Result<Vec<String>, CertificateRefError> {
    if tls.certificate_refs.is_empty() {
        return Err(CertificateRefError::Empty);
    }
    let mut pairs = Vec::new();
    for reference in &tls.certificate_refs {
        let group = reference.group.as_deref().unwrap_or("");
        let kind = reference.kind.as_deref().unwrap_or("Secret");
        if !group.is_empty() || kind != "Secret" {
            let group = if group.is_empty() { "core" } else { group };
            return Err(CertificateRefError::NotASecret {
                name: reference.name.clone(),
                group: group.to_string(),
                kind: kind.to_string(),
            });
        }
        let namespace = reference.namespace.as_deref().unwrap_or(&gateway.namespace);
        let secret_key = ObjectKey::new(namespace, &reference.name);
        if namespace != gateway.namespace && !secret_reference_granted(store, gateway, &secret_key)
        {
            return Err(CertificateRefError::NotPermitted(secret_key));
        }
        let Some(secret) = store.secrets.get(&secret_key) else {
            return Err(CertificateRefError::NotFound(secret_key));
        };
        let pair = match trust::tls_key_pair(secret)
            .and_then(|pair| key_matches_certificate(&pair).map(|()| pair))
        {
            Ok(pair) => pair,
            Err(error) => return Err(CertificateRefError::KeyPair { secret: secret_key, error }),
        };
        pairs.push((secret_key, pair));
    }
    let mut names = Vec::new();
    for (source, pair) in pairs {
        let name =
            backendtls_contract::listener_certificate_secret_name(&source.namespace, &source.name);
        ir.listener_certificates.insert(
            name.clone(),
            ClientCertificate { source, cert_pem: pair.cert_pem, key_pem: pair.key_pem },
        );
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The first certificate of `tls.crt` must carry the public key of `tls.key` (Envoy would refuse
/// the pair and the listener with it). Keys this check cannot read are left to Envoy.
fn key_matches_certificate(pair: &trust::KeyPair) -> Result<(), trust::KeyPairError> {
    use rcgen::PublicKeyData as _;
    use rustls_pki_types::pem::PemObject as _;
    let Ok(key) = rcgen::KeyPair::from_pem(&pair.key_pem) else {
        return Ok(());
    };
    let Some(Ok(cert)) =
        rustls_pki_types::CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).next()
    else {
        return Ok(());
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&cert) else {
        return Ok(());
    };
    if parsed.tbs_certificate.subject_pki.raw == key.subject_public_key_info().as_slice() {
        Ok(())
    } else {
        Err(trust::KeyPairError::KeyMismatch)
    }
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
    let (resolved_refs, refusal) = super::any_route_conditions(store, id, route);
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
                    group: GATEWAY_GROUP,
                    kind: "Gateway",
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
            // Kept as long as the route is: most routes have one parent, and a Vec grown from
            // empty keeps room for four.
            parents.shrink_to_fit();
            reports.push(RouteReport {
                kind: id.kind.name(),
                namespace: route_key.namespace.clone(),
                name: route_key.name.clone(),
                generation,
                parents,
            });
        }
    }
    reports.shrink_to_fit();
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
) -> (Result<&'static str, (&'static str, String)>, Vec<(usize, BTreeSet<String>)>) {
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
    (Ok("Route is accepted"), attached)
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
    // TLSRoutes: built once per Gateway, as HTTP routes are.
    let mut built_proxies: BTreeMap<(usize, RouteId<'_>), Vec<WeightedCluster>> = BTreeMap::new();
    // TLS ports: port -> hostname -> (precedence, chain). Of two routes for one hostname the
    // older takes it (then namespace/name), as with HTTP route precedence.
    type ProxyOrder<'a> = (bool, Option<&'a str>, &'a ObjectKey);
    let mut proxies: BTreeMap<u16, BTreeMap<String, (ProxyOrder<'_>, TcpProxy)>> = BTreeMap::new();
    // How many hosts take each built route: the last one gets the routes moved, not cloned.
    let mut uses: BTreeMap<(usize, RouteId<'_>), usize> = BTreeMap::new();
    for attachment in attachments {
        let listener = &gateways[attachment.gateway].listeners[attachment.listener];
        if !listener.programmed() {
            continue;
        }
        let on_port = &ports[&listener.spec.port];
        if let AnyRoute::Tls(_) = lookup(store, attachment.route) {
            continue;
        }
        for hostname in &attachment.hostnames {
            if best_listener(gateways, on_port, hostname)
                == Some((attachment.gateway, attachment.listener))
            {
                *uses.entry((attachment.gateway, attachment.route)).or_default() += 1;
            }
        }
    }
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
            if let AnyRoute::Tls(tls_route) = route {
                let clusters = built_proxies
                    .entry((attachment.gateway, attachment.route))
                    .or_insert_with(|| {
                        super::tls_routes::build_proxy(
                            store,
                            &contexts[attachment.gateway],
                            attachment.route,
                            tls_route,
                            policies,
                            ir,
                            problems,
                        )
                    })
                    .clone();
                let created = tls_route.metadata.creation_timestamp.as_deref();
                let order = (created.is_none(), created, attachment.route.key);
                let proxy = TcpProxy {
                    hostname: Some(hostname.clone()).filter(|h| h != "*"),
                    certificates: listener.certificates.clone(),
                    route: Some(attachment.route.key.to_string()),
                    clusters,
                };
                let on_port = proxies.entry(port).or_default();
                match on_port.get(hostname) {
                    Some((taken, _)) if *taken <= order => {}
                    _ => drop(on_port.insert(hostname.clone(), (order, proxy))),
                }
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
            let on_host = hosts.entry(port).or_default().entry(hostname.clone()).or_default();
            // Most hosts have one route, and a Vec grown from empty keeps room for four; later
            // routes on the same host grow it as usual (amortized, never quadratic).
            if on_host.is_empty() {
                on_host.reserve_exact(routes.len());
            }
            let left = uses.get_mut(&(attachment.gateway, attachment.route)).expect("counted");
            *left -= 1;
            let routes: Vec<(RouteOrder<'_>, Route)> =
                if *left == 0 { std::mem::take(routes) } else { routes.clone() };
            on_host.extend(routes.into_iter().map(|(order, mut route)| {
                // A redirect naming neither scheme nor port goes to this listener's port
                // (Gateway API); Envoy leaves a scheme's default port out of `Location`.
                if let RouteAction::Redirect(redirect) = &mut route.action {
                    redirect.port.get_or_insert(port);
                }
                (order, route)
            }));
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
            // HTTPS (one protocol per port: another is `ProtocolConflict`): a filter chain per
            // listener hostname.
            let tls = on_port
                .iter()
                .map(|&(g, l)| &gateways[g].listeners[l])
                .filter(|l| l.spec.protocol == "HTTPS")
                .map(|l| TlsChain {
                    hostname: l.hostname().map(str::to_string),
                    certificates: l.certificates.clone(),
                })
                .collect();
            // TLS (TLSRoutes): a chain per route hostname; a port without any route still gets
            // one chain (Envoy needs one), which closes every connection.
            let mut tcp_proxies: Vec<TcpProxy> = proxies
                .remove(&port)
                .unwrap_or_default()
                .into_values()
                .map(|(_, proxy)| proxy)
                .collect();
            let first_listener = &gateways[first].listeners[on_port[0].1];
            if tcp_proxies.is_empty() && first_listener.spec.protocol == "TLS" {
                tcp_proxies.push(TcpProxy {
                    hostname: None,
                    certificates: first_listener.certificates.clone(),
                    route: None,
                    clusters: vec![WeightedCluster {
                        cluster: super::routes::invalid_backend_cluster(ir),
                        weight: 1,
                    }],
                });
            }
            Listener { name, port, virtual_hosts, tls, tcp_proxies }
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
        Condition::new("Accepted", true, "Accepted", "Gateway is accepted")
    } else if invalid.len() < gateway.listeners.len() {
        Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!("listeners not valid: {}", invalid.join(", ")),
        )
    } else {
        Condition::new("Accepted", false, "ListenersNotValid", "no listener is valid")
    };
    let programmed = if !accepted.status {
        Condition::new("Programmed", false, "Invalid", "Gateway is not accepted")
    } else if gateway.listeners.iter().any(ListenerState::programmed) {
        Condition::new("Programmed", true, "Programmed", "Gateway is programmed")
    } else {
        Condition::new("Programmed", false, "Invalid", "no listener is programmed")
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
                None => Condition::new("Conflicted", false, "NoConflicts", "No conflicts"),
            };
            let programmed = if l.programmed() {
                Condition::new("Programmed", true, "Programmed", "Listener is programmed")
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
        let options = Options { listener_address: Some("127.0.0.2".into()), ..Default::default() };
        super::super::resolve_text(text, &options)
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
        // The older Gateway comes first; a refused listener (HTTPS without tls) takes no port.
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

    /// A `kubernetes.io/tls` Secret with a fresh self-signed certificate for `hostname`.
    fn tls_secret(namespace: &str, name: &str, hostname: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![hostname.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        secret_with(namespace, name, &cert.pem(), &key.serialize_pem())
    }

    fn secret_with(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> String {
        use base64::Engine as _;
        let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: {}, tls.key: {}}}\n",
            b64(cert_pem),
            b64(key_pem)
        )
    }

    fn https_gateway(name: &str, listeners: &[String]) -> String {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  gatewayClassName: x\n  listeners:\n{}",
            listeners.iter().map(|l| format!("  - {l}\n")).collect::<String>()
        )
    }

    fn https_listener(name: &str, port: u16, hostname: Option<&str>, tls: &str) -> String {
        let hostname = hostname.map(|h| format!(", hostname: \"{h}\"")).unwrap_or_default();
        format!("{{name: {name}, protocol: HTTPS, port: {port}{hostname}, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {tls}}}")
    }

    /// HTTPRouteHTTPSListener, GatewayInvalidTLSConfiguration and GatewayWithAttachedRoutes: one
    /// filter chain per hostname with its certificate by SDS name; a missing, malformed or
    /// mismatched Secret, or a reference of another group or kind, is `InvalidCertificateRef`, not
    /// programmed, and still counts its routes.
    #[test]
    fn https_listeners_take_valid_certificates_only() {
        let mut text = String::from(BACKEND);
        text += &tls_secret("infra", "cert", "*.org");
        text += &tls_secret("infra", "second", "second-example.org");
        text += &secret_with("infra", "malformed", "Hello world\n", "Hello world\n");
        let (a, b) = (tls_secret("infra", "a", "a.org"), tls_secret("infra", "b", "b.org"));
        // The certificate of `a` with the key of `b`.
        let field = |doc: &str, key: &str| {
            let start = doc.find(&format!("{key}: ")).unwrap() + key.len() + 2;
            let end = start + doc[start..].find([',', '}']).unwrap();
            doc[start..end].to_string()
        };
        text += &format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: mismatched, namespace: infra}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: {}, tls.key: {}}}\n",
            field(&a, "tls.crt"),
            field(&b, "tls.key")
        );
        text += &https_gateway(
            "gw",
            &[
                https_listener("https", 8443, None, "{certificateRefs: [{name: cert}]}"),
                https_listener(
                    "https-with-hostname",
                    8443,
                    Some("second-example.org"),
                    "{mode: Terminate, certificateRefs: [{group: \"\", kind: Secret, name: second}]}",
                ),
                https_listener("missing", 9001, None, "{certificateRefs: [{name: does-not-exist}]}"),
                https_listener(
                    "group",
                    9002,
                    None,
                    "{certificateRefs: [{group: wrong.group.company.io, kind: Secret, name: cert}]}",
                ),
                https_listener("kind", 9003, None, "{certificateRefs: [{kind: WrongKind, name: cert}]}"),
                https_listener("malformed", 9004, None, "{certificateRefs: [{name: malformed}]}"),
                https_listener("mismatched", 9005, None, "{certificateRefs: [{name: mismatched}]}"),
                https_listener("empty", 9006, None, "{certificateRefs: []}"),
            ],
        );
        text += &route("r", "{name: gw, namespace: infra}", "[example.org, second-example.org]");
        let r = resolve_text(&text);
        let gw = gateway(&r, "gw");
        for name in ["https", "https-with-hostname"] {
            let l = listener(gw, name);
            assert!(condition(&l.conditions, "ResolvedRefs").0, "{name}: {:?}", l.conditions);
            assert!(condition(&l.conditions, "Programmed").0, "{name}");
            assert_eq!(l.attached_routes, 1, "{name}");
        }
        for name in ["missing", "group", "kind", "malformed", "mismatched", "empty"] {
            let l = listener(gw, name);
            let (status, reason, message) = condition(&l.conditions, "ResolvedRefs");
            assert_eq!((status, reason), (false, "InvalidCertificateRef"), "{name}: {message}");
            assert!(!condition(&l.conditions, "Programmed").0, "{name}");
            assert!(condition(&l.conditions, "Accepted").0, "{name}");
            assert_eq!(l.supported_kinds, [HTTP_ROUTE, GRPC_ROUTE], "{name}");
            assert_eq!(l.attached_routes, 1, "{name}: routes count on unresolved listeners");
        }
        let (_, _, message) = condition(&listener(gw, "mismatched").conditions, "ResolvedRefs");
        assert!(message.contains("does not match"), "{message}");
        assert_eq!(r.ir.listeners.len(), 1, "only port 8443 is programmed");
        let l = &r.ir.listeners[0];
        assert_eq!(
            l.tls,
            [
                TlsChain {
                    hostname: None,
                    certificates: vec!["backendtls_listener_infra_cert".into()]
                },
                TlsChain {
                    hostname: Some("second-example.org".into()),
                    certificates: vec!["backendtls_listener_infra_second".into()]
                },
            ]
        );
        let names: Vec<&str> = r.ir.listener_certificates.keys().map(String::as_str).collect();
        assert_eq!(names, ["backendtls_listener_infra_cert", "backendtls_listener_infra_second"]);
        let hosts = first_listener_hosts(&r);
        assert_eq!(
            hosts,
            [
                ("example.org", vec!["default/r/rule/0/match/0"]),
                ("second-example.org", vec!["default/r/rule/0/match/0"]),
            ]
        );
    }

    /// Fields the loader does not implement refuse the listener, naming the field; HTTP and
    /// HTTPS on one port conflict.
    #[test]
    fn unsupported_tls_fields_refuse_the_listener() {
        let mut text = tls_secret("infra", "cert", "example.org");
        text += &https_gateway(
            "gw",
            &[
                https_listener("passthrough", 9001, None, "{mode: Passthrough, certificateRefs: [{name: cert}]}"),
                https_listener("options", 9002, None, "{certificateRefs: [{name: cert}], options: {example.com/ciphers: x}}"),
                "{name: no-tls, protocol: HTTPS, port: 9003}".into(),
                "{name: http-tls, protocol: HTTP, port: 9004, tls: {certificateRefs: [{name: cert}]}}".into(),
                "{name: http, protocol: HTTP, port: 9005}".into(),
                https_listener("https", 9005, Some("example.org"), "{certificateRefs: [{name: cert}]}"),
            ],
        );
        let r = resolve_text(&text);
        let gw = gateway(&r, "gw");
        for (name, field) in [
            ("passthrough", "tls.mode"),
            ("options", "tls.options"),
            ("no-tls", "tls"),
            ("http-tls", "tls"),
        ] {
            let l = listener(gw, name);
            let (status, reason, message) = condition(&l.conditions, "Accepted");
            assert_eq!((status, reason), (false, "UnsupportedValue"), "{name}");
            assert!(message.starts_with(&format!("{field}:")), "{name}: {message}");
            assert!(!condition(&l.conditions, "Programmed").0);
        }
        let https = listener(gw, "https");
        assert_eq!(condition(&https.conditions, "Conflicted").1, "ProtocolConflict");
        assert_eq!(condition(&gw.conditions, "Accepted").1, "ListenersNotValid");
        let ports: Vec<u16> = r.ir.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [9005]);
        assert!(r.ir.listeners[0].tls.is_empty(), "the port stays HTTP");
    }

    /// GatewaySecretMissingReferenceGrant, GatewaySecretInvalidReferenceGrant,
    /// GatewaySecretReferenceGrantAllInNamespace and GatewaySecretReferenceGrantSpecific.
    #[test]
    fn cross_namespace_certificates_need_a_reference_grant() {
        let base = {
            let mut text = tls_secret("web", "certificate", "example.org");
            text += &https_gateway(
                "gw",
                &[https_listener(
                    "https",
                    8443,
                    None,
                    "{certificateRefs: [{name: certificate, namespace: web}]}",
                )],
            );
            text
        };
        let grant = |namespace: &str, from: &str, to: &str| {
            format!("---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: {namespace}}}\nspec: {{from: [{from}], to: [{to}]}}\n")
        };
        let from_ok = "{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}";
        let to_ok = "{group: \"\", kind: Secret}";
        let resolved = |grants: &[String]| {
            let mut text = base.clone();
            grants.iter().for_each(|g| text += g);
            let r = resolve_text(&text);
            let l = listener(gateway(&r, "gw"), "https");
            let (status, reason, _) = condition(&l.conditions, "ResolvedRefs");
            let programmed = condition(&l.conditions, "Programmed");
            ((status, reason), (programmed.0, programmed.1), r.ir.listeners.len())
        };
        let refused = ((false, "RefNotPermitted"), (false, "Invalid"), 0);
        assert_eq!(resolved(&[]), refused);
        let wrong = [
            grant("app", from_ok, to_ok),
            grant("web", "{group: wrong.group, kind: Gateway, namespace: infra}", to_ok),
            grant(
                "web",
                "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}",
                to_ok,
            ),
            grant(
                "web",
                "{group: gateway.networking.k8s.io, kind: Gateway, namespace: wrong}",
                to_ok,
            ),
            grant("web", from_ok, "{group: wrong.group, kind: Secret, name: wrong}"),
            grant("web", from_ok, "{group: \"\", kind: Service}"),
            grant(
                "web",
                from_ok,
                "{group: \"\", kind: Secret, name: not-the-certificate-youre-looking-for}",
            ),
        ];
        for g in &wrong {
            assert_eq!(resolved(std::slice::from_ref(g)), refused, "{g}");
        }
        let granted = ((true, "ResolvedRefs"), (true, "Programmed"), 1);
        assert_eq!(resolved(&[grant("web", from_ok, to_ok)]), granted);
        assert_eq!(
            resolved(&[grant("web", from_ok, "{group: \"\", kind: Secret, name: certificate}")]),
            granted
        );
    }

    /// GatewayInvalidTLSBackendConfiguration and GatewayTLSBackendClientCertificate: an unusable
    /// `spec.tls.backend.clientCertificateRef` (missing Secret, group or kind other than core
    /// Secret, an `Opaque` Secret without data, another namespace without a ReferenceGrant) gives
    /// the Gateway `ResolvedRefs=False` with the spec's reason and no client certificate, and
    /// leaves it Accepted and Programmed; a usable one (with a grant across namespaces) resolves.
    #[test]
    fn backend_client_certificate_refs() {
        // Each Gateway on its own port (they share the listener address).
        let gateway_doc = |name: &str, reference: &str, port: usize| {
            format!("---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra, generation: 2}}\nspec:\n  gatewayClassName: x\n  tls: {{backend: {{clientCertificateRef: {reference}}}}}\n  listeners: [{{name: http, protocol: HTTP, port: {}}}]\n", 9080 + port)
        };
        let mut text = tls_secret("infra", "client", "client.example");
        text += &tls_secret("web", "certificate", "client.example");
        text += "---\napiVersion: v1\nkind: Secret\nmetadata: {name: malformed, namespace: infra}\ntype: Opaque\ndata: {}\n";
        let cases = [
            ("nonexistent", "{name: nonexistent}", (false, "InvalidClientCertificateRef")),
            (
                "group",
                "{group: wrong.group.company.io, kind: Secret, name: client}",
                (false, "InvalidClientCertificateRef"),
            ),
            (
                "kind",
                "{group: \"\", kind: WrongKind, name: client}",
                (false, "InvalidClientCertificateRef"),
            ),
            (
                "malformed",
                "{group: \"\", kind: Secret, name: malformed}",
                (false, "InvalidClientCertificateRef"),
            ),
            ("no-grant", "{name: certificate, namespace: web}", (false, "RefNotPermitted")),
            ("valid", "{group: \"\", kind: Secret, name: client}", (true, "ResolvedRefs")),
        ];
        for (port, (name, reference, _)) in cases.iter().enumerate() {
            text += &gateway_doc(name, reference, port);
        }
        let r = resolve_text(&text);
        for (name, _, want) in &cases {
            let gw = gateway(&r, name);
            let (status, reason, message) = condition(&gw.conditions, "ResolvedRefs");
            assert_eq!((status, reason), *want, "{name}: {message}");
            assert_eq!(condition(&gw.conditions, "Accepted").1, "Accepted", "{name}");
            assert_eq!(condition(&gw.conditions, "Programmed").1, "Programmed", "{name}");
            assert!(gw.conditions.iter().all(|c| c.observed_generation == 2), "{name}");
        }
        assert_eq!(r.ir.client_certificates.len(), 1, "only the usable Secret is served");

        // A grant from Gateways of infra to Secrets in web makes the cross-namespace one usable.
        text += "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: web}\nspec: {from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}], to: [{group: \"\", kind: Secret}]}\n";
        let r = resolve_text(&text);
        let (status, reason, _) = condition(&gateway(&r, "no-grant").conditions, "ResolvedRefs");
        assert_eq!((status, reason), (true, "ResolvedRefs"));
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
