//! GRPCRoute rules (gateway.networking.k8s.io/v1): method and header matches in the GRPCRoute
//! spec's precedence, header filters, and weighted backendRefs whose clusters speak HTTP/2.
//!
//! A gRPC method match becomes a match on the HTTP/2 `:path` (`/<service>/<method>`) and on
//! `content-type: application/grpc*`, so a GRPCRoute never takes plain HTTP requests. What the
//! loader does not implement (`sessionPersistence`, `RequestMirror`, `ExtensionRef`, per-backend
//! filters, `useDefaultGateways`) refuses the route as a whole (`Accepted=False`,
//! `UnsupportedValue`, naming the field): a route is never half-programmed.

use super::routes::{header_edits, route_action, valid_regex, RouteId, RouteKind, RouteOrder};
use super::*;
use crate::objects::{GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule};

/// The content type every gRPC request carries (`application/grpc`, `application/grpc+proto`, ...).
const GRPC_CONTENT_TYPE: &str = "application/grpc.*";

/// Envoy routes for one GRPCRoute, with their precedence keys; none when [`unsupported`] finds
/// something.
pub(super) fn build_routes<'a>(
    store: &Store,
    gw: &GatewayContext<'_>,
    route_key: &'a ObjectKey,
    route: &'a GrpcRoute,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Vec<(RouteOrder<'a>, Route)> {
    let mut out = Vec::new();
    if unsupported(route).is_some() {
        return out;
    }
    let created = route.metadata.creation_timestamp.as_deref();
    let id = RouteId { kind: RouteKind::Grpc, key: route_key };
    for (rule_index, rule) in route.spec.rules.iter().enumerate() {
        let filters = Filters::from(rule_filters(rule));
        let action = route_action(store, gw, id, &rule.backend_refs, policies, ir, problems);
        let default_match = [GrpcRouteMatch::default()];
        let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches };
        for (match_index, m) in matches.iter().enumerate() {
            let mut headers: Vec<ValueMatch> = m
                .headers
                .iter()
                .map(|h| ValueMatch {
                    name: h.name.to_ascii_lowercase(),
                    value: match h.kind.as_deref() {
                        Some("RegularExpression") => StringMatch::Regex(h.value.clone()),
                        _ => StringMatch::Exact(h.value.clone()),
                    },
                })
                .collect();
            headers.push(ValueMatch {
                name: "content-type".into(),
                value: StringMatch::Regex(GRPC_CONTENT_TYPE.into()),
            });
            let (service, method) = method_lengths(m.method.as_ref());
            let order = RouteOrder::grpc(
                service,
                method,
                m.headers.len(),
                route_key,
                created,
                rule_index,
                match_index,
            );
            out.push((
                order,
                Route {
                    name: format!("{route_key}/grpc/rule/{rule_index}/match/{match_index}"),
                    path: path_match(m.method.as_ref()),
                    headers,
                    query_params: Vec::new(),
                    method: None,
                    filters: filters.clone(),
                    action: action.clone(),
                },
            ));
        }
    }
    // Kept until every listener is built: exact size, as for HTTPRoutes.
    out.shrink_to_fit();
    out
}

/// Characters of the service and the method a match names (the spec's precedence keys).
fn method_lengths(m: Option<&GrpcMethodMatch>) -> (usize, usize) {
    let Some(m) = m else { return (0, 0) };
    (m.service.as_deref().map_or(0, str::len), m.method.as_deref().map_or(0, str::len))
}

/// The `:path` a method match takes: `/<service>/<method>`, either part any name when unset.
fn path_match(m: Option<&GrpcMethodMatch>) -> PathMatch {
    let Some(m) = m else { return PathMatch::Prefix("/".into()) };
    let regex = m.kind.as_deref() == Some("RegularExpression");
    match (m.service.as_deref(), m.method.as_deref(), regex) {
        (Some(service), Some(method), false) => PathMatch::Exact(format!("/{service}/{method}")),
        // Whole segments: `/<service>/<anything>`.
        (Some(service), None, false) => PathMatch::Prefix(format!("/{service}/")),
        // Method names are `[A-Za-z_][A-Za-z_0-9]*` (checked): nothing to escape.
        (None, Some(method), false) => PathMatch::Regex(format!("/[^/]+/{method}")),
        (None, None, _) => PathMatch::Prefix("/".into()),
        (service, method, true) => PathMatch::Regex(regex_path(service, method)),
    }
}

fn regex_path(service: Option<&str>, method: Option<&str>) -> String {
    let part = |p: Option<&str>| p.map_or_else(|| "[^/]+".to_string(), |p| format!("(?:{p})"));
    format!("/{}/{}", part(service), part(method))
}

/// A rule's header filters (the only filters implemented for GRPCRoute).
fn rule_filters(rule: &GrpcRouteRule) -> RouteFilters {
    let mut filters = RouteFilters::default();
    for f in &rule.filters {
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                filters.request_headers = header_edits(f.request_header_modifier.as_ref())
            }
            "ResponseHeaderModifier" => {
                filters.response_headers = header_edits(f.response_header_modifier.as_ref())
            }
            _ => {}
        }
    }
    filters
}

/// `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`: the schema's rule for an Exact service.
fn valid_service(service: &str) -> bool {
    let name = service.strip_prefix('.').unwrap_or(service);
    !name.is_empty() && name.split('.').all(valid_identifier)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`: the schema's rule for an Exact method (and each service label).
fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The first field of `route` the loader does not implement, or a value it cannot program, as
/// `spec.<path>: <why>`. Such a route is refused as a whole (`Accepted=False`,
/// `UnsupportedValue`).
pub fn unsupported(route: &GrpcRoute) -> Option<String> {
    let spec = &route.spec;
    if spec.use_default_gateways.is_some() {
        return Some("spec.useDefaultGateways is not supported".into());
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if rule.session_persistence.is_some() {
            return Some(format!("{at}.sessionPersistence is not supported"));
        }
        for (j, m) in rule.matches.iter().enumerate() {
            if let Some(why) = unsupported_match(m) {
                return Some(format!("{at}.matches[{j}].{why}"));
            }
        }
        let mut seen = BTreeSet::new();
        for (j, f) in rule.filters.iter().enumerate() {
            let at = format!("{at}.filters[{j}]");
            let missing =
                |field: &str| Some(format!("{at}.{field} must be set for type {}", f.kind));
            let why = match f.kind.as_str() {
                "RequestHeaderModifier" if f.request_header_modifier.is_none() => {
                    missing("requestHeaderModifier")
                }
                "ResponseHeaderModifier" if f.response_header_modifier.is_none() => {
                    missing("responseHeaderModifier")
                }
                "RequestHeaderModifier" | "ResponseHeaderModifier" => None,
                other => Some(format!("{at}.type: {other} is not supported for GRPCRoute")),
            };
            if why.is_some() {
                return why;
            }
            if !seen.insert(f.kind.as_str()) {
                return Some(format!("{at}.type: {} may appear only once per rule", f.kind));
            }
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            if !b.filters.is_empty() {
                return Some(format!("{at}.backendRefs[{j}].filters is not supported"));
            }
        }
    }
    None
}

fn unsupported_match(m: &GrpcRouteMatch) -> Option<String> {
    if let Some(method) = &m.method {
        let (service, name) = (method.service.as_deref(), method.method.as_deref());
        if service.is_none() && name.is_none() {
            return Some("method: one of service and method must be set".into());
        }
        match method.kind.as_deref().unwrap_or("Exact") {
            "Exact" => {
                if let Some(s) = service.filter(|s| !valid_service(s)) {
                    return Some(format!("method.service: {s:?} is not a valid gRPC service name"));
                }
                if let Some(n) = name.filter(|n| !valid_identifier(n)) {
                    return Some(format!("method.method: {n:?} is not a valid gRPC method name"));
                }
            }
            "RegularExpression" => {
                for (field, value) in [("service", service), ("method", name)] {
                    if let Some(Err(e)) = value.map(valid_regex) {
                        return Some(format!("method.{field}: {e}"));
                    }
                }
                if let Err(e) = valid_regex(&regex_path(service, name)) {
                    return Some(format!("method: {e}"));
                }
            }
            other => return Some(format!("method.type: {other} is not supported")),
        }
    }
    for (k, h) in m.headers.iter().enumerate() {
        match h.kind.as_deref().unwrap_or("Exact") {
            "Exact" => {}
            "RegularExpression" => {
                if let Err(e) = valid_regex(&h.value) {
                    return Some(format!("headers[{k}].value: {e}"));
                }
            }
            other => return Some(format!("headers[{k}].type: {other} is not supported")),
        }
    }
    None
}

/// `ResolvedRefs` (reasons `ResolvedRefs`, `BackendNotFound`, `RefNotPermitted`, `InvalidKind`)
/// and, when the route uses what the loader does not implement, `Accepted=False`
/// `UnsupportedValue` naming the field.
pub fn route_conditions(
    store: &Store,
    route_key: &ObjectKey,
    route: &GrpcRoute,
) -> (Condition, Option<Condition>) {
    let backends = route.spec.rules.iter().flat_map(|rule| &rule.backend_refs);
    let generation = route.metadata.generation();
    super::routes::conditions(
        store,
        RouteKind::Grpc,
        route_key,
        generation,
        unsupported(route),
        backends,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_text(text: &str) -> Resolution {
        super::super::resolve_text(text, &Default::default())
    }

    const BASE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec: {gatewayClassName: x, listeners: [{name: http, protocol: HTTP, port: 8080}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n";

    fn grpc_route(name: &str, created: &str, rules: &str) -> String {
        format!("---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, generation: 2, creationTimestamp: \"{created}\"}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}")
    }

    fn accepted(r: &Resolution, kind: &str, name: &str) -> (bool, &'static str, String) {
        let report = r.routes.iter().find(|x| x.kind == kind && x.name == name).unwrap();
        let c = report.parents[0].conditions.iter().find(|c| c.kind == "Accepted").unwrap();
        (c.status, c.reason, c.message.to_string())
    }

    /// Service characters, then method characters, then header matches; GRPCRoute rules before
    /// HTTPRoute rules on the same host; ties go to the older route.
    #[test]
    fn precedence_follows_the_grpcroute_spec() {
        let b = "backendRefs: [{name: s, port: 80}]";
        let text = [
            BASE.to_string(),
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec: {parentRefs: [{name: gw}], rules: [{backendRefs: [{name: s, port: 80}]}]}\n".to_string(),
            grpc_route("old", "2024-01-01T00:00:00Z", &format!(
                "  - matches: [{{method: {{method: Get}}}}]\n    {b}\n  - matches: [{{method: {{service: a.B}}}}]\n    {b}\n  - {b}\n"
            )),
            grpc_route("new", "2024-02-01T00:00:00Z", &format!(
                "  - matches: [{{method: {{service: a.B, method: Get}}}}]\n    {b}\n  - matches: [{{method: {{service: a.B}}, headers: [{{name: x, value: y}}]}}]\n    {b}\n  - matches: [{{method: {{method: Get}}}}]\n    {b}\n"
            )),
        ]
        .concat();
        let r = resolve_text(&text);
        let names: Vec<&str> =
            r.ir.listeners[0].virtual_hosts[0].routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "default/new/grpc/rule/0/match/0", // service and method
                "default/new/grpc/rule/1/match/0", // service, with a header
                "default/old/grpc/rule/1/match/0", // service
                "default/old/grpc/rule/0/match/0", // method: the older route first
                "default/new/grpc/rule/2/match/0",
                "default/old/grpc/rule/2/match/0", // any method
                "default/web/rule/0/match/0",      // HTTPRoute rules last
            ]
        );
        let routes = &r.ir.listeners[0].virtual_hosts[0].routes;
        assert_eq!(routes[0].path, PathMatch::Exact("/a.B/Get".into()));
        assert_eq!(routes[2].path, PathMatch::Prefix("/a.B/".into()));
        assert_eq!(routes[3].path, PathMatch::Regex("/[^/]+/Get".into()));
        let content_type = ValueMatch {
            name: "content-type".into(),
            value: StringMatch::Regex(GRPC_CONTENT_TYPE.into()),
        };
        assert!(routes[..6].iter().all(|r| r.headers.contains(&content_type)));
        assert!(routes[6].headers.is_empty());
        assert_eq!(
            accepted(&r, "GRPCRoute", "new"),
            (true, "Accepted", "Route is accepted".into())
        );
        // A GRPCRoute backend speaks HTTP/2; the HTTPRoute shares the port's cluster.
        assert_eq!(r.ir.clusters["kube_default_s_80"].protocol, UpstreamProtocol::Http2);
    }

    /// Fields the loader does not implement refuse the whole route, naming the field.
    #[test]
    fn unimplemented_fields_refuse_the_whole_route() {
        let cases = [
            ("    sessionPersistence: {type: Cookie}\n", "spec.rules[0].sessionPersistence"),
            ("    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80}}}]\n", "filters[0].type: RequestMirror is not supported"),
            ("    filters: [{type: ExtensionRef, extensionRef: {group: x, kind: Y, name: z}}]\n", "filters[0].type: ExtensionRef"),
            ("    filters: [{type: RequestHeaderModifier}]\n", "requestHeaderModifier must be set"),
            ("    matches: [{method: {type: Exact}}]\n", "one of service and method must be set"),
            ("    matches: [{method: {service: \"a/b\"}}]\n", "not a valid gRPC service name"),
            ("    matches: [{method: {method: \"Get.*\"}}]\n", "not a valid gRPC method name"),
            ("    matches: [{method: {type: RegularExpression, service: \"(\"}}]\n", "method.service"),
            ("    matches: [{method: {type: Prefix, service: a}}]\n", "method.type: Prefix"),
            ("    matches: [{headers: [{name: x, type: RegularExpression, value: \"[a-z]{1,64}\"}]}]\n", "too large"),
        ];
        for (extra, expected) in cases {
            let text = format!(
                "{BASE}{}",
                grpc_route(
                    "r",
                    "2024-01-01T00:00:00Z",
                    &format!("  - backendRefs: [{{name: s, port: 80}}]\n{extra}")
                )
            );
            let r = resolve_text(&text);
            assert!(
                r.ir.listeners.iter().flat_map(|l| &l.virtual_hosts).all(|v| v.routes.is_empty()),
                "{expected}: not half-programmed"
            );
            let (status, reason, message) = accepted(&r, "GRPCRoute", "r");
            assert_eq!((status, reason), (false, "UnsupportedValue"), "{expected}");
            assert!(message.contains(expected), "{message}: {expected}");
        }
        let parsed = crate::source::parse_file(
            std::path::Path::new("t.yaml"),
            &format!(
                "{BASE}{}",
                grpc_route(
                    "r",
                    "2024-01-01T00:00:00Z",
                    "  - backendRefs: []\n    timeouts: {request: 1s}\n"
                )
            ),
        );
        assert!(parsed.errors.iter().any(|e| format!("{e:?}").contains("timeouts")));
    }

    /// Status per parent with the spec's reasons; listeners that allow only HTTPRoutes refuse
    /// GRPCRoutes; a ReferenceGrant must name GRPCRoute to let one cross namespaces.
    #[test]
    fn status_uses_the_spec_reasons() {
        let text = format!(
            "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: http-only}}\nspec: {{gatewayClassName: x, listeners: [{{name: http, protocol: HTTP, port: 8081, allowedRoutes: {{kinds: [{{kind: HTTPRoute}}]}}}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: t, namespace: other}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: http-only, namespace: other}}\nspec: {{from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}}], to: [{{group: \"\", kind: Service}}]}}\n{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: wrong-listener}}\nspec: {{parentRefs: [{{name: http-only}}], rules: [{{backendRefs: [{{name: s, port: 80}}]}}]}}\n",
            grpc_route("refs", "2024-01-01T00:00:00Z", "  - backendRefs: [{name: t, namespace: other, port: 80}]\n  - backendRefs: [{name: missing, port: 80}]\n"),
        );
        let r = resolve_text(&text);
        let refs = r.routes.iter().find(|x| x.name == "refs").unwrap();
        assert_eq!(refs.kind, "GRPCRoute");
        let resolved =
            refs.parents[0].conditions.iter().find(|c| c.kind == "ResolvedRefs").unwrap();
        assert_eq!((resolved.status, resolved.reason), (false, "RefNotPermitted"));
        assert!(resolved.message.contains("Service default/missing not found"));
        assert!(refs.parents[0].conditions.iter().all(|c| c.observed_generation == 2));
        let (status, reason, _) = accepted(&r, "GRPCRoute", "wrong-listener");
        assert_eq!((status, reason), (false, "NotAllowedByListeners"));
        let gw = r.gateways.iter().find(|g| g.name == "gw").unwrap();
        assert_eq!(gw.listeners[0].attached_routes, 1);
        let kinds: Vec<&str> = gw.listeners[0].supported_kinds.iter().map(|k| k.kind).collect();
        assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);
        // The invalid backend's share fails; the route is still served.
        let route = &r.ir.listeners[0].virtual_hosts[0].routes[0];
        assert!(matches!(&route.action, RouteAction::Respond { status: 500, .. }), "{route:?}");
    }
}
