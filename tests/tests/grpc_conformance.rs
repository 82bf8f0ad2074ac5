//! The Gateway API conformance suite's GRPCRoute core tests (profile GATEWAY-GRPC, v1.6.1 and
//! main): GRPCExactMethodMatching, GRPCRouteHeaderMatching, GRPCRouteListenerHostnameMatching and
//! GRPCRouteWeight, adapted to file mode with every request and assertion.
//!
//! Each test runs the real loader on its own manifests and a real Envoy fed over delta ADS, with
//! the in-process echo (the upstream gRPC echo service) as `grpc-infra-backend-v1`, `-v2` and
//! `-v3`. Calls are real gRPC over h2c to the Gateway's HTTP listener. The upstream harness's rules
//! apply: an expectation passes after 3 matching answers in a row within 30 s (100 ms pause after
//! a miss, as on main); an OK answer must come from the fully qualified method that was called,
//! in namespace `gateway-conformance-infra`, from a pod whose name starts with the expected
//! backend; a non-OK expectation compares the status code only (Envoy's 404 for an unrouted call
//! is `UNIMPLEMENTED` to gRPC clients). Gateways get their own ports (file mode), so the
//! `:authority` a call without one sends is `127.0.0.1:<port>`, as grpc-go's default would be.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backendtls_e2e::conformance::status::wait_for;
use backendtls_e2e::conformance::Stack;
use backendtls_e2e::conformance::{StatusDocument, Want};
use backendtls_e2e::echo::{grpc, EchoServer};
use backendtls_e2e::free_port;
use backendtls_e2e::policy_support::{documents, gateway_yaml, CONTROLLER_NAME, GATEWAY, NS};

const MATCHING_IN_A_ROW: usize = 3;
const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);
const PAUSE_AFTER_A_MISS: Duration = Duration::from_millis(100);

/// The three gRPC echo backends, with pod names shaped like a Deployment's
/// (`<backend>-<replica set hash>-<pod hash>`, which the weight test strips).
struct Backends {
    v1: EchoServer,
    v2: EchoServer,
    v3: EchoServer,
}

impl Backends {
    fn start() -> Backends {
        Backends {
            v1: EchoServer::plain(NS, "grpc-infra-backend-v1-6c8d7b5f9-k2p9x"),
            v2: EchoServer::plain(NS, "grpc-infra-backend-v2-5b7f9c6d8-m3q1z"),
            v3: EchoServer::plain(NS, "grpc-infra-backend-v3-7d9f8b4c5-x2w7r"),
        }
    }

    /// Services `grpc-infra-backend-v1..3` as in the suite's base manifests (port 8080,
    /// appProtocol `kubernetes.io/h2c`), each with an EndpointSlice to its echo.
    fn yaml(&self) -> String {
        let service = |name: &str, echo: &EchoServer| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\n\
                 spec:\n  selector: {{app: {name}}}\n  ports:\n  - {{protocol: TCP, port: 8080, \
                 targetPort: 3000, appProtocol: kubernetes.io/h2c}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                 name: {name}-local\n  namespace: {NS}\n  \
                 labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n\
                 endpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n\
                 ports: [{{port: {}, protocol: TCP}}]\n",
                echo.port()
            )
        };
        documents(&[
            service("grpc-infra-backend-v1", &self.v1),
            service("grpc-infra-backend-v2", &self.v2),
            service("grpc-infra-backend-v3", &self.v3),
        ])
    }
}

/// What a call must get (upstream `grpc.ExpectedResponse`).
#[derive(Clone, Debug)]
struct Case {
    /// [`grpc::ECHO`], [`grpc::ECHO_TWO`] or [`grpc::ECHO_THREE`].
    method: &'static str,
    /// `:authority`; `None`: the Gateway's address.
    authority: Option<&'static str>,
    metadata: Vec<(&'static str, &'static str)>,
    /// `Ok(prefix)`: OK from a pod whose name starts with it ("" = any); `Err(code)`: that code.
    want: Result<&'static str, tonic::Code>,
}

impl Case {
    fn to(method: &'static str, backend: &'static str) -> Case {
        Case { method, authority: None, metadata: Vec::new(), want: Ok(backend) }
    }

    fn code(method: &'static str, code: tonic::Code) -> Case {
        Case { method, authority: None, metadata: Vec::new(), want: Err(code) }
    }

    fn authority(mut self, authority: &'static str) -> Case {
        self.authority = Some(authority);
        self
    }

    fn metadata(mut self, metadata: &[(&'static str, &'static str)]) -> Case {
        self.metadata = metadata.to_vec();
        self
    }

    /// Upstream `compareResponse`.
    fn compare(&self, answer: &Result<grpc::EchoResponse, tonic::Status>) -> Result<(), String> {
        let code = answer.as_ref().err().map_or(tonic::Code::Ok, |status| status.code());
        let wanted = self.want.err().unwrap_or(tonic::Code::Ok);
        if code != wanted {
            return Err(format!("status {code:?}, expected {wanted:?}: {answer:?}"));
        }
        let (Ok(response), Ok(backend)) = (answer, self.want) else { return Ok(()) };
        let assertions = response.assertions.clone().unwrap_or_default();
        if assertions.fully_qualified_method != self.method {
            return Err(format!("method {:?}", assertions.fully_qualified_method));
        }
        let context = assertions.context.unwrap_or_default();
        if context.namespace != NS {
            return Err(format!("namespace {:?}, expected {NS}", context.namespace));
        }
        if !context.pod.starts_with(backend) {
            return Err(format!("pod {:?}, expected {backend}*", context.pod));
        }
        Ok(())
    }
}

fn call(gateway: SocketAddr, case: &Case) -> Result<grpc::EchoResponse, tonic::Status> {
    let default_authority = gateway.to_string();
    let authority = case.authority.unwrap_or(&default_authority);
    grpc::call(gateway, authority, case.method, &case.metadata)
}

/// Upstream `MakeRequestAndExpectEventuallyConsistentResponse`.
fn expect_eventually(gateway: SocketAddr, case: &Case) -> grpc::EchoResponse {
    let deadline = Instant::now() + MAX_TIME_TO_CONSISTENCY;
    let mut in_a_row = 0;
    let mut last = String::new();
    while Instant::now() < deadline {
        let answer = call(gateway, case);
        match case.compare(&answer) {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row == MATCHING_IN_A_ROW {
                    return answer.unwrap_or_default();
                }
            }
            Err(e) => {
                in_a_row = 0;
                last = e;
                std::thread::sleep(PAUSE_AFTER_A_MISS);
            }
        }
    }
    panic!(
        "{case:?}: no {MATCHING_IN_A_ROW} matching answers in a row within \
         {MAX_TIME_TO_CONSISTENCY:?}; last: {last}"
    )
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A GRPCRoute in [`NS`]: `spec` is the YAML under `spec:` (indented two spaces).
fn grpc_route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {{name: {name}, namespace: {NS}}}\nspec:\n{spec}"
    )
}

/// `GatewayAndRoutesMustBeAccepted(gateway, GRPCRoute, routes)`: a typed address, every listener
/// ResolvedRefs, Accepted and Programmed, and each route Accepted by the Gateway (explicit group
/// and kind, our controller, conditions at the route's generation). Beyond upstream, which does
/// not compare sections: with `sections`, the route has exactly one parent entry per listener
/// name, each Accepted.
fn gateway_and_grpc_routes_accepted(
    doc: &StatusDocument,
    gateway: &str,
    routes: &[(&str, &[&str])],
) -> Result<(), String> {
    doc.gateway(NS, gateway)?.listeners_ready()?;
    for (name, sections) in routes {
        let route = doc.route("GRPCRoute", NS, name)?;
        route.accepted_by(NS, gateway, CONTROLLER_NAME)?;
        if sections.is_empty() {
            continue;
        }
        let mut seen: Vec<&str> =
            route.parents.iter().filter_map(|p| p.parent_ref.section_name.as_deref()).collect();
        seen.sort_unstable();
        let mut wanted = sections.to_vec();
        wanted.sort_unstable();
        if seen != wanted || route.parents.len() != sections.len() {
            return Err(format!(
                "GRPCRoute {name}: parents {:?}, expected {sections:?}",
                route.parents
            ));
        }
        for section in *sections {
            let parent = route
                .parents
                .iter()
                .find(|p| p.parent_ref.section_name.as_deref() == Some(section))
                .expect("checked above");
            backendtls_e2e::conformance::status::has_condition(
                &parent.conditions,
                &Want::true_("Accepted"),
            )
            .map_err(|e| format!("GRPCRoute {name} under {section}: {e}"))?;
        }
    }
    Ok(())
}

/// Upstream `GRPCExactMethodMatching`: `Echo` of the echo service goes to v1, `EchoTwo` to v2,
/// and `EchoThree`, which no rule matches, gets `UNIMPLEMENTED`.
#[test]
fn grpc_exact_method_matching() {
    let backends = Backends::start();
    let port = free_port();
    let service = grpc::SERVICE;
    let route = grpc_route(
        "exact-matching",
        &format!(
            "  parentRefs: [{{name: {GATEWAY}}}]\n  rules:\n  \
             - matches: [{{method: {{service: {service}, method: Echo}}}}]\n    \
             backendRefs: [{{name: grpc-infra-backend-v1, port: 8080}}]\n  \
             - matches: [{{method: {{service: {service}, method: EchoTwo}}}}]\n    \
             backendRefs: [{{name: grpc-infra-backend-v2, port: 8080}}]\n"
        ),
    );
    let stack = Stack::start(
        "grpc-exact-method-matching",
        &[
            ("gateway.yaml", gateway_yaml(GATEWAY, port)),
            ("backends.yaml", backends.yaml()),
            ("route.yaml", route),
        ],
    );
    wait_for(&stack.loader, "the Gateway and GRPCRoute exact-matching accepted", |doc| {
        gateway_and_grpc_routes_accepted(doc, GATEWAY, &[("exact-matching", &[])])
    });
    for case in [
        Case::to(grpc::ECHO, "grpc-infra-backend-v1"),
        Case::to(grpc::ECHO_TWO, "grpc-infra-backend-v2"),
        Case::code(grpc::ECHO_THREE, tonic::Code::Unimplemented),
    ] {
        expect_eventually(local(port), &case);
    }
    // Beyond upstream: the unmatched method never reached a backend.
    for echo in [&backends.v1, &backends.v2, &backends.v3] {
        assert!(echo.requests().iter().all(|r| r.path != grpc::ECHO_THREE), "EchoThree was routed");
    }
    assert!(backends.v3.requests().is_empty(), "nothing routes to v3");
}

/// Upstream `GRPCRouteHeaderMatching`: header names match in any case and values exactly;
/// headers within a match are ANDed, matches within a rule ORed; of two rules that both match,
/// the one with more header matches wins (`Version: two` with `Color: orange` goes to v1);
/// metadata no rule takes gets `UNIMPLEMENTED`.
#[test]
fn grpcroute_header_matching() {
    let backends = Backends::start();
    let port = free_port();
    let to = |backend: &str| format!("    backendRefs: [{{name: {backend}, port: 8080}}]\n");
    let route = grpc_route(
        "grpc-header-matching",
        &format!(
            "  parentRefs: [{{name: {GATEWAY}}}]\n  rules:\n  \
             - matches: [{{headers: [{{name: version, value: one}}]}}]\n{}  \
             - matches: [{{headers: [{{name: version, value: two}}]}}]\n{}  \
             - matches: [{{headers: [{{name: version, value: two}}, {{name: color, value: orange}}]}}]\n{}  \
             - matches: [{{headers: [{{name: color, value: blue}}]}}, {{headers: [{{name: color, value: green}}]}}]\n{}  \
             - matches: [{{headers: [{{name: color, value: red}}]}}, {{headers: [{{name: color, value: yellow}}]}}]\n{}",
            to("grpc-infra-backend-v1"),
            to("grpc-infra-backend-v2"),
            to("grpc-infra-backend-v1"),
            to("grpc-infra-backend-v1"),
            to("grpc-infra-backend-v2"),
        ),
    );
    let stack = Stack::start(
        "grpc-header-matching",
        &[
            ("gateway.yaml", gateway_yaml(GATEWAY, port)),
            ("backends.yaml", backends.yaml()),
            ("route.yaml", route),
        ],
    );
    wait_for(&stack.loader, "the Gateway and GRPCRoute grpc-header-matching accepted", |doc| {
        gateway_and_grpc_routes_accepted(doc, GATEWAY, &[("grpc-header-matching", &[])])
    });
    let (v1, v2) = ("grpc-infra-backend-v1", "grpc-infra-backend-v2");
    let unimplemented = |metadata: &[(&'static str, &'static str)]| {
        Case::code(grpc::ECHO, tonic::Code::Unimplemented).metadata(metadata)
    };
    for case in [
        Case::to(grpc::ECHO, v1).metadata(&[("Version", "one")]),
        Case::to(grpc::ECHO, v2).metadata(&[("Version", "two")]),
        Case::to(grpc::ECHO, v1).metadata(&[("Version", "two"), ("Color", "orange")]),
        Case::to(grpc::ECHO, v2).metadata(&[("Version", "two"), ("Color", "blue")]),
        unimplemented(&[("Color", "orange")]),
        unimplemented(&[("Some-Other-Header", "one")]),
        Case::to(grpc::ECHO, v1).metadata(&[("Color", "blue")]),
        Case::to(grpc::ECHO, v1).metadata(&[("Color", "green")]),
        Case::to(grpc::ECHO, v2).metadata(&[("Color", "red")]),
        Case::to(grpc::ECHO, v2).metadata(&[("Color", "yellow")]),
        unimplemented(&[("Color", "purple")]),
    ] {
        expect_eventually(local(port), &case);
    }
    // Beyond upstream: values are exact (case-sensitive), and a call without metadata matches
    // nothing (every rule has a header match).
    expect_eventually(local(port), &unimplemented(&[("Version", "ONE")]));
    expect_eventually(local(port), &unimplemented(&[]));
}

/// Upstream `GRPCRouteListenerHostnameMatching`: four listeners on one port with hostnames
/// `bar.com`, `foo.bar.com`, `*.bar.com` and `*.foo.com`, a route per listener set; the most
/// specific listener hostname takes the call (`foo.bar.com` goes to listener-2, not `*.bar.com`),
/// a wildcard takes one or more labels but not the bare domain (`foo.com` and an unrelated host
/// get `UNIMPLEMENTED`).
#[test]
fn grpcroute_listener_hostname_matching() {
    const GW: &str = "grpcroute-listener-hostname-matching";
    let backends = Backends::start();
    let port = free_port();
    let listener = |name: &str, hostname: &str| {
        format!(
            "  - {{name: {name}, port: {port}, protocol: HTTP, hostname: \"{hostname}\", \
             allowedRoutes: {{namespaces: {{from: Same}}}}}}\n"
        )
    };
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {GW}, namespace: {NS}}}\n\
         spec:\n  gatewayClassName: backendtls\n  listeners:\n{}{}{}{}",
        listener("listener-1", "bar.com"),
        listener("listener-2", "foo.bar.com"),
        listener("listener-3", "*.bar.com"),
        listener("listener-4", "*.foo.com"),
    );
    let parent =
        |section: &str| format!("  - {{name: {GW}, namespace: {NS}, sectionName: {section}}}\n");
    let route = |name: &str, sections: &[&str], backend: &str| {
        grpc_route(
            name,
            &format!(
                "  parentRefs:\n{}  rules:\n  - backendRefs: [{{name: {backend}, port: 8080}}]\n",
                sections.iter().map(|s| parent(s)).collect::<String>()
            ),
        )
    };
    let routes = documents(&[
        route("backend-v1", &["listener-1"], "grpc-infra-backend-v1"),
        route("backend-v2", &["listener-2"], "grpc-infra-backend-v2"),
        route("backend-v3", &["listener-3", "listener-4"], "grpc-infra-backend-v3"),
    ]);
    let stack = Stack::start(
        "grpc-listener-hostname-matching",
        &[("gateway.yaml", gateway), ("backends.yaml", backends.yaml()), ("routes.yaml", routes)],
    );
    wait_for(&stack.loader, "the Gateway (Programmed) and its three GRPCRoutes accepted", |doc| {
        doc.gateway(NS, GW)?.condition(&Want::true_any("Programmed"))?;
        gateway_and_grpc_routes_accepted(
            doc,
            GW,
            &[
                ("backend-v1", &["listener-1"]),
                ("backend-v2", &["listener-2"]),
                ("backend-v3", &["listener-3", "listener-4"]),
            ],
        )
    });
    let (v1, v2, v3) = ("grpc-infra-backend-v1", "grpc-infra-backend-v2", "grpc-infra-backend-v3");
    for case in [
        Case::to(grpc::ECHO, v1).authority("bar.com"),
        Case::to(grpc::ECHO, v2).authority("foo.bar.com"),
        Case::to(grpc::ECHO, v3).authority("baz.bar.com"),
        Case::to(grpc::ECHO, v3).authority("boo.bar.com"),
        Case::to(grpc::ECHO, v3).authority("multiple.prefixes.bar.com"),
        Case::to(grpc::ECHO, v3).authority("multiple.prefixes.foo.com"),
        Case::code(grpc::ECHO, tonic::Code::Unimplemented).authority("foo.com"),
        Case::code(grpc::ECHO, tonic::Code::Unimplemented).authority("no.matching.host"),
    ] {
        expect_eventually(local(port), &case);
    }
}

/// Upstream `GRPCRouteWeight`: one rule with v1 weight 70, v2 30, v3 0. After a first call
/// succeeds, 500 calls (10 at a time, about half with a random `x-jitter` metadata value) must
/// all be OK, reach exactly two backends, and split within 5 points of 70/30, v3 getting none;
/// up to 10 attempts, as upstream allows for statistical variance.
#[test]
fn grpcroute_weight() {
    const TOTAL: usize = 500;
    const CONCURRENT: usize = 10;
    const TOLERANCE: f64 = 0.05;
    const ATTEMPTS: usize = 10;
    let backends = Backends::start();
    let port = free_port();
    let route = grpc_route(
        "weighted-backends",
        &format!(
            "  parentRefs: [{{name: {GATEWAY}}}]\n  rules:\n  - backendRefs:\n    \
             - {{name: grpc-infra-backend-v1, port: 8080, weight: 70}}\n    \
             - {{name: grpc-infra-backend-v2, port: 8080, weight: 30}}\n    \
             - {{name: grpc-infra-backend-v3, port: 8080, weight: 0}}\n"
        ),
    );
    let stack = Stack::start(
        "grpc-weight",
        &[
            ("gateway.yaml", gateway_yaml(GATEWAY, port)),
            ("backends.yaml", backends.yaml()),
            ("route.yaml", route),
        ],
    );
    wait_for(&stack.loader, "the Gateway and GRPCRoute weighted-backends accepted", |doc| {
        gateway_and_grpc_routes_accepted(doc, GATEWAY, &[("weighted-backends", &[])])
    });
    expect_eventually(local(port), &Case::to(grpc::ECHO, ""));

    let expected = [
        ("grpc-infra-backend-v1", 0.7),
        ("grpc-infra-backend-v2", 0.3),
        ("grpc-infra-backend-v3", 0.0),
    ];
    let mut failures = Vec::new();
    for attempt in 1..=ATTEMPTS {
        match weighted_distribution(local(port), TOTAL, CONCURRENT, TOLERANCE, &expected) {
            Ok(()) => return,
            Err(e) => failures.push(format!("attempt {attempt}: {e}")),
        }
    }
    panic!("the weighted distribution failed {ATTEMPTS} times:\n{}", failures.join("\n"));
}

/// Upstream `weight.TestWeightedDistribution` with gRPC calls.
fn weighted_distribution(
    gateway: SocketAddr,
    total: usize,
    concurrent: usize,
    tolerance: f64,
    expected: &[(&str, f64)],
) -> Result<(), String> {
    let pods: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrent)
            .map(|worker| {
                scope.spawn(move || {
                    (worker..total)
                        .step_by(concurrent)
                        .map(|i| {
                            let jitter = jitter(i);
                            let metadata: Vec<(&str, &str)> = match &jitter {
                                Some(value) => vec![("x-jitter", value.as_str())],
                                None => Vec::new(),
                            };
                            let authority = gateway.to_string();
                            grpc::call(gateway, &authority, grpc::ECHO, &metadata)
                                .map_err(|status| format!("expected OK, got {status:?}"))
                                .map(|response| {
                                    response
                                        .assertions
                                        .unwrap_or_default()
                                        .context
                                        .unwrap_or_default()
                                        .pod
                                })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let mut seen = BTreeMap::<String, usize>::new();
    for pod in pods {
        let pod = pod?;
        let backend = backend_of(&pod);
        if !expected.iter().any(|(name, _)| *name == backend) {
            return Err(format!("answered by an unexpected pod {pod:?} ({backend:?})"));
        }
        *seen.entry(backend.to_string()).or_default() += 1;
    }
    let mut errors = Vec::new();
    let active = expected.iter().filter(|(_, weight)| *weight > 0.0).count();
    if seen.len() != active {
        errors
            .push(format!("{} backends received traffic, expected {active}: {seen:?}", seen.len()));
    }
    for (backend, weight) in expected {
        let got = seen.get(*backend).copied().unwrap_or(0) as f64 / total as f64;
        if (got - weight).abs() > tolerance {
            errors
                .push(format!("{backend}: {got:.3} of the calls, expected {weight} ± {tolerance}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Upstream `AddEntropy`: about half of the calls carry `x-jitter` with a random value below
/// 10,000 (a per-process hash of the index stands in for a CSPRNG).
fn jitter(index: usize) -> Option<String> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(index);
    let random = hasher.finish();
    (random % 2 == 1).then(|| ((random >> 1) % 10_000).to_string())
}

/// The backend of a Deployment's pod name: without its last two `-` parts (upstream
/// `extractBackendName`).
fn backend_of(pod: &str) -> &str {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() < 3 {
        return pod;
    }
    let cut: usize = parts[parts.len() - 2..].iter().map(|p| p.len() + 1).sum();
    &pod[..pod.len() - cut]
}

#[test]
fn backend_names_drop_the_replica_set_and_pod_hashes() {
    assert_eq!(backend_of("grpc-infra-backend-v1-6c8d7b5f9-k2p9x"), "grpc-infra-backend-v1");
    assert_eq!(backend_of("a-b"), "a-b");
}
