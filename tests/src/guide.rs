//! The kgateway "Backend TLS" guide as one running stack: NGINX with a certificate for
//! `example.com`, the guide's manifests, the loader, and an Envoy fed by the loader over ADS.

use std::io;
use std::time::Duration;

use crate::certs::TestCa;
use crate::envoy::Envoy;
use crate::http::try_http_get;
use crate::loader::{ads_bootstrap, Ads, Loader};
use crate::manifests::Manifests;
use crate::nginx::Nginx;
use crate::ports::free_port;
use crate::wait::wait_until;

/// The guide's backend hostname: the policy's `validation.hostname`, the SNI, the certificate's SAN.
pub const HOSTNAME: &str = "example.com";
/// The Host header the guide's curl sends; the loader ignores the port when matching.
pub const GUIDE_HOST: &str = "example.com:8080";
/// The cluster the loader makes for Service `default/nginx` port 8443 (kgateway's naming).
pub const NGINX_CLUSTER: &str = "kube_default_nginx_8443";
/// Long enough for file watching, debouncing, an xDS push and Envoy applying it on a busy machine.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Fields drop in declaration order: Envoy first, so it never reports a vanished loader or backend.
pub struct GuideStack {
    pub envoy: Envoy,
    pub loader: Loader,
    pub manifests: Manifests,
    pub nginx: Nginx,
    /// The CA that signed NGINX's certificate, the one `ca.yaml` holds at start.
    pub ca: TestCa,
    pub gateway_port: u16,
    pub node_id: String,
}

impl GuideStack {
    /// Starts everything and waits until Envoy is ready (it has its first listeners and clusters);
    /// `node_id` names this Envoy in the loader's `/xds`.
    pub fn start(node_id: &str) -> GuideStack {
        GuideStack::start_with(node_id, Ads::Delta)
    }

    /// Like [`GuideStack::start`], with the given ADS flavour for Envoy.
    pub fn start_with(node_id: &str, ads: Ads) -> GuideStack {
        let ca = TestCa::new("backendtls e2e CA");
        let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
        let gateway_port = free_port();
        let manifests = Manifests::write(gateway_port, nginx.https_port(), ca.cert_pem());
        let loader = Loader::start(manifests.dir());
        let envoy_admin_port = free_port();
        let envoy = Envoy::start(
            &ads_bootstrap(loader.xds_port(), envoy_admin_port, node_id, ads),
            envoy_admin_port,
        );
        GuideStack {
            envoy,
            loader,
            manifests,
            nginx,
            ca,
            gateway_port,
            node_id: node_id.to_string(),
        }
    }

    /// The guide's request on a new connection: `GET /` with `Host: example.com:8080`.
    pub fn get(&self) -> io::Result<(u16, String)> {
        try_http_get(self.gateway_port, GUIDE_HOST, "/")
    }

    /// Waits until a new connection's request answers `status`; returns the body.
    pub fn wait_for_status(&self, status: u16) -> String {
        wait_for_gateway_status(self.gateway_port, status)
    }

    /// `cluster.kube_default_nginx_8443.<suffix>` from Envoy's stats.
    pub fn nginx_cluster_stat(&self, suffix: &str) -> u64 {
        self.envoy.stat(&format!("cluster.{NGINX_CLUSTER}.{suffix}"))
    }
}

/// Waits until the guide's request through the gateway on `gateway_port` answers `status`.
pub fn wait_for_gateway_status(gateway_port: u16, status: u16) -> String {
    wait_for_host_status(gateway_port, GUIDE_HOST, status)
}

/// Waits until `GET /` with `Host: host` through the gateway on `gateway_port` answers `status`.
pub fn wait_for_host_status(gateway_port: u16, host: &str, status: u16) -> String {
    wait_until(
        &format!("GET / (Host: {host}) on 127.0.0.1:{gateway_port} to answer {status}"),
        CONVERGE_TIMEOUT,
        || match try_http_get(gateway_port, host, "/") {
            Ok((got, body)) if got == status => Ok(body),
            other => Err(other),
        },
    )
}
