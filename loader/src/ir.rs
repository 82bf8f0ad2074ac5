//! The intermediate representation: what Envoy must do, in plain Rust, without Envoy's types.
//!
//! [`crate::resolve`] builds it from Kubernetes objects with all Gateway API semantics applied;
//! [`crate::xds`] turns it into Envoy resources. Policy logic is tested on these values.

use crate::store::ObjectKey;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ir {
    pub listeners: Vec<Listener>,
    /// By cluster name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Trust bundles by secret name. Names are content-addressed (see [`ca_secret_name`]).
    pub ca_bundles: BTreeMap<String, CaBundle>,
}

/// One Envoy listener: a port of one Gateway, with every HTTP listener of that Gateway on it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    /// Also the name of its route configuration.
    pub name: String,
    pub port: u16,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// In match order: the first route that matches wins.
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    /// `<namespace>/<route>/rule/<i>/match/<j>`.
    pub name: String,
    pub path: PathMatch,
    pub action: RouteAction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathMatch {
    /// Gateway API `PathPrefix`: matches whole path segments.
    Prefix(String),
    Exact(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum RouteAction {
    Forward(Vec<WeightedCluster>),
    /// A local answer: missing backends (500) or a backend whose policy cannot be met (503).
    Respond {
        status: u32,
        body: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

/// One Service port.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub service: ObjectKey,
    pub port: u16,
    pub endpoints: Endpoints,
    /// Present when a BackendTLSPolicy governs this port.
    pub tls: Option<BackendTls>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Endpoints {
    /// Ready addresses from EndpointSlices, with the slice's port number.
    Static(Vec<SocketAddr>),
    /// `type: ExternalName`: resolved by Envoy through DNS.
    Dns { hostname: String, port: u16 },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendTls {
    pub policy: ObjectKey,
    /// Always the SNI; the identity to verify unless `subject_alt_names` is non-empty.
    pub hostname: String,
    pub subject_alt_names: Vec<SubjectAltName>,
    pub trust: Trust,
}

impl BackendTls {
    /// The identities a backend certificate may present: any one of them suffices.
    pub fn identities(&self) -> Vec<SubjectAltName> {
        if self.subject_alt_names.is_empty() {
            vec![SubjectAltName::Hostname(self.hostname.clone())]
        } else {
            self.subject_alt_names.clone()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SubjectAltName {
    /// A DNS name; may start with `*.`.
    Hostname(String),
    Uri(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Trust {
    /// Verify against the bundle stored under this secret name in [`Ir::ca_bundles`].
    Ca { secret: String },
    /// The policy applies but cannot be met: fail closed.
    Unusable { reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaBundle {
    /// PEM, one or more certificates.
    pub pem: String,
}

/// Secret names carry a digest of their content, so that a CA change is a change of the
/// cluster's configuration. Envoy keeps pooled upstream connections when only an SDS secret
/// changes; a changed cluster is rebuilt and its old connections drained, so every request after
/// the change is verified against the new trust.
pub fn ca_secret_name(pem: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(pem.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("backendtls_ca_{hex}")
}
