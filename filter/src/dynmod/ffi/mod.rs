//! Hand-written bindings to the Envoy 1.40 dynamic-module ABI (`v0.2.0`): [`abi`] declares the
//! types, values and callbacks and wraps them safely; [`hooks`] exports the event hooks Envoy
//! calls (the required HTTP filter hooks and the five certificate-validator hooks). This is the
//! only module with `unsafe`.

// The one module where `unsafe` (and `#[no_mangle]`) is allowed; the crate denies it elsewhere.
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

mod abi;
mod hooks;

pub use abi::{log, log_enabled, Attribute, ConfigHandle, FilterHandle, HeaderStatus, LogLevel};
#[cfg(feature = "validator")]
pub use abi::{CounterSink, ValidationCall};
