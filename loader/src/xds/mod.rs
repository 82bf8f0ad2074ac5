//! Everything that speaks Envoy: translation, JSON rendering, snapshots and the ADS server.

pub mod bootstrap;
pub mod identity;
pub mod json;
pub mod server;
pub mod snapshot;
pub mod translate;
