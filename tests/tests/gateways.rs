//! Gateways against a real Envoy with the echo backend: our own versions of the upstream
//! conformance tests about listeners and the routes that attach to them (http-core.md §4.9,
//! §4.10, §4.20, §4.21, §4.28), in file mode, plus several Gateways sharing one port.

use backendtls_e2e::conformance::status::wait_for;
use backendtls_e2e::conformance::Stack;
use backendtls_e2e::conformance::{
    expect_eventually, expect_failure, BackendRequest, Expect, ExpectedListener, Request, Want,
    INFRA_NS,
};
use backendtls_e2e::echo::EchoServer;
use backendtls_e2e::free_port;
use backendtls_e2e::policy_support::documents;

const CONTROLLER: &str = "backendtls.dev/loader";
const PODS: [&str; 3] = [
    "infra-backend-v1-5d8f9c-x2k4",
    "infra-backend-v2-6b7d4f-p9q1",
    "infra-backend-v3-7c8e5a-m3n6",
];

/// The echo backends v1, v2, v3 and their Services (`infra-backend-vN`, port 8080).
struct Backends(Vec<EchoServer>);

impl Backends {
    fn start() -> Backends {
        Backends(PODS.iter().map(|pod| EchoServer::plain(INFRA_NS, pod)).collect())
    }

    fn yaml(&self) -> String {
        let services: Vec<String> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, echo)| {
                let name = format!("infra-backend-v{}", i + 1);
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {INFRA_NS}}}\n\
                     spec: {{ports: [{{name: http, port: 8080}}]}}\n---\n\
                     apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: {{name: {name}-1, namespace: {INFRA_NS}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                     addressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n\
                     ports: [{{name: http, port: {}}}]\n",
                    echo.port()
                )
            })
            .collect();
        documents(&services)
    }
}

fn gateway(name: &str, listeners: &[String]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: {INFRA_NS}}}\n\
         spec:\n  gatewayClassName: backendtls\n  listeners:\n{}",
        listeners.iter().map(|l| format!("  - {l}\n")).collect::<String>()
    )
}

fn listener(name: &str, port: u16, hostname: Option<&str>) -> String {
    let hostname = hostname.map(|h| format!(", hostname: \"{h}\"")).unwrap_or_default();
    format!("{{name: {name}, protocol: HTTP, port: {port}{hostname}}}")
}

/// An HTTPRoute in `namespace` with `parent_refs` (YAML flow list), `hostnames`, and one
/// `PathPrefix path` rule to `backend` (`infra-backend-vN` in the infra namespace).
fn route(
    namespace: &str,
    name: &str,
    parent_refs: &str,
    hostnames: &[&str],
    path: &str,
    backend: &str,
) -> String {
    let hostnames: Vec<String> = hostnames.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  parentRefs: {parent_refs}\n  hostnames: [{}]\n  rules:\n  \
         - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    \
         backendRefs: [{{name: {backend}, namespace: {INFRA_NS}, port: 8080}}]\n",
        hostnames.join(", ")
    )
}

fn get(host: &str, path: &str, backend: &str) -> Expect {
    Expect::request(Request::get(path).host(host)).backend(backend)
}

/// HTTPRouteHostnameIntersection, HTTPRouteListenerHostnameMatching and the status half of
/// GatewayWithAttachedRoutes: only the intersection of listener and route hostnames is served,
/// a hostname goes to its most specific listener, a route without a common hostname is
/// `NoMatchingListenerHostname` and not counted in `attachedRoutes`.
#[test]
fn listener_and_route_hostnames_intersect() {
    let backends = Backends::start();
    let port = free_port();
    let gw = "[{name: gw}]";
    let manifests = documents(&[
        backends.yaml(),
        gateway(
            "gw",
            &[
                listener("listener-1", port, Some("very.specific.com")),
                listener("listener-2", port, Some("*.wildcard.io")),
                listener("listener-3", port, Some("bar.com")),
                listener("listener-4", port, Some("foo.bar.com")),
                listener("listener-5", port, Some("*.bar.com")),
            ],
        ),
        route(
            INFRA_NS,
            "specific-host",
            gw,
            &["non.matching.com", "*.nonmatchingwildcard.io", "very.specific.com"],
            "/s1",
            "infra-backend-v1",
        ),
        route(
            INFRA_NS,
            "wildcard-listener",
            gw,
            &["non.matching.com", "wildcard.io", "foo.wildcard.io", "foo.bar.wildcard.io"],
            "/s2",
            "infra-backend-v2",
        ),
        route(
            INFRA_NS,
            "narrowed",
            gw,
            &["non.matching.com", "*.specific.com"],
            "/s3",
            "infra-backend-v3",
        ),
        route(
            INFRA_NS,
            "no-intersecting-hosts",
            gw,
            &["specific.but.wrong.com", "wildcard.io"],
            "/s5",
            "infra-backend-v2",
        ),
        route(
            INFRA_NS,
            "backend-v1",
            "[{name: gw, sectionName: listener-3}]",
            &[],
            "/",
            "infra-backend-v1",
        ),
        route(
            INFRA_NS,
            "backend-v2",
            "[{name: gw, sectionName: listener-4}]",
            &[],
            "/",
            "infra-backend-v2",
        ),
        route(
            INFRA_NS,
            "backend-v3",
            "[{name: gw, sectionName: listener-5}]",
            &[],
            "/",
            "infra-backend-v3",
        ),
    ]);
    let stack = Stack::start("e2e-gateways-hostnames", &[("manifests.yaml", manifests)]);
    wait_for(&stack.loader, "listener status", |doc| {
        let routes =
            [(INFRA_NS, "specific-host"), (INFRA_NS, "wildcard-listener"), (INFRA_NS, "narrowed")];
        doc.gateway_and_routes_accepted((INFRA_NS, "gw"), &routes, CONTROLLER)?;
        doc.http_route(INFRA_NS, "no-intersecting-hosts")?.condition(
            INFRA_NS,
            "gw",
            &Want::false_("Accepted", "NoMatchingListenerHostname"),
        )?;
        doc.gateway(INFRA_NS, "gw")?.has_listeners(&[
            ExpectedListener::healthy_http("listener-1", 2),
            ExpectedListener::healthy_http("listener-2", 1),
            ExpectedListener::healthy_http("listener-3", 1),
            ExpectedListener::healthy_http("listener-4", 1),
            ExpectedListener::healthy_http("listener-5", 1),
        ])
    });
    for (host, path, backend) in [
        ("very.specific.com", "/s1", "infra-backend-v1"),
        ("foo.wildcard.io", "/s2", "infra-backend-v2"),
        ("foo.bar.wildcard.io", "/s2", "infra-backend-v2"),
        ("very.specific.com", "/s3", "infra-backend-v3"),
        ("bar.com", "/", "infra-backend-v1"),
        ("foo.bar.com", "/", "infra-backend-v2"),
        ("baz.bar.com", "/", "infra-backend-v3"),
        ("multiple.prefixes.bar.com", "/", "infra-backend-v3"),
    ] {
        expect_eventually(port, &get(host, path, backend));
    }
    // The port in Host is ignored for matching, and the backend sees Host as the client sent it.
    expect_eventually(
        port,
        &Expect::request(Request::get("/s1").host("very.specific.com:1234"))
            .backend("infra-backend-v1")
            .backend_request(BackendRequest::path("/s1").host("very.specific.com:1234")),
    );
    for (host, path) in [
        ("non.matching.com", "/s1"),
        ("foo.nonmatchingwildcard.io", "/s1"),
        ("wildcard.io", "/s2"),
        ("foo.specific.com", "/s3"),
        ("specific.but.wrong.com", "/s5"),
        ("wildcard.io", "/s5"),
        ("no.matching.host", "/"),
    ] {
        expect_failure(port, &Request::get(path).host(host));
    }
}

/// HTTPRouteInvalidCrossNamespaceParentRef and HTTPRouteInvalidParentRefNotMatchingSectionName:
/// one parent entry, `Accepted=False` with the reason, and no attached route; and two Gateways
/// on one port share it by hostname, a repeated hostname being `Conflicted` on the later one.
#[test]
fn parents_that_reach_no_listener_and_gateways_that_share_a_port() {
    let backends = Backends::start();
    let port = free_port();
    let manifests = documents(&[
        backends.yaml(),
        gateway("same-namespace", &[listener("http", port, Some("same.example.com"))]),
        gateway(
            "second",
            &[
                listener("other", port, Some("other.example.com")),
                listener("dup", port, Some("same.example.com")),
            ],
        ),
        route(
            "web",
            "invalid-cross-namespace-parent-ref",
            &format!("[{{name: same-namespace, namespace: {INFRA_NS}}}]"),
            &[],
            "/",
            "infra-backend-v1",
        ),
        route(
            INFRA_NS,
            "not-matching-section-name",
            &format!("[{{name: same-namespace, port: {port}, sectionName: http1}}]"),
            &[],
            "/",
            "infra-backend-v1",
        ),
        route(INFRA_NS, "first-route", "[{name: same-namespace}]", &[], "/", "infra-backend-v1"),
        route(INFRA_NS, "second-route", "[{name: second}]", &[], "/", "infra-backend-v2"),
    ]);
    let stack = Stack::start("e2e-gateways-parents", &[("manifests.yaml", manifests)]);
    wait_for(&stack.loader, "route parents and listeners", |doc| {
        let cross = doc.http_route("web", "invalid-cross-namespace-parent-ref")?;
        cross.condition(
            INFRA_NS,
            "same-namespace",
            &Want::false_("Accepted", "NotAllowedByListeners"),
        )?;
        // Its backendRef is in another namespace with no ReferenceGrant: the refs are evaluated
        // even though no listener accepts the route.
        cross.condition(
            INFRA_NS,
            "same-namespace",
            &Want::false_("ResolvedRefs", "RefNotPermitted"),
        )?;
        cross.has_no_accepted_parents()?;
        let section = doc.http_route(INFRA_NS, "not-matching-section-name")?;
        section.condition(
            INFRA_NS,
            "same-namespace",
            &Want::false_("Accepted", "NoMatchingParent"),
        )?;
        section.has_no_accepted_parents()?;
        doc.gateway(INFRA_NS, "same-namespace")?
            .has_listeners(&[ExpectedListener::healthy_http("http", 1)])?;
        let second = doc.gateway(INFRA_NS, "second")?;
        second.condition(&Want::new("Accepted", true, Some("ListenersNotValid")))?;
        second.has_listeners(&[
            ExpectedListener::healthy_http("other", 1),
            ExpectedListener {
                name: "dup".into(),
                supported_kinds: vec!["HTTPRoute".into()],
                attached_routes: 0,
                conditions: vec![
                    Want::new("Conflicted", true, Some("HostnameConflict")),
                    Want::false_any("Programmed"),
                ],
            },
        ])
    });
    expect_eventually(port, &get("same.example.com", "/", "infra-backend-v1"));
    expect_eventually(port, &get("other.example.com", "/", "infra-backend-v2"));
    expect_failure(port, &Request::get("/").host("unknown.example.com"));
}
