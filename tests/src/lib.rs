//! End-to-end harness for backendtls: real Envoy 1.40, real NGINX, the real loader binary, all on
//! 127.0.0.1. Every component is a value that kills its process on drop and, when a test is
//! failing, prints its log tail so the failure explains itself.
//!
//! `unsafe` is denied but in the functions that call libc (signals, `prctl`), each allowing it.
#![deny(unsafe_code)]

pub mod certs;
pub mod conformance;
pub mod drip;
pub mod echo;
pub mod envoy;
pub mod guide;
pub mod http;
pub mod kube_api;
pub mod loader;
pub mod manifests;
pub mod nginx;
pub mod paths;
pub mod policy_support;
pub mod ports;
pub mod process;
pub mod scale;
pub mod validator_support;
pub mod wait;
pub mod xds_client;

pub use certs::{CertifiedKey, TestCa};
pub use envoy::{static_listener_bootstrap, validate_bootstrap, Envoy};
pub use guide::GuideStack;
pub use http::{http_get, try_http_get, HttpConnection};
pub use loader::{ads_bootstrap, ads_bootstrap_secure, render_bootstrap, Ads, Loader};
pub use manifests::Manifests;
pub use nginx::{AccessLine, Backend, BackendRequest, Nginx, TlsServer, NGINX_BODY};
pub use ports::{free_port, port_accepts};
pub use wait::wait_until;
