//! HTTPRoute rules: their matches in the spec's precedence, and each backendRef's cluster with
//! the policy that governs it. Also what attachment needs of every route kind ([`AnyRoute`]).

use super::*;

/// The route kinds the loader implements. On one host, GRPCRoute rules come before HTTPRoute
/// rules: they match only gRPC requests (`content-type: application/grpc*`), which then reach
/// an HTTPRoute only when no GRPCRoute rule matches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum RouteKind {
    Grpc,
    Http,
    /// TLSRoutes attach only to TLS listeners, so they never share a host with the other two.
    Tls,
}

impl RouteKind {
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Http => "HTTPRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }

    /// The kind [`Self::name`] names (`TLSRoute` for any other).
    pub fn of_name(name: &str) -> Self {
        match name {
            "GRPCRoute" => RouteKind::Grpc,
            "HTTPRoute" => RouteKind::Http,
            _ => RouteKind::Tls,
        }
    }

    pub fn group_kind(self) -> RouteGroupKind {
        RouteGroupKind { group: GATEWAY_GROUP, kind: self.name() }
    }
}

/// One route: its kind and `namespace/name` (an HTTPRoute and a GRPCRoute may share a name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RouteId<'a> {
    pub kind: RouteKind,
    pub key: &'a ObjectKey,
}

/// A route of any implemented kind, as attachment sees it.
#[derive(Clone, Copy, Debug)]
pub(super) enum AnyRoute<'a> {
    Http(&'a HttpRoute),
    Grpc(&'a objects::GrpcRoute),
    Tls(&'a objects::TlsRoute),
}

impl<'a> AnyRoute<'a> {
    pub fn metadata(self) -> &'a objects::ObjectMeta {
        match self {
            AnyRoute::Http(r) => &r.metadata,
            AnyRoute::Grpc(r) => &r.metadata,
            AnyRoute::Tls(r) => &r.metadata,
        }
    }

    pub fn parent_refs(self) -> &'a [objects::ParentRef] {
        match self {
            AnyRoute::Http(r) => &r.spec.parent_refs,
            AnyRoute::Grpc(r) => &r.spec.parent_refs,
            AnyRoute::Tls(r) => &r.spec.parent_refs,
        }
    }

    pub fn hostnames(self) -> &'a [String] {
        match self {
            AnyRoute::Http(r) => &r.spec.hostnames,
            AnyRoute::Grpc(r) => &r.spec.hostnames,
            AnyRoute::Tls(r) => &r.spec.hostnames,
        }
    }
}

/// Every route in the store: GRPCRoutes, then HTTPRoutes, then TLSRoutes, each by `namespace/name`.
pub(super) fn all_routes(store: &Store) -> impl Iterator<Item = (RouteId<'_>, AnyRoute<'_>)> {
    let grpc = store
        .grpc_routes
        .iter()
        .map(|(key, route)| (RouteId { kind: RouteKind::Grpc, key }, AnyRoute::Grpc(route)));
    let http = store
        .http_routes
        .iter()
        .map(|(key, route)| (RouteId { kind: RouteKind::Http, key }, AnyRoute::Http(route)));
    let tls = store
        .tls_routes
        .iter()
        .map(|(key, route)| (RouteId { kind: RouteKind::Tls, key }, AnyRoute::Tls(route)));
    grpc.chain(http).chain(tls)
}

/// The route `id` names (it came from [`all_routes`] on the same store).
pub(super) fn lookup<'a>(store: &'a Store, id: RouteId<'_>) -> AnyRoute<'a> {
    match id.kind {
        RouteKind::Grpc => AnyRoute::Grpc(&store.grpc_routes[id.key]),
        RouteKind::Http => AnyRoute::Http(&store.http_routes[id.key]),
        RouteKind::Tls => AnyRoute::Tls(&store.tls_routes[id.key]),
    }
}

/// The route an Envoy route of the IR came from, by its name: `<namespace>/<name>/rule/..` for
/// HTTPRoutes ([`build_http_routes`]), `<namespace>/<name>/grpc/rule/..` for GRPCRoutes.
pub(super) fn route_of_name(name: &str) -> Option<(RouteKind, ObjectKey)> {
    let mut parts = name.splitn(4, '/');
    let (namespace, route, next) = (parts.next()?, parts.next()?, parts.next()?);
    let kind = if next == "grpc" { RouteKind::Grpc } else { RouteKind::Http };
    Some((kind, ObjectKey::new(namespace, route)))
}

/// Gateway API route precedence across all rules of all routes on one host. GRPCRoute rules
/// first (see [`RouteKind`]), ordered as the GRPCRoute spec says: more characters in the
/// matched service, then in the method, then more header matches. HTTPRoute rules: Exact paths
/// first, then regular expressions (implementation-specific; longer first, as Envoy Gateway
/// does), then longer prefixes; then a method match, more header matches, more query parameter
/// matches. Ties: the older route, namespace/name, and rule and match order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RouteOrder<'a> {
    family: RouteKind,
    path_kind: u8,
    longer_first: std::cmp::Reverse<usize>,
    /// GRPCRoute: characters of the method match (0 for HTTPRoutes).
    longer_method_first: std::cmp::Reverse<usize>,
    method_first: bool,
    more_headers_first: std::cmp::Reverse<usize>,
    more_query_params_first: std::cmp::Reverse<usize>,
    created_missing: bool,
    created: Option<&'a str>,
    route: &'a ObjectKey,
    rule: usize,
    matched: usize,
}

impl<'a> RouteOrder<'a> {
    fn of(
        m: &Route,
        route_key: &'a ObjectKey,
        created: Option<&'a str>,
        rule: usize,
        matched: usize,
    ) -> Self {
        let (path_kind, length) = match &m.path {
            PathMatch::Exact(v) => (0, v.len()),
            PathMatch::Regex(v) => (1, v.len()),
            // A trailing `/` is insignificant: `/a/` and `/a` are the same prefix.
            PathMatch::Prefix(v) => (2, v.trim_end_matches('/').len()),
        };
        RouteOrder {
            family: RouteKind::Http,
            path_kind,
            longer_first: std::cmp::Reverse(length),
            longer_method_first: std::cmp::Reverse(0),
            method_first: m.method.is_none(),
            more_headers_first: std::cmp::Reverse(m.headers.len()),
            more_query_params_first: std::cmp::Reverse(m.query_params.len()),
            created_missing: created.is_none(),
            created,
            route: route_key,
            rule,
            matched,
        }
    }

    /// A GRPCRoute match with `service` and `method` characters and `headers` header matches.
    pub(super) fn grpc(
        service: usize,
        method: usize,
        headers: usize,
        route_key: &'a ObjectKey,
        created: Option<&'a str>,
        rule: usize,
        matched: usize,
    ) -> Self {
        RouteOrder {
            family: RouteKind::Grpc,
            path_kind: 0,
            longer_first: std::cmp::Reverse(service),
            longer_method_first: std::cmp::Reverse(method),
            method_first: false,
            more_headers_first: std::cmp::Reverse(headers),
            more_query_params_first: std::cmp::Reverse(0),
            created_missing: created.is_none(),
            created,
            route: route_key,
            rule,
            matched,
        }
    }
}

/// Envoy routes for one HTTPRoute, with their precedence keys. None at all when the route uses a
/// field the loader does not implement ([`unsupported`]): a route is never half-programmed.
pub(super) fn build_http_routes<'a>(
    store: &Store,
    gw: &GatewayContext<'_>,
    route_key: &'a ObjectKey,
    route: &'a HttpRoute,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Vec<(RouteOrder<'a>, Route)> {
    let mut out = Vec::new();
    if unsupported(route).is_some() {
        return out;
    }
    let created = route.metadata.creation_timestamp.as_deref();
    for (rule_index, rule) in route.spec.rules.iter().enumerate() {
        let (filters, redirect) = rule_filters(store, gw, route_key, rule, policies, ir, problems);
        let filters = Filters::from(filters);
        let action = match redirect {
            Some(redirect) => RouteAction::Redirect(Box::new(redirect)),
            None => route_action(
                store,
                gw,
                RouteId { kind: RouteKind::Http, key: route_key },
                &rule.backend_refs,
                policies,
                ir,
                problems,
            ),
        };
        let default_match = [objects::HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches };
        for (match_index, m) in matches.iter().enumerate() {
            let name = format!("{route_key}/rule/{rule_index}/match/{match_index}");
            let route = Route {
                name,
                path: path_match(m),
                headers: m
                    .headers
                    .iter()
                    .map(|h| ValueMatch {
                        name: h.name.to_ascii_lowercase(),
                        value: string_match(h),
                    })
                    .collect(),
                query_params: m
                    .query_params
                    .iter()
                    .map(|q| ValueMatch { name: q.name.clone(), value: string_match(q) })
                    .collect(),
                method: m.method.clone(),
                filters: filters.clone(),
                action: action.clone(),
            };
            let order = RouteOrder::of(&route, route_key, created, rule_index, match_index);
            out.push((order, route));
        }
    }
    // Kept until every listener is built: without this a route's one rule holds room for four.
    out.shrink_to_fit();
    out
}

fn path_match(m: &objects::HttpRouteMatch) -> PathMatch {
    let kind = m.path.as_ref().and_then(|p| p.kind.as_deref()).unwrap_or("PathPrefix");
    let value = m.path.as_ref().and_then(|p| p.value.clone()).unwrap_or_else(|| "/".into());
    match kind {
        "Exact" => PathMatch::Exact(value),
        "RegularExpression" => PathMatch::Regex(value),
        _ => PathMatch::Prefix(value),
    }
}

fn string_match(m: &objects::HttpValueMatch) -> StringMatch {
    match m.kind.as_deref() {
        Some("RegularExpression") => StringMatch::Regex(m.value.clone()),
        _ => StringMatch::Exact(m.value.clone()),
    }
}

pub(super) fn header_edits(filter: Option<&objects::HttpHeaderFilter>) -> HeaderEdits {
    let Some(f) = filter else { return HeaderEdits::default() };
    let pair = |h: &objects::HttpHeader| (h.name.to_ascii_lowercase(), h.value.clone());
    HeaderEdits {
        set: f.set.iter().map(pair).collect(),
        add: f.add.iter().map(pair).collect(),
        remove: f.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

fn path_rewrite(m: &objects::HttpPathModifier) -> Option<PathRewrite> {
    match m.kind.as_str() {
        "ReplaceFullPath" => m.replace_full_path.clone().map(PathRewrite::Full),
        "ReplacePrefixMatch" => m.replace_prefix_match.clone().map(PathRewrite::Prefix),
        _ => None,
    }
}

/// A rule's filters and timeouts, and its redirect if it has one (a redirect replaces the
/// backends). Assumes [`unsupported`] found nothing.
fn rule_filters(
    store: &Store,
    gw: &GatewayContext<'_>,
    route_key: &ObjectKey,
    rule: &objects::HttpRouteRule,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> (RouteFilters, Option<Redirect>) {
    let mut filters = RouteFilters::default();
    let mut redirect = None;
    for f in &rule.filters {
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                filters.request_headers = header_edits(f.request_header_modifier.as_ref())
            }
            "ResponseHeaderModifier" => {
                filters.response_headers = header_edits(f.response_header_modifier.as_ref())
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref();
                filters.rewrite = Some(Rewrite {
                    hostname: r.and_then(|r| r.hostname.clone()),
                    path: r.and_then(|r| r.path.as_ref()).and_then(path_rewrite),
                });
            }
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref();
                let scheme = r.and_then(|r| r.scheme.clone());
                let port = r.and_then(|r| r.port).or(match scheme.as_deref() {
                    Some("http") => Some(80),
                    Some("https") => Some(443),
                    _ => None,
                });
                redirect = Some(Redirect {
                    scheme,
                    hostname: r.and_then(|r| r.hostname.clone()),
                    port,
                    path: r.and_then(|r| r.path.as_ref()).and_then(path_rewrite),
                    status: r.and_then(|r| r.status_code).unwrap_or(302),
                });
            }
            "RequestMirror" => {
                if let Some(mirror) = &f.request_mirror {
                    // An invalid mirror backend is reported in ResolvedRefs; requests are still
                    // served.
                    if let Ok(cluster) = backend_cluster(
                        store,
                        gw,
                        RouteId { kind: RouteKind::Http, key: route_key },
                        &mirror.backend_ref,
                        policies,
                        ir,
                        problems,
                    ) {
                        filters.mirrors.push(cluster);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(t) = &rule.timeouts {
        filters.request_timeout_ms = t.request.as_deref().and_then(duration_ms);
        filters.backend_request_timeout_ms = t.backend_request.as_deref().and_then(duration_ms);
    }
    (filters, redirect)
}

/// Gateway API `Duration` (`^([0-9]{1,5}(h|m|s|ms)){1,4}$`, e.g. `1h30m`, `500ms`), in ms.
pub(super) fn duration_ms(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut parts = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += number * unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// The first field of `route` the loader does not implement, or a value it cannot program, as
/// `spec.<path>: <why>`. Such a route is refused as a whole (`Accepted=False`,
/// `UnsupportedValue`).
pub fn unsupported(route: &HttpRoute) -> Option<String> {
    let spec = &route.spec;
    if spec.use_default_gateways.is_some() {
        return Some("spec.useDefaultGateways is not supported".into());
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if rule.retry.is_some() {
            return Some(format!("{at}.retry is not supported"));
        }
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
            if let Some(why) = unsupported_filter(f, rule) {
                return Some(format!("{at}{why}"));
            }
            if f.kind != "RequestMirror" && !seen.insert(f.kind.as_str()) {
                return Some(format!("{at}.type: {} may appear only once per rule", f.kind));
            }
        }
        if seen.contains("RequestRedirect") && seen.contains("URLRewrite") {
            return Some(format!(
                "{at}.filters: RequestRedirect and URLRewrite cannot be combined"
            ));
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            if !b.filters.is_empty() {
                return Some(format!("{at}.backendRefs[{j}].filters is not supported"));
            }
        }
        if let Some(t) = &rule.timeouts {
            for (name, value) in [("request", &t.request), ("backendRequest", &t.backend_request)] {
                if let Some(v) = value {
                    if duration_ms(v).is_none() {
                        return Some(format!(
                            "{at}.timeouts.{name}: {v:?} is not a valid duration"
                        ));
                    }
                }
            }
            let request = t.request.as_deref().and_then(duration_ms).filter(|&ms| ms > 0);
            let backend = t.backend_request.as_deref().and_then(duration_ms);
            if let (Some(request), Some(backend)) = (request, backend) {
                if backend > request || backend == 0 {
                    return Some(format!(
                        "{at}.timeouts.backendRequest must be non-zero and at most timeouts.request"
                    ));
                }
            }
        }
    }
    None
}

/// The RE2 program size above which Envoy rejects a regex, and with it the whole route
/// configuration (its default `re2.max_program_size.error_level`).
const RE2_MAX_PROGRAM_SIZE: usize = 100;

/// Why Envoy would refuse a regular expression.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum RegexError {
    /// `detail`: the last line of the regex crate's message.
    #[error("{pattern:?} is not a valid RE2 regular expression ({detail})")]
    Invalid { pattern: String, detail: String },
    #[error("{0:?} is not a valid RE2 regular expression")]
    Unparsable(String),
    #[error("{pattern:?} is too large for Envoy's RE2 (program size about {size}, limit {limit})", limit = RE2_MAX_PROGRAM_SIZE)]
    TooLarge { pattern: String, size: usize },
}

pub(super) fn valid_regex(pattern: &str) -> Result<(), RegexError> {
    regex::Regex::new(pattern).map_err(|e| {
        let detail = e.to_string().lines().last().unwrap_or_default().to_string();
        RegexError::Invalid { pattern: pattern.to_string(), detail }
    })?;
    // RE2's `\w`, `\d`, `\s` and `\b` are ASCII: parsed so when the pattern allows it.
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()
        .or_else(|| regex_syntax::Parser::new().parse(pattern).ok())
        .ok_or_else(|| RegexError::Unparsable(pattern.to_string()))?;
    let size = program_size(&hir);
    if size > RE2_MAX_PROGRAM_SIZE {
        return Err(RegexError::TooLarge { pattern: pattern.to_string(), size });
    }
    Ok(())
}

/// An upper estimate of RE2's program size (instructions): RE2 expands counted repetitions as
/// it compiles, as this does; it shares common prefixes of alternatives and UTF-8 suffixes of
/// Unicode classes, which this does not, so this refuses some expressions Envoy would take (e.g.
/// `\pL+`), with a message that says so, rather than let one regex break a listener's routes.
fn program_size(hir: &regex_syntax::hir::Hir) -> usize {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Empty => 0,
        HirKind::Literal(literal) => literal.0.len(),
        HirKind::Class(Class::Unicode(class)) => class.ranges().len().max(1) * 2,
        HirKind::Class(Class::Bytes(class)) => class.ranges().len().max(1),
        HirKind::Look(_) => 1,
        HirKind::Repetition(rep) => {
            let sub = program_size(&rep.sub);
            let copies = rep.max.unwrap_or(rep.min.max(1)) as usize;
            sub.saturating_mul(copies).saturating_add(copies)
        }
        HirKind::Capture(capture) => program_size(&capture.sub) + 2,
        HirKind::Concat(parts) => parts.iter().map(program_size).sum(),
        HirKind::Alternation(parts) => {
            parts.iter().map(program_size).sum::<usize>() + parts.len().saturating_sub(1)
        }
    }
}

fn unsupported_match(m: &objects::HttpRouteMatch) -> Option<String> {
    if let Some(path) = &m.path {
        let value = path.value.as_deref().unwrap_or("/");
        match path.kind.as_deref().unwrap_or("PathPrefix") {
            "Exact" | "PathPrefix" => {
                if !value.starts_with('/') {
                    return Some(format!("path.value: {value:?} must start with '/'"));
                }
            }
            "RegularExpression" => {
                if let Err(e) = valid_regex(value) {
                    return Some(format!("path.value: {e}"));
                }
            }
            other => return Some(format!("path.type: {other} is not supported")),
        }
    }
    for (field, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
        for (k, h) in list.iter().enumerate() {
            match h.kind.as_deref().unwrap_or("Exact") {
                "Exact" => {}
                "RegularExpression" => {
                    if let Err(e) = valid_regex(&h.value) {
                        return Some(format!("{field}[{k}].value: {e}"));
                    }
                }
                other => return Some(format!("{field}[{k}].type: {other} is not supported")),
            }
        }
    }
    if let Some(method) = &m.method {
        const METHODS: [&str; 9] =
            ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
        if !METHODS.contains(&method.as_str()) {
            return Some(format!("method: {method} is not supported"));
        }
    }
    None
}

/// `.field: why` for one filter.
fn unsupported_filter(
    f: &objects::HttpRouteFilter,
    rule: &objects::HttpRouteRule,
) -> Option<String> {
    let missing = |field: &str| Some(format!(".{field} must be set for type {}", f.kind));
    let path_check = |m: &objects::HttpPathModifier, field: &str| -> Option<String> {
        let value = match m.kind.as_str() {
            "ReplaceFullPath" => m.replace_full_path.as_deref(),
            "ReplacePrefixMatch" => {
                let all_prefix = !rule.matches.is_empty()
                    && rule.matches.iter().all(|m| {
                        m.path.as_ref().is_none_or(|p| {
                            p.kind.as_deref().unwrap_or("PathPrefix") == "PathPrefix"
                        })
                    });
                if !all_prefix && !rule.matches.is_empty() {
                    return Some(format!(
                        ".{field}.path: ReplacePrefixMatch needs PathPrefix path matches"
                    ));
                }
                m.replace_prefix_match.as_deref()
            }
            other => return Some(format!(".{field}.path.type: {other} is not supported")),
        };
        match value {
            None => Some(format!(".{field}.path: the value for {} must be set", m.kind)),
            Some(v) if !v.starts_with('/') => {
                Some(format!(".{field}.path: {v:?} must start with '/'"))
            }
            Some(_) => None,
        }
    };
    match f.kind.as_str() {
        "RequestHeaderModifier" if f.request_header_modifier.is_none() => {
            missing("requestHeaderModifier")
        }
        "ResponseHeaderModifier" if f.response_header_modifier.is_none() => {
            missing("responseHeaderModifier")
        }
        "RequestHeaderModifier" | "ResponseHeaderModifier" => None,
        "RequestRedirect" => {
            let Some(r) = &f.request_redirect else { return missing("requestRedirect") };
            if let Some(s) = r.scheme.as_deref().filter(|s| !matches!(*s, "http" | "https")) {
                return Some(format!(".requestRedirect.scheme: {s} is not supported"));
            }
            if let Some(c) = r.status_code.filter(|c| ![301, 302, 303, 307, 308].contains(c)) {
                return Some(format!(".requestRedirect.statusCode: {c} is not supported"));
            }
            r.path.as_ref().and_then(|p| path_check(p, "requestRedirect"))
        }
        "URLRewrite" => {
            let Some(r) = &f.url_rewrite else { return missing("urlRewrite") };
            r.path.as_ref().and_then(|p| path_check(p, "urlRewrite"))
        }
        "RequestMirror" => {
            let Some(m) = &f.request_mirror else { return missing("requestMirror") };
            if m.percent.is_some() {
                return Some(".requestMirror.percent is not supported".into());
            }
            if m.fraction.is_some() {
                return Some(".requestMirror.fraction is not supported".into());
            }
            // A mirror's backendRef is a BackendObjectReference: the schema has neither field.
            if m.backend_ref.weight.is_some() {
                return Some(
                    ".requestMirror.backendRef.weight is not a field of a mirror's backendRef"
                        .into(),
                );
            }
            if !m.backend_ref.filters.is_empty() {
                return Some(
                    ".requestMirror.backendRef.filters is not a field of a mirror's backendRef"
                        .into(),
                );
            }
            None
        }
        other => Some(format!(".type: {other} is not supported")),
    }
}

/// What one route's backendRefs (and mirror backends) resolve to, and whether it is refused, as
/// the two conditions the route's attachment status needs for each parent: `ResolvedRefs`
/// (reasons `ResolvedRefs`, `BackendNotFound`, `RefNotPermitted`, `InvalidKind`), and, when it
/// uses a field the loader does not implement, an `Accepted=False` with reason
/// `UnsupportedValue` naming the field (the route is then not programmed at all).
pub fn route_conditions(
    store: &Store,
    route_key: &ObjectKey,
    route: &HttpRoute,
) -> (Condition, Option<Condition>) {
    let backends = route.spec.rules.iter().flat_map(|rule| {
        let mirrors = rule.filters.iter().filter_map(|f| f.request_mirror.as_ref());
        rule.backend_refs.iter().chain(mirrors.map(|m| &m.backend_ref))
    });
    let generation = route.metadata.generation();
    conditions(store, RouteKind::Http, route_key, generation, unsupported(route), backends)
}

/// The conditions of a route of any kind: `ResolvedRefs` from every backend it references, and
/// `Accepted=False UnsupportedValue` when it uses what the loader does not implement.
pub(super) fn conditions<'a>(
    store: &Store,
    kind: RouteKind,
    route_key: &ObjectKey,
    generation: i64,
    unsupported: Option<String>,
    backends: impl IntoIterator<Item = &'a objects::BackendRef>,
) -> (Condition, Option<Condition>) {
    let refusal = unsupported
        .map(|why| Condition::new("Accepted", false, "UnsupportedValue", why).observed(generation));
    let failures: Vec<BackendRefError> = backends
        .into_iter()
        .filter_map(|backend| check_backend_ref(store, kind, route_key, backend).err())
        .collect();
    (resolved_refs(&failures).observed(generation), refusal)
}

/// A route parent's `ResolvedRefs`: True, or False with the first failure's reason and every
/// failure's message.
pub(super) fn resolved_refs(failures: &[BackendRefError]) -> Condition {
    match failures.first() {
        None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "All references are resolved"),
        Some(first) => {
            let message = failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            Condition::new("ResolvedRefs", false, first.reason(), message)
        }
    }
}

/// Why a backendRef names no usable Service port; [`BackendRefError::reason`] is the spec's
/// `ResolvedRefs` reason for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum BackendRefError {
    #[error("backendRef {kind} {name} is not a Service")]
    NotAService { kind: String, name: String },
    #[error("backendRef Service {0} is in another namespace and no ReferenceGrant allows it")]
    NotPermitted(ObjectKey),
    #[error("backendRef Service {0} has no port")]
    NoPort(ObjectKey),
    #[error("Service {0} not found")]
    ServiceNotFound(ObjectKey),
    #[error("Service {service} has no port {port}")]
    PortNotFound { service: ObjectKey, port: u16 },
}

impl BackendRefError {
    pub fn reason(&self) -> &'static str {
        match self {
            BackendRefError::NotAService { .. } => "InvalidKind",
            BackendRefError::NotPermitted(_) => "RefNotPermitted",
            BackendRefError::NoPort(_)
            | BackendRefError::ServiceNotFound(_)
            | BackendRefError::PortNotFound { .. } => "BackendNotFound",
        }
    }
}

/// The Service a backendRef names, checked as far as the route alone decides (kind, namespace
/// and ReferenceGrant, existence, port).
pub(super) fn check_backend_ref(
    store: &Store,
    route_kind: RouteKind,
    route_key: &ObjectKey,
    backend: &objects::BackendRef,
) -> Result<(ObjectKey, u16), BackendRefError> {
    let group = backend.group.as_deref().unwrap_or("");
    let kind = backend.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        let (kind, name) = (kind.to_string(), backend.name.clone());
        return Err(BackendRefError::NotAService { kind, name });
    }
    let namespace = backend.namespace.as_deref().unwrap_or(&route_key.namespace);
    let service_key = ObjectKey::new(namespace, &backend.name);
    if namespace != route_key.namespace
        && !reference_granted(store, route_kind, route_key, &service_key)
    {
        return Err(BackendRefError::NotPermitted(service_key));
    }
    let Some(port_number) = backend.port else {
        return Err(BackendRefError::NoPort(service_key));
    };
    let Some(service) = store.services.get(&service_key) else {
        return Err(BackendRefError::ServiceNotFound(service_key));
    };
    if !service.spec.ports.iter().any(|p| p.port == port_number) {
        return Err(BackendRefError::PortNotFound { service: service_key, port: port_number });
    }
    Ok((service_key, port_number))
}

/// Where a rule's backendRefs send its requests.
#[allow(clippy::too_many_arguments)]
pub(super) fn route_action(
    store: &Store,
    gw: &GatewayContext<'_>,
    route: RouteId<'_>,
    backend_refs: &[objects::BackendRef],
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> RouteAction {
    let mut forward = Vec::new();
    let mut invalid = Vec::new();
    let mut unusable = Vec::new();
    let mut invalid_weight = 0;
    for backend in backend_refs {
        let weight = backend.weight.unwrap_or(1);
        if weight == 0 {
            continue;
        }
        match backend_cluster(store, gw, route, backend, policies, ir, problems) {
            Ok(cluster) => {
                if let Some(BackendTls { trust: Trust::Unusable { reason }, policy, .. }) =
                    &ir.clusters[&cluster].tls
                {
                    unusable.push(format!("BackendTLSPolicy {policy} cannot be met: {reason}"));
                }
                forward.push(WeightedCluster { cluster, weight });
            }
            Err(error) => {
                invalid_weight += weight;
                invalid.push(error.to_string());
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
        forward
            .push(WeightedCluster { cluster: invalid_backend_cluster(ir), weight: invalid_weight });
    }
    RouteAction::Forward(forward)
}

/// [`INVALID_BACKEND_CLUSTER`], added to the IR on first use: a cluster without hosts, so what
/// is sent to it fails (HTTP: 503; TCP: the connection is closed).
pub(super) fn invalid_backend_cluster(ir: &mut Ir) -> String {
    ir.clusters.entry(INVALID_BACKEND_CLUSTER.to_string()).or_insert_with(|| Cluster {
        name: INVALID_BACKEND_CLUSTER.to_string(),
        service: ObjectKey::new("", ""),
        port: 0,
        endpoints: Endpoints::Static(Vec::new()),
        tls: None,
        protocol: UpstreamProtocol::Http1,
    });
    INVALID_BACKEND_CLUSTER.to_string()
}

/// Why a backendRef gets no cluster.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum ClusterError {
    #[error(transparent)]
    Ref(#[from] BackendRefError),
    #[error(
        "Service {service} port {port} would share Envoy cluster {cluster} with Service {other}"
    )]
    Shared { service: ObjectKey, port: u16, cluster: String, other: ObjectKey },
}

/// The cluster of a backendRef, created on first use. It speaks HTTP/2 when a GRPCRoute uses it
/// or its Service port's appProtocol is `kubernetes.io/h2c` (GEP-1911); one cluster serves every
/// route to that port, so a port any GRPCRoute uses speaks HTTP/2 to all of them.
pub(super) fn backend_cluster(
    store: &Store,
    gw: &GatewayContext<'_>,
    route: RouteId<'_>,
    backend: &objects::BackendRef,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Result<String, ClusterError> {
    let (service_key, port_number) = check_backend_ref(store, route.kind, route.key, backend)?;
    let namespace = service_key.namespace.as_str();
    let service = &store.services[&service_key];
    let port = service.spec.ports.iter().find(|p| p.port == port_number).expect("checked");
    let name = backendtls_contract::cluster_name(namespace, &backend.name, port_number);
    let client_certificate = gw.client_certificate.clone();
    let protocol = if route.kind == RouteKind::Grpc
        || port.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL)
    {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    if let Some(existing) = ir.clusters.get_mut(&name) {
        if existing.service == service_key && protocol == UpstreamProtocol::Http2 {
            existing.protocol = UpstreamProtocol::Http2;
        }
    }
    match ir.clusters.get(&name) {
        // Checked object names make this impossible (see `kube_names`); should it happen anyway,
        // the route fails rather than sending one Service's traffic to another's cluster.
        Some(existing) if existing.service != service_key => {
            return Err(ClusterError::Shared {
                service: service_key,
                port: port_number,
                cluster: name,
                other: existing.service.clone(),
            });
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
                protocol,
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

/// GEP-1911's appProtocol for HTTP/2 over cleartext with prior knowledge.
pub const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

pub(super) fn reference_granted(
    store: &Store,
    kind: RouteKind,
    from: &ObjectKey,
    to: &ObjectKey,
) -> bool {
    store.reference_grants.iter().any(|(key, grant)| {
        key.namespace == to.namespace
            && grant.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP && f.kind == kind.name() && f.namespace == from.namespace
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store_of(text: &str) -> Store {
        let parsed = crate::source::parse_file(std::path::Path::new("t.yaml"), text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let mut store = Store::default();
        parsed.objects.into_iter().for_each(|o| store.put(o));
        store
    }

    const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec: {gatewayClassName: x, listeners: [{name: http, protocol: HTTP, port: 8080}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n";

    fn route(name: &str, created: &str, rules: &str) -> String {
        format!("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}")
    }

    fn route_names(text: &str) -> Vec<String> {
        let resolution = super::super::resolve(&store_of(text), &Default::default());
        resolution.ir.listeners[0].virtual_hosts[0].routes.iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn durations_follow_the_gateway_api_format() {
        assert_eq!(duration_ms("500ms"), Some(500));
        assert_eq!(duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(duration_ms("0s"), Some(0));
        assert_eq!(duration_ms("1h1m1s1ms"), Some(3_661_001));
        for bad in ["", "1", "1d", "1.5s", "123456s", "1h1m1s1ms1h", "s"] {
            assert_eq!(duration_ms(bad), None, "{bad}");
        }
    }

    /// Exact > longest prefix > method > most headers > most query params > oldest route >
    /// namespace/name > rule order, across all routes on a host.
    #[test]
    fn precedence_follows_the_spec_across_routes() {
        let b = "backendRefs: [{name: s, port: 80}]";
        let text = [
            GATEWAY.to_string(),
            route("old", "2024-01-01T00:00:00Z", &format!(
                "  - matches: [{{path: {{value: /}}}}]\n    {b}\n  - matches: [{{path: {{value: /a/}}}}]\n    {b}\n  - matches: [{{path: {{value: /a}}, headers: [{{name: x, value: y}}]}}]\n    {b}\n"
            )),
            route("new", "2024-02-01T00:00:00Z", &format!(
                "  - matches: [{{path: {{value: /a}}, method: GET}}]\n    {b}\n  - matches: [{{path: {{type: Exact, value: /a}}}}]\n    {b}\n  - matches: [{{path: {{value: /a/b}}}}, {{path: {{value: /a}}, queryParams: [{{name: q, value: v}}]}}]\n    {b}\n  - matches: [{{path: {{value: /}}}}]\n    {b}\n"
            )),
        ]
        .concat();
        assert_eq!(
            route_names(&text),
            [
                "default/new/rule/1/match/0", // Exact
                "default/new/rule/2/match/0", // longest prefix
                "default/new/rule/0/match/0", // /a with a method
                "default/old/rule/2/match/0", // /a with a header
                "default/new/rule/2/match/1", // /a with a query parameter
                "default/old/rule/1/match/0", // /a/ is /a; the older route first
                "default/old/rule/0/match/0", // `/`: the older route first
                "default/new/rule/3/match/0",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_file_errors() {
        let text = format!(
            "{GATEWAY}{}",
            route(
                "r",
                "2024-01-01T00:00:00Z",
                "  - backendRefs: [{name: s, port: 80}]\n    matchez: []\n"
            )
        );
        let parsed = crate::source::parse_file(std::path::Path::new("t.yaml"), &text);
        assert!(
            parsed.errors.iter().any(|e| format!("{e:?}").contains("matchez")),
            "{:?}",
            parsed.errors
        );
    }

    /// Every unimplemented field refuses the whole route, naming the field; nothing of it is
    /// programmed.
    #[test]
    fn unimplemented_fields_refuse_the_whole_route() {
        let cases = [
            ("    retry: {attempts: 2}\n", "spec.rules[0].retry is not supported"),
            ("    sessionPersistence: {type: Cookie}\n", "spec.rules[0].sessionPersistence"),
            ("    filters: [{type: CORS, cors: {}}]\n", "spec.rules[0].filters[0].type: CORS"),
            ("    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80}, percent: 5}}]\n", "requestMirror.percent"),
            ("    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80, weight: 3}}}]\n", "requestMirror.backendRef.weight"),
            ("    matches: [{path: {type: RegularExpression, value: \"(\"}}]\n", "spec.rules[0].matches[0].path.value"),
            ("    matches: [{path: {type: Exact, value: /x}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]\n", "ReplacePrefixMatch needs PathPrefix"),
            ("    timeouts: {request: 1s, backendRequest: 2s}\n", "timeouts.backendRequest"),
            (
                "    matches: [{headers: [{name: x, type: RegularExpression, value: \"[a-z]{1,64}\"}]}]\n",
                "too large for Envoy's RE2",
            ),
            ("    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]\n", "statusCode: 305"),
        ];
        for (extra, expected) in cases {
            let text = format!(
                "{GATEWAY}{}",
                route("r", "2024-01-01T00:00:00Z", &format!("  - backendRefs: [{{name: s, port: 80}}]\n  - backendRefs: [{{name: s, port: 80}}]\n{extra}").replacen("  - backendRefs: [{name: s, port: 80}]\n", "", 1))
            );
            let store = store_of(&text);
            let resolution = super::super::resolve(&store, &Default::default());
            let all_routes: usize = resolution
                .ir
                .listeners
                .iter()
                .flat_map(|l| &l.virtual_hosts)
                .map(|v| v.routes.len())
                .sum();
            assert_eq!(all_routes, 0, "{expected}: not half-programmed");
            let accepted = &resolution.routes[0].parents[0].conditions[0];
            assert_eq!(
                (accepted.kind, accepted.status, accepted.reason),
                ("Accepted", false, "UnsupportedValue"),
                "{expected}"
            );
            assert!(accepted.message.contains(expected), "{}: {expected}", accepted.message);
        }
    }

    #[test]
    fn resolved_refs_uses_the_spec_reasons() {
        let check = |backend: &str, reason: &str| {
            let text = format!(
                "{GATEWAY}{}",
                route("r", "2024-01-01T00:00:00Z", &format!("  - backendRefs: [{backend}]\n"))
            );
            let store = store_of(&text);
            let key = ObjectKey::new("default", "r");
            let (resolved, refusal) = route_conditions(&store, &key, &store.http_routes[&key]);
            assert!(refusal.is_none());
            assert_eq!(resolved.reason, reason, "{backend}: {}", resolved.message);
            assert_eq!(resolved.status, reason == "ResolvedRefs");
        };
        check("{name: s, port: 80}", "ResolvedRefs");
        check("{name: nope, port: 80}", "BackendNotFound");
        check("{name: s, namespace: other, port: 80}", "RefNotPermitted");
        check("{group: example.com, kind: Bucket, name: s}", "InvalidKind");
    }

    /// A mirror's cluster is governed by the policy of its Service port like any backend: never
    /// plaintext where a policy applies.
    #[test]
    fn a_mirror_backend_is_governed_by_its_policy() {
        let text = format!(
            "{GATEWAY}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: m}}\nspec: {{ports: [{{port: 443}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: p}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: m}}]\n  validation: {{hostname: m.example.com, wellKnownCACertificates: System}}\n",
            route("r", "2024-01-01T00:00:00Z", "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 443}}}]\n    backendRefs: [{name: s, port: 80}]\n")
        );
        let resolution = super::super::resolve(&store_of(&text), &Default::default());
        let route = &resolution.ir.listeners[0].virtual_hosts[0].routes[0];
        assert_eq!(route.filters.mirrors, ["kube_default_m_443"]);
        let mirror = &resolution.ir.clusters["kube_default_m_443"];
        assert_eq!(mirror.tls.as_ref().map(|t| t.hostname.as_str()), Some("m.example.com"));
    }

    /// Regexes Envoy 1.40 takes pass, those over its RE2 program size limit are refused (sizes
    /// from `envoy --mode validate`: `[a-z]{1,64}` 131, the API path 138).
    #[test]
    fn regexes_are_checked_against_envoys_program_size_limit() {
        for ok in ["/re/[0-9]+", "[a-z]{1,40}", "\\w+", "/\\w+/[0-9]{1,20}"] {
            assert!(valid_regex(ok).is_ok(), "{ok}: {:?}", valid_regex(ok));
        }
        for too_large in ["[a-z]{1,64}", "/api/v[0-9]+/users/[a-z0-9-]{1,30}"] {
            let err = valid_regex(too_large).unwrap_err();
            assert!(matches!(err, RegexError::TooLarge { .. }), "{too_large}: {err:?}");
            assert!(err.to_string().contains("is too large for Envoy's RE2 (program size about"));
        }
        let err = valid_regex("(").unwrap_err();
        assert!(matches!(err, RegexError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().starts_with("\"(\" is not a valid RE2 regular expression ("));
    }
}
