//! backendtls filter: tags, enforces and counts requests to backends that a BackendTLSPolicy
//! governs, reading the policy from the cluster's `backendtls` metadata (see [`contract`]).
//!
//! One core ([`engine`], [`policy`], [`x509`]) and two thin adapters: proxy-wasm when built for
//! `wasm32` and an Envoy dynamic module otherwise. With the default feature `filter` off, the
//! crate is only the contract shared with the loader. The dynamic module can also be Envoy's
//! upstream certificate validator ([`validator`], on rustls-webpki).
pub mod contract;

#[cfg(feature = "filter")]
pub mod config;
#[cfg(feature = "filter")]
pub mod engine;
#[cfg(feature = "filter")]
pub mod pb;
#[cfg(feature = "filter")]
pub mod policy;
#[cfg(feature = "filter")]
pub mod x509;

/// The handshake-time certificate validator's core (dynamic module only: Wasm filters cannot
/// validate certificates, and webpki's crypto is not built for wasm32).
#[cfg(all(feature = "validator", not(target_arch = "wasm32")))]
pub mod validator;

#[cfg(all(feature = "filter", target_arch = "wasm32"))]
mod wasm;

#[cfg(all(feature = "filter", not(target_arch = "wasm32")))]
pub mod dynmod;
