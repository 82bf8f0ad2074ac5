//! HTTPS listeners against a real Envoy and the real loader: our own versions of the upstream
//! conformance tests HTTPRouteHTTPSListener, GatewaySecret* (ReferenceGrant) and
//! GatewayInvalidTLSConfiguration (http-core.md §4.12, §4.31, §4.34-§4.37), in file mode, plus
//! certificate rotation over SDS without a listener change, TLS re-encryption to a backend with a
//! BackendTLSPolicy, and the Host port reaching the backend.

use backendtls_e2e::certs::{CertifiedKey, TestCa};
use backendtls_e2e::conformance::status::wait_for;
use backendtls_e2e::conformance::Stack;
use backendtls_e2e::conformance::{
    expect_eventually, expect_failure, send, BackendRequest, Expect, ExpectedListener, Gateway,
    Request, Want, INFRA_NS,
};
use backendtls_e2e::echo::tls::TlsOptions;
use backendtls_e2e::echo::EchoServer;
use backendtls_e2e::policy_support::{documents, ConfigDir};
use backendtls_e2e::{free_port, wait_until, Loader};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "backendtls.dev/loader";
const WEB_NS: &str = "web-backend";

fn address(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A `kubernetes.io/tls` Secret (base64 `data`, as the API stores it).
fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        base64(cert_pem),
        base64(key_pem)
    )
}

fn secret_of(namespace: &str, name: &str, cert: &CertifiedKey) -> String {
    tls_secret(namespace, name, &cert.cert_pem, &cert.key_pem)
}

/// A Gateway in the infra namespace with `listeners` (YAML flow mappings).
fn gateway(name: &str, listeners: &[String]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: {INFRA_NS}}}\n\
         spec:\n  gatewayClassName: backendtls\n  listeners:\n{}",
        listeners.iter().map(|l| format!("  - {l}\n")).collect::<String>()
    )
}

/// An HTTPS listener from all namespaces with `tls` (a YAML flow mapping).
fn https(name: &str, port: u16, hostname: Option<&str>, tls: &str) -> String {
    let hostname = hostname.map(|h| format!(", hostname: \"{h}\"")).unwrap_or_default();
    format!(
        "{{name: {name}, protocol: HTTPS, port: {port}{hostname}, \
         allowedRoutes: {{namespaces: {{from: All}}}}, tls: {tls}}}"
    )
}

/// The echo backends `infra-backend-v1` and `v2` (plaintext) and their Services (port 8080).
fn backend_yaml(name: &str, echo: &EchoServer) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {INFRA_NS}}}\n\
         spec: {{ports: [{{name: http, port: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {INFRA_NS}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n\
         ports: [{{name: http, port: {}}}]\n",
        echo.port()
    )
}

fn route(name: &str, parent: &str, hostnames: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {INFRA_NS}}}\n\
         spec:\n  parentRefs: [{parent}]\n  hostnames: {hostnames}\n  \
         rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"
    )
}

fn get(host: &str, path: &str, backend: &str) -> Expect {
    Expect::request(Request::get(path).host(host)).backend(backend)
}

/// Upstream `HTTPRouteHTTPSListener`: each listener hostname gets its own certificate by SNI, the
/// listener without hostname takes every other name; routes are chosen by Host as on HTTP
/// listeners (`unknown-example.org` completes TLS and gets 404). An SNI that no listener takes
/// gets no handshake at all. The port in Host reaches the backend as sent.
#[test]
fn https_listeners_serve_each_hostname_its_certificate() {
    let (v1, v2) = (
        EchoServer::plain(INFRA_NS, "infra-backend-v1-5d8f9c-x2k4"),
        EchoServer::plain(INFRA_NS, "infra-backend-v2-6b7d4f-p9q1"),
    );
    let (ca, second_ca) = (TestCa::new("listener CA"), TestCa::new("second listener CA"));
    let cert = ca.issue(&["example.org", "unknown-example.org"]);
    let second = second_ca.issue(&["second-example.org"]);
    let (port, sni_only_port) = (free_port(), free_port());
    let manifests = documents(&[
        backend_yaml("infra-backend-v1", &v1),
        backend_yaml("infra-backend-v2", &v2),
        secret_of(INFRA_NS, "tls-validity-checks-certificate", &cert),
        secret_of(INFRA_NS, "second", &second),
        gateway(
            "same-namespace-with-https-listener",
            &[
                https(
                    "https",
                    port,
                    None,
                    "{certificateRefs: [{name: tls-validity-checks-certificate}]}",
                ),
                https(
                    "https-with-hostname",
                    port,
                    Some("second-example.org"),
                    "{certificateRefs: [{group: \"\", kind: Secret, name: second}]}",
                ),
            ],
        ),
        gateway(
            "sni-only",
            &[https(
                "https",
                sni_only_port,
                Some("second-example.org"),
                "{certificateRefs: [{name: second}]}",
            )],
        ),
        route(
            "httproute-https-test",
            "{name: same-namespace-with-https-listener}",
            "[example.org]",
            "infra-backend-v1",
        ),
        route(
            "httproute-https-test-no-hostname",
            "{name: same-namespace-with-https-listener, sectionName: https-with-hostname}",
            "[]",
            "infra-backend-v2",
        ),
        route("sni-only", "{name: sni-only}", "[]", "infra-backend-v2"),
    ]);
    let stack = Stack::start("https-listeners", &[("manifests.yaml", manifests)]);
    wait_for(&stack.loader, "the HTTPS Gateway and its routes accepted", |doc| {
        doc.gateway_and_routes_accepted(
            (INFRA_NS, "same-namespace-with-https-listener"),
            &[(INFRA_NS, "httproute-https-test"), (INFRA_NS, "httproute-https-test-no-hostname")],
            CONTROLLER,
        )
    });
    let first = Gateway::https(address(port), ca.cert_pem());
    let by_second = Gateway::https(address(port), second_ca.cert_pem());
    expect_eventually(&first, &get("example.org", "/", "infra-backend-v1"));
    expect_eventually(
        &first,
        &Expect::request(Request::get("/").host("unknown-example.org")).status(404),
    );
    expect_eventually(&by_second, &get("second-example.org", "/", "infra-backend-v2"));
    // The certificate follows the SNI: the first CA's client cannot verify second-example.org's
    // chain, nor the second CA's example.org's.
    let error = send(&first, &Request::get("/").host("second-example.org")).unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    let error = send(&by_second, &Request::get("/").host("example.org")).unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    // SNI picks the certificate, Host the route: SNI example.org with Host second-example.org is
    // routed by its Host.
    expect_eventually(
        &first,
        &Expect::request(Request::get("/").host("second-example.org").sni("example.org"))
            .backend("infra-backend-v2"),
    );
    // The port in Host is ignored for matching and reaches the backend as sent.
    let host = format!("example.org:{port}");
    expect_eventually(
        &first,
        &get(&host, "/port", "infra-backend-v1")
            .backend_request(BackendRequest::path("/port").host(&host)),
    );
    // Only hostname listeners: an SNI none of them takes gets no certificate at all.
    let sni_only = Gateway::https(address(sni_only_port), second_ca.cert_pem());
    expect_eventually(&sni_only, &get("second-example.org", "/", "infra-backend-v2"));
    let error = send(&sni_only, &Request::get("/").host("other.org")).unwrap_err();
    assert!(!error.to_string().is_empty());
    let _ = &stack.envoy;
}

/// Upstream `GatewaySecretMissingReferenceGrant`, `GatewaySecretInvalidReferenceGrant`,
/// `GatewaySecretReferenceGrantAllInNamespace` and `GatewaySecretReferenceGrantSpecific`, one
/// after the other on one loader (a grant in the Secret's namespace covers every Gateway of the
/// infra namespace, so each step replaces the grants): a certificate in another namespace needs a
/// ReferenceGrant right in every field; deleting it revokes the listener at once.
#[test]
fn certificates_in_other_namespaces_need_a_reference_grant() {
    let v1 = EchoServer::plain(INFRA_NS, "infra-backend-v1-5d8f9c-x2k4");
    let ca = TestCa::new("web CA");
    let cert = ca.issue(&["secure.example.org"]);
    let port = free_port();
    let manifests = documents(&[
        backend_yaml("infra-backend-v1", &v1),
        secret_of(WEB_NS, "certificate", &cert),
        gateway(
            "gateway-secret-reference-grant",
            &[https(
                "https",
                port,
                None,
                &format!("{{certificateRefs: [{{name: certificate, namespace: {WEB_NS}}}]}}"),
            )],
        ),
        route("to-v1", "{name: gateway-secret-reference-grant}", "[]", "infra-backend-v1"),
    ]);
    let stack = Stack::start("https-reference-grants", &[("manifests.yaml", manifests)]);
    let listener_is = |attached_routes: i32, want: Want, programmed: Want, step: &str| {
        wait_for(&stack.loader, step, |doc| {
            doc.gateway(INFRA_NS, "gateway-secret-reference-grant")?.has_listeners(&[
                ExpectedListener {
                    name: "https".into(),
                    supported_kinds: vec!["HTTPRoute".into()],
                    attached_routes,
                    conditions: vec![want.clone(), programmed.clone()],
                },
            ])
        })
    };
    let grant = |namespace: &str, from: &str, to: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\n\
             metadata: {{name: grant, namespace: {namespace}}}\nspec: {{from: [{from}], to: [{to}]}}\n"
        )
    };
    // Each of a list of grants gets its own name.
    let named =
        |i: usize, grant: String| grant.replacen("name: grant,", &format!("name: grant-{i},"), 1);
    let from_ok =
        format!("{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {INFRA_NS}}}");
    let to_ok = "{group: \"\", kind: Secret}";
    let gateway_client = Gateway::https(address(port), ca.cert_pem());

    // Missing.
    listener_is(
        1,
        Want::false_("ResolvedRefs", "RefNotPermitted"),
        Want::false_any("Programmed"),
        "no grant",
    );
    // Seven grants, each wrong in one field.
    let wrong = [
        grant(INFRA_NS, &from_ok, to_ok),
        grant(
            WEB_NS,
            &format!("{{group: wrong.group.company.io, kind: Gateway, namespace: {INFRA_NS}}}"),
            to_ok,
        ),
        grant(
            WEB_NS,
            &format!(
                "{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA_NS}}}"
            ),
            to_ok,
        ),
        grant(
            WEB_NS,
            "{group: gateway.networking.k8s.io, kind: Gateway, namespace: wrong-namespace}",
            to_ok,
        ),
        grant(WEB_NS, &from_ok, "{group: wrong.group.company.io, kind: Secret, name: wrong-name}"),
        grant(WEB_NS, &from_ok, "{group: \"\", kind: Service}"),
        grant(
            WEB_NS,
            &from_ok,
            "{group: \"\", kind: Secret, name: not-the-certificate-youre-looking-for}",
        ),
    ];
    let wrong: Vec<String> = wrong.into_iter().enumerate().map(|(i, g)| named(i, g)).collect();
    // With a second route, so that the status shows the file was read.
    let marker =
        route("marker", "{name: gateway-secret-reference-grant}", "[]", "infra-backend-v1");
    stack.config.write("grants.yaml", &documents(&[wrong, vec![marker]].concat()));
    listener_is(
        2,
        Want::false_("ResolvedRefs", "RefNotPermitted"),
        Want::false_any("Programmed"),
        "wrong grants",
    );
    assert!(send(&gateway_client, &Request::get("/").host("secure.example.org")).is_err());
    // All Secrets in the namespace, then this one by name.
    for to in [to_ok.to_string(), "{group: \"\", kind: Secret, name: certificate}".to_string()] {
        stack.config.write("grants.yaml", &grant(WEB_NS, &from_ok, &to));
        listener_is(
            1,
            Want::true_any("ResolvedRefs"),
            Want::new("Programmed", true, Some("Programmed")),
            &to,
        );
        expect_eventually(&gateway_client, &get("secure.example.org", "/", "infra-backend-v1"));
    }
    // Deleting the grant revokes the certificate.
    stack.config.remove("grants.yaml");
    listener_is(
        1,
        Want::false_("ResolvedRefs", "RefNotPermitted"),
        Want::false_any("Programmed"),
        "grant deleted",
    );
    wait_until("the listener is gone", Duration::from_secs(30), || {
        match send(&gateway_client, &Request::get("/").host("secure.example.org")) {
            Err(_) => Ok(()),
            Ok(response) => Err(response.status),
        }
    });
}

/// Upstream `GatewayInvalidTLSConfiguration` (missing Secret, wrong group, wrong kind, a Secret
/// that is not PEM), with what the loader refuses by name: `tls.mode: Passthrough` and
/// `tls.options` on HTTPS, an HTTPS listener without `tls`.
#[test]
fn invalid_tls_configurations_have_the_specs_reasons() {
    let ca = TestCa::new("valid CA");
    let valid = ca.issue(&["example.org"]);
    let mut manifests = vec![
        secret_of(INFRA_NS, "tls-validity-checks-certificate", &valid),
        tls_secret(INFRA_NS, "malformed-certificate", "Hello world\n", "Hello world\n"),
    ];
    let invalid = [
        ("gateway-certificate-nonexistent-secret", "{certificateRefs: [{name: nonexistent-certificate}]}"),
        (
            "gateway-certificate-unsupported-group",
            "{certificateRefs: [{group: wrong.group.company.io, kind: Secret, name: tls-validity-checks-certificate}]}",
        ),
        ("gateway-certificate-unsupported-kind", "{certificateRefs: [{group: \"\", kind: WrongKind, name: tls-validity-checks-certificate}]}"),
        ("gateway-certificate-malformed-secret", "{certificateRefs: [{name: malformed-certificate}]}"),
    ];
    for (name, tls) in invalid {
        manifests.push(gateway(name, &[https("https", free_port(), None, tls)]));
    }
    let refused = [
        ("gateway-passthrough", "{mode: Passthrough, certificateRefs: [{name: tls-validity-checks-certificate}]}", "tls.mode"),
        (
            "gateway-tls-options",
            "{certificateRefs: [{name: tls-validity-checks-certificate}], options: {example.com/min-version: \"1.3\"}}",
            "tls.options",
        ),
    ];
    for (name, tls, _) in refused {
        manifests.push(gateway(name, &[https("https", free_port(), None, tls)]));
    }
    manifests.push(gateway(
        "gateway-https-without-tls",
        &[format!("{{name: https, protocol: HTTPS, port: {}}}", free_port())],
    ));
    let config = ConfigDir::new();
    config.write("manifests.yaml", &documents(&manifests));
    let loader = Loader::start(config.path());
    for (name, _) in invalid {
        wait_for(&loader, name, |doc| {
            doc.gateway(INFRA_NS, name)?.has_listeners(&[ExpectedListener {
                name: "https".into(),
                supported_kinds: vec!["HTTPRoute".into()],
                attached_routes: 0,
                conditions: vec![
                    Want::false_("ResolvedRefs", "InvalidCertificateRef"),
                    Want::false_any("Programmed"),
                ],
            }])
        });
    }
    for (name, field) in refused
        .iter()
        .map(|(name, _, field)| (*name, *field))
        .chain([("gateway-https-without-tls", "tls")])
    {
        wait_for(&loader, name, |doc| {
            let gateway = doc.gateway(INFRA_NS, name)?;
            gateway.condition(&Want::false_("Accepted", "ListenersNotValid"))?;
            let listener = gateway.listener("https")?;
            let accepted = listener
                .conditions
                .iter()
                .find(|c| c.kind == "Accepted")
                .ok_or("no Accepted condition")?;
            if accepted.status != "False"
                || accepted.reason != "UnsupportedValue"
                || !accepted.message.starts_with(&format!("{field}:"))
            {
                return Err(format!("{name}: {accepted:?}"));
            }
            Ok(())
        });
    }
}

/// One HTTP/1.1 keep-alive connection over TLS, trusting `root_pem`, SNI `host`.
struct KeepAlive {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl KeepAlive {
    fn connect(port: u16, root_pem: &str, host: &str) -> io::Result<KeepAlive> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in backendtls_e2e::echo::tls::certificates(root_pem) {
            roots.add(cert).expect("usable root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("DNS name");
        let connection =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
        let tcp = TcpStream::connect(address(port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(KeepAlive { stream: BufReader::new(rustls::StreamOwned::new(connection, tcp)) })
    }

    /// `GET path` keeping the connection open: the status.
    fn get(&mut self, host: &str, path: &str) -> io::Result<u16> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n");
        self.stream.get_mut().write_all(request.as_bytes())?;
        self.stream.get_mut().flush()?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status =
            line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("status line {line:?}"))
            })?;
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.stream.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok(status)
    }
}

/// Rewriting the Secret's file rotates the certificate: new handshakes see the new one, an
/// established keep-alive connection keeps working, and Envoy's listener is not modified (the
/// certificate is an SDS secret whose name does not change).
#[test]
fn a_rewritten_secret_rotates_the_certificate_without_touching_the_listener() {
    let v1 = EchoServer::plain(INFRA_NS, "infra-backend-v1-5d8f9c-x2k4");
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let port = free_port();
    let manifests = documents(&[
        backend_yaml("infra-backend-v1", &v1),
        gateway(
            "rotating",
            &[https(
                "https",
                port,
                Some("rotate.example.org"),
                "{certificateRefs: [{name: rotating}]}",
            )],
        ),
        route("to-v1", "{name: rotating}", "[]", "infra-backend-v1"),
    ]);
    let host = "rotate.example.org";
    let stack = Stack::start(
        "https-rotation",
        &[
            ("manifests.yaml", manifests),
            ("secret.yaml", secret_of(INFRA_NS, "rotating", &old_ca.issue(&[host]))),
        ],
    );
    let old = Gateway::https(address(port), old_ca.cert_pem());
    let new = Gateway::https(address(port), new_ca.cert_pem());
    expect_eventually(&old, &get(host, "/", "infra-backend-v1"));
    let mut established = KeepAlive::connect(port, old_ca.cert_pem(), host).unwrap();
    assert_eq!(established.get(host, "/before").unwrap(), 200);
    let stats = stack.envoy.stats();
    let (modified, added) =
        (stats["listener_manager.listener_modified"], stats["listener_manager.listener_added"]);
    assert!(added >= 1, "{added}");
    let sds_updates =
        format!("listener.127.0.0.1_{port}.server_ssl_socket_factory.ssl_context_update_by_sds");
    let updates = stack.envoy.stat(&sds_updates);

    stack.config.write("secret.yaml", &secret_of(INFRA_NS, "rotating", &new_ca.issue(&[host])));
    expect_eventually(&new, &get(host, "/", "infra-backend-v1"));
    let error = send(&old, &Request::get("/").host(host)).unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    assert_eq!(established.get(host, "/after").unwrap(), 200, "the established connection");
    assert_eq!(stack.envoy.stat("listener_manager.listener_modified"), modified);
    assert_eq!(stack.envoy.stat("listener_manager.listener_added"), added);
    assert!(stack.envoy.stat(&sds_updates) > updates, "the certificate came by SDS");
    assert_eq!(v1.requests().iter().filter(|r| r.path == "/after").count(), 1);
}

/// Re-encryption: TLS from the client terminated at an HTTPS listener, TLS again to a backend
/// whose Service has a BackendTLSPolicy (SNI the policy's hostname, verified against its CA).
#[test]
fn an_https_listener_re_encrypts_to_a_backend_with_a_policy() {
    let backend_ca = TestCa::new("backend CA");
    let backend = EchoServer::tls(
        INFRA_NS,
        "infra-backend-v3-7c8e5a-m3n6",
        TlsOptions::new(&backend_ca.issue(&["backend.example"])),
    );
    let listener_ca = TestCa::new("listener CA");
    let port = free_port();
    let ca_pem: String = backend_ca.cert_pem().lines().map(|l| format!("    {l}\n")).collect();
    let manifests = documents(&[
        backend_yaml("infra-backend-v3", &backend),
        secret_of(INFRA_NS, "front", &listener_ca.issue(&["secure.example.org"])),
        gateway("re-encrypt", &[https("https", port, None, "{certificateRefs: [{name: front}]}")]),
        route("to-v3", "{name: re-encrypt}", "[secure.example.org]", "infra-backend-v3"),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: backend-ca, namespace: {INFRA_NS}}}\ndata:\n  ca.crt: |\n{ca_pem}"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\n\
             metadata: {{name: backend-tls, namespace: {INFRA_NS}}}\n\
             spec:\n  targetRefs: [{{group: \"\", kind: Service, name: infra-backend-v3}}]\n  \
             validation: {{hostname: backend.example, caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: backend-ca}}]}}\n"
        ),
    ]);
    let _stack = Stack::start("https-re-encrypt", &[("manifests.yaml", manifests)]);
    let gateway = Gateway::https(address(port), listener_ca.cert_pem());
    expect_eventually(
        &gateway,
        &get("secure.example.org", "/", "infra-backend-v3").sni("backend.example"),
    );
    // A Host no route takes: 404 (the SNI names the listener's certificate).
    expect_failure(
        &gateway,
        &Request::get("/").host("other.example.org").sni("secure.example.org"),
    );
}
