//! Self-tests of the harness that need no loader (NGINX, Envoy with static bootstraps, the
//! certificates between them, the HTTP client).

use std::time::Duration;

use backendtls_e2e::{
    free_port, http_get, try_http_get, wait_until, Envoy, HttpConnection, Nginx, TestCa, NGINX_BODY,
};

/// A static Envoy config: one listener routing everything to cluster `backend`, which originates
/// TLS to 127.0.0.1:`backend_port` with SNI and SAN `example.com` (TLS 1.3 allowed).
fn static_tls_bootstrap(
    admin_port: u16,
    listener_port: u16,
    backend_port: u16,
    ca_pem: &str,
) -> String {
    let validation = format!(
        "validation_context:\n            trusted_ca: {{inline_string: {}}}\n            \
         match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: example.com}}}}]",
        serde_json::to_string(ca_pem).expect("PEM as a JSON string")
    );
    format!(
        r#"node: {{id: harness, cluster: harness}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: gateway
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend_port}}}}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: example.com
        common_tls_context:
          tls_params: {{tls_maximum_protocol_version: TLSv1_3}}
          {validation}
"#
    )
}

fn wait_for_503(listener_port: u16) {
    wait_until("a new connection to answer 503", Duration::from_secs(10), || {
        match try_http_get(listener_port, "example.com", "/") {
            Ok((503, _)) => Ok(()),
            other => Err(other),
        }
    });
}

#[test]
fn nginx_answers_plaintext_on_its_tls_port_with_400() {
    let ca = TestCa::new("harness CA");
    let nginx = Nginx::start(&ca.issue(&["example.com"]));
    let (status, _) = http_get(nginx.https_port(), "example.com", "/");
    assert_eq!(status, 400, "{}", nginx.diagnostics());
    let plaintext =
        wait_until("nginx to log the plaintext request", Duration::from_secs(5), || {
            let lines = nginx.plaintext_requests();
            if lines.is_empty() {
                Err(nginx.access_log_lines())
            } else {
                Ok(lines)
            }
        });
    assert_eq!(plaintext[0].scheme, "http", "{plaintext:?}");
}

#[test]
fn envoy_static_tls_to_nginx_and_certificate_swap() {
    let ca = TestCa::new("harness CA");
    let mut nginx = Nginx::start(&ca.issue(&["example.com"]));
    let (admin_port, listener_port) = (free_port(), free_port());
    let bootstrap =
        static_tls_bootstrap(admin_port, listener_port, nginx.https_port(), ca.cert_pem());
    let envoy = Envoy::start(&bootstrap, admin_port);

    let mut keep_alive = HttpConnection::connect(listener_port).expect("connect to envoy");
    for _ in 0..3 {
        let response = keep_alive.get("example.com", "/").expect("keep-alive GET");
        assert_eq!(response, (200, NGINX_BODY.to_string()));
    }
    assert!(envoy.stat("cluster.backend.ssl.handshake") >= 1, "{:?}", envoy.stats());
    assert!(envoy.stat("cluster.backend.ssl.versions.TLSv1.3") >= 1);
    let lines = nginx.access_log_lines();
    assert!(
        lines.iter().all(|line| line.sni == "example.com" && line.scheme == "https"),
        "{lines:?}"
    );

    // NGINX now presents a certificate from another CA: new handshakes fail verification.
    let other_ca = TestCa::new("unrelated CA");
    nginx.replace_certificate(&other_ca.issue(&["example.com"]));
    wait_for_503(listener_port);
    assert!(envoy.stat("cluster.backend.ssl.fail_verify_error") >= 1, "{:?}", envoy.stats());
    assert!(envoy.prometheus().contains("envoy_cluster_ssl_handshake"));
}
