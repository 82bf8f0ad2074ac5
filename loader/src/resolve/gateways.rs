//! Gateways: their listeners grouped by port, which routes attach to them under which
//! hostnames, and the Gateway's backend client certificate.

use super::*;

/// The Gateway's `spec.tls.backend.clientCertificateRef`, resolved into the IR, and the
/// Gateway's conditions. An invalid reference leaves the Gateway Accepted with
/// `ResolvedRefs=False` and no client certificate (backends that require one refuse the handshake).
pub(super) fn gateway_client_certificate(
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
        generation,
        conditions: vec![accepted.clone(), resolved.observed(generation)],
        addresses: Vec::new(),
        listeners: Vec::new(),
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
// Gateways and routes

pub(super) struct ListenerGroup<'a> {
    name: String,
    port: u16,
    listeners: Vec<&'a objects::GatewayListener>,
}

/// HTTP listeners of a Gateway, grouped by port (one Envoy listener per port).
pub(super) fn gateway_listeners<'a>(
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

pub(super) fn build_listener(
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
pub(super) fn attached_hostnames(
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
}
