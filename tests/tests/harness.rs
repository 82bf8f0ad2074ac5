//! Self-tests of the harness that need no loader (NGINX, Envoy with static bootstraps, the
//! certificates between them, the HTTP client), plus one Envoy fact the guide tests rely on.

use std::path::Path;
use std::time::Duration;

use backendtls_e2e::{
    free_port, http_get, try_http_get, wait_until, Envoy, HttpConnection, Nginx, TestCa, NGINX_BODY,
};

/// How the static cluster gets its trust anchors.
enum Trust<'a> {
    /// `validation_context.trusted_ca` inline.
    Inline(&'a str),
    /// An SDS validation-context secret `ca` read from a watched file.
    SdsFile(&'a Path),
}

/// A static Envoy config: one listener routing everything to cluster `backend`, which originates
/// TLS to 127.0.0.1:`backend_port` with SNI and SAN `example.com` (TLS 1.3 allowed).
fn static_tls_bootstrap(
    admin_port: u16,
    listener_port: u16,
    backend_port: u16,
    trust: Trust,
) -> String {
    let validation = match trust {
        Trust::Inline(ca_pem) => format!(
            "validation_context:\n            trusted_ca: {{inline_string: {}}}\n            \
             match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: example.com}}}}]",
            serde_json::to_string(ca_pem).expect("PEM as a JSON string")
        ),
        Trust::SdsFile(path) => format!(
            "validation_context_sds_secret_config:\n            name: ca\n            \
             sds_config: {{path_config_source: {{path: {}, watched_directory: {{path: {}}}}}}}",
            path.display(),
            path.parent().expect("SDS file has a directory").display()
        ),
    };
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

/// An SDS file holding validation-context secret `ca` that trusts `ca_pem`.
fn sds_ca_secret(ca_pem: &str) -> String {
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
         name: ca\n  validation_context:\n    trusted_ca: {{inline_string: {}}}\n",
        serde_json::to_string(ca_pem).expect("PEM as a JSON string")
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
    let bootstrap = static_tls_bootstrap(
        admin_port,
        listener_port,
        nginx.https_port(),
        Trust::Inline(ca.cert_pem()),
    );
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

/// Envoy 1.40 fact behind `guide::ca_swap_and_restore`'s kept-alive connection: when an SDS
/// validation context changes in place, only new upstream handshakes use it; pooled connections
/// verified against the old CA keep serving. A control plane must therefore make a trust change
/// drain the pools (e.g. by changing the cluster), and the guide test checks that it does.
#[test]
fn in_place_sds_ca_update_keeps_pooled_upstream_connections() {
    let ca = TestCa::new("harness CA");
    let nginx = Nginx::start(&ca.issue(&["example.com"]));
    let sds_dir = tempfile::tempdir().expect("SDS dir");
    let sds_path = sds_dir.path().join("ca.yaml");
    std::fs::write(&sds_path, sds_ca_secret(ca.cert_pem())).expect("write SDS file");
    let (admin_port, listener_port) = (free_port(), free_port());
    let bootstrap = static_tls_bootstrap(
        admin_port,
        listener_port,
        nginx.https_port(),
        Trust::SdsFile(&sds_path),
    );
    let _envoy = Envoy::start(&bootstrap, admin_port);
    let mut pooled = HttpConnection::connect(listener_port).expect("connect to envoy");
    assert_eq!(pooled.get("example.com", "/").expect("GET").0, 200);

    // Envoy's watched-directory SDS picks up a file moved into place.
    let unrelated = TestCa::new("unrelated CA");
    let staging = sds_dir.path().join(".staging");
    std::fs::write(&staging, sds_ca_secret(unrelated.cert_pem())).expect("write SDS file");
    std::fs::rename(&staging, &sds_path).expect("move SDS file into place");
    wait_for_503(listener_port);

    let status = pooled.get("example.com", "/").expect("GET on the pooled connection").0;
    assert_eq!(status, 200, "Envoy now drains pools on SDS CA updates; revisit this note");
}
