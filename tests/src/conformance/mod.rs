//! Test support mirroring the Gateway API conformance harness (`conformance/utils` at v1.6.1, with
//! main's shorter retry pause), for our own file-mode versions of the upstream tests:
//!
//! - [`client`]: one HTTP/1.1 request per connection to a Gateway listener (plaintext or HTTPS),
//!   10 s per request, answering status, headers and body ([`send`]).
//! - [`expect`]: [`Expect`] (upstream `ExpectedResponse`) with the upstream comparison rules, and
//!   [`expect_eventually`] / [`expect_failure`] with its timing (3 matching answers in a row within
//!   30 s; 5 non-200 in a row, a 200 failing at once).
//! - [`status`]: a typed view of the loader's `/status` as Gateway API status (Gateways with
//!   listeners, routes with parents, policies with ancestors) and the upstream status helpers'
//!   rules; its module documentation gives the JSON shape expected from the loader.
//!
//! The backends are [`crate::echo::EchoServer`]s.

pub mod client;
pub mod expect;
pub mod status;

pub use client::{send, Gateway, Request, Response, REQUEST_TIMEOUT};
pub use expect::{
    backend_of_pod, expect_eventually, expect_failure, BackendRequest, Convergence, Expect,
    Redirect, INFRA_NS,
};
pub use status::{
    ExpectedListener, GatewayStatus, ListenerStatus, PolicyStatus, RouteStatus, StatusDocument,
    Want,
};

use crate::policy_support::ConfigDir;
use crate::{ads_bootstrap, free_port, Ads, Envoy, Loader};

/// A Gateway as these tests run it: a config directory holding `files`, the loader serving it,
/// and an Envoy fed by that loader over delta ADS.
pub struct Stack {
    pub config: ConfigDir,
    pub loader: Loader,
    pub envoy: Envoy,
}

impl Stack {
    pub fn start(node: &str, files: &[(&str, String)]) -> Stack {
        let config = ConfigDir::new();
        for (name, contents) in files {
            config.write(name, contents);
        }
        let loader = Loader::start(config.path());
        let admin = free_port();
        let envoy = Envoy::start(&ads_bootstrap(loader.xds_port(), admin, node, Ads::Delta), admin);
        Stack { config, loader, envoy }
    }
}
