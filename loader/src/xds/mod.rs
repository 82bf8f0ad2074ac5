//! Everything that speaks Envoy: translation, JSON rendering, snapshots and the ADS server with
//! its listener (mTLS, limits, authorization).

pub mod authz;
pub mod bootstrap;
pub mod identity;
pub mod json;
pub mod limits;
pub mod listener;
pub mod served;
pub mod server;
pub mod shared_map;
pub mod snapshot;
pub mod tls;
pub mod translate;
pub mod wire;
