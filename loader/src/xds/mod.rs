//! Everything that speaks Envoy: translation, JSON rendering, snapshots and the ADS server.

pub mod translate;
