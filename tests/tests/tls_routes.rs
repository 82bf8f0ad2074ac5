//! TLSRoute end to end on a real Envoy and the real loader: the Gateway API conformance test
//! BackendTLSPolicyTLSRouteTerminate (main branch, #4875, provisional) adapted to file mode, and
//! stricter cases of our own: a policy whose CA did not sign the backend's certificate, a policy
//! that cannot be used (its CA ConfigMap is missing) and a missing backend all close the client's
//! connection with no echo data and no plaintext at the backend; a Passthrough listener is
//! refused with a condition naming `tls.mode`.
//!
//! The backend is the upstream TCP echo protocol (`echo::tcp`) on a TLS port on loopback; the
//! client is TLS 1.2 or later with SNI `tls.example.com`, trusting only the test CA, as upstream's.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use backendtls_e2e::conformance::status::wait_for;
use backendtls_e2e::conformance::Stack;
use backendtls_e2e::conformance::{ExpectedListener, Want};
use backendtls_e2e::echo::tcp::{self, TcpEchoServer, WELCOME_MESSAGE};
use backendtls_e2e::echo::TlsOptions;
use backendtls_e2e::free_port;
use backendtls_e2e::policy_support::{
    ca_config_map_yaml, cluster, documents, service_yaml, tls_secret_yaml, Pki, Policy,
    CA_CONFIG_MAP, CONTROLLER_NAME, MISMATCH_CA_CONFIG_MAP, NS,
};

const GATEWAY: &str = "gateway-btls-tlsroute-terminate";
const LISTENER: &str = "tls-terminate";
const ROUTE: &str = "backendtlspolicy-tlsroute-terminate";
const POLICY: &str = "btls-tlsroute-terminate-test";
const SERVICE: &str = "btls-terminate-tls-backend";
const SERVICE_PORT: u16 = 8443;
const SERVICE_PORT_NAME: &str = "btls";
const GATEWAY_CERTIFICATE: &str = "tls-terminate-checks-certificate";
/// The client's SNI: the route's (only) hostname.
const ROUTE_HOST: &str = "tls.example.com";
/// The policy's hostname: the SNI the backend must see.
const BACKEND_HOST: &str = "abc.example.com";
/// Upstream asserts the pod name's prefix `tcp-backend-`.
const POD: &str = "tcp-backend-7f6d9c-q2x8m";
const BACKEND: &str = "tcp-backend";
/// Upstream: retried every 100 ms for up to 30 s. We ask for 3 good conversations in a row.
const CONVERGE: Duration = Duration::from_secs(30);
const IN_A_ROW: usize = 3;
/// Failures must be consistent: 5 in a row, and one conversation that works fails the test.
const FAILURES_IN_A_ROW: usize = 5;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A Gateway in [`NS`] with `listeners` (YAML flow mappings).
fn gateway_yaml(name: &str, listeners: &[String]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  gatewayClassName: backendtls\n  listeners:\n{}",
        listeners.iter().map(|l| format!("  - {l}\n")).collect::<String>()
    )
}

/// A TLS listener in mode Terminate taking TLSRoutes from its namespace, with `certificate`.
fn terminate_listener(name: &str, port: u16, hostname: &str, certificate: &str) -> String {
    format!(
        "{{name: {name}, port: {port}, protocol: TLS, hostname: \"{hostname}\", \
         allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}, \
         tls: {{mode: Terminate, certificateRefs: [{{name: {certificate}}}]}}}}"
    )
}

/// A TLSRoute in [`NS`] for `hostname` to Service `service` port [`SERVICE_PORT`].
fn tls_route_yaml(name: &str, gateway: &str, hostname: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\n\
         metadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  parentRefs: [{{name: {gateway}, namespace: {NS}}}]\n  \
         hostnames: [{hostname}]\n  rules:\n  - backendRefs:\n    - name: {service}\n      \
         port: {SERVICE_PORT}\n"
    )
}

/// The test's Service: port `btls` 8443 (TCP), its endpoint the echo's port on loopback.
fn backend_service_yaml(name: &str, echo: &TcpEchoServer) -> String {
    service_yaml(name, &[(SERVICE_PORT_NAME, SERVICE_PORT)], Some(echo.port()))
}

/// Upstream's checks of one conversation: the welcome line, `PONG`, `IS_TLS` true (the backend
/// connection is TLS), and `TEST`'s namespace, pod prefix and the SNI the backend saw.
fn check(conversation: &tcp::Conversation) -> Result<(), String> {
    if conversation.welcome != WELCOME_MESSAGE {
        return Err(format!("welcome {:?}", conversation.welcome));
    }
    if conversation.ping != "PONG\n" {
        return Err(format!("PING answered {:?}", conversation.ping));
    }
    if conversation.is_tls != "true\n" {
        return Err(format!("IS_TLS answered {:?}", conversation.is_tls));
    }
    let test = &conversation.test;
    if test.namespace != NS || !test.pod.starts_with(&format!("{BACKEND}-")) {
        return Err(format!("answered by {}/{}", test.namespace, test.pod));
    }
    let server_name = test.tls.as_ref().map(|t| t.server_name.as_str());
    if server_name != Some(BACKEND_HOST) {
        return Err(format!("the backend saw SNI {server_name:?}, not {BACKEND_HOST}"));
    }
    Ok(())
}

/// Conversations through the Gateway until [`IN_A_ROW`] pass [`check`] in a row, within
/// [`CONVERGE`] (new connection each time); the last one.
fn converse_eventually(gateway: SocketAddr, pki: &Pki, sni: &str) -> tcp::Conversation {
    let client = tcp::tls_client(pki.ca.cert_pem());
    let deadline = Instant::now() + CONVERGE;
    let mut in_a_row = 0;
    loop {
        let outcome = tcp::converse_tls(gateway, client.clone(), sni, ATTEMPT_TIMEOUT)
            .and_then(|c| check(&c).map(|()| c));
        match outcome {
            Ok(conversation) => {
                in_a_row += 1;
                if in_a_row == IN_A_ROW {
                    return conversation;
                }
                continue;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("SNI {sni}: no {IN_A_ROW} good conversations in a row within {CONVERGE:?}; last: {e}")
            }
            Err(_) => in_a_row = 0,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`FAILURES_IN_A_ROW`] conversations in a row that get no echo data at all (the connection is
/// closed, or never completes its handshake); a welcome line fails the test at once. Returns the
/// failures.
fn closed_every_time(gateway: SocketAddr, pki: &Pki, sni: &str) -> Vec<String> {
    let client = tcp::tls_client(pki.ca.cert_pem());
    (0..FAILURES_IN_A_ROW)
        .map(|_| match tcp::converse_tls(gateway, client.clone(), sni, ATTEMPT_TIMEOUT) {
            Ok(conversation) => panic!("SNI {sni}: the backend answered: {conversation:?}"),
            Err(e) if e.starts_with("welcome:") || e.starts_with("TLS handshake:") => e,
            Err(e) => panic!("SNI {sni}: failed after echo data: {e}"),
        })
        .collect()
}

/// Like [`closed_every_time`] once the configuration has changed: conversations until
/// [`FAILURES_IN_A_ROW`] in a row get no echo data, within [`CONVERGE`].
fn closed_eventually(gateway: SocketAddr, pki: &Pki, sni: &str) {
    let client = tcp::tls_client(pki.ca.cert_pem());
    let deadline = Instant::now() + CONVERGE;
    let mut in_a_row = 0;
    while in_a_row < FAILURES_IN_A_ROW {
        assert!(
            Instant::now() < deadline,
            "SNI {sni}: not {FAILURES_IN_A_ROW} closed connections in a row within {CONVERGE:?}"
        );
        match tcp::converse_tls(gateway, client.clone(), sni, ATTEMPT_TIMEOUT) {
            Ok(_) => {
                in_a_row = 0;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) if e.starts_with("welcome:") || e.starts_with("TLS handshake:") => in_a_row += 1,
            Err(e) => panic!("SNI {sni}: failed after echo data: {e}"),
        }
    }
}

/// BackendTLSPolicyTLSRouteTerminate: the Gateway and the TLSRoute are accepted, the policy is
/// Accepted and ResolvedRefs with the Gateway as ancestor, and a TLS client (SNI
/// `tls.example.com`, trusting the test CA) reaches the TCP echo through the Gateway, which
/// re-encrypts: `IS_TLS` is true and the backend saw SNI `abc.example.com`. Beyond upstream: every
/// connection the backend got was TLS with that SNI (nothing in plaintext), the listener status
/// is exactly what TLSRouteListenerTerminateSupportedKinds expects (TLSRoute, one route), Envoy's
/// cluster counted the handshakes, and an SNI no route takes gets no connection at all.
#[test]
fn backendtlspolicy_tlsroute_terminate() {
    let pki = Pki::new();
    let echo = TcpEchoServer::tls(NS, POD, TlsOptions::new(&pki.backend_cert).alpn(&[]));
    let gateway_port = free_port();
    let gateway_cert = pki.ca.issue(&[ROUTE_HOST]);
    let stack = Stack::start(
        "tlsroute-terminate",
        &[
            (
                "gateway.yaml",
                gateway_yaml(
                    GATEWAY,
                    &[terminate_listener(LISTENER, gateway_port, ROUTE_HOST, GATEWAY_CERTIFICATE)],
                ),
            ),
            ("certificate.yaml", tls_secret_yaml(GATEWAY_CERTIFICATE, &gateway_cert)),
            ("route.yaml", tls_route_yaml(ROUTE, GATEWAY, ROUTE_HOST, SERVICE)),
            ("service.yaml", backend_service_yaml(SERVICE, &echo)),
            ("policy.yaml", Policy::new(POLICY, SERVICE).section(SERVICE_PORT_NAME).yaml()),
            ("ca.yaml", ca_config_map_yaml(CA_CONFIG_MAP, pki.ca.cert_pem())),
        ],
    );

    // GatewayAndTLSRoutesMustBeAccepted, then BackendTLSPolicyMustHaveCondition (A and R).
    wait_for(&stack.loader, "the Gateway, TLSRoute and policy accepted", |doc| {
        let gateway = doc.gateway(NS, GATEWAY)?;
        gateway.listeners_ready()?;
        gateway.has_listeners(&[ExpectedListener {
            name: LISTENER.into(),
            supported_kinds: vec!["TLSRoute".into()],
            attached_routes: 1,
            conditions: vec![
                Want::true_("Accepted"),
                Want::true_("Programmed"),
                Want::true_("ResolvedRefs"),
                Want::false_("Conflicted", "NoConflicts"),
            ],
        }])?;
        let route = doc.route("TLSRoute", NS, ROUTE)?;
        route.accepted_by(NS, GATEWAY, CONTROLLER_NAME)?;
        route.condition(NS, GATEWAY, &Want::true_("ResolvedRefs"))?;
        let policy = doc.policy(NS, POLICY)?;
        policy.condition(NS, GATEWAY, Some(1), &Want::true_("Accepted"))?;
        policy.condition(NS, GATEWAY, Some(1), &Want::true_("ResolvedRefs"))?;
        if policy.status.ancestors.len() != 1 {
            return Err(format!("ancestors {:?}", policy.status.ancestors));
        }
        Ok(())
    });
    // Upstream reads the route's hostnames and requires exactly one: ours is ROUTE_HOST.

    let gateway = local(gateway_port);
    let conversation = converse_eventually(gateway, &pki, ROUTE_HOST);
    let tls = conversation.test.tls.as_ref().expect("checked");
    assert_eq!(tls.server_name, BACKEND_HOST);
    assert!(conversation.test.is_tls);

    // Nothing reached the backend in plaintext; every session it had was TLS with the policy's
    // SNI, and no handshake failed.
    assert!(echo.plaintext_on_tls().is_empty(), "{:?}", echo.plaintext_on_tls());
    assert!(echo.handshake_failures().is_empty(), "{:?}", echo.handshake_failures());
    let sessions = echo.sessions();
    assert!(sessions.len() >= IN_A_ROW, "{sessions:?}");
    for (assertions, lines) in &sessions {
        let sni = assertions.tls.as_ref().map(|t| t.server_name.as_str());
        assert_eq!(sni, Some(BACKEND_HOST), "{assertions:?}");
        assert_eq!(lines, &["PING", "IS_TLS", "TEST"]);
    }
    let handshakes =
        stack.envoy.stat(&format!("cluster.{}.ssl.handshake", cluster(SERVICE, SERVICE_PORT)));
    assert!(handshakes >= IN_A_ROW as u64, "cluster ssl.handshake = {handshakes}");

    // An SNI no route takes: no filter chain, so no handshake and nothing at the backend.
    echo.clear();
    let failures = closed_every_time(gateway, &pki, "other.example.com");
    assert!(failures.iter().all(|e| e.starts_with("TLS handshake:")), "{failures:?}");
    assert!(echo.seen().is_empty(), "{:?}", echo.seen());
}

/// Fail closed, never plaintext: a policy whose CA did not sign the backend's certificate (the
/// handshake to the backend fails), a policy that cannot be used (CA ConfigMap missing:
/// `Accepted=False` `NoValidCACertificate`, the cluster has no hosts) and a backendRef to a
/// missing Service (`ResolvedRefs=False` `BackendNotFound`) each close the client's connection
/// with no echo data (after the Gateway's handshake for the CA mismatch; as it opens for the
/// two without a usable host). The backends saw no plaintext; only the CA
/// mismatch reached one, as a failed handshake. A route on the same listener to a good backend
/// works throughout (so the failures are not a missing listener). A Passthrough listener is
/// refused naming `tls.mode`, and a TLSRoute on it is not accepted.
#[test]
fn tlsroute_fails_closed_and_refuses_passthrough() {
    let pki = Pki::new();
    let options = || TlsOptions::new(&pki.backend_cert).alpn(&[]);
    let good = TcpEchoServer::tls(NS, POD, options());
    let mismatch = TcpEchoServer::tls(NS, "tcp-backend-mismatch-1", options());
    let invalid = TcpEchoServer::tls(NS, "tcp-backend-invalid-1", options());
    let (gateway_port, passthrough_port) = (free_port(), free_port());
    let gateway_cert = pki.ca.issue(&["*.example.com"]);
    let passthrough = format!(
        "{{name: tls-passthrough, port: {passthrough_port}, protocol: TLS, \
         allowedRoutes: {{kinds: [{{kind: TLSRoute}}]}}, tls: {{mode: Passthrough}}}}"
    );
    let routes = documents(&[
        tls_route_yaml("good", GATEWAY, "good.example.com", "good-backend"),
        tls_route_yaml("ca-mismatch", GATEWAY, "mismatch.example.com", "mismatch-backend"),
        tls_route_yaml("invalid-policy", GATEWAY, "invalid.example.com", "invalid-backend"),
        tls_route_yaml("missing-backend", GATEWAY, "missing.example.com", "no-such-service"),
        tls_route_yaml(
            "passthrough",
            "gateway-passthrough",
            "passthrough.example.com",
            "good-backend",
        ),
    ]);
    let policies = documents(&[
        Policy::new("good", "good-backend").section(SERVICE_PORT_NAME).yaml(),
        Policy::new("ca-mismatch", "mismatch-backend")
            .section(SERVICE_PORT_NAME)
            .ca_config_map(MISMATCH_CA_CONFIG_MAP)
            .yaml(),
        Policy::new("invalid-ca", "invalid-backend")
            .section(SERVICE_PORT_NAME)
            .ca_config_map("nonexistent-ca-certificate")
            .yaml(),
    ]);
    let stack = Stack::start(
        "tlsroute-fail-closed",
        &[
            (
                "gateway.yaml",
                gateway_yaml(
                    GATEWAY,
                    &[terminate_listener(
                        LISTENER,
                        gateway_port,
                        "*.example.com",
                        GATEWAY_CERTIFICATE,
                    )],
                ),
            ),
            ("passthrough.yaml", gateway_yaml("gateway-passthrough", &[passthrough])),
            ("certificate.yaml", tls_secret_yaml(GATEWAY_CERTIFICATE, &gateway_cert)),
            ("routes.yaml", routes),
            (
                "services.yaml",
                documents(&[
                    backend_service_yaml("good-backend", &good),
                    backend_service_yaml("mismatch-backend", &mismatch),
                    backend_service_yaml("invalid-backend", &invalid),
                ]),
            ),
            ("policies.yaml", policies),
            (
                "cas.yaml",
                documents(&[
                    ca_config_map_yaml(CA_CONFIG_MAP, pki.ca.cert_pem()),
                    ca_config_map_yaml(MISMATCH_CA_CONFIG_MAP, pki.mismatch_ca.cert_pem()),
                ]),
            ),
        ],
    );

    wait_for(&stack.loader, "routes, policies and the Passthrough listener reported", |doc| {
        doc.gateway(NS, GATEWAY)?.listeners_ready()?;
        for route in ["good", "ca-mismatch", "invalid-policy", "missing-backend"] {
            doc.route("TLSRoute", NS, route)?.accepted_by(NS, GATEWAY, CONTROLLER_NAME)?;
        }
        doc.route("TLSRoute", NS, "missing-backend")?.condition(
            NS,
            GATEWAY,
            &Want::false_("ResolvedRefs", "BackendNotFound"),
        )?;
        for policy in ["good", "ca-mismatch"] {
            let policy = doc.policy(NS, policy)?;
            policy.condition(NS, GATEWAY, Some(1), &Want::true_("Accepted"))?;
            policy.condition(NS, GATEWAY, Some(1), &Want::true_("ResolvedRefs"))?;
        }
        let invalid = doc.policy(NS, "invalid-ca")?;
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
        )?;
        // The Passthrough listener: refused naming the field; the route on it not accepted.
        let passthrough = doc.gateway(NS, "gateway-passthrough")?;
        let listener = passthrough.listener("tls-passthrough")?;
        let accepted = listener
            .conditions
            .iter()
            .find(|c| c.kind == "Accepted")
            .ok_or("no Accepted condition on the Passthrough listener")?;
        if accepted.status != "False"
            || accepted.reason != "UnsupportedValue"
            || !accepted.message.starts_with("tls.mode: Passthrough is not supported")
        {
            return Err(format!("Passthrough listener: {accepted:?}"));
        }
        passthrough.condition(&Want::false_("Programmed", "Invalid"))?;
        let route = doc.route("TLSRoute", NS, "passthrough")?;
        route.condition(
            NS,
            "gateway-passthrough",
            &Want::false_("Accepted", "NotAllowedByListeners"),
        )?;
        route.has_no_accepted_parents()
    });

    let gateway = local(gateway_port);
    converse_eventually(gateway, &pki, "good.example.com");
    // A CA mismatch: the Gateway's own handshake completes, Envoy then fails the one to the
    // backend and closes the connection before any echo data.
    let failures = closed_every_time(gateway, &pki, "mismatch.example.com");
    assert!(failures.iter().all(|e| e.starts_with("welcome:")), "{failures:?}");
    // No usable host (invalid policy, missing Service): Envoy's TCP proxy closes the connection
    // as it opens, during the Gateway's handshake or right after it.
    for sni in ["invalid.example.com", "missing.example.com"] {
        closed_every_time(gateway, &pki, sni);
    }
    // The good route still works after them.
    converse_eventually(gateway, &pki, "good.example.com");

    for echo in [&good, &mismatch, &invalid] {
        assert!(echo.plaintext_on_tls().is_empty(), "{:?}", echo.plaintext_on_tls());
    }
    assert!(mismatch.sessions().is_empty(), "{:?}", mismatch.sessions());
    let failed = mismatch.handshake_failures();
    assert!(failed.len() >= FAILURES_IN_A_ROW, "{failed:?}");
    assert!(failed.iter().all(|f| f.sni.as_deref() == Some(BACKEND_HOST)), "{failed:?}");
    assert!(
        invalid.seen().is_empty(),
        "an invalid policy's backend is never dialled: {:?}",
        invalid.seen()
    );
    let mismatch_failures = stack.envoy.stat(&format!(
        "cluster.{}.ssl.fail_verify_error",
        cluster("mismatch-backend", SERVICE_PORT)
    ));
    assert!(
        mismatch_failures >= FAILURES_IN_A_ROW as u64,
        "ssl.fail_verify_error = {mismatch_failures}"
    );
    // Nothing listens on the Passthrough listener's port.
    assert!(std::net::TcpStream::connect(local(passthrough_port)).is_err());
}

/// Live changes, no restart: the policy's CA switched to one that did not sign the backend's
/// certificate closes every new connection; switched back, they work again; the backend never
/// saw plaintext.
#[test]
fn tlsroute_follows_live_policy_changes() {
    let pki = Pki::new();
    let echo = TcpEchoServer::tls(NS, POD, TlsOptions::new(&pki.backend_cert).alpn(&[]));
    let gateway_port = free_port();
    let gateway_cert = pki.ca.issue(&[ROUTE_HOST]);
    let policy = Policy::new(POLICY, SERVICE).section(SERVICE_PORT_NAME);
    let stack = Stack::start(
        "tlsroute-live",
        &[
            (
                "gateway.yaml",
                gateway_yaml(
                    GATEWAY,
                    &[terminate_listener(LISTENER, gateway_port, ROUTE_HOST, GATEWAY_CERTIFICATE)],
                ),
            ),
            ("certificate.yaml", tls_secret_yaml(GATEWAY_CERTIFICATE, &gateway_cert)),
            ("route.yaml", tls_route_yaml(ROUTE, GATEWAY, ROUTE_HOST, SERVICE)),
            ("service.yaml", backend_service_yaml(SERVICE, &echo)),
            ("policy.yaml", policy.clone().yaml()),
            (
                "cas.yaml",
                documents(&[
                    ca_config_map_yaml(CA_CONFIG_MAP, pki.ca.cert_pem()),
                    ca_config_map_yaml(MISMATCH_CA_CONFIG_MAP, pki.mismatch_ca.cert_pem()),
                ]),
            ),
        ],
    );
    let gateway = local(gateway_port);
    converse_eventually(gateway, &pki, ROUTE_HOST);

    stack.config.write("policy.yaml", &policy.clone().ca_config_map(MISMATCH_CA_CONFIG_MAP).yaml());
    closed_eventually(gateway, &pki, ROUTE_HOST);
    stack.config.write("policy.yaml", &policy.yaml());
    converse_eventually(gateway, &pki, ROUTE_HOST);
    assert!(echo.plaintext_on_tls().is_empty(), "{:?}", echo.plaintext_on_tls());
}
