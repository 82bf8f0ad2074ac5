//! HTTPRoute core end to end, written from the assertions of the upstream Gateway API conformance
//! tests (v1.6.1) of the HTTP profile: matching (paths, headers, query parameters, methods, exact
//! paths, across routes), header modifiers, redirects, rewrites and weights, adapted to file
//! mode: the real loader on its own manifests feeds a real Envoy over ADS, and echo backends
//! (`infra-backend-v1`..`v3` in `gateway-conformance-infra`) report what they saw.

use backendtls_e2e::conformance::expect::Redirect;
use backendtls_e2e::conformance::{expect_eventually, BackendRequest, Expect, Gateway, INFRA_NS};
use backendtls_e2e::echo::EchoServer;
use backendtls_e2e::policy_support::{documents, ConfigDir};
use backendtls_e2e::{ads_bootstrap, free_port, wait_until, Ads, Envoy, Loader};
use std::time::Duration;

/// The loader, an Envoy and three echo backends; Gateway `same-namespace` listens on
/// `gateway_port` and accepts routes from every namespace.
struct Stack {
    _envoy: Envoy,
    loader: Loader,
    _config: ConfigDir,
    backends: Vec<EchoServer>,
    gateway: Gateway,
    gateway_port: u16,
}

impl Stack {
    /// `routes`: HTTPRoute documents in [`INFRA_NS`], parent `same-namespace`.
    fn start(node_id: &str, routes: &[&str]) -> Stack {
        let config = ConfigDir::new();
        let gateway_port = free_port();
        let mut manifests = vec![format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: same-namespace, namespace: {INFRA_NS}}}\nspec:\n  gatewayClassName: backendtls\n  listeners: [{{name: http, protocol: HTTP, port: {gateway_port}, allowedRoutes: {{namespaces: {{from: All}}}}}}]\n"
        )];
        let mut backends = Vec::new();
        for version in ["v1", "v2", "v3"] {
            let echo = EchoServer::plain(INFRA_NS, &format!("infra-backend-{version}-5d8f9c-x2k4"));
            let port = echo.port();
            manifests.push(format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: infra-backend-{version}, namespace: {INFRA_NS}}}\nspec: {{ports: [{{name: http, port: 8080}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: infra-backend-{version}-a, namespace: {INFRA_NS}, labels: {{kubernetes.io/service-name: infra-backend-{version}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\nports: [{{name: http, port: {port}}}]\n"
            ));
            backends.push(echo);
        }
        config.write("infra.yaml", &documents(&manifests));
        let routes: Vec<String> = routes
            .iter()
            .map(|r| {
                format!(
                    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n{}",
                    r.replace("$NS", INFRA_NS)
                )
            })
            .collect();
        config.write("routes.yaml", &documents(&routes));
        let loader = Loader::start(config.path());
        let admin = free_port();
        let envoy =
            Envoy::start(&ads_bootstrap(loader.xds_port(), admin, node_id, Ads::Delta), admin);
        let gateway = Gateway::from(gateway_port);
        Stack { _envoy: envoy, loader, _config: config, backends, gateway, gateway_port }
    }

    fn expect(&self, expected: Expect) {
        expect_eventually(&self.gateway, &expected);
    }
}

fn to(path: &str, backend: &str) -> Expect {
    Expect::get(path).backend(backend)
}

/// Upstream `HTTPRouteMatching`: `/` → v1, `/v2` (whole segments) or header `version: two` → v2.
#[test]
fn http_route_matching() {
    let stack = Stack::start(
        "routing-matching",
        &["metadata: {name: matching, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n"],
    );
    stack.expect(to("/", "infra-backend-v1"));
    stack.expect(to("/example", "infra-backend-v1"));
    stack.expect(to("/v2", "infra-backend-v2"));
    stack.expect(to("/v2/example", "infra-backend-v2"));
    stack.expect(to("/", "infra-backend-v2").header("version", "two"));
    stack.expect(to("/v2example", "infra-backend-v1"));
    stack.expect(to("/foo/v2/example", "infra-backend-v1"));
}

/// Upstream `HTTPRouteExactPathMatching` and `HTTPRouteMethodMatching`, with regular expression
/// paths.
#[test]
fn exact_regex_and_method_matching() {
    let stack = Stack::start(
        "routing-exact-method",
        &["metadata: {name: exact, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {type: Exact, value: /one}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: Exact, value: /two}, method: POST}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches: [{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}, {method: GET, path: {value: /method}}]\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n"],
    );
    stack.expect(to("/one", "infra-backend-v1"));
    stack.expect(Expect::get("/one/example").status(404));
    stack.expect(Expect::get("/two").status(404));
    stack.expect(to("/two", "infra-backend-v2").method("POST"));
    stack.expect(to("/re/123", "infra-backend-v3"));
    stack.expect(Expect::get("/re/12a").status(404));
    stack.expect(to("/method", "infra-backend-v3"));
    stack.expect(Expect::get("/method").method("POST").status(404));
}

/// Upstream `HTTPRouteHeaderMatching` and `HTTPRouteQueryParamMatching`: conditions of one match
/// are ANDed, matches are ORed, header names are case-insensitive, the match with more headers
/// wins.
#[test]
fn header_and_query_param_matching() {
    let stack = Stack::start(
        "routing-headers",
        &["metadata: {name: headers, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{headers: [{name: version, value: one}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: two}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches: [{headers: [{name: version, value: two}, {name: Color, value: orange}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: color, type: RegularExpression, value: \"gr[a-z]+n\"}]}, {queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{queryParams: [{name: animal, value: dolphin}, {name: color, type: RegularExpression, value: \"bl.e\"}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n"],
    );
    stack.expect(to("/", "infra-backend-v1").header("Version", "one"));
    stack.expect(to("/", "infra-backend-v2").header("version", "two"));
    stack.expect(to("/", "infra-backend-v1").header("version", "two").header("color", "orange"));
    stack.expect(to("/", "infra-backend-v3").header("COLOR", "green"));
    stack.expect(to("/?animal=whale", "infra-backend-v3"));
    stack.expect(to("/?animal=dolphin&color=blue", "infra-backend-v2"));
    stack.expect(Expect::get("/?animal=dolphin").status(404));
    stack.expect(Expect::get("/").header("version", "three").status(404));
}

/// Upstream `HTTPRouteMatchingAcrossRoutes`: precedence holds across routes on one host.
#[test]
fn matching_across_routes() {
    let stack = Stack::start(
        "routing-across",
        &[
            "metadata: {name: matching-part1, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [example.com, example.net]\n  rules:\n  - matches: [{path: {value: /}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
            "metadata: {name: matching-part2, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  hostnames: [example.com]\n  rules:\n  - matches: [{path: {value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n",
        ],
    );
    stack.expect(to("/", "infra-backend-v1").host("example.com"));
    stack.expect(to("/example", "infra-backend-v1").host("example.net"));
    stack.expect(to("/v2", "infra-backend-v2").host("example.com"));
    stack.expect(to("/v2/example", "infra-backend-v2").host("example.com"));
    stack.expect(to("/", "infra-backend-v2").host("example.com").header("version", "two"));
    stack.expect(to("/v2", "infra-backend-v1").host("example.net"));
    stack.expect(to("/", "infra-backend-v1").host("example.net").header("version", "two"));
}

/// Upstream `HTTPRouteRequestHeaderModifier` and `HTTPRouteResponseHeaderModifier`.
#[test]
fn header_modifiers() {
    let stack = Stack::start(
        "routing-header-modifiers",
        &["metadata: {name: modifiers, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {value: /set}}]\n    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /add}}]\n    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /remove}}]\n    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /response}}]\n    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: add-appends-values}], remove: [X-Header-Remove]}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n"],
    );
    stack.expect(Expect::get("/set").header("x-header-set", "some-other-value").backend_request(
        BackendRequest::path("/set").header("X-Header-Set", "set-overwrites-values"),
    ));
    stack.expect(Expect::get("/add").header("X-Header-Add", "something").backend_request(
        BackendRequest::path("/add").header("X-Header-Add", "something,add-appends-values"),
    ));
    stack.expect(
        Expect::get("/remove")
            .header("X-Header-Remove", "val")
            .backend_request(BackendRequest::path("/remove").absent("X-Header-Remove")),
    );
    stack.expect(
        Expect::get("/response")
            .header("X-Echo-Set-Header", "X-Header-Set: original, X-Header-Remove: gone")
            .response_header("X-Header-Set", "set-overwrites-values")
            .response_header("X-Header-Add", "add-appends-values")
            .absent_response_header("X-Header-Remove"),
    );
}

/// Upstream `HTTPRouteRedirectHostAndStatus`, `HTTPRouteRedirectScheme`, `HTTPRouteRedirectPort`
/// and `HTTPRouteRedirectPath`.
#[test]
fn redirects() {
    let stack = Stack::start(
        "routing-redirects",
        &["metadata: {name: redirects, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {value: /hostname-redirect}}]\n    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]\n  - matches: [{path: {value: /host-and-status}}]\n    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301}}]\n  - matches: [{path: {value: /scheme}}]\n    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n  - matches: [{path: {value: /port}}]\n    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]\n  - matches: [{path: {value: /scheme-and-port}}]\n    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, hostname: example.org}}]\n  - matches: [{path: {value: /full}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]\n  - matches: [{path: {value: /original-prefix}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]\n  - matches: [{path: {value: /strip}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]\n"],
    );
    let redirect = |path: &str, status: u16, to: Redirect| {
        stack.expect(Expect::get(path).status(status).redirect(to));
    };
    // Neither scheme nor port: the listener's port (upstream's listeners are on 80, where it is
    // left out; ours are on a free port, so it shows).
    let listener_port = stack.gateway_port.to_string();
    let same_port = |to: Redirect| to.port(&listener_port);
    redirect("/hostname-redirect", 302, same_port(Redirect::to_host("example.org")));
    redirect("/host-and-status", 301, same_port(Redirect::to_host("example.org")));
    // Scheme only: the port is the scheme's (443), left out of the Location.
    redirect("/scheme", 302, Redirect::default().scheme("https"));
    stack.expect(
        Expect::get("/scheme")
            .host("example.com")
            .status(302)
            .redirect(Redirect::to_host("example.com").scheme("https")),
    );
    redirect("/port", 302, Redirect::default().port("8083"));
    redirect(
        "/scheme-and-port",
        302,
        Redirect::to_host("example.org").scheme("https").port("8443"),
    );
    redirect("/full/one?q=1", 302, same_port(Redirect::default().path("/full-path-replacement")));
    redirect(
        "/original-prefix/lemon",
        302,
        same_port(Redirect::default().path("/replacement-prefix/lemon")),
    );
    redirect("/strip/three", 302, same_port(Redirect::default().path("/three")));
    redirect("/strip", 302, same_port(Redirect::default().path("/")));
}

/// Upstream `HTTPRouteRewriteHost` and `HTTPRouteRewritePath`.
#[test]
fn rewrites() {
    let stack = Stack::start(
        "routing-rewrites",
        &["metadata: {name: rewrites, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {value: /prefix/one}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /full/one}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /strip-prefix}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /host}}]\n    filters: [{type: URLRewrite, urlRewrite: {hostname: one.example.org}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n"],
    );
    let rewritten = |path: &str, backend_path: &str| {
        stack.expect(Expect::get(path).backend_request(BackendRequest::path(backend_path)));
    };
    rewritten("/prefix/one/two", "/one/two");
    rewritten("/prefix/one", "/one");
    rewritten("/full/one/two", "/one");
    rewritten("/full/one?q=1", "/one?q=1");
    rewritten("/strip-prefix/three", "/three");
    rewritten("/strip-prefix", "/");
    stack.expect(
        Expect::get("/host").backend_request(BackendRequest::path("/host").host("one.example.org")),
    );
}

/// Upstream `HTTPRouteWeight`: requests split by weight; a zero weight gets none.
#[test]
fn weights() {
    let stack = Stack::start(
        "routing-weights",
        &["metadata: {name: weights, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080, weight: 70}, {name: infra-backend-v2, port: 8080, weight: 30}, {name: infra-backend-v3, port: 8080, weight: 0}]\n"],
    );
    stack.expect(Expect::get("/"));
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let response = backendtls_e2e::conformance::send(
            &stack.gateway,
            &backendtls_e2e::conformance::Request::get("/"),
        )
        .expect("gateway answers");
        let pod = response.echo().expect("echo JSON").pod;
        *counts.entry(pod[..16].to_string()).or_default() += 1;
    }
    let v1 = counts.get("infra-backend-v1").copied().unwrap_or(0);
    let v2 = counts.get("infra-backend-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 200, "v3 has weight 0: {counts:?}");
    // 70/30 within a wide margin (the upstream test allows 5% per backend over 500 requests).
    assert!((110..=170).contains(&v1), "{counts:?}");
}

/// A route using a field the loader does not implement is refused as a whole, in status, and
/// not programmed; the other routes still serve.
#[test]
fn unimplemented_fields_are_refused_not_ignored() {
    let stack = Stack::start(
        "routing-refused",
        &[
            "metadata: {name: refused, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {value: /refused}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /sticky}}]\n    sessionPersistence: {type: Cookie}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
            "metadata: {name: served, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {value: /served}}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n",
        ],
    );
    stack.expect(to("/served", "infra-backend-v2"));
    stack.expect(Expect::get("/refused").status(404));
    let status = wait_until("route status", Duration::from_secs(30), || {
        let status = stack.loader.status();
        let routes = status["routes"].as_array().cloned().unwrap_or_default();
        routes.into_iter().find(|r| r["name"] == "refused")
    });
    let accepted = &status["parents"][0]["conditions"][0];
    assert_eq!(accepted["type"], "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "UnsupportedValue");
    assert!(
        accepted["message"].as_str().unwrap().contains("spec.rules[1].sessionPersistence"),
        "{accepted}"
    );
    let _ = stack.gateway_port;
}

/// Upstream `HTTPRouteTimeoutRequest` and `HTTPRouteTimeoutBackendRequest`: a backend slower
/// than the timeout answers 504; `request: 0s` disables the timeout.
#[test]
fn timeouts() {
    let stack = Stack::start(
        "routing-timeouts",
        &["metadata: {name: timeouts, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {value: /request-timeout}}]\n    timeouts: {request: 500ms}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /backend-timeout}}]\n    timeouts: {backendRequest: 500ms}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {value: /disabled}}]\n    timeouts: {request: 0s}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n"],
    );
    stack.expect(to("/request-timeout", "infra-backend-v1"));
    stack.expect(Expect::get("/request-timeout?delay=1s").status(504));
    stack.expect(Expect::get("/backend-timeout?delay=1s").status(504));
    stack.expect(to("/disabled?delay=1s", "infra-backend-v1"));
}

/// Upstream `HTTPRouteRequestMirror`: the backend answers, the mirror receives a copy.
#[test]
fn request_mirror() {
    let stack = Stack::start(
        "routing-mirror",
        &["metadata: {name: mirror, namespace: $NS}\nspec:\n  parentRefs: [{name: same-namespace}]\n  rules:\n  - matches: [{path: {value: /mirror}}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: infra-backend-v2, port: 8080}}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n"],
    );
    stack.expect(to("/mirror?id=first", "infra-backend-v1"));
    wait_until("the mirror sees the request", Duration::from_secs(10), || {
        stack.backends[1].requests().into_iter().find(|r| r.path == "/mirror?id=first")
    });
    assert!(
        stack.backends[0].requests().iter().any(|r| r.path == "/mirror?id=first"),
        "the backend answered it"
    );
}
