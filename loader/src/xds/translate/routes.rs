//! Route configurations and virtual hosts (inline, or one by one over VHDS).

use super::*;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;

pub(super) fn route_configuration(l: &ir::Listener) -> route::RouteConfiguration {
    let virtual_hosts = l.virtual_hosts.iter().map(virtual_host).collect();
    route::RouteConfiguration {
        name: l.name.clone(),
        virtual_hosts,
        // Gateway API: the port in Host is ignored for matching, and the backend sees Host as
        // the client sent it (`strip_any_host_port` would remove it from the request).
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

pub(super) fn virtual_host(vh: &ir::VirtualHost) -> route::VirtualHost {
    route::VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes: vh.routes.iter().map(envoy_route).collect(),
        ..Default::default()
    }
}

/// The host part of [`vhds_placeholder`]'s name and its one domain: not a valid Gateway API
/// hostname (those have no `_`), so no route's virtual host can take it.
pub(super) const PLACEHOLDER_HOST: &str = "backendtls_placeholder";

/// `<route configuration>/<host>`, as `resolve` names virtual hosts for VHDS.
pub(super) fn placeholder_name(route_configuration: &str) -> String {
    format!("{route_configuration}/{PLACEHOLDER_HOST}")
}

/// A virtual host without routes, served over VHDS for every route configuration: Envoy keeps a
/// listener warming until its VHDS subscription receives something and does not pass it an
/// empty update, so a Gateway listener without routes would wait out Envoy's fetch timeout
/// (15 s). Without routes it answers like no virtual host at all (404).
pub(super) fn vhds_placeholder(route_configuration: &str) -> Arc<PackedResource> {
    let host = route::VirtualHost {
        name: placeholder_name(route_configuration),
        domains: vec![PLACEHOLDER_HOST.to_string()],
        ..Default::default()
    };
    pack_by_content(&host)
}

/// Encoded, with a digest of the encoding as its version.
pub(super) fn pack_by_content<T: Message + Name>(message: &T) -> Arc<PackedResource> {
    let resource = EncodedAny::from(pack(message));
    Arc::new(PackedResource { version: digest_hex(&resource.value), resource })
}

/// The `PathPrefix` as Envoy matches it: whole segments, a trailing `/` insignificant.
fn trimmed_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

fn string_matcher(m: &ir::StringMatch) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern;
    let pattern = match m {
        ir::StringMatch::Exact(v) => MatchPattern::Exact(v.clone()),
        ir::StringMatch::Regex(v) => MatchPattern::SafeRegex(regex_matcher(v)),
    };
    matcher::StringMatcher { match_pattern: Some(pattern), ..Default::default() }
}

fn regex_matcher(regex: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher { regex: regex.to_string(), ..Default::default() }
}

fn regex_rewrite(pattern: &str, substitution: &str) -> matcher::RegexMatchAndSubstitute {
    matcher::RegexMatchAndSubstitute {
        pattern: Some(regex_matcher(pattern)),
        substitution: substitution.to_string(),
    }
}

/// RE2 escaping of a literal path.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The path rewrite of a `URLRewrite` or `RequestRedirect`, as Envoy's prefix or regex rewrite
/// (whose variants have the same shape in both). `ReplacePrefixMatch` replaces the matched
/// segments: `/prefix/one` → `/one` and `/strip-prefix/three` with `/` → `/three`, never `//three`.
enum EnvoyPathRewrite {
    Prefix(String),
    Regex(matcher::RegexMatchAndSubstitute),
}

fn envoy_path_rewrite(path: &PathMatch, rewrite: &ir::PathRewrite) -> EnvoyPathRewrite {
    match (rewrite, path) {
        (ir::PathRewrite::Full(full), _) => EnvoyPathRewrite::Regex(regex_rewrite("^/.*$", full)),
        (ir::PathRewrite::Prefix(replacement), PathMatch::Prefix(prefix)) => {
            let replacement = trimmed_prefix(replacement);
            let prefix = trimmed_prefix(prefix);
            if replacement.is_empty() {
                // `/prefix`, `/prefix/`, `/prefix/rest` → `/`, `/`, `/rest`.
                let pattern = format!("^{}/*", regex_escape(prefix));
                EnvoyPathRewrite::Regex(regex_rewrite(&pattern, "/"))
            } else if prefix.is_empty() {
                // Prefix `/`: every path gains the replacement in front.
                EnvoyPathRewrite::Regex(regex_rewrite("^/*", &format!("{replacement}/")))
            } else {
                EnvoyPathRewrite::Prefix(replacement.to_string())
            }
        }
        // Refused by resolve (`ReplacePrefixMatch` needs a `PathPrefix` match); should it reach
        // here, the path is kept as it is.
        (ir::PathRewrite::Prefix(_), _) => EnvoyPathRewrite::Regex(regex_rewrite("^(.*)$", "\\1")),
    }
}

fn header_options(edits: &ir::HeaderEdits) -> Vec<core::HeaderValueOption> {
    use self::core::header_value_option::HeaderAppendAction;
    let option =
        |(name, value): &(String, String), action: HeaderAppendAction| core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: name.clone(),
                value: value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
    let set = edits.set.iter().map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = edits.add.iter().map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd));
    set.chain(add).collect()
}

fn millis(ms: u64) -> Duration {
    Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub(super) fn envoy_route(r: &ir::Route) -> route::Route {
    use route::route_match::PathSpecifier;
    let path_specifier = match &r.path {
        PathMatch::Exact(path) => PathSpecifier::Path(path.clone()),
        PathMatch::Regex(regex) => PathSpecifier::SafeRegex(regex_matcher(regex)),
        PathMatch::Prefix(prefix) => {
            // Gateway API prefixes match whole segments; a trailing slash is insignificant.
            let trimmed = trimmed_prefix(prefix);
            if trimmed.is_empty() {
                PathSpecifier::Prefix("/".into())
            } else {
                PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
            }
        }
    };
    let mut headers: Vec<route::HeaderMatcher> = r
        .headers
        .iter()
        .map(|h| route::HeaderMatcher {
            name: h.name.clone(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(&h.value),
            )),
            ..Default::default()
        })
        .collect();
    if let Some(method) = &r.method {
        headers.push(route::HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(&ir::StringMatch::Exact(method.clone())),
            )),
            ..Default::default()
        });
    }
    let query_parameters = r
        .query_params
        .iter()
        .map(|q| route::QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(
                route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                    string_matcher(&q.value),
                ),
            ),
        })
        .collect();
    let filters = &r.filters;
    let action = match &r.action {
        RouteAction::Respond { status, body } => {
            route::route::Action::DirectResponse(route::DirectResponseAction {
                status: *status,
                body: Some(inline_string(body)),
                ..Default::default()
            })
        }
        RouteAction::Redirect(redirect) => {
            use route::redirect_action::{
                PathRewriteSpecifier, RedirectResponseCode as Code, SchemeRewriteSpecifier,
            };
            let response_code = match redirect.status {
                301 => Code::MovedPermanently,
                303 => Code::SeeOther,
                307 => Code::TemporaryRedirect,
                308 => Code::PermanentRedirect,
                _ => Code::Found,
            };
            let path_rewrite_specifier =
                redirect.path.as_ref().map(|p| match envoy_path_rewrite(&r.path, p) {
                    EnvoyPathRewrite::Prefix(prefix) => PathRewriteSpecifier::PrefixRewrite(prefix),
                    EnvoyPathRewrite::Regex(regex) => PathRewriteSpecifier::RegexRewrite(regex),
                });
            route::route::Action::Redirect(route::RedirectAction {
                host_redirect: redirect.hostname.clone().unwrap_or_default(),
                port_redirect: redirect.port.map(u32::from).unwrap_or(0),
                response_code: response_code as i32,
                scheme_rewrite_specifier: redirect
                    .scheme
                    .clone()
                    .map(SchemeRewriteSpecifier::SchemeRedirect),
                path_rewrite_specifier,
                ..Default::default()
            })
        }
        RouteAction::Forward(backends) => {
            let cluster_specifier = match backends.as_slice() {
                [only] => route::route_action::ClusterSpecifier::Cluster(only.cluster.clone()),
                many => route::route_action::ClusterSpecifier::WeightedClusters(
                    route::WeightedCluster {
                        clusters: many
                            .iter()
                            .map(|b| route::weighted_cluster::ClusterWeight {
                                name: b.cluster.clone(),
                                weight: Some(pb::UInt32Value { value: b.weight }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    },
                ),
            };
            let mut action = route::RouteAction {
                cluster_specifier: Some(cluster_specifier),
                ..Default::default()
            };
            if let Some(rewrite) = &filters.rewrite {
                if let Some(host) = &rewrite.hostname {
                    action.host_rewrite_specifier = Some(
                        route::route_action::HostRewriteSpecifier::HostRewriteLiteral(host.clone()),
                    );
                }
                match rewrite.path.as_ref().map(|p| envoy_path_rewrite(&r.path, p)) {
                    Some(EnvoyPathRewrite::Prefix(prefix)) => action.prefix_rewrite = prefix,
                    Some(EnvoyPathRewrite::Regex(regex)) => action.regex_rewrite = Some(regex),
                    None => {}
                }
            }
            action.request_mirror_policies = filters
                .mirrors
                .iter()
                .map(|cluster| route::route_action::RequestMirrorPolicy {
                    cluster: cluster.clone(),
                    ..Default::default()
                })
                .collect();
            if let Some(ms) = filters.request_timeout_ms {
                action.timeout = Some(millis(ms));
            }
            if let Some(ms) = filters.backend_request_timeout_ms {
                // Per attempt, the first included; without retries, one attempt.
                action.retry_policy = Some(route::RetryPolicy {
                    per_try_timeout: Some(millis(ms)),
                    ..Default::default()
                });
            }
            route::route::Action::Route(action)
        }
    };
    route::Route {
        name: r.name.clone(),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(path_specifier),
            headers,
            query_parameters,
            ..Default::default()
        }),
        action: Some(action),
        request_headers_to_add: header_options(&filters.request_headers),
        request_headers_to_remove: filters.request_headers.remove.clone(),
        response_headers_to_add: header_options(&filters.response_headers),
        response_headers_to_remove: filters.response_headers.remove.clone(),
        ..Default::default()
    }
}
