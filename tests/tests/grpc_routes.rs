//! GRPCRoute end to end: the Gateway API conformance test BackendTLSPolicyGRPCRoute (main branch,
//! #4882) adapted to file mode, a fail-closed case for an invalid policy on a gRPC backend,
//! GRPCRoute matching (service/method, headers) and its status reasons, and appProtocol
//! `kubernetes.io/h2c` (GEP-1911) on an HTTPRoute backend.
//!
//! Requests are real gRPC calls (tonic, h2c to the Gateway's HTTP listener). The gRPC echo behind
//! a policy serves TLS like the upstream grpc-go echo: ALPN `h2` only, refusing handshakes without
//! it, and reports the SNI, ALPN and method it saw.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backendtls_e2e::conformance::{send, status, Gateway, Request, StatusDocument, Want};
use backendtls_e2e::echo::{grpc, EchoServer, TlsOptions, HTTP_2};
use backendtls_e2e::policy_support::{
    btls_service_yaml, run_check, write_base, ConfigDir, Pki, Policy, Route, BTLS_PORT,
    BTLS_PORT_NAME, CONTROLLER_NAME, GATEWAY, MISMATCH_CA_CONFIG_MAP, NS, ROUTE_HOST,
};
use backendtls_e2e::{ads_bootstrap, free_port, Ads, Envoy, Loader};

/// The upstream gRPC echo's pod (its prefix is what upstream asserts).
const GRPC_POD: &str = "grpc-infra-backend-v1-6c8d7-k2p9";
/// Upstream harness timing: 3 answers in a row within 30 s; failures 5 in a row.
const MATCHING_IN_A_ROW: usize = 3;
const FAILURES_IN_A_ROW: usize = 5;
const CONVERGE: Duration = Duration::from_secs(30);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A GRPCRoute in [`NS`] attached to [`GATEWAY`]; `rules` is the YAML list under `rules:`.
fn grpc_route_yaml(name: &str, hostname: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: {name}\n  \
         namespace: {NS}\nspec:\n  parentRefs: [{{name: {GATEWAY}}}]\n  hostnames: [{hostname}]\n  \
         rules:\n{rules}"
    )
}

/// One rule matching `method` of the echo service, to Service `service` port [`BTLS_PORT`].
fn method_rule(method: &str, service: &str) -> String {
    format!(
        "  - matches: [{{method: {{service: {}, method: {method}}}}}]\n    backendRefs: [{{name: {service}, port: {BTLS_PORT}}}]\n",
        grpc::SERVICE
    )
}

/// Calls until `check` accepts [`MATCHING_IN_A_ROW`] answers in a row (upstream's rule), within
/// [`CONVERGE`]; panics with the last answer otherwise.
fn grpc_eventually(
    gateway: u16,
    authority: &str,
    method: &'static str,
    metadata: &[(&str, &str)],
    check: impl Fn(&Result<grpc::EchoResponse, tonic::Status>) -> Result<(), String>,
) -> grpc::EchoResponse {
    let deadline = Instant::now() + CONVERGE;
    let mut in_a_row = 0;
    loop {
        let answer = grpc::call(local(gateway), authority, method, metadata);
        match check(&answer) {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row == MATCHING_IN_A_ROW {
                    return answer.expect("checked");
                }
                continue;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("{method} at {authority}: no {MATCHING_IN_A_ROW} matching answers in a row within {CONVERGE:?}; last: {e}")
            }
            Err(_) => in_a_row = 0,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A successful call answered by the echo with `method` and the given pod.
fn answered_by(
    method: &'static str,
    pod_prefix: &'static str,
) -> impl Fn(&Result<grpc::EchoResponse, tonic::Status>) -> Result<(), String> {
    move |answer| {
        let response = answer.as_ref().map_err(|s| format!("status {s:?}"))?;
        let assertions = response.assertions.as_ref().ok_or("no assertions")?;
        let context = assertions.context.as_ref().ok_or("no context")?;
        if assertions.fully_qualified_method != method {
            return Err(format!("method {}", assertions.fully_qualified_method));
        }
        if context.namespace != NS || !context.pod.starts_with(pod_prefix) {
            return Err(format!("answered by {}/{}", context.namespace, context.pod));
        }
        Ok(())
    }
}

/// [`FAILURES_IN_A_ROW`] non-OK answers in a row (within [`CONVERGE`]); an OK answer fails at
/// once, as upstream's "expect failure" does with a 200. Returns the last status.
fn grpc_failure(gateway: u16, authority: &str, method: &'static str) -> tonic::Status {
    let deadline = Instant::now() + CONVERGE;
    let mut failures = Vec::new();
    while failures.len() < FAILURES_IN_A_ROW {
        assert!(Instant::now() < deadline, "{method} at {authority}: {failures:?}");
        match grpc::call(local(gateway), authority, method, &[]) {
            Ok(response) => panic!("{method} at {authority} succeeded: {response:?}"),
            Err(status) => failures.push(status),
        }
    }
    failures.pop().expect("five failures")
}

/// BackendTLSPolicyGRPCRoute (upstream main): gRPC through the Gateway to a TLS gRPC backend
/// under a BackendTLSPolicy (SNI = the policy hostname, ALPN `h2`, the backend's certificate
/// verified); a policy hostname the certificate does not carry, and a CA that did not sign it,
/// fail every call. Beyond upstream: the backend saw the method path over HTTP/2 with ALPN `h2`
/// and SNI `abc.example.com`, the failing calls never reached it, nothing reached it in
/// plaintext, and an invalid policy (CA ConfigMap missing) fails closed with the spec's reasons.
#[test]
fn backendtlspolicy_grpcroute() {
    let pki = Pki::new();
    let echo = EchoServer::tls(NS, GRPC_POD, TlsOptions::new(&pki.backend_cert).grpc());
    let config = ConfigDir::new();
    let gateway_port = free_port();
    write_base(&config, &pki, gateway_port);
    let rules = [
        method_rule("Echo", "backendtlspolicy-grpc-test"),
        method_rule("EchoTwo", "backendtlspolicy-grpc-host-mismatch-test"),
    ]
    .concat();
    config.write("route.yaml", &grpc_route_yaml("backendtlspolicy-grpcroute", ROUTE_HOST, &rules));
    config.write(
        "route-cert-mismatch.yaml",
        &grpc_route_yaml(
            "backendtlspolicy-grpcroute-cert-mismatch",
            "cert-mismatch.example.com",
            &method_rule("Echo", "backendtlspolicy-grpc-cert-mismatch-test"),
        ),
    );
    config.write(
        "route-invalid.yaml",
        &grpc_route_yaml(
            "backendtlspolicy-grpcroute-invalid",
            "invalid.example.com",
            &method_rule("Echo", "backendtlspolicy-grpc-invalid-test"),
        ),
    );
    for service in
        ["grpc-test", "grpc-host-mismatch-test", "grpc-cert-mismatch-test", "grpc-invalid-test"]
    {
        let name = format!("backendtlspolicy-{service}");
        config.write(&format!("{name}.yaml"), &btls_service_yaml(&name, echo.port()));
    }
    let policies = [
        Policy::new("grpc-normative-test", "backendtlspolicy-grpc-test"),
        Policy::new("grpc-host-mismatch", "backendtlspolicy-grpc-host-mismatch-test")
            .hostname("mismatch.example.com"),
        Policy::new("grpc-cert-mismatch", "backendtlspolicy-grpc-cert-mismatch-test")
            .ca_config_map(MISMATCH_CA_CONFIG_MAP),
        Policy::new("grpc-invalid-ca", "backendtlspolicy-grpc-invalid-test")
            .ca_config_map("nonexistent-ca-certificate"),
    ];
    for policy in policies {
        let policy = policy.section(BTLS_PORT_NAME);
        config.write(&format!("policy-{}.yaml", policy.name()), &policy.yaml());
    }
    let loader = Loader::start(config.path());
    let envoy_admin = free_port();
    let envoy = Envoy::start(
        &ads_bootstrap(loader.xds_port(), envoy_admin, "grpc-policy", Ads::Delta),
        envoy_admin,
    );

    status::wait_for(&loader, "the Gateway and the GRPCRoutes accepted", |doc| {
        doc.gateway(NS, GATEWAY)?.listeners_ready()?;
        for route in [
            "backendtlspolicy-grpcroute",
            "backendtlspolicy-grpcroute-cert-mismatch",
            "backendtlspolicy-grpcroute-invalid",
        ] {
            let route = doc.route("GRPCRoute", NS, route)?;
            route.accepted_by(NS, GATEWAY, CONTROLLER_NAME)?;
            route.condition(NS, GATEWAY, &Want::true_("ResolvedRefs"))?;
        }
        for policy in ["grpc-normative-test", "grpc-host-mismatch", "grpc-cert-mismatch"] {
            let policy = doc.policy(NS, policy)?;
            policy.condition(NS, GATEWAY, Some(1), &Want::true_("Accepted"))?;
            policy.condition(NS, GATEWAY, Some(1), &Want::true_("ResolvedRefs"))?;
        }
        let invalid = doc.policy(NS, "grpc-invalid-ca")?;
        invalid.condition(
            NS,
            GATEWAY,
            Some(1),
            &Want::false_("Accepted", "NoValidCACertificate"),
        )?;
        invalid.condition(
            NS,
            GATEWAY,
            Some(1),
            &Want::false_("ResolvedRefs", "InvalidCACertificateRef"),
        )
    });

    let answer = grpc_eventually(
        gateway_port,
        ROUTE_HOST,
        grpc::ECHO,
        &[],
        answered_by(grpc::ECHO, "grpc-infra-backend-v1"),
    );
    let tls = answer.assertions.unwrap().tls_assertions.expect("the backend connection is TLS");
    assert_eq!(tls.server_name, ROUTE_HOST, "SNI is the policy hostname");
    assert_eq!(tls.negotiated_protocol, "h2");
    let seen = echo.requests();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|r| r.path == grpc::ECHO && r.proto == HTTP_2), "{seen:?}");
    assert!(seen.iter().all(|r| r.tls.as_ref().is_some_and(|t| t.server_name == ROUTE_HOST
        && t.negotiated_protocol == "h2"
        && t.alpn_offered == ["h2"])));

    // The policy's hostname is not in the backend's certificate: Envoy refuses it.
    grpc_failure(gateway_port, ROUTE_HOST, grpc::ECHO_TWO);
    // A CA that did not sign the backend's certificate.
    grpc_failure(gateway_port, "cert-mismatch.example.com", grpc::ECHO);
    // An invalid policy fails its backend closed: a local 5xx from Envoy (gRPC UNAVAILABLE or
    // INTERNAL), never a connection to the backend.
    let closed = grpc_failure(gateway_port, "invalid.example.com", grpc::ECHO);
    assert!(
        matches!(
            closed.code(),
            tonic::Code::Unavailable | tonic::Code::Internal | tonic::Code::Unknown
        ),
        "{closed:?}"
    );
    let invalid_cluster =
        "cluster.kube_gateway-conformance-infra_backendtlspolicy-grpc-invalid-test_443";
    assert_eq!(envoy.stat(&format!("{invalid_cluster}.upstream_cx_total")), 0);

    let failures = echo.handshake_failures();
    assert!(
        failures.iter().any(|f| f.sni.as_deref() == Some("mismatch.example.com")),
        "the host-mismatch policy's SNI reached the backend's handshake: {failures:?}"
    );
    let seen = echo.requests();
    assert!(
        seen.iter()
            .all(|r| r.path == grpc::ECHO
                && r.tls.as_ref().is_some_and(|t| t.server_name == ROUTE_HOST)),
        "only verified calls reached the backend: {seen:?}"
    );
    assert!(echo.plaintext_on_tls().is_empty(), "{:?}", echo.plaintext_on_tls());
}

/// GRPCRoute matching and status: an Exact service/method match with a RequestHeaderModifier, a
/// method match ANDed with a header match, non-gRPC requests not taken by a GRPCRoute, the
/// spec's reasons for an unsupported filter and a missing backend (in `/status` and in
/// `check -o json`), and a Service port with appProtocol `kubernetes.io/h2c` reached over HTTP/2
/// with prior knowledge from an HTTP/1.1 client.
#[test]
fn grpcroute_matching_status_and_h2c() {
    let v1 = EchoServer::plain(NS, "grpc-infra-backend-v1-6c8d7-k2p9");
    let v2 = EchoServer::plain(NS, "grpc-infra-backend-v2-5b7f9-m3q1");
    let web = EchoServer::plain(NS, "infra-backend-v3-7d9f-x2");
    let config = ConfigDir::new();
    let gateway_port = free_port();
    write_base(&config, &Pki::new(), gateway_port);
    let service = grpc::SERVICE;
    let rules = format!(
        "  - matches: [{{method: {{service: {service}, method: Echo}}}}]\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {{set: [{{name: X-Via, value: gateway}}]}}\n    backendRefs: [{{name: grpc-v1, port: {BTLS_PORT}}}]\n  - matches: [{{method: {{method: EchoTwo}}, headers: [{{name: X-Tenant, value: blue}}]}}]\n    backendRefs: [{{name: grpc-v2, port: {BTLS_PORT}}}]\n"
    );
    config.write("route.yaml", &grpc_route_yaml("matching", "grpc.example.com", &rules));
    config.write(
        "route-mirror.yaml",
        &grpc_route_yaml(
            "unsupported-filter",
            "mirror.example.com",
            &format!("  - filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: grpc-v1, port: {BTLS_PORT}}}}}}}]\n    backendRefs: [{{name: grpc-v1, port: {BTLS_PORT}}}]\n"),
        ),
    );
    config.write(
        "route-missing.yaml",
        &grpc_route_yaml("missing-backend", "missing.example.com", &method_rule("Echo", "nowhere")),
    );
    config.write("grpc-v1.yaml", &btls_service_yaml("grpc-v1", v1.port()));
    config.write("grpc-v2.yaml", &btls_service_yaml("grpc-v2", v2.port()));
    config.write("web-route.yaml", &Route::new("h2c-web").rule("/", "h2c-web", 8080).yaml());
    config.write(
        "web-service.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: h2c-web, namespace: {NS}}}\nspec:\n  ports: [{{name: web, port: 8080, appProtocol: kubernetes.io/h2c}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: h2c-web-local\n  namespace: {NS}\n  labels: {{kubernetes.io/service-name: h2c-web}}\naddressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\nports: [{{name: web, port: {}}}]\n",
            web.port()
        ),
    );
    let loader = Loader::start(config.path());
    let envoy_admin = free_port();
    let _envoy = Envoy::start(
        &ads_bootstrap(loader.xds_port(), envoy_admin, "grpc-matching", Ads::Delta),
        envoy_admin,
    );

    let check_status = |doc: &StatusDocument| -> Result<(), String> {
        let matching = doc.route("GRPCRoute", NS, "matching")?;
        matching.accepted_by(NS, GATEWAY, CONTROLLER_NAME)?;
        matching.at_latest_generation()?;
        let mirror = doc.route("GRPCRoute", NS, "unsupported-filter")?;
        mirror.condition(NS, GATEWAY, &Want::false_("Accepted", "UnsupportedValue"))?;
        let missing = doc.route("GRPCRoute", NS, "missing-backend")?;
        missing.accepted_by(NS, GATEWAY, CONTROLLER_NAME)?;
        missing.condition(NS, GATEWAY, &Want::false_("ResolvedRefs", "BackendNotFound"))?;
        let listener = doc.gateway(NS, GATEWAY)?.listener("http")?;
        if !listener.supported_kinds.iter().any(|k| k.kind == "GRPCRoute") {
            return Err(format!("supportedKinds lack GRPCRoute: {:?}", listener.supported_kinds));
        }
        // matching, missing-backend and the HTTPRoute; the refused route is not counted.
        if listener.attached_routes != 3 {
            return Err(format!("attachedRoutes {}", listener.attached_routes));
        }
        Ok(())
    };
    status::wait_for(&loader, "GRPCRoute status with the spec's reasons", check_status);
    let checked = run_check(config.path(), "json");
    let doc = StatusDocument::parse(&checked.json()).expect("check -o json is status");
    check_status(&doc).expect("check -o json says the same");
    let message = &doc.route("GRPCRoute", NS, "unsupported-filter").unwrap().parents[0]
        .conditions
        .iter()
        .find(|c| c.kind == "Accepted")
        .unwrap()
        .message;
    assert!(message.contains("spec.rules[0].filters[0].type: RequestMirror"), "{message}");

    let answer = grpc_eventually(
        gateway_port,
        "grpc.example.com",
        grpc::ECHO,
        &[],
        answered_by(grpc::ECHO, "grpc-infra-backend-v1"),
    );
    let assertions = answer.assertions.unwrap();
    assert_eq!(assertions.header("x-via").as_deref(), Some("gateway"));
    assert_eq!(assertions.authority, "grpc.example.com");
    assert!(v1.requests().iter().all(|r| r.proto == HTTP_2 && r.path == grpc::ECHO));

    grpc_eventually(
        gateway_port,
        "grpc.example.com",
        grpc::ECHO_TWO,
        &[("x-tenant", "blue")],
        answered_by(grpc::ECHO_TWO, "grpc-infra-backend-v2"),
    );
    // Without the header no rule matches: Envoy's 404, which gRPC clients see as UNIMPLEMENTED.
    let unmatched = grpc_failure(gateway_port, "grpc.example.com", grpc::ECHO_TWO);
    assert_eq!(unmatched.code(), tonic::Code::Unimplemented, "{unmatched:?}");
    assert!(v2.requests().iter().all(|r| r.headers.contains_key("x-tenant")));
    // A plain HTTP request on the gRPC path is not a gRPC request.
    let plain = send(
        &Gateway::http(local(gateway_port)),
        &Request::get(grpc::ECHO).host("grpc.example.com"),
    )
    .expect("an answer");
    assert_eq!(plain.status, 404);
    // Routes of the refused GRPCRoute are not programmed.
    let refused = grpc_failure(gateway_port, "mirror.example.com", grpc::ECHO);
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

    // appProtocol kubernetes.io/h2c: HTTP/1.1 in, HTTP/2 with prior knowledge to the backend.
    let deadline = Instant::now() + CONVERGE;
    let report = loop {
        let response =
            send(&Gateway::http(local(gateway_port)), &Request::get("/h2c").host(ROUTE_HOST));
        if let Ok(report) = response.as_ref().map_err(|e| e.to_string()).and_then(|r| r.echo()) {
            break report;
        }
        assert!(Instant::now() < deadline, "no answer from the h2c backend: {response:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((report.path.as_str(), report.proto.as_str()), ("/h2c", HTTP_2));
}
