//! backendtls filter: tags, enforces and counts requests to backends that a BackendTLSPolicy
//! governs, reading the policy from the cluster's `backendtls` metadata (see
//! [`backendtls_contract`]).
//!
//! One core ([`engine`], [`policy`], [`x509`]) and two thin adapters: proxy-wasm when built for
//! `wasm32` and an Envoy dynamic module otherwise. The dynamic module can also be Envoy's
//! upstream certificate validator ([`validator`], on rustls-webpki).
//!
//! `unsafe` is denied everywhere but in `dynmod::ffi` (the dynamic module's ABI); every other
//! module forbids it.
#![deny(unsafe_code)]

// A panic that unwinds to an `extern "C"` hook is caught there and turned into a safe answer
// (dynmod::ffi). With `panic = "abort"` it would take Envoy down instead. (The Wasm build has no
// unwinding at all: a panic traps the VM, which Envoy reports and survives.)
#[cfg(all(panic = "abort", not(target_arch = "wasm32")))]
compile_error!(
    "the dynamic module must be built with panic = \"unwind\": its FFI hooks catch panics so that \
     one cannot abort Envoy"
);

pub mod config;
pub mod engine;
pub mod pb;
pub mod policy;
pub mod x509;

/// The handshake-time certificate validator's core, [`backendtls_verify`] (dynamic module only:
/// Wasm filters cannot validate certificates, and webpki's crypto is not built for wasm32). The
/// loader's `probe` applies the same crate before any traffic flows.
#[cfg(all(feature = "validator", not(target_arch = "wasm32")))]
pub use backendtls_verify as validator;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(not(target_arch = "wasm32"))]
pub mod dynmod;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod identity_cases;
