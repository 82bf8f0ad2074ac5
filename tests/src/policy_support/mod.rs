//! Support for the BackendTLSPolicy end-to-end tests (`tests/tests/policy.rs`), which mirror the
//! Gateway API conformance tests and this implementation's own promises.
//!
//! - [`Pki`]: the conformance certificates (a CA, a backend certificate with CN `default`, DNS
//!   SANs `abc.example.com` and `other.example.com` and URI SAN
//!   `spiffe://abc.example.com/test-identity`, an unrelated "mismatch" CA) plus a client CA and a
//!   client certificate for backend mTLS.
//! - [`Backend`]: the tests' one NGINX wrapper ([`crate::nginx`]), re-exported here.
//! - [`ConfigDir`] and the YAML builders ([`gateway_yaml`], [`Route`], [`service_yaml`],
//!   [`Policy`], ...): the loader's input, written atomically.
//! - [`PolicyStack`]: NGINX, the loader and an Envoy fed over ADS, with request helpers.
//! - [`Status`]: reading `/status` (and `check -o json`) as the Kubernetes status it stands for.
//! - [`run_check`]: `backendtls-loader check`.
//!
//! Modules by concern: [`pki`], [`objects`] (the loader's input), [`status`], [`stack`] and
//! [`check`]; everything is re-exported here, so `policy_support::X` names every item.

use std::time::Duration;

pub mod check;
pub mod objects;
pub mod pki;
pub mod stack;
pub mod status;

pub use crate::nginx::{Backend, BackendRequest, TlsServer};
pub use check::*;
pub use objects::*;
pub use pki::*;
pub use stack::*;
pub use status::*;

/// The namespace every object lives in, as in the conformance suite.
pub const NS: &str = "gateway-conformance-infra";
/// The Gateway the routes attach to (HTTP listener), as in the conformance suite.
pub const GATEWAY: &str = "same-namespace";
/// The route hostname and the Host header of every request the tests send.
pub const ROUTE_HOST: &str = "abc.example.com";
/// ConfigMap holding the CA that signed the backend certificate.
pub const CA_CONFIG_MAP: &str = "tls-checks-ca-certificate";
/// ConfigMap holding an unrelated CA.
pub const MISMATCH_CA_CONFIG_MAP: &str = "mismatch-ca-certificate";
/// The `controllerName` the loader writes into every ancestor entry.
pub const CONTROLLER_NAME: &str = "backendtls.dev/loader";
/// The body prefix of the loader's fail-closed answers.
pub const FAIL_CLOSED_PREFIX: &str = "backendtls: ";
/// File watching, debouncing, an xDS push and Envoy applying it, on a busy machine.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many requests make an outcome "consistent".
pub const CONSISTENT_REQUESTS: usize = 10;

/// The Service port every single-port test Service has (named `btls`, as in conformance).
pub const BTLS_PORT: u16 = 443;
pub const BTLS_PORT_NAME: &str = "btls";
