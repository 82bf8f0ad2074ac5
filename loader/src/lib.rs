//! backendtls loader: Gateway API BackendTLSPolicy control plane for stock Envoy.
//!
//! Data flow: [`source`] (files) -> [`store`] -> [`resolve`] (Gateway API semantics, [`status`])
//! -> [`ir`] -> [`xds::translate`] (Envoy resources) -> [`xds::snapshot`] -> [`xds::server`] (ADS).

#![forbid(unsafe_code)]

pub mod admin;
pub mod certs;
pub mod digest;
pub mod ir;
pub mod kube;
pub mod kube_names;
pub mod objects;
pub mod pipeline;
pub mod probe;
pub mod quarantine;
pub mod resolve;
pub mod serve;
pub mod source;
pub mod status;
pub mod store;
pub mod xds;
