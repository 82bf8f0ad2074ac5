//! backendtls filter. For now this crate holds the contract shared with the loader; the filter
//! core and its proxy-wasm and dynamic-module adapters build on it.
pub mod contract;
