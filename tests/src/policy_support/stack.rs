//! [`Fixture`] and [`PolicyStack`]: NGINX, the loader and an Envoy fed over ADS, with request
//! helpers.

use std::io;

use super::*;
use crate::envoy::Envoy;
use crate::http::try_http_get;
use crate::loader::{ads_bootstrap, Ads, Loader};
use crate::ports::free_port;
use crate::wait::wait_until;

/// What a test prepares before anything runs: certificates, the NGINX backend, a config
/// directory holding the base objects ([`write_base`]) and the Gateway's port.
pub struct Fixture {
    pub pki: Pki,
    pub backend: Backend,
    pub config: ConfigDir,
    pub gateway_port: u16,
}

impl Fixture {
    /// One NGINX server presenting the conformance backend certificate.
    pub fn conformance() -> Fixture {
        Fixture::with_servers(|pki| vec![TlsServer::new(&pki.backend_cert)])
    }

    /// NGINX with the servers `servers` makes from the certificates.
    pub fn with_servers(servers: impl FnOnce(&Pki) -> Vec<TlsServer>) -> Fixture {
        let pki = Pki::new();
        let backend = Backend::start(&servers(&pki));
        let config = ConfigDir::new();
        let gateway_port = free_port();
        write_base(&config, &pki, gateway_port);
        Fixture { pki, backend, config, gateway_port }
    }

    /// The port of NGINX server `index`.
    pub fn backend_port(&self, index: usize) -> u16 {
        self.backend.port(index)
    }

    /// Starts the loader and Envoy on what has been written.
    pub fn start(self, node_id: &str) -> PolicyStack {
        PolicyStack::start(node_id, self.pki, self.backend, self.config, self.gateway_port)
    }
}

/// NGINX, the loader on a config directory and an Envoy fed by it over delta ADS.
/// Fields drop in declaration order: Envoy first, so it never reports a vanished loader.
pub struct PolicyStack {
    pub envoy: Envoy,
    pub loader: Loader,
    pub config: ConfigDir,
    pub backend: Backend,
    pub pki: Pki,
    pub gateway_port: u16,
}

impl PolicyStack {
    /// Starts the loader on `config` (already written) and an Envoy, and waits until Envoy is
    /// ready; `node_id` names this Envoy in the loader's `/xds`.
    pub fn start(
        node_id: &str,
        pki: Pki,
        backend: Backend,
        config: ConfigDir,
        gateway_port: u16,
    ) -> PolicyStack {
        let loader = Loader::start(config.path());
        let envoy_admin_port = free_port();
        let envoy = Envoy::start(
            &ads_bootstrap(loader.xds_port(), envoy_admin_port, node_id, Ads::Delta),
            envoy_admin_port,
        );
        PolicyStack { envoy, loader, config, backend, pki, gateway_port }
    }

    /// `GET path` (Host [`ROUTE_HOST`]) through the Gateway on a new connection.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        try_http_get(self.gateway_port, ROUTE_HOST, path)
    }

    /// Waits until `GET path` answers `status`; returns the body.
    pub fn wait_for_status(&self, path: &str, status: u16) -> String {
        wait_for_gateway_status(self.gateway_port, path, status)
    }

    /// Waits until `GET path` answers `status`, then asserts [`CONSISTENT_REQUESTS`] more do too;
    /// returns the bodies.
    pub fn assert_consistent_status(&self, path: &str, status: u16) -> Vec<String> {
        self.wait_for_status(path, status);
        (0..CONSISTENT_REQUESTS)
            .map(|round| match self.get(path) {
                Ok((got, body)) if got == status => body,
                other => panic!(
                    "GET {path}: request {round} after it first answered {status} got {other:?}; \
                     the outcome must be consistent"
                ),
            })
            .collect()
    }

    /// Polls `/status` until policy `name`'s condition `kind` is `status` (and `reason`).
    pub fn wait_for_condition(
        &self,
        name: &str,
        kind: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Condition {
        wait_for_policy_condition(&self.loader, name, kind, status, reason)
    }

    pub fn status(&self) -> Status {
        Status(self.loader.status())
    }

    /// `cluster.<kube_NS_service_port>.<suffix>` from Envoy's stats.
    pub fn cluster_stat(&self, service: &str, port: u16, suffix: &str) -> u64 {
        self.envoy.stat(&format!("cluster.{}.{suffix}", cluster(service, port)))
    }

    /// Backend requests whose path is `path`, after waiting until at least one arrived.
    pub fn wait_for_backend_requests(&self, path: &str) -> Vec<BackendRequest> {
        wait_until(&format!("nginx to log a request to {path}"), CONVERGE_TIMEOUT, || {
            let requests = self.backend.requests_to(path);
            (!requests.is_empty()).then_some(requests)
        })
    }

    pub fn assert_no_plaintext(&self) {
        assert_eq!(self.backend.plaintext_requests(), vec![], "plaintext reached the backend");
    }
}

/// Waits until `GET path` (Host [`ROUTE_HOST`]) on 127.0.0.1:`gateway_port` answers `status`.
pub fn wait_for_gateway_status(gateway_port: u16, path: &str, status: u16) -> String {
    wait_until(
        &format!("GET {path} (Host: {ROUTE_HOST}) on 127.0.0.1:{gateway_port} to answer {status}"),
        CONVERGE_TIMEOUT,
        || match try_http_get(gateway_port, ROUTE_HOST, path) {
            Ok((got, body)) if got == status => Ok(body),
            other => Err(other),
        },
    )
}
