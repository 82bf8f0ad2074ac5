//! BackendTLSPolicy end to end: the Gateway API conformance tests for BackendTLSPolicy (normative,
//! conflict resolution, invalid CA refs and kinds, ConfigMap reconcile, observedGeneration, SAN
//! validation; see docs/backendtlspolicy-spec.md section 3), then this implementation's promises
//! (options, the Gateway's client certificate, status for unattached and unrouted policies,
//! `check`, the loader's admin endpoints).
//!
//! Every test runs the real loader binary on its own manifests, and most also a real Envoy fed over
//! ADS and a real NGINX that logs the SNI, TLS version, cipher, client certificate and HTTP version
//! it saw. Objects live in namespace `gateway-conformance-infra`, routes attach to Gateway
//! `same-namespace` and match host `abc.example.com`, as in the conformance suite. A failing test
//! prints the logs of Envoy, the loader (with `/status` and `/xds`) and NGINX.

use std::time::Duration;

use backendtls_e2e::conformance::status::wait_for;
use backendtls_e2e::conformance::{
    expect_eventually, Expect, ExpectedListener, Gateway as ConformanceGateway, Request, Want,
};
use backendtls_e2e::echo::{EchoReport, EchoServer, TlsOptions};
use backendtls_e2e::policy_support::{
    btls_service_yaml, ca_config_map_yaml, ca_secret_yaml, cluster, config_map_yaml, documents,
    expect_condition, gateway_yaml, gateway_yaml_with_client_certificate, is_gateway_ref,
    missing_dir, run_check, run_loader_command, service_yaml, tls_secret_yaml,
    wait_for_gateway_status, write_base, yaml_to_json, BackendRequest, Ca, Condition, ConfigDir,
    Fixture, Pki, Policy, PolicyStack, Route, Status, TlsServer, BTLS_PORT, BTLS_PORT_NAME,
    CA_CONFIG_MAP, CLIENT_COMMON_NAME, CONTROLLER_NAME, CONVERGE_TIMEOUT, FAIL_CLOSED_PREFIX,
    GATEWAY, MISMATCH_CA_CONFIG_MAP, NS,
};
use backendtls_e2e::{
    ads_bootstrap, free_port, try_http_get, wait_until, Ads, Envoy, Loader, NGINX_BODY,
};
use serde_json::{json, Value};

const CONFORMANCE_HOSTNAME: &str = "abc.example.com";
const OTHER_HOSTNAME: &str = "other.example.com";
const SPIFFE_ID: &str = "spiffe://abc.example.com/test-identity";

// ---------------------------------------------------------------------------------------------
// Conformance: BackendTLSPolicy

/// Conformance `BackendTLSPolicy`: plain HTTP through the Gateway reaches the backend over TLS
/// with the policy's hostname as SNI; a hostname the certificate lacks and a CA that did not sign
/// it fail every request, while both policies stay Accepted and ResolvedRefs.
#[test]
fn normative() {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    fixture.config.write(
        "services.yaml",
        &documents(&[
            btls_service_yaml("normative-test", port),
            btls_service_yaml("host-mismatch", port),
            btls_service_yaml("cert-mismatch", port),
        ]),
    );
    fixture.config.write(
        "route.yaml",
        &Route::new("backendtlspolicy")
            .rule("/backendtlspolicy", "normative-test", BTLS_PORT)
            .rule("/backendtlspolicy-host-mismatch", "host-mismatch", BTLS_PORT)
            .rule("/backendtlspolicy-cert-mismatch", "cert-mismatch", BTLS_PORT)
            .yaml(),
    );
    fixture.config.write(
        "policies.yaml",
        &documents(&[
            Policy::new("normative-test", "normative-test").section(BTLS_PORT_NAME).yaml(),
            Policy::new("host-mismatch", "host-mismatch")
                .section(BTLS_PORT_NAME)
                .hostname("mismatch.example.com")
                .yaml(),
            Policy::new("cert-mismatch", "cert-mismatch")
                .section(BTLS_PORT_NAME)
                .ca_config_map(MISMATCH_CA_CONFIG_MAP)
                .yaml(),
        ]),
    );
    let stack = fixture.start("e2e-policy-normative");

    for policy in ["normative-test", "host-mismatch", "cert-mismatch"] {
        assert_accepted_and_resolved(&stack, policy);
    }

    assert_eq!(stack.wait_for_status("/backendtlspolicy", 200), NGINX_BODY);
    assert_backend_sni(&stack, "/backendtlspolicy", CONFORMANCE_HOSTNAME);

    stack.assert_consistent_status("/backendtlspolicy-host-mismatch", 503);
    assert!(
        stack.cluster_stat("host-mismatch", BTLS_PORT, "ssl.fail_verify_san") >= 1,
        "the hostname mismatch was not counted as ssl.fail_verify_san on {}",
        cluster("host-mismatch", BTLS_PORT)
    );
    stack.assert_consistent_status("/backendtlspolicy-cert-mismatch", 503);
    assert!(
        stack.cluster_stat("cert-mismatch", BTLS_PORT, "ssl.fail_verify_error") >= 1,
        "the unknown CA was not counted as ssl.fail_verify_error on {}",
        cluster("cert-mismatch", BTLS_PORT)
    );
    for path in ["/backendtlspolicy-host-mismatch", "/backendtlspolicy-cert-mismatch"] {
        assert_eq!(
            stack.backend.requests_to(path),
            vec![],
            "a request to {path} reached the backend although its certificate must be refused"
        );
    }

    // Still Accepted and ResolvedRefs after the failures: they are handshake failures, not
    // configuration errors.
    for policy in ["host-mismatch", "cert-mismatch"] {
        assert_accepted_and_resolved(&stack, policy);
    }
    stack.assert_no_plaintext();
}

/// Conformance `BackendTLSPolicy`, its re-encrypt subtest and the plain-HTTP one on the same
/// Service: TLS from the client ends at an HTTPS listener (SNI and Host `https-listener.org`) and
/// TLS starts again to the backend with the policy's hostname `abc.example.com` as SNI, not the
/// client's SNI or Host. The policy has one ancestor entry per Gateway whose routes use its
/// Service, Accepted and ResolvedRefs under both. The backend is the in-process echo, so the
/// namespace, path, Host and SNI it saw are all compared (upstream's rules).
///
/// File mode: every Gateway has its own port; the listener certificate is issued by a test CA
/// (the client trusts it) for `https-listener.org` and `*.wildcard.org` (upstream's self-signed one
/// has `*.org`, which rustls, like webpki, does not take as an identity).
#[test]
fn reencrypt() {
    const HTTPS_GATEWAY: &str = "same-namespace-with-https-listener";
    const HTTPS_HOST: &str = "https-listener.org";
    let pki = Pki::new();
    let echo = EchoServer::tls(NS, "tls-backend-7c5d9f-h4k2", TlsOptions::new(&pki.backend_cert));
    let listener_ca = Ca::new("backendtls e2e listener CA");
    let listener_cert = listener_ca.issue(&[HTTPS_HOST, "*.wildcard.org"]);
    let config = ConfigDir::new();
    let (http_port, https_port) = (free_port(), free_port());
    write_base(&config, &pki, http_port);
    let https_listener = |name: &str, hostname: Option<&str>| {
        let hostname = hostname.map(|h| format!("hostname: \"{h}\", ")).unwrap_or_default();
        format!(
            "  - {{name: {name}, protocol: HTTPS, port: {https_port}, {hostname}\
             allowedRoutes: {{namespaces: {{from: Same}}}}, tls: {{certificateRefs: \
             [{{group: \"\", kind: Secret, name: tls-validity-checks-certificate, \
             namespace: {NS}}}]}}}}\n"
        )
    };
    config.write(
        "https-gateway.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: {HTTPS_GATEWAY}, namespace: {NS}}}\n\
             spec:\n  gatewayClassName: backendtls\n  listeners:\n{}{}{}{}",
            https_listener("https", None),
            https_listener("https-with-hostname", Some("second-example.org")),
            https_listener("https-with-wildcard-hostname", Some("*.wildcard.org")),
            https_listener(
                "https-with-hostname-matching-wildcard",
                Some("fourth-example.wildcard.org")
            ),
        ),
    );
    config.write(
        "listener-secret.yaml",
        &tls_secret_yaml("tls-validity-checks-certificate", &listener_cert),
    );
    config.write("service.yaml", &btls_service_yaml("backendtlspolicy-test", echo.port()));
    let exact_route = |name: &str, gateway: &str, hostname: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: {name}, namespace: {NS}}}\n\
             spec:\n  parentRefs: [{{name: {gateway}, namespace: {NS}}}]\n  \
             hostnames: [{hostname}]\n  rules:\n  - matches: [{{path: {{type: Exact, \
             value: /backendtlspolicy}}}}]\n    backendRefs: [{{group: \"\", kind: Service, \
             name: backendtlspolicy-test, port: {BTLS_PORT}}}]\n"
        )
    };
    config.write(
        "routes.yaml",
        &documents(&[
            exact_route("backendtlspolicy", GATEWAY, CONFORMANCE_HOSTNAME),
            exact_route("backendtlspolicy-reencrypt", HTTPS_GATEWAY, HTTPS_HOST),
        ]),
    );
    config.write(
        "policy.yaml",
        &Policy::new("normative-test", "backendtlspolicy-test").section(BTLS_PORT_NAME).yaml(),
    );
    let loader = Loader::start(config.path());
    let envoy_admin = free_port();
    let _envoy = Envoy::start(
        &ads_bootstrap(loader.xds_port(), envoy_admin, "e2e-policy-reencrypt", Ads::Delta),
        envoy_admin,
    );

    // Re-encrypt: the HTTPS Gateway (all four listeners ResolvedRefs, Accepted, Programmed) and
    // its route accepted, the route's refs resolved, the policy Accepted and ResolvedRefs under
    // that Gateway.
    for (gateway, route) in
        [(HTTPS_GATEWAY, "backendtlspolicy-reencrypt"), (GATEWAY, "backendtlspolicy")]
    {
        wait_for(&loader, &format!("Gateway {gateway}, route {route} and the policy"), |doc| {
            doc.gateway_and_routes_accepted((NS, gateway), &[(NS, route)], CONTROLLER_NAME)?;
            doc.http_route(NS, route)?.condition(NS, gateway, &Want::true_("ResolvedRefs"))?;
            let policy = doc.policy(NS, "normative-test")?;
            policy.condition(NS, gateway, Some(1), &Want::true_("Accepted"))?;
            policy.condition(NS, gateway, Some(1), &Want::true_("ResolvedRefs"))
        });
    }
    // Beyond upstream: exactly the four listener statuses, the route attached only to `https`
    // (the one listener whose hostname, none, intersects https-listener.org).
    wait_for(&loader, "the HTTPS Gateway's four listener statuses", |doc| {
        doc.gateway(NS, HTTPS_GATEWAY)?.has_listeners(&[
            ExpectedListener::healthy_http("https", 1),
            ExpectedListener::healthy_http("https-with-hostname", 0),
            ExpectedListener::healthy_http("https-with-wildcard-hostname", 0),
            ExpectedListener::healthy_http("https-with-hostname-matching-wildcard", 0),
        ])
    });
    let https = ConformanceGateway::https(
        std::net::SocketAddr::from(([127, 0, 0, 1], https_port)),
        listener_ca.cert_pem(),
    );
    expect_eventually(
        &https,
        &Expect::request(Request::get("/backendtlspolicy").host(HTTPS_HOST).sni(HTTPS_HOST))
            .sni(CONFORMANCE_HOSTNAME),
    );

    // The same Service through the HTTP Gateway: Host abc.example.com, SNI the policy hostname.
    expect_eventually(
        http_port,
        &Expect::request(Request::get("/backendtlspolicy").host(CONFORMANCE_HOSTNAME))
            .sni(CONFORMANCE_HOSTNAME),
    );

    // Beyond upstream: every request reached the backend over TLS with the policy's SNI, both
    // Hosts arrived as sent, and nothing came in plaintext.
    let seen = echo.requests();
    let sni_of = |r: &EchoReport| r.tls.as_ref().map(|t| t.server_name.clone());
    assert!(
        seen.iter().all(|r| sni_of(r).as_deref() == Some(CONFORMANCE_HOSTNAME)),
        "every backend request should carry SNI {CONFORMANCE_HOSTNAME}: {seen:?}"
    );
    for host in [HTTPS_HOST, CONFORMANCE_HOSTNAME] {
        assert!(seen.iter().any(|r| r.host == host), "no backend request with Host {host}");
    }
    assert_eq!(echo.plaintext_on_tls(), vec![], "plaintext reached the TLS backend");
}

// ---------------------------------------------------------------------------------------------
// Conformance: BackendTLSPolicyConflictResolution

/// Conformance `BackendTLSPolicyConflictResolution`: two policies for the same target and section
/// created at the same instant -> the first by name wins and the other is Conflicted; a
/// sectionName policy and a whole-Service policy on one Service are not in conflict, and each
/// governs its own port.
#[test]
fn conflict_resolution() {
    const CREATED: &str = "2024-05-01T10:00:00Z";
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    let two_ports = [("https-1", 443), ("https-2", 8443)];
    fixture.config.write(
        "services.yaml",
        &documents(&[
            service_yaml("conflicted-without-section-name-test", &[("https", 443)], Some(port)),
            service_yaml("conflicted-with-section-name-test", &two_ports, Some(port)),
            service_yaml("not-conflicted-test", &two_ports, Some(port)),
        ]),
    );
    fixture.config.write(
        "route.yaml",
        &Route::new("backendtlspolicy-conflict-resolution")
            .rule("/without-section-name", "conflicted-without-section-name-test", 443)
            .rule("/with-section-name", "conflicted-with-section-name-test", 443)
            .rule("/not-conflicted-https-1", "not-conflicted-test", 443)
            .rule("/not-conflicted-https-2", "not-conflicted-test", 8443)
            .yaml(),
    );
    // The losers come first in the file: file order must not decide.
    fixture.config.write(
        "policies.yaml",
        &documents(&[
            Policy::new(
                "conflicted-without-section-name-2",
                "conflicted-without-section-name-test",
            )
            .created(CREATED)
            .yaml(),
            Policy::new(
                "conflicted-without-section-name-1",
                "conflicted-without-section-name-test",
            )
            .created(CREATED)
            .hostname(OTHER_HOSTNAME)
            .yaml(),
            Policy::new("conflicted-with-section-name-2", "conflicted-with-section-name-test")
                .section("https-1")
                .created(CREATED)
                .yaml(),
            Policy::new("conflicted-with-section-name-1", "conflicted-with-section-name-test")
                .section("https-1")
                .created(CREATED)
                .hostname(OTHER_HOSTNAME)
                .yaml(),
            Policy::new("not-conflicted-with-section-name", "not-conflicted-test")
                .section("https-1")
                .created(CREATED)
                .hostname(OTHER_HOSTNAME)
                .yaml(),
            Policy::new("not-conflicted-without-section-name", "not-conflicted-test")
                .created(CREATED)
                .yaml(),
        ]),
    );
    let stack = fixture.start("e2e-policy-conflicts");

    for winner in [
        "conflicted-without-section-name-1",
        "conflicted-with-section-name-1",
        "not-conflicted-with-section-name",
        "not-conflicted-without-section-name",
    ] {
        stack.wait_for_condition(winner, "Accepted", "True", Some("Accepted"));
    }
    for loser in ["conflicted-without-section-name-2", "conflicted-with-section-name-2"] {
        stack.wait_for_condition(loser, "Accepted", "False", Some("Conflicted"));
    }

    for (path, sni) in [
        ("/without-section-name", OTHER_HOSTNAME),
        ("/with-section-name", OTHER_HOSTNAME),
        ("/not-conflicted-https-1", OTHER_HOSTNAME),
        ("/not-conflicted-https-2", CONFORMANCE_HOSTNAME),
    ] {
        assert_eq!(stack.wait_for_status(path, 200), NGINX_BODY, "GET {path}");
        assert_backend_sni(&stack, path, sni);
    }
    stack.assert_no_plaintext();
}

// ---------------------------------------------------------------------------------------------
// Conformance: BackendTLSPolicyInvalidCACertificateRef and BackendTLSPolicyInvalidKind

/// Conformance `BackendTLSPolicyInvalidCACertificateRef` and `BackendTLSPolicyInvalidKind`: a
/// missing ConfigMap, a ConfigMap without `ca.crt` and an unsupported kind make the policy
/// Accepted=False/NoValidCACertificate with the matching ResolvedRefs reason, and requests get this
/// implementation's documented 503 with a `backendtls: ` reason, never plaintext.
#[test]
fn invalid_ca_certificate_refs() {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    fixture.config.write(
        "services.yaml",
        &documents(&[
            btls_service_yaml("nonexistent-ca-certificate-ref", port),
            btls_service_yaml("malformed-ca-certificate-ref", port),
            btls_service_yaml("invalid-kind", port),
        ]),
    );
    fixture.config.write("malformed-ca.yaml", &config_map_yaml("malformed-ca-certificate", &[]));
    fixture.config.write(
        "route.yaml",
        &Route::new("backendtlspolicy-invalid")
            .rule("/nonexistent-ca-certificate-ref", "nonexistent-ca-certificate-ref", BTLS_PORT)
            .rule("/malformed-ca-certificate-ref", "malformed-ca-certificate-ref", BTLS_PORT)
            .rule("/invalid-kind", "invalid-kind", BTLS_PORT)
            .yaml(),
    );
    fixture.config.write(
        "policies.yaml",
        &documents(&[
            Policy::new("nonexistent-ca-certificate-ref", "nonexistent-ca-certificate-ref")
                .ca_config_map("nonexistent-ca-certificate")
                .yaml(),
            Policy::new("malformed-ca-certificate-ref", "malformed-ca-certificate-ref")
                .ca_config_map("malformed-ca-certificate")
                .yaml(),
            Policy::new("invalid-kind", "invalid-kind")
                .ca_ref("invalid.io", "InvalidKind", "invalid-kind-ca")
                .yaml(),
        ]),
    );
    let stack = fixture.start("e2e-policy-invalid-refs");

    for (policy, resolved_reason, named_in_message) in [
        ("nonexistent-ca-certificate-ref", "InvalidCACertificateRef", "nonexistent-ca-certificate"),
        ("malformed-ca-certificate-ref", "InvalidCACertificateRef", "malformed-ca-certificate"),
        ("invalid-kind", "InvalidKind", "InvalidKind"),
    ] {
        stack.wait_for_condition(policy, "Accepted", "False", Some("NoValidCACertificate"));
        let resolved =
            stack.wait_for_condition(policy, "ResolvedRefs", "False", Some(resolved_reason));
        assert!(
            resolved.message.contains(named_in_message),
            "{policy}: the ResolvedRefs message should name the wrong ref ({named_in_message}): \
             {:?}",
            resolved.message
        );
        let path = format!("/{policy}");
        for body in stack.assert_consistent_status(&path, 503) {
            assert!(
                body.starts_with(FAIL_CLOSED_PREFIX),
                "GET {path}: the 503 body should start with {FAIL_CLOSED_PREFIX:?} and give the \
                 reason, got {body:?}"
            );
        }
        assert_eq!(
            stack.backend.requests_to(&path),
            vec![],
            "a request to {path} reached the backend although its policy cannot be met"
        );
    }
    stack.assert_no_plaintext();
}

/// Conformance `BackendTLSPolicy` (v1.5+ reconcile subtest): the policy follows its ConfigMap:
/// pointing at one that does not exist yet, creating it, emptying its `ca.crt`, restoring it.
/// No restart, and the backend never sees plaintext.
#[test]
fn ca_certificate_ref_reconcile() {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    let ca_pem = fixture.pki.ca.cert_pem().to_string();
    fixture.config.write("service.yaml", &btls_service_yaml("reconcile-test", port));
    fixture.config.write(
        "route.yaml",
        &Route::new("reconcile").rule("/reconcile-test", "reconcile-test", BTLS_PORT).yaml(),
    );
    let policy = Policy::new("reconcile-test", "reconcile-test").section(BTLS_PORT_NAME);
    fixture.config.write("policy.yaml", &policy.yaml());
    let stack = fixture.start("e2e-policy-reconcile");
    let path = "/reconcile-test";

    assert_accepted_and_resolved(&stack, "reconcile-test");
    stack.wait_for_status(path, 200);

    // Switch the policy to a ConfigMap that does not exist yet.
    stack.config.write("policy.yaml", &policy.clone().ca_config_map("reconcile-ca").yaml());
    assert_no_valid_ca(&stack, "reconcile-test");
    assert_fails_closed(&stack, path);

    // Create it.
    stack.config.write("reconcile-ca.yaml", &ca_config_map_yaml("reconcile-ca", &ca_pem));
    assert_accepted_and_resolved(&stack, "reconcile-test");
    stack.assert_consistent_status(path, 200);

    // Empty its ca.crt.
    stack.config.write("reconcile-ca.yaml", &config_map_yaml("reconcile-ca", &[("ca.crt", "")]));
    assert_no_valid_ca(&stack, "reconcile-test");
    assert_fails_closed(&stack, path);

    // Restore it.
    stack.config.write("reconcile-ca.yaml", &ca_config_map_yaml("reconcile-ca", &ca_pem));
    assert_accepted_and_resolved(&stack, "reconcile-test");
    stack.assert_consistent_status(path, 200);
    assert_backend_sni(&stack, path, CONFORMANCE_HOSTNAME);
    stack.assert_no_plaintext();
}

// ---------------------------------------------------------------------------------------------
// Conformance: BackendTLSPolicyObservedGenerationBump

/// Conformance `BackendTLSPolicyObservedGenerationBump`: after the policy's generation goes from
/// 1 to 2 (hostname patched), every condition reports observedGeneration 2; a policy without
/// `metadata.generation` reports 1. Status only, so the loader runs alone.
#[test]
fn observed_generation_bump() {
    let config = ConfigDir::new();
    let pki = Pki::new();
    write_base(&config, &pki, free_port());
    // Like conformance, Services whose pods do not exist: no EndpointSlices.
    config.write(
        "services.yaml",
        &documents(&[
            service_yaml("observed-generation-bump", &[("https", 443)], None),
            service_yaml("no-generation", &[("https", 443)], None),
        ]),
    );
    config.write(
        "route.yaml",
        &Route::new("observed-generation-bump")
            .rule("/observed-generation-bump", "observed-generation-bump", 443)
            .rule("/no-generation", "no-generation", 443)
            .yaml(),
    );
    let policy =
        Policy::new("observed-generation-bump", "observed-generation-bump").section("https");
    config.write("policy.yaml", &policy.clone().generation(1).yaml());
    config.write(
        "no-generation.yaml",
        &Policy::new("no-generation", "no-generation").section("https").yaml(),
    );
    let loader = Loader::start(config.path());

    wait_for_observed_generation(&loader, "observed-generation-bump", 1);
    wait_for_observed_generation(&loader, "no-generation", 1);

    config.write("policy.yaml", &policy.hostname("foo.example.com").generation(2).yaml());
    wait_for_observed_generation(&loader, "observed-generation-bump", 2);
    let accepted = Status(loader.status())
        .gateway_condition("observed-generation-bump", "Accepted")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accepted.status, "True", "Accepted after the bump: {accepted:?}");
}

// ---------------------------------------------------------------------------------------------
// Conformance: BackendTLSPolicySANValidation

/// Conformance `BackendTLSPolicySANValidation`: with subjectAltNames set, only the SANs
/// authenticate the backend (any one matching suffices), the hostname is still the SNI, and all
/// six policies are Accepted.
#[test]
fn san_validation() {
    const WRONG_SPIFFE_ID: &str = "spiffe://def.example.com/test-identity";
    let cases = [
        SanCase::new("san-dns", &[San::Hostname(CONFORMANCE_HOSTNAME)], 200),
        SanCase::new("san-dns-mismatch", &[San::Hostname("dce.example.com")], 503),
        SanCase::new("san-uri", &[San::Uri(SPIFFE_ID)], 200),
        SanCase::new("san-uri-mismatch", &[San::Uri(WRONG_SPIFFE_ID)], 503),
        SanCase::new(
            "multiple-sans",
            &[San::Uri(SPIFFE_ID), San::Hostname(CONFORMANCE_HOSTNAME)],
            200,
        ),
        SanCase::new(
            "multiple-mismatch-sans",
            &[San::Uri(WRONG_SPIFFE_ID), San::Hostname("dce.example.com")],
            503,
        ),
    ];
    run_san_cases("e2e-policy-san", CONFORMANCE_HOSTNAME, &cases);
}

/// Beyond conformance (issue 3's acceptance list): a SAN that matches while the hostname does not
/// (the hostname is then only the SNI), one match among several entries, a `*.` wildcard for one
/// label, and a wildcard over a top-level domain, which is no identity (as in webpki and NSS):
/// its cluster fails closed without any connection to the backend.
#[test]
fn san_validation_beyond_conformance() {
    let cases = [
        SanCase::new("san-matches-hostname-does-not", &[San::Hostname(CONFORMANCE_HOSTNAME)], 200),
        SanCase::new(
            "one-of-two-sans",
            &[San::Uri("spiffe://def.example.com/test-identity"), San::Hostname(OTHER_HOSTNAME)],
            200,
        ),
        SanCase::new("wildcard-san", &[San::Hostname("*.example.com")], 200),
        SanCase::failed_closed("wildcard-over-a-tld", &[San::Hostname("*.com")]),
    ];
    run_san_cases("e2e-policy-san-extra", "mismatch.example.com", &cases);
}

/// One `subjectAltNames` entry.
#[derive(Debug)]
enum San {
    Hostname(&'static str),
    Uri(&'static str),
}

/// A Service and policy `name` with `sans`, and the status requests to `/<name>` must get.
struct SanCase {
    name: &'static str,
    sans: &'static [San],
    status: u16,
    /// The names are no identities: the policy is not Accepted and its cluster has no hosts, so
    /// not even a handshake happens.
    failed_closed: bool,
}

impl SanCase {
    fn new(name: &'static str, sans: &'static [San], status: u16) -> SanCase {
        SanCase { name, sans, status, failed_closed: false }
    }

    fn failed_closed(name: &'static str, sans: &'static [San]) -> SanCase {
        SanCase { name, sans, status: 503, failed_closed: true }
    }
}

/// One Service and policy (`hostname`, section `btls`) per case, each routed at `/<name>`; asserts
/// all are Accepted, each answers its status consistently, and the SNI is always `hostname`.
fn run_san_cases(node_id: &str, hostname: &str, cases: &[SanCase]) {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    let mut services = Vec::new();
    let mut policies = Vec::new();
    let mut route = Route::new("backendtlspolicy-san");
    for case in cases {
        services.push(btls_service_yaml(case.name, port));
        route = route.rule(&format!("/{}", case.name), case.name, BTLS_PORT);
        let mut policy =
            Policy::new(case.name, case.name).section(BTLS_PORT_NAME).hostname(hostname);
        for san in case.sans {
            policy = match san {
                San::Uri(uri) => policy.san_uri(uri),
                San::Hostname(name) => policy.san_hostname(name),
            };
        }
        policies.push(policy.yaml());
    }
    fixture.config.write("services.yaml", &documents(&services));
    fixture.config.write("route.yaml", &route.yaml());
    fixture.config.write("policies.yaml", &documents(&policies));
    let stack = fixture.start(node_id);

    for case in cases {
        if case.failed_closed {
            // The certificate name rules refuse the names: the policy says so.
            stack.wait_for_condition(case.name, "Accepted", "False", Some("Invalid"));
        } else {
            assert_accepted_and_resolved(&stack, case.name);
        }
    }
    for SanCase { name, sans, status, failed_closed } in cases {
        let path = format!("/{name}");
        stack.assert_consistent_status(&path, *status);
        if *status == 200 {
            assert_backend_sni(&stack, &path, hostname);
        } else if *failed_closed {
            assert_eq!(
                stack.cluster_stat(name, BTLS_PORT, "upstream_cx_total"),
                0,
                "{name}: SANs {sans:?} are no identities; nothing may connect to the backend"
            );
            assert_eq!(stack.backend.requests_to(&path), vec![], "{name} reached the backend");
        } else {
            assert!(
                stack.cluster_stat(name, BTLS_PORT, "ssl.fail_verify_san") >= 1,
                "{name}: SANs {sans:?} should fail SAN verification (ssl.fail_verify_san on {})",
                cluster(name, BTLS_PORT)
            );
            assert_eq!(stack.backend.requests_to(&path), vec![], "{name} reached the backend");
        }
    }
    stack.assert_no_plaintext();
}

// ---------------------------------------------------------------------------------------------
// Beyond conformance: CA refs

/// A Secret as CA source (key `ca.crt`), and a policy with one valid and one missing ref: it stays
/// Accepted, uses the valid one, and says ResolvedRefs=False/InvalidCACertificateRef.
#[test]
fn secret_ca_and_partly_valid_refs() {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    fixture.config.write("ca-secret.yaml", &ca_secret_yaml("ca-secret", fixture.pki.ca.cert_pem()));
    fixture.config.write(
        "services.yaml",
        &documents(&[
            btls_service_yaml("secret-ca", port),
            btls_service_yaml("partly-valid", port),
        ]),
    );
    fixture.config.write(
        "route.yaml",
        &Route::new("refs")
            .rule("/secret-ca", "secret-ca", BTLS_PORT)
            .rule("/partly-valid", "partly-valid", BTLS_PORT)
            .yaml(),
    );
    fixture.config.write(
        "policies.yaml",
        &documents(&[
            Policy::new("secret-ca", "secret-ca").ca_ref("", "Secret", "ca-secret").yaml(),
            Policy::new("partly-valid", "partly-valid")
                .ca_config_map("no-such-ca")
                .also_ca_ref("", "ConfigMap", CA_CONFIG_MAP)
                .yaml(),
        ]),
    );
    let stack = fixture.start("e2e-policy-secret-ca");

    assert_accepted_and_resolved(&stack, "secret-ca");
    stack.assert_consistent_status("/secret-ca", 200);

    stack.wait_for_condition("partly-valid", "Accepted", "True", Some("Accepted"));
    let resolved = stack.wait_for_condition(
        "partly-valid",
        "ResolvedRefs",
        "False",
        Some("InvalidCACertificateRef"),
    );
    assert!(
        resolved.message.contains("no-such-ca"),
        "the ResolvedRefs message should name the missing ref no-such-ca: {:?}",
        resolved.message
    );
    stack.assert_consistent_status("/partly-valid", 200);
    assert_backend_sni(&stack, "/partly-valid", CONFORMANCE_HOSTNAME);
    stack.assert_no_plaintext();
}

// ---------------------------------------------------------------------------------------------
// Beyond conformance: spec.options

/// `backendtls.dev/max-tls-version: "1.2"` makes the handshake TLS 1.2 (Envoy's
/// `ssl.versions.TLSv1.2` moves, NGINX logs TLSv1.2) where the default negotiates 1.3, and
/// `backendtls.dev/min-tls-version: "1.3"` against a TLS-1.2-only backend fails with 503 where the
/// default succeeds.
#[test]
fn tls_version_options() {
    let fixture = Fixture::with_servers(|pki| {
        vec![TlsServer::new(&pki.backend_cert), TlsServer::new(&pki.backend_cert).tls12_only()]
    });
    let (modern, tls12_only) = (fixture.backend_port(0), fixture.backend_port(1));
    fixture.config.write(
        "services.yaml",
        &documents(&[
            btls_service_yaml("tls-default", modern),
            btls_service_yaml("max-tls-12", modern),
            btls_service_yaml("tls12-backend-default", tls12_only),
            btls_service_yaml("min-tls-13", tls12_only),
        ]),
    );
    fixture.config.write(
        "route.yaml",
        &Route::new("tls-versions")
            .rule("/tls-default", "tls-default", BTLS_PORT)
            .rule("/max-tls-12", "max-tls-12", BTLS_PORT)
            .rule("/tls12-backend-default", "tls12-backend-default", BTLS_PORT)
            .rule("/min-tls-13", "min-tls-13", BTLS_PORT)
            .yaml(),
    );
    fixture.config.write(
        "policies.yaml",
        &documents(&[
            Policy::new("tls-default", "tls-default").yaml(),
            Policy::new("max-tls-12", "max-tls-12")
                .option("backendtls.dev/max-tls-version", "1.2")
                .yaml(),
            Policy::new("tls12-backend-default", "tls12-backend-default").yaml(),
            Policy::new("min-tls-13", "min-tls-13")
                .option("backendtls.dev/min-tls-version", "1.3")
                .yaml(),
        ]),
    );
    let stack = fixture.start("e2e-policy-tls-versions");
    for policy in ["tls-default", "max-tls-12", "tls12-backend-default", "min-tls-13"] {
        assert_accepted_and_resolved(&stack, policy);
    }

    // Control: without options this backend negotiates TLS 1.3.
    stack.wait_for_status("/tls-default", 200);
    assert_backend_field(&stack, "/tls-default", "TLS version", |r| &r.tls_version, "TLSv1.3");

    let tls12_before = stack.cluster_stat("max-tls-12", BTLS_PORT, "ssl.versions.TLSv1.2");
    stack.assert_consistent_status("/max-tls-12", 200);
    assert_backend_field(&stack, "/max-tls-12", "TLS version", |r| &r.tls_version, "TLSv1.2");
    let tls12_after = stack.cluster_stat("max-tls-12", BTLS_PORT, "ssl.versions.TLSv1.2");
    assert!(
        tls12_after > tls12_before,
        "cluster.{}.ssl.versions.TLSv1.2 did not move ({tls12_before} -> {tls12_after})",
        cluster("max-tls-12", BTLS_PORT)
    );
    assert_eq!(
        stack.cluster_stat("max-tls-12", BTLS_PORT, "ssl.versions.TLSv1.3"),
        0,
        "a TLS 1.3 handshake happened despite max-tls-version 1.2"
    );

    // Control: the TLS-1.2-only backend works without options, so the 503 below is the option's.
    stack.assert_consistent_status("/tls12-backend-default", 200);
    assert_backend_field(
        &stack,
        "/tls12-backend-default",
        "TLS version",
        |r| &r.tls_version,
        "TLSv1.2",
    );
    stack.assert_consistent_status("/min-tls-13", 503);
    assert_eq!(stack.backend.requests_to("/min-tls-13"), vec![], "min-tls-13 reached the backend");
    stack.assert_no_plaintext();
}

/// `backendtls.dev/cipher-suites` (comma-separated, TLS 1.2) picks the cipher NGINX logs, where
/// the default picks another; `backendtls.dev/alpn: "h2"` makes Envoy speak HTTP/2 to the backend
/// and `"http/1.1"` HTTP/1.1.
#[test]
fn cipher_suite_and_alpn_options() {
    const CIPHER: &str = "ECDHE-ECDSA-AES256-GCM-SHA384";
    let fixture = Fixture::with_servers(|pki| vec![TlsServer::new(&pki.backend_cert).http2()]);
    let port = fixture.backend_port(0);
    let names = ["cipher-default", "cipher-chosen", "alpn-h2", "alpn-http11"];
    fixture
        .config
        .write("services.yaml", &documents(&names.map(|name| btls_service_yaml(name, port))));
    let mut route = Route::new("options");
    for name in names {
        route = route.rule(&format!("/{name}"), name, BTLS_PORT);
    }
    fixture.config.write("route.yaml", &route.yaml());
    fixture.config.write(
        "policies.yaml",
        &documents(&[
            Policy::new("cipher-default", "cipher-default")
                .option("backendtls.dev/max-tls-version", "1.2")
                .yaml(),
            Policy::new("cipher-chosen", "cipher-chosen")
                .option("backendtls.dev/max-tls-version", "1.2")
                .option(
                    "backendtls.dev/cipher-suites",
                    &format!("{CIPHER},ECDHE-RSA-AES256-GCM-SHA384"),
                )
                .yaml(),
            Policy::new("alpn-h2", "alpn-h2").option("backendtls.dev/alpn", "h2").yaml(),
            Policy::new("alpn-http11", "alpn-http11")
                .option("backendtls.dev/alpn", "http/1.1")
                .yaml(),
        ]),
    );
    let stack = fixture.start("e2e-policy-cipher-alpn");
    for policy in names {
        assert_accepted_and_resolved(&stack, policy);
    }

    stack.assert_consistent_status("/cipher-default", 200);
    let default_cipher = stack.wait_for_backend_requests("/cipher-default")[0].cipher.clone();
    assert_ne!(
        default_cipher, CIPHER,
        "the default already negotiates {CIPHER}, so this test cannot tell the option works"
    );
    stack.assert_consistent_status("/cipher-chosen", 200);
    assert_backend_field(&stack, "/cipher-chosen", "cipher", |r| &r.cipher, CIPHER);
    assert_backend_field(&stack, "/cipher-chosen", "TLS version", |r| &r.tls_version, "TLSv1.2");

    assert_eq!(stack.assert_consistent_status("/alpn-h2", 200)[0], NGINX_BODY);
    assert_backend_field(&stack, "/alpn-h2", "HTTP version", |r| &r.http_version, "HTTP/2.0");
    stack.assert_consistent_status("/alpn-http11", 200);
    assert_backend_field(&stack, "/alpn-http11", "HTTP version", |r| &r.http_version, "HTTP/1.1");
    stack.assert_no_plaintext();
}

/// An unknown option key is reported in the Accepted message (the policy still applies); an
/// invalid value makes the policy Accepted=False/Invalid and fails closed. A cipher name BoringSSL
/// does not know is invalid too: sending it would make Envoy reject the cluster (NACK).
#[test]
fn option_keys_and_values_are_validated() {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    let names = ["unknown-option", "invalid-min-version", "invalid-cipher"];
    fixture
        .config
        .write("services.yaml", &documents(&names.map(|name| btls_service_yaml(name, port))));
    let mut route = Route::new("options");
    for name in names {
        route = route.rule(&format!("/{name}"), name, BTLS_PORT);
    }
    fixture.config.write("route.yaml", &route.yaml());
    fixture.config.write(
        "policies.yaml",
        &documents(&[
            Policy::new("unknown-option", "unknown-option").option("example.com/foo", "bar").yaml(),
            Policy::new("invalid-min-version", "invalid-min-version")
                .option("backendtls.dev/min-tls-version", "1.0")
                .yaml(),
            Policy::new("invalid-cipher", "invalid-cipher")
                .option("backendtls.dev/max-tls-version", "1.2")
                .option("backendtls.dev/cipher-suites", "NOT-A-CIPHER")
                .yaml(),
        ]),
    );
    let stack = fixture.start("e2e-policy-option-validation");

    let accepted = stack.wait_for_condition("unknown-option", "Accepted", "True", None);
    assert!(
        accepted.message.contains("example.com/foo"),
        "the Accepted message should mention the unknown option example.com/foo: {accepted:?}"
    );
    stack.assert_consistent_status("/unknown-option", 200);

    for (policy, mentions) in [
        ("invalid-min-version", "backendtls.dev/min-tls-version"),
        ("invalid-cipher", "NOT-A-CIPHER"),
    ] {
        assert_fails_closed(&stack, &format!("/{policy}"));
        let accepted = stack.wait_for_condition(policy, "Accepted", "False", Some("Invalid"));
        assert!(
            accepted.message.contains(mentions),
            "{policy}: the Accepted message should mention {mentions}: {accepted:?}"
        );
    }
    let metrics = loader_metrics(&stack.loader);
    assert_eq!(
        metric_value(&metrics, "backendtls_loader_xds_nacks_total"),
        Some(0.0),
        "Envoy NACKed something: an invalid option reached it\n{metrics}"
    );
    stack.assert_no_plaintext();
}

/// `wellKnownCACertificates` other than `System` (here an implementation-specific name this
/// loader does not define) -> Accepted=False/Invalid, and requests fail closed.
#[test]
fn unsupported_well_known_ca_certificates_fail_closed() {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    fixture.config.write("service.yaml", &btls_service_yaml("well-known", port));
    fixture.config.write(
        "route.yaml",
        &Route::new("well-known").rule("/well-known", "well-known", BTLS_PORT).yaml(),
    );
    fixture.config.write(
        "policy.yaml",
        &Policy::new("well-known", "well-known")
            .well_known_ca_certificates("example.com/custom-bundle")
            .yaml(),
    );
    let stack = fixture.start("e2e-policy-well-known");

    assert_fails_closed(&stack, "/well-known");
    let accepted = stack.wait_for_condition("well-known", "Accepted", "False", Some("Invalid"));
    assert!(
        accepted.message.contains("example.com/custom-bundle"),
        "the Accepted message should name the unsupported value: {accepted:?}"
    );
    stack.assert_no_plaintext();
}

/// `wellKnownCACertificates: System` trusts the bundle named by `--system-ca-bundle` (here a
/// test-only bundle holding the conformance CA): `check` accepts the policy, and the static
/// bootstrap `render` prints serves the backend through Envoy over TLS with the policy's SNI.
#[test]
fn well_known_system_ca_uses_the_configured_bundle() {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    fixture.config.write("service.yaml", &btls_service_yaml("system-ca", port));
    fixture.config.write(
        "route.yaml",
        &Route::new("system-ca").rule("/system-ca", "system-ca", BTLS_PORT).yaml(),
    );
    fixture.config.write(
        "policy.yaml",
        &Policy::new("system-ca", "system-ca").well_known_ca_certificates("System").yaml(),
    );
    let bundle_dir =
        tempfile::Builder::new().prefix("btls-system-ca-").tempdir().expect("temp dir");
    let bundle = bundle_dir.path().join("ca-certificates.crt");
    std::fs::write(
        &bundle,
        format!("{}{}", fixture.pki.mismatch_ca.cert_pem(), fixture.pki.ca.cert_pem()),
    )
    .expect("write the test trust bundle");
    let config_dir = fixture.config.path().to_str().expect("UTF-8 path");
    let bundle = bundle.to_str().expect("UTF-8 path");

    let check = run_loader_command(&[
        "check",
        "--config-dir",
        config_dir,
        "--system-ca-bundle",
        bundle,
        "-o",
        "json",
    ]);
    assert_eq!(check.code, Some(0), "check with the test bundle: {check:?}");
    for kind in ["Accepted", "ResolvedRefs"] {
        let condition = Status(check.json())
            .gateway_condition("system-ca", kind)
            .unwrap_or_else(|e| panic!("{e}"));
        expect_condition(&condition, "True", Some(kind)).unwrap_or_else(|e| panic!("{e}"));
    }

    let admin_port = free_port();
    let admin_address = format!("127.0.0.1:{admin_port}");
    let render = run_loader_command(&[
        "render",
        "--config-dir",
        config_dir,
        "--system-ca-bundle",
        bundle,
        "-o",
        "yaml",
        "--admin-address",
        &admin_address,
    ]);
    assert_eq!(render.code, Some(0), "render with the test bundle: {render:?}");
    let _envoy = Envoy::start(&render.stdout, admin_port);
    assert_eq!(wait_for_gateway_status(fixture.gateway_port, "/system-ca", 200), NGINX_BODY);
    let requests = fixture.backend.requests_to("/system-ca");
    assert!(
        requests.iter().all(|r| r.sni == CONFORMANCE_HOSTNAME && !r.is_plaintext()),
        "requests to /system-ca should come over TLS with SNI {CONFORMANCE_HOSTNAME}: {requests:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Beyond conformance: the Gateway's client certificate (GEP-3155)

/// `Gateway.spec.tls.backend.clientCertificateRef` makes Envoy present that certificate to
/// backends: NGINX, which requires a client certificate from the client CA, answers 200 and logs
/// its subject; the same NGINX reached through a Gateway without one answers 400.
#[test]
fn gateway_client_certificate() {
    let fixture = Fixture::with_servers(|pki| {
        vec![TlsServer::new(&pki.backend_cert).require_client_certificate(pki.client_ca.cert_pem())]
    });
    let port = fixture.backend_port(0);
    let control_gateway_port = free_port();
    fixture.config.write(
        "gateway.yaml",
        &documents(&[
            gateway_yaml_with_client_certificate(GATEWAY, fixture.gateway_port, Some("client")),
            gateway_yaml("without-client-certificate", control_gateway_port),
        ]),
    );
    fixture.config.write("client.yaml", &tls_secret_yaml("client", &fixture.pki.client_cert));
    fixture.config.write(
        "services.yaml",
        &documents(&[btls_service_yaml("mtls", port), btls_service_yaml("mtls-control", port)]),
    );
    fixture.config.write(
        "routes.yaml",
        &documents(&[
            Route::new("mtls").rule("/mtls", "mtls", BTLS_PORT).yaml(),
            Route::new("mtls-control")
                .parents(&["without-client-certificate"])
                .rule("/mtls-control", "mtls-control", BTLS_PORT)
                .yaml(),
        ]),
    );
    fixture.config.write(
        "policies.yaml",
        &documents(&[
            Policy::new("mtls", "mtls").yaml(),
            Policy::new("mtls-control", "mtls-control").yaml(),
        ]),
    );
    let stack = fixture.start("e2e-policy-client-cert");

    let loader = &stack.loader;
    for (kind, reason) in [("Accepted", "Accepted"), ("ResolvedRefs", "ResolvedRefs")] {
        wait_for_gateway_condition(loader, GATEWAY, kind, "True", Some(reason));
    }
    assert_accepted_and_resolved(&stack, "mtls");

    assert_eq!(stack.assert_consistent_status("/mtls", 200)[0], NGINX_BODY);
    let expected_subject = format!("CN={CLIENT_COMMON_NAME}");
    assert_backend_field(
        &stack,
        "/mtls",
        "client subject",
        |r| &r.client_subject,
        &expected_subject,
    );

    // Control: NGINX really demands the certificate.
    wait_for_gateway_status(control_gateway_port, "/mtls-control", 400);
    let control = stack.wait_for_backend_requests("/mtls-control");
    assert!(
        control.iter().all(|r| r.client_subject.is_empty() && r.status == 400),
        "without a client certificate NGINX should have refused every request: {control:?}"
    );
    stack.assert_no_plaintext();
}

// ---------------------------------------------------------------------------------------------
// Conformance: GatewayInvalidTLSBackendConfiguration

/// Conformance `GatewayInvalidTLSBackendConfiguration`: five Gateways whose
/// `spec.tls.backend.clientCertificateRef` cannot be used (a Secret that does not exist, a group
/// other than core, a kind other than Secret, an `Opaque` Secret without data, a Secret in
/// another namespace without a ReferenceGrant). Each stays `Accepted=True/Accepted` and
/// `Programmed=True` (it is not annotated to skip readiness), with `ResolvedRefs=False` and the
/// spec's reason, every condition at the Gateway's generation; the message names the reference.
#[test]
fn gateway_invalid_tls_backend_configuration() {
    const WEB_NS: &str = "gateway-conformance-web-backend";
    let config = ConfigDir::new();
    let pki = Pki::new();
    write_base(&config, &pki, free_port());
    // (Gateway, clientCertificateRef as a YAML flow mapping, reason, text the message names)
    let cases = [
        (
            "gateway-client-certificate-nonexistent-secret",
            "{group: \"\", kind: Secret, name: nonexistent-certificate}".to_string(),
            "InvalidClientCertificateRef",
            "nonexistent-certificate",
        ),
        (
            "gateway-client-certificate-unsupported-group",
            "{group: wrong.group.company.io, kind: Secret, name: tls-validity-checks-certificate}"
                .to_string(),
            "InvalidClientCertificateRef",
            "tls-validity-checks-certificate",
        ),
        (
            "gateway-client-certificate-unsupported-kind",
            "{group: \"\", kind: WrongKind, name: tls-validity-checks-certificate}".to_string(),
            "InvalidClientCertificateRef",
            "tls-validity-checks-certificate",
        ),
        (
            "gateway-client-certificate-malformed-secret",
            "{group: \"\", kind: Secret, name: malformed-client-certificate}".to_string(),
            "InvalidClientCertificateRef",
            "malformed-client-certificate",
        ),
        (
            "gateway-client-certificate-missing-reference-grant",
            format!("{{group: \"\", kind: Secret, name: certificate, namespace: {WEB_NS}}}"),
            "RefNotPermitted",
            "certificate",
        ),
    ];
    let gateways: Vec<String> = cases
        .iter()
        .map(|(name, reference, _, _)| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                 metadata: {{name: {name}, namespace: {NS}}}\n\
                 spec:\n  gatewayClassName: backendtls\n  \
                 tls: {{backend: {{clientCertificateRef: {reference}}}}}\n  listeners:\n  \
                 - {{name: http, protocol: HTTP, port: {}, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n",
                free_port()
            )
        })
        .collect();
    config.write("gateways.yaml", &documents(&gateways));
    // The Secrets the refs name exist where they should, so each reason is the ref's own fault:
    // a usable certificate for the wrong group and kind, an Opaque Secret with empty data, and
    // a usable certificate in another namespace.
    config.write(
        "secrets.yaml",
        &documents(&[
            tls_secret_yaml("tls-validity-checks-certificate", &pki.client_cert),
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: malformed-client-certificate, \
                 namespace: {NS}}}\ntype: Opaque\ndata: {{}}\n"
            ),
            tls_secret_yaml("certificate", &pki.client_cert)
                .replace(&format!("namespace: {NS}"), &format!("namespace: {WEB_NS}")),
        ]),
    );
    let loader = Loader::start(config.path());

    for (gateway, _, reason, named) in &cases {
        wait_for(&loader, &format!("Gateway {gateway}: ResolvedRefs=False/{reason}"), |doc| {
            let status = doc.gateway(NS, gateway)?;
            status.condition(&Want::false_("ResolvedRefs", reason))?;
            status.condition(&Want::true_("Accepted"))?;
            status.condition(&Want::true_any("Programmed"))?;
            Ok(())
        });
        let resolved =
            wait_for_gateway_condition(&loader, gateway, "ResolvedRefs", "False", Some(reason));
        assert!(
            resolved.message.contains(named),
            "{gateway}: the ResolvedRefs message should name {named}: {resolved:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Beyond conformance: status of policies that do not attach or that no route uses

/// A sectionName the Service does not have: the policy does not attach and says so,
/// Accepted=False/TargetNotFound with a message naming the port.
#[test]
fn section_name_missing_from_service() {
    let config = ConfigDir::new();
    let pki = Pki::new();
    write_base(&config, &pki, free_port());
    config.write("service.yaml", &btls_service_yaml("one-port", free_port()));
    config.write(
        "route.yaml",
        &Route::new("one-port").rule("/one-port", "one-port", BTLS_PORT).yaml(),
    );
    config.write(
        "policy.yaml",
        &Policy::new("no-such-port", "one-port").section("no-such-port").yaml(),
    );
    let loader = Loader::start(config.path());

    let accepted = wait_until(
        "policy no-such-port to report Accepted=False/TargetNotFound in every ancestor entry",
        CONVERGE_TIMEOUT,
        || {
            let conditions = Status(loader.status()).conditions("no-such-port")?;
            let accepted: Vec<Condition> =
                conditions.into_iter().filter(|c| c.kind == "Accepted").collect();
            if accepted.is_empty() {
                return Err("no Accepted condition".to_string());
            }
            for condition in &accepted {
                expect_condition(condition, "False", Some("TargetNotFound"))?;
            }
            Ok(accepted)
        },
    );
    for condition in accepted {
        assert!(
            condition.message.contains("no-such-port"),
            "the TargetNotFound message should name the port no-such-port: {condition:?}"
        );
    }
}

/// A policy whose Service no route uses still reports its conditions, under an ancestor entry for
/// the Service itself ({group: "", kind: Service}): valid ones and broken ones alike, so mistakes
/// show before the first route arrives.
#[test]
fn unrouted_policy_reports_the_service_as_ancestor() {
    let config = ConfigDir::new();
    let pki = Pki::new();
    write_base(&config, &pki, free_port());
    config.write(
        "services.yaml",
        &documents(&[
            btls_service_yaml("unrouted", free_port()),
            btls_service_yaml("unrouted-broken", free_port()),
        ]),
    );
    config.write(
        "policies.yaml",
        &documents(&[
            Policy::new("unrouted", "unrouted").yaml(),
            Policy::new("unrouted-broken", "unrouted-broken").ca_config_map("no-such-ca").yaml(),
        ]),
    );
    let loader = Loader::start(config.path());

    for (policy, accepted, resolved) in [
        ("unrouted", ("True", "Accepted"), ("True", "ResolvedRefs")),
        (
            "unrouted-broken",
            ("False", "NoValidCACertificate"),
            ("False", "InvalidCACertificateRef"),
        ),
    ] {
        let expected_ref = json!({"group": "", "kind": "Service", "namespace": NS, "name": policy});
        wait_until(
            &format!("policy {policy} to report its conditions under ancestor {expected_ref}"),
            CONVERGE_TIMEOUT,
            || -> Result<(), String> {
                let status = Status(loader.status());
                let ancestors = status.ancestors(policy)?;
                if ancestors.len() != 1 || ancestors[0]["ancestorRef"] != expected_ref {
                    return Err(format!("ancestors: {}", Value::from(ancestors)));
                }
                if ancestors[0]["controllerName"] != CONTROLLER_NAME {
                    return Err(format!("controllerName: {}", ancestors[0]["controllerName"]));
                }
                let conditions = status.conditions(policy)?;
                for (kind, (want, reason)) in [("Accepted", accepted), ("ResolvedRefs", resolved)] {
                    let condition = conditions
                        .iter()
                        .find(|c| c.kind == kind)
                        .ok_or_else(|| format!("no {kind} condition"))?;
                    expect_condition(condition, want, Some(reason))?;
                }
                Ok(())
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Beyond conformance: `backendtls-loader check`

/// Exit 0 when everything parses and every policy is Accepted and ResolvedRefs, 1 when a policy is
/// not, 2 for an unreadable directory or a usage error.
#[test]
fn check_exit_codes() {
    let good = ConfigDir::new();
    write_checkable_objects(&good);
    let run = run_check(good.path(), "json");
    assert_eq!(run.code, Some(0), "check on a good directory: {run:?}");
    let report = run.json();
    for key in ["policies", "gateways", "errors", "problems"] {
        assert!(report[key].is_array(), "check -o json has no {key:?} array: {report}");
    }
    assert_eq!(report["errors"], json!([]), "a good directory reported errors: {report}");
    let status = Status(report.clone());
    for kind in ["Accepted", "ResolvedRefs"] {
        let condition = status.gateway_condition("checked", kind).unwrap_or_else(|e| panic!("{e}"));
        expect_condition(&condition, "True", Some(kind)).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_status_shape(&report);

    let not_accepted = ConfigDir::new();
    write_checkable_objects(&not_accepted);
    not_accepted.write(
        "broken-policy.yaml",
        &Policy::new("missing-ca", "spare")
            .section(BTLS_PORT_NAME)
            .ca_config_map("no-such-ca")
            .yaml(),
    );
    let run = run_check(not_accepted.path(), "json");
    assert_eq!(run.code, Some(1), "check with a policy that is not Accepted: {run:?}");
    let condition = Status(run.json())
        .gateway_condition("missing-ca", "Accepted")
        .unwrap_or_else(|e| panic!("{e}"));
    expect_condition(&condition, "False", Some("NoValidCACertificate"))
        .unwrap_or_else(|e| panic!("{e}"));

    let missing = missing_dir();
    let run = run_check(&missing, "json");
    assert_eq!(run.code, Some(2), "check on the missing directory {}: {run:?}", missing.display());
    assert!(!run.stderr.trim().is_empty(), "check on a missing directory should say why: {run:?}");

    let good_dir = good.path().to_str().expect("UTF-8 path");
    for args in [
        vec!["check", "--config-dir", good_dir, "--no-such-flag"],
        vec!["check", "--config-dir", good_dir, "-o", "xml"],
        vec!["check"],
    ] {
        let run = run_loader_command(&args);
        assert_eq!(run.code, Some(2), "usage error {args:?}: {run:?}");
    }
}

/// A document that does not parse (a misspelt field, or not YAML at all) is reported with its
/// file, document number (1-based) and object when known; the other files are still checked, and
/// the exit code is 1.
#[test]
fn check_reports_broken_documents() {
    let config = ConfigDir::new();
    write_checkable_objects(&config);
    // Document 2 is a BackendTLSPolicy apps/old with a misspelt field (parsed strictly).
    config.write(
        "p.yaml",
        &documents(&[
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\n  namespace: apps\n",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata:\n  \
             name: old\n  namespace: apps\nspec:\n  targetRefs:\n  - group: \"\"\n    \
             kind: Service\n    name: checked\n  validation:\n    hostnmae: abc.example.com\n    \
             caCertificateRefs:\n    - group: \"\"\n      kind: ConfigMap\n      name: ca\n",
        ]),
    );
    // Document 2 of syntax.yaml is not YAML at all.
    config.write(
        "syntax.yaml",
        &documents(&[
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine-too\n  namespace: apps\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n",
        ]),
    );
    let run = run_check(config.path(), "json");
    assert_eq!(run.code, Some(1), "check with broken documents: {run:?}");
    let report = run.json();
    let errors = report["errors"].as_array().cloned().unwrap_or_default();

    let strict = errors
        .iter()
        .find(|error| error["file"].as_str().is_some_and(|file| file.ends_with("p.yaml")))
        .unwrap_or_else(|| panic!("no error for p.yaml in {report}"));
    assert_eq!(strict["document"], 2, "p.yaml's second document is the broken one: {strict}");
    assert!(
        names_object(&strict["object"], "BackendTLSPolicy", "apps", "old"),
        "the error should name the object BackendTLSPolicy apps/old: {strict}"
    );
    assert!(
        strict["reason"].as_str().is_some_and(|reason| reason.contains("hostnmae")),
        "the reason should name the unknown field hostnmae: {strict}"
    );

    let syntax = errors
        .iter()
        .find(|error| error["file"].as_str().is_some_and(|file| file.ends_with("syntax.yaml")))
        .unwrap_or_else(|| panic!("no error for syntax.yaml in {report}"));
    assert_eq!(syntax["document"], 2, "syntax.yaml's second document is the broken one: {syntax}");
    assert!(
        syntax["reason"].as_str().is_some_and(|reason| !reason.is_empty()),
        "the syntax error needs a reason: {syntax}"
    );

    // The rest was still checked.
    let condition = Status(report.clone())
        .gateway_condition("checked", "Accepted")
        .unwrap_or_else(|e| panic!("{e}"));
    expect_condition(&condition, "True", Some("Accepted")).unwrap_or_else(|e| panic!("{e}"));
}

/// What the API server's CEL rules would refuse is refused here too, in its wording: both or
/// neither of caCertificateRefs / wellKnownCACertificates, the same target twice without
/// sectionNames, a SAN entry whose type and field disagree, a malformed hostname. `check` names
/// each policy (as not Accepted, or as an input error) and exits 1.
#[test]
fn check_applies_api_server_validation() {
    let config = ConfigDir::new();
    write_checkable_objects(&config);
    let header = |name: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata:\n  \
             name: {name}\n  namespace: {NS}\nspec:\n  targetRefs:\n  - group: \"\"\n    \
             kind: Service\n    name: spare\n"
        )
    };
    let ca_ref = "    caCertificateRefs:\n    - group: \"\"\n      kind: ConfigMap\n      \
                  name: tls-checks-ca-certificate\n";
    let cases: [(&str, String, Option<&str>); 5] = [
        (
            "both-ca-sources",
            format!(
                "{}  validation:\n{ca_ref}    wellKnownCACertificates: System\n    \
                 hostname: abc.example.com\n",
                header("both-ca-sources")
            ),
            Some("must not contain both CACertificateRefs and WellKnownCACertificates"),
        ),
        (
            "no-ca-source",
            format!("{}  validation:\n    hostname: abc.example.com\n", header("no-ca-source")),
            Some("must specify either CACertificateRefs or WellKnownCACertificates"),
        ),
        (
            "same-target-twice",
            format!(
                "{}  - group: \"\"\n    kind: Service\n    name: spare\n  validation:\n{ca_ref}    \
                 hostname: abc.example.com\n",
                header("same-target-twice")
            ),
            Some(concat!(
                "sectionName must be specified when targetRefs includes 2 or more references ",
                "to the same target"
            )),
        ),
        (
            "san-type-field-mismatch",
            format!(
                "{}  validation:\n{ca_ref}    hostname: abc.example.com\n    subjectAltNames:\n    \
                 - type: Hostname\n      uri: spiffe://abc.example.com/test-identity\n",
                header("san-type-field-mismatch")
            ),
            None,
        ),
        (
            "malformed-hostname",
            format!(
                "{}  validation:\n{ca_ref}    hostname: Not_A_Hostname\n",
                header("malformed-hostname")
            ),
            None,
        ),
    ];
    let texts: Vec<String> = cases.iter().map(|(_, yaml, _)| yaml.clone()).collect();
    config.write("cel.yaml", &documents(&texts));

    let run = run_check(config.path(), "json");
    assert_eq!(run.code, Some(1), "check with policies the API server would refuse: {run:?}");
    let report = run.json();
    for (name, _, wording) in &cases {
        let rejection = rejection_text(&report, name)
            .unwrap_or_else(|| panic!("check does not refuse policy {name}: {report:#}"));
        if let Some(wording) = wording {
            assert!(
                rejection.contains(wording),
                "{name}: the refusal should use the API server's wording {wording:?}: {rejection:?}"
            );
        }
    }
    // The valid policy beside them is unaffected.
    let condition = Status(report.clone())
        .gateway_condition("checked", "Accepted")
        .unwrap_or_else(|e| panic!("{e}"));
    expect_condition(&condition, "True", Some("Accepted")).unwrap_or_else(|e| panic!("{e}"));
}

/// Why `check` refuses policy `name`: its Accepted=False message, or the reason of an input error
/// naming it; `None` when it is neither.
fn rejection_text(report: &Value, name: &str) -> Option<String> {
    let status = Status(report.clone());
    if let Ok(conditions) = status.conditions(name) {
        let refused: Vec<String> = conditions
            .iter()
            .filter(|c| c.kind == "Accepted" && c.status == "False")
            .map(|c| format!("{}: {}", c.reason, c.message))
            .collect();
        if !refused.is_empty() {
            return Some(refused.join("; "));
        }
    }
    report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|error| names_object(&error["object"], "BackendTLSPolicy", NS, name))
        .map(|error| error["reason"].as_str().unwrap_or_default().to_string())
}

/// `-o yaml` is for people, but holds exactly what `-o json` holds, with the same exit code.
#[test]
fn check_yaml_matches_json() {
    let config = ConfigDir::new();
    write_checkable_objects(&config);
    config.write(
        "more.yaml",
        &documents(&[
            Policy::new("missing-ca", "spare")
                .section(BTLS_PORT_NAME)
                .ca_config_map("no-such-ca")
                .yaml(),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n".to_string(),
        ]),
    );
    let json_run = run_check(config.path(), "json");
    let yaml_run = run_check(config.path(), "yaml");
    assert_eq!(yaml_run.code, json_run.code, "exit codes differ: {yaml_run:?} vs {json_run:?}");
    assert!(
        !yaml_run.stdout.trim_start().starts_with('{'),
        "-o yaml printed JSON:\n{}",
        yaml_run.stdout
    );
    assert_eq!(
        yaml_to_json(&yaml_run.stdout),
        json_run.json(),
        "-o yaml and -o json differ\n--- yaml ---\n{}",
        yaml_run.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Beyond conformance: the loader's admin endpoints

/// `/healthz`, `/readyz`, and `/metrics` with the connected Envoy, NACKs, snapshot version and
/// translation time.
#[test]
fn admin_endpoints_and_metrics() {
    let fixture = Fixture::conformance();
    let port = fixture.backend_port(0);
    fixture.config.write("service.yaml", &btls_service_yaml("admin", port));
    fixture
        .config
        .write("route.yaml", &Route::new("admin").rule("/admin", "admin", BTLS_PORT).yaml());
    fixture.config.write("policy.yaml", &Policy::new("admin", "admin").yaml());
    let stack = fixture.start("e2e-policy-admin");
    stack.wait_for_status("/admin", 200);

    let admin = stack.loader.admin_port();
    for path in ["/healthz", "/readyz"] {
        let answer = try_http_get(admin, "127.0.0.1", path);
        assert!(matches!(answer, Ok((200, _))), "loader {path}: {answer:?}");
    }
    let metrics = wait_until(
        "/metrics to show backendtls_loader_connected_envoys 1",
        Duration::from_secs(10),
        || {
            let metrics = loader_metrics(&stack.loader);
            if metric_value(&metrics, "backendtls_loader_connected_envoys") == Some(1.0) {
                Ok(metrics)
            } else {
                Err(metrics)
            }
        },
    );
    for family in [
        "backendtls_loader_xds_nacks_total",
        "backendtls_loader_snapshot_version",
        "backendtls_loader_translation_seconds",
    ] {
        assert!(
            metrics.lines().any(|line| !line.starts_with('#') && line.starts_with(family)),
            "/metrics has no {family} sample:\n{metrics}"
        );
    }
    assert!(
        metric_value(&metrics, "backendtls_loader_snapshot_version").is_some_and(|v| v >= 1.0),
        "backendtls_loader_snapshot_version should be at least 1:\n{metrics}"
    );
    let status = stack.status().0;
    assert!(status["gateways"].is_array(), "/status has no gateways array: {status}");
    assert_status_shape(&status);
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Waits for Accepted=True/Accepted and ResolvedRefs=True/ResolvedRefs under Gateway
/// `same-namespace`, and checks the ancestor entry's shape.
fn assert_accepted_and_resolved(stack: &PolicyStack, policy: &str) {
    for kind in ["Accepted", "ResolvedRefs"] {
        let condition = stack.wait_for_condition(policy, kind, "True", Some(kind));
        assert_eq!(condition.ancestor_ref, gateway_ancestor_ref(), "{policy}: ancestorRef");
        assert_eq!(condition.controller_name, CONTROLLER_NAME, "{policy}: controllerName");
    }
}

/// The ancestorRef of Gateway `same-namespace`, as the loader writes it.
fn gateway_ancestor_ref() -> Value {
    json!({
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": NS,
        "name": GATEWAY,
    })
}

/// Accepted=False/NoValidCACertificate and ResolvedRefs=False/InvalidCACertificateRef.
fn assert_no_valid_ca(stack: &PolicyStack, policy: &str) {
    stack.wait_for_condition(policy, "Accepted", "False", Some("NoValidCACertificate"));
    stack.wait_for_condition(policy, "ResolvedRefs", "False", Some("InvalidCACertificateRef"));
}

/// Requests to `path` come to get 503 with a `backendtls: ` reason (after the change that caused
/// it has reached Envoy), and then every request does.
fn assert_fails_closed(stack: &PolicyStack, path: &str) {
    wait_until(
        &format!("GET {path} to answer 503 with a body starting {FAIL_CLOSED_PREFIX:?}"),
        CONVERGE_TIMEOUT,
        || match stack.get(path) {
            Ok((503, body)) if body.starts_with(FAIL_CLOSED_PREFIX) => Ok(()),
            other => Err(other),
        },
    );
    for body in stack.assert_consistent_status(path, 503) {
        assert!(
            body.starts_with(FAIL_CLOSED_PREFIX),
            "GET {path}: the 503 body should start with {FAIL_CLOSED_PREFIX:?}, got {body:?}"
        );
    }
}

/// Every request NGINX logged for `path` came over TLS with SNI `sni`.
fn assert_backend_sni(stack: &PolicyStack, path: &str, sni: &str) {
    assert_backend_field(stack, path, "SNI", |request| &request.sni, sni);
}

/// Every request NGINX logged for `path` (at least one) has `field` == `expected`.
fn assert_backend_field(
    stack: &PolicyStack,
    path: &str,
    what: &str,
    field: impl Fn(&BackendRequest) -> &String,
    expected: &str,
) {
    let requests = stack.wait_for_backend_requests(path);
    let wrong: Vec<_> = requests.iter().filter(|request| field(request) != expected).collect();
    assert!(wrong.is_empty(), "requests to {path} with {what} other than {expected:?}: {wrong:#?}");
}

/// Polls `/status` until Gateway `gateway`'s condition `kind` is `status` (and `reason`).
fn wait_for_gateway_condition(
    loader: &Loader,
    gateway: &str,
    kind: &str,
    status: &str,
    reason: Option<&str>,
) -> Condition {
    wait_until(
        &format!("Gateway {NS}/{gateway} to report {kind}={status} ({reason:?})"),
        CONVERGE_TIMEOUT,
        || {
            let condition = Status(loader.status()).gateway_status_condition(gateway, kind)?;
            expect_condition(&condition, status, reason).map(|()| condition)
        },
    )
}

/// Waits until every condition of every ancestor entry of `policy` has observedGeneration
/// `generation` (and there is at least one).
fn wait_for_observed_generation(loader: &Loader, policy: &str, generation: i64) {
    wait_until(
        &format!("every condition of {policy} to have observedGeneration {generation}"),
        CONVERGE_TIMEOUT,
        || -> Result<(), String> {
            let conditions = Status(loader.status()).conditions(policy)?;
            if conditions.is_empty() {
                return Err("no conditions".to_string());
            }
            let stale: Vec<_> =
                conditions.iter().filter(|c| c.observed_generation != generation).collect();
            if stale.is_empty() {
                Ok(())
            } else {
                Err(format!("{stale:?}"))
            }
        },
    );
    let gateway_ancestor = Status(loader.status())
        .ancestors(policy)
        .unwrap_or_default()
        .iter()
        .any(|ancestor| is_gateway_ref(&ancestor["ancestorRef"], GATEWAY));
    assert!(gateway_ancestor, "{policy} should have the Gateway {GATEWAY} among its ancestors");
}

/// A directory `check` accepts: Gateway, CAs, Services `checked` and `spare` with a route to each,
/// and policy `checked` (`spare` is for the tests' broken policies).
fn write_checkable_objects(config: &ConfigDir) {
    let pki = Pki::new();
    write_base(config, &pki, 18080);
    config.write(
        "service.yaml",
        &documents(&[btls_service_yaml("checked", 18443), btls_service_yaml("spare", 18444)]),
    );
    config.write(
        "route.yaml",
        &Route::new("checked")
            .rule("/", "checked", BTLS_PORT)
            .rule("/spare", "spare", BTLS_PORT)
            .yaml(),
    );
    config.write("policy.yaml", &Policy::new("checked", "checked").section(BTLS_PORT_NAME).yaml());
}

/// Whether an error's `object` names kind/namespace/name, as text (`BackendTLSPolicy apps/old`)
/// or as an object with those fields.
fn names_object(object: &Value, kind: &str, namespace: &str, name: &str) -> bool {
    match object {
        Value::String(text) => text.contains(kind) && text.contains(&format!("{namespace}/{name}")),
        Value::Object(_) => {
            object["kind"] == kind && object["namespace"] == namespace && object["name"] == name
        }
        _ => false,
    }
}

/// The documented shape of every policy entry: `{namespace, name, status: {ancestors: [
/// {ancestorRef: {group, kind, namespace, name}, controllerName, conditions: [{type, status,
/// reason, message, observedGeneration}]}]}}`.
fn assert_status_shape(report: &Value) {
    let policies = report["policies"].as_array().unwrap_or_else(|| panic!("no policies: {report}"));
    assert!(!policies.is_empty(), "no policies in {report}");
    for policy in policies {
        assert!(policy["namespace"].is_string() && policy["name"].is_string(), "{policy}");
        let ancestors = policy["status"]["ancestors"]
            .as_array()
            .unwrap_or_else(|| panic!("no status.ancestors: {policy}"));
        assert!(!ancestors.is_empty(), "empty status.ancestors: {policy}");
        for ancestor in ancestors {
            for field in ["group", "kind", "namespace", "name"] {
                assert!(
                    ancestor["ancestorRef"][field].is_string(),
                    "ancestorRef.{field}: {policy}"
                );
            }
            assert_eq!(ancestor["controllerName"], CONTROLLER_NAME, "{policy}");
            let conditions = ancestor["conditions"]
                .as_array()
                .unwrap_or_else(|| panic!("no conditions: {policy}"));
            for condition in conditions {
                for field in ["type", "reason", "message"] {
                    assert!(condition[field].is_string(), "condition.{field}: {policy}");
                }
                assert!(
                    condition["status"] == "True" || condition["status"] == "False",
                    "condition.status: {policy}"
                );
                assert!(condition["observedGeneration"].is_i64(), "observedGeneration: {policy}");
            }
        }
    }
}

/// The loader's `/metrics` text.
fn loader_metrics(loader: &Loader) -> String {
    match try_http_get(loader.admin_port(), "127.0.0.1", "/metrics") {
        Ok((200, body)) => body,
        other => panic!("loader /metrics: {other:?}"),
    }
}

/// The value of the unlabelled sample `name` in Prometheus text.
fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (sample, value) = line.split_once(' ')?;
        (sample == name).then(|| value.trim().parse().ok()).flatten()
    })
}
