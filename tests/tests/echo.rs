//! Self-tests of the echo backend and the conformance expectation helpers: plaintext HTTP/1.1 and
//! h2c, TLS with SNI/ALPN/version reporting, client certificates, plaintext sent to a TLS port,
//! gRPC, and TLS that a real Envoy 1.40 originates.

use std::sync::Arc;
use std::time::Duration;

use backendtls_e2e::conformance::{
    expect_eventually, expect_failure, send, BackendRequest, Convergence, Expect, Gateway, Request,
    INFRA_NS,
};
use backendtls_e2e::echo::{grpc, EchoReport, EchoServer, Seen, TlsOptions, HTTP_1_1, HTTP_2};
use backendtls_e2e::{free_port, static_listener_bootstrap, CertifiedKey, Envoy, TestCa};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

const POD_V1: &str = "infra-backend-v1-5d8f9c-x2k4";
const TLS_POD: &str = "tls-backend-7c9d5-q8r2";
const HOSTNAME: &str = "abc.example.com";

/// Expectations that must fail, quickly.
fn short() -> Convergence {
    Convergence { max_time: Duration::from_millis(600), ..Convergence::default() }
}

fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

struct Certs {
    ca: TestCa,
    server: CertifiedKey,
    client_ca: TestCa,
    client: CertifiedKey,
}

fn certs() -> Certs {
    let ca = TestCa::new("echo test CA");
    let server = ca.issue_server(
        "default",
        &[HOSTNAME, "other.example.com"],
        &["spiffe://abc.example.com/test-identity"],
    );
    let client_ca = TestCa::new("echo test client CA");
    let client = client_ca.issue_client("gateway client");
    Certs { ca, server, client_ca, client }
}

#[test]
fn plaintext_echo_reports_what_it_saw_and_records_it() {
    let echo = EchoServer::plain(INFRA_NS, POD_V1);
    let request = Request::get("/v2/example?animal=whale")
        .host("example.com:8080")
        .header("Version", "two")
        .header("x-multi", "a")
        .header("X-Multi", "b");
    let response = send(&Gateway::from(echo.port()), &request).expect("echo answers");
    assert_eq!(response.status, 200);
    let report = response.echo().expect("echo JSON");
    assert_eq!(report.path, "/v2/example?animal=whale");
    assert_eq!(report.host, "example.com:8080");
    assert_eq!(report.method, "GET");
    assert_eq!(report.proto, HTTP_1_1);
    assert_eq!(report.namespace, INFRA_NS);
    assert_eq!(report.pod, POD_V1);
    assert_eq!(report.http_port, echo.port().to_string());
    assert_eq!(report.headers["version"], ["two"]);
    assert_eq!(report.headers["x-multi"], ["a", "b"], "both values, in order");
    assert_eq!(report.header("X-MULTI").as_deref(), Some("a,b"));
    assert!(!report.headers.contains_key("host"), "Host is reported as `host` only");
    assert!(report.tls.is_none());
    assert_eq!(echo.requests(), [report]);

    // The upstream harness's X-Echo-Set-Header sets response headers.
    let response = send(
        &Gateway::from(echo.port()),
        &Request::get("/").header("X-Echo-Set-Header", "X-Answer: 42"),
    )
    .unwrap();
    assert_eq!(response.header("x-answer").as_deref(), Some("42"));
}

#[test]
fn expectations_compare_like_the_upstream_harness() {
    let echo = EchoServer::plain(INFRA_NS, POD_V1);
    let gateway = Gateway::from(echo.port());
    let base = Expect::get("/one?x=1").host("example.com").header("Version", "one");
    expect_eventually(echo.port(), &base.clone().backend("infra-backend-v1"));
    expect_eventually(
        echo.port(),
        &base.clone().backend_request(
            BackendRequest::path("/one?x=1").header("version", "one").absent("x-absent"),
        ),
    );

    let must_fail = [
        ("another backend", base.clone().backend("infra-backend-v2")),
        ("another namespace", base.clone().namespace("gateway-conformance-web-backend")),
        ("another status", base.clone().status(404)),
        ("another backend path", base.clone().backend_request(BackendRequest::path("/two"))),
        (
            "another header value",
            base.clone().backend_request(BackendRequest::path("/one?x=1").header("Version", "two")),
        ),
        (
            "a header that should be absent",
            base.clone().backend_request(BackendRequest::path("/one?x=1").absent("VERSION")),
        ),
        ("a method", base.clone().backend_request(BackendRequest::path("/one?x=1").method("POST"))),
        ("TLS with an SNI", base.clone().sni(HOSTNAME)),
        ("a response header", base.clone().response_header("x-missing", "1")),
    ];
    for (what, expectation) in must_fail {
        let error = short().eventually(&gateway, &expectation).expect_err(what);
        assert!(error.contains("last difference"), "{what}: {error}");
    }

    // A 200 where a failure is expected fails at once, not after the time budget.
    let started = std::time::Instant::now();
    let error = Convergence::default().failure(&gateway, &Request::get("/")).unwrap_err();
    assert!(error.contains("answered 200"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A port that refuses connections is a transport error: it never counts as a failure.
    let closed = Gateway::from(free_port());
    assert!(short().failure(&closed, &Request::get("/")).unwrap_err().contains("does not count"));
}

#[test]
fn plaintext_port_speaks_h2c_and_grpc() {
    let echo = EchoServer::plain(INFRA_NS, POD_V1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(local(echo.port())).await.unwrap();
        h2_get(tcp, "http", "h2c.example.com", "/h2?x=y").await
    });
    assert_eq!(report.proto, HTTP_2);
    assert_eq!(report.host, "h2c.example.com");
    assert_eq!(report.path, "/h2?x=y");

    let answer = grpc::call(local(echo.port()), "grpc.example.com", grpc::ECHO, &[("x-meta", "v")])
        .expect("gRPC Echo answers");
    let assertions = answer.assertions.expect("assertions");
    assert_eq!(assertions.fully_qualified_method, grpc::ECHO);
    assert_eq!(assertions.authority, "grpc.example.com");
    assert_eq!(assertions.header("x-meta").as_deref(), Some("v"));
    let context = assertions.context.expect("context");
    assert_eq!((context.namespace.as_str(), context.pod.as_str()), (INFRA_NS, POD_V1));
    assert!(assertions.tls_assertions.is_none());
    let status =
        grpc::call(local(echo.port()), "grpc.example.com", grpc::ECHO_THREE, &[]).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let grpc_requests: Vec<EchoReport> =
        echo.requests().into_iter().filter(|r| r.path.starts_with("/gateway_api")).collect();
    assert_eq!(grpc_requests.len(), 2, "gRPC calls are recorded too");
    assert_eq!(
        (grpc_requests[0].method.as_str(), grpc_requests[0].proto.as_str()),
        ("POST", HTTP_2)
    );
}

#[test]
fn tls_echo_reports_sni_alpn_and_version() {
    let certs = certs();
    let echo = EchoServer::builder(INFRA_NS, TLS_POD)
        .tls(TlsOptions::new(&certs.server))
        .tls(TlsOptions::new(&certs.server).tls12_only().alpn(&["http/1.1"]))
        .start();
    let (tls13, tls12) = (echo.ports()[0], echo.ports()[1]);

    // HTTP/1.1 client offering only http/1.1, SNI from the Host.
    let gateway = Gateway::https(local(tls13), certs.ca.cert_pem());
    let response = send(&gateway, &Request::get("/secure").host(HOSTNAME)).expect("TLS answer");
    let tls = response.echo().unwrap().tls.expect("TLS reported");
    assert_eq!(tls.server_name, HOSTNAME);
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.negotiated_protocol, "http/1.1");
    assert_eq!(tls.alpn_offered, ["http/1.1"]);
    assert!(tls.cipher_suite.starts_with("TLS13_"), "{}", tls.cipher_suite);
    assert!(tls.peer_certificates.is_empty() && tls.client_certificate.is_none());
    expect_eventually(&gateway, &Expect::get("/secure").host(HOSTNAME).sni(HOSTNAME));
    let wrong_sni = Expect::get("/secure").host(HOSTNAME).sni("other.example.com");
    assert!(short().eventually(&gateway, &wrong_sni).is_err());

    let gateway12 = Gateway::https(local(tls12), certs.ca.cert_pem());
    let request = Request::get("/").host("other.example.com");
    let tls = send(&gateway12, &request).unwrap().echo().unwrap().tls.unwrap();
    assert_eq!((tls.version.as_str(), tls.server_name.as_str()), ("TLSv1.2", "other.example.com"));

    // HTTP/2 chosen by ALPN.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let stream = tls_connect(tls13, HOSTNAME, &certs.ca, &["h2", "http/1.1"]).await.unwrap();
        h2_get(stream, "https", HOSTNAME, "/h2").await
    });
    assert_eq!(report.proto, HTTP_2);
    let tls = report.tls.unwrap();
    assert_eq!((tls.negotiated_protocol.as_str(), tls.server_name.as_str()), ("h2", HOSTNAME));
    assert_eq!(tls.alpn_offered, ["h2", "http/1.1"]);

    // A client that does not trust the echo: the failed handshake is recorded with its SNI.
    let stranger = TestCa::new("not the echo's CA");
    let untrusting = Gateway::https(local(tls13), stranger.cert_pem());
    assert!(send(&untrusting, &Request::get("/").host(HOSTNAME)).is_err());
    let failure = wait_for_handshake_failure(&echo);
    assert_eq!((failure.port, failure.sni.as_deref()), (tls13, Some(HOSTNAME)));
    // rustls says either "received fatal alert: …" or "tls handshake eof", depending on timing.
    assert!(!failure.error.is_empty());
}

#[test]
fn client_certificates_are_reported_and_verified() {
    let certs = certs();
    let echo = EchoServer::builder(INFRA_NS, TLS_POD)
        .tls(TlsOptions::new(&certs.server).verify_client_certificates(certs.client_ca.cert_pem()))
        .tls(TlsOptions::new(&certs.server).require_client_certificate(certs.client_ca.cert_pem()))
        .start();
    let (if_given, required) = (echo.ports()[0], echo.ports()[1]);

    let with_cert =
        Gateway::https_with_client_certificate(local(if_given), certs.ca.cert_pem(), &certs.client);
    let tls =
        send(&with_cert, &Request::get("/").host(HOSTNAME)).unwrap().echo().unwrap().tls.unwrap();
    let names = tls.client_certificate.expect("client certificate reported");
    assert_eq!(names.subject, "CN=gateway client");
    assert!(names.dns_names.is_empty() && names.uris.is_empty());
    assert_eq!(tls.peer_certificates.len(), 1);
    expect_eventually(
        &with_cert,
        &Expect::get("/").host(HOSTNAME).client_cert(&certs.client.cert_pem),
    );
    let other_client = certs.client_ca.issue_client("someone else");
    let wrong = Expect::get("/").host(HOSTNAME).client_cert(&other_client.cert_pem);
    assert!(short().eventually(&with_cert, &wrong).is_err());

    // Verify-if-given lets a client without a certificate in; require does not.
    let without = Gateway::https(local(if_given), certs.ca.cert_pem());
    let tls =
        send(&without, &Request::get("/").host(HOSTNAME)).unwrap().echo().unwrap().tls.unwrap();
    assert!(tls.client_certificate.is_none());
    let without = Gateway::https(local(required), certs.ca.cert_pem());
    assert!(send(&without, &Request::get("/").host(HOSTNAME)).is_err());
    let failure = wait_for_handshake_failure(&echo);
    assert_eq!(failure.port, required);
    // A certificate from a CA the echo does not trust is refused as well.
    let foreign = certs.ca.issue_client("foreign client");
    let foreign =
        Gateway::https_with_client_certificate(local(required), certs.ca.cert_pem(), &foreign);
    assert!(send(&foreign, &Request::get("/").host(HOSTNAME)).is_err());
    let with_cert =
        Gateway::https_with_client_certificate(local(required), certs.ca.cert_pem(), &certs.client);
    assert_eq!(send(&with_cert, &Request::get("/").host(HOSTNAME)).unwrap().status, 200);
    assert!(echo.requests().iter().all(|r| r
        .tls
        .as_ref()
        .and_then(|t| t.client_certificate.as_ref())
        .is_none_or(|c| c.subject == "CN=gateway client")));
}

#[test]
fn plaintext_sent_to_a_tls_port_is_recorded_and_not_answered() {
    let certs = certs();
    let echo = EchoServer::tls(INFRA_NS, TLS_POD, TlsOptions::new(&certs.server));
    let error = send(&Gateway::from(echo.port()), &Request::get("/secret").host(HOSTNAME))
        .expect_err("no HTTP answer to plaintext on a TLS port");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{error}"
    );
    let attempts = echo.plaintext_on_tls();
    assert_eq!(attempts.len(), 1, "{:?}", echo.seen());
    assert_eq!(attempts[0].first_line, "GET /secret HTTP/1.1");
    assert_eq!(attempts[0].port, echo.port());
    assert!(echo.requests().is_empty());

    // A connection that sends nothing is a probe, not an attempt.
    drop(std::net::TcpStream::connect(local(echo.port())).unwrap());
    let gateway = Gateway::https(local(echo.port()), certs.ca.cert_pem());
    send(&gateway, &Request::get("/after").host(HOSTNAME)).unwrap();
    assert_eq!(echo.plaintext_on_tls().len(), 1);
    assert!(matches!(echo.seen().last(), Some(Seen::Request(r)) if r.path == "/after"));
}

#[test]
fn dropping_the_echo_closes_its_ports() {
    let echo = EchoServer::plain(INFRA_NS, POD_V1);
    let port = echo.port();
    assert!(backendtls_e2e::port_accepts(port));
    drop(echo);
    assert!(!backendtls_e2e::port_accepts(port));
}

/// Envoy 1.40 originating TLS to the echo: the echo reports the cluster's SNI, ALPN, protocol and
/// client certificate; a cluster that sends plaintext to the TLS port is caught by the record.
#[test]
fn envoy_originated_tls_reaches_the_echo_with_its_sni() {
    let certs = certs();
    let echo = EchoServer::tls(
        INFRA_NS,
        TLS_POD,
        TlsOptions::new(&certs.server).verify_client_certificates(certs.client_ca.cert_pem()),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let ca = file("ca.crt", certs.ca.cert_pem());
    let client_cert = file("client.crt", &certs.client.cert_pem);
    let client_key = file("client.key", &certs.client.key_pem);
    let port = echo.port();
    let endpoint = |name: &str| {
        format!(
            "{{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}] }}"
        )
    };
    let tls = |alpn: &str| {
        format!(
            r#"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {HOSTNAME}
        common_tls_context:
          alpn_protocols: [{alpn}]
          tls_params: {{ tls_maximum_protocol_version: TLSv1_3 }}
          tls_certificates: [{{ certificate_chain: {{ filename: {client_cert} }}, private_key: {{ filename: {client_key} }} }}]
          validation_context:
            trusted_ca: {{ filename: {ca} }}
            match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: {HOSTNAME} }} }}]"#
        )
    };
    let clusters = format!(
        r#"
  - name: tls_h1
    type: STATIC
    load_assignment: {h1_endpoint}{h1_tls}
  - name: tls_h2
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment: {h2_endpoint}{h2_tls}
  - name: plaintext_to_tls_port
    type: STATIC
    load_assignment: {plain_endpoint}"#,
        h1_endpoint = endpoint("tls_h1"),
        h1_tls = tls("http/1.1"),
        h2_endpoint = endpoint("tls_h2"),
        h2_tls = tls("h2"),
        plain_endpoint = endpoint("plaintext_to_tls_port"),
    );
    let routes = r#"
              - { match: { prefix: "/h1" }, route: { cluster: tls_h1 } }
              - { match: { prefix: "/h2" }, route: { cluster: tls_h2 } }
              - { match: { prefix: "/gateway_api_conformance." }, route: { cluster: tls_h2 } }
              - { match: { prefix: "/plain" }, route: { cluster: plaintext_to_tls_port } }"#;
    let (admin, listener) = (free_port(), free_port());
    let bootstrap = static_listener_bootstrap(
        admin,
        listener,
        r"ACCESS %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n",
        routes,
        "",
        &clusters,
    );
    let envoy = Envoy::start(&bootstrap, admin);

    let through_envoy =
        |path: &str| Expect::get(path).host(HOSTNAME).sni(HOSTNAME).backend("tls-backend");
    let response =
        expect_eventually(listener, &through_envoy("/h1").client_cert(&certs.client.cert_pem));
    let report = response.echo().unwrap();
    assert_eq!(report.proto, HTTP_1_1);
    let tls = report.tls.unwrap();
    assert_eq!((tls.version.as_str(), tls.negotiated_protocol.as_str()), ("TLSv1.3", "http/1.1"));
    assert_eq!(tls.client_certificate.unwrap().subject, "CN=gateway client");

    let report = expect_eventually(listener, &through_envoy("/h2")).echo().unwrap();
    assert_eq!(report.proto, HTTP_2);
    assert_eq!(report.tls.unwrap().negotiated_protocol, "h2");

    // gRPC: h2c from the client to Envoy, TLS with ALPN h2 from Envoy to the echo.
    let answer =
        grpc::call(local(listener), HOSTNAME, grpc::ECHO, &[]).expect("gRPC through Envoy");
    let tls = answer.assertions.unwrap().tls_assertions.expect("the echo saw TLS");
    assert_eq!((tls.server_name.as_str(), tls.negotiated_protocol.as_str()), (HOSTNAME, "h2"));

    assert!(echo.plaintext_on_tls().is_empty(), "nothing plaintext so far: {:?}", echo.seen());
    let statuses = expect_failure(listener, &Request::get("/plain").host(HOSTNAME));
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let attempts = echo.plaintext_on_tls();
    assert!(!attempts.is_empty());
    assert!(attempts.iter().all(|a| a.first_line == "GET /plain HTTP/1.1"), "{attempts:?}");
    assert!(envoy.stat("cluster.tls_h1.ssl.handshake") >= 1);
}

fn wait_for_handshake_failure(echo: &EchoServer) -> backendtls_e2e::echo::HandshakeFailure {
    // The server records the failure after the client has seen it: wait for the record.
    backendtls_e2e::wait_until(
        "the echo to record a failed handshake",
        Duration::from_secs(5),
        || echo.handshake_failures().pop(),
    )
}

async fn tls_connect(
    port: u16,
    sni: &str,
    ca: &TestCa,
    alpn: &[&str],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = RootCertStore::empty();
    for cert in backendtls_e2e::echo::tls::certificates(ca.cert_pem()) {
        roots.add(cert).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(local(port)).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// One HTTP/2 GET on `io` (prior knowledge, or after ALPN `h2`), answering the echo's report.
async fn h2_get<S>(io: S, scheme: &str, authority: &str, path: &str) -> EchoReport
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("{scheme}://{authority}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("h2 answer");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).expect("echo JSON")
}

/// The support code against today's real stack: the echo as the TLS backend of a BackendTLSPolicy
/// (loader over ADS, Envoy 1.40), expectations through the Gateway, and the typed status view
/// reading the loader's real `/status`.
#[test]
fn echo_behind_a_backend_tls_policy_with_status_from_the_real_loader() {
    use backendtls_e2e::conformance::{status, StatusDocument, Want};
    use backendtls_e2e::policy_support::{
        btls_service_yaml, write_base, ConfigDir, Pki, Policy, Route, BTLS_PORT, BTLS_PORT_NAME,
        CONTROLLER_NAME, GATEWAY, MISMATCH_CA_CONFIG_MAP, NS, ROUTE_HOST,
    };
    use backendtls_e2e::{ads_bootstrap, Ads, Loader};

    let pki = Pki::new();
    let echo = EchoServer::tls(NS, TLS_POD, TlsOptions::new(&pki.backend_cert));
    let config = ConfigDir::new();
    let gateway_port = free_port();
    write_base(&config, &pki, gateway_port);
    let route = Route::new("backendtlspolicy")
        .rule("/backendtlspolicy", "backendtlspolicy-test", BTLS_PORT)
        .rule("/cert-mismatch", "cert-mismatch-test", BTLS_PORT);
    config.write("route.yaml", &route.yaml());
    config.write("service.yaml", &btls_service_yaml("backendtlspolicy-test", echo.port()));
    config.write("mismatch-service.yaml", &btls_service_yaml("cert-mismatch-test", echo.port()));
    let policy = Policy::new("normative-test", "backendtlspolicy-test")
        .section(BTLS_PORT_NAME)
        .generation(3);
    config.write("policy.yaml", &policy.yaml());
    let mismatch = Policy::new("cert-mismatch", "cert-mismatch-test")
        .section(BTLS_PORT_NAME)
        .ca_config_map(MISMATCH_CA_CONFIG_MAP);
    config.write("mismatch-policy.yaml", &mismatch.yaml());
    let loader = Loader::start(config.path());
    let envoy_admin = free_port();
    let _envoy = Envoy::start(
        &ads_bootstrap(loader.xds_port(), envoy_admin, "echo-policy", Ads::Delta),
        envoy_admin,
    );

    status::wait_for(&loader, "normative-test Accepted and ResolvedRefs at generation 3", |doc| {
        let policy = doc.policy(NS, "normative-test")?;
        policy.condition(NS, GATEWAY, Some(3), &Want::true_("Accepted"))?;
        policy.condition(NS, GATEWAY, Some(3), &Want::true_("ResolvedRefs"))
    });
    let doc = StatusDocument::of(&loader).unwrap();
    let ancestor = &doc.policy(NS, "normative-test").unwrap().status.ancestors[0];
    assert_eq!(ancestor.controller_name, CONTROLLER_NAME);
    assert!(doc
        .policy(NS, "normative-test")
        .unwrap()
        .condition(NS, GATEWAY, Some(2), &Want::true_("Accepted"))
        .is_err());
    assert!(doc.gateway(NS, GATEWAY).is_ok());
    assert!(doc.snapshot_version.is_some_and(|v| v > 0));

    let expected = Expect::get("/backendtlspolicy")
        .host(ROUTE_HOST)
        .sni(ROUTE_HOST)
        .backend("tls-backend")
        .namespace(NS);
    expect_eventually(gateway_port, &expected);
    // Envoy refuses the echo's certificate under the mismatching CA: never a 200, and the echo
    // saw Envoy's handshake with the policy's SNI but no request.
    expect_failure(gateway_port, &Request::get("/cert-mismatch").host(ROUTE_HOST));
    let failure = wait_for_handshake_failure(&echo);
    assert_eq!(failure.sni.as_deref(), Some(ROUTE_HOST));
    assert!(echo.requests().iter().all(|r| r.path == "/backendtlspolicy"));
    assert!(echo.plaintext_on_tls().is_empty(), "{:?}", echo.plaintext_on_tls());
}
